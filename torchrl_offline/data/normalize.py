"""Normalisation built from dataset statistics: observations, rewards and D4RL-style scores."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch
from tensordict import TensorDictBase
from tensordict.utils import NestedKey
from torchrl.data import ReplayBuffer
from torchrl.envs.transforms import Compose, ObservationNorm, RewardScaling

from torchrl_offline.data.errors import DatasetError
from torchrl_offline.data.keys import NEXT_OBSERVATION, OBSERVATION, REWARD
from torchrl_offline.data.stats import DatasetStats, dataset_stats

__all__ = ["normalized_score", "observation_norm", "reward_scaling"]


def _stats(data: ReplayBuffer | TensorDictBase | DatasetStats) -> DatasetStats:
    return data if isinstance(data, DatasetStats) else dataset_stats(data)


def _as_key(name: str) -> NestedKey:
    parts = tuple(name.split("."))
    return parts[0] if len(parts) == 1 else parts


def observation_norm(
    data: ReplayBuffer | TensorDictBase | DatasetStats,
    *,
    for_env: bool = False,
    eps: float = 1e-3,
) -> ObservationNorm | Compose:
    """An observation-normalising TorchRL transform with the dataset's mean and std.

    Computes ``(obs - mean) / (std + eps)`` per dimension, as in TD3+BC and IQL. Use
    the same statistics for training (append the transform to the replay buffer) and
    for evaluation (append it to the environment): pass ``for_env=True`` for the
    environment version, which reads ``observation`` only (TorchRL transforms
    normalise the next observation of an env step themselves).

    Args:
        data: the dataset (replay buffer or tensordict) or its precomputed stats.
        for_env: build the environment-side transform.
        eps: added to the std, so constant dimensions do not divide by zero.

    Returns:
        An :class:`~torchrl.envs.transforms.ObservationNorm`, or a
        :class:`~torchrl.envs.transforms.Compose` of them for nested observations.

    Examples:
        >>> import torch
        >>> from tensordict import TensorDict
        >>> from torchrl_offline.data import observation_norm
        >>> obs = torch.randn(100, 3) * 5 + 2
        >>> td = TensorDict({"observation": obs, ("next", "observation"): obs,
        ...     "action": torch.zeros(100, 1), "episode": torch.zeros(100, dtype=torch.long),
        ...     ("next", "reward"): torch.zeros(100, 1)}, batch_size=[100])
        >>> norm = observation_norm(td)
        >>> out = norm(td.clone())
        >>> bool(out["observation"].mean(0).abs().max() < 1e-4)
        True
    """
    stats = _stats(data)
    if not stats.observation_mean:
        raise DatasetError(
            "The dataset has no floating observation to normalise", field="observation"
        )
    transforms = []
    for name, mean in stats.observation_mean.items():
        key = _as_key(name)
        scale = stats.observation_std[name] + eps
        if for_env:
            in_keys: list[NestedKey] = [key]
        else:
            sub = key[1:] if isinstance(key, tuple) else ()
            next_key = (*NEXT_OBSERVATION, *sub) if key != OBSERVATION else NEXT_OBSERVATION
            in_keys = [key, next_key]
        transforms.append(
            ObservationNorm(
                loc=mean.clone(), scale=scale.clone(), in_keys=in_keys, standard_normal=True
            )
        )
    return transforms[0] if len(transforms) == 1 else Compose(*transforms)


def reward_scaling(
    data: ReplayBuffer | TensorDictBase | DatasetStats,
    *,
    mode: str = "return_range",
    target: float = 1000.0,
    for_env: bool = False,
) -> RewardScaling:
    """A reward-scaling TorchRL transform from dataset statistics.

    Args:
        data: the dataset or its stats.
        mode: ``"return_range"`` multiplies rewards by ``target / (max return - min
            return)`` (IQL's MuJoCo recipe with ``target=1000``); ``"std"`` divides by
            the reward std (no shift).
        target: the return range after scaling, for ``"return_range"``.
        for_env: read ``reward`` (environment side) instead of ``("next", "reward")``.

    Returns:
        A :class:`~torchrl.envs.transforms.RewardScaling` with ``loc=0``.
    """
    stats = _stats(data)
    if mode == "return_range":
        span = stats.returns["max"] - stats.returns["min"]
        if span <= 0:
            raise DatasetError(
                "Every episode has the same return; the return range cannot scale rewards",
                field="next.reward",
            )
        scale = target / span
    elif mode == "std":
        if stats.reward["std"] <= 0:
            raise DatasetError(
                "Rewards are constant; their std cannot scale them", field="next.reward"
            )
        scale = 1.0 / stats.reward["std"]
    else:
        raise ValueError(f"Unknown reward scaling mode {mode!r}; use 'return_range' or 'std'")
    key = "reward" if for_env else REWARD
    return RewardScaling(loc=0.0, scale=scale, in_keys=[key])


def _reference(source: Any) -> tuple[float, float]:
    metadata: Mapping[str, Any] | None = getattr(source, "metadata", None)
    if metadata is None and isinstance(source, Mapping):
        metadata = source
    if metadata is None:
        raise TypeError("Pass ref_min_score/ref_max_score or a dataset carrying them in .metadata")
    try:
        return float(metadata["ref_min_score"]), float(metadata["ref_max_score"])
    except KeyError:
        raise DatasetError(
            "The dataset has no reference returns (ref_min_score/ref_max_score); pass them "
            "explicitly",
            field="ref_min_score",
        ) from None


def normalized_score(
    returns: float | Sequence[float] | torch.Tensor,
    dataset: Any = None,
    *,
    ref_min_score: float | None = None,
    ref_max_score: float | None = None,
) -> float | torch.Tensor:
    """D4RL-style normalized score ``100 * (R - R_random) / (R_expert - R_random)``.

    Args:
        returns: one undiscounted return or several.
        dataset: a buffer from the data layer (its ``metadata`` holds the reference
            returns stored with the dataset) or a metadata mapping.
        ref_min_score: the random policy's return (overrides the dataset's).
        ref_max_score: the expert policy's return (overrides the dataset's).

    Returns:
        A float for a scalar input, else a float64 tensor.

    Examples:
        >>> from torchrl_offline.data import normalized_score
        >>> normalized_score(500.0, ref_min_score=0.0, ref_max_score=1000.0)
        50.0
    """
    if ref_min_score is None or ref_max_score is None:
        lo, hi = _reference(dataset)
        ref_min_score = lo if ref_min_score is None else ref_min_score
        ref_max_score = hi if ref_max_score is None else ref_max_score
    if ref_max_score == ref_min_score:
        raise ValueError("ref_max_score equals ref_min_score; the normalized score is undefined")
    r = torch.as_tensor(returns, dtype=torch.float64)
    score = 100.0 * (r - ref_min_score) / (ref_max_score - ref_min_score)
    return score.item() if score.ndim == 0 else score
