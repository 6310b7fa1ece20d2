"""Known termination functions of the local benchmark tasks, by name.

A termination function maps ``(observation, action, next_observation)`` (raw units,
any batch shape) to a boolean ``[*batch, 1]`` tensor: whether the environment ends the
episode at ``next_observation``. :func:`~torchrl_offline.models.fit.fit_dynamics` takes
one (or its name) instead of learning a termination classifier.

* ``"pendulum"`` (Gymnasium ``Pendulum-v1``) and ``"halfcheetah"``
  (``HalfCheetah-v5``) never terminate: their episodes only end by truncation
  (Gymnasium's ``pendulum.py`` and ``half_cheetah_v5.py`` return
  ``terminated=False``).
* ``"hopper"`` (``Hopper-v5``) terminates when it is unhealthy, as
  ``HopperEnv.is_healthy`` in Gymnasium's ``hopper_v5.py`` defines it with its default
  ranges: healthy while the torso height ``z = obs[0]`` is above ``0.7``, the torso
  angle ``obs[1]`` is inside ``(-0.2, 0.2)`` and every entry of the state
  ``state_vector()[2:]`` (``obs[1:]`` with the positions excluded from the observation,
  as the benchmark's environment does) is inside ``(-100, 100)``. Non-finite states are
  terminal too (MBPO's static function for Hopper does the same).

Examples:
    >>> import torch
    >>> from torchrl_offline.models.termination import termination_function
    >>> fn = termination_function("hopper")
    >>> obs = torch.zeros(2, 11)
    >>> nxt = torch.zeros(2, 11)
    >>> nxt[:, 0] = torch.tensor([1.2, 0.5])  # healthy height, then fallen
    >>> fn(obs, torch.zeros(2, 3), nxt).squeeze(-1).tolist()
    [False, True]
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor

__all__ = [
    "TERMINATION_FUNCTIONS",
    "TerminationFn",
    "halfcheetah_termination",
    "hopper_termination",
    "never_terminates",
    "pendulum_termination",
    "termination_function",
]

TerminationFn = Callable[[Tensor, Tensor, Tensor], Tensor]


def never_terminates(observation: Tensor, action: Tensor, next_observation: Tensor) -> Tensor:
    """``False`` for every row: the task ends only by truncation."""
    return torch.zeros(
        (*next_observation.shape[:-1], 1), dtype=torch.bool, device=next_observation.device
    )


pendulum_termination = never_terminates
halfcheetah_termination = never_terminates


def hopper_termination(observation: Tensor, action: Tensor, next_observation: Tensor) -> Tensor:
    """Gymnasium ``Hopper-v5``'s ``not is_healthy`` at the next observation (see the module)."""
    height = next_observation[..., 0]
    angle = next_observation[..., 1]
    state = next_observation[..., 1:]
    healthy = (
        torch.isfinite(next_observation).all(-1)
        & (state.abs() < 100.0).all(-1)
        & (height > 0.7)
        & (angle.abs() < 0.2)
    )
    return (~healthy).unsqueeze(-1)


#: Termination functions by task name (lower case, without the version).
TERMINATION_FUNCTIONS: dict[str, TerminationFn] = {
    "pendulum": pendulum_termination,
    "halfcheetah": halfcheetah_termination,
    "hopper": hopper_termination,
}


def termination_function(name: str | TerminationFn) -> TerminationFn:
    """The termination function of a task name (``"Hopper-v5"``, ``"hopper"``...), or
    ``name`` itself when it is already a callable.

    Raises:
        ModelError: for an unknown name, listing the known ones.
    """
    if callable(name):
        return name
    key = str(name).lower().split("-v")[0].replace("_", "").replace("-", "")
    if key not in TERMINATION_FUNCTIONS:
        from torchrl_offline.models.errors import ModelError

        raise ModelError(
            f"no known termination function for {name!r}; known: "
            f"{', '.join(sorted(TERMINATION_FUNCTIONS))} (or pass a callable, or none to "
            "learn a termination classifier)",
            field="termination_fn",
        )
    return TERMINATION_FUNCTIONS[key]
