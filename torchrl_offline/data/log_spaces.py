"""The gym spaces of a log: the leaves of given spaces, and spaces inferred from the values.

:func:`~torchrl_offline.data.logged.from_logged` takes the observation and action spaces
from the user or infers them from the first pass over the log (``_Stats`` per field), and
stores every leaf with the shape and dtype these helpers derive from its space.
"""

from __future__ import annotations

from dataclasses import dataclass

import gymnasium as gym
import numpy as np
import torch

from torchrl_offline.data.errors import DatasetError
from torchrl_offline.data.log_sources import Name, dotted

__all__: list[str] = []


def _leaf_spaces(space: gym.Space, prefix: Name) -> dict[Name, gym.Space]:
    """Every leaf space of ``space`` keyed by its target (Dict keys, Tuple entries "0", ...)."""
    if isinstance(space, gym.spaces.Dict):
        out: dict[Name, gym.Space] = {}
        for name, sub in space.spaces.items():
            out.update(_leaf_spaces(sub, (*prefix, str(name))))
        return out
    if isinstance(space, gym.spaces.Tuple):
        out = {}
        for i, sub in enumerate(space.spaces):
            out.update(_leaf_spaces(sub, (*prefix, str(i))))
        return out
    if isinstance(
        space,
        (gym.spaces.Box, gym.spaces.Discrete, gym.spaces.MultiDiscrete, gym.spaces.MultiBinary),
    ):
        return {prefix: space}
    raise DatasetError(
        f"Field {dotted(prefix)!r}: the {type(space).__name__} space is not supported",
        field=dotted(prefix),
    )


def _space_from_leaves(leaves: dict[Name, gym.Space], depth: int) -> gym.Space:
    """Rebuild a (Dict) space from inferred leaves; ``depth`` is the prefix length."""
    if len(leaves) == 1 and len(next(iter(leaves))) == depth:
        return next(iter(leaves.values()))
    groups: dict[str, dict[Name, gym.Space]] = {}
    for key, sub in leaves.items():
        groups.setdefault(key[depth], {})[key] = sub
    return gym.spaces.Dict({k: _space_from_leaves(v, depth + 1) for k, v in groups.items()})


def _stored_shape(space: gym.Space) -> tuple[int, ...]:
    return () if isinstance(space, gym.spaces.Discrete) else tuple(space.shape)


def _stored_dtype(space: gym.Space, float_dtype: torch.dtype) -> torch.dtype:
    if isinstance(space, (gym.spaces.Discrete, gym.spaces.MultiDiscrete)):
        return torch.int64
    if np.issubdtype(space.dtype, np.floating):
        return float_dtype
    return torch.from_numpy(np.zeros((), space.dtype)).dtype


@dataclass
class _Stats:
    """Per-field facts gathered in the first pass (for spaces and the storage spec)."""

    shape: tuple[int, ...]
    dtype: np.dtype  # of the source data (bools count as int64)
    low: np.ndarray
    high: np.ndarray

    @classmethod
    def of(cls, value: np.ndarray) -> _Stats:
        return cls(value.shape[1:], value.dtype, value.min(0), value.max(0))

    def update(self, value: np.ndarray, field: str, offset: int) -> None:
        if value.shape[1:] != self.shape:
            raise DatasetError(
                f"Field {field!r}: values at index {offset} have shape {list(value.shape[1:])}, "
                f"earlier values have {list(self.shape)}",
                field=field,
                index=offset,
            )
        self.low = np.minimum(self.low, value.min(0))
        self.high = np.maximum(self.high, value.max(0))


def _infer_space(
    stats: _Stats, *, action: bool, float_np: np.dtype, field: str, first_negative: int | None
) -> gym.Space:
    """Box for floating data (data bounds for actions, unbounded for observations); integer
    data as Discrete(max + 1) when scalar; integer action vectors as MultiDiscrete, integer
    observation arrays (e.g. uint8 images) as a Box of their dtype over the data's range."""
    if stats.dtype.kind == "f":
        if action:
            return gym.spaces.Box(
                stats.low.astype(float_np), stats.high.astype(float_np), stats.shape, float_np
            )
        return gym.spaces.Box(-np.inf, np.inf, stats.shape, float_np)
    if first_negative is not None:
        if action:
            raise DatasetError(
                f"Field {field!r}: the integer action at index {first_negative} is negative, so "
                "no Discrete action space can be inferred; pass action_space=",
                field=field,
                index=first_negative,
            )
        return gym.spaces.Box(stats.low, stats.high, stats.shape, stats.dtype)
    if stats.shape in ((), (1,)):
        return gym.spaces.Discrete(int(stats.high.max()) + 1)
    if action:
        return gym.spaces.MultiDiscrete(stats.high.astype(np.int64) + 1)
    return gym.spaces.Box(stats.low, stats.high, stats.shape, stats.dtype)
