"""What a run directory says about its run: for its figure, and to group runs by config.

When a run starts, :class:`~torchrl_offline.trainers.run.RunBuilder` adds an ``info``
entry to the run's ``run.json`` (:func:`record_run_info`):

* ``algorithm`` (the resolved name, e.g. ``discrete_iql``), ``seed``, ``total_steps``;
* ``dataset``: the dataset's name (its Minari id, or the log file's name), if known;
* ``behaviour_return``: the mean episode return of the dataset (the level of the data's
  behaviour policy, drawn as a line in the figures), when it has episodes;
* ``reference``: ``[ref_min_score, ref_max_score]`` for normalized scores, if known;
* ``eval_env`` and ``eval_episodes``: where and how the policy is evaluated;
* ``config``: what makes two runs the same experiment but for the seed: the run's kind,
  algorithm and hyperparameters, the spaces, observation normalisation, the dataset's
  content fingerprint, the batch size (and the online settings of fine-tuning).

:func:`read_run_info` reads it back (an empty ``info`` for a directory without one);
:func:`config_key` is equal for runs of one config, e.g. seeds of one experiment.

Examples:
    >>> import tempfile
    >>> from pathlib import Path
    >>> from torchrl_offline.trainers.run_dir import claim_run_directory
    >>> from torchrl_offline.trainers.run_info import config_key, read_run_info, record_run_info
    >>> out = Path(tempfile.mkdtemp())
    >>> with claim_run_directory(out, kind="train", algorithm="iql"):
    ...     record_run_info(out, {"seed": 1, "config": {"algorithm": "iql"}})
    ...     info = read_run_info(out)
    >>> info["kind"], info["seed"], config_key(info) == config_key({**info, "seed": 2})
    ('train', 1, True)
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch

from torchrl_offline.atomic import replace_file
from torchrl_offline.data.keys import EPISODE, REWARD
from torchrl_offline.data.stats import iter_chunks, stored_transitions
from torchrl_offline.trainers.run_dir import RUN_MARKER, read_marker

__all__ = [
    "behaviour_return",
    "config_key",
    "dataset_summary",
    "env_id",
    "read_run_info",
    "record_run_info",
    "run_config",
]


def behaviour_return(dataset: Any) -> float | None:
    """The mean episode return of ``dataset`` (its episodes: the contiguous blocks of its
    ``episode`` entry, an unfinished last one included), or ``None`` without episodes.

    Examples:
        >>> import torch
        >>> from tensordict import TensorDict
        >>> from torchrl_offline.trainers.run_info import behaviour_return
        >>> td = TensorDict({"episode": torch.tensor([0, 0, 1, 1, 1]),
        ...                  ("next", "reward"): torch.ones(5, 1)}, [5])
        >>> behaviour_return(td)
        2.5
    """
    try:
        td = stored_transitions(dataset)
    except TypeError:
        return None
    if td.shape[0] == 0 or EPISODE not in td.keys() or REWARD not in td.keys(True):
        return None
    total, episodes, last = 0.0, 0, None
    for _, chunk in iter_chunks(td.select(EPISODE, REWARD)):
        ids = torch.unique_consecutive(chunk.get(EPISODE).reshape(-1))
        episodes += ids.numel() - int(last is not None and bool(ids[0] == last))
        last = ids[-1]
        total += float(chunk.get(REWARD).to(torch.float64).sum())
    return total / episodes


def dataset_summary(dataset: Any) -> dict[str, Any]:
    """``dataset``'s name, behaviour return and reference returns, as :func:`record_run_info`
    stores them (``None`` where unknown)."""
    meta = getattr(dataset, "metadata", None) or {}
    name = meta.get("dataset_id") or meta.get("minari_id")
    if not name and meta.get("source_path"):
        name = Path(str(meta["source_path"])).name
    lo, hi = meta.get("ref_min_score"), meta.get("ref_max_score")
    return {
        "dataset": str(name) if name else None,
        "behaviour_return": behaviour_return(dataset),
        "reference": None if lo is None or hi is None else [float(lo), float(hi)],
    }


def env_id(env: Any) -> str | None:
    """The gymnasium id of an evaluation env given as an id or a TorchRL ``GymEnv``
    (possibly transformed), if it has one."""
    if env is None or isinstance(env, str):
        return env
    for candidate in (env, getattr(env, "base_env", None)):
        name = getattr(candidate, "env_name", None)
        if isinstance(name, str):
            return name
    return None


def run_config(kind: str, metadata: Mapping[str, Any]) -> dict[str, Any]:
    """The config of a run (its checkpoints' ``metadata`` but the seed; observation
    statistics reduced to whether observations are normalised)."""
    config = {k: v for k, v in metadata.items() if k != "seed"}
    config["observation_norm"] = bool(config.get("observation_norm"))
    return {"kind": kind, **config}


def config_key(info: Mapping[str, Any]) -> str | None:
    """A string equal for runs of one config (``None`` for a run without a recorded one)."""
    config = info.get("config")
    if not config:
        return None
    return json.dumps(config, sort_keys=True, default=str)


def record_run_info(directory: str | os.PathLike, info: Mapping[str, Any]) -> None:
    """Adds ``info`` to the ``run.json`` of ``directory`` (a run directory this process
    holds), atomically."""
    directory = Path(directory)
    marker = read_marker(directory)
    if marker is None:
        return  # not claimed by claim_run_directory: nothing of ours to describe
    marker = {**marker, "info": dict(info)}
    data = (json.dumps(marker, indent=1, default=str) + "\n").encode()
    replace_file(directory / RUN_MARKER, lambda f: f.write(data))


def read_run_info(directory: str | os.PathLike) -> dict[str, Any]:
    """The ``info`` of a run directory, with its ``kind``; ``{}`` when it has none."""
    marker = read_marker(Path(directory)) or {}
    info = marker.get("info")
    if not isinstance(info, dict):
        return {}
    return {"kind": marker.get("kind"), **info}
