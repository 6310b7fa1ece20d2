"""An algorithm another package declares through the entry-point group trains like ours.

The package is ``examples/plugin`` (``filtered_bc.py`` and the entry point of its
``pyproject.toml``), installed here as pip would leave it: the module and a
``.dist-info`` folder with ``entry_points.txt`` on ``sys.path``.
"""

from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path

import pytest
import torch

from torchrl_offline import registry
from torchrl_offline.cli import main

PLUGIN = Path(__file__).resolve().parents[1] / "examples" / "plugin"
TINY = ["--batch-size", "16", "--log-every", "5", "--no-progress", "--eval-env", "none"]


def _entry_points_txt() -> str:
    """The ``[project.entry-points]`` table of the plugin's pyproject, as pip writes it."""
    import tomllib

    project = tomllib.loads((PLUGIN / "pyproject.toml").read_text())["project"]
    lines = []
    for group, entries in project["entry-points"].items():
        lines.append(f"[{group}]")
        lines.extend(f"{name} = {target}" for name, target in entries.items())
    return "\n".join(lines) + "\n"


@pytest.fixture
def installed_plugin(tmp_path, monkeypatch):
    site = tmp_path / "site-packages"
    dist = site / "torchrl_offline_filtered_bc-0.1.0.dist-info"
    dist.mkdir(parents=True)
    shutil.copy(PLUGIN / "filtered_bc.py", site / "filtered_bc.py")
    (dist / "METADATA").write_text(
        "Metadata-Version: 2.1\nName: torchrl-offline-filtered-bc\nVersion: 0.1.0\n"
    )
    (dist / "entry_points.txt").write_text(_entry_points_txt())
    monkeypatch.syspath_prepend(str(site))
    # a fresh registry that has not read the entry points yet
    entries = {kind: dict(table) for kind, table in registry._entries.items()}
    monkeypatch.setattr(registry, "_entries", entries)
    monkeypatch.setattr(registry, "_entry_points_loaded", False)
    yield site
    sys.modules.pop("filtered_bc", None)


def test_the_plugin_is_listed_as_an_algorithm_and_a_loss(installed_plugin):
    assert "filtered_bc" in registry.names("algorithm")
    assert "filtered_bc" in registry.names("loss")
    assert registry.get("loss", "filtered_bc").__name__ == "FilteredBCLoss"
    from torchrl_offline.trainers.algorithms import algorithm_defaults

    assert algorithm_defaults("filtered_bc")["hidden_sizes"] == (64, 64)


def test_the_plugin_trains_resumes_and_evaluates_from_the_command_line(
    installed_plugin, tmp_path, capsys
):
    torch.set_num_threads(1)
    root = str(tmp_path / "minari")
    collect = ["collect", "Pendulum-v1", "--dataset-id", "pendulum/plugin-v0", "--steps", "300",
               "--policy", "0.5*scripted:sigma=0.3", "--policy", "0.5*random",
               "--root", root, "--no-progress"]  # fmt: skip
    assert main(collect) == 0
    run = tmp_path / "run"
    argv = ["train", "--algo", "filtered_bc", "--dataset", "pendulum/plugin-v0", "--root", root,
            "--out", str(run), "--checkpoint-every", "10", "--set", "hidden_sizes=(16,16)", *TINY]  # fmt: skip
    assert main([*argv, "--steps", "20"]) == 0
    assert "filtered_bc: 20 gradient steps" in capsys.readouterr().out
    summary = json.loads((run / "summary.json").read_text())
    assert summary["algorithm"] == "filtered_bc"
    assert summary["hyperparameters"]["hidden_sizes"] == [16, 16]

    assert main([*argv, "--steps", "30", "--resume"]) == 0
    assert json.loads((run / "summary.json").read_text())["step"] == 30

    evaluate = ["evaluate", str(run), "--env", "Pendulum-v1", "--episodes", "1",
                "--max-steps", "10", "--no-progress"]  # fmt: skip
    assert main(evaluate) == 0
    assert "filtered_bc at step 30" in capsys.readouterr().out


def test_the_plugin_has_a_hydra_loss_config(installed_plugin):
    pytest.importorskip("hydra")
    from hydra.utils import instantiate
    from omegaconf import OmegaConf
    from torchrl.data import Bounded

    from torchrl_offline.configs import loss_configs, register_configs
    from torchrl_offline.objectives.networks import NetworkFactory

    assert "filtered_bc" in loss_configs()
    assert "offline_filtered_bc.yaml" in register_configs(_fresh_store()).repo["loss"]
    nets = NetworkFactory(3, Bounded(-1.0, 1.0, (1,)), hidden_sizes=(8,))
    cfg = OmegaConf.structured(loss_configs()["filtered_bc"])
    loss = instantiate(
        cfg, actor_network=nets.deterministic_actor(), qvalue_network=nets.qvalue(), gamma=0.5
    )
    assert type(loss).__name__ == "FilteredBCLoss" and loss.gamma == 0.5


def _fresh_store():
    from hydra.core.config_store import ConfigStore

    cs = object.__new__(ConfigStore)
    cs.__init__()
    return cs
