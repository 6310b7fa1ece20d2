"""Shared fixtures for the trainer tests: tiny datasets with Pendulum-like spaces."""

from __future__ import annotations

from collections.abc import Callable

import gymnasium as gym
import numpy as np
import pytest
import torch
from minari.serialization import serialize_space
from tensordict import TensorDict

from torchrl_offline.data.storage import OfflineReplayBuffer, make_replay_buffer

torch.set_num_threads(1)

OBS_DIM = 3
N_ACTIONS = 3


def make_dataset(
    *,
    n: int = 128,
    discrete: bool = False,
    batch_size: int = 16,
    seed: int = 0,
    obs_dim: int = OBS_DIM,
    n_actions: int = N_ACTIONS,
    action_bound: float = 2.0,
    one_step: bool = False,
    model_marks: bool = False,
) -> OfflineReplayBuffer:
    """Random transitions with Pendulum's spaces (or an ``n_actions`` discrete space);
    ``one_step``: a log of one-step decisions (every step terminal) with the uniform
    logging policy's ``action_log_prob``; ``model_marks`` adds the ``"model_data"`` entry
    the model-rollout trainers write (every other row marked), for a model-based loss
    trained without them."""
    g = torch.Generator().manual_seed(seed)
    if discrete:
        action = torch.randint(n_actions, (n,), generator=g)
        action_space = gym.spaces.Discrete(n_actions)
    else:
        action = (torch.rand(n, 1, generator=g) * 2 - 1) * action_bound
        action_space = gym.spaces.Box(-action_bound, action_bound, (1,), np.float32)
    obs = torch.randn(n + 1, obs_dim, generator=g)
    done = torch.zeros(n, 1, dtype=torch.bool)
    done[-1] = True
    td = TensorDict(
        {
            "observation": obs[:-1],
            "action": action,
            "next": {
                "observation": obs[1:],
                "reward": torch.randn(n, 1, generator=g),
                "done": done,
                "terminated": torch.zeros(n, 1, dtype=torch.bool),
                "truncated": done.clone(),
            },
        },
        batch_size=[n],
    )
    if model_marks:
        td["model_data"] = torch.arange(n) % 2 == 1
    metadata = {
        "observation_space": serialize_space(
            gym.spaces.Box(-np.inf, np.inf, (obs_dim,), np.float32)
        ),
        "action_space": serialize_space(action_space),
        "ref_min_score": -1500.0,
        "ref_max_score": -150.0,
    }
    if one_step:
        td["next", "done"].fill_(True)
        td["next", "terminated"].fill_(True)
        td["next", "truncated"].fill_(False)
        td["action_log_prob"] = torch.full((n,), -np.log(n_actions), dtype=torch.float32)
    return make_replay_buffer(td, batch_size=batch_size, metadata=metadata)


@pytest.fixture
def dataset() -> Callable[..., OfflineReplayBuffer]:
    """Factory fixture: ``dataset(discrete=False, n=128, ...)``."""
    return make_dataset


class StopAt:
    """A hook requesting a stop after update ``step``, as Ctrl-C does."""

    def __init__(self, step: int) -> None:
        self.step = step
        self.trainer = None

    def register(self, trainer) -> None:
        self.trainer = trainer
        trainer.register_op("post_steps", self)

    def __call__(self) -> None:
        if self.trainer.step == self.step:
            self.trainer._on_sigint(2, None)  # the SIGINT handler: finish the step, then stop
