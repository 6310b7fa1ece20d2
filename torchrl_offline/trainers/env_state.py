"""The simulator state of a gymnasium environment, saved into and restored from a
checkpoint (fine-tuning's resume continues the same online episode with it).

A gymnasium env's state is read from the attributes of its wrappers and of the unwrapped
env: numbers, strings, NumPy arrays and generators, and lists, tuples and str-keyed dicts
of them (MuJoCo's MjData through ``mj_getState``). Spaces, specs, rendering objects and
the MuJoCo model are constants and skipped. Any other attribute (a Box2D world, say)
makes the state unsaveable: :func:`env_state` returns ``None``.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import torch
from torchrl.envs import EnvBase

from torchrl_offline.trainers.checkpoint import CheckpointError

__all__ = ["env_state", "set_env_state"]

_SKIPPED_NAMES = ("env", "spec", "metadata", "model", "render_mode")
_SKIPPED_PARTS = ("render", "screen", "clock", "viewer", "space", "ezpickle", "saved_kwargs")


def _gym_chain(env: EnvBase) -> list[Any] | None:
    """The gymnasium wrappers and env behind a TorchRL ``GymEnv``, outermost first."""
    inner = getattr(getattr(env, "base_env", env), "_env", None)  # through a TransformedEnv
    if inner is None or not hasattr(inner, "unwrapped"):
        return None
    chain = [inner]
    while chain[-1] is not chain[-1].unwrapped and hasattr(chain[-1], "env"):
        chain.append(chain[-1].env)
    return chain


def _encode(value: Any) -> Any:
    """A weights-only-loadable form of one attribute, or raises TypeError."""
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    if isinstance(value, np.random.Generator):
        return {"generator": value.bit_generator.state}
    if isinstance(value, (np.ndarray, np.generic)) and np.asarray(value).dtype.kind in "biuf":
        return {"array": torch.from_numpy(np.array(value)), "scalar": np.ndim(value) == 0}
    if isinstance(value, (tuple, list)):
        return {"sequence": [_encode(v) for v in value], "tuple": isinstance(value, tuple)}
    if isinstance(value, dict) and all(isinstance(k, str) for k in value):
        return {"mapping": {k: _encode(v) for k, v in value.items()}}
    raise TypeError(type(value).__name__)


def _decode(value: Any) -> Any:
    if not isinstance(value, dict):
        return value
    if "generator" in value:
        state = value["generator"]
        generator = np.random.Generator(getattr(np.random, state["bit_generator"])())
        generator.bit_generator.state = state
        return generator
    if "array" in value:
        array = value["array"].numpy().copy()
        return array[()] if value["scalar"] else array
    if "mapping" in value:
        return {k: _decode(v) for k, v in value["mapping"].items()}
    items = [_decode(v) for v in value["sequence"]]
    return tuple(items) if value["tuple"] else items


def _mujoco_state(data: Any, model: Any) -> torch.Tensor:
    import mujoco

    kind = mujoco.mjtState.mjSTATE_INTEGRATION
    state = np.empty(mujoco.mj_stateSize(model, kind))
    mujoco.mj_getState(model, data, state, kind)
    return torch.from_numpy(state)


def env_state(env: EnvBase) -> list[dict[str, Any]] | None:
    """The simulator state of a gymnasium env, one dict per wrapper, or ``None`` when the
    env is not a gymnasium env or holds state of an unsupported type.

    Examples:
        >>> from torchrl.envs import GymEnv
        >>> from torchrl_offline.trainers.env_state import env_state, set_env_state
        >>> env = GymEnv("Pendulum-v1")
        >>> td = env.reset(seed=0)
        >>> saved = env_state(env)
        >>> td["action"] = env.action_spec.zero()
        >>> first = env.step(td.clone())["next", "observation"]
        >>> set_env_state(env, saved)  # back to the saved state: the same step again
        >>> bool((env.step(td.clone())["next", "observation"] == first).all())
        True
    """
    chain = _gym_chain(env)
    if chain is None:
        return None
    states = []
    for layer in chain:
        state: dict[str, Any] = {}
        for name, value in vars(layer).items():
            if name in _SKIPPED_NAMES or any(p in name for p in _SKIPPED_PARTS):
                continue
            if type(value).__name__ == "MjData":
                state[name] = {"mujoco": _mujoco_state(value, layer.model)}
                continue
            try:
                state[name] = _encode(value)
            except TypeError:
                return None
        states.append(state)
    return states


def set_env_state(env: EnvBase, states: Sequence[Mapping[str, Any]]) -> None:
    """Restores a state read by :func:`env_state` into ``env`` (the same kind of env).

    Raises:
        CheckpointError: the state has another number of gymnasium layers than ``env``.
    """
    chain = _gym_chain(env)
    if chain is None or len(chain) != len(states):
        raise CheckpointError(
            "the checkpoint's environment state does not fit this environment "
            f"({len(states)} gymnasium layers saved)"
        )
    for layer, state in zip(chain, states):
        for name, value in state.items():
            if isinstance(value, dict) and "mujoco" in value:
                import mujoco

                mujoco.mj_setState(
                    layer.model,
                    getattr(layer, name),
                    value["mujoco"].numpy().copy(),
                    mujoco.mjtState.mjSTATE_INTEGRATION,
                )
                mujoco.mj_forward(layer.model, getattr(layer, name))
            else:
                setattr(layer, name, _decode(value))
