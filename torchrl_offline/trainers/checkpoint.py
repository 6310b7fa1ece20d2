"""Atomic, verified, safely loaded training checkpoints and random-number-generator states.

A checkpoint is one file written with :func:`torch.save` to a temporary name in the
same directory, flushed to disk and renamed over the target, so a crash while saving
leaves the previous file untouched. The state is serialized first, and the file holds
those bytes with their size and content hash (BLAKE2b, :mod:`torchrl_offline.integrity`):
every load checks both before reading the state, so a truncated or bit-flipped file never
loads (torch itself does not check its zip records' checksums). Read a checkpoint with
:func:`load_checkpoint`: ``torch.load`` alone returns that envelope (``format``, ``size``,
``hash``, ``payload``, ``read_with``), not the state. Both layers are read with
``torch.load(weights_only=True)`` (no arbitrary code runs on load); a truncated or
corrupt file raises :class:`CheckpointError` naming the path and, when there is one, the
previous good checkpoint of the same directory (a run resumes from it with
``resume=PATH``, ``--resume PATH``); a file that is not a checkpoint of ours raises
:class:`NotACheckpointError`. Checkpoints written before the hash existed (format ``/1``)
still load, unchecked, with a logged note.

TorchRL 0.14 ships :mod:`torchrl.checkpoint`. Its :class:`~torchrl.checkpoint.GlobalRNGState`
is what :func:`get_rng_state` and :func:`set_rng_state` use: it captures Python's,
NumPy's and torch's CPU generators and those of the accelerators in use (CUDA, XPU,
MPS), in a state that ``torch.load(weights_only=True)`` reads back. Its
:class:`~torchrl.checkpoint.Checkpoint` container and
:class:`~torchrl.checkpoint.CheckpointRotation` are not used, because they would drop
guarantees these checkpoints give (their payloads are weights-only safe; that is not
the reason):

* integrity: ``Checkpoint.load`` checks the manifest and its file list, not the payload
  bytes, so a truncated or bit-flipped tensor payload loads wrong values or fails deep
  in tensordict; here every load checks the size and hash first and names the previous
  good checkpoint;
* durability: ``Checkpoint.save`` neither fsyncs the payloads and manifest before
  publishing the staged directory nor the parent directory after the rename, so a
  power loss can leave a published but empty checkpoint; here both are fsynced;
* one file, our names: a ``Checkpoint`` is a directory of component payloads (or a zip
  archive) and ``CheckpointRotation`` recognises only its own
  ``checkpoint-<12-digit step>`` manifests, so it could neither find nor prune the
  ``checkpoint_<step>.pt`` files of existing runs, which ``--resume PATH``, the
  setting aside of newer checkpoints and ``torchrl-offline verify`` read;
* a damaged newest checkpoint: ``CheckpointRotation.latest()`` skips one whose manifest
  does not read and silently returns an older one; a resume here stops, names the
  damaged file and the previous good one, and continues from that one only when asked
  (``--resume PATH``).

Rotation here is :class:`~torchrl_offline.trainers.hooks.CheckpointHook` deleting all
but the newest ``keep`` checkpoints after a new one is safely on disk, as
``CheckpointRotation.prune`` does after its save.
"""

from __future__ import annotations

import io
import logging
import os
import random
import re
import uuid
import zipfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch

from torchrl_offline.integrity import content_digest
from torchrl_offline.leftovers import OWNER, owner_tag, remove_stale

__all__ = [
    "CheckpointError",
    "NotACheckpointError",
    "checkpoint_path",
    "checkpoint_step",
    "get_rng_state",
    "latest_checkpoint",
    "list_checkpoints",
    "load_checkpoint",
    "save_checkpoint",
    "set_rng_state",
    "verify_checkpoint",
]

logger = logging.getLogger("torchrl_offline")

#: Marker stored in every checkpoint written by :func:`save_checkpoint`.
FORMAT = "torchrl_offline.checkpoint/2"
#: Checkpoints without a content hash (still loadable).
_UNHASHED_FORMAT = "torchrl_offline.checkpoint/1"
_NAME = re.compile(r"^checkpoint_(\d+)\.pt$")
#: Temporary files of :func:`save_checkpoint`: ``.<name>.<owner>-<random>.tmp``.
_TMP = re.compile(rf"\..+\.{OWNER}-[0-9a-f]{{32}}\.tmp")


class CheckpointError(ValueError):
    """A checkpoint that cannot be read or does not fit the run; the message names the file."""


class NotACheckpointError(CheckpointError):
    """A file that is not a checkpoint of torchrl_offline at all (rather than a damaged one)."""


#: How to read a checkpoint, stored in its envelope for whoever opens it with torch.load.
READ_WITH = "torchrl_offline.trainers.checkpoint.load_checkpoint(path)"
_ZIP_MAGIC = b"PK\x03\x04"
_ZIP_SIGNATURES = (_ZIP_MAGIC, b"PK\x01\x02", b"PK\x05\x06")  # record, directory, end


def save_checkpoint(path: str | os.PathLike, state: Mapping[str, Any]) -> Path:
    """Writes ``state`` to ``path`` atomically (temporary file, fsync, rename), with its
    size and content hash.

    ``state`` must hold only what ``torch.load(weights_only=True)`` reads back: tensors,
    numbers, strings, ``None`` and (nested) dicts, lists and tuples of them. Temporary
    files left in the directory by processes that no longer run are removed first.

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
    remove_stale(path.parent, _TMP)
    buffer = io.BytesIO()
    torch.save(dict(state), buffer)
    payload = buffer.getbuffer()
    record = {
        "format": FORMAT,
        "size": len(payload),
        "hash": content_digest(payload),
        "payload": torch.frombuffer(payload, dtype=torch.uint8),
        "read_with": READ_WITH,
    }
    tmp = path.with_name(f".{path.name}.{owner_tag()}-{uuid.uuid4().hex}.tmp")
    try:
        with open(tmp, "wb") as f:
            torch.save(record, f)
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
    """Reads a checkpoint written by :func:`save_checkpoint` (``weights_only=True``),
    after checking its size and content hash.

    Args:
        path: the checkpoint file.

    Returns:
        The saved mapping.

    Raises:
        CheckpointError: the file is missing, truncated, corrupt (its bytes do not match
            the recorded hash), or not a checkpoint of this package. For a file that
            exists, the message also names the newest older checkpoint of the same
            directory that passes the same checks, if any.
    """
    path = Path(path)
    try:
        return _read(path)[0]
    except CheckpointError as err:
        if not path.is_file() or (good := _previous_good(path)) is None:
            raise
        raise CheckpointError(
            f"{err}; a run continues from an older checkpoint with --resume CHECKPOINT "
            "(resume=CHECKPOINT in Python; the newer ones are then set aside); the previous "
            f"good checkpoint of this directory is {str(good)!r}"
        ) from err


def verify_checkpoint(path: str | os.PathLike) -> bool:
    """Checks a checkpoint in full, as :func:`load_checkpoint` does, without keeping it.

    Args:
        path: the checkpoint file.

    Returns:
        ``True`` when its content hash was checked, ``False`` for a readable checkpoint
        written before checkpoints carried one.

    Raises:
        CheckpointError: as :func:`load_checkpoint` (without the previous good file).
    """
    return _read(Path(path))[1]


def _corrupt(path: Path, reason: str) -> CheckpointError:
    return CheckpointError(
        f"Checkpoint {str(path)!r} is corrupt or truncated and cannot be loaded ({reason})"
    )


def _not_ours(path: Path, why: str) -> NotACheckpointError:
    return NotACheckpointError(f"{str(path)!r} is not a checkpoint of torchrl_offline ({why})")


def _written_by_torch_save(path: Path) -> bool:
    """Whether ``path`` looks like a file of ``torch.save`` (a zip archive holding a
    ``data.pkl`` record), or one cut short or damaged; ``False`` for any other file. A
    checkpoint holds a dozen zip record signatures (its envelope's and its state's), so
    one with any left is taken for a damaged checkpoint."""
    data = path.read_bytes()
    if len(data) >= len(_ZIP_MAGIC) and not any(sig in data for sig in _ZIP_SIGNATURES):
        return False
    try:
        with zipfile.ZipFile(path) as archive:
            return any(name.endswith("/data.pkl") for name in archive.namelist())
    except (zipfile.BadZipFile, OSError):  # truncated: its central directory is gone
        return True


def _torch_load(source: Any, path: Path) -> Any:
    try:
        return torch.load(source, map_location="cpu", weights_only=True)
    except Exception as err:  # zip/pickle errors differ across torch versions
        if isinstance(source, Path) and not _written_by_torch_save(source):
            raise _not_ours(path, "not a file written by torch.save") from err
        first = str(err).splitlines()[0] if str(err) else ""
        raise _corrupt(path, f"{type(err).__name__}: {first}") from err


def _read(path: Path) -> tuple[dict[str, Any], bool]:
    """The state of checkpoint ``path`` and whether its content hash was checked."""
    if not path.is_file():
        raise CheckpointError(f"Checkpoint {str(path)!r} does not exist")
    record = _torch_load(path, path)
    kind = record.get("format") if isinstance(record, dict) else None
    if kind == _UNHASHED_FORMAT and isinstance(record.get("state"), dict):
        logger.info(
            "Checkpoint %s predates checkpoint content hashes: loaded without that check", path
        )
        return record["state"], False
    if kind != FORMAT:
        raise _not_ours(path, f"a torch file without the {FORMAT!r} marker")
    payload, size, digest = record.get("payload"), record.get("size"), record.get("hash")
    if not (
        isinstance(payload, torch.Tensor)
        and payload.dtype == torch.uint8
        and payload.ndim == 1
        and isinstance(size, int)
        and isinstance(digest, str)
    ):
        raise _corrupt(path, "its size and hash record is damaged")
    data = payload.numpy()
    if data.size != size:
        raise _corrupt(path, f"state of {data.size} bytes, the checkpoint records {size}")
    if (actual := content_digest(memoryview(data))) != digest:
        raise _corrupt(
            path, f"content hash {actual[:16]}..., the checkpoint records {digest[:16]}..."
        )
    state = _torch_load(io.BytesIO(data.tobytes()), path)
    if not isinstance(state, dict):
        raise _corrupt(path, f"the state is a {type(state).__name__}, not a dict")
    return state, True


def _previous_good(path: Path) -> Path | None:
    """The newest checkpoint of ``path``'s directory older than ``path`` that verifies."""
    match = _NAME.match(path.name)
    step = int(match.group(1)) if match else None
    for other in reversed(list_checkpoints(path.parent)):
        other_step = int(_NAME.match(other.name).group(1))
        if other.name == path.name or (step is not None and other_step >= step):
            continue
        try:
            _read(other)
        except CheckpointError:
            continue
        return other
    return None


def checkpoint_step(path: str | os.PathLike) -> int:
    """The step of a checkpoint file named by :func:`checkpoint_path`.

    Examples:
        >>> from torchrl_offline.trainers.checkpoint import checkpoint_step
        >>> checkpoint_step("runs/a/checkpoints/checkpoint_000002000.pt")
        2000
    """
    match = _NAME.match(Path(path).name)
    if match is None:
        raise CheckpointError(f"{str(path)!r} is not named like a checkpoint (checkpoint_N.pt)")
    return int(match.group(1))


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
    """The states of the global random generators: Python's, NumPy's, torch's CPU one and
    the accelerators' in use (TorchRL's :class:`~torchrl.checkpoint.GlobalRNGState`),
    weights-only safe.

    Examples:
        >>> import torch
        >>> from torchrl_offline.trainers.checkpoint import get_rng_state, set_rng_state
        >>> state = get_rng_state()
        >>> first = torch.rand(2)
        >>> set_rng_state(state)
        >>> bool((torch.rand(2) == first).all())
        True
    """
    from torchrl.checkpoint import GlobalRNGState

    return GlobalRNGState().state_dict()


#: The entries of :func:`get_rng_state` that every process can restore.
_HOST_GENERATORS = ("python", "numpy", "torch_cpu")


def set_rng_state(state: Mapping[str, Any]) -> None:
    """Restores generator states saved by :func:`get_rng_state` (or by the versions
    before it used TorchRL's, ``{"torch", "numpy", "python"}``). The state of an
    accelerator this process does not have (a GPU run resumed on a CPU) is left out,
    with a logged warning: the run continues, not bitwise as it would have."""
    if "torch_cpu" not in state:
        _set_legacy_rng_state(state)
        return
    from torchrl.checkpoint import GlobalRNGState

    try:
        GlobalRNGState().load_state_dict(state)
    except (RuntimeError, ValueError, IndexError) as err:
        GlobalRNGState().load_state_dict({k: state[k] for k in _HOST_GENERATORS})
        logger.warning(
            "The accelerators' random generators of the checkpoint were not restored (%s): "
            "the run continues, not exactly as it would have",
            err,
        )


def _set_legacy_rng_state(state: Mapping[str, Any]) -> None:
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
