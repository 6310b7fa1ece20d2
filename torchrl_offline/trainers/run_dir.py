"""Run directories are owned: one run per directory, one process per run.

:func:`claim_run_directory` is what :func:`~torchrl_offline.trainers.offline.train` and
:func:`~torchrl_offline.trainers.finetune.finetune` call before writing anything into
their ``out_dir``:

* a lock file (``run.lock``, :func:`torchrl_offline.locks.lock_file`) keeps a second
  process out while the first runs; a lock left behind by a dead process is taken over
  with a logged note;
* a directory that already holds a run (checkpoints, or a ``summary.json`` of ours) is
  refused unless the caller resumes it or asks to overwrite it. A ``run.json`` marker
  alone (a run that failed or was killed before its first checkpoint) is not a run: it
  has nothing to resume or to lose, and a new run takes the directory;
* ``overwrite`` replaces only what is recognisably a run of ours (marker, checkpoints
  or summary): it removes ``checkpoints/``, ``logs/``, ``metrics.csv``, ``metrics.png``,
  ``summary.json`` and ``run.json`` and leaves any other file alone; a directory that is
  not a run is never emptied;
* a ``run.json`` or ``summary.json`` that we did not write is never replaced, and a
  dataset folder (or a folder inside one) is never a run directory;
* ``resume`` with nothing to resume is an error, not a silent fresh start, and resumes
  only a run of its own kind (``train`` or ``finetune``).
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import shutil
import uuid
from pathlib import Path
from types import TracebackType
from typing import Any

from torchrl_offline.locks import FileLock, lock_file
from torchrl_offline.trainers.checkpoint import latest_checkpoint

__all__ = [
    "RunDirectoryError",
    "RunLock",
    "claim_run_directory",
    "describe_run",
    "holds_run",
    "read_marker",
]

logger = logging.getLogger("torchrl_offline")

#: Marker written into every run directory by :func:`claim_run_directory`.
RUN_MARKER = "run.json"
#: The lock file of a run directory (present while a process runs there).
LOCK_FILE = "run.lock"
#: Entries of a run directory that belong to the run (what ``overwrite`` removes).
RUN_ENTRIES = ("checkpoints", "logs", "metrics.csv", "metrics.png", "summary.json", RUN_MARKER)
_FORMAT = "torchrl_offline.run/1"


class RunDirectoryError(ValueError):
    """A run directory that cannot be used as asked; the message names it and says why."""


def read_marker(directory: Path) -> dict[str, Any] | None:
    """The ``run.json`` of ``directory`` written by :func:`claim_run_directory` (with the
    run's ``info``, :mod:`~torchrl_offline.trainers.run_info`), or ``None``."""
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
    """Whether ``directory`` holds a run of ours: checkpoints in ``checkpoints/`` or a
    ``summary.json`` written by ``torchrl-offline train`` or ``finetune``. A ``run.json``
    marker alone (a run stopped before its first checkpoint) is not a run."""
    directory = Path(directory)
    return (
        latest_checkpoint(directory / "checkpoints") is not None or _summary(directory) is not None
    )


def describe_run(directory: str | os.PathLike) -> str:
    """A few words on the run in ``directory``, e.g. ``"a cql train run (newest checkpoint
    step 2000)"``, for error messages."""
    directory = Path(directory)
    meta = read_marker(directory) or _summary(directory) or {}
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
    removes ``run.lock``, and the ``run.json`` this claim wrote when the run left nothing
    (no checkpoint, no ``summary.json``): a run that failed before its first checkpoint
    does not block the corrected retry. The run directory itself, when the claim created
    it, is removed too when nothing is left in it (a run refused for its settings leaves no
    empty folder; parent folders created with it stay). A
    process killed while holding it leaves the lock file behind, and the next claim takes
    it over.

    Attributes:
        directory: the run directory.
    """

    def __init__(self, directory: Path, lock: FileLock) -> None:
        self.directory = directory
        self._lock = lock
        self._new_marker = False  # set by claim_run_directory when it wrote run.json
        self._new_directory = False  # set by claim_run_directory when it made directory

    def release(self) -> None:
        """Releases the lock (idempotent)."""
        if not self._lock.held:
            return
        try:
            if self._new_marker and not holds_run(self.directory):
                (self.directory / RUN_MARKER).unlink(missing_ok=True)
        finally:
            self._lock.release()
        if self._new_directory:
            with contextlib.suppress(OSError):  # not empty: the run left something
                self.directory.rmdir()

    def __enter__(self) -> RunLock:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.release()


def _lock(directory: Path) -> RunLock:
    """Takes ``directory/run.lock`` or raises :class:`RunDirectoryError` naming its holder."""
    lock = lock_file(
        directory / LOCK_FILE,
        subject=f"the run directory {str(directory)!r}",
        advice="wait for it to finish or choose another output directory",
        error=RunDirectoryError,
    )
    return RunLock(directory, lock)


def _dataset_around(directory: Path) -> Path | None:
    """The dataset folder (Minari dataset or converted dataset) that is ``directory`` or
    holds it, if any."""
    from torchrl_offline.data.storage import COMPLETE_MARKER

    here = directory.resolve()
    for folder in (here, *here.parents):
        if (folder / "data" / "metadata.json").is_file() or (folder / COMPLETE_MARKER).is_file():
            return folder
    return None


def _foreign_files(directory: Path) -> list[str]:
    """Files of ``directory`` that a run of ours would replace but that we did not write."""
    found = []
    if (directory / RUN_MARKER).exists() and read_marker(directory) is None:
        found.append(RUN_MARKER)
    if (directory / "summary.json").exists() and _summary(directory) is None:
        found.append("summary.json")
    if (directory / "metrics.csv").exists() and not _ours_metrics(directory / "metrics.csv"):
        found.append("metrics.csv")
    return found


def _ours_metrics(path: Path) -> bool:
    """Whether ``path`` starts like a metrics file of ours (its header's ``step`` column)."""
    try:
        with open(path, "rb") as f:
            return f.read(5) == b"step,"
    except OSError:
        return False


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
            neither ``resume`` nor ``overwrite`` is set; ``resume`` finds no checkpoint
            or a run of the other kind; ``overwrite`` of a directory that is not a run
            of ours; a ``run.json`` or ``summary.json`` we did not write would be
            replaced; the directory is (inside) a dataset folder; both flags set.

    Examples:
        >>> import tempfile
        >>> from pathlib import Path
        >>> from torchrl_offline.trainers.run_dir import claim_run_directory
        >>> out = Path(tempfile.mkdtemp())
        >>> with claim_run_directory(out, kind="train", algorithm="iql"):
        ...     _ = (out / "summary.json").write_text('{"algorithm": "iql", "step": 0}')
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
    if (dataset := _dataset_around(directory)) is not None:
        where = "is" if dataset == directory.resolve() else f"is inside {str(dataset)!r},"
        raise RunDirectoryError(
            f"the run directory {str(directory)!r} {where} a dataset folder: a run written "
            "there would be mixed with the dataset's files (and replaced with it by "
            "collect --overwrite); choose an output directory outside the dataset"
        )
    if resume and not directory.is_dir():
        raise RunDirectoryError(
            f"nothing to resume in {str(directory)!r}: the directory does not exist; start "
            "without resume"
        )
    new_directory = not directory.exists()
    directory.mkdir(parents=True, exist_ok=True)
    claim = _lock(directory)
    claim._new_directory = new_directory
    try:
        # what a process killed while it held the lock left half done (only a holder
        # writes these, and we hold the lock now)
        for leftover in directory.glob(".overwritten-*"):
            shutil.rmtree(leftover, ignore_errors=True)
        for leftover in directory.glob(f".{RUN_MARKER}.*.tmp"):
            leftover.unlink(missing_ok=True)
        if foreign := _foreign_files(directory):
            names = " and ".join(foreign)
            raise RunDirectoryError(
                f"the directory {str(directory)!r} holds a {names} that torchrl_offline did "
                f"not write, which this {algorithm} run would replace; move it away or "
                "choose another output directory"
            )
        existing = holds_run(directory)
        marker = read_marker(directory)
        if resume:
            if latest_checkpoint(directory / "checkpoints") is None:
                if existing:
                    held = f"it holds {describe_run(directory)}"
                elif marker is not None:
                    held = "it holds a run that stopped before its first checkpoint"
                else:
                    held = "it holds no run"
                raise RunDirectoryError(
                    f"nothing to resume in {str(directory)!r}: no checkpoint in its "
                    f"checkpoints/ folder ({held}); start without resume"
                    + (", or with overwrite to replace it" if existing else "")
                )
            if marker is not None and marker.get("kind", kind) != kind:
                raise RunDirectoryError(
                    f"the directory {str(directory)!r} holds {describe_run(directory)}, and "
                    f"a {kind} run resumes only a {kind} run: resume it with "
                    f"`torchrl-offline {marker['kind']} --resume` ({marker['kind']}() in "
                    "Python), or choose another output directory"
                )
        elif existing and not overwrite:
            raise RunDirectoryError(
                f"the directory {str(directory)!r} already holds {describe_run(directory)}; "
                f"resume it, overwrite it, or choose another output directory for this "
                f"{algorithm} run"
            )
        elif overwrite and any(p.name != LOCK_FILE for p in directory.iterdir()):
            if not existing and marker is None:
                raise RunDirectoryError(
                    f"refusing to overwrite {str(directory)!r}: it is not a run directory of "
                    "torchrl_offline (no run.json, checkpoints/checkpoint_*.pt or summary.json)"
                )
            logger.warning("overwriting %s in %s", describe_run(directory), directory)
            _clear_run(directory)
        if not resume or marker is None:
            marker = {"format": _FORMAT, "kind": kind, "algorithm": algorithm}
            tmp = directory / f".{RUN_MARKER}.{uuid.uuid4().hex[:8]}.tmp"
            tmp.write_text(json.dumps(marker, indent=1) + "\n")
            os.replace(tmp, directory / RUN_MARKER)
            claim._new_marker = not resume
    except BaseException:
        claim.release()
        raise
    return claim
