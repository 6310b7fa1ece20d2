"""Smoke tests of ``examples/``: every script runs end to end with a tiny budget."""

from __future__ import annotations

import runpy
import sys
from pathlib import Path

import pytest
import torch

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"
TINY = ["--dataset-steps", "300", "--batch-size", "32", "--hidden", "16",
        "--eval-every", "3", "--eval-episodes", "1"]  # fmt: skip
ALGORITHMS = ["iql", "cql", "awac", "td3_bc", "bc", "discrete_cql", "awr", "rebrac", "cal_ql",
              "bcq", "bear", "edac", "discrete_bcq"]  # fmt: skip


@pytest.fixture
def run_example(tmp_path, monkeypatch, capsys):
    """Runs ``examples/<name>.py`` as ``__main__`` with ``argv``; returns its stdout."""
    previous = torch.get_num_threads()
    monkeypatch.syspath_prepend(str(EXAMPLES))
    monkeypatch.delitem(sys.modules, "common", raising=False)

    def run(name: str, *argv: str) -> str:
        monkeypatch.setattr(sys, "argv", [f"{name}.py", *TINY, "--root", str(tmp_path), *argv])
        runpy.run_path(str(EXAMPLES / f"{name}.py"), run_name="__main__")
        return capsys.readouterr().out

    yield run
    sys.modules.pop("common", None)
    torch.set_num_threads(previous)


@pytest.mark.parametrize("name", ALGORITHMS)
def test_algorithm_example(run_example, name):
    out = run_example(name, "--steps", "6")
    assert "dataset: 300 transitions; untrained policy return" in out
    lines = [line for line in out.splitlines() if line.startswith("step ")]
    assert [line.split(":")[0] for line in lines] == ["step 3", "step 6"]
    assert all("return " in line for line in lines)


def test_offline_to_online_example(run_example, tmp_path):
    out = run_example("offline_to_online", "--steps", "4", "--online-steps", "6",
                      "--frames-per-batch", "3", "--out", str(tmp_path / "run"))  # fmt: skip
    assert "after 4 offline IQL updates:" in out and "after 6 online updates:" in out
    assert (tmp_path / "run" / "online" / "checkpoints" / "checkpoint_000000006.pt").is_file()


def test_ope_selection_example(run_example):
    with pytest.warns(Warning):  # FQE warns that 4 updates cannot propagate the value
        out = run_example("ope_selection", "--steps", "4", "--fqe-steps", "4")
    assert "| policy | FQE estimate | 95% interval | true value |" in out
    assert "selected by FQE:" in out and "Spearman rank correlation" in out
