"""Convert a local Minari dataset (HDF5 or Arrow) into TorchRL's memory-mapped layout.

Minari's own storage reader yields the episodes; they are flattened into tensor leaves
(nested ``Dict`` / ``Tuple`` spaces become nested keys), chunked, validated and written
into a finished dataset folder with its metadata.
:func:`~torchrl_offline.data.minari.load_minari` decides when to convert (its cache) and
builds the replay buffer; the reverse direction is :mod:`.minari_writer`.
"""

from __future__ import annotations

import contextlib
from collections import defaultdict
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import gymnasium as gym
import numpy as np
import torch
from tensordict import TensorDict

from torchrl_offline.data.errors import DatasetError, reading
from torchrl_offline.data.keys import (
    ACTION,
    DONE,
    EPISODE,
    NEXT_OBSERVATION,
    OBSERVATION,
    REWARD,
    TERMINATED,
    TRUNCATED,
    key_name,
)
from torchrl_offline.data.minari_writer import BEHAVIOR_INFO_KEYS
from torchrl_offline.data.storage import (
    allocate_transitions,
    atomic_directory,
    step_layout,
    write_complete_marker,
)
from torchrl_offline.data.validate import validate_transitions

__all__ = ["CONVERSION_FORMAT_VERSION"]

#: Bumped whenever the converted layout changes, so older caches are not reused.
#: 2: the last step of an episode that ends with neither flag set is stored truncated.
CONVERSION_FORMAT_VERSION = 2

Key = tuple[str, ...]


@contextlib.contextmanager
def _one_torch_thread() -> Iterator[None]:
    """Run torch on one intra-op thread, restoring the previous setting afterwards.

    The conversion is memory-bound, so a second thread gains little; on a busy machine
    it costs a lot: converting 200k transitions took 5-25 s with 2 threads instead of
    about 1 s with 1 thread on a 2-core machine shared with other jobs (threads of a
    parallel region waiting for each other while the OS schedules other work).
    """
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(previous)


def _decode_arrow_info(values: Any) -> dict[str, Any]:
    """Minari's Arrow ``infos`` decoder, also reading 1-D info arrays.

    Minari 0.5.4 writes the per-step shape of an info array as field metadata and parses
    it back with ``int()``; the shape of scalar steps is the empty string, so any dataset
    with an info written as a 1-D numpy array (e.g. ``infos={"x": np.zeros(T + 1)}``)
    cannot be read back by Minari itself (``invalid literal for int()``).
    """
    import pyarrow as pa

    out: dict[str, Any] = {}
    for i, field in enumerate(values.type):
        column = values.field(i)
        if isinstance(column, pa.StructArray):
            out[field.name] = _decode_arrow_info(column)
            continue
        value = np.stack(column.to_numpy(zero_copy_only=False))
        shape = (field.metadata or {}).get(b"shape")
        if shape:
            value = value.reshape(len(value), *(int(d) for d in shape.split(b",")))
        out[field.name] = value
    return out


@contextlib.contextmanager
def _tolerant_arrow_infos() -> Iterator[None]:
    """Use :func:`_decode_arrow_info` in Minari's Arrow reader for the duration of a read."""
    from minari.dataset._storages import arrow_storage

    previous = arrow_storage._decode_info
    arrow_storage._decode_info = _decode_arrow_info
    try:
        yield
    finally:
        arrow_storage._decode_info = previous


def _torch_dtype(np_dtype: np.dtype, float_dtype: torch.dtype) -> torch.dtype:
    np_dtype = np.dtype(np_dtype)
    if np.issubdtype(np_dtype, np.floating):
        return float_dtype
    return torch.from_numpy(np.zeros((), dtype=np_dtype)).dtype


def _space_leaves(
    space: gym.Space, prefix: Key, float_dtype: torch.dtype
) -> list[tuple[Key, tuple[int, ...], torch.dtype]]:
    """Per-step (key, shape, dtype) of every tensor leaf of ``space`` under ``prefix``."""
    if isinstance(space, gym.spaces.Dict):
        out = []
        for name, sub in space.spaces.items():
            out += _space_leaves(sub, (*prefix, str(name)), float_dtype)
        return out
    if isinstance(space, gym.spaces.Tuple):
        out = []
        for i, sub in enumerate(space.spaces):
            out += _space_leaves(sub, (*prefix, str(i)), float_dtype)
        return out
    if isinstance(space, gym.spaces.Discrete):
        return [(prefix, (), torch.int64)]
    if isinstance(space, gym.spaces.MultiDiscrete):
        return [(prefix, tuple(space.shape), torch.int64)]
    if isinstance(space, (gym.spaces.Box, gym.spaces.MultiBinary)):
        return [(prefix, tuple(space.shape), _torch_dtype(space.dtype, float_dtype))]
    raise DatasetError(
        f"Field {key_name(prefix)!r}: the {type(space).__name__} space is not supported "
        "(only Box, Discrete, MultiDiscrete, MultiBinary and Dict/Tuple of these)",
        field=key_name(prefix),
    )


def _value_leaves(value: Any, space: gym.Space, prefix: Key) -> Iterator[tuple[Key, np.ndarray]]:
    """Walk a decoded Minari value alongside its space, yielding (key, array) leaves."""
    if isinstance(space, gym.spaces.Dict):
        for name, sub in space.spaces.items():
            yield from _value_leaves(value[name], sub, (*prefix, str(name)))
    elif isinstance(space, gym.spaces.Tuple):
        for i, sub in enumerate(space.spaces):
            yield from _value_leaves(value[i], sub, (*prefix, str(i)))
    else:
        yield prefix, np.asarray(value)


def _info_value(infos: dict, name: str) -> Any:
    """The ``infos`` entry named ``name`` (``"group/entry"`` for nested infos), or None."""
    value: Any = infos
    for part in name.split("/"):
        if not isinstance(value, dict) or part not in value:
            return None
        value = value[part]
    return value


def _info_key(name: str) -> Key:
    """Where an ``infos`` entry is stored: ``"policy_id"`` -> ``("policy_id",)``, a nested
    ``"group/entry"`` -> ``("group", "entry")``."""
    return tuple(name.split("/"))


def _episode_lengths(storage: Any) -> list[int]:
    """Per-episode step counts from Minari's episode metadata (read in one pass, no step data)."""
    n = int(storage.total_episodes)
    lengths = []
    for meta in storage.get_episode_metadata(range(n)):
        if "total_steps" not in meta:
            # Very old datasets: fall back to reading the rewards of every episode.
            return [len(ep["rewards"]) for ep in storage.get_episodes(range(n))]
        lengths.append(int(meta["total_steps"]))
    return lengths


def _chunks(lengths: list[int], size: int) -> Iterator[tuple[list[int], int, int]]:
    """Group consecutive episodes into chunks of about ``size`` transitions.

    Yields:
        (episode indices, first transition, end transition) of each chunk.
    """
    start = stop = 0
    group: list[int] = []
    for ep, length in enumerate(lengths):
        group.append(ep)
        stop += length
        if stop - start >= size:
            yield group, start, stop
            group, start = [], stop
    if group:
        yield group, start, stop


def _episodes(storage: Any, group: list[int], folder: Path) -> Iterator[dict]:
    """Minari's episodes of ``group``, read lazily; a damaged file raises a
    :class:`DatasetError` naming the dataset."""
    with reading(folder / "data", "Minari dataset"):
        yield from storage.get_episodes(group)


def _read_chunk(
    episodes: Iterator[dict],
    expected: list[int],
    episode_ids: list[int],
    *,
    observation_space: gym.Space,
    action_space: gym.Space,
    info_keys: list[str],
    spec: dict[Key, tuple[tuple[int, ...], torch.dtype]],
    start: int,
    unflagged_ends: list[int],
) -> TensorDict:
    """Read a group of episodes into one in-memory tensordict (TorchRL layout, index actions).

    The ids of episodes whose last step has neither flag set are appended to
    ``unflagged_ends`` (their last step is stored truncated).
    """
    columns: dict[Key, list[np.ndarray]] = defaultdict(list)
    offset = start
    for ep, length, ep_id in zip(episodes, expected, episode_ids):
        steps = len(ep["rewards"])

        def fail(field: str, n: int, want: int, ep_id: int = ep_id, at: int = offset) -> None:
            raise DatasetError(
                f"Field {field!r} of Minari episode {ep_id} (transitions from index {at}) has "
                f"{n} entries, expected {want}",
                field=field,
                index=at,
            )

        if steps != length:
            fail("rewards", steps, length)
        for key, array in _value_leaves(ep["observations"], observation_space, ()):
            if len(array) != steps + 1:
                fail(key_name(("observations", *key)), len(array), steps + 1)
            columns[(OBSERVATION, *key)].append(array[:-1])
            columns[(*NEXT_OBSERVATION, *key)].append(array[1:])
        for key, array in _value_leaves(ep["actions"], action_space, ()):
            if len(array) != steps:
                fail(key_name(("actions", *key)), len(array), steps)
            columns[(ACTION, *key)].append(array)
        for name, key in (("rewards", REWARD), ("terminations", TERMINATED)):
            array = np.asarray(ep[name]).reshape(-1)
            if len(array) != steps:
                fail(name, len(array), steps)
            columns[key].append(array)
        truncations = np.asarray(ep["truncations"]).reshape(-1)
        if len(truncations) != steps:
            fail("truncations", len(truncations), steps)
        if steps and not (truncations[-1] or columns[TERMINATED][-1][-1]):
            # An episode that stops without a flag was cut: it is truncated, as Minari's own
            # DataCollector marks an unfinished episode. Left unflagged, the boundary would
            # be invisible to anything that follows done flags (n-step returns, GAE, ...).
            truncations = truncations.astype(bool, copy=True)
            truncations[-1] = True
            unflagged_ends.append(ep_id)
        columns[TRUNCATED].append(truncations)
        infos = ep.get("infos") or {}
        for name in info_keys:
            if (found := _info_value(infos, name)) is None:
                raise DatasetError(
                    f"Field 'infos/{name}' is missing from Minari episode {ep_id} (transitions "
                    f"from index {offset}) but present in episode 0",
                    field=name,
                    index=offset,
                )
            values = np.asarray(found)
            if len(values) != steps + 1:
                fail(f"infos/{name}", len(values), steps + 1)
            # infos hold the reset info first: the entry of actions[t] is at t + 1.
            columns[_info_key(name)].append(values[1:])
        columns[(EPISODE,)].append(np.full(steps, ep_id, dtype=np.int64))
        offset += steps
    if offset - start != sum(expected):
        raise DatasetError(
            f"Minari's reader returned fewer episodes than requested (episodes "
            f"{episode_ids[0]} to {episode_ids[-1]}, transitions from index {start})",
            index=offset,
        )

    n = offset - start
    chunk = TensorDict(batch_size=[n])
    for key, (shape, dtype) in spec.items():
        if key == DONE:
            continue
        parts = columns[key]
        array = np.concatenate(parts) if len(parts) > 1 else np.array(parts[0], copy=True)
        tensor = torch.from_numpy(array).to(dtype)
        chunk.set(key, tensor.reshape(n, *shape))
    chunk.set(DONE, chunk.get(TERMINATED) | chunk.get(TRUNCATED))
    return chunk


def _to_one_hot(action: torch.Tensor, space: gym.spaces.Discrete) -> torch.Tensor:
    return torch.nn.functional.one_hot(action - int(space.start), int(space.n)).to(torch.int64)


def _convert(
    folder: Path,
    target: Path,
    *,
    content_hash: str,
    dtype: torch.dtype,
    one_hot_actions: bool,
    info_keys: list[str],
    chunk_transitions: int,
) -> None:
    """Convert the Minari dataset in ``folder`` into a finished memory-mapped dataset ``target``."""
    from minari.dataset.minari_storage import MinariStorage
    from minari.serialization import serialize_space

    with reading(folder / "data", "Minari dataset"):
        storage = MinariStorage.read(folder / "data")
        observation_space, action_space = storage.observation_space, storage.action_space
        raw = storage.metadata
        lengths = _episode_lengths(storage)
        # Exhaust the reader (it closes its file), then look at the episode's infos.
        (first,) = storage.get_episodes([0]) if lengths else ({},)
    if one_hot_actions and not isinstance(action_space, gym.spaces.Discrete):
        raise ValueError(
            f"one_hot_actions=True needs a Discrete action space, the dataset has {action_space}"
        )
    total = sum(lengths)
    if total == 0:
        raise DatasetError(f"The Minari dataset at {folder} holds no transition", field="rewards")

    first_infos = first.get("infos") or {}
    behavior_keys = [k for k in BEHAVIOR_INFO_KEYS if k in first_infos and k not in info_keys]
    for name in info_keys:
        found = _info_value(first_infos, name)
        if found is None:
            raise DatasetError(
                f"Field 'infos/{name}' requested by info_keys is not in Minari episode 0",
                field=name,
                index=0,
            )
        if isinstance(found, dict):
            raise DatasetError(
                f"Field 'infos/{name}' requested by info_keys is a group of infos "
                f"({sorted(found)}); name one of its entries, e.g. '{name}/{next(iter(found))}'",
                field=name,
                index=0,
            )

    spec: dict[Key, tuple[tuple[int, ...], torch.dtype]] = {}
    for key, shape, leaf_dtype in _space_leaves(observation_space, (OBSERVATION,), dtype):
        spec[key] = (shape, leaf_dtype)
        spec[(*NEXT_OBSERVATION, *key[1:])] = (shape, leaf_dtype)
    for key, shape, leaf_dtype in _space_leaves(action_space, (ACTION,), dtype):
        spec[key] = (shape, leaf_dtype)
    spec.update(step_layout(dtype, behavior_keys))
    for name in info_keys:
        array = np.asarray(_info_value(first_infos, name))
        spec[_info_key(name)] = (tuple(array.shape[1:]), _torch_dtype(array.dtype, dtype))
    stored_spec = dict(spec)
    if one_hot_actions:
        stored_spec[(ACTION,)] = ((int(action_space.n),), torch.int64)

    metadata: dict[str, Any] = {
        "source": "minari",
        "dataset_id": raw.get("dataset_id", folder.name),
        "source_path": str(folder),
        "data_format": raw.get("data_format"),
        "minari_version": raw.get("minari_version"),
        "total_episodes": len(lengths),
        "total_steps": total,
        "observation_space": serialize_space(observation_space),
        "action_space": serialize_space(action_space),
        "env_spec": raw.get("env_spec"),
        "eval_env_spec": raw.get("eval_env_spec"),
        # The log it was written from by ``from_logged(..., minari_id=...)``, if so.
        "source_log": raw.get("torchrl_offline_log"),
        "content_hash": content_hash,
        "conversion": {
            "format_version": CONVERSION_FORMAT_VERSION,
            "dtype": str(dtype).replace("torch.", ""),
            "one_hot_actions": one_hot_actions,
        },
        "behavior_keys": behavior_keys,
        "info_keys": list(info_keys),
    }
    for name in ("ref_min_score", "ref_max_score"):
        if raw.get(name) is not None:
            metadata[name] = float(raw[name])

    # An existing target here is incomplete (damaged by hand): replace it. Otherwise, if
    # another process finishes the same conversion first, its result is kept.
    unflagged_ends: list[int] = []
    with atomic_directory(target, overwrite=target.exists()) as tmp:
        out = allocate_transitions(stored_spec, total, tmp / "transitions")
        for group, start, stop in _chunks(lengths, chunk_transitions):
            chunk = _read_chunk(
                _episodes(storage, group, folder),
                [lengths[e] for e in group],
                group,
                observation_space=observation_space,
                action_space=action_space,
                info_keys=behavior_keys + info_keys,
                spec=spec,
                start=start,
                unflagged_ends=unflagged_ends,
            )
            validate_transitions(chunk, action_space=action_space, offset=start)
            if one_hot_actions:
                chunk.set(ACTION, _to_one_hot(chunk.get(ACTION), action_space))
            out[start:stop] = chunk
            del chunk
        metadata["truncated_unflagged_ends"] = len(unflagged_ends)
        write_complete_marker(tmp, metadata)
