"""The environments of a run: gymnasium ids made into TorchRL envs with the datasets'
dtypes, and checked against the algorithm's specs."""

from __future__ import annotations

import torch
from torchrl.data import Bounded, Categorical, OneHot
from torchrl.envs import EnvBase

from torchrl_offline.trainers.algorithms import Algorithm, AlgorithmError

__all__ = ["as_env", "check_env", "float32_observations"]


def as_env(env: EnvBase | str) -> EnvBase:
    """``env`` itself, or a ``GymEnv`` for a gymnasium id (integer discrete actions) with
    float64 observations (as MuJoCo's) cast to float32, the dtype the datasets are loaded
    in: the environment behind ``train(eval_env=...)`` and fine-tuning.

    Examples:
        >>> as_env("Hopper-v5").observation_spec["observation"].dtype
        torch.float32
    """
    if isinstance(env, EnvBase):
        return env
    from torchrl.envs import GymEnv

    return float32_observations(GymEnv(env, categorical_action_encoding=True))


def float32_observations(env: EnvBase) -> EnvBase:
    """``env`` with its float64 observation entries cast to float32 (``DoubleToFloat``).

    The datasets are loaded with float32 observations and the networks are float32, while
    gymnasium's MuJoCo envs emit float64; ``env`` is returned unchanged when it has no
    float64 observation entry.

    Examples:
        >>> from torchrl.envs import GymEnv
        >>> float32_observations(GymEnv("Hopper-v5")).observation_spec["observation"].dtype
        torch.float32
    """
    from torchrl.envs import DoubleToFloat, TransformedEnv

    doubles = [
        key for key, spec in env.observation_spec.items(True, True) if spec.dtype == torch.float64
    ]
    if not doubles:
        return env
    return TransformedEnv(env, DoubleToFloat(in_keys=doubles))


def check_env(env: EnvBase, algo: Algorithm) -> None:
    """Raises unless ``env``'s observations and actions fit ``algo`` (the dataset's
    specs): observation dtype and shape, action type, shape, bounds or count.

    Raises:
        AlgorithmError: naming every mismatch.

    Examples:
        >>> from torchrl.data import Bounded, Unbounded
        >>> from torchrl_offline.trainers.algorithms import build_algorithm
        >>> from torchrl_offline.trainers.envs import as_env, check_env
        >>> algo = build_algorithm("iql", Unbounded(shape=(3,)), Bounded(-2.0, 2.0, (1,)),
        ...                        hidden_sizes=(16,))
        >>> check_env(as_env("Pendulum-v1"), algo)  # Pendulum: 3 observations, 1 action in [-2, 2]
    """
    obs = env.observation_spec["observation"]
    act = env.action_spec
    problems = []
    want = next((p.dtype for p in algo.policy.parameters() if p.is_floating_point()), None)
    if want is not None and obs.dtype.is_floating_point and obs.dtype != want:
        problems.append(
            f"observation dtype {obs.dtype} vs the networks' {want} (wrap the env as "
            "TransformedEnv(env, DoubleToFloat()), or pass its gymnasium id, which does this)"
        )
    if tuple(obs.shape) != tuple(algo.observation_spec.shape):
        problems.append(
            f"observation shape {tuple(obs.shape)} vs dataset {tuple(algo.observation_spec.shape)}"
        )
    if tuple(act.shape) != tuple(algo.action_spec.shape) or type(act) is not type(algo.action_spec):
        problems.append(
            f"action {type(act).__name__}{tuple(act.shape)} vs dataset "
            f"{type(algo.action_spec).__name__}{tuple(algo.action_spec.shape)}"
        )
    elif isinstance(act, Bounded) and not (
        torch.allclose(act.space.low.float(), algo.action_spec.space.low.float())
        and torch.allclose(act.space.high.float(), algo.action_spec.space.high.float())
    ):
        problems.append("action bounds differ")
    elif isinstance(act, (Categorical, OneHot)) and act.space.n != algo.action_spec.space.n:
        problems.append(f"{act.space.n} actions vs dataset {algo.action_spec.space.n}")
    if problems:
        raise AlgorithmError(
            "The evaluation env does not match the dataset: " + "; ".join(problems)
        )
