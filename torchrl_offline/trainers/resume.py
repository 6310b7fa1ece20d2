"""What a resumed run must share with the checkpoint it continues.

:func:`train` and :func:`finetune` store the run's identity in every checkpoint's
metadata (:func:`run_identity`: the dataset's content fingerprint, the batch size and the
seed, beside the algorithm description) and, on resume, :func:`resume_mismatches` lists
what differs: the algorithm, the observation and action spaces, the hyperparameters,
the dataset, the batch size, the seed. A checkpoint written before these fields existed
resumes with a logged note.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from torchrl_offline.data.fingerprint import dataset_fingerprint, fingerprint_difference
from torchrl_offline.trainers.checkpoint import CheckpointError

__all__ = ["check_resumable", "resume_mismatches", "run_identity"]

logger = logging.getLogger("torchrl_offline")

#: Run-identity entries compared on resume (in this order), after the algorithm's.
IDENTITY_KEYS = ("dataset", "batch_size", "seed")


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
        raise CheckpointError(
            f"Checkpoint {str(path)!r} holds a {run} of {saved.get('algorithm')} that this "
            f"{current.get('algorithm')} {run} cannot continue: {'; '.join(found)} "
            "(checkpoint vs this run). Resume with the same dataset and settings, or use "
            "another output directory"
        )
    absent = [key for key in IDENTITY_KEYS if key not in saved]
    if absent:
        logger.warning(
            "checkpoint %s records no %s (written by an older version): resuming without "
            "checking them",
            path,
            ", ".join(absent),
        )
