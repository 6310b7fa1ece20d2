"""Turn users' logged data into an offline replay buffer: arrays, DataFrames, Parquet, CSV, HDF5.

:func:`from_logged` reads a log column by column and chunk by chunk, works out
episode boundaries (from done flags or an episode-id column) and next
observations (from the following row of the same episode when the log has
none), validates everything, and writes the transitions in TorchRL's layout
into a memory-mapped storage that is renamed into place only once complete.
The same transitions can also be written as a Minari dataset.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import re
import tempfile
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import gymnasium as gym
import numpy as np
import torch
from tensordict import TensorDict, TensorDictBase
from torchrl.data.replay_buffers.samplers import Sampler
from torchrl.data.replay_buffers.writers import ImmutableDatasetWriter
from torchrl.envs.transforms import Transform

from torchrl_offline.data import minari_writer
from torchrl_offline.data.errors import DatasetError
from torchrl_offline.data.keys import (
    ACTION,
    ACTION_LOG_PROB,
    ACTION_PROB,
    DONE,
    EPISODE,
    NEXT_OBSERVATION,
    OBSERVATION,
    REWARD,
    TERMINATED,
    TRUNCATED,
)
from torchrl_offline.data.log_sources import (
    Name,
    SourceTable,
    dotted,
    open_source,
)
from torchrl_offline.data.storage import (
    COMPLETE_MARKER,
    OfflineReplayBuffer,
    allocate_transitions,
    atomic_directory,
    is_complete,
    load_transitions,
    make_replay_buffer,
    write_complete_marker,
)
from torchrl_offline.data.validate import validate_transitions

__all__ = ["ACCEPTED_NAMES", "from_logged"]

#: Bumped whenever the stored layout changes, so older cached conversions are not reused.
_FORMAT_VERSION = 1


#: Source names accepted for each field (TorchRL, D4RL and Minari spellings).
ACCEPTED_NAMES: dict[str, tuple[str, ...]] = {
    "observation": ("observation", "observations", "obs"),
    "next_observation": (
        "next_observation",
        "next_observations",
        "next_obs",
        "next.observation",
    ),
    "action": ("action", "actions"),
    "reward": ("reward", "rewards", "next.reward"),
    "terminated": ("terminated", "terminals", "terminal", "terminations", "next.terminated"),
    "truncated": ("truncated", "timeouts", "timeout", "truncations", "next.truncated"),
    "done": ("done", "dones", "next.done"),
    "episode": ("episode", "episodes", "episode_id", "episode_ids", "collector.traj_ids"),
    "action_log_prob": (
        "action_log_prob",
        "action_log_probs",
        "log_prob",
        "infos.action_log_prob",
        "infos.action_log_probs",
    ),
    "action_prob": ("action_prob", "action_probs", "infos.action_prob", "infos.action_probs"),
}
_ALIAS = {alias: field for field, names in ACCEPTED_NAMES.items() for alias in names}
_NESTABLE = ("observation", "next_observation")
_FLOAT_FIELDS = ("observation", "next_observation", "reward", "action_log_prob", "action_prob")
_FLAGS = ("terminated", "truncated", "done")
# TorchRL rollout bookkeeping that carries no transition data.
_BOOKKEEPING = {("is_init",), ("step_count",), ("next", "step_count"), ("next", "is_init")}
_GROUP = re.compile(r"(?P<prefix>.+)_(?P<index>\d+)")


# --------------------------------------------------------------------------- columns


@dataclass
class _Column:
    """How one stored field is read: one source column, or scalar columns stacked."""

    target: Name  # ("observation",), ("observation", "pos"), ("action",), ...
    sources: tuple[Name, ...]
    stacked: bool


def _canonical(name: str) -> str | None:
    return _ALIAS.get(name.replace("/", "."))


def _accepted_message() -> str:
    return "; ".join(f"{field}: {', '.join(names)}" for field, names in ACCEPTED_NAMES.items())


def _resolve(
    names: list[Name],
    columns: Mapping[str, Any] | None,
    ignore: Sequence[str],
) -> tuple[list[_Column], list[str]]:
    """Map source columns to fields. Returns the columns to read and the names ignored."""
    by_text: dict[str, Name] = {}
    for name in names:
        by_text[dotted(name)] = name
        by_text["/".join(name)] = name
    ignored_set = {i.replace("/", ".") for i in ignore}
    for text in ignored_set:
        if text not in by_text:
            raise DatasetError(
                f"Column {text!r} given in ignore= is not in the source; it has "
                f"{sorted({dotted(n) for n in names})}",
                field=text,
            )

    def lookup(text: str, field: str) -> Name:
        if text not in by_text:
            raise DatasetError(
                f"Column {text!r} given in columns= for field {field!r} is not in the source; it "
                f"has {sorted({dotted(n) for n in names})}",
                field=text,
            )
        return by_text[text]

    resolved: dict[Name, _Column] = {}
    used: set[Name] = set()

    def add(column: _Column) -> None:
        if column.target in resolved:
            others = resolved[column.target].sources + column.sources
            raise DatasetError(
                f"Field {dotted(column.target)!r} is given by several columns: "
                f"{[dotted(n) for n in others]}; keep one (see ignore=) or map it with columns=",
                field=dotted(column.target),
            )
        resolved[column.target] = column
        used.update(column.sources)

    for field, spec in (columns or {}).items():
        canon = _canonical(field)
        if canon is None:
            raise DatasetError(
                f"Unknown field {field!r} in columns=; accepted fields: {', '.join(ACCEPTED_NAMES)}",
                field=field,
            )
        entries = spec.items() if isinstance(spec, Mapping) else [(None, spec)]
        if isinstance(spec, Mapping) and canon not in _NESTABLE:
            raise DatasetError(
                f"Field {field!r} cannot be nested; only observations take a mapping in columns=",
                field=field,
            )
        for sub, value in entries:
            target = (canon,) if sub is None else (canon, *str(sub).split("."))
            if isinstance(value, str):
                add(_Column(target, (lookup(value, field),), stacked=False))
            else:
                add(_Column(target, tuple(lookup(v, field) for v in value), stacked=True))

    skipped: list[str] = []
    unknown: list[str] = []
    groups: dict[str, dict[int, Name]] = {}
    root_flags: list[Name] = []
    for name in names:
        text = dotted(name)
        if name in used:
            continue
        if (
            text in ignored_set
            or name in _BOOKKEEPING
            or (name[0] == "collector" and text != "collector.traj_ids")
        ):
            skipped.append(text)
            continue
        if len(name) == 1 and name[0] in _FLAGS:
            root_flags.append(name)  # decided below: TorchRL's root flags or plain logs
            continue
        target = _target(name)
        if target is not None:
            add(_Column(target, (name,), stacked=False))
            continue
        if len(name) == 1 and (m := _GROUP.fullmatch(name[0])):
            canon = _canonical(m["prefix"])
            if canon in ("observation", "next_observation", "action"):
                groups.setdefault(canon, {})[int(m["index"])] = name
                continue
        if name[0] == "infos" and len(name) > 1:
            skipped.append(text)  # D4RL per-step infos other than behaviour probabilities
            continue
        unknown.append(text)
    if unknown:
        raise DatasetError(
            f"Unknown column {unknown[0]!r}"
            + (f" (and {unknown[1:]})" if unknown[1:] else "")
            + f"; accepted names are {_accepted_message()}; vector fields may also be split in "
            "scalar columns named like observation_0, observation_1, ...; map other names with "
            "columns= or skip them with ignore=",
            field=unknown[0],
        )
    for name in root_flags:
        if (name[0],) in resolved or ("next", name[0]) in [c.sources[0] for c in resolved.values()]:
            skipped.append(name[0])  # a TorchRL rollout's root flags belong to the previous step
        else:
            add(_Column((name[0],), (name,), stacked=False))
    for canon, members in groups.items():
        indices = sorted(members)
        if indices != list(range(len(indices))):
            missing = next(i for i in range(len(indices)) if i not in members)
            raise DatasetError(
                f"Columns {canon}_0, {canon}_1, ...: {canon}_{missing} is missing",
                field=f"{canon}_{missing}",
            )
        add(_Column((canon,), tuple(members[i] for i in indices), stacked=True))

    targets = set(resolved)
    for canon in _NESTABLE:
        nested = [t for t in targets if t[0] == canon and len(t) > 1]
        if (canon,) in targets and nested:
            raise DatasetError(
                f"Field {canon!r} is given both as one column and as nested entries "
                f"{[dotted(t) for t in nested]}",
                field=canon,
            )
    for field in ("observation", "action", "reward"):
        if not any(t[0] == field for t in targets):
            raise DatasetError(
                f"Missing field {field!r}: no column named {' / '.join(ACCEPTED_NAMES[field])} "
                f"(or {field}_0, {field}_1, ...); map yours with columns={{{field!r}: ...}}",
                field=field,
            )
    obs_subs = {t[1:] for t in targets if t[0] == "observation"}
    next_subs = {t[1:] for t in targets if t[0] == "next_observation"}
    if next_subs and next_subs != obs_subs:
        raise DatasetError(
            "Fields 'observation' and 'next_observation' have different entries: "
            f"{sorted(obs_subs)} vs {sorted(next_subs)}",
            field="next_observation",
        )
    return list(resolved.values()), skipped


def _target(name: Name) -> Name | None:
    """The field a (possibly nested) source name stands for, or None."""
    if name[0] == "next" and len(name) > 1:
        if name[1] in ACCEPTED_NAMES["observation"]:
            return ("next_observation", *name[2:])
        canon = _canonical("next." + name[1])
        return (canon,) if canon is not None and len(name) == 2 else None
    for cut in range(len(name), 0, -1):
        canon = _canonical(".".join(name[:cut]))
        if canon is not None:
            rest = name[cut:]
            if rest and canon not in _NESTABLE:
                return None
            return (canon, *rest)
    return None


# --------------------------------------------------------------------------- values


def _numeric(values: np.ndarray, field: str, offset: int) -> np.ndarray:
    """Cells as one numeric array ``[rows, *shape]`` (array-valued or string cells stacked)."""
    if values.dtype.kind in "biuf":
        return values
    if values.dtype.kind in "OUS":
        cells = []
        shape = None
        for i, cell in enumerate(values):
            if cell is None or (
                isinstance(cell, float) and np.isnan(cell) and shape not in (None, ())
            ):
                raise DatasetError(
                    f"Field {field!r}: missing value at index {offset + i}",
                    field=field,
                    index=offset + i,
                )
            if isinstance(cell, (str, bytes)):
                text = cell.decode() if isinstance(cell, bytes) else cell
                try:
                    cell = np.array(text.strip().strip("[]").replace(",", " ").split(), float)
                except ValueError:
                    raise DatasetError(
                        f"Field {field!r}: cannot read {text!r} at index {offset + i} as a "
                        "number or a vector",
                        field=field,
                        index=offset + i,
                    ) from None
            cell = np.asarray(cell)
            if shape is None:
                shape = cell.shape
            elif cell.shape != shape:
                raise DatasetError(
                    f"Field {field!r}: the value at index {offset + i} has shape "
                    f"{list(cell.shape)}, earlier values have {list(shape)}",
                    field=field,
                    index=offset + i,
                )
            cells.append(cell)
        if not cells:
            return np.zeros((0,), np.float64)
        return np.stack(cells)
    raise DatasetError(
        f"Field {field!r}: unsupported data type {values.dtype}", field=field, index=offset
    )


def _flag(values: np.ndarray, field: str, offset: int) -> np.ndarray:
    values = _numeric(values, field, offset)
    values = values.reshape(values.shape[0], -1)
    if values.shape[1] != 1:
        raise DatasetError(
            f"Field {field!r} must hold one flag per transition, got shape {list(values.shape)}",
            field=field,
        )
    values = values[:, 0]
    if values.dtype != np.bool_:
        bad = ~((values == 0) | (values == 1))
        if bad.any():
            i = int(bad.nonzero()[0][0])
            raise DatasetError(
                f"Field {field!r}: flag at index {offset + i} is {values[i]!r}, expected 0/1 or "
                "True/False",
                field=field,
                index=offset + i,
            )
        values = values == 1
    return values


def _assemble(chunk: dict[Name, np.ndarray], columns: list[_Column], offset: int) -> dict:
    """Source columns of a chunk -> per-field numpy arrays (flags bool ``[n]``, reward ``[n]``)."""
    out: dict[Name, np.ndarray] = {}
    for column in columns:
        field = dotted(column.sources[0]) if not column.stacked else dotted(column.target)
        if column.stacked:
            parts = []
            for source in column.sources:
                part = _numeric(chunk[source], dotted(source), offset)
                if part.ndim != 1:
                    raise DatasetError(
                        f"Column {dotted(source)!r} (part of {field!r}) must hold scalars, got "
                        f"shape {list(part.shape[1:])} per row",
                        field=dotted(source),
                    )
                parts.append(part)
            value = np.stack(parts, axis=-1)
        elif column.target[0] == "episode":
            value = chunk[column.sources[0]]
            if value.ndim > 1 and value.shape[1:] == (1,):
                value = value[:, 0]
        elif column.target[0] in _FLAGS:
            value = _flag(chunk[column.sources[0]], field, offset)
        else:
            value = _numeric(chunk[column.sources[0]], field, offset)
        if column.target[0] in ("reward", "action_log_prob", "action_prob"):
            if value.shape[1:] not in ((), (1,)):
                raise DatasetError(
                    f"Field {field!r} must hold one number per transition, got shape "
                    f"{list(value.shape[1:])}",
                    field=field,
                )
            value = value.reshape(-1)
        out[column.target] = value
    return out


def _concat(a: dict | None, b: dict) -> dict:
    if a is None:
        return b
    return {k: np.concatenate([a[k], b[k]]) for k in b}


# --------------------------------------------------------------------------- transitions


@dataclass
class _Walk:
    """State carried from chunk to chunk while turning rows into transitions."""

    episodes_started: int = 0  # episodes begun so far among the kept rows
    last_end: bool = True  # whether the last kept row ended its episode
    last_id: Any = None  # the source episode id of the last row seen (id-column mode)
    seen_ids: set = dataclasses.field(default_factory=set)
    dropped: int = 0  # transitions dropped for lack of a next observation


def _transitions(
    table: SourceTable,
    columns: list[_Column],
    *,
    chunk_size: int,
    drop_incomplete: bool,
    state: _Walk | None = None,
) -> Iterator[tuple[dict[Name, np.ndarray], np.ndarray]]:
    """Yield ``(fields, source_rows)`` chunks of finished transitions.

    Each row needs its successor (episode change, derived next observation) and the row
    after it (whether the successor is dropped), so the last two rows of a chunk wait for
    the next one.
    """
    state = state if state is not None else _Walk()
    carry: dict | None = None
    offset = 0  # source index of carry's first row
    read = 0
    for chunk in table.chunks(chunk_size):
        n_chunk = len(next(iter(chunk.values()))) if chunk else 0
        if n_chunk == 0:
            continue
        data = _assemble(chunk, columns, read)
        read += n_chunk
        buffer = _concat(carry, data)
        n = len(next(iter(buffer.values())))
        if n <= 2:
            carry = buffer
            continue
        ready = n - 2
        yield _finish(
            buffer, ready, offset, final=False, state=state, drop_incomplete=drop_incomplete
        )
        carry = {k: v[ready:] for k, v in buffer.items()}
        offset += ready
    if carry is not None:
        n = len(next(iter(carry.values())))
        yield _finish(carry, n, offset, final=True, state=state, drop_incomplete=drop_incomplete)


def _finish(
    buf: dict[Name, np.ndarray],
    m: int,
    offset: int,
    *,
    final: bool,
    state: _Walk,
    drop_incomplete: bool,
) -> tuple[dict[Name, np.ndarray], np.ndarray]:
    """Finish rows ``[0, m)`` of ``buf`` (its later rows are only looked at)."""
    n = len(next(iter(buf.values())))
    zeros = np.zeros(n, bool)
    term, trunc, done = (buf.get((f,)) for f in _FLAGS)
    if term is None and done is not None:
        term = done & ~(trunc if trunc is not None else zeros)
    if trunc is None and done is not None and term is not None:
        trunc = done & ~term
    if done is not None and (given := [f for f in (term, trunc) if f is not None]):
        both = given[0] if len(given) == 1 else given[0] | given[1]
        wrong = both != done if len(given) == 2 else both & ~done
        if (i := _first(wrong[:m])) is not None:
            raise DatasetError(
                f"Field 'done' at index {offset + i} disagrees with 'terminated' / 'truncated'; "
                "done must be terminated | truncated",
                field="done",
                index=offset + i,
            )
    term = (term if term is not None else zeros).copy()
    trunc = (trunc if trunc is not None else zeros).copy()
    flag_end = term | trunc
    if done is not None:
        flag_end = flag_end | done

    # end[i]: row i is the last of its episode (known for i < n - 1, or i = n - 1 if final).
    ids = buf.get(("episode",))
    if ids is not None:
        end = np.ones(n, bool)
        end[:-1] = ids[1:] != ids[:-1]
        starts = np.concatenate([[0], np.nonzero(end[:-1])[0] + 1])
        for s in starts[starts < m]:
            key = ids[s].item() if hasattr(ids[s], "item") else ids[s]
            if s == 0 and state.last_id is not None and key == state.last_id:
                continue  # continues the episode of the previous chunk
            if key in state.seen_ids:
                raise DatasetError(
                    f"Field 'episode': episode {key!r} resumes at index {offset + s} after "
                    "another episode; each episode's rows must be contiguous and in time order",
                    field="episode",
                    index=int(offset + s),
                )
            state.seen_ids.add(key)
        if m:
            last = ids[m - 1]
            state.last_id = last.item() if hasattr(last, "item") else last
        inner = flag_end & ~end
        if (i := _first(inner[:m])) is not None:
            raise DatasetError(
                f"A done flag is set at index {offset + i} but the episode id continues on the "
                "next row; the episode column and the done flags disagree",
                field="episode",
                index=offset + i,
            )
    else:
        end = flag_end.copy()
        if final:
            end[-1] = True
    # An episode that ends in the log without a flag was cut: it is truncated.
    trunc |= end & ~term & ~trunc

    next_given = any(k[0] == "next_observation" for k in buf)
    if next_given:
        missing = np.zeros(n, bool)
    else:
        missing = end.copy()
        if not final:
            missing[-1] = False  # not known yet: looked at again with the next chunk
    if (i := _first(missing[:m])) is not None and not drop_incomplete:
        raise DatasetError(
            f"Field 'next_observation': the transition at index {offset + i} ends its episode "
            "and there is no next_observation column to take its next observation from (the "
            "next row starts another episode or there is none). Add a next_observation column "
            "or pass drop_incomplete=True to drop such transitions",
            field="next_observation",
            index=offset + i,
        )
    keep = ~missing
    same = ~end  # row i + 1 continues row i's episode
    # A kept row followed by a dropped row of its own episode becomes that episode's end.
    cut = keep[:-1] & ~end[:-1] & missing[1:]
    trunc[:-1] |= cut
    end[:-1] |= cut

    out: dict[Name, np.ndarray] = {}
    for key, value in buf.items():
        if key[0] in (
            "observation",
            "next_observation",
            "action",
            "action_log_prob",
            "action_prob",
            "reward",
        ):
            out[key] = value[:m]
    if not next_given:
        rows = np.nonzero(same[:m])[0]
        for key, value in buf.items():
            if key[0] == "observation":
                nxt = np.zeros_like(value[:m])
                nxt[rows] = value[rows + 1]
                out[("next_observation", *key[1:])] = nxt
    out[("terminated",)] = term[:m]
    out[("truncated",)] = trunc[:m]

    # Stored episode numbers: dense over kept rows.
    rows = np.nonzero(keep[:m])[0]
    episode = np.zeros(len(rows), np.int64)
    if len(rows):
        starts = np.concatenate([[state.last_end], end[rows[:-1]]])
        episode = state.episodes_started + np.cumsum(starts) - 1
        state.episodes_started += int(starts.sum())
        state.last_end = bool(end[rows[-1]])
    state.dropped += m - len(rows)
    out = {k: v[rows] for k, v in out.items()}
    out[("episode",)] = episode.astype(np.int64)
    return out, rows + offset


def _first(mask: np.ndarray) -> int | None:
    hits = np.nonzero(mask)[0]
    return int(hits[0]) if len(hits) else None


# --------------------------------------------------------------------------- spaces


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


# --------------------------------------------------------------------------- tensors


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
        if (i := _first(bad.reshape(len(value), -1).any(-1))) is not None:
            raise DatasetError(
                f"Field {field!r}: value {value[i].tolist()} at index {int(rows[i])} is not an "
                "integer, but its space is discrete",
                field=field,
                index=int(rows[i]),
            )


def _tensordict(
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
        stored = ("next", "observation", *target[1:]) if head == "next_observation" else target
        field = (names or {}).get(dotted(stored), dotted(target))
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
        elif head in ("terminated", "truncated"):
            td.set(
                TERMINATED if head == "terminated" else TRUNCATED,
                torch.as_tensor(value).reshape(n, 1),
            )
    td.set(DONE, td.get(TERMINATED) | td.get(TRUNCATED))
    return td


def _stored_names(columns: list[_Column]) -> dict[str, str]:
    """Stored key (as validation errors name it) -> the source column it comes from."""
    out: dict[str, str] = {}
    for column in columns:
        if column.stacked:
            continue
        head, rest = column.target[0], column.target[1:]
        source = dotted(column.sources[0])
        if head == "next_observation":
            out[dotted(("next", "observation", *rest))] = source
        elif head in ("reward", "terminated", "truncated", "done"):
            out[f"next.{head}"] = source
            out[head] = source
        else:
            out[dotted(column.target)] = source
    return out


def _validate(
    td: TensorDict, rows: np.ndarray, action_space: gym.Space | None, names: dict[str, str]
) -> None:
    """validate_transitions, with errors naming the source column and row."""
    try:
        validate_transitions(td, action_space=action_space)
    except DatasetError as error:
        message, field, index = str(error), error.field, error.index
        if index is not None and len(rows):
            index = int(rows[index])
            message = message.replace(f"index {error.index}", f"index {index}", 1)
        for stored, source in names.items():
            if stored != source:
                message = message.replace(f"'{stored}'", f"'{source}'")
        raise DatasetError(message, field=names.get(field, field), index=index) from None


# --------------------------------------------------------------------------- entry point


def _default_root() -> Path:
    """``$TORCHRL_OFFLINE_CACHE/logged`` (the cache of :func:`load_minari`), else a temp dir."""
    env = os.environ.get("TORCHRL_OFFLINE_CACHE")
    base = Path(env).expanduser() if env else Path(tempfile.gettempdir()) / "torchrl_offline"
    return base / "logged"


def _float_np(dtype: torch.dtype) -> np.dtype:
    if not dtype.is_floating_point:
        raise ValueError(f"dtype must be a floating dtype, got {dtype}")
    return torch.zeros((), dtype=dtype).numpy().dtype


def from_logged(
    source: Mapping[str, Any] | TensorDictBase | Any | str | os.PathLike,
    *,
    path: str | os.PathLike | None = None,
    columns: Mapping[str, str | Sequence[str] | Mapping[str, str | Sequence[str]]] | None = None,
    ignore: Sequence[str] = (),
    observation_space: gym.Space | None = None,
    action_space: gym.Space | None = None,
    drop_incomplete: bool = False,
    dtype: torch.dtype = torch.float32,
    one_hot_actions: bool = False,
    file_format: str | None = None,
    chunk_size: int = 65536,
    batch_size: int | None = 256,
    sampler: Sampler | None = None,
    transform: Transform | None = None,
    ref_min_score: float | None = None,
    ref_max_score: float | None = None,
    overwrite: bool = False,
    minari_id: str | None = None,
    minari_root: str | os.PathLike | None = None,
    minari_kwargs: Mapping[str, Any] | None = None,
    **kwargs: Any,
) -> OfflineReplayBuffer:
    """Load logged transitions into an offline replay buffer (and optionally a Minari dataset).

    Sources:

    * a mapping of numpy arrays / torch tensors / lists, one entry per field (nested
      mappings give nested observations), or a :class:`~tensordict.TensorDict` such as a
      TorchRL rollout flattened to one batch dimension;
    * a pandas ``DataFrame``;
    * a path to a Parquet, CSV or HDF5 (D4RL layout) file, read chunk by chunk.

    Field names may be TorchRL's (``observation``, ``action``, ``("next", "reward")``,
    ...), D4RL's (``observations``, ``actions``, ``rewards``, ``terminals``,
    ``timeouts``, ``next_observations``, ``infos/action_log_probs``) or Minari's
    (``terminations``, ``truncations``); see :data:`ACCEPTED_NAMES`. A vector field can
    be one array-valued column (arrays, lists, Arrow list columns, or CSV strings such
    as ``"[0.1, 0.2]"``) or scalar columns ``observation_0``, ``observation_1``, ...;
    ``columns=`` maps any other names, e.g. ``{"observation": ["x", "y"], "action":
    "a", "episode": "run"}``. A column that maps to no field is an error unless named
    in ``ignore=``.

    Episodes end at a done flag (``terminated``, ``truncated``, or ``done``, which
    counts as ``terminated`` when no ``truncated`` column tells otherwise) or, when
    the log has an episode-id column, where the id changes. An episode that ends
    without a flag (the log stops or the id changes) is marked truncated. Without a
    next-observation column, the next observation of a step is the observation of the
    following row of the same episode; the last step of an episode then has none, and
    is an error unless ``drop_incomplete=True`` drops it (its predecessor then ends the
    episode, truncated).

    The data are validated before anything is written (non-finite values, mismatched
    lengths, actions outside the action space, terminated and truncated both set, flags
    disagreeing with episode ids): errors are :class:`DatasetError` naming the field
    and the first bad row of the source. The transitions are written to a memory-mapped
    storage built in a temporary directory and renamed into place when complete, so a
    failure leaves nothing behind.

    Args:
        source: the log (see above).
        path: the dataset directory to write. By default a directory keyed by the
            data's content under ``$TORCHRL_OFFLINE_CACHE/logged`` (or
            ``<system temp dir>/torchrl_offline/logged``), reused when the same data
            and options are loaded again. An existing ``path`` holding the same data
            is reused too; one holding other data is an error unless ``overwrite``.
        columns: field -> source column name, list of scalar column names (stacked
            into a vector), or, for observations, a mapping of nested entries.
        ignore: source columns to skip.
        observation_space: the gymnasium observation space; inferred when absent
            (unbounded Box for floating data, Discrete(max + 1) for integer scalars).
        action_space: the gymnasium action space, checked against every action;
            inferred when absent (Box over the data's range for floating actions,
            Discrete(max + 1) for integer actions, MultiDiscrete for integer vectors).
        drop_incomplete: drop the transitions whose next observation cannot be
            derived instead of raising.
        dtype: the floating dtype of the stored data.
        one_hot_actions: store Discrete actions one-hot (int64) instead of indices.
        file_format: ``"parquet"``, ``"csv"`` or ``"hdf5"`` when the file suffix does
            not tell.
        chunk_size: rows read and written at a time.
        batch_size: the replay buffer's sample size.
        sampler: a TorchRL sampler (uniform by default).
        transform: a TorchRL transform applied to sampled batches.
        ref_min_score: reference return of a random policy, for normalized scores.
        ref_max_score: reference return of an expert policy.
        overwrite: replace an existing dataset at ``path`` (and Minari dataset) that
            holds other data.
        minari_id: also write the transitions as the Minari dataset with this id.
        minari_root: the Minari datasets root (default ``$MINARI_DATASETS_PATH`` or
            ``~/.minari/datasets``).
        minari_kwargs: more arguments of
            :func:`~torchrl_offline.data.minari_writer.write_minari` (``data_format``,
            ``env_spec``, ``author``, ...).
        **kwargs: forwarded to the replay buffer (its ``writer`` is a read-only
            :class:`~torchrl.data.replay_buffers.ImmutableDatasetWriter` by default, so
            the stored files are never overwritten through the buffer).

    Returns:
        An :class:`~torchrl_offline.data.storage.OfflineReplayBuffer` over the
        memory-mapped transitions, in the log's order, with ``.metadata`` (source,
        spaces, counts) and ``.path``.

    Raises:
        DatasetError: invalid data, naming the field and the first bad index.
        FileExistsError: ``path`` or the Minari dataset holds other data and
            ``overwrite`` is False.

    Examples:
        >>> import numpy as np
        >>> from torchrl_offline.data.logged import from_logged
        >>> rng = np.random.default_rng(0)
        >>> log = {
        ...     "observations": rng.normal(size=(6, 3)),
        ...     "actions": rng.uniform(-1, 1, size=(6, 2)),
        ...     "rewards": rng.normal(size=6),
        ...     "terminals": [0, 0, 1, 0, 0, 0],
        ... }
        >>> rb = from_logged(log, drop_incomplete=True)
        >>> len(rb), rb.storage[0]["next", "observation"].shape
        (4, torch.Size([3]))
        >>> rb.storage[:]["episode"].tolist()
        [0, 0, 1, 1]
    """
    from minari.serialization import serialize_space

    float_np = _float_np(dtype)
    if (ref_min_score is None) != (ref_max_score is None):
        raise ValueError("ref_min_score and ref_max_score must be given together")
    if chunk_size < 1:
        raise ValueError(f"chunk_size must be positive, got {chunk_size}")
    table = open_source(source, file_format, chunk_size)
    resolved, skipped = _resolve(table.names, columns, ignore)
    table.select(
        {n for c in resolved for n in c.sources},
        {n for c in resolved if c.target[0] in _FLOAT_FIELDS for n in c.sources},
    )

    given: dict[Name, gym.Space] = {}
    if observation_space is not None:
        given.update(_leaf_spaces(observation_space, ("observation",)))
        data_obs = {c.target for c in resolved if c.target[0] == "observation"}
        if set(given) != data_obs:
            raise DatasetError(
                f"The observation space has entries {sorted(dotted(k) for k in given)} but the "
                f"data has {sorted(dotted(k) for k in data_obs)}",
                field="observation",
            )
    if action_space is not None:
        given.update(_leaf_spaces(action_space, ("action",)))
        if len(_leaf_spaces(action_space, ("action",))) != 1:
            raise DatasetError(
                "Only single (non-Dict, non-Tuple) action spaces are supported", field="action"
            )

    # Pass 1: validate, gather shapes / ranges, and fingerprint the content.
    names = _stored_names(resolved)
    hasher = hashlib.sha256()
    stats: dict[Name, _Stats] = {}
    negative: dict[Name, int] = {}
    total = 0
    walk = _Walk()
    for fields, rows in _transitions(
        table, resolved, chunk_size=chunk_size, drop_incomplete=drop_incomplete, state=walk
    ):
        if not len(rows):
            continue
        td = _tensordict(fields, rows, spaces=given, float_dtype=dtype, names=names)
        _validate(td, rows, action_space, names)
        for target, value in fields.items():
            if target[0] in ("observation", "action"):
                if value.dtype.kind == "b":
                    value = value.astype(np.int64)
                if target not in stats:
                    stats[target] = _Stats.of(value)
                else:
                    stats[target].update(
                        value, names.get(dotted(target), dotted(target)), int(rows[0])
                    )
                if value.dtype.kind in "iu" and target not in negative:
                    bad = (value < 0).reshape(len(value), -1).any(-1)
                    if (i := _first(bad)) is not None:
                        negative[target] = int(rows[i])
        for key in sorted(td.keys(True, True), key=str):
            hasher.update(str(key).encode())
            hasher.update(td.get(key).contiguous().numpy().tobytes())
        total += len(rows)
    if total == 0:
        raise DatasetError("The log holds no transition to store", field="observation")

    spaces: dict[Name, gym.Space] = {}
    for target, stat in stats.items():
        if target in given:
            spaces[target] = given[target]
        else:
            spaces[target] = _infer_space(
                stat,
                action=target[0] == "action",
                float_np=float_np,
                field=names.get(dotted(target), dotted(target)),
                first_negative=negative.get(target),
            )
    obs_space = (
        observation_space
        if observation_space is not None
        else _space_from_leaves({k: v for k, v in spaces.items() if k[0] == "observation"}, 1)
    )
    act_space = action_space if action_space is not None else spaces[("action",)]
    if one_hot_actions and not isinstance(act_space, gym.spaces.Discrete):
        raise ValueError(f"one_hot_actions=True needs a Discrete action space, got {act_space}")
    behavior_keys = [c.target[0] for c in resolved if c.target[0] in (ACTION_LOG_PROB, ACTION_PROB)]
    options = {
        "format_version": _FORMAT_VERSION,
        "dtype": str(dtype).replace("torch.", ""),
        "one_hot_actions": one_hot_actions,
        "observation_space": serialize_space(obs_space),
        "action_space": serialize_space(act_space),
        "ref_scores": [ref_min_score, ref_max_score],
    }
    hasher.update(json.dumps(options, sort_keys=True).encode())
    content_hash = hasher.hexdigest()

    spec: dict[Name, tuple[tuple[int, ...], torch.dtype]] = {}
    for target, space in spaces.items():
        shape, leaf_dtype = _stored_shape(space), _stored_dtype(space, dtype)
        if target[0] == "observation":
            spec[(OBSERVATION, *target[1:])] = (shape, leaf_dtype)
            spec[(*NEXT_OBSERVATION, *target[1:])] = (shape, leaf_dtype)
        else:
            spec[(ACTION,)] = (
                ((int(act_space.n),), torch.int64) if one_hot_actions else (shape, leaf_dtype)
            )
    spec[REWARD] = ((1,), dtype)
    for key in (DONE, TERMINATED, TRUNCATED):
        spec[key] = ((1,), torch.bool)
    spec[(EPISODE,)] = ((), torch.int64)
    for name in behavior_keys:
        spec[(name,)] = ((), dtype)

    episodes = 0
    metadata: dict[str, Any] = {
        "source": "logged",
        **table.describe(),
        "total_steps": total,
        "dropped_transitions": walk.dropped,
        "observation_space": options["observation_space"],
        "action_space": options["action_space"],
        "content_hash": content_hash,
        "conversion": {k: options[k] for k in ("format_version", "dtype", "one_hot_actions")},
        "behavior_keys": behavior_keys,
        "ignored_columns": skipped,
    }
    if ref_min_score is not None:
        metadata["ref_min_score"] = float(ref_min_score)
        metadata["ref_max_score"] = float(ref_max_score)
    if minari_id is not None:
        metadata["minari_id"] = minari_id

    final = Path(path).expanduser() if path is not None else _default_root() / content_hash[:24]
    reuse = is_complete(final) and _stored_hash(final) == content_hash
    if final.exists() and not reuse:
        if not is_complete(final) and (not final.is_dir() or any(final.iterdir())):
            raise FileExistsError(
                f"{final} exists and is not a torchrl_offline dataset; refusing to replace it"
            )
        if is_complete(final) and not overwrite:
            raise FileExistsError(
                f"{final} already holds another dataset; pass overwrite=True to replace it"
            )
    if not reuse:
        with atomic_directory(final, overwrite=True) as tmp:
            out = allocate_transitions(spec, total, tmp / "transitions")
            start = 0
            for fields, rows in _transitions(
                table, resolved, chunk_size=chunk_size, drop_incomplete=drop_incomplete
            ):
                if not len(rows):
                    continue
                if start + len(rows) > total:
                    break
                chunk = _tensordict(
                    fields,
                    rows,
                    spaces=spaces,
                    float_dtype=dtype,
                    one_hot=act_space if one_hot_actions else None,
                )
                out[start : start + len(rows)] = chunk
                start += len(rows)
                episodes = int(chunk.get(EPISODE)[-1]) + 1
            if start != total:
                raise DatasetError(
                    f"The source changed while it was read ({total} transitions, then {start})",
                    field="source",
                )
            metadata["total_episodes"] = episodes
            if minari_id is not None:
                _write_minari(
                    out,
                    minari_id,
                    minari_root,
                    obs_space,
                    act_space,
                    content_hash,
                    metadata,
                    overwrite,
                    minari_kwargs,
                )
            write_complete_marker(tmp, metadata)
    transitions, stored = load_transitions(final)
    kwargs.setdefault("writer", ImmutableDatasetWriter())
    if reuse and minari_id is not None:
        _write_minari(
            transitions,
            minari_id,
            minari_root,
            obs_space,
            act_space,
            content_hash,
            stored,
            overwrite,
            minari_kwargs,
        )
    return make_replay_buffer(
        transitions,
        batch_size=batch_size,
        sampler=sampler,
        transform=transform,
        metadata=stored,
        path=final,
        **kwargs,
    )


def _stored_hash(path: Path) -> str | None:
    with open(path / COMPLETE_MARKER) as f:
        return json.load(f).get("content_hash")


def _write_minari(
    transitions: TensorDictBase,
    dataset_id: str,
    root: str | os.PathLike | None,
    observation_space: gym.Space,
    action_space: gym.Space,
    content_hash: str,
    metadata: Mapping[str, Any],
    overwrite: bool,
    kwargs: Mapping[str, Any] | None,
) -> None:
    """Write the Minari copy, unless the same content is already there under that id."""
    target = minari_writer.minari_root(root) / dataset_id
    meta_file = target / "data" / "metadata.json"
    if meta_file.is_file() and not overwrite:
        with open(meta_file) as f:
            if json.load(f).get("torchrl_offline_content_hash") == content_hash:
                return
    options = dict(kwargs or {})
    extra = dict(options.pop("extra_metadata", None) or {})
    extra["torchrl_offline_content_hash"] = content_hash
    for name in ("ref_min_score", "ref_max_score"):
        if name in metadata and name not in options:
            options[name] = metadata[name]
    minari_writer.write_minari(
        transitions,
        dataset_id,
        observation_space=observation_space,
        action_space=action_space,
        root=root,
        overwrite=overwrite,
        extra_metadata=extra,
        **options,
    )
