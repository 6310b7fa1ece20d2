"""Tiny transition data for the model tests."""

from __future__ import annotations

import pytest
import torch
from tensordict import TensorDict

#: The known linear system of the fitting tests: s' = s + s A + a B + noise, r = s c + a d.
A = torch.tensor([[0.1, -0.2], [0.05, 0.0]])
B = torch.tensor([[0.3, -0.1]])
C = torch.tensor([[1.0], [-0.5]])
D = torch.tensor([[0.2]])
NOISE = 0.05


def linear_transitions(n: int, *, seed: int = 0, noise: float = NOISE) -> TensorDict:
    g = torch.Generator().manual_seed(seed)
    obs = torch.randn(n, 2, generator=g)
    act = torch.rand(n, 1, generator=g) * 2 - 1
    nxt = obs + obs @ A + act @ B + noise * torch.randn(n, 2, generator=g)
    reward = obs @ C + act @ D + noise * torch.randn(n, 1, generator=g)
    episode = torch.arange(n) // 10
    terminated = torch.zeros(n, 1, dtype=torch.bool)
    return TensorDict(
        {
            "observation": obs,
            "action": act,
            "episode": episode,
            ("next", "observation"): nxt,
            ("next", "reward"): reward,
            ("next", "terminated"): terminated,
            ("next", "truncated"): (torch.arange(n) % 10 == 9).unsqueeze(-1),
            ("next", "done"): (torch.arange(n) % 10 == 9).unsqueeze(-1),
        },
        [n],
    )


@pytest.fixture
def linear_data() -> TensorDict:
    return linear_transitions(2000)


def tiny_model(
    *, num_members: int = 3, num_elites: int = 2, hidden_sizes=(8,), n: int = 200, **kwargs
):
    """A seeded, untrained ensemble over the linear system's shapes, normalised on ``n``
    of its transitions."""
    from torchrl_offline.models import DynamicsEnsemble

    torch.manual_seed(0)
    model = DynamicsEnsemble(
        2,
        1,
        num_members=num_members,
        num_elites=num_elites,
        hidden_sizes=hidden_sizes,
        **kwargs,
    )
    data = linear_transitions(n)
    model.set_normalization(
        data["observation"], data["action"], data["next", "observation"], data["next", "reward"]
    )
    return model
