"""Pass 1 over a log: check every chunk, gather value ranges and counts, fingerprint it.

:func:`scan_log` reads the log once, before anything is written: every chunk is checked
(:mod:`.log_tensors`, :mod:`.log_decisions`), the observation and action columns' value
ranges are gathered (:class:`~torchrl_offline.data.log_spaces._Stats`) so that
:func:`infer_spaces` can give each a space, and the stored content is hashed, so that an
unchanged log converted again reuses its stored copy.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import gymnasium as gym
import numpy as np
import torch

from torchrl_offline.data.log_columns import Column
from torchrl_offline.data.log_decisions import (
    BehaviorProbsReport,
    check_behavior_probs,
    check_positions,
)
from torchrl_offline.data.log_episodes import Walk, first_index, iter_transitions
from torchrl_offline.data.log_sources import Name, dotted
from torchrl_offline.data.log_spaces import _infer_space, _Stats
from torchrl_offline.data.log_tensors import (
    check_decision_fields,
    stacked_sources,
    to_tensordict,
    validate_chunk,
)

__all__ = ["LogScan", "infer_spaces", "scan_log"]


@dataclass
class LogScan:
    """What pass 1 learned about a log.

    Attributes:
        total: transitions to store.
        terminal: transitions that end an episode by termination.
        stats: value ranges of each observation / action column.
        first_negative: the first row with a negative value, for integer columns that
            have one (they cannot be discrete spaces).
        walk: the episode walk's counts (dropped transitions, filled next observations,
            episodes started).
        probs: the ``behavior_probs`` column's report (width, rows that do not sum to 1).
        hasher: the SHA-256 of the stored content so far.
    """

    total: int = 0
    terminal: int = 0
    stats: dict[Name, _Stats] = field(default_factory=dict)
    first_negative: dict[Name, int] = field(default_factory=dict)
    walk: Walk = field(default_factory=Walk)
    probs: BehaviorProbsReport = field(default_factory=BehaviorProbsReport)
    hasher: Any = field(default_factory=hashlib.sha256)

    def _gather(self, fields: dict[Name, np.ndarray], rows: np.ndarray, names: Mapping) -> None:
        """Counts and value ranges of one checked chunk."""
        self.terminal += int(fields[("terminated",)].sum())
        for target, value in fields.items():
            if target[0] not in ("observation", "action"):
                continue
            if value.dtype.kind == "b":
                value = value.astype(np.int64)
            if target not in self.stats:
                self.stats[target] = _Stats.of(value)
            else:
                self.stats[target].update(
                    value, names.get(dotted(target), dotted(target)), int(rows[0])
                )
            if value.dtype.kind in "iu" and target not in self.first_negative:
                bad = (value < 0).reshape(len(value), -1).any(-1)
                if (i := first_index(bad)) is not None:
                    self.first_negative[target] = int(rows[i])
        self.total += len(rows)


def scan_log(
    table: Any,
    columns: list[Column],
    *,
    names: Mapping[str, str],
    spaces: dict[Name, gym.Space],
    action_space: gym.Space | None,
    dtype: torch.dtype,
    chunk_size: int,
    drop_incomplete: bool,
    one_step: bool,
    num_positions: int | None,
) -> LogScan:
    """Reads ``table`` once, checking every chunk, and returns what it learned.

    Args:
        table: the opened source (:func:`~torchrl_offline.data.log_sources.open_source`).
        columns: the resolved columns (:func:`~torchrl_offline.data.log_columns.resolve_columns`).
        names: stored key -> source column, for error messages.
        spaces: the observation / action spaces the caller gave, by target.
        action_space: the action space the caller gave, or ``None``.
        dtype: the floating dtype of the stored data.
        chunk_size, drop_incomplete, one_step: as in
            :func:`~torchrl_offline.data.log_episodes.iter_transitions`.
        num_positions: the number of slots of the ``position`` column, or ``None``.

    Raises:
        DatasetError: the first bad value, naming its column and row.
    """
    scan = LogScan()
    stacked = stacked_sources(columns)
    for fields, rows in iter_transitions(
        table,
        columns,
        chunk_size=chunk_size,
        drop_incomplete=drop_incomplete,
        state=scan.walk,
        one_step=one_step,
    ):
        if not len(rows):
            continue
        check_behavior_probs(fields, rows, names, scan.probs)
        check_positions(fields, rows, names, num_positions)
        check_decision_fields(fields, rows, names, action_space)
        td = to_tensordict(fields, rows, spaces=spaces, float_dtype=dtype, names=names)
        validate_chunk(td, rows, action_space, names, stacked)
        scan._gather(fields, rows, names)
        for key in sorted(td.keys(True, True), key=str):
            scan.hasher.update(str(key).encode())
            scan.hasher.update(td.get(key).contiguous().numpy().tobytes())
    return scan


def infer_spaces(
    scan: LogScan,
    given: Mapping[Name, gym.Space],
    *,
    names: Mapping[str, str],
    float_np: np.dtype,
) -> dict[Name, gym.Space]:
    """The space of every observation / action column: the given one, or one inferred from
    the scanned values (:func:`~torchrl_offline.data.log_spaces._infer_space`)."""
    spaces: dict[Name, gym.Space] = {}
    for target, stat in scan.stats.items():
        if target in given:
            spaces[target] = given[target]
        else:
            spaces[target] = _infer_space(
                stat,
                action=target[0] == "action",
                float_np=float_np,
                field=names.get(dotted(target), dotted(target)),
                first_negative=scan.first_negative.get(target),
            )
    return spaces
