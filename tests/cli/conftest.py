"""Fixtures of the command-line tests: one torch thread, a tiny collected dataset."""

from __future__ import annotations

import pytest
import torch

from torchrl_offline.cli import main


@pytest.fixture(autouse=True)
def _one_thread():
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


@pytest.fixture
def pendulum_dataset(tmp_path) -> tuple[str, str]:
    """A 400-step mixed Pendulum dataset with reference returns: ``(dataset id, root)``."""
    root = str(tmp_path / "minari")
    code = main(
        [
            "collect", "Pendulum-v1", "--dataset-id", "pendulum/tiny-v0", "--steps", "400",
            "--policy", "0.5*scripted:sigma=0.3", "--policy", "0.5*random",
            "--ref-min", "-1200", "--ref-max", "-150", "--root", root, "--no-progress",
        ]
    )  # fmt: skip
    assert code == 0
    return "pendulum/tiny-v0", root


@pytest.fixture(scope="session")
def trained_run(tmp_path_factory) -> dict[str, str]:
    """A tiny Pendulum dataset and a 20-step IQL run on it (two checkpoints).

    Returns ``{"root", "dataset", "run", "cache"}``; tests pass ``--root`` explicitly and
    point ``$TORCHRL_OFFLINE_CACHE`` at ``cache`` only while this fixture builds.
    """
    base = tmp_path_factory.mktemp("trained_run")
    paths = {
        "root": str(base / "minari"),
        "dataset": "pendulum/run-v0",
        "run": str(base / "run"),
        "cache": str(base / "cache"),
    }
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("TORCHRL_OFFLINE_CACHE", paths["cache"])
        mp.setenv("MINARI_DATASETS_PATH", paths["root"])
        assert (
            main(
                [
                    "collect", "Pendulum-v1", "--dataset-id", paths["dataset"], "--steps", "400",
                    "--policy", "0.5*scripted:sigma=0.3", "--policy", "0.5*random",
                    "--ref-min", "-1200", "--ref-max", "-150", "--root", paths["root"],
                    "--no-progress",
                ]
            )
            == 0
        )  # fmt: skip
        assert (
            main(
                [
                    "train", "--algo", "iql", "--dataset", paths["dataset"], "--root",
                    paths["root"], "--steps", "20", "--out", paths["run"], "--batch-size", "16",
                    "--set", "hidden_sizes=(16,16)", "--checkpoint-every", "10",
                    "--log-every", "10", "--eval-env", "none", "--no-progress",
                ]
            )
            == 0
        )  # fmt: skip
    torch.set_num_threads(previous)
    return paths
