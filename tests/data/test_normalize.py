from __future__ import annotations

import pytest
import torch
from torchrl.envs import GymEnv, TransformedEnv

from torchrl_offline.data import DatasetError
from torchrl_offline.data.normalize import normalized_score, observation_norm, reward_scaling
from torchrl_offline.data.stats import dataset_stats
from torchrl_offline.data.storage import make_replay_buffer


def test_observation_norm_standardises_both_keys(make_transitions):
    td = make_transitions([50, 50])
    td["observation"] = td["observation"] * 4 + 3
    td["next", "observation"] = td["next", "observation"] * 4 + 3
    out = observation_norm(td, eps=0.0)(td.clone())
    torch.testing.assert_close(out["observation"].mean(0), torch.zeros(3), atol=1e-5, rtol=0)
    torch.testing.assert_close(
        out["observation"].std(0, unbiased=False), torch.ones(3), atol=1e-4, rtol=0
    )
    assert not torch.equal(out["next", "observation"], td["next", "observation"])


def test_observation_norm_as_buffer_transform(make_transitions):
    td = make_transitions([20])
    td["observation"] += 10.0
    buffer = make_replay_buffer(td, batch_size=8)
    buffer.append_transform(observation_norm(buffer))
    assert buffer.sample()["observation"].mean().abs() < 5.0
    assert buffer.storage[0]["observation"].mean() > 5.0  # storage untouched


def test_observation_norm_for_env(make_transitions):
    td = make_transitions([30])
    env = TransformedEnv(GymEnv("Pendulum-v1"), observation_norm(td, for_env=True))
    rollout = env.rollout(3)
    assert rollout["next", "observation"].shape == (3, 3)


def test_observation_norm_nested(make_transitions):
    td = make_transitions([10])
    obs, nxt = td["observation"], td["next", "observation"]
    td = td.exclude("observation", ("next", "observation"))
    td["observation", "a"], td["next", "observation", "a"] = obs + 5, nxt + 5
    out = observation_norm(td, eps=0.0)(td.clone())
    assert out["observation", "a"].mean().abs() < 1e-4
    assert out["next", "observation", "a"].mean().abs() < 1.0


def test_reward_scaling_return_range(make_transitions):
    td = make_transitions([5, 5, 5])
    stats = dataset_stats(td)
    t = reward_scaling(stats, target=1000.0)
    span = stats.returns["max"] - stats.returns["min"]
    out = t(td.clone())
    torch.testing.assert_close(out["next", "reward"], td["next", "reward"] * (1000.0 / span))
    with pytest.raises(ValueError, match="mode"):
        reward_scaling(stats, mode="bogus")


def test_reward_scaling_constant_returns(make_transitions):
    td = make_transitions([2, 2])
    td["next", "reward"] = torch.ones(4, 1)
    with pytest.raises(DatasetError, match="same return"):
        reward_scaling(td)


def test_normalized_score():
    assert normalized_score(500.0, ref_min_score=0.0, ref_max_score=1000.0) == 50.0
    scores = normalized_score([0.0, 1000.0], {"ref_min_score": 0.0, "ref_max_score": 1000.0})
    torch.testing.assert_close(scores, torch.tensor([0.0, 100.0], dtype=torch.float64))

    class WithMeta:
        metadata = {"ref_min_score": -100.0, "ref_max_score": 100.0}

    assert normalized_score(0.0, WithMeta()) == 50.0
    with pytest.raises(DatasetError, match="reference returns"):
        normalized_score(1.0, {"other": 1})
    with pytest.raises(ValueError, match="undefined"):
        normalized_score(1.0, ref_min_score=1.0, ref_max_score=1.0)
