"""``offline_spec``: network sizes and action bounds read from the config's dataset."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch
from hydra.utils import instantiate
from omegaconf import OmegaConf
from omegaconf.errors import InterpolationResolutionError

from tests.configs.conftest import TINY_NETWORKS
from torchrl_offline.configs.specs import SPEC_FIELDS


def _log(path, *, obs_dim=5, act_dim=2, discrete=None, n=48, seed=0):
    """A Parquet log: ``obs_dim`` observations, ``act_dim`` actions in [-0.5, 1.5] per
    dimension (or ``discrete`` integer actions), episodes of 16 ending terminal."""
    rng = np.random.default_rng(seed)
    cols = {f"observation_{i}": rng.normal(size=n).astype(np.float32) for i in range(obs_dim)}
    if discrete is None:
        for j in range(act_dim):
            a = rng.uniform(-0.5, 1.5, n).astype(np.float32)
            a[:2] = [-0.5, 1.5]  # the observed range is the inferred bound
            cols[f"action_{j}"] = a
    else:
        cols["action"] = np.arange(n) % discrete
    cols["reward"] = rng.normal(size=n).astype(np.float32)
    cols["terminated"] = np.arange(n) % 16 == 15
    pd.DataFrame(cols).to_parquet(path)
    return path


def _config(tmp_path, **kwargs):
    return OmegaConf.create(
        {
            "dataset": {
                "_target_": "torchrl_offline.configs.data._make_logged_dataset",
                "source": str(_log(tmp_path / "log.parquet", **kwargs)),
                "path": str(tmp_path / "rb"),
                "dtype": "float32",
                "ignore": [],
                "drop_incomplete": True,
            },
            "fields": {f: f"${{offline_spec:${{dataset}},{f}}}" for f in SPEC_FIELDS},
        }
    )


def test_continuous_fields_are_read_from_the_dataset(tmp_path):
    cfg = _config(tmp_path, obs_dim=5, act_dim=2)
    f = cfg.fields
    assert (f.observation_dim, f.action_dim) == (5, 2)
    assert (f.observation_action_dim, f.loc_scale_dim) == (7, 4)
    assert (f.action_low, f.action_high) == pytest.approx((-0.5, 1.5))
    assert dict(f.action_spec) == {"low": -0.5, "high": 1.5, "shape": [2]}
    with pytest.raises(InterpolationResolutionError, match="continuous .* use action_dim"):
        _ = f.num_actions


def test_discrete_fields_and_no_bounds(tmp_path):
    cfg = _config(tmp_path, obs_dim=4, discrete=3)
    f = cfg.fields
    assert (f.observation_dim, f.action_dim, f.num_actions) == (4, 3, 3)
    with pytest.raises(InterpolationResolutionError, match="discrete .* no bounds"):
        _ = f.action_low
    with pytest.raises(InterpolationResolutionError, match="discrete .* no bounds"):
        _ = f.action_spec


def test_bounds_differing_per_dimension_are_a_list(tmp_path):
    path = _log(tmp_path / "log.parquet", obs_dim=2, act_dim=2)
    df = pd.read_parquet(path)
    df["action_1"] = df["action_1"] * 2.0  # [-1, 3]
    df.to_parquet(path)
    cfg = OmegaConf.create(
        {
            "dataset": {
                "_target_": "torchrl_offline.configs.data._make_logged_dataset",
                "source": str(path),
                "path": str(tmp_path / "rb"),
                "dtype": "float32",
                "ignore": [],
                "drop_incomplete": True,
            },
            "low": "${offline_spec:${dataset},action_low}",
        }
    )
    assert list(cfg.low) == pytest.approx([-0.5, -1.0])


def test_unknown_field_and_a_node_that_is_no_dataset_are_named(tmp_path):
    cfg = _config(tmp_path)
    cfg.bad = "${offline_spec:${dataset},hidden}"
    with pytest.raises(InterpolationResolutionError, match="unknown field 'hidden'"):
        _ = cfg.bad
    cfg.worse = "${offline_spec:3,observation_dim}"
    with pytest.raises(InterpolationResolutionError, match="takes the dataset node"):
        _ = cfg.worse


def test_the_example_config_follows_another_dataset_without_network_overrides(
    tmp_path, compose_example
):
    """5 observations and 2 actions in [-0.5, 1.5]: only the dataset is named."""
    path = _log(tmp_path / "log.parquet", obs_dim=5, act_dim=2)
    cfg = compose_example(
        [
            "dataset=logged",
            f"dataset.source={path}",
            f"dataset.path={tmp_path / 'rb'}",
            "dataset.batch_size=16",
            *TINY_NETWORKS,
            "trainer.total_steps=2",
        ]
    )
    torch.manual_seed(0)
    trainer = instantiate(cfg.trainer)
    trainer.train()
    actor = trainer.loss_module.actor_network
    td = trainer.replay_buffer.sample(4)
    action = actor(td.select("observation")).get("action")
    assert action.shape == (4, 2)
    assert bool((action >= -0.5).all() and (action <= 1.5).all())
