"""Manifests: the files of a directory with their sizes and content hashes.

A directory written by this package (a converted dataset, a cache entry, a Minari dataset
it wrote) ends with a manifest, :data:`MANIFEST`, written last and atomically: a directory
without a valid manifest is never complete. Opening it checks every file's size against
the manifest (one ``stat`` per file: a truncated or extended file is caught at once);
:func:`verify_manifest` with ``full=True`` also re-hashes every byte (BLAKE2b, read in
chunks), which catches bit flips.

The module knows nothing of datasets or checkpoints: callers pass the exception type to
raise (:class:`~torchrl_offline.data.errors.DatasetError`,
:class:`~torchrl_offline.trainers.checkpoint.CheckpointError`), so an integrity failure is
one of the area's usual ``ValueError`` s.

Examples:
    >>> import tempfile
    >>> from pathlib import Path
    >>> from torchrl_offline.integrity import verify_manifest, write_manifest
    >>> d = Path(tempfile.mkdtemp())
    >>> _ = (d / "a.bin").write_bytes(b"0123456789")
    >>> _ = write_manifest(d)
    >>> verify_manifest(d, full=True)
    >>> _ = (d / "a.bin").write_bytes(b"01234")
    >>> try:
    ...     verify_manifest(d)
    ... except ValueError as err:
    ...     print(str(err).split(": ", 1)[1])
    size 5 bytes, the manifest records 10 (the file is truncated, extended or replaced)
"""

from __future__ import annotations

import hashlib
import json
import os
import uuid
from collections.abc import Collection
from pathlib import Path
from typing import Any

__all__ = ["MANIFEST", "content_digest", "file_digest", "verify_manifest", "write_manifest"]

#: Name of the manifest file inside a directory.
MANIFEST = "torchrl_offline.manifest.json"
_FORMAT = "torchrl_offline.manifest/1"
_ALGORITHM = "blake2b-256"
_BLOCK = 1 << 20


def content_digest(data: bytes | memoryview) -> str:
    """The hex BLAKE2b-256 digest of ``data`` (the hash manifests and checkpoints record)."""
    return hashlib.blake2b(data, digest_size=32).hexdigest()


def file_digest(path: str | os.PathLike) -> str:
    """The hex BLAKE2b-256 digest of a file's bytes, read in 1 MiB chunks."""
    digest = hashlib.blake2b(digest_size=32)
    with open(path, "rb") as f:
        while block := f.read(_BLOCK):
            digest.update(block)
    return digest.hexdigest()


def _files(directory: Path) -> list[Path]:
    return sorted(p for p in directory.rglob("*") if p.is_file() and p.name != MANIFEST)


def write_manifest(directory: str | os.PathLike, *, skip: Collection[str] = ()) -> Path:
    """Record every file under ``directory`` (relative path, size, hash) in its manifest.

    Call it when the directory is finished: the manifest is written last, to a temporary
    name renamed into place, so it exists only once everything it lists is on disk.

    Args:
        directory: the finished directory.

    Keyword Args:
        skip: relative paths (``"data/metadata.json"``) to leave out, for files that
            another tool legitimately rewrites.

    Returns:
        The manifest's path.
    """
    directory = Path(directory)
    files = {}
    for p in _files(directory):
        name = p.relative_to(directory).as_posix()
        if name not in skip:
            files[name] = {"size": p.stat().st_size, "hash": file_digest(p)}
    record = {"format": _FORMAT, "algorithm": _ALGORITHM, "files": files}
    target = directory / MANIFEST
    tmp = directory / f".{MANIFEST}.{uuid.uuid4().hex}.tmp"
    try:
        with open(tmp, "w") as f:
            json.dump(record, f, indent=1, sort_keys=True)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, target)
    finally:
        tmp.unlink(missing_ok=True)
    return target


def _read(directory: Path, error: type[ValueError]) -> dict[str, dict[str, Any]]:
    path = directory / MANIFEST
    try:
        record = json.loads(path.read_text())
    except FileNotFoundError:
        raise error(
            f"{str(directory)!r} has no manifest ({MANIFEST}): it was not finished, or was "
            "written by an older version"
        ) from None
    except (OSError, ValueError) as err:
        raise error(f"Manifest {str(path)!r} is unreadable ({err})") from err
    files = record.get("files") if isinstance(record, dict) else None
    valid = isinstance(files, dict) and all(
        isinstance(e, dict) and isinstance(e.get("size"), int) and isinstance(e.get("hash"), str)
        for e in files.values()
    )
    if not valid or record.get("format") != _FORMAT:
        raise error(f"Manifest {str(path)!r} is damaged or of an unknown format")
    return files


def verify_manifest(
    directory: str | os.PathLike, *, full: bool = False, error: type[ValueError] = ValueError
) -> None:
    """Check the files of ``directory`` against its manifest.

    Every listed file must exist with its recorded size; with ``full``, its bytes must
    also hash to the recorded value. Files the manifest does not list are ignored.

    Args:
        directory: a directory finished with :func:`write_manifest`.

    Keyword Args:
        full (bool): also hash every file (reads all the bytes). Defaults to ``False``
            (sizes only: one ``stat`` per file).
        error (type): the exception to raise, a ``ValueError`` subclass taking a message.

    Raises:
        error: no or unreadable manifest, or the first file (in path order) that is
            missing or has another size or hash; the message names the file and the
            expected and actual values.
    """
    directory = Path(directory)
    for name, entry in sorted(_read(directory, error).items()):
        path = directory / name
        try:
            size = path.stat().st_size
        except FileNotFoundError:
            raise error(
                f"{str(path)!r}: missing (the manifest records {entry['size']} bytes)"
            ) from None
        if size != entry["size"]:
            raise error(
                f"{str(path)!r}: size {size} bytes, the manifest records {entry['size']} "
                "(the file is truncated, extended or replaced)"
            )
        if full and (actual := file_digest(path)) != entry["hash"]:
            raise error(
                f"{str(path)!r}: content hash {actual[:16]}..., the manifest records "
                f"{entry['hash'][:16]}... ({_ALGORITHM}; the file's bytes changed)"
            )
