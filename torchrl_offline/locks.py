"""Lock files that keep a second process out of what one process is writing.

:func:`lock_file` takes an OS file lock (``flock``) on a small file, which the kernel
releases when its process dies, even by ``kill -9``; the file records the holder's pid,
host and start time for the error message of the process that is kept out. A lock file
left behind by a dead process is taken over with a logged note (where the file system has
no ``flock``, the recorded pid and host decide: a lock of this host whose pid is not
running is stale). Run directories (``run.lock``) and datasets being written
(``.<name>.lock`` beside them) use it.

The module knows nothing of runs or datasets: callers pass the exception type to raise
and the words naming what is locked, so a refusal is one of the area's ``ValueError`` s.

Examples:
    >>> import tempfile
    >>> from pathlib import Path
    >>> from torchrl_offline.locks import lock_file
    >>> path = Path(tempfile.mkdtemp()) / "x.lock"
    >>> with lock_file(path, subject="the folder 'x'", advice="wait"):
    ...     try:
    ...         lock_file(path, subject="the folder 'x'", advice="wait")
    ...     except ValueError as err:
    ...         print(str(err).split(" (")[0])
    the folder 'x' is in use by another process
    >>> path.exists()
    False
"""

from __future__ import annotations

import contextlib
import datetime
import errno
import json
import logging
import os
import socket
from pathlib import Path
from types import TracebackType
from typing import Any

try:  # POSIX; elsewhere the pid/host record alone decides
    import fcntl
except ImportError:  # pragma: no cover - Windows
    fcntl = None  # type: ignore[assignment]

__all__ = ["FileLock", "lock_file", "remove_stale_locks"]

logger = logging.getLogger("torchrl_offline")


class FileLock:
    """A held lock file returned by :func:`lock_file`.

    Use it as a context manager, or call :meth:`release`; releasing removes the file. A
    process killed while holding it leaves the file behind, and the next
    :func:`lock_file` takes it over.

    Attributes:
        path: the lock file.
    """

    def __init__(self, fd: int, path: Path) -> None:
        self.path = path
        self._fd: int | None = fd

    @property
    def held(self) -> bool:
        """Whether this process still holds the lock."""
        return self._fd is not None

    def release(self) -> None:
        """Releases the lock (idempotent)."""
        if self._fd is None:
            return
        try:
            self.path.unlink(missing_ok=True)  # unlinked while still held: no race
        finally:
            os.close(self._fd)  # closing drops the flock
            self._fd = None

    def __enter__(self) -> FileLock:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.release()

    def __del__(self) -> None:  # a forgotten lock still ends with the process
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


def lock_file(
    path: str | os.PathLike,
    *,
    subject: str,
    advice: str,
    error: type[ValueError] = ValueError,
) -> FileLock:
    """Takes the lock file ``path`` for this process, or refuses naming its holder.

    Args:
        path: the lock file (created if needed; its folder must exist).

    Keyword Args:
        subject: what the lock keeps, for the messages (``"the run directory 'runs/a'"``).
        advice: what to do when it is held (``"wait for it to finish or ..."``).
        error: the exception type raised when another live process holds it.

    Returns:
        The :class:`FileLock`; release it when done.

    Raises:
        error: another live process holds the lock; the message names ``subject``, the
            holder's pid, host and start time, and ``advice``.
    """
    path = Path(path)
    for _ in range(100):  # retried only when the file was replaced while we waited
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            locked = _flock(fd)
            if locked is False:
                raise _in_use(_holder(path), subject, advice, error)
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
                    raise _in_use(previous, subject, advice, error)
            if previous:
                logger.warning(
                    "taking over the stale lock of %s: pid %s on %s (started %s) is gone",
                    path,
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
            return FileLock(fd, path)
        except BaseException:
            with contextlib.suppress(OSError):
                os.close(fd)
            raise
    raise error(f"could not lock {str(path)!r}: it keeps being replaced")


def remove_stale_locks(folder: str | os.PathLike, pattern: str) -> list[Path]:
    """Removes the lock files of ``folder`` matching the glob ``pattern`` that no process
    holds (left by a process killed while it held them); returns what was removed. Where
    the file system has no ``flock``, nothing is removed.
    """
    removed = []
    for path in sorted(Path(folder).glob(pattern)):
        try:
            fd = os.open(path, os.O_RDWR)
        except OSError:
            continue
        try:
            if _flock(fd) is True and os.fstat(fd).st_ino == os.stat(path).st_ino:
                path.unlink()  # unlinked while held: a waiting opener retries
                removed.append(path)
                logger.info("Removed the lock file %s of a process that no longer runs", path)
        except OSError:
            pass
        finally:
            os.close(fd)
    return removed


def _in_use(
    holder: dict[str, Any], subject: str, advice: str, error: type[ValueError]
) -> ValueError:
    who = f"pid {holder.get('pid', '?')} on {holder.get('host', '?')}"
    since = f", since {holder['started']}" if holder.get("started") else ""
    return error(f"{subject} is in use by another process ({who}{since}); {advice}")
