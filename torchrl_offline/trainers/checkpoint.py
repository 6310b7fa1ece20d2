"""Atomic, safely loaded training checkpoints and random-number-generator states.

A checkpoint is one file written with :func:`torch.save` to a temporary name in the
same directory, flushed to disk and renamed over the target, so a crash while saving
leaves the previous file untouched. Files are read with ``torch.load(weights_only=True)``
(no arbitrary code runs on load); a truncated, corrupt or foreign file raises
:class:`CheckpointError` naming the path.
"""

from __future__ import annotations

import os
import random
import re
import uuid
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch

__all__ = [
    "CheckpointError",
    "checkpoint_path",
    "get_rng_state",
    "latest_checkpoint",
    "list_checkpoints",
    "load_checkpoint",
    "save_checkpoint",
    "set_rng_state",
]

#: Marker stored in every checkpoint written by :func:`save_checkpoint`.
FORMAT = "torchrl_offline.checkpoint/1"
_NAME = re.compile(r"^checkpoint_(\d+)\.pt$")


class CheckpointError(ValueError):
    """A checkpoint that cannot be read or does not fit the run; the message names the file."""


def save_checkpoint(path: str | os.PathLike, state: Mapping[str, Any]) -> Path:
    """Writes ``state`` to ``path`` atomically (temporary file, fsync, rename).

    ``state`` must hold only what ``torch.load(weights_only=True)`` reads back: tensors,
    numbers, strings, ``None`` and (nested) dicts, lists and tuples of them.

    Args:
        path: the destination file; its directory is created if needed.
        state: the mapping to save.

    Returns:
        The path written.

    Examples:
        >>> import tempfile, torch
        >>> from pathlib import Path
        >>> from torchrl_offline.trainers.checkpoint import load_checkpoint, save_checkpoint
        >>> path = Path(tempfile.mkdtemp()) / "ckpt.pt"
        >>> _ = save_checkpoint(path, {"step": 3, "w": torch.ones(2)})
        >>> load_checkpoint(path)["step"]
        3
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex}.tmp")
    try:
        with open(tmp, "wb") as f:
            torch.save({"format": FORMAT, "state": dict(state)}, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()
    try:  # make the rename itself durable
        fd = os.open(path.parent, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
    except OSError:
        pass
    return path


def load_checkpoint(path: str | os.PathLike) -> dict[str, Any]:
    """Reads a checkpoint written by :func:`save_checkpoint` (``weights_only=True``).

    Args:
        path: the checkpoint file.

    Returns:
        The saved mapping.

    Raises:
        CheckpointError: the file is missing, truncated, corrupt, or not a checkpoint of
            this package.
    """
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"Checkpoint {str(path)!r} does not exist")
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # zip/pickle errors differ across torch versions
        raise CheckpointError(
            f"Checkpoint {str(path)!r} is corrupt or truncated and cannot be loaded "
            f"({type(err).__name__}: {str(err).splitlines()[0] if str(err) else ''})"
        ) from err
    if not isinstance(payload, dict) or payload.get("format") != FORMAT:
        raise CheckpointError(
            f"{str(path)!r} is not a torchrl_offline checkpoint (no {FORMAT!r} marker)"
        )
    return payload["state"]


def checkpoint_path(directory: str | os.PathLike, step: int) -> Path:
    """The file name used for the checkpoint of ``step`` in ``directory``."""
    return Path(directory) / f"checkpoint_{int(step):09d}.pt"


def list_checkpoints(directory: str | os.PathLike) -> list[Path]:
    """Checkpoint files of ``directory``, oldest step first (temporary files excluded)."""
    directory = Path(directory)
    if not directory.is_dir():
        return []
    found = [(int(m.group(1)), p) for p in directory.iterdir() if (m := _NAME.match(p.name))]
    return [p for _, p in sorted(found)]


def latest_checkpoint(directory: str | os.PathLike) -> Path | None:
    """The checkpoint of ``directory`` with the highest step, or ``None``.

    Examples:
        >>> import tempfile
        >>> from torchrl_offline.trainers.checkpoint import checkpoint_path, latest_checkpoint
        >>> from torchrl_offline.trainers.checkpoint import save_checkpoint
        >>> d = tempfile.mkdtemp()
        >>> for step in (5, 10):
        ...     _ = save_checkpoint(checkpoint_path(d, step), {"step": step})
        >>> latest_checkpoint(d).name
        'checkpoint_000000010.pt'
    """
    found = list_checkpoints(directory)
    return found[-1] if found else None


def get_rng_state() -> dict[str, Any]:
    """The states of torch's, NumPy's and Python's global generators (weights-only safe)."""
    np_state = np.random.get_state()
    return {
        "torch": torch.get_rng_state(),
        "numpy": {
            "keys": torch.from_numpy(np_state[1].astype(np.int64)),
            "pos": int(np_state[2]),
            "has_gauss": int(np_state[3]),
            "cached_gaussian": float(np_state[4]),
        },
        "python": _python_state_to_list(random.getstate()),
    }


def set_rng_state(state: Mapping[str, Any]) -> None:
    """Restores generator states saved by :func:`get_rng_state`."""
    torch.set_rng_state(state["torch"])
    np_state = state["numpy"]
    np.random.set_state(
        (
            "MT19937",
            np_state["keys"].numpy().astype(np.uint32),
            int(np_state["pos"]),
            int(np_state["has_gauss"]),
            float(np_state["cached_gaussian"]),
        )
    )
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))


def _python_state_to_list(state: tuple) -> list:
    version, internal, gauss = state
    return [version, list(internal), gauss]
