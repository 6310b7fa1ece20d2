"""Shared fixtures for the data-layer tests."""

from __future__ import annotations

from collections.abc import Callable, Sequence

import pytest
import torch
from tensordict import TensorDict


def transitions_from_episodes(
    lengths: Sequence[int],
    *,
    obs_dim: int = 3,
    act_dim: int = 2,
    discrete: int | None = None,
    terminated_episodes: Sequence[int] = (),
    seed: int = 0,
) -> TensorDict:
    """Consistent transitions in TorchRL layout: episodes of the given lengths, where
    ``next.observation[t] == observation[t + 1]`` inside an episode. Episodes listed in
    ``terminated_episodes`` end by termination, the others by truncation."""
    g = torch.Generator().manual_seed(seed)
    parts = []
    for ep, length in enumerate(lengths):
        obs = torch.randn(length + 1, obs_dim, generator=g)
        if discrete is None:
            action = torch.rand(length, act_dim, generator=g) * 2 - 1
        else:
            action = torch.randint(discrete, (length,), generator=g)
        terminated = torch.zeros(length, 1, dtype=torch.bool)
        truncated = torch.zeros(length, 1, dtype=torch.bool)
        (terminated if ep in terminated_episodes else truncated)[-1] = True
        parts.append(
            TensorDict(
                {
                    "observation": obs[:-1],
                    "action": action,
                    "episode": torch.full((length,), ep, dtype=torch.long),
                    "action_log_prob": torch.randn(length, generator=g),
                    "next": {
                        "observation": obs[1:],
                        "reward": torch.randn(length, 1, generator=g),
                        "terminated": terminated,
                        "truncated": truncated,
                        "done": terminated | truncated,
                    },
                },
                batch_size=[length],
            )
        )
    return torch.cat(parts)


@pytest.fixture
def make_transitions() -> Callable[..., TensorDict]:
    """Factory fixture: ``make_transitions([3, 1, 4], discrete=None | n, ...)``."""
    return transitions_from_episodes
