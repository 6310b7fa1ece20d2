"""A cheap content fingerprint of an offline dataset, to tell whether a run resumes on
the data it was trained on.

The fingerprint covers:

* the number of transitions;
* every entry's key, per-transition shape and dtype;
* the bytes of :data:`SAMPLED_ROWS` rows at a fixed stride (first and last included);
* the dataset's metadata (``replay_buffer.metadata``: the adapters store the full
  content hash of a conversion there, the spaces and reference scores), except entries
  naming where the data lies (``*path*``, ``dataset_id``, ``minari_id``) or came from
  (``source_log``: the log a Minari dataset was written from, with its modification
  time), so a moved or renamed copy of the same data has the same fingerprint.

It reads :data:`SAMPLED_ROWS` rows whatever the size (milliseconds on a memory-mapped
dataset of millions of transitions). A change confined to rows that are not sampled, in
a dataset without a content hash in its metadata (e.g. a buffer built by hand with
:func:`~torchrl_offline.data.make_replay_buffer`), is not seen.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from typing import Any

import torch
from tensordict import TensorDictBase

__all__ = ["SAMPLED_ROWS", "dataset_fingerprint", "fingerprint_difference"]

#: Rows read by :func:`dataset_fingerprint`, at a fixed stride over the dataset.
SAMPLED_ROWS = 64
_LOCATION_KEYS = ("dataset_id", "minari_id", "source_log")


def _raw_bytes(tensor: torch.Tensor) -> bytes:
    dense = torch.empty(tensor.shape, dtype=tensor.dtype).copy_(tensor.detach().cpu())
    return dense.reshape(-1).view(torch.uint8).numpy().tobytes()


def _content_metadata(metadata: Mapping[str, Any]) -> dict[str, Any]:
    return {
        key: value
        for key, value in metadata.items()
        if "path" not in str(key) and key not in _LOCATION_KEYS
    }


def dataset_fingerprint(dataset: Any, *, rows: int = SAMPLED_ROWS) -> dict[str, Any]:
    """The fingerprint of a replay buffer (or a tensordict of transitions).

    Args:
        dataset: a replay buffer (its storage is read, in dataset order, and its
            ``metadata`` if it has one) or a :class:`~tensordict.TensorDictBase`.

    Keyword Args:
        rows: how many rows to hash.

    Returns:
        ``{"num_items", "entries", "sha256"}``: JSON-able, equal for equal data.

    Examples:
        >>> import torch
        >>> from tensordict import TensorDict
        >>> from torchrl_offline.data.fingerprint import dataset_fingerprint
        >>> td = TensorDict({"observation": torch.arange(10.0).unsqueeze(-1)}, [10])
        >>> fp = dataset_fingerprint(td)
        >>> fp["num_items"], fp["entries"]
        (10, ['observation:(1,):torch.float32'])
        >>> fp == dataset_fingerprint(td.clone())
        True
    """
    storage = dataset if isinstance(dataset, TensorDictBase) else dataset.storage
    n = len(storage)
    info: dict[str, Any] = {"num_items": n, "entries": []}
    sha = hashlib.sha256()
    if n:
        index = torch.linspace(0, n - 1, steps=min(int(rows), n)).round().long().unique()
        sample = storage[index]
        if isinstance(sample, TensorDictBase):
            leaves = sorted(sample.items(True, True), key=lambda kv: str(kv[0]))
            for key, value in leaves:
                entry = f"{'.'.join(key) if isinstance(key, tuple) else key}"
                info["entries"].append(f"{entry}:{tuple(value.shape[1:])}:{value.dtype}")
                sha.update(entry.encode())
                sha.update(_raw_bytes(value))
        elif isinstance(sample, torch.Tensor):
            sha.update(_raw_bytes(sample))
    metadata = getattr(dataset, "metadata", None)
    if isinstance(metadata, Mapping):
        content = _content_metadata(metadata)
        sha.update(json.dumps(content, sort_keys=True, default=str).encode())
    info["sha256"] = sha.hexdigest()
    return info


def fingerprint_difference(saved: Mapping[str, Any], current: Mapping[str, Any]) -> str | None:
    """What differs between two fingerprints, in words, or ``None`` when they are equal.

    Examples:
        >>> from torchrl_offline.data.fingerprint import fingerprint_difference
        >>> fingerprint_difference({"num_items": 10}, {"num_items": 12})
        'dataset of 10 transitions vs 12'
    """
    if saved.get("num_items") != current.get("num_items"):
        return f"dataset of {saved.get('num_items')} transitions vs {current.get('num_items')}"
    if saved.get("entries") != current.get("entries"):
        a, b = set(saved.get("entries") or ()), set(current.get("entries") or ())
        only = sorted(a - b)[:3], sorted(b - a)[:3]
        return f"dataset entries {only[0]} vs {only[1]}"
    if saved.get("sha256") != current.get("sha256"):
        return (
            f"dataset content (same size, {saved.get('num_items')} transitions, but other values "
            "in the sampled rows or other metadata)"
        )
    return None
