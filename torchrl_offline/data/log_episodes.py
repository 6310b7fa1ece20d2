"""Turn logged rows into transitions: episode boundaries and next observations.

Rows arrive chunk by chunk. An episode ends at a done flag or where the episode id
changes; an episode that ends without a flag is truncated; without a next-observation
column the next observation of a row is the observation of the following row of the
same episode. The last row of an episode then has none: a terminal one needs none (it
is never bootstrapped) and gets a copy of its observation; any other is an error, or
dropped on request. :func:`iter_transitions` yields finished transitions with the source rows
they came from, so every error names the source row.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np

from torchrl_offline.data.errors import DatasetError
from torchrl_offline.data.log_columns import FLAGS, Column
from torchrl_offline.data.log_sources import (
    Name,
    SourceTable,
    dotted,
)

__all__ = ["Walk", "first_index", "iter_transitions"]


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


def _assemble(chunk: dict[Name, np.ndarray], columns: list[Column], offset: int) -> dict:
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
        elif column.target[0] in FLAGS:
            value = _flag(chunk[column.sources[0]], field, offset)
        else:
            value = _numeric(chunk[column.sources[0]], field, offset)
        if column.target[0] in ("reward", "action_log_prob", "action_prob", "position"):
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
class Walk:
    """State carried from chunk to chunk while turning rows into transitions."""

    episodes_started: int = 0  # episodes begun so far among the kept rows
    last_end: bool = True  # whether the last kept row ended its episode
    last_id: Any = None  # the source episode id of the last row seen (id-column mode)
    seen_ids: set = dataclasses.field(default_factory=set)
    dropped: int = 0  # transitions dropped for lack of a next observation
    terminal_filled: int = 0  # terminal steps kept without a successor (next obs = obs)
    last_row_id: Any = None  # the episode id of the last finished row (any mode)


def _one_step_ends(buf: dict[Name, np.ndarray], m: int, offset: int, state: Walk) -> None:
    """Check the rows ``[0, m)`` of a one-step log (``horizon=1``): every row is a whole,
    terminated episode, so a flag saying otherwise is an error, and so is a row id (the
    ``episode`` column) met twice."""
    for flag, whole in (("terminated", True), ("done", True), ("truncated", False)):
        values = buf.get((flag,))
        if values is not None and (i := first_index(values[:m] != whole)) is not None:
            raise DatasetError(
                f"Field {flag!r} is {bool(values[i])} at index {offset + i}, but with "
                "horizon=1 every row is a whole episode that ends terminated",
                field=flag,
                index=offset + i,
            )
    ids = buf.get(("episode",))
    if ids is None:
        return
    for i in range(m):
        key = ids[i].item() if hasattr(ids[i], "item") else ids[i]
        if key in state.seen_ids:
            raise DatasetError(
                f"Field 'episode': row id {key!r} at index {offset + i} is duplicated; with "
                "horizon=1 every row is its own episode and needs an id of its own",
                field="episode",
                index=offset + i,
            )
        state.seen_ids.add(key)


def iter_transitions(
    table: SourceTable,
    columns: list[Column],
    *,
    chunk_size: int,
    drop_incomplete: bool,
    state: Walk | None = None,
    one_step: bool = False,
) -> Iterator[tuple[dict[Name, np.ndarray], np.ndarray]]:
    """Yield ``(fields, source_rows)`` chunks of finished transitions.

    With ``one_step`` (a log of one decision per row) every row is a whole episode,
    terminated (see :func:`_one_step_ends`).

    Each row needs its successor (episode change, derived next observation) and the row
    after it (whether the successor is dropped), so the last two rows of a chunk wait for
    the next one.
    """
    state = state if state is not None else Walk()
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
            buffer,
            ready,
            offset,
            final=False,
            state=state,
            drop_incomplete=drop_incomplete,
            one_step=one_step,
        )
        carry = {k: v[ready:] for k, v in buffer.items()}
        offset += ready
    if carry is not None:
        n = len(next(iter(carry.values())))
        yield _finish(
            carry,
            n,
            offset,
            final=True,
            state=state,
            drop_incomplete=drop_incomplete,
            one_step=one_step,
        )


def _finish(
    buf: dict[Name, np.ndarray],
    m: int,
    offset: int,
    *,
    final: bool,
    state: Walk,
    drop_incomplete: bool,
    one_step: bool = False,
) -> tuple[dict[Name, np.ndarray], np.ndarray]:
    """Finish rows ``[0, m)`` of ``buf`` (its later rows are only looked at)."""
    n = len(next(iter(buf.values())))
    zeros = np.zeros(n, bool)
    term, trunc, done = (buf.get((f,)) for f in FLAGS)
    if one_step:
        _one_step_ends(buf, m, offset, state)
        term, trunc, done = np.ones(n, bool), zeros, None
    if term is None and done is not None:
        term = done & ~(trunc if trunc is not None else zeros)
    if trunc is None and done is not None and term is not None:
        trunc = done & ~term
    if done is not None and (given := [f for f in (term, trunc) if f is not None]):
        both = given[0] if len(given) == 1 else given[0] | given[1]
        wrong = both != done if len(given) == 2 else both & ~done
        if (i := first_index(wrong[:m])) is not None:
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
    if one_step:
        end = np.ones(n, bool)
    elif ids is not None:
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
        if (i := first_index(inner[:m])) is not None:
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
    next_given = any(k[0] == "next_observation" for k in buf)
    if ids is not None and not next_given and all(buf.get((f,)) is None for f in FLAGS):
        # A log of whole one-row episodes (no flags, no next observations): each row is
        # one decision, its episode's terminal step.
        begin = np.ones(n, bool)
        begin[1:] = end[:-1]
        first = ids[0].item() if hasattr(ids[0], "item") else ids[0]
        begin[0] = state.last_row_id is None or first != state.last_row_id
        term |= begin & end
    if ids is not None and m:
        last = ids[m - 1]
        state.last_row_id = last.item() if hasattr(last, "item") else last
    # An episode that ends in the log without a flag was cut: it is truncated.
    trunc |= end & ~term & ~trunc

    if next_given:
        missing = np.zeros(n, bool)
    else:
        # A terminal step is never bootstrapped: it needs no next observation (it gets a
        # copy of its observation). The other last steps of an episode have none.
        missing = end & ~term
        if not final:
            missing[-1] = False  # not known yet: looked at again with the next chunk
    if (i := first_index(missing[:m])) is not None and not drop_incomplete:
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
            "position",
            "reward",
            "behavior_probs",
        ):
            out[key] = value[:m]
    if not next_given:
        rows = np.nonzero(same[:m])[0]
        filled = np.nonzero((end & term)[:m])[0]
        state.terminal_filled += len(filled)
        for key, value in buf.items():
            if key[0] == "observation":
                nxt = np.zeros_like(value[:m])
                nxt[rows] = value[rows + 1]
                nxt[filled] = value[filled]
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


def first_index(mask: np.ndarray) -> int | None:
    hits = np.nonzero(mask)[0]
    return int(hits[0]) if len(hits) else None
