"""Shared helpers for the Hydra config tests: a tiny log file and a compose helper."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from hydra import compose, initialize_config_dir
from omegaconf import DictConfig

from torchrl_offline.configs import register_configs

torch.set_num_threads(1)

ROOT = Path(__file__).resolve().parents[2]
EXAMPLES = ROOT / "examples" / "conf"
TINY_NETWORKS = [f"networks.{n}.num_cells=[8]" for n in ("policy", "qvalue", "value")]


def write_log(path: Path, *, n: int = 64, discrete: int | None = None, seed: int = 0) -> Path:
    """A Parquet log of ``n`` transitions (3 observations; 1 action in [-1, 1] or
    ``discrete`` integer actions) in episodes of 16 steps."""
    rng = np.random.default_rng(seed)
    obs = rng.normal(size=(n, 3)).astype(np.float32)
    columns = {f"observation_{i}": obs[:, i] for i in range(3)}
    if discrete is None:
        columns["action_0"] = rng.uniform(-1, 1, n).astype(np.float32)
    else:
        columns["action"] = rng.integers(0, discrete, n)
    columns["reward"] = rng.normal(size=n).astype(np.float32)
    columns["terminated"] = np.arange(n) % 16 == 15
    pd.DataFrame(columns).to_parquet(path)
    return path


@pytest.fixture(scope="session", autouse=True)
def _registered() -> None:
    register_configs()


@pytest.fixture
def compose_example():
    """``compose_example(overrides)``: the example's config with ``overrides``."""

    def _compose(overrides: Sequence[str] = ()) -> DictConfig:
        with initialize_config_dir(config_dir=str(EXAMPLES), version_base="1.3"):
            return compose("hydra_train", overrides=list(overrides))

    return _compose
