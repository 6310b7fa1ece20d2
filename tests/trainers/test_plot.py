"""PNG learning curves."""

from __future__ import annotations

import pytest
from PIL import Image

from torchrl_offline.trainers.plot import _nice_ticks, plot_learning_curves


def test_writes_a_png_with_the_curves_and_reference_lines(tmp_path):
    path = plot_learning_curves(
        {"IQL": [(0, -1400.0), (1000, -900.0), (2000, -300.0)], "BC": [(0, -1200), (2000, -600)]},
        tmp_path / "sub" / "curve.png",
        title="Pendulum-v1",
        hlines={"behaviour": -550.0},
        size=(640, 400),
    )
    image = Image.open(path)
    assert image.format == "PNG" and image.size == (640, 400)
    colors = {c for _, c in image.convert("RGB").getcolors(maxcolors=1 << 16)}
    assert (31, 119, 180) in colors and (255, 127, 14) in colors and (44, 160, 44) in colors


def test_single_point_and_empty_input(tmp_path):
    assert plot_learning_curves({"a": [(5, 1.0)]}, tmp_path / "one.png").exists()
    with pytest.raises(ValueError, match="no finite point"):
        plot_learning_curves({"a": []}, tmp_path / "none.png")
    with pytest.raises(ValueError, match="no finite point"):
        plot_learning_curves({"a": [(0, float("nan"))]}, tmp_path / "nan.png")


def test_nice_ticks_cover_the_range():
    assert _nice_ticks(0, 5000) == [0, 1000, 2000, 3000, 4000, 5000]
    ticks = _nice_ticks(-1473.2, -98.6)
    assert ticks[0] >= -1473.2 and ticks[-1] <= -98.6 and len(ticks) >= 4
