"""Scripted controllers for classic-control tasks: behaviour policies with no training.

A mixed-quality offline dataset needs a competent behaviour policy. For the classic
control tasks a few lines of control theory give one, so demos, tests and benchmarks can
build datasets in seconds without training an online agent first. Each controller is a
deterministic :class:`~tensordict.nn.TensorDictModule` (reads ``observation``, writes
``action``); make it stochastic, with an exact recorded density, by wrapping it in
:class:`~torchrl_offline.data.GaussianNoisePolicy` or
:class:`~torchrl_offline.data.EpsilonGreedyPolicy`.
"""

from __future__ import annotations

import torch
from tensordict.nn import TensorDictModule
from torch import nn

__all__ = ["cartpole_controller", "pendulum_swing_up"]


class _PendulumSwingUp(nn.Module):
    """Energy pumping far from the top, a PD law near it (gymnasium ``Pendulum-v1``).

    ``Pendulum-v1`` has ``theta_dd = 3 g / (2 l) sin(theta) + 3 / (m l^2) u`` with
    ``g = 10``, ``m = l = 1`` and ``theta = 0`` upright. The energy
    ``E = w^2 / 2 + 15 cos(theta)`` is 15 at rest upright and changes as ``dE/dt = 3 u w``,
    so ``u ~ (15 - E) w`` pumps energy in until the pendulum reaches the top, where a
    PD law ``u = -(k_p theta + k_d w)`` balances it.
    """

    def __init__(self, max_torque: float = 2.0):
        super().__init__()
        self.max_torque = max_torque

    def forward(self, observation: torch.Tensor) -> torch.Tensor:
        cos, sin, w = observation[..., 0], observation[..., 1], observation[..., 2]
        theta = torch.atan2(sin, cos)
        energy = 0.5 * w**2 + 15.0 * cos
        pump = (0.5 * (15.0 - energy) * w).clamp(-self.max_torque, self.max_torque)
        # At rest at the bottom (w = 0) pumping does nothing: kick it.
        pump = torch.where(w.abs() < 1e-3, torch.full_like(pump, self.max_torque), pump)
        balance = (-(10.0 * theta + 2.0 * w)).clamp(-self.max_torque, self.max_torque)
        return torch.where(cos > 0.85, balance, pump).unsqueeze(-1)


class _CartPoleBalance(nn.Module):
    """Push the cart toward the side the pole falls to (gymnasium ``CartPole-v1``)."""

    def forward(self, observation: torch.Tensor) -> torch.Tensor:
        x, x_dot, angle, angle_dot = observation.unbind(-1)
        # Pole dynamics dominate; a small cart term keeps the cart near the centre.
        push_right = (angle + 0.5 * angle_dot + 0.01 * x + 0.05 * x_dot) > 0
        return push_right.long()


def pendulum_swing_up(max_torque: float = 2.0) -> TensorDictModule:
    """A swing-up and balance controller for ``Pendulum-v1`` (return about -150 per episode).

    Examples:
        >>> import torch
        >>> from tensordict import TensorDict
        >>> from torchrl_offline.data.scripted import pendulum_swing_up
        >>> policy = pendulum_swing_up()
        >>> td = policy(TensorDict({"observation": torch.tensor([[1.0, 0.0, 0.0]])}, [1]))
        >>> td["action"]
        tensor([[-0.]])
    """
    return TensorDictModule(
        _PendulumSwingUp(max_torque), in_keys=["observation"], out_keys=["action"]
    )


def cartpole_controller() -> TensorDictModule:
    """A balancing controller for ``CartPole-v1`` writing integer actions (0 left, 1 right).

    It keeps the pole up for the full 500 steps from most initial states.

    Examples:
        >>> import torch
        >>> from tensordict import TensorDict
        >>> from torchrl_offline.data.scripted import cartpole_controller
        >>> td = TensorDict({"observation": torch.tensor([[0.0, 0.0, 0.05, 0.0]])}, [1])
        >>> cartpole_controller()(td)["action"]
        tensor([1])
    """
    return TensorDictModule(_CartPoleBalance(), in_keys=["observation"], out_keys=["action"])
