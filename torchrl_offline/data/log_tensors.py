"""A log's chunks as TorchRL tensordicts, checked value by value.

Pass 1 and pass 2 of :func:`~torchrl_offline.data.logged.from_logged` both turn each chunk of
finished per-field arrays (:func:`~torchrl_offline.data.log_episodes.iter_transitions`) into
a tensordict in TorchRL's layout with :func:`to_tensordict`; pass 1 also checks it
(:func:`check_decision_fields`, :func:`validate_chunk`), with errors that name the source
column (:func:`stored_names`) and the row of the log.
"""

from __future__ import annotations

from collections.abc import Mapping

import gymnasium as gym
import numpy as np
import torch
from tensordict import TensorDict

from torchrl_offline.data.errors import DatasetError
from torchrl_offline.data.keys import (
    ACTION,
    BEHAVIOR_PROBS,
    DONE,
    EPISODE,
    NEXT_OBSERVATION,
    OBSERVATION,
    POSITION,
    REWARD,
    TERMINATED,
    TRUNCATED,
)
from torchrl_offline.data.log_columns import Column
from torchrl_offline.data.log_episodes import first_index
from torchrl_offline.data.log_sources import Name, dotted
from torchrl_offline.data.log_spaces import _stored_dtype, _stored_shape
from torchrl_offline.data.validate import validate_transitions

__all__ = [
    "check_decision_fields",
    "stacked_sources",
    "stored_names",
    "to_tensordict",
    "validate_chunk",
]


def _check_space_shape(value: np.ndarray, space: gym.Space, field: str) -> np.ndarray:
    """Reshape ``value`` to the stored per-step shape of ``space`` or raise."""
    shape = _stored_shape(space)
    if value.shape[1:] == shape:
        return value
    if int(np.prod(value.shape[1:])) == int(np.prod(shape)) and (
        value.shape[1:] in ((1,), ()) or shape in ((1,), ())
    ):
        return value.reshape(value.shape[0], *shape)
    raise DatasetError(
        f"Field {field!r} has shape {list(value.shape[1:])} per transition but its space "
        f"{space} needs {list(shape)}",
        field=field,
    )


def _check_integral(value: np.ndarray, field: str, rows: np.ndarray) -> None:
    if value.dtype.kind == "f":
        bad = value != np.round(value)
        if (i := first_index(bad.reshape(len(value), -1).any(-1))) is not None:
            raise DatasetError(
                f"Field {field!r}: value {value[i].tolist()} at index {int(rows[i])} is not an "
                "integer, but its space is discrete",
                field=field,
                index=int(rows[i]),
            )


def _stored_target(target: Name) -> Name:
    """The stored key of a column's target: ``next_observation[.x]`` is kept under
    ``next.observation[.x]``, every other target under its own name."""
    return ("next", "observation", *target[1:]) if target[0] == "next_observation" else target


def to_tensordict(
    fields: dict[Name, np.ndarray],
    rows: np.ndarray,
    *,
    spaces: dict[Name, gym.Space],
    float_dtype: torch.dtype,
    one_hot: gym.spaces.Discrete | None = None,
    names: Mapping[str, str] | None = None,
) -> TensorDict:
    """Finished per-field arrays -> a tensordict in TorchRL's layout.

    ``spaces`` gives the leaf space of the observation / action targets known so far;
    targets without one keep their data's kind (floating data cast to ``float_dtype``).
    ``names`` maps stored keys to source columns for error messages.
    """
    n = len(rows)
    td = TensorDict(batch_size=[n])
    for target, value in fields.items():
        head = target[0]
        field = (names or {}).get(dotted(_stored_target(target)), dotted(target))
        if head in ("observation", "next_observation", "action"):
            space = spaces.get(("observation", *target[1:]) if head != "action" else target)
            if space is not None:
                value = _check_space_shape(value, space, field)
                if isinstance(space, (gym.spaces.Discrete, gym.spaces.MultiDiscrete)):
                    _check_integral(value, field, rows)
                dtype = _stored_dtype(space, float_dtype)
            else:
                dtype = float_dtype if value.dtype.kind == "f" else torch.int64
            tensor = torch.as_tensor(np.ascontiguousarray(value)).to(dtype)
            if head == "action" and one_hot is not None:
                tensor = torch.nn.functional.one_hot(tensor - int(one_hot.start), int(one_hot.n))
            key = (
                (OBSERVATION, *target[1:])
                if head == "observation"
                else (*NEXT_OBSERVATION, *target[1:])
                if head == "next_observation"
                else (ACTION,)
            )
            td.set(key, tensor)
        elif head == "reward":
            td.set(REWARD, torch.as_tensor(value).to(float_dtype).reshape(n, 1))
        elif head in ("action_log_prob", "action_prob"):
            td.set(head, torch.as_tensor(value).to(float_dtype).reshape(n))
        elif head == "episode":
            td.set(EPISODE, torch.as_tensor(value, dtype=torch.int64))
        elif head == "position":
            td.set(POSITION, torch.as_tensor(value).to(torch.int64).reshape(n))
        elif head == "behavior_probs":
            td.set(BEHAVIOR_PROBS, torch.as_tensor(value).to(float_dtype).reshape(n, -1))
        elif head in ("terminated", "truncated"):
            td.set(
                TERMINATED if head == "terminated" else TRUNCATED,
                torch.as_tensor(value).reshape(n, 1),
            )
    td.set(DONE, td.get(TERMINATED) | td.get(TRUNCATED))
    return td


def stored_names(columns: list[Column]) -> dict[str, str]:
    """Stored key (as validation errors name it) -> the source column it comes from."""
    out: dict[str, str] = {}
    for column in columns:
        if column.stacked:
            continue
        head = column.target[0]
        source = dotted(column.sources[0])
        if head in ("reward", "terminated", "truncated", "done"):
            out[f"next.{head}"] = source
            out[head] = source
        else:
            out[dotted(_stored_target(column.target))] = source
    return out


def stacked_sources(columns: list[Column]) -> dict[str, tuple[str, ...]]:
    """Stored key -> the scalar source columns stacked into it, in order (e.g.
    ``observation=["cos", "sin", "vel"]``)."""
    out: dict[str, tuple[str, ...]] = {}
    for column in columns:
        if column.stacked:
            stored = dotted(_stored_target(column.target))
            out[stored] = tuple(dotted(source) for source in column.sources)
    return out


def _bad_component(td: TensorDict, field: str, index: int, count: int) -> int | None:
    """The first non-finite component of ``field`` at ``index`` (``count`` components)."""
    value = td.get(tuple(field.split(".")), None)
    if value is None or not value.is_floating_point() or value.shape[1:].numel() != count:
        return None
    return first_index(~torch.isfinite(value[index].reshape(-1)).numpy())


def check_decision_fields(
    fields: dict[Name, np.ndarray],
    rows: np.ndarray,
    names: Mapping[str, str],
    action_space: gym.Space | None,
) -> None:
    """Propensities and positions of a log: ``action_prob`` positive and ``action_log_prob``
    above -inf (for discrete actions also ``action_prob <= 1`` and ``action_log_prob <=
    0``; continuous actions log densities, which may exceed 1); ``position`` a
    non-negative integer."""
    discrete = (
        isinstance(action_space, (gym.spaces.Discrete, gym.spaces.MultiDiscrete))
        if action_space is not None
        else fields[("action",)].dtype.kind in "biu"
    )
    checks = {
        "action_prob": (
            (lambda v: ~((v > 0) & (v <= 1)), "a probability in (0, 1]")
            if discrete
            else (lambda v: ~(v > 0), "a positive density")
        ),
        "action_log_prob": (
            (lambda v: ~((v > -np.inf) & (v <= 0)), "a log-probability in (-inf, 0]")
            if discrete
            else (lambda v: ~(v > -np.inf), "a log-density above -inf")
        ),
        "position": (lambda v: (v < 0) | (v != np.round(v)), "a non-negative integer"),
    }
    for (head, *_), value in fields.items():
        if head not in checks or not len(value):
            continue
        bad, expected = checks[head]
        if (i := first_index(bad(value))) is not None:
            field = names.get(head, head)
            raise DatasetError(
                f"Field {field!r}: value {value[i].item()!r} at index {int(rows[i])} is not "
                f"{expected}",
                field=field,
                index=int(rows[i]),
            )


def validate_chunk(
    td: TensorDict,
    rows: np.ndarray,
    action_space: gym.Space | None,
    names: Mapping[str, str],
    stacked: Mapping[str, tuple[str, ...]] | None = None,
) -> None:
    """:func:`~torchrl_offline.data.validate.validate_transitions`, with errors naming the
    source column and row; a non-finite value in a field stacked from scalar columns
    (``stacked``, :func:`stacked_sources`) names the column it comes from."""
    try:
        validate_transitions(td, action_space=action_space)
    except DatasetError as error:
        message, field, index = str(error), error.field, error.index
        sources = (stacked or {}).get(field)
        if sources and index is not None:
            component = _bad_component(td, field, index, len(sources))
            if component is not None:
                column = sources[component]
                message = message.replace(f"'{field}'", f"'{field}' (column {column!r})", 1)
                field = column
        if index is not None and len(rows):
            index = int(rows[index])
            message = message.replace(f"index {error.index}", f"index {index}", 1)
        for stored, source in names.items():
            if stored != source:
                message = message.replace(f"'{stored}'", f"'{source}'")
        raise DatasetError(message, field=names.get(field, field), index=index) from None
