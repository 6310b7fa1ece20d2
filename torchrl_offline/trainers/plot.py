"""Learning curves as PNG images, drawn with Pillow (no plotting library needed)."""

from __future__ import annotations

import math
import os
from collections.abc import Mapping, Sequence
from pathlib import Path

__all__ = ["plot_learning_curves"]

_PALETTE = [
    (31, 119, 180),
    (255, 127, 14),
    (44, 160, 44),
    (214, 39, 40),
    (148, 103, 189),
    (140, 86, 75),
    (227, 119, 194),
    (127, 127, 127),
]


def _nice_ticks(lo: float, hi: float, target: int = 6) -> list[float]:
    if hi <= lo:
        hi = lo + 1.0
    raw = (hi - lo) / target
    base = 10 ** math.floor(math.log10(raw))
    step = next(m * base for m in (1, 2, 2.5, 5, 10) if m * base >= raw)
    first = math.ceil(lo / step) * step
    ticks = []
    value = first
    while value <= hi + 1e-9 * step:
        ticks.append(round(value, 10))
        value += step
    return ticks


def _fmt(value: float) -> str:
    if value != 0 and (abs(value) >= 1e5 or abs(value) < 1e-3):
        return f"{value:.1e}"
    return f"{value:g}"


def plot_learning_curves(
    curves: Mapping[str, Sequence[tuple[float, float]]],
    path: str | os.PathLike,
    *,
    title: str = "",
    xlabel: str = "gradient steps",
    ylabel: str = "return",
    hlines: Mapping[str, float] | None = None,
    size: tuple[int, int] = (900, 540),
) -> Path:
    """Draws curves of ``(step, value)`` points and labelled horizontal lines to a PNG.

    Args:
        curves: ``name -> [(x, y), ...]``, e.g. the evaluation returns of a run
            (``[(e["step"], e["return_mean"]) for e in result.evaluations]``).
        path: the PNG file to write (its directory is created).
        title: the title above the plot.
        xlabel: the x-axis label.
        ylabel: the y-axis label.
        hlines: ``name -> y`` reference levels drawn dashed across the plot (e.g. the
            behaviour policy's return).
        size: ``(width, height)`` in pixels.

    Returns:
        The path written.

    Raises:
        ValueError: no point to draw.

    Examples:
        >>> import tempfile
        >>> from pathlib import Path
        >>> from torchrl_offline.trainers.plot import plot_learning_curves
        >>> out = plot_learning_curves(
        ...     {"IQL": [(0, -1400.0), (1000, -900.0), (2000, -300.0)]},
        ...     Path(tempfile.mkdtemp()) / "curve.png",
        ...     title="Pendulum-v1", hlines={"behaviour": -550.0})
        >>> out.suffix
        '.png'
    """
    from PIL import Image, ImageDraw, ImageFont

    hlines = dict(hlines or {})
    points = [(float(x), float(y)) for pts in curves.values() for x, y in pts]
    points = [(x, y) for x, y in points if math.isfinite(x) and math.isfinite(y)]
    if not points:
        raise ValueError("plot_learning_curves: the curves have no finite point to draw")
    xs = [x for x, _ in points]
    ys = [y for _, y in points] + [float(v) for v in hlines.values() if math.isfinite(v)]
    x_lo, x_hi = min(xs), max(xs)
    if x_hi == x_lo:
        x_lo, x_hi = x_lo - 1.0, x_hi + 1.0
    y_lo, y_hi = min(ys), max(ys)
    pad = (y_hi - y_lo) * 0.05 or max(abs(y_hi) * 0.05, 1.0)
    y_lo, y_hi = y_lo - pad, y_hi + pad

    width, height = size
    font = ImageFont.load_default()
    left, right, top, bottom = 80, 200, 40, 55
    pw, ph = width - left - right, height - top - bottom
    image = Image.new("RGB", (width, height), "white")
    draw = ImageDraw.Draw(image)

    def px(x: float) -> float:
        return left + (x - x_lo) / (x_hi - x_lo) * pw

    def py(y: float) -> float:
        return top + (y_hi - y) / (y_hi - y_lo) * ph

    for tick in _nice_ticks(x_lo, x_hi):
        x = px(tick)
        draw.line([(x, top), (x, top + ph)], fill=(230, 230, 230))
        label = _fmt(tick)
        draw.text((x - 3 * len(label), top + ph + 6), label, fill="black", font=font)
    for tick in _nice_ticks(y_lo, y_hi):
        y = py(tick)
        draw.line([(left, y), (left + pw, y)], fill=(230, 230, 230))
        label = _fmt(tick)
        draw.text((left - 8 - 6 * len(label), y - 6), label, fill="black", font=font)
    draw.rectangle([left, top, left + pw, top + ph], outline="black")
    draw.text((left + pw / 2 - 3 * len(xlabel), height - 22), xlabel, fill="black", font=font)
    draw.text((8, top - 22), ylabel, fill="black", font=font)
    if title:
        draw.text((left + pw / 2 - 3 * len(title), 10), title, fill="black", font=font)

    legend_y = top + 4
    entries: list[tuple[str, tuple[int, int, int], bool]] = []
    for i, (name, pts) in enumerate(curves.items()):
        color = _PALETTE[i % len(_PALETTE)]
        xy = [(px(float(x)), py(float(y))) for x, y in sorted(pts)]
        xy = [(x, y) for x, y in xy if math.isfinite(x) and math.isfinite(y)]
        if len(xy) > 1:
            draw.line(xy, fill=color, width=2)
        for x, y in xy:
            draw.ellipse([x - 3, y - 3, x + 3, y + 3], fill=color)
        entries.append((name, color, False))
    for j, (name, level) in enumerate(hlines.items()):
        color = _PALETTE[(len(curves) + j) % len(_PALETTE)]
        y = py(float(level))
        x = float(left)
        while x < left + pw:
            draw.line([(x, y), (min(x + 8, left + pw), y)], fill=color, width=2)
            x += 14
        entries.append((name, color, True))
    for name, color, dashed in entries:
        x0 = left + pw + 12
        if dashed:
            draw.line([(x0, legend_y + 6), (x0 + 8, legend_y + 6)], fill=color, width=2)
            draw.line([(x0 + 14, legend_y + 6), (x0 + 22, legend_y + 6)], fill=color, width=2)
        else:
            draw.line([(x0, legend_y + 6), (x0 + 22, legend_y + 6)], fill=color, width=2)
        draw.text((x0 + 28, legend_y), name[:26], fill="black", font=font)
        legend_y += 18

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    image.save(path, format="PNG")
    return path
