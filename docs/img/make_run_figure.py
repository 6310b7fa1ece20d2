"""Draws ``docs/img/run_figure.png``: the figure of a real, small training run.

The command line's path: ``collect`` a mixed Pendulum dataset (a scripted swing-up
controller with small and large Gaussian noise, and uniform random torques, mixed per
episode, with measured reference returns), then ``train`` IQL with 64x64 networks for
3000 gradient steps, evaluated every 250 steps over 5 episodes. The run's own
``metrics.png`` is copied, reduced to a 64-colour palette to keep it small. About three
minutes on a laptop CPU; run from the repository root::

    python docs/img/make_run_figure.py
"""

from __future__ import annotations

import tempfile
from pathlib import Path

from PIL import Image

from torchrl_offline.cli import main

OUT = Path(__file__).resolve().parent / "run_figure.png"


def run(*argv: str) -> None:
    if main(list(argv)) != 0:
        raise SystemExit(f"torchrl-offline {argv[0]} failed")


if __name__ == "__main__":
    work = Path(tempfile.mkdtemp())
    root, out = str(work / "minari"), work / "iql"
    run("collect", "Pendulum-v1", "--dataset-id", "pendulum/mixed-v0", "--steps", "10000",
        "--policy", "0.3*scripted:sigma=0.2", "--policy", "0.3*scripted:sigma=1.0",
        "--policy", "0.4*random", "--reference-episodes", "5", "--root", root)  # fmt: skip
    run("train", "--algo", "iql", "--dataset", "pendulum/mixed-v0", "--root", root,
        "--steps", "3000", "--out", str(out), "--set", "hidden_sizes=(64,64)",
        "--eval-env", "auto", "--eval-every", "250", "--eval-episodes", "5",
        "--log-every", "100", "--checkpoint-every", "3000")  # fmt: skip
    image = Image.open(out / "metrics.png").convert("RGB")
    image.convert("P", palette=Image.Palette.ADAPTIVE, colors=64).save(OUT, optimize=True)
    print(f"{OUT}: {OUT.stat().st_size} bytes")
