"""Environments named on the command line, and their agreement with a dataset."""

from __future__ import annotations

import json
from typing import Any

from torchrl_offline.cli.common import CLIError

__all__ = ["check_env_matches", "check_specs_match", "dataset_env_id", "make_env"]


def make_env(env_id: str, *, float32: bool = True) -> Any:
    """A TorchRL :class:`~torchrl.envs.GymEnv` for a gymnasium id (integer discrete actions).

    Args:
        env_id: the gymnasium id.
        float32: cast float64 observations (MuJoCo's) to float32, the dtype the
            datasets are loaded in and the networks use. ``collect`` keeps the env's own
            dtype in the files it writes.

    Raises:
        CLIError: gymnasium does not know the id.
    """
    import gymnasium as gym
    from torchrl.envs import GymEnv

    from torchrl_offline.trainers.offline import as_env

    try:
        gym.spec(env_id)
    except gym.error.Error as err:
        raise CLIError(f"unknown environment {env_id!r}: {err}") from None
    return as_env(env_id) if float32 else GymEnv(env_id, categorical_action_encoding=True)


def dataset_env_id(buffer: Any) -> str | None:
    """The gymnasium id stored with a dataset (its Minari ``env_spec``), if any."""
    env_spec = (getattr(buffer, "metadata", None) or {}).get("env_spec")
    if isinstance(env_spec, str):
        try:
            env_spec = json.loads(env_spec)
        except ValueError:
            return None
    return env_spec.get("id") if isinstance(env_spec, dict) else None


def _describe(spec: Any) -> str:
    kind = "discrete" if not spec.dtype.is_floating_point else "continuous"
    n = getattr(getattr(spec, "space", None), "n", None)
    extra = f", {n} actions" if n is not None and kind == "discrete" else ""
    return f"{kind} shape {list(spec.shape)}{extra}"


def check_specs_match(
    observation_spec: Any,
    action_spec: Any,
    other_observation_spec: Any,
    other_action_spec: Any,
    *,
    ours: str,
    theirs: str,
) -> None:
    """Refuse two pairs of specs whose shapes, discreteness or numbers of actions differ.

    Raises:
        CLIError: naming the first mismatch, with ``ours`` and ``theirs`` as the two sides.
    """
    pairs = (
        ("observation", observation_spec, other_observation_spec),
        ("action", action_spec, other_action_spec),
    )
    for what, left, right in pairs:
        if _describe(left) != _describe(right):
            raise CLIError(
                f"{ours}'s {what} space ({_describe(left)}) does not match {theirs}'s "
                f"({_describe(right)})"
            )


def check_env_matches(observation_spec: Any, action_spec: Any, env: Any, env_id: str) -> None:
    """Refuse an env whose observation or action spec differs from the given ones.

    Args:
        observation_spec: the dataset's or policy's observation spec.
        action_spec: its action spec.
        env: the TorchRL env.
        env_id: its name, for the message.

    Raises:
        CLIError: shapes, discreteness or number of discrete actions differ.
    """
    env_obs = env.observation_spec.get("observation", None)
    if env_obs is None:
        raise CLIError(f"the env {env_id!r} has no 'observation' entry")
    check_specs_match(
        observation_spec,
        action_spec,
        env_obs,
        env.action_spec_unbatched,
        ours="the data",
        theirs=f"the env {env_id!r}",
    )
