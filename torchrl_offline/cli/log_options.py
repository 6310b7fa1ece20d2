"""Users' logs on the command line: ``--columns``, ``--ignore``, ``--env-id``, and the notes
every command prints about a log's conversion.

Every subcommand that opens a dataset takes the options of :func:`add_log_options`, the
command-line form of :func:`~torchrl_offline.data.from_logged`'s ``columns=``,
``ignore=`` and ``env_id=``. A log is read with ``drop_incomplete=True``: a terminal last
step of an episode is kept without a next observation (it is never bootstrapped), a
truncated one without a next observation is dropped, and the command says so on stderr
(:func:`dataset_notes`). The conversion is cached under the content hash of what was read
(the log's data and these options), so a changed log is converted again and an unchanged
one is reused, never a stale one. ``info LOG --save ID`` writes the log as a Minari
dataset that keeps the env id; it records the log's size, modification time and hash,
and opening the dataset after the log's bytes changed prints a warning.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path
from typing import Any

from torchrl_offline.cli.common import CLIError, Rewording, UsageError

__all__ = [
    "LOG_FIELDS",
    "add_log_options",
    "cli_wording",
    "dataset_notes",
    "log_keywords",
    "open_log",
    "parse_columns",
    "parse_ignore",
    "print_dataset_notes",
    "set_env_id",
]

#: The fields ``--columns`` maps (``from_logged``'s ``ACCEPTED_NAMES``; listed here so that
#: building the parser imports nothing heavy).
LOG_FIELDS = (
    "observation",
    "next_observation",
    "action",
    "reward",
    "terminated",
    "truncated",
    "done",
    "episode",
    "action_log_prob",
    "action_prob",
    "position",
    "behavior_probs",
)


def add_log_options(parser: argparse.ArgumentParser) -> None:
    """Adds ``--columns FIELD=COL``, ``--ignore COL``, ``--env-id ENV`` and ``--horizon 1``
    (a group of their own in ``--help``)."""
    group = parser.add_argument_group(
        "log files (CSV, Parquet, HDF5)",
        "how to read a log given as the dataset; the conversion is cached and reused while "
        "the log and these options stay the same",
    )
    group.add_argument(
        "--columns",
        action="append",
        default=[],
        metavar="FIELD=COL",
        help="the log's column holding FIELD (repeatable); FIELD=C1,C2,... stacks scalar "
        "columns into a vector, observation.NAME=COL makes a nested observation entry; "
        f"fields: {', '.join(LOG_FIELDS)}",
    )
    group.add_argument(
        "--ignore",
        action="append",
        default=[],
        metavar="COL",
        help="a column of the log to skip (repeatable, or comma-separated)",
    )
    group.add_argument(
        "--env-id",
        metavar="ENV",
        help="gymnasium id of the env that generated the log: stored with the dataset (its "
        "action space is used), so later commands evaluate and fine-tune in it by default",
    )
    group.add_argument(
        "--horizon",
        type=int,
        choices=[1],
        default=None,
        help="1: a log of decisions, one per row (context, action, propensity, outcome): "
        "every row is a whole, terminated episode and needs no next observation",
    )
    group.add_argument(
        "--num-positions",
        type=int,
        default=None,
        metavar="K",
        help="the number of positions (slots) of the log's position column: a position "
        "outside 0 .. K-1 is an error naming the row",
    )


def _names(text: str) -> list[str]:
    return [name.strip() for name in text.split(",") if name.strip()]


def parse_columns(items: list[str]) -> dict[str, Any]:
    """``--columns`` values -> ``from_logged``'s ``columns=`` mapping.

    Raises:
        UsageError: an item that is not ``FIELD=COL[,COL...]``, or a field given twice.

    Examples:
        >>> from torchrl_offline.cli.log_options import parse_columns
        >>> parse_columns(["observation=x,y", "action=a", "next.reward=r"])
        {'observation': ['x', 'y'], 'action': 'a', 'next.reward': 'r'}
        >>> parse_columns(["observation.pos=p", "observation.vel=v1,v2"])
        {'observation': {'pos': 'p', 'vel': ['v1', 'v2']}}
    """
    from torchrl_offline.data.log_columns import ACCEPTED_NAMES

    nestable = {*ACCEPTED_NAMES["observation"], *ACCEPTED_NAMES["next_observation"]}
    known = {alias for names in ACCEPTED_NAMES.values() for alias in names}
    out: dict[str, Any] = {}
    for item in items:
        field, sep, value = item.partition("=")
        field, names = field.strip(), _names(value)
        if not sep or not field or not names:
            raise UsageError(f"--columns expects FIELD=COL or FIELD=COL1,COL2,..., got {item!r}")
        column = names[0] if len(names) == 1 else names
        head, dot, sub = field.partition(".")
        if field not in known and dot and head in nestable and sub:
            entries = out.setdefault(head, {})
            if not isinstance(entries, dict) or sub in entries:
                raise UsageError(f"--columns: {field} is given twice")
            entries[sub] = column
            continue
        if field in out:
            raise UsageError(
                f"--columns: {field} is given twice; give several columns of one field as "
                f"{field}=COL1,COL2,..."
            )
        out[field] = column
    return out


def parse_ignore(items: list[str]) -> list[str]:
    """``--ignore`` values (repeated or comma-separated) -> column names.

    Examples:
        >>> from torchrl_offline.cli.log_options import parse_ignore
        >>> parse_ignore(["time", "note,run_id"])
        ['time', 'note', 'run_id']
    """
    return [name for item in items for name in _names(item)]


def log_keywords(args: argparse.Namespace) -> dict[str, Any]:
    """The ``columns``, ``ignore``, ``env_id``, ``horizon`` and ``num_positions`` keywords of
    :func:`~torchrl_offline.cli.common.open_dataset` from a command's arguments."""
    num_positions = getattr(args, "num_positions", None)
    if num_positions is not None and num_positions < 1:
        raise UsageError(f"--num-positions must be a positive integer, got {num_positions}")
    return {
        "columns": parse_columns(getattr(args, "columns", None) or []) or None,
        "ignore": parse_ignore(getattr(args, "ignore", None) or []),
        "env_id": getattr(args, "env_id", None),
        "horizon": getattr(args, "horizon", None),
        "num_positions": getattr(args, "num_positions", None),
    }


#: ``from_logged``'s keyword spellings in its messages -> the command line's (the specific
#: phrases first, then any ``columns=`` / ``ignore=``).
_WORDING = Rewording(
    (r"columns=\{'(\w+)': \.\.\.\}", r"--columns \1=COL"),
    (
        r"\(see ignore=\) or map it with columns=",
        "(see --ignore COL) or map it with --columns FIELD=COL",
    ),
    (
        r"with columns= or skip them with ignore=",
        "with --columns FIELD=COL or skip them with --ignore COL",
    ),
    (
        r"only observations take a mapping in columns=",
        "only observations take nested entries (--columns observation.NAME=COL)",
    ),
    (r"num_positions=(\d+)", r"--num-positions \1"),
    (r"\b(columns|ignore)=", r"--\1"),
    (
        r"pass overwrite=True to replace it|replace it with overwrite=True \(on the "
        r"command line: \w+ --overwrite\)",
        "replace it with --overwrite",
    ),
)


def cli_wording(message: str) -> str:
    """A :func:`~torchrl_offline.data.from_logged` error message with the command line's
    option names instead of the keyword arguments.

    Examples:
        >>> from torchrl_offline.cli.log_options import cli_wording
        >>> cli_wording("Unknown column 'x'; map other names with columns= or skip them with ignore=")
        "Unknown column 'x'; map other names with --columns FIELD=COL or skip them with --ignore COL"
    """
    return _WORDING(message)


def open_log(
    path: Path,
    *,
    batch_size: int | None,
    columns: dict[str, Any] | None = None,
    ignore: list[str] | tuple[str, ...] = (),
    env_id: str | None = None,
    save: str | None = None,
    root: str | os.PathLike | None = None,
    overwrite: bool = False,
    horizon: int | None = None,
    num_positions: int | None = None,
) -> Any:
    """A log file as an offline replay buffer, read as the command line reads logs.

    Args:
        path: the log (Parquet, CSV, HDF5).
        batch_size: the buffer's sample size.
        columns, ignore, env_id: as :func:`~torchrl_offline.data.from_logged`'s.
        save: also write the log as the Minari dataset with this id (under ``root``).
        root: the Minari datasets root.
        overwrite: replace a Minari dataset ``save`` that holds other data.
        horizon: ``1`` for a log of one-step decisions (``--horizon 1``).
        num_positions: the positions' range (``--num-positions K``).

    Raises:
        DatasetError: invalid data, or options that do not fit the log; the message
            names the command-line options (``--columns FIELD=COL``, ``--ignore COL``).
        FileExistsError: ``save`` holds other data and ``overwrite`` is False.
    """
    from torchrl_offline.data import DatasetError, from_logged

    try:
        return from_logged(
            path,
            columns=columns,
            ignore=list(ignore),
            env_id=env_id,
            drop_incomplete=True,
            batch_size=batch_size,
            minari_id=save,
            minari_root=root,
            overwrite=overwrite,
            horizon=horizon,
            num_positions=num_positions,
        )
    except DatasetError as err:
        if err.field == "dataset_id":  # --save ID that is not an id
            raise UsageError(f"--save: {err}") from None
        raise type(err)(
            cli_wording(str(err)), field=err.field, index=err.index, source=err.source
        ) from None
    except FileExistsError as err:
        raise CLIError(cli_wording(str(err))) from None


def set_env_id(buffer: Any, env_id: str, dataset: str) -> None:
    """``--env-id`` for a dataset that is not a log: it names the env of a dataset that
    records none (in this run only); a dataset that records another env is refused.

    Raises:
        CLIError: gymnasium does not know ``env_id``, or the dataset records another env.
    """
    import json

    import gymnasium as gym

    from torchrl_offline.cli.envs import dataset_env_id

    recorded = dataset_env_id(buffer)
    if recorded == env_id:
        return
    if recorded is not None:
        raise CLIError(f"--env-id {env_id}: the dataset {dataset!r} records the env {recorded}")
    try:
        gym.spec(env_id)
    except gym.error.Error as err:
        raise CLIError(f"--env-id: unknown environment {env_id!r}: {err}") from None
    buffer.metadata["env_spec"] = json.dumps({"id": env_id})


def _dropped(meta: dict[str, Any], dataset: str) -> str | None:
    dropped = int(meta.get("dropped_transitions") or 0)
    if not dropped:
        return None
    kept = int(meta.get("terminal_next_observations_filled") or 0)
    s = "" if dropped == 1 else "s"
    return (
        f"{dataset}: {dropped} transition{s} dropped: the last step{s} of {dropped} truncated "
        f"episode{s}, whose next observation the log does not hold (it has no "
        f"next-observation column); {kept} terminal last step{'' if kept == 1 else 's'} "
        "kept (a terminal step needs none)"
    )


def _stale(record: dict[str, Any], dataset: str) -> str | None:
    path = record.get("path")
    if not path or not os.path.isfile(path):
        return None
    stat = os.stat(path)
    if (stat.st_size, stat.st_mtime_ns) == (record.get("size"), record.get("mtime_ns")):
        return None
    if stat.st_size == record.get("size"):
        from torchrl_offline.integrity import file_digest

        if file_digest(path) == record.get("hash"):
            return None  # touched, or copied back: the same bytes
    change = (
        f"its size went from {record.get('size')} to {stat.st_size} bytes"
        if stat.st_size != record.get("size")
        else "it was modified"
    )
    return (
        f"{dataset} was written from the log {path}, which has changed since ({change}): "
        f"it holds the log as it was; write it again with `torchrl-offline info {path} "
        f"--save {dataset} --overwrite` (and the same --columns/--ignore/--env-id), or name "
        "the log itself"
    )


def dataset_notes(buffer: Any, dataset: str) -> list[tuple[str, str]]:
    """What a command says about the dataset it opened, as ``(kind, text)`` pairs: a
    ``"note"`` on the transitions of a log that were dropped (count and reason) and, for a
    Minari dataset written from a log, a ``"warning"`` that the log changed since.

    Examples:
        >>> from types import SimpleNamespace
        >>> from torchrl_offline.cli.log_options import dataset_notes
        >>> log = SimpleNamespace(metadata={"dropped_transitions": 2,
        ...                                 "terminal_next_observations_filled": 5})
        >>> [(kind, text)] = dataset_notes(log, "log.csv")
        >>> print(kind, text)  # doctest: +NORMALIZE_WHITESPACE
        note log.csv: 2 transitions dropped: the last steps of 2 truncated episodes, whose
        next observation the log does not hold (it has no next-observation column); 5
        terminal last steps kept (a terminal step needs none)
    """
    meta = dict(getattr(buffer, "metadata", None) or {})
    record = meta.get("source_log") if isinstance(meta.get("source_log"), dict) else None
    if record is None:
        notes = [("note", _dropped(meta, dataset))]
    else:
        log = f" (written from the log {record['path']})" if record.get("path") else ""
        notes = [("note", _dropped(record, f"{dataset}{log}"))]
    if record is not None:
        notes.append(("warning", _stale(record, dataset)))
    return [(kind, text) for kind, text in notes if text]


def print_dataset_notes(buffer: Any, dataset: str) -> None:
    """Prints :func:`dataset_notes` on stderr, one ``note:`` / ``warning:`` line each."""
    for kind, text in dataset_notes(buffer, dataset):
        print(f"{kind}: {text}", file=sys.stderr)
