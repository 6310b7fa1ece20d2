"""Run directories are owned: one run per directory, one process per run.

:func:`claim_run_directory` is what :func:`~torchrl_offline.trainers.offline.train` and
:func:`~torchrl_offline.trainers.finetune.finetune` call before writing anything into
their ``out_dir``:

* a lock file (``run.lock``) keeps a second process out while the first runs. The lock
  is an OS file lock (``flock``), which the kernel releases when its process dies, even
  by ``kill -9``; the file records the holder's pid, host and start time for the error
  message. A lock left behind by a dead process is taken over with a logged note (where
  the file system has no ``flock``, the recorded pid and host decide: a lock of this
  host whose pid is not running is stale);
* a directory that already holds a run (a ``run.json`` marker, checkpoints or a
  ``summary.json`` of ours) is refused unless the caller resumes it or asks to
  overwrite it;
* ``overwrite`` replaces only what is recognisably a run of ours (marker or
  checkpoints): it removes ``checkpoints/``, ``logs/``, ``summary.json`` and
  ``run.json`` and leaves any other file alone; a directory that is not a run is never
  emptied;
* ``resume`` with nothing to resume is an error, not a silent fresh start.
"""

from __future__ import annotations

import contextlib
import datetime
import errno
import json
import logging
import os
import shutil
import socket
import uuid
from pathlib import Path
from types import TracebackType
from typing import Any

from torchrl_offline.trainers.checkpoint import latest_checkpoint

try:  # POSIX; elsewhere the pid/host record alone decides
    import fcntl
except ImportError:  # pragma: no cover - Windows
    fcntl = None  # type: ignore[assignment]

__all__ = ["RunDirectoryError", "RunLock", "claim_run_directory", "describe_run", "holds_run"]

logger = logging.getLogger("torchrl_offline")

#: Marker written into every run directory by :func:`claim_run_directory`.
RUN_MARKER = "run.json"
#: The lock file of a run directory (present while a process runs there).
LOCK_FILE = "run.lock"
#: Entries of a run directory that belong to the run (what ``overwrite`` removes).
RUN_ENTRIES = ("checkpoints", "logs", "summary.json", RUN_MARKER)
_FORMAT = "torchrl_offline.run/1"


class RunDirectoryError(ValueError):
    """A run directory that cannot be used as asked; the message names it and says why."""


def _marker(directory: Path) -> dict[str, Any] | None:
    try:
        meta = json.loads((directory / RUN_MARKER).read_text())
    except (OSError, ValueError):
        return None
    return meta if isinstance(meta, dict) and meta.get("format") == _FORMAT else None


def _summary(directory: Path) -> dict[str, Any] | None:
    try:
        meta = json.loads((directory / "summary.json").read_text())
    except (OSError, ValueError):
        return None
    return meta if isinstance(meta, dict) and {"algorithm", "step"} <= set(meta) else None


def holds_run(directory: str | os.PathLike) -> bool:
    """Whether ``directory`` holds a run of ours: a ``run.json`` marker, checkpoints in
    ``checkpoints/`` or a ``summary.json`` written by ``torchrl-offline train``."""
    directory = Path(directory)
    return (
        _marker(directory) is not None
        or latest_checkpoint(directory / "checkpoints") is not None
        or _summary(directory) is not None
    )


def describe_run(directory: str | os.PathLike) -> str:
    """A few words on the run in ``directory``, e.g. ``"a cql train run (newest checkpoint
    step 2000)"``, for error messages."""
    directory = Path(directory)
    meta = _marker(directory) or _summary(directory) or {}
    kind = meta.get("kind", "")
    name = str(meta.get("algorithm", ""))
    article = "an" if name[:1] in tuple("aeiou") else "a"
    what = f"{article} {name} {kind} run" if name else "a run"
    newest = latest_checkpoint(directory / "checkpoints")
    if newest is None:
        return f"{' '.join(what.split())} (no checkpoint yet)"
    step = int(newest.stem.split("_")[-1])
    return f"{' '.join(what.split())} (newest checkpoint: step {step})"


class RunLock:
    """The claim on a run directory returned by :func:`claim_run_directory`.

    Use it as a context manager, or call :meth:`release` when the run ends; releasing
    removes ``run.lock``. A process killed while holding it leaves the file behind, and
    the next claim takes it over.

    Attributes:
        directory: the run directory.
    """

    def __init__(self, directory: Path, fd: int, path: Path) -> None:
        self.directory = directory
        self._fd: int | None = fd
        self._path = path

    def release(self) -> None:
        """Releases the lock (idempotent)."""
        if self._fd is None:
            return
        try:
            self._path.unlink(missing_ok=True)  # unlinked while still held: no race
        finally:
            os.close(self._fd)  # closing drops the flock
            self._fd = None

    def __enter__(self) -> RunLock:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.release()

    def __del__(self) -> None:  # a forgotten claim still ends with the process
        if getattr(self, "_fd", None) is not None:
            with contextlib.suppress(OSError):
                os.close(self._fd)


def _pid_running(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's live process
        return True
    return True


def _holder(path: Path) -> dict[str, Any]:
    try:
        record = json.loads(path.read_text() or "{}")
    except (OSError, ValueError):
        return {}
    return record if isinstance(record, dict) else {}


def _in_use(directory: Path, holder: dict[str, Any]) -> RunDirectoryError:
    who = f"pid {holder.get('pid', '?')} on {holder.get('host', '?')}"
    since = f", since {holder['started']}" if holder.get("started") else ""
    return RunDirectoryError(
        f"the run directory {str(directory)!r} is in use by another process ({who}{since}); "
        "wait for it to finish or choose another output directory"
    )


def _lock(directory: Path) -> RunLock:
    """Takes ``directory/run.lock`` or raises :class:`RunDirectoryError` naming its holder."""
    path = directory / LOCK_FILE
    for _ in range(100):  # retried only when the file was replaced while we waited
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            locked = _flock(fd)
            if locked is False:
                raise _in_use(directory, _holder(path))
            try:
                same_file = os.fstat(fd).st_ino == os.stat(path).st_ino
            except FileNotFoundError:  # released (unlinked) by its holder meanwhile
                same_file = False
            if not same_file:
                os.close(fd)
                continue
            previous = _holder(path)
            if previous and locked is None:  # no flock here: the record decides
                alive = previous.get("host") != socket.gethostname() or _pid_running(
                    int(previous.get("pid", -1))
                )
                if alive:
                    raise _in_use(directory, previous)
            if previous:
                logger.warning(
                    "taking over the stale lock of %s: pid %s on %s (started %s) is gone",
                    directory,
                    previous.get("pid", "?"),
                    previous.get("host", "?"),
                    previous.get("started", "?"),
                )
            record = {
                "pid": os.getpid(),
                "host": socket.gethostname(),
                "started": datetime.datetime.now(datetime.timezone.utc).isoformat(
                    timespec="seconds"
                ),
            }
            os.ftruncate(fd, 0)
            os.pwrite(fd, json.dumps(record).encode(), 0)
            os.fsync(fd)
            return RunLock(directory, fd, path)
        except BaseException:
            with contextlib.suppress(OSError):
                os.close(fd)
            raise
    raise RunDirectoryError(f"could not lock {str(path)!r}: it keeps being replaced")


def _flock(fd: int) -> bool | None:
    """``True`` when locked, ``False`` when another process holds it, ``None`` when the
    file system has no ``flock`` (the pid record decides then)."""
    if fcntl is None:  # pragma: no cover - Windows
        return None
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return False
    except OSError as err:
        if err.errno in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
            return False
        return None  # ENOLCK, EOPNOTSUPP...: e.g. some network file systems
    return True


def _clear_run(directory: Path) -> None:
    """Removes the entries of a run of ours (moved aside first, then deleted)."""
    trash = directory / f".overwritten-{uuid.uuid4().hex[:8]}"
    trash.mkdir()
    for name in RUN_ENTRIES:
        entry = directory / name
        if entry.exists() or entry.is_symlink():
            os.replace(entry, trash / name)
    shutil.rmtree(trash, ignore_errors=True)


def claim_run_directory(
    directory: str | os.PathLike,
    *,
    kind: str,
    algorithm: str,
    resume: bool = False,
    overwrite: bool = False,
) -> RunLock:
    """Locks ``directory`` for this process and checks it may hold this run.

    Args:
        directory: the run directory (created if needed).

    Keyword Args:
        kind: ``"train"`` or ``"finetune"``, recorded in ``run.json``.
        algorithm: the algorithm's name, recorded in ``run.json``.
        resume: the run continues the one in ``directory``: it must have a checkpoint.
        overwrite: replace the run in ``directory`` (only a run of ours).

    Returns:
        The :class:`RunLock`; release it when the run ends.

    Raises:
        RunDirectoryError: another live process holds the directory; it holds a run and
            neither ``resume`` nor ``overwrite`` is set; ``resume`` finds no checkpoint;
            ``overwrite`` of a directory that is not a run of ours; both flags set.

    Examples:
        >>> import tempfile
        >>> from torchrl_offline.trainers.run_dir import claim_run_directory
        >>> out = tempfile.mkdtemp()
        >>> with claim_run_directory(out, kind="train", algorithm="iql"):
        ...     pass  # train here
        >>> try:
        ...     claim_run_directory(out, kind="train", algorithm="cql")
        ... except ValueError as err:
        ...     print(str(err).split(";")[0])  # doctest: +ELLIPSIS
        the directory '...' already holds an iql train run (no checkpoint yet)
    """
    if resume and overwrite:
        raise RunDirectoryError("resume and overwrite exclude each other: pick one")
    directory = Path(directory)
    if directory.exists() and not directory.is_dir():
        raise RunDirectoryError(f"the run directory {str(directory)!r} is a file")
    if resume and not directory.is_dir():
        raise RunDirectoryError(
            f"nothing to resume in {str(directory)!r}: the directory does not exist; start "
            "without resume"
        )
    directory.mkdir(parents=True, exist_ok=True)
    claim = _lock(directory)
    try:
        # what a process killed while it held the lock left half done (only a holder
        # writes these, and we hold the lock now)
        for leftover in directory.glob(".overwritten-*"):
            shutil.rmtree(leftover, ignore_errors=True)
        for leftover in directory.glob(f".{RUN_MARKER}.*.tmp"):
            leftover.unlink(missing_ok=True)
        existing = holds_run(directory)
        if resume:
            if latest_checkpoint(directory / "checkpoints") is None:
                held = f"it holds {describe_run(directory)}" if existing else "it holds no run"
                raise RunDirectoryError(
                    f"nothing to resume in {str(directory)!r}: no checkpoint in its "
                    f"checkpoints/ folder ({held}); start without resume"
                    + (", or with overwrite to replace it" if existing else "")
                )
        elif existing and not overwrite:
            raise RunDirectoryError(
                f"the directory {str(directory)!r} already holds {describe_run(directory)}; "
                f"resume it, overwrite it, or choose another output directory for this "
                f"{algorithm} run"
            )
        elif overwrite and any(p.name != LOCK_FILE for p in directory.iterdir()):
            if not existing:
                raise RunDirectoryError(
                    f"refusing to overwrite {str(directory)!r}: it is not a run directory of "
                    "torchrl_offline (no run.json, checkpoints/checkpoint_*.pt or summary.json)"
                )
            logger.warning("overwriting %s in %s", describe_run(directory), directory)
            _clear_run(directory)
        if not resume or _marker(directory) is None:
            marker = {"format": _FORMAT, "kind": kind, "algorithm": algorithm}
            tmp = directory / f".{RUN_MARKER}.{uuid.uuid4().hex[:8]}.tmp"
            tmp.write_text(json.dumps(marker, indent=1) + "\n")
            os.replace(tmp, directory / RUN_MARKER)
    except BaseException:
        claim.release()
        raise
    return claim
