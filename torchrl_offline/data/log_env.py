"""The environment a log came from: its spec as Minari records it, and its spaces.

:func:`~torchrl_offline.data.logged.from_logged` takes an ``env_id``: the id is stored
in the dataset's metadata as ``env_spec`` (the JSON text Minari datasets keep), so the
command line finds the environment to evaluate or fine-tune in without being told again;
the env's action space replaces the one inferred from the logged actions (a policy that
never took some action, or never reached a bound, would otherwise be given a smaller
space than the env's), and the logged observations are checked against the env's shape.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass

import gymnasium as gym

from torchrl_offline.data.errors import DatasetError

__all__ = ["LogEnv", "check_observation_shape", "log_env"]

logger = logging.getLogger("torchrl_offline")


@dataclass(frozen=True)
class LogEnv:
    """What a log's env id gives.

    Attributes:
        env_spec: the env spec as JSON text, as Minari stores it (``{"id": ...}`` for a
            spec that cannot be written as JSON).
        observation_space: the env's observation space (``None`` when the env could not
            be made).
        action_space: the env's action space (``None`` likewise).
    """

    env_spec: str
    observation_space: gym.Space | None
    action_space: gym.Space | None


def log_env(env_id: str) -> LogEnv:
    """The spec and spaces of the gymnasium env ``env_id``.

    The env is made once to read its spaces and closed; an env gymnasium knows but cannot
    make here (a missing simulator) gives no spaces, with a logged warning.

    Raises:
        DatasetError: gymnasium does not know ``env_id`` (field ``env_id``).

    Examples:
        >>> from torchrl_offline.data.log_env import log_env
        >>> env = log_env("Acrobot-v1")
        >>> env.action_space, json.loads(env.env_spec)["id"]
        (Discrete(3), 'Acrobot-v1')
    """
    try:
        spec = gym.spec(env_id)
    except gym.error.Error as err:
        raise DatasetError(
            f"Unknown environment {env_id!r} given as env_id: {err}", field="env_id"
        ) from None
    try:
        env_spec = spec.to_json()
    except (ValueError, TypeError):  # a callable entry point or kwargs JSON cannot hold
        env_spec = json.dumps({"id": spec.id})
    try:
        env = gym.make(env_id)
    except Exception as err:  # e.g. a MuJoCo env without mujoco installed
        logger.warning("%s cannot be made (%s): its spaces are not used", env_id, err)
        return LogEnv(env_spec, None, None)
    try:
        return LogEnv(env_spec, env.observation_space, env.action_space)
    finally:
        env.close()


def check_observation_shape(observation_space: gym.Space, env: LogEnv, env_id: str) -> None:
    """Refuse logged observations whose shape is not the env's (both Box spaces).

    Raises:
        DatasetError: naming both shapes, field ``observation``.
    """
    theirs = env.observation_space
    if not (isinstance(theirs, gym.spaces.Box) and isinstance(observation_space, gym.spaces.Box)):
        return
    if tuple(observation_space.shape) != tuple(theirs.shape):
        raise DatasetError(
            f"Field 'observation': the log's observations have shape "
            f"{list(observation_space.shape)} but {env_id}'s have {list(theirs.shape)}; check "
            "which columns make the observation",
            field="observation",
        )
