"""Figures of training runs, drawn with matplotlib (its Agg canvas: no display needed).

* :func:`plot_run`: the figure of one run, from its metrics file and ``run.json``
  (every ``train``/``finetune`` run with ``out_dir`` draws it as ``metrics.png``): the
  evaluation return with its standard deviation over the evaluation episodes, the
  normalized score on a second axis when reference returns are known, the behaviour
  data's mean episode return as a dashed line, online episode returns when fine-tuning,
  and one small panel per loss term.
* :func:`plot_runs`: runs overlaid, one panel per metric; runs that share a config
  (seeds of one experiment) are drawn as their mean with a band (standard deviation or
  standard error over the seeds), other runs as lines of their own.
* :func:`plot_learning_curves`: curves of ``(step, value)`` points and reference lines.

:func:`run_figure` and :func:`runs_figure` return the matplotlib figures themselves (to
show in a notebook, or to change before saving).

Files are written atomically (a temporary file renamed); matplotlib is imported when a
figure is drawn, not with this module.
"""

from __future__ import annotations

import math
import os
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from torchrl_offline.atomic import replace_file
from torchrl_offline.trainers.metrics import (
    FIGURE_FILE,
    STEP,
    MetricsFileError,
    metrics_path,
    read_metrics,
)
from torchrl_offline.trainers.run_info import config_key, read_run_info

if TYPE_CHECKING:
    from matplotlib.figure import Figure

__all__ = [
    "algorithm_label",
    "plot_learning_curves",
    "plot_run",
    "plot_runs",
    "run_figure",
    "runs_figure",
]

_DPI = 100
_STYLE = {
    "font.size": 10,
    "axes.titlesize": 11,
    "axes.labelsize": 10,
    "legend.fontsize": 9,
    "xtick.labelsize": 9,
    "ytick.labelsize": 9,
    "axes.grid": True,
    "grid.alpha": 0.3,
    "axes.spines.top": False,
    "axes.spines.right": False,
    "legend.framealpha": 0.9,
}
_LABELS = {"td3_bc": "TD3+BC", "cal_ql": "Cal-QL", "rebrac": "ReBRAC", "sac_n": "SAC-N"}
#: Titles and y-axis labels of the metrics that have one.
_METRICS = {
    "eval/return_mean": ("evaluation return", "return"),
    "eval/normalized_score": ("evaluation normalized score", "normalized score"),
    "eval/episode_length": ("evaluation episode length", "steps"),
    "eval/return_std": ("spread of the evaluation returns", "standard deviation of return"),
    "online/episode_return": ("online episode return", "return"),
    "train/steps_per_s": ("training speed", "gradient steps per second"),
}
BANDS = ("std", "se")
SUFFIXES = (".png", ".pdf", ".svg")


def algorithm_label(name: str) -> str:
    """How an algorithm's name is written in figures: ``"iql"`` -> ``"IQL"``,
    ``"td3_bc"`` -> ``"TD3+BC"``, ``"discrete_cql"`` -> ``"discrete CQL"``.

    Examples:
        >>> from torchrl_offline.trainers.plot import algorithm_label
        >>> algorithm_label("iql"), algorithm_label("td3_bc"), algorithm_label("discrete_cql")
        ('IQL', 'TD3+BC', 'discrete CQL')
    """
    if name.startswith("discrete_"):
        return "discrete " + algorithm_label(name[len("discrete_") :])
    return _LABELS.get(name, name.upper().replace("_", "-"))


# ----------------------------------------------------------------------------- helpers
@contextmanager
def _style() -> Iterator[None]:
    import matplotlib

    with matplotlib.rc_context(_STYLE):
        yield


def _figure(width: float, height: float) -> Any:
    from matplotlib.figure import Figure

    return Figure(figsize=(width, height), dpi=_DPI, layout="constrained")


def _save(fig: Any, path: str | os.PathLike) -> Path:
    path = Path(path)
    fmt = path.suffix.lower().lstrip(".") or "png"
    return replace_file(path, lambda f: fig.savefig(f, format=fmt, dpi=_DPI))


def _steps(value: float, _pos: Any = None) -> str:
    """``250000`` -> ``"250k"``, ``1500000`` -> ``"1.5M"``."""
    if abs(value) >= 1e6:
        return f"{value / 1e6:g}M"
    if abs(value) >= 1e3:
        return f"{value / 1e3:g}k"
    return f"{value:g}"


def _steps_axis(ax: Any, label: bool = True) -> None:
    from matplotlib.ticker import FuncFormatter, MaxNLocator

    ax.xaxis.set_major_locator(MaxNLocator(nbins=6, steps=[1, 2, 2.5, 5, 10], integer=True))
    ax.xaxis.set_major_formatter(FuncFormatter(_steps))
    if label:
        ax.set_xlabel("gradient steps")


def _score_axis(ax: Any, reference: Sequence[float] | None) -> None:
    """A right-hand axis with the normalized score of the returns on the left one."""
    if not reference or reference[1] == reference[0]:
        return
    lo, hi = float(reference[0]), float(reference[1])
    scale = 100.0 / (hi - lo)
    right = ax.secondary_yaxis(
        "right", functions=(lambda r: (r - lo) * scale, lambda s: s / scale + lo)
    )
    right.set_ylabel("normalized score")


def _finite(x: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    keep = np.isfinite(x) & np.isfinite(y)
    return x[keep], y[keep]


def _metric_title(name: str) -> tuple[str, str]:
    if name in _METRICS:
        return _METRICS[name]
    short = name.rsplit("/", 1)[-1]
    if short.startswith("lr_"):
        return f"learning rate ({short[3:]})", "learning rate"
    return short, "loss" if short.startswith("loss") else short


def _legend_above_data(ax: Any) -> None:
    """The legend in the upper part of ``ax``, with the y range widened so that no data
    lies under it."""
    handles, _ = ax.get_legend_handles_labels()
    if not handles:
        return
    lo, hi = ax.get_ylim()
    rows = math.ceil(len(handles) / 2)
    ax.set_ylim(lo, hi + (hi - lo) * (0.06 + 0.09 * rows))
    ax.legend(loc="upper left", ncols=2 if len(handles) > 1 else 1)


def _log_scale_if_wide(ax: Any, values: np.ndarray) -> None:
    values = values[np.isfinite(values)]
    if values.size and values.min() > 0 and values.max() / values.min() > 100:
        ax.set_yscale("log")


# ----------------------------------------------------------------------------- one run
@dataclass
class _Run:
    """A run read from disk: its directory, metrics columns and ``run.json`` info."""

    directory: Path
    columns: dict[str, np.ndarray]
    info: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def read(cls, run: str | os.PathLike) -> _Run:
        path = metrics_path(run)
        return cls(path.parent, read_metrics(path), read_run_info(path.parent))

    def series(self, name: str) -> tuple[np.ndarray, np.ndarray]:
        """The finite ``(steps, values)`` of a column (empty when it has none)."""
        if name not in self.columns:
            return np.zeros(0), np.zeros(0)
        return _finite(self.columns[STEP].astype(np.float64), self.columns[name])

    def title(self, *, dataset: bool = True) -> str:
        """``"IQL on pendulum/mixed-v0"`` (``"IQL fine-tuning on ..."``; without the
        dataset when ``dataset`` is false; the directory's name for a run without info)."""
        info = self.info
        name = info.get("algorithm") or (info.get("config") or {}).get("algorithm")
        what = algorithm_label(str(name)) if name else self.directory.name
        if info.get("kind") == "finetune":
            what += " fine-tuning"
        if dataset and info.get("dataset"):
            what += f" on {info['dataset']}"
        return what


def plot_run(run: str | os.PathLike, out: str | os.PathLike | None = None) -> Path:
    """Draws the figure of one run (:func:`run_figure`) to a file.

    Args:
        run: the run directory (or its ``metrics.csv``).
        out: the file to write (``.png``, ``.pdf`` or ``.svg``); the run directory's
            ``metrics.png`` by default.

    Returns:
        The path written.

    Raises:
        MetricsFileError: no metrics file, an unreadable one, or nothing to draw in it
            (no evaluation, online return or loss column with a value).

    Examples:
        >>> import tempfile
        >>> from pathlib import Path
        >>> from torchrl_offline.trainers.metrics import MetricsWriter
        >>> from torchrl_offline.trainers.plot import plot_run
        >>> run = Path(tempfile.mkdtemp())
        >>> writer = MetricsWriter(run / "metrics.csv")
        >>> for step in (0, 100, 200):
        ...     writer.add("eval/return_mean", -1000.0 + 2 * step, step)
        ...     writer.add("eval/return_std", 50.0, step)
        ...     writer.add("train/loss_actor", 1.0 / (step + 1), step)
        >>> _ = writer.flush()
        >>> plot_run(run).name
        'metrics.png'
    """
    figure = run_figure(run)
    return _save(figure, metrics_path(run).parent / FIGURE_FILE if out is None else out)


def run_figure(run: str | os.PathLike) -> Figure:
    """The figure of one run, as a matplotlib :class:`~matplotlib.figure.Figure` (to show
    in a notebook, or change before saving): the evaluation panel over the loss panels.

    Raises:
        MetricsFileError: as :func:`plot_run`.
    """
    data = _Run.read(run)
    losses = [c for c in data.columns if c.startswith("train/loss") and data.series(c)[0].size]
    evaluated = data.series("eval/return_mean")[0].size > 0
    online = data.series("online/episode_return")[0].size > 0
    if not (evaluated or online or losses):
        raise MetricsFileError(
            f"{str(metrics_path(run))!r} has no value to draw: no evaluation "
            "(eval/return_mean), online return or loss (train/loss_*) column with a value"
        )
    top = evaluated or online
    ncols = min(3, max(1, len(losses)))
    loss_rows = math.ceil(len(losses) / ncols)
    with _style():
        fig = _figure(10.0, 0.7 + 3.6 * top + 2.3 * loss_rows)
        grid = fig.add_gridspec(
            top + loss_rows, ncols, height_ratios=[1.6] * top + [1.0] * loss_rows
        )
        first = None
        if top:
            first = fig.add_subplot(grid[0, :])
            _draw_returns(first, data, label=not losses)
        for i, name in enumerate(losses):
            ax = fig.add_subplot(grid[top + i // ncols, i % ncols], sharex=first)
            first = first or ax
            steps, values = data.series(name)
            ax.plot(
                steps, values, color="C0", lw=1.5, marker="o" if steps.size < 30 else None, ms=3
            )
            ax.set_title(name.removeprefix("train/"))
            _log_scale_if_wide(ax, values)
            _steps_axis(ax, label=i >= len(losses) - ncols)
        seed = data.info.get("seed")
        title = data.title() + (f", seed {seed}" if seed is not None else "")
        fig.suptitle(title, fontsize=13, fontweight="bold")
    return fig


def _draw_returns(ax: Any, data: _Run, *, label: bool) -> None:
    """The evaluation returns (mean and band), online returns and the behaviour level."""
    info = data.info
    steps, mean = data.series("eval/return_mean")
    if steps.size:
        episodes = info.get("eval_episodes")
        over = f" over {episodes} episodes" if episodes else ""
        ax.plot(steps, mean, color="C0", lw=2, marker="o", ms=4, label="mean return")
        std_steps, std = data.series("eval/return_std")
        if std_steps.size == steps.size and np.array_equal(std_steps, steps):
            ax.fill_between(
                steps, mean - std, mean + std, color="C0", alpha=0.2, lw=0, label=f"± std{over}"
            )
    online_steps, online = data.series("online/episode_return")
    if online_steps.size:
        ax.scatter(
            online_steps, online, s=10, color="C1", alpha=0.6, label="online training episodes"
        )
    level = info.get("behaviour_return")
    if level is not None:
        ax.axhline(
            level, color="0.35", ls="--", lw=1.2, label=f"behaviour data: mean return {level:.4g}"
        )
    where = f" in {info['eval_env']}" if info.get("eval_env") else ""
    ax.set_title(f"evaluation{where}" if steps.size else "online episodes")
    ax.set_ylabel("return")
    _legend_above_data(ax)
    _score_axis(ax, info.get("reference"))
    _steps_axis(ax, label=label)


# ----------------------------------------------------------------------------- many runs
@dataclass
class _Group:
    """Runs of one config (or one run alone)."""

    runs: list[_Run]
    label: str = ""


def _groups(runs: list[_Run], *, dataset: bool) -> list[_Group]:
    groups: dict[str, _Group] = {}
    for i, run in enumerate(runs):
        key = config_key(run.info) or f"run {i}"
        groups.setdefault(key, _Group([])).runs.append(run)
    found = list(groups.values())
    _label_groups(found, dataset=dataset)
    return found


def _label_groups(groups: list[_Group], *, dataset: bool) -> None:
    """Labels that tell the groups apart: the algorithm (and dataset), then the
    hyperparameters that differ, then a run directory's name."""
    for g in groups:
        g.label = g.runs[0].title(dataset=dataset)
    by_label: dict[str, list[_Group]] = {}
    for g in groups:
        by_label.setdefault(g.label, []).append(g)
    for same in by_label.values():
        if len(same) < 2:
            continue
        hps = [(g.runs[0].info.get("config") or {}).get("hyperparameters") or {} for g in same]
        keys = sorted({k for hp in hps for k in hp})
        differing = [k for k in keys if len({repr(hp.get(k)) for hp in hps}) > 1]
        for g, hp in zip(same, hps):
            extra = ", ".join(f"{k}={hp.get(k)!r}" for k in differing)
            g.label += f" ({extra})" if extra else f" ({g.runs[0].directory.name})"


def _resolve(name: str, columns: set[str]) -> str:
    """The column ``name`` names: itself, or the one column ending in ``/name``."""
    if name in columns:
        return name
    found = sorted(c for c in columns if c.rsplit("/", 1)[-1] == name)
    if len(found) == 1:
        return found[0]
    if found:
        raise MetricsFileError(f"metric {name!r} is ambiguous: {', '.join(found)}")
    raise MetricsFileError(
        f"no run has a column {name!r}; columns: {', '.join(sorted(columns - {STEP}))}"
    )


def _aggregate(runs: list[_Run], name: str, band: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Steps, mean over the runs and half-width of the band (std or standard error over
    the runs with a value at that step; 0 where only one has)."""
    values: dict[float, list[float]] = {}
    for run in runs:
        for step, value in zip(*run.series(name)):
            values.setdefault(float(step), []).append(float(value))
    steps = np.array(sorted(values))
    mean = np.array([np.mean(values[s]) for s in steps])
    width = []
    for s in steps:
        v = values[s]
        sd = float(np.std(v, ddof=1)) if len(v) > 1 else 0.0
        width.append(sd / math.sqrt(len(v)) if band == "se" else sd)
    return steps, mean, np.array(width)


def plot_runs(
    runs: Sequence[str | os.PathLike],
    out: str | os.PathLike,
    *,
    metrics: Sequence[str] | None = None,
    band: str = "std",
) -> Path:
    """Overlays runs, one panel per metric, in a file (:func:`runs_figure` saved to ``out``).

    Runs sharing a config (the same kind, algorithm, hyperparameters, dataset, spaces and
    batch size: seeds of one experiment, as their ``run.json`` records) are drawn as the
    mean over the seeds with a band, the other runs as lines of their own. On the
    evaluation-return panel, the behaviour data's mean episode return is drawn dashed and,
    when every run has the same reference returns, the normalized score on a second axis.

    Args:
        runs: run directories (or their ``metrics.csv``).
        out: the file to write (``.png``, ``.pdf`` or ``.svg``).

    Keyword Args:
        metrics: the columns to draw (``"eval/return_mean"``, or the part after the last
            ``/``, e.g. ``"loss_actor"``); ``eval/return_mean`` by default.
        band: ``"std"`` (standard deviation over the seeds) or ``"se"`` (standard error
            of their mean). The legend says which, and over how many seeds.

    Returns:
        The path written.

    Raises:
        MetricsFileError: a run that is not one (the path named), or a metric no run has.
        ValueError: no run, or an unknown ``band``.

    Examples:
        >>> import tempfile
        >>> from pathlib import Path
        >>> from torchrl_offline.trainers.metrics import MetricsWriter
        >>> from torchrl_offline.trainers.plot import plot_runs
        >>> base = Path(tempfile.mkdtemp())
        >>> for seed in (0, 1):
        ...     writer = MetricsWriter(base / f"s{seed}" / "metrics.csv")
        ...     for step in (0, 100):
        ...         writer.add("eval/return_mean", step * (1 + seed), step)
        ...     _ = writer.flush()
        >>> plot_runs([base / "s0", base / "s1"], base / "both.png").name
        'both.png'
    """
    return _save(runs_figure(runs, metrics=metrics, band=band), out)


def runs_figure(
    runs: Sequence[str | os.PathLike],
    *,
    metrics: Sequence[str] | None = None,
    band: str = "std",
) -> Figure:
    """The figure of :func:`plot_runs`, as a matplotlib :class:`~matplotlib.figure.Figure`.

    Raises:
        MetricsFileError, ValueError: as :func:`plot_runs`.
    """
    if not runs:
        raise ValueError("plot_runs: no run given")
    if band not in BANDS:
        raise ValueError(f"band must be one of {', '.join(BANDS)}, got {band!r}")
    loaded = [_Run.read(r) for r in runs]
    columns = {c for run in loaded for c in run.columns}
    names = [_resolve(m, columns) for m in (metrics or ["eval/return_mean"])]
    datasets = {run.info.get("dataset") for run in loaded}
    common = datasets.pop() if len(datasets) == 1 else None
    groups = _groups(loaded, dataset=common is None)
    ncols = 1 if len(names) == 1 else 2
    nrows = math.ceil(len(names) / ncols)
    with _style():
        fig = _figure(9.0 if ncols == 1 else 12.0, 1.0 + 0.25 * len(groups) + 4.0 * nrows)
        axes = fig.subplots(nrows, ncols, squeeze=False).reshape(-1)
        for ax in axes[len(names) :]:
            ax.set_visible(False)
        for ax, name in zip(axes, names):
            _draw_metric(ax, name, groups, band)
        labels: dict[str, Any] = {}  # one legend for every panel, under them
        for ax in axes[: len(names)]:
            for handle, label in zip(*ax.get_legend_handles_labels()):
                labels.setdefault(label, handle)
        if labels:
            fig.legend(labels.values(), labels.keys(), loc="outside lower center")
        algorithms = list(dict.fromkeys(g.runs[0].title(dataset=False) for g in groups))
        title = " vs ".join(algorithms) if len(algorithms) <= 3 else f"{len(groups)} configs"
        fig.suptitle(title + (f" on {common}" if common else ""), fontsize=13, fontweight="bold")
    return fig


def _draw_metric(ax: Any, name: str, groups: list[_Group], band: str) -> None:
    title, ylabel = _metric_title(name)
    envs = {run.info.get("eval_env") for g in groups for run in g.runs}
    if name.startswith("eval/") and len(envs) == 1 and None not in envs:
        title += f" in {envs.pop()}"
    drawn = 0
    for i, group in enumerate(groups):
        color = f"C{i % 10}"
        seeds = len(group.runs)
        steps, mean, width = _aggregate(group.runs, name, band)
        if not steps.size:
            continue
        drawn += 1
        if seeds > 1:
            label = f"{group.label}: mean ± {band} over {seeds} seeds"
            ax.fill_between(steps, mean - width, mean + width, color=color, alpha=0.2, lw=0)
        else:
            seed = group.runs[0].info.get("seed")
            label = group.label + (f", seed {seed}" if seed is not None else "")
        marker = "o" if steps.size < 30 else None
        ax.plot(steps, mean, color=color, lw=2, marker=marker, ms=4, label=label)
    if not drawn:
        ax.text(0.5, 0.5, f"no run has values of {name}", ha="center", transform=ax.transAxes)
    if name == "eval/return_mean":
        _behaviour_lines(ax, [run for g in groups for run in g.runs])
    ax.set_title(title)
    ax.set_ylabel(ylabel)
    _steps_axis(ax)
    if name.startswith("train/loss"):
        _log_scale_if_wide(ax, np.concatenate([g.runs[0].series(name)[1] for g in groups]))


def _behaviour_lines(ax: Any, runs: list[_Run]) -> None:
    levels = {}
    for run in runs:
        level = run.info.get("behaviour_return")
        if level is not None:
            levels.setdefault(run.info.get("dataset") or run.directory.name, level)
    for j, (dataset, level) in enumerate(levels.items()):
        what = "behaviour data" if len(levels) == 1 else f"behaviour data ({dataset})"
        ax.axhline(
            level, color="0.35", ls=("--", ":", "-.")[j % 3], lw=1.2,
            label=f"{what}: mean return {level:.4g}",
        )  # fmt: skip
    references = {tuple(run.info.get("reference") or ()) for run in runs}
    if len(references) == 1:
        _score_axis(ax, references.pop() or None)


# ----------------------------------------------------------------------------- curves
def plot_learning_curves(
    curves: Mapping[str, Sequence[tuple[float, float]]],
    path: str | os.PathLike,
    *,
    title: str = "",
    xlabel: str = "gradient steps",
    ylabel: str = "return",
    hlines: Mapping[str, float] | None = None,
    bands: Mapping[str, Sequence[tuple[float, float, float]]] | None = None,
    size: tuple[int, int] = (900, 540),
) -> Path:
    """Draws curves of ``(step, value)`` points and labelled horizontal lines.

    Args:
        curves: ``name -> [(x, y), ...]``, e.g. the evaluation returns of a run
            (``[(e["step"], e["return_mean"]) for e in result.evaluations]``).
        path: the file to write (``.png``, ``.pdf``, ``.svg``; its folder is created).
        title: the title above the plot.
        xlabel: the x-axis label.
        ylabel: the y-axis label.
        hlines: ``name -> y`` reference levels drawn dashed across the plot (e.g. the
            behaviour policy's return).
        bands: ``name -> [(x, low, high), ...]``: a shaded band around the curve of
            the same name (e.g. mean ± std over seeds).
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
        ...     title="IQL on Pendulum-v1", hlines={"behaviour": -550.0})
        >>> out.suffix
        '.png'
    """
    hlines = dict(hlines or {})
    bands = dict(bands or {})
    points = [(float(x), float(y)) for pts in curves.values() for x, y in pts]
    if not any(math.isfinite(x) and math.isfinite(y) for x, y in points):
        raise ValueError("plot_learning_curves: the curves have no finite point to draw")
    with _style():
        fig = _figure(size[0] / _DPI, size[1] / _DPI)
        ax = fig.add_subplot()
        for i, (name, pts) in enumerate(curves.items()):
            color = f"C{i % 10}"
            xy = np.array(sorted((float(x), float(y)) for x, y in pts), dtype=np.float64)
            x, y = _finite(*xy.reshape(-1, 2).T)
            if name in bands:
                bx, lo, hi = np.array(sorted(bands[name]), dtype=np.float64).reshape(-1, 3).T
                ax.fill_between(bx, lo, hi, color=color, alpha=0.2, lw=0)
            marker = "o" if x.size < 30 else None
            ax.plot(x, y, color=color, lw=2, marker=marker, ms=4, label=name)
        for j, (name, level) in enumerate(hlines.items()):
            color = f"C{(len(curves) + j) % 10}"
            ax.axhline(float(level), color=color, ls="--", lw=1.5, label=name)
        ax.set_ylabel(ylabel)
        _steps_axis(ax, label=False)
        ax.set_xlabel(xlabel)
        if title:
            ax.set_title(title, fontsize=12)
        ax.legend(loc="best")
        return _save(fig, path)
