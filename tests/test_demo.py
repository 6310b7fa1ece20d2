"""The README's main job (``make demo``) runs end to end with a tiny budget."""

from __future__ import annotations

import runpy
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_demo_runs_end_to_end(tmp_path, monkeypatch, capsys):
    out = tmp_path / "run"
    monkeypatch.setattr(
        sys,
        "argv",
        [
            "demo.py",
            "--steps", "600",
            "--root", str(tmp_path / "minari"),
            "--train-steps", "20",
            "--eval-every", "10",
            "--eval-episodes", "1",
            "--out", str(out),
        ],
    )  # fmt: skip
    runpy.run_path(str(ROOT / "examples" / "demo.py"), run_name="__main__")
    printed = capsys.readouterr().out
    assert "transitions      600" in printed
    assert "| behaviour policy (dataset mean) |" in printed
    assert "| iql, final (step 20) |" in printed
    assert f"figure: {out / 'metrics.png'}" in printed
    assert (out / "metrics.png").read_bytes()[:4] == b"\x89PNG"
    assert list((out / "checkpoints").glob("checkpoint_*.pt"))
