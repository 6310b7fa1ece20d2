"""The algorithm description every checkpoint carries, and the algorithm rebuilt from it.

:func:`algorithm_metadata` describes a built algorithm in JSON-able form (name,
hyperparameters, observation and action specs, observation normalisation); the training
loop stores it, with the run's identity (:mod:`~torchrl_offline.trainers.resume`), in
every checkpoint. :func:`read_metadata` reads it back, :func:`with_new_defaults` fills in
the hyperparameters an algorithm gained since, and :func:`load_algorithm` rebuilds the
algorithm with its weights.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from torchrl.data import Bounded, Categorical, OneHot, TensorSpec, Unbounded

from torchrl_offline.trainers.algorithms import (
    Algorithm,
    AlgorithmError,
    _jsonable,
    algorithm_defaults,
    build_algorithm,
)
from torchrl_offline.trainers.checkpoint import CheckpointError, latest_checkpoint, load_checkpoint

__all__ = [
    "algorithm_metadata",
    "load_algorithm",
    "read_metadata",
    "spec_from_dict",
    "spec_to_dict",
    "with_new_defaults",
]


def spec_to_dict(spec: TensorSpec) -> dict[str, Any]:
    """A JSON-able description of an observation or action spec (:func:`spec_from_dict`
    rebuilds it).

    Examples:
        >>> from torchrl.data import Bounded
        >>> from torchrl_offline.trainers.metadata import spec_from_dict, spec_to_dict
        >>> d = spec_to_dict(Bounded(-1.0, 1.0, (2,)))
        >>> d["type"], d["shape"], d["high"]
        ('bounded', [2], [1.0, 1.0])
        >>> spec_from_dict(d).shape
        torch.Size([2])
    """
    if isinstance(spec, Bounded):
        return {
            "type": "bounded",
            "shape": list(spec.shape),
            "low": spec.space.low.reshape(-1).tolist(),
            "high": spec.space.high.reshape(-1).tolist(),
        }
    if isinstance(spec, Categorical):
        return {"type": "categorical", "n": int(spec.space.n), "shape": list(spec.shape)}
    if isinstance(spec, OneHot):
        return {"type": "one_hot", "n": int(spec.space.n)}
    return {"type": "unbounded", "shape": list(spec.shape)}


def spec_from_dict(d: Mapping[str, Any]) -> TensorSpec:
    """The spec described by :func:`spec_to_dict` (float32 bounds)."""
    kind = d["type"]
    if kind == "bounded":
        shape = tuple(d["shape"])
        low = torch.tensor(d["low"], dtype=torch.float32).reshape(shape)
        high = torch.tensor(d["high"], dtype=torch.float32).reshape(shape)
        return Bounded(low, high, shape=shape)
    if kind == "categorical":
        return Categorical(int(d["n"]), shape=tuple(d["shape"]))
    if kind == "one_hot":
        return OneHot(int(d["n"]))
    return Unbounded(shape=tuple(d["shape"]))


def algorithm_metadata(algo: Algorithm) -> dict[str, Any]:
    """The description of ``algo`` stored in checkpoints: ``algorithm`` (its name),
    ``hyperparameters``, ``observation_spec``, ``action_spec`` and ``observation_norm``
    (``None`` or its ``loc`` and ``scale``).

    Examples:
        >>> from torchrl.data import Bounded, Unbounded
        >>> from torchrl_offline.trainers.algorithms import build_algorithm
        >>> from torchrl_offline.trainers.metadata import algorithm_metadata
        >>> algo = build_algorithm("iql", Unbounded(shape=(3,)), Bounded(-1.0, 1.0, (1,)),
        ...                        hidden_sizes=(16,))
        >>> meta = algorithm_metadata(algo)
        >>> meta["algorithm"], meta["observation_spec"], meta["observation_norm"]
        ('iql', {'type': 'unbounded', 'shape': [3]}, None)
    """
    norm = None
    if algo.observation_norm is not None:
        loc, scale = algo.observation_norm
        norm = {"loc": loc.tolist(), "scale": scale.tolist()}
    return {
        "algorithm": algo.name,
        "hyperparameters": algo.hyperparameters,
        "observation_spec": spec_to_dict(algo.observation_spec),
        "action_spec": spec_to_dict(algo.action_spec),
        "observation_norm": norm,
    }


def _norm_from_metadata(meta: Mapping[str, Any]) -> tuple[torch.Tensor, torch.Tensor] | None:
    norm = meta.get("observation_norm")
    if not norm:
        return None
    return torch.tensor(norm["loc"]), torch.tensor(norm["scale"])


def read_metadata(state: Mapping[str, Any], path: str | os.PathLike) -> dict[str, Any]:
    """The metadata of a loaded checkpoint ``state`` (read from ``path``).

    Raises:
        CheckpointError: the state holds no algorithm description (not written by the
            training loop).

    Examples:
        >>> import json
        >>> from torchrl_offline.trainers.metadata import read_metadata
        >>> meta = {"algorithm": "iql", "hyperparameters": {}, "seed": 0}
        >>> read_metadata({"metadata": {"json": json.dumps(meta)}}, "ckpt.pt")["seed"]
        0
    """
    try:
        meta = json.loads(state["metadata"]["json"])
        if "algorithm" not in meta or "hyperparameters" not in meta:
            raise KeyError("algorithm")
    except (KeyError, TypeError, ValueError):
        raise CheckpointError(
            f"Checkpoint {str(path)!r} has no algorithm description; it was not written by train()"
        ) from None
    return meta


def with_new_defaults(saved: Mapping[str, Any]) -> dict[str, Any]:
    """``saved`` metadata with the hyperparameters its algorithm has gained since the
    checkpoint was written filled in at their defaults, so that a checkpoint of an older
    version still resumes when the run's settings are otherwise the same (a new setting
    such as ``check_inputs`` is not a change of settings).

    Examples:
        >>> from torchrl_offline.trainers.metadata import with_new_defaults
        >>> filled = with_new_defaults({"algorithm": "iql", "hyperparameters": {}})
        >>> "expectile" in filled["hyperparameters"]
        True
    """
    try:
        defaults = algorithm_defaults(saved["algorithm"])
    except (AlgorithmError, KeyError):
        return dict(saved)
    hp = dict(saved["hyperparameters"])
    for key, value in defaults.items():
        hp.setdefault(key, _jsonable(value))  # as Algorithm.hyperparameters stores it
    return {**saved, "hyperparameters": hp}


def load_algorithm(checkpoint: str | os.PathLike) -> tuple[Algorithm, int]:
    """Rebuilds the algorithm saved in a checkpoint of
    :func:`~torchrl_offline.trainers.offline.train` (or of fine-tuning), with its weights.

    Args:
        checkpoint: a checkpoint file, or a run directory (its newest checkpoint, in
            ``<dir>/checkpoints`` or ``<dir>`` itself).

    Returns:
        ``(algorithm, step)``: the networks, optimizer state and targets as saved, and
        the gradient step of the checkpoint. Evaluate ``algorithm.policy``.

    Raises:
        CheckpointError: no checkpoint found, or a corrupt or foreign file.

    Examples:
        >>> import tempfile
        >>> from torchrl_offline.trainers.metadata import load_algorithm
        >>> try:
        ...     load_algorithm(tempfile.mkdtemp())
        ... except ValueError as err:
        ...     print(str(err).split(" in ")[0])
        No checkpoint found
    """
    path = _resolve_checkpoint(Path(checkpoint))
    state = load_checkpoint(path)
    meta = read_metadata(state, path)
    algo = build_algorithm(
        meta["algorithm"],
        spec_from_dict(meta["observation_spec"]),
        spec_from_dict(meta["action_spec"]),
        observation_norm=_norm_from_metadata(meta),
        **meta["hyperparameters"],
    )
    try:
        algo.loss.load_state_dict(state["loss_module"])
        algo.optimizer.load_state_dict(state["optimizer"])
    except (KeyError, RuntimeError, ValueError) as err:
        raise CheckpointError(
            f"Checkpoint {str(path)!r} does not fit {meta['algorithm']}: {err}"
        ) from err
    return algo, int(state["step"])


def _resolve_checkpoint(path: Path) -> Path:
    """``path``, or the newest checkpoint of the run directory ``path``."""
    if path.is_dir():
        found = latest_checkpoint(path / "checkpoints") or latest_checkpoint(path)
        if found is None:
            raise CheckpointError(f"No checkpoint found in {str(path)!r}")
        return found
    return path
