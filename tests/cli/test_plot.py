"""``torchrl-offline plot``."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
from matplotlib.collections import PolyCollection
from PIL import Image

from torchrl_offline.cli import main
from torchrl_offline.trainers.plot import runs_figure


def test_plot_redraws_the_figure_of_one_run(trained_run, tmp_path, capsys):
    run = tmp_path / "run"
    shutil.copytree(trained_run["run"], run)
    (run / "metrics.png").unlink()
    assert main(["plot", str(run)]) == 0
    assert capsys.readouterr().out.strip() == f"figure: {run / 'metrics.png'}"
    assert Image.open(run / "metrics.png").format == "PNG"


def test_plot_overlays_two_seeds_of_one_config_as_one_band(trained_run, tmp_path, capsys):
    seed1 = tmp_path / "seed1"
    argv = ["train", "--algo", "iql", "--dataset", trained_run["dataset"], "--root",
            trained_run["root"], "--steps", "20", "--out", str(seed1), "--batch-size", "16",
            "--set", "hidden_sizes=(16,16)", "--checkpoint-every", "10", "--log-every", "10",
            "--no-progress", "--seed", "1"]  # fmt: skip
    assert main(argv) == 0
    runs = [trained_run["run"], str(seed1)]
    out = tmp_path / "seeds.png"
    assert main(["plot", *runs, "--metric", "loss_qvalue", "--out", str(out)]) == 0
    assert f"figure: {out}" in capsys.readouterr().out
    assert Image.open(out).format == "PNG"
    fig = runs_figure(runs, metrics=["loss_qvalue"])
    bands = [c for c in fig.axes[0].collections if isinstance(c, PolyCollection)]
    assert len(bands) == 1
    legend = [t.get_text() for t in fig.legends[0].get_texts()]
    assert legend == ["IQL: mean ± std over 2 seeds"]
    assert fig._suptitle.get_text() == f"IQL on {trained_run['dataset']}"


@pytest.mark.parametrize(
    ("argv", "message", "status"),
    [
        (
            ["no/such/run"],
            "'no/such/run' does not exist: name a run directory or its metrics.csv",
            1,
        ),
        (["."], "'.' holds no metrics.csv: not the directory of a train or finetune run", 1),
        (["RUN", "--out", "plot.jpg"], "--out must end in .png, .pdf, .svg", 2),
        (["RUN", "--metric", "loss_bc"], "no run has a column 'loss_bc'; columns: ", 1),
    ],
)
def test_bad_runs_and_options_are_clear_errors(
    trained_run, tmp_path, monkeypatch, capsys, argv, message, status
):
    monkeypatch.chdir(tmp_path)
    argv = [trained_run["run"] if a == "RUN" else a for a in argv]
    assert main(["plot", *argv]) == status
    assert f"torchrl-offline plot: error: {message}" in capsys.readouterr().err
    assert not list(Path(tmp_path).glob("*.png")) and not list(Path(tmp_path).glob("*.jpg"))
