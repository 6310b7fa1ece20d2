"""Temporary files and folders that name their owner, and the removal of dead owners' ones.

Everything this package writes under a temporary name (a conversion's build folder, a
checkpoint being saved, a collection's scratch buffer) carries :func:`owner_tag`: the
writing process's id and a short hash of the host name. A process killed with ``kill -9``
cannot clean up; the next run that finds its leftovers removes them with
:func:`remove_stale`, but only those whose owner is on this host and no longer runs, never
a live process's, and never a name without our tag.

Examples:
    >>> import os, re, tempfile
    >>> from pathlib import Path
    >>> from torchrl_offline.leftovers import OWNER, owner_tag, remove_stale
    >>> d = Path(tempfile.mkdtemp())
    >>> _ = (d / f".x.tmp-{owner_tag()}").write_bytes(b"mine, running")
    >>> _ = (d / ".x.tmp-notes").write_bytes(b"not ours")
    >>> remove_stale(d, re.compile(rf"\\.x\\.tmp-{OWNER}"))
    []
"""

from __future__ import annotations

import hashlib
import logging
import os
import re
import shutil
import socket
from pathlib import Path

__all__ = ["OWNER", "owner_tag", "pid_alive", "remove_stale"]

logger = logging.getLogger("torchrl_offline")

#: Regular expression matching :func:`owner_tag` (groups ``pid`` and ``host``).
OWNER = r"(?P<pid>\d+)-(?P<host>[0-9a-f]{8})"


def _host() -> str:
    return hashlib.blake2b(socket.gethostname().encode(), digest_size=4).hexdigest()


def owner_tag() -> str:
    """``"<pid>-<host hash>"``: names this process in a temporary file name."""
    return f"{os.getpid()}-{_host()}"


def pid_alive(pid: int) -> bool:
    """Whether process ``pid`` of this host exists (``True`` when that cannot be known)."""
    if os.name == "nt":  # os.kill(pid, 0) would terminate it on Windows
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:  # e.g. another user's process
        return True
    return True


def remove_stale(
    directory: str | os.PathLike, pattern: re.Pattern[str], *, remove: bool = True
) -> list[Path]:
    """Remove the entries of ``directory`` whose name fully matches ``pattern`` and whose
    owner (``pid`` and ``host`` groups, see :data:`OWNER`) is a dead process of this host.

    Args:
        directory: the folder to look in (not recursively); a missing folder is fine.
        pattern: a compiled expression with the named groups ``pid`` and ``host``; a
            ``host`` group that did not match (names written before host tags existed)
            counts as this host.

    Keyword Args:
        remove: ``False`` only lists them (for a caller that salvages them first).

    Returns:
        The paths removed (or found, with ``remove=False``).
    """
    directory = Path(directory)
    removed: list[Path] = []
    try:
        entries = list(directory.iterdir())
    except OSError:
        return removed
    host = _host()
    for path in entries:
        match = pattern.fullmatch(path.name)
        if match is None or match["host"] not in (None, host) or pid_alive(int(match["pid"])):
            continue
        if not remove:
            removed.append(path)
            continue
        if path.is_dir() and not path.is_symlink():
            shutil.rmtree(path, ignore_errors=True)
        else:
            path.unlink(missing_ok=True)
        if not path.exists():
            removed.append(path)
            logger.info("Removed %s, left by process %s that no longer runs", path, match["pid"])
    return removed
