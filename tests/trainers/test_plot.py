"""Figures: a run's figure, runs overlaid with a band over seeds, learning curves."""

from __future__ import annotations

import pytest
from matplotlib.collections import PolyCollection
from PIL import Image

from torchrl_offline.trainers.metrics import MetricsFileError, MetricsWriter
from torchrl_offline.trainers.plot import (
    algorithm_label,
    plot_learning_curves,
    plot_run,
    plot_runs,
    run_figure,
    runs_figure,
)
from torchrl_offline.trainers.run_dir import claim_run_directory
from torchrl_offline.trainers.run_info import record_run_info

STEPS = (0, 50, 100)


def _run(directory, *, seed=0, expectile=0.7, losses=("loss_actor", "loss_qvalue"), level=-700.0):
    """A run directory as a train run leaves it: run.json with its info, metrics.csv."""
    with claim_run_directory(directory, kind="train", algorithm="iql"):
        config = {"algorithm": "iql", "hyperparameters": {"expectile": expectile}}
        record_run_info(
            directory,
            {
                "algorithm": "iql",
                "seed": seed,
                "dataset": "pendulum/mixed-v0",
                "behaviour_return": level,
                "reference": [-1200.0, -150.0],
                "eval_env": "Pendulum-v1",
                "eval_episodes": 5,
                "config": {"kind": "train", **config},
            },
        )
        writer = MetricsWriter(directory / "metrics.csv")
        for step in STEPS:
            writer.add("eval/return_mean", -1000.0 + 3 * step + 20 * seed, step)
            writer.add("eval/return_std", 40.0, step)
            for i, loss in enumerate(losses):
                writer.add(f"train/{loss}", (i + 1) / (step + 1), step)
        writer.flush()
        (directory / "summary.json").write_text('{"algorithm": "iql", "step": 100}')  # a run
    return directory


def _bands(fig):
    return [c for ax in fig.axes for c in ax.collections if isinstance(c, PolyCollection)]


def _legend(fig):
    return [t.get_text() for legend in fig.legends for t in legend.get_texts()]


def test_the_figure_of_a_run_is_a_png_with_returns_and_loss_panels(tmp_path):
    run = _run(tmp_path / "run", losses=("loss_actor", "loss_qvalue", "loss_value", "loss_alpha"))
    path = plot_run(run)
    assert path == run / "metrics.png"
    image = Image.open(path)
    assert image.format == "PNG" and image.size[0] == 1000 and 600 < image.size[1] < 1100
    fig = run_figure(run)
    returns, *losses = fig.axes[:5]
    assert fig._suptitle.get_text() == "IQL on pendulum/mixed-v0, seed 0"
    assert returns.get_title() == "evaluation in Pendulum-v1" and returns.get_ylabel() == "return"
    labels = returns.get_legend_handles_labels()[1]
    assert labels == ["mean return", "± std over 5 episodes", "behaviour data: mean return -700"]
    assert [ax.get_title() for ax in losses] == [
        "loss_actor",
        "loss_qvalue",
        "loss_value",
        "loss_alpha",
    ]
    assert [ax.get_xlabel() for ax in losses] == [
        "",
        "gradient steps",
        "gradient steps",
        "gradient steps",
    ]
    assert len(_bands(fig)) == 1  # the spread over evaluation episodes
    score = [c for c in returns.child_axes if c.get_ylabel() == "normalized score"]
    assert len(score) == 1


def test_two_seeds_of_one_config_are_one_band_and_another_config_a_line(tmp_path):
    seeds = [_run(tmp_path / f"s{seed}", seed=seed) for seed in (0, 1)]
    other = _run(tmp_path / "other", expectile=0.9)
    fig = runs_figure([*seeds, other])
    assert len(_bands(fig)) == 1
    assert _legend(fig) == [
        "IQL (expectile=0.7): mean ± std over 2 seeds",
        "IQL (expectile=0.9), seed 0",
        "behaviour data: mean return -700",
    ]
    assert fig._suptitle.get_text() == "IQL on pendulum/mixed-v0"
    band = _bands(fig)[0].get_paths()[0].vertices[:, 1]
    assert band.min() == pytest.approx(-1000 + 10 - 20 / 2**0.5)  # mean -990, std 14.1
    fig = runs_figure(seeds, metrics=["return_mean", "loss_qvalue"], band="se")
    assert [ax.get_title() for ax in fig.axes[:2]] == [
        "evaluation return in Pendulum-v1",
        "loss_qvalue",
    ]
    assert _legend(fig)[0] == "IQL: mean ± se over 2 seeds"
    path = plot_runs(seeds, tmp_path / "out" / "seeds.png")
    assert Image.open(path).format == "PNG"


def test_bad_runs_and_metrics_are_named(tmp_path):
    with pytest.raises(MetricsFileError, match="'.*missing' does not exist"):
        plot_runs([tmp_path / "missing"], tmp_path / "x.png")
    (tmp_path / "empty").mkdir()
    with pytest.raises(MetricsFileError, match="'.*empty' holds no metrics.csv"):
        plot_run(tmp_path / "empty")
    run = _run(tmp_path / "run")
    with pytest.raises(MetricsFileError, match="no run has a column 'loss_bc'; columns: "):
        plot_runs([run], tmp_path / "x.png", metrics=["loss_bc"])
    with pytest.raises(ValueError, match="band must be one of std, se"):
        plot_runs([run], tmp_path / "x.png", band="iqr")
    assert not (tmp_path / "x.png").exists()


def test_learning_curves_png(tmp_path):
    path = plot_learning_curves(
        {"IQL": [(0, -1400.0), (1000, -900.0), (2000, -300.0)], "BC": [(0, -1200), (2000, -600)]},
        tmp_path / "sub" / "curve.png",
        title="IQL on Pendulum-v1",
        hlines={"behaviour": -550.0},
        bands={"IQL": [(0, -1500.0, -1300.0), (2000, -400.0, -200.0)]},
        size=(640, 400),
    )
    image = Image.open(path)
    assert image.format == "PNG" and image.size == (640, 400)
    colors = {c for _, c in image.convert("RGB").getcolors(maxcolors=1 << 16)}
    assert (31, 119, 180) in colors and (255, 127, 14) in colors and (44, 160, 44) in colors
    assert plot_learning_curves({"a": [(5, 1.0)]}, tmp_path / "one.png").exists()
    with pytest.raises(ValueError, match="no finite point"):
        plot_learning_curves({"a": []}, tmp_path / "none.png")
    with pytest.raises(ValueError, match="no finite point"):
        plot_learning_curves({"a": [(0, float("nan"))]}, tmp_path / "nan.png")


def test_algorithm_labels():
    assert [algorithm_label(n) for n in ("iql", "td3_bc", "discrete_bcq", "sac_n")] == [
        "IQL",
        "TD3+BC",
        "discrete BCQ",
        "SAC-N",
    ]
