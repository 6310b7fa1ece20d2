"""Files replaced whole or not at all: written under a temporary name, then renamed.

:func:`replace_file` is for small files a run rewrites while it goes (the metrics file
when a column appears, the run's figure, ``run.json``): a reader, or a process killed
half-way, sees the old file or the new one, never a mix. The temporary name carries the
writer's :func:`~torchrl_offline.leftovers.owner_tag`, so the leftovers of a killed
writer are removed by the next write of the same file.

Examples:
    >>> import tempfile
    >>> from pathlib import Path
    >>> from torchrl_offline.atomic import replace_file
    >>> path = Path(tempfile.mkdtemp()) / "notes.txt"
    >>> _ = replace_file(path, lambda f: f.write(b"first"))
    >>> _ = replace_file(path, lambda f: f.write(b"second"))
    >>> path.read_text(), [p.name for p in path.parent.iterdir()]
    ('second', ['notes.txt'])
"""

from __future__ import annotations

import os
import re
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import IO, Any

from torchrl_offline.leftovers import OWNER, owner_tag, remove_stale

__all__ = ["replace_file"]


def replace_file(path: str | os.PathLike, write: Callable[[IO[bytes]], Any]) -> Path:
    """Replaces ``path`` with what ``write(f)`` writes to a binary file object.

    The bytes go to ``.<name>.<owner>-<random>.tmp`` in the same folder (created if
    needed), are flushed to disk and the file is renamed to ``path``; when ``write``
    raises, the temporary file is removed and ``path`` is left as it was. Temporary
    files of ``path`` left by dead processes are removed first.

    Returns:
        ``path``.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    remove_stale(path.parent, re.compile(rf"\.{re.escape(path.name)}\.{OWNER}-[0-9a-f]{{32}}\.tmp"))
    tmp = path.with_name(f".{path.name}.{owner_tag()}-{uuid.uuid4().hex}.tmp")
    try:
        with open(tmp, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    return path
