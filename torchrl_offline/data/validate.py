"""Checks that offline transitions are well formed, with errors naming the field and index."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import gymnasium as gym
import numpy as np
import torch
from tensordict import TensorDictBase

from torchrl_offline.data.errors import DatasetError
from torchrl_offline.data.keys import ACTION, DONE, REWARD, TERMINATED, TRUNCATED, key_name

__all__ = ["check_action_in_space", "check_lengths", "validate_transitions"]


def _first_true(mask: torch.Tensor) -> int | None:
    """Index along dim 0 of the first row holding a True, or None."""
    rows = mask.reshape(mask.shape[0], -1).any(-1) if mask.ndim > 1 else mask
    hits = rows.nonzero()
    return int(hits[0, 0]) if hits.numel() else None


def check_lengths(columns: Mapping[str, Any], *, expected: int | None = None) -> int:
    """Check that every column has the same number of rows.

    Args:
        columns: field name -> array-like with a leading time dimension.
        expected: the required length, if known (else the first column's).

    Returns:
        The common length.

    Raises:
        DatasetError: naming the first field whose length differs.
    """
    length = expected
    reference = None
    for name, value in columns.items():
        n = len(value)
        if length is None:
            length, reference = n, name
        elif n != length:
            against = f"field {reference!r} has {length}" if reference else f"expected {length}"
            raise DatasetError(
                f"Field {name!r} has {n} rows but {against}; the first index without a match is "
                f"{min(n, length)}.",
                field=name,
                index=min(n, length),
            )
    return 0 if length is None else length


def check_action_in_space(
    action: torch.Tensor, space: gym.Space, *, offset: int = 0, field: str = "action"
) -> None:
    """Raise if an action lies outside ``space`` (Box bounds, Discrete/MultiDiscrete range, one-hot).

    Args:
        action: actions with a leading transition dimension. Discrete actions may be
            integer indices ``[N]``/``[N, 1]`` or one-hot ``[N, n]``.
        space: the gymnasium action space.
        offset: index of the first row in the whole dataset (for the error message).
        field: the field name used in the error.
    """
    if isinstance(space, gym.spaces.Box):
        low = torch.tensor(np.broadcast_to(space.low, space.shape), dtype=torch.float64)
        high = torch.tensor(np.broadcast_to(space.high, space.shape), dtype=torch.float64)
        a = action.to(torch.float64)
        # float32 storage may round a bound outward by one ulp. Each bound gets its own
        # tolerance: one infinite bound must not disable the check of the other.
        bad = (a < low - 1e-6 * low.abs().clamp(min=1.0)) | (
            a > high + 1e-6 * high.abs().clamp(min=1.0)
        )
        if (i := _first_true(bad)) is not None:
            raise DatasetError(
                f"Field {field!r}: action at index {i + offset} is outside the action space bounds "
                f"[{space.low.min()}, {space.high.max()}]: {action[i].tolist()}",
                field=field,
                index=i + offset,
            )
    elif isinstance(space, gym.spaces.Discrete):
        n, start = int(space.n), int(space.start)
        if action.ndim >= 2 and action.shape[-1] == n and n > 1:
            ones = (action != 0).sum(-1)
            bad = (ones != 1) | ((action != 0) & (action != 1)).any(-1)
        else:
            a = action.reshape(action.shape[0], -1)
            bad = (a < start) | (a >= start + n)
        if (i := _first_true(bad)) is not None:
            raise DatasetError(
                f"Field {field!r}: action at index {i + offset} is not a valid action of "
                f"Discrete({n}, start={start}): {action[i].tolist()}",
                field=field,
                index=i + offset,
            )
    elif isinstance(space, gym.spaces.MultiDiscrete):
        nvec = torch.as_tensor(space.nvec)
        start = torch.as_tensor(space.start)
        bad = (action < start) | (action >= start + nvec)
        if (i := _first_true(bad)) is not None:
            raise DatasetError(
                f"Field {field!r}: action at index {i + offset} is outside MultiDiscrete"
                f"({space.nvec.tolist()}): {action[i].tolist()}",
                field=field,
                index=i + offset,
            )
    elif isinstance(space, gym.spaces.MultiBinary):
        bad = (action != 0) & (action != 1)
        if (i := _first_true(bad)) is not None:
            raise DatasetError(
                f"Field {field!r}: action at index {i + offset} is not binary: {action[i].tolist()}",
                field=field,
                index=i + offset,
            )


def validate_transitions(
    td: TensorDictBase,
    *,
    action_space: gym.Space | None = None,
    offset: int = 0,
) -> None:
    """Validate a chunk of transitions in TorchRL layout.

    Checks: every floating leaf is finite; ``("next","reward")`` is ``[N, 1]``; no
    transition is both terminated and truncated; ``done == terminated | truncated``;
    actions lie in ``action_space`` when given.

    Args:
        td: transitions with batch size ``[N]``.
        action_space: the gymnasium action space to check actions against.
        offset: index of ``td[0]`` in the whole dataset, so errors name global indices.

    Raises:
        DatasetError: naming the field and the first offending index.
    """
    for key, value in td.items(include_nested=True, leaves_only=True):
        if value.is_floating_point() and (i := _first_true(~torch.isfinite(value))) is not None:
            bad = value[i].reshape(-1)
            bad = bad[~torch.isfinite(bad)][0].item()
            raise DatasetError(
                f"Field {key_name(key)!r}: non-finite value ({bad}) at index {i + offset}",
                field=key_name(key),
                index=i + offset,
            )
    if REWARD in td.keys(True) and td.get(REWARD).shape[1:] != (1,):
        raise DatasetError(
            f"Field {key_name(REWARD)!r} must have shape [N, 1], got {list(td.get(REWARD).shape)}",
            field=key_name(REWARD),
        )
    keys = td.keys(True)
    if TERMINATED in keys and TRUNCATED in keys:
        term, trunc = td.get(TERMINATED), td.get(TRUNCATED)
        if (i := _first_true(term & trunc)) is not None:
            raise DatasetError(
                f"Fields 'terminated' and 'truncated' are both set at index {i + offset}; an "
                "episode ends either by termination or by truncation",
                field="terminated",
                index=i + offset,
            )
        if DONE in keys and (i := _first_true(td.get(DONE) != (term | trunc))) is not None:
            raise DatasetError(
                f"Field {key_name(DONE)!r} at index {i + offset} differs from terminated | truncated",
                field=key_name(DONE),
                index=i + offset,
            )
    if action_space is not None and ACTION in td.keys(True):
        _check_nested_action(td.get(ACTION), action_space, offset, ACTION)


def _check_nested_action(action: Any, space: gym.Space, offset: int, field: str) -> None:
    """Check each leaf of a Dict / Tuple action (nested keys, Tuple entries "0", "1", ...)."""
    if isinstance(space, (gym.spaces.Dict, gym.spaces.Tuple)) and isinstance(
        action, TensorDictBase
    ):
        subs = space.spaces.items() if isinstance(space, gym.spaces.Dict) else enumerate(space)
        for name, sub in subs:
            if str(name) in action.keys():
                _check_nested_action(action.get(str(name)), sub, offset, f"{field}.{name}")
    elif isinstance(action, torch.Tensor):
        check_action_in_space(action, space, offset=offset, field=field)
