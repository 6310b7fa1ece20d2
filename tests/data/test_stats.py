from __future__ import annotations

import pytest
import torch

from torchrl_offline.data import DatasetError
from torchrl_offline.data.stats import dataset_stats
from torchrl_offline.data.storage import make_replay_buffer


@pytest.mark.parametrize("chunk_size", [2, 3, 1000])
def test_counts_returns_and_moments(make_transitions, chunk_size):
    td = make_transitions([3, 1, 4], terminated_episodes=[1])
    stats = dataset_stats(make_replay_buffer(td), chunk_size=chunk_size)
    assert stats.transitions == 8 and stats.episodes == 3
    assert stats.terminated == 1 and stats.truncated == 2
    r = td["next", "reward"].reshape(-1).double()
    expected = torch.stack([r[:3].sum(), r[3:4].sum(), r[4:].sum()])
    torch.testing.assert_close(stats.episode_returns, expected)
    assert stats.returns["max"] == pytest.approx(expected.max().item())
    assert stats.episode_length["mean"] == pytest.approx(8 / 3)
    torch.testing.assert_close(stats.observation_mean["observation"], td["observation"].mean(0))
    torch.testing.assert_close(
        stats.observation_std["observation"],
        td["observation"].std(0, unbiased=False),
        rtol=1e-4,
        atol=1e-5,
    )
    assert stats.action["kind"] == "continuous" and 0 < stats.action["coverage"] <= 1
    assert "transitions      8" in str(stats)
    assert stats.as_dict()["episodes"] == 3


def test_discrete_action_counts(make_transitions):
    td = make_transitions([5, 5], discrete=3)
    stats = dataset_stats(td)
    assert stats.action["kind"] == "discrete"
    assert sum(stats.action["counts"].values()) == 10
    assert stats.action["counts"] == {
        a: int((td["action"] == a).sum()) for a in range(3) if (td["action"] == a).any()
    }


def test_full_coverage_on_uniform_actions(make_transitions):
    td = make_transitions([2000], act_dim=2)
    assert dataset_stats(td).action["coverage"] == 1.0


def test_missing_field(make_transitions):
    with pytest.raises(DatasetError, match="'episode'"):
        dataset_stats(make_transitions([2]).exclude("episode"))


def test_coverage_uses_the_action_space_bounds(make_transitions):
    import gymnasium as gym
    import numpy as np
    from minari.serialization import serialize_space

    td = make_transitions([2000], act_dim=2)  # actions uniform in [-1, 1]
    space = gym.spaces.Box(-2.0, 2.0, (2,), np.float32)
    buffer = make_replay_buffer(td, metadata={"action_space": serialize_space(space)})
    stats = dataset_stats(buffer, action_bins=4)
    assert stats.action["coverage_of"] == "action space"
    assert stats.action["coverage"] == 0.5  # half of each dimension's range is used
    assert dataset_stats(td).action["coverage_of"] == "observed range"


def _with_action(td, action):
    td = td.exclude("action")
    td.set("action", action)
    return td


def test_vector_discrete_actions_are_counted_as_vectors(make_transitions):
    """Regression: MultiBinary / MultiDiscrete actions were argmax-ed as if one-hot."""
    td = make_transitions([2, 2])
    multi = torch.tensor([[1, 1, 0], [0, 0, 1], [1, 1, 0], [0, 1, 0]])
    stats = dataset_stats(_with_action(td, multi))
    assert stats.action["counts"] == {(0, 0, 1): 1, (0, 1, 0): 1, (1, 1, 0): 2}
    assert stats.as_dict()["action"]["counts"] == {"[0, 0, 1]": 1, "[0, 1, 0]": 1, "[1, 1, 0]": 2}
    one_hot = torch.tensor([[0, 0, 1], [0, 1, 0], [0, 1, 0], [1, 0, 0]])
    assert dataset_stats(_with_action(td, one_hot)).action["counts"] == {0: 1, 1: 2, 2: 1}
    assert dataset_stats(_with_action(td, torch.tensor([2, 0, 2, 2]))).action["counts"] == {
        0: 1,
        2: 3,
    }
    # a MultiBinary space whose rows happen to be one-hot stays a vector space
    import gymnasium as gym
    from minari.serialization import serialize_space

    buffer = make_replay_buffer(
        _with_action(td, one_hot),
        metadata={"action_space": serialize_space(gym.spaces.MultiBinary(3))},
    )
    assert (0, 1, 0) in dataset_stats(buffer).action["counts"]


def test_nested_actions_get_no_coverage(make_transitions):
    """Regression: a Tuple action space (nested action keys) failed with 'Missing field action'."""
    td = make_transitions([2, 2])
    td = td.exclude("action")
    td.set(("action", "0"), torch.tensor([0, 1, 1, 0]))
    td.set(("action", "1"), torch.rand(4, 2))
    stats = dataset_stats(td)
    assert stats.action == {"kind": "composite", "keys": ["0", "1"]}
    assert "composite" in str(stats) and stats.episodes == 2
