"""Which column of a log holds which transition field.

Logs name their columns in TorchRL's, D4RL's or Minari's spelling, split vectors into
scalar columns (``observation_0``, ``observation_1``, ...), nest them (``infos/...``,
dict observations) or use names of their own given through ``columns=``.
:func:`resolve_columns` maps every source column to the field it holds, or reports the
unknown ones.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from torchrl_offline.data.errors import DatasetError
from torchrl_offline.data.log_sources import (
    Name,
    dotted,
)

__all__ = ["ACCEPTED_NAMES", "FLAGS", "FLOAT_FIELDS", "Column", "resolve_columns"]

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
    "position": ("position", "positions", "slot"),
    "behavior_probs": ("behavior_probs", "behaviour_probs", "logging_probs"),
}
_ALIAS = {alias: field for field, names in ACCEPTED_NAMES.items() for alias in names}
_NESTABLE = ("observation", "next_observation")
FLOAT_FIELDS = (
    "observation",
    "next_observation",
    "reward",
    "action_log_prob",
    "action_prob",
    "behavior_probs",
)
FLAGS = ("terminated", "truncated", "done")
# TorchRL rollout bookkeeping that carries no transition data.
_BOOKKEEPING = {("is_init",), ("step_count",), ("next", "step_count"), ("next", "is_init")}
_GROUP = re.compile(r"(?P<prefix>.+)_(?P<index>\d+)")


# --------------------------------------------------------------------------- columns


@dataclass
class Column:
    """How one stored field is read: one source column, or scalar columns stacked."""

    target: Name  # ("observation",), ("observation", "pos"), ("action",), ...
    sources: tuple[Name, ...]
    stacked: bool


def _canonical(name: str) -> str | None:
    return _ALIAS.get(name.replace("/", "."))


def _accepted_message() -> str:
    return "; ".join(f"{field}: {', '.join(names)}" for field, names in ACCEPTED_NAMES.items())


def resolve_columns(
    names: list[Name],
    columns: Mapping[str, Any] | None,
    ignore: Sequence[str],
) -> tuple[list[Column], list[str]]:
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

    resolved: dict[Name, Column] = {}
    used: set[Name] = set()

    def add(column: Column) -> None:
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
                add(Column(target, (lookup(value, field),), stacked=False))
            else:
                add(Column(target, tuple(lookup(v, field) for v in value), stacked=True))

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
        if len(name) == 1 and name[0] in FLAGS:
            root_flags.append(name)  # decided below: TorchRL's root flags or plain logs
            continue
        target = _target(name)
        if target is not None:
            add(Column(target, (name,), stacked=False))
            continue
        if len(name) == 1 and (m := _GROUP.fullmatch(name[0])):
            canon = _canonical(m["prefix"])
            if canon in ("observation", "next_observation", "action", "behavior_probs"):
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
            add(Column((name[0],), (name,), stacked=False))
    for canon, members in groups.items():
        indices = sorted(members)
        if indices != list(range(len(indices))):
            missing = next(i for i in range(len(indices)) if i not in members)
            raise DatasetError(
                f"Columns {canon}_0, {canon}_1, ...: {canon}_{missing} is missing",
                field=f"{canon}_{missing}",
            )
        add(Column((canon,), tuple(members[i] for i in indices), stacked=True))

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
