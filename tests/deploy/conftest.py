"""Fixtures of the deployment tests (one torch thread): checkpoints written by ``train``."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest
import torch

from tests.trainers.conftest import make_dataset
from torchrl_offline.trainers.offline import train

torch.set_num_threads(1)


def train_run(out_dir: Path, algorithm: str, *, discrete: bool = False, steps: int = 2) -> Path:
    """A ``steps``-update run of ``algorithm`` on a tiny random dataset (observations
    normalised, 8-unit networks) in ``out_dir``: the run directory, with its checkpoint."""
    hidden = {"hidden_sizes": (8, 8)}
    if algorithm in ("bcq", "bear"):
        hidden["vae_hidden_sizes"] = (8, 8)
    train(
        algorithm,
        make_dataset(n=64, discrete=discrete),
        total_steps=steps,
        seed=0,
        out_dir=out_dir,
        batch_size=16,
        overrides=hidden,
        normalize_observations=True,
        checkpoint_interval=steps,
        logger=None,
        progress=False,
    )
    return out_dir


@pytest.fixture(scope="session")
def runs(tmp_path_factory) -> Callable[..., Path]:
    """``runs(algorithm, discrete=False)``: the run directory of a 2-update run, trained
    once per session."""
    made: dict[tuple[str, bool], Path] = {}
    base = tmp_path_factory.mktemp("deploy_runs")

    def get(algorithm: str, *, discrete: bool = False) -> Path:
        key = (algorithm, discrete)
        if key not in made:
            folder = base / f"{algorithm}-{int(discrete)}"
            made[key] = train_run(folder, algorithm, discrete=discrete)
        return made[key]

    return get
