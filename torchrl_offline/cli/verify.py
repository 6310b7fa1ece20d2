"""``torchrl-offline verify``: check datasets, cache entries and checkpoints byte by byte."""

from __future__ import annotations

import argparse
import json
import os
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from torchrl_offline.cli.common import CLIError

__all__ = ["Check", "add_parser", "check_path", "run"]

#: Results of a :class:`Check`.
OK, DAMAGED, UNCHECKED, NOT_OURS = "ok", "damaged", "unchecked", "not ours"


@dataclass(frozen=True)
class Check:
    """One thing ``verify`` looked at.

    Attributes:
        kind: ``"dataset"`` (a converted dataset or cache entry), ``"minari dataset"``
            (written by this package), ``"files"`` (another folder with a manifest, e.g. a
            fine-tuning run's online-buffer chunk) or ``"checkpoint"``.
        path: the folder or file.
        result: ``"ok"``, ``"damaged"``, ``"unchecked"`` (written by an older version,
            without a manifest or content hash) or ``"not ours"`` (a ``.pt`` file that is
            not a checkpoint of torchrl_offline).
        detail: what was checked, or what is wrong.
    """

    kind: str
    path: str
    result: str
    detail: str


def add_parser(subparsers: Any) -> argparse.ArgumentParser:
    parser = subparsers.add_parser(
        "verify",
        help="check datasets, caches and checkpoints against their hashes",
        description="Check, byte by byte, what torchrl_offline wrote: a converted dataset "
        "or cache entry, a Minari dataset it wrote, a checkpoint file, a run directory (all "
        "its checkpoints), or any folder holding them (e.g. the whole cache). Exit status 0 "
        "when everything checked is intact, 1 when anything is damaged.",
    )
    parser.add_argument("path", help="file or folder, or the id of a Minari dataset under --root")
    parser.add_argument(
        "--root", help="Minari datasets root (default: $MINARI_DATASETS_PATH or ~/.minari/datasets)"
    )
    parser.add_argument("--json", action="store_true", help="print JSON instead of a table")
    parser.set_defaults(run=run)
    return parser


def _check_folder(folder: Path) -> Check:
    from torchrl_offline.data.errors import DatasetError
    from torchrl_offline.data.storage import COMPLETE_MARKER
    from torchrl_offline.integrity import MANIFEST, verify_manifest

    if (folder / COMPLETE_MARKER).is_file():
        kind = "dataset"
    elif (folder / "data").is_dir():
        kind = "minari dataset"
    else:
        kind = "files"
    if not (folder / MANIFEST).is_file():
        why = "older version" if kind == "dataset" else "not ours, or an older version"
        return Check(kind, str(folder), UNCHECKED, f"no manifest ({why})")
    try:
        verify_manifest(folder, full=True, error=DatasetError)
    except DatasetError as err:
        return Check(kind, str(folder), DAMAGED, str(err))
    files = len(json.loads((folder / MANIFEST).read_text())["files"])
    return Check(kind, str(folder), OK, f"sizes and hashes of {files} files")


def _check_checkpoint(file: Path) -> Check:
    from torchrl_offline.trainers.checkpoint import (
        CheckpointError,
        NotACheckpointError,
        verify_checkpoint,
    )

    try:
        hashed = verify_checkpoint(file)
    except NotACheckpointError as err:
        return Check("file", str(file), NOT_OURS, str(err))
    except CheckpointError as err:
        return Check("checkpoint", str(file), DAMAGED, str(err))
    if not hashed:
        return Check(
            "checkpoint", str(file), UNCHECKED, "readable; no content hash (older version)"
        )
    return Check("checkpoint", str(file), OK, f"size and hash of {file.stat().st_size} bytes")


def check_path(path: str | os.PathLike) -> list[Check]:
    """Check everything this package wrote at or under ``path``, in full.

    Folders with a manifest (datasets, cache entries, Minari datasets written here) and
    ``.pt`` files (checkpoints, whatever their name, or ``path`` itself when it is a
    file; a ``.pt`` file that is not a checkpoint of ours is reported ``"not ours"``) are
    checked; folders holding dataset metadata but no manifest are reported unchecked.
    Hidden entries (temporary builds in progress) are skipped.

    Args:
        path: a file or folder.

    Returns:
        One :class:`Check` per dataset, folder or checkpoint, in path order.

    Examples:
        >>> import tempfile, torch
        >>> from pathlib import Path
        >>> from torchrl_offline.cli.verify import check_path
        >>> from torchrl_offline.trainers.checkpoint import checkpoint_path, save_checkpoint
        >>> run = Path(tempfile.mkdtemp())
        >>> _ = save_checkpoint(checkpoint_path(run / "checkpoints", 10), {"w": torch.ones(3)})
        >>> [(c.kind, c.result) for c in check_path(run)]
        [('checkpoint', 'ok')]
    """
    from torchrl_offline.data.storage import COMPLETE_MARKER
    from torchrl_offline.integrity import MANIFEST

    path = Path(path)
    if path.is_file():
        return [_check_checkpoint(path)]
    checks: list[Check] = []
    for folder, dirs, _ in os.walk(path):
        here = Path(folder)
        markers = (MANIFEST, COMPLETE_MARKER, "data/metadata.json")
        if any((here / name).is_file() for name in markers):
            checks.append(_check_folder(here))
            dirs.clear()
            continue
        dirs[:] = sorted(d for d in dirs if not d.startswith("."))
        files = sorted(f for f in here.glob("*.pt") if f.is_file() and not f.name.startswith("."))
        checks.extend(_check_checkpoint(file) for file in files)
    return checks


def _resolve(text: str, root: str | None) -> Path:
    from torchrl_offline.data.minari_writer import minari_root

    path = Path(text).expanduser()
    if path.exists():
        return path
    if not path.is_absolute() and (minari_root(root) / text).exists():
        return minari_root(root) / text
    raise CLIError(f"{text!r} not found (nor a Minari dataset id under {minari_root(root)})")


def _print_table(checks: list[Check], base: Path) -> None:
    from rich.console import Console
    from rich.table import Table

    styles = {OK: "green", DAMAGED: "bold red", UNCHECKED: "yellow", NOT_OURS: "dim"}
    table = Table(title=f"torchrl-offline verify {base}")
    for column in ("kind", "path", "result", "detail"):
        table.add_column(column, overflow="fold")
    for check in checks:
        shown = os.path.relpath(check.path, base) if base.is_dir() else check.path
        result = f"[{styles[check.result]}]{check.result}[/]"
        detail = check.detail.replace(f"{base}{os.sep}", "") if base.is_dir() else check.detail
        table.add_row(check.kind, shown, result, detail)
    Console(width=max(120, Console().width), soft_wrap=False).print(table)


def run(args: argparse.Namespace) -> int:
    """Check ``args.path`` in full; print a table (or JSON); 1 when anything is damaged."""
    base = _resolve(args.path, args.root)
    checks = check_path(base)
    if not checks:
        raise CLIError(f"nothing written by torchrl_offline at {base} (no dataset or checkpoint)")
    if all(c.result == NOT_OURS for c in checks):
        raise CLIError(f"nothing written by torchrl_offline at {base}: {checks[0].detail}")
    damaged = sum(c.result == DAMAGED for c in checks)
    if args.json:
        print(json.dumps([asdict(c) for c in checks], indent=2))
    else:
        _print_table(checks, base)
        unchecked = sum(c.result == UNCHECKED for c in checks)
        print(f"{len(checks)} checked: {damaged} damaged, {unchecked} without hashes")
    return 1 if damaged else 0
