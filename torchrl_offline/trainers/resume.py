"""What a resumed run must share with the checkpoint it continues.

:func:`train` and :func:`finetune` store the run's identity in every checkpoint's
metadata (:func:`run_identity`: the dataset's content fingerprint, the batch size and the
seed, beside the algorithm description) and, on resume, :func:`resume_mismatches` lists
what differs: the algorithm, the observation and action spaces, the hyperparameters,
the dataset, the batch size, the seed. A checkpoint written before these fields existed
resumes with a logged note. :func:`resume_point` picks the checkpoint to continue: the
newest, or one the caller names (the previous good one when the newest is damaged), in
which case :func:`set_aside_newer` renames the newer checkpoints out of the way.
:func:`find_resumable` does all of it for a run about to resume.
"""

from __future__ import annotations

import json
import logging
import math
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from torchrl_offline.data.fingerprint import dataset_fingerprint, fingerprint_difference
from torchrl_offline.trainers.checkpoint import (
    CheckpointError,
    checkpoint_step,
    latest_checkpoint,
    list_checkpoints,
    load_checkpoint,
)
from torchrl_offline.trainers.metadata import read_metadata, with_new_defaults

__all__ = [
    "SET_ASIDE",
    "check_resumable",
    "find_resumable",
    "resume_mismatches",
    "resume_point",
    "run_identity",
    "set_aside_newer",
]

logger = logging.getLogger("torchrl_offline")

#: Run-identity entries compared on resume (in this order), after the algorithm's.
IDENTITY_KEYS = ("dataset", "batch_size", "seed")
#: Suffix given to the checkpoints newer than the one a run resumes from by name.
SET_ASIDE = ".set-aside"


def resume_point(directory: Path, resume: bool | str | os.PathLike) -> Path | None:
    """The checkpoint a resumed run continues: ``resume`` itself when it is a path (it must
    be a checkpoint of ``directory``), else the newest of ``directory`` (``None`` if none).

    Raises:
        CheckpointError: ``resume`` names a file that does not exist or is not a
            checkpoint of ``directory``.
    """
    if isinstance(resume, bool):
        return latest_checkpoint(directory)
    path = Path(resume).expanduser()
    if not path.is_file():
        raise CheckpointError(f"Checkpoint {str(path)!r} to resume from does not exist")
    mine = list_checkpoints(directory)
    if path.resolve() not in [p.resolve() for p in mine]:
        raise CheckpointError(
            f"{str(path)!r} is not a checkpoint of this run: a run resumes from one of its "
            f"own, in {str(directory)!r}" + (f" (newest: {mine[-1].name})" if mine else "")
        )
    return directory / path.name


def set_aside_newer(path: Path, resume: bool | str | os.PathLike) -> list[Path]:
    """When ``resume`` named ``path``, renames the checkpoints of its folder with a higher
    step to ``<name>.set-aside`` (kept, no longer listed, loaded or pruned), so that the
    run continues from ``path``; returns the new names.
    """
    if isinstance(resume, bool):
        return []
    step = checkpoint_step(path)
    moved = []
    for newer in list_checkpoints(path.parent):
        if checkpoint_step(newer) > step:
            target = newer.with_name(newer.name + SET_ASIDE)
            os.replace(newer, target)
            moved.append(target)
            logger.warning(
                "resuming from %s: the newer checkpoint %s is set aside as %s",
                path.name,
                newer.name,
                target.name,
            )
    return moved


def run_identity(dataset: Any, *, batch_size: int, seed: int) -> dict[str, Any]:
    """The entries that a resumed run must share with its checkpoint (JSON-able).

    Examples:
        >>> import torch
        >>> from tensordict import TensorDict
        >>> from torchrl_offline.trainers.resume import run_identity
        >>> td = TensorDict({"observation": torch.zeros(4, 3)}, [4])
        >>> sorted(run_identity(td, batch_size=2, seed=0))
        ['batch_size', 'dataset', 'seed']
    """
    return {"dataset": dataset_fingerprint(dataset), "batch_size": int(batch_size), "seed": seed}


def _size(spec: Mapping[str, Any]) -> int:
    return math.prod(int(d) for d in spec.get("shape") or [1])


def _spec_difference(what: str, saved: Mapping[str, Any], current: Mapping[str, Any]) -> str:
    kinds = saved.get("type"), current.get("type")
    if kinds[0] != kinds[1]:
        return f"{what} space {kinds[0]} vs {kinds[1]}"
    if "n" in saved and saved.get("n") != current.get("n"):
        return f"{saved.get('n')} vs {current.get('n')} discrete {what}s"
    if _size(saved) != _size(current):
        return f"{what} size {_size(saved)} vs {_size(current)}"
    if saved.get("shape") != current.get("shape"):
        return f"{what} shape {tuple(saved['shape'])} vs {tuple(current['shape'])}"
    return f"{what} bounds {saved.get('low')}..{saved.get('high')} vs {current.get('low')}.." + str(
        current.get("high")
    )


def _dict_differences(saved: Any, current: Any, prefix: str = "") -> list[str]:
    """``["key=old vs new", ...]`` for the entries of two mappings that differ."""
    if saved == current:
        return []
    if not isinstance(saved, Mapping) or not isinstance(current, Mapping):
        return [f"{prefix}{saved!r} vs {current!r}"]
    keys = sorted(k for k in set(saved) | set(current) if saved.get(k) != current.get(k))
    return [f"{prefix}{k}={saved.get(k)!r} vs {current.get(k)!r}" for k in keys]


def resume_mismatches(
    saved: Mapping[str, Any], current: Mapping[str, Any], *, compare: tuple[str, ...] = ()
) -> list[str]:
    """What differs between a checkpoint's metadata and this run's, in words
    (``"checkpoint vs this run"``); empty when the run may resume.

    Args:
        saved: the checkpoint's metadata (with the algorithm's new defaults filled in).
        current: this run's metadata.

    Keyword Args:
        compare: more top-level entries to compare as they are (e.g. fine-tuning's
            ``"finetune"`` settings).

    Examples:
        >>> from torchrl_offline.trainers.resume import resume_mismatches
        >>> spec = lambda n: {"type": "unbounded", "shape": [n]}
        >>> resume_mismatches({"algorithm": "iql", "observation_spec": spec(11), "seed": 0},
        ...                   {"algorithm": "iql", "observation_spec": spec(3), "seed": 1})
        ['observation size 11 vs 3', 'seed 0 vs 1']
    """
    if saved.get("algorithm") != current.get("algorithm"):
        return [f"algorithm {saved.get('algorithm')} vs {current.get('algorithm')}"]
    found = []
    for key, what in (("observation_spec", "observation"), ("action_spec", "action")):
        if key in saved and saved[key] != current.get(key):
            found.append(_spec_difference(what, saved[key], current.get(key) or {}))
    spaces_differ = bool(found)  # then the dataset's entries differ too: said once
    found += _dict_differences(saved.get("hyperparameters"), current.get("hyperparameters"))
    if saved.get("observation_norm") != current.get("observation_norm"):
        found.append("observation normalisation (statistics or on/off)")
    for key in compare:
        found += _dict_differences(saved.get(key), current.get(key), f"{key} ")
    for key in IDENTITY_KEYS:
        if key not in saved or key not in current:
            continue
        if key == "dataset":
            diff = fingerprint_difference(saved[key], current[key])
            if diff is not None and not (spaces_differ and diff.startswith("dataset entries")):
                found.append(diff)
        elif saved[key] != current[key]:
            found.append(f"{key.replace('_', ' ')} {saved[key]} vs {current[key]}")
    return found


def check_resumable(
    saved: Mapping[str, Any],
    current: Mapping[str, Any],
    path: Path,
    *,
    compare: tuple[str, ...] = (),
    run: str = "run",
) -> None:
    """Raises :class:`CheckpointError` naming every difference that
    :func:`resume_mismatches` finds; logs a note for a checkpoint without the run-identity
    entries (written by an older version), which then resumes.

    Args:
        saved: the checkpoint's metadata.
        current: this run's metadata.
        path: the checkpoint (for the messages).

    Keyword Args:
        compare: as in :func:`resume_mismatches`.
        run: what this run is, for the message (``"run"``, ``"fine-tuning run"``).
    """
    found = resume_mismatches(saved, current, compare=compare)
    if found:
        hint = ""
        if any(text.startswith("dataset content") for text in found):
            hint = (
                ". If it is the same dataset, its files may be damaged: check them with "
                "`torchrl-offline verify DATASET`"
            )
        raise CheckpointError(
            f"Checkpoint {str(path)!r} holds a {run} of {saved.get('algorithm')} that this "
            f"{current.get('algorithm')} {run} cannot continue: {'; '.join(found)} "
            "(checkpoint vs this run). Resume with the same dataset and settings, or use "
            f"another output directory{hint}"
        )
    absent = [key for key in IDENTITY_KEYS if key not in saved]
    if absent:
        logger.warning(
            "checkpoint %s records no %s (written by an older version): resuming without "
            "checking them",
            path,
            ", ".join(absent),
        )


def find_resumable(
    directory: Path,
    metadata: Mapping[str, Any],
    resume: bool | str | os.PathLike = True,
    *,
    kind: str = "train",
) -> tuple[Path, dict[str, Any]] | None:
    """The checkpoint a ``kind`` run resumes and its state, or ``None`` when there is none.

    The checkpoint is ``resume`` when it is a path, else the newest of ``directory``
    (:func:`resume_point`); it must be of the same kind (offline training, ``"train"``,
    or fine-tuning, ``"finetune"``, whose settings are compared too) and of this run
    (:func:`check_resumable`: same algorithm, spaces, hyperparameters, normalisation,
    dataset, batch size and seed, ``metadata`` being this run's). Resuming from a named
    checkpoint sets the newer ones aside (:func:`set_aside_newer`).

    Raises:
        CheckpointError: the checkpoint is unreadable, of the other kind or of another run.

    Examples:
        >>> import tempfile
        >>> from pathlib import Path
        >>> from torchrl_offline.trainers.resume import find_resumable
        >>> find_resumable(Path(tempfile.mkdtemp()), {"algorithm": "iql"}) is None
        True
    """
    path = resume_point(directory, resume)
    if path is None:
        return None
    state = load_checkpoint(path)
    saved = with_new_defaults(read_metadata(state, path))
    current = json.loads(json.dumps(metadata))
    if kind == "finetune":
        if not saved.get("finetune"):
            raise CheckpointError(
                f"Checkpoint {str(path)!r} is from offline training, not fine-tuning; give "
                "fine-tuning another out_dir (the offline run is its starting point)"
            )
        check_resumable(saved, current, path, compare=("finetune",), run="fine-tuning run")
    else:
        if saved.get("finetune"):
            raise CheckpointError(
                f"Checkpoint {str(path)!r} is from fine-tuning, not offline training: resume "
                "it with `torchrl-offline finetune --resume` (finetune() in Python), or give "
                "this training run another output directory"
            )
        check_resumable(saved, current, path)
    set_aside_newer(path, resume)
    return path, state
