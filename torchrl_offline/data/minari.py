"""Load a local Minari dataset (HDF5 or Arrow) into a TorchRL replay buffer.

The dataset is read episode by episode through Minari's own storage reader and
written, chunk by chunk, into a memory-mapped :class:`~tensordict.TensorDict` in
TorchRL's key layout. The conversion is cached on disk under a key derived from
the dataset's file contents and the conversion options, so loading the same
dataset again only opens the memory-mapped files.

Importing this module registers the ``"minari-local"`` prefix in TorchRL's
dataset registry, so ``torchrl.data.datasets.load_dataset("minari-local:<id>")``
returns the same buffer as :func:`load_minari`.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import re
from collections import defaultdict
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import gymnasium as gym
import numpy as np
import torch
from tensordict import TensorDict
from torchrl.data.datasets import register_dataset
from torchrl.data.replay_buffers.samplers import Sampler
from torchrl.data.replay_buffers.writers import ImmutableDatasetWriter
from torchrl.envs.transforms import Transform

from torchrl_offline.data.errors import DatasetError, DatasetNotFoundError, reading
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
from torchrl_offline.data.minari_writer import (
    BEHAVIOR_INFO_KEYS,
    minari_root,
    resolve_minari_path,
)
from torchrl_offline.data.storage import (
    OfflineReplayBuffer,
    allocate_transitions,
    atomic_directory,
    default_cache_dir,
    load_transitions,
    make_replay_buffer,
    remove_stale_builds,
    verify_dataset,
    write_complete_marker,
)
from torchrl_offline.data.validate import validate_transitions
from torchrl_offline.integrity import MANIFEST, verify_manifest
from torchrl_offline.leftovers import OWNER, owner_tag, remove_stale

__all__ = ["CONVERSION_FORMAT_VERSION", "default_cache_dir", "load_minari", "minari_content_hash"]

#: Bumped whenever the converted layout changes, so older caches are not reused.
#: 2: the last step of an episode that ends with neither flag set is stored truncated.
CONVERSION_FORMAT_VERSION = 2

_METADATA_FILE = "metadata.json"
_CHUNK_TRANSITIONS = 65_536
_HASH_BLOCK = 1 << 20
#: Temporary files of the content-hash memos (``.<memo>.json.tmp-<owner>``).
_STALE_MEMO = re.compile(rf"\.[0-9a-f]{{32}}\.json\.tmp-{OWNER}")

Key = tuple[str, ...]

logger = logging.getLogger("torchrl_offline")


def minari_content_hash(data_path: str | os.PathLike) -> str:
    """SHA-256 over the names, sizes and bytes of every file in a Minari ``data/`` folder.

    Args:
        data_path: the dataset's ``data/`` folder.

    Returns:
        The hex digest; it changes whenever any file under ``data_path`` changes.
    """
    data_path = Path(data_path)
    digest = hashlib.sha256()
    files = sorted(p for p in data_path.rglob("*") if p.is_file())
    for file in files:
        rel = file.relative_to(data_path).as_posix()
        digest.update(f"{rel}\0{file.stat().st_size}\0".encode())
        with open(file, "rb") as f:
            while block := f.read(_HASH_BLOCK):
                digest.update(block)
    return digest.hexdigest()


def _file_signature(data_path: Path) -> list[list[Any]]:
    """(name, size, mtime_ns, inode) of every file under ``data_path``, sorted by name."""
    out = []
    for file in sorted(p for p in data_path.rglob("*") if p.is_file()):
        st = file.stat()
        out.append([file.relative_to(data_path).as_posix(), st.st_size, st.st_mtime_ns, st.st_ino])
    return out


def _memoized_content_hash(data_path: Path, cache_root: Path) -> str:
    """:func:`minari_content_hash`, re-read from a memo while no file's size, mtime or inode moved.

    Hashing a large dataset takes seconds; this makes loading a cached conversion cost a
    ``stat`` per file. Any write to the dataset changes a file's mtime, which forces a rehash.
    """
    data_path = data_path.resolve()
    name = hashlib.sha256(str(data_path).encode()).hexdigest()[:32]
    memo = cache_root / "content-hashes" / f"{name}.json"
    signature = _file_signature(data_path)
    try:
        saved = json.loads(memo.read_text())
        if saved["files"] == signature:
            return str(saved["sha256"])
    except (OSError, ValueError, KeyError, TypeError):
        pass
    digest = minari_content_hash(data_path)
    if _file_signature(data_path) == signature:  # unchanged while it was read
        memo.parent.mkdir(parents=True, exist_ok=True)
        remove_stale(memo.parent, _STALE_MEMO)  # of killed processes
        tmp = memo.with_name(f".{memo.name}.tmp-{owner_tag()}")
        tmp.write_text(
            json.dumps({"data_path": str(data_path), "files": signature, "sha256": digest})
        )
        os.replace(tmp, memo)
    return digest


@contextlib.contextmanager
def _minari_datasets_path(root: Path) -> Iterator[None]:
    """Point ``$MINARI_DATASETS_PATH`` at ``root`` for the duration of a Minari call."""
    previous = os.environ.get("MINARI_DATASETS_PATH")
    os.environ["MINARI_DATASETS_PATH"] = str(root)
    try:
        yield
    finally:
        if previous is None:
            os.environ.pop("MINARI_DATASETS_PATH", None)
        else:
            os.environ["MINARI_DATASETS_PATH"] = previous


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


def _find_dataset(
    dataset_id_or_path: str | os.PathLike, root: str | os.PathLike | None, download: bool
) -> Path:
    """Return the dataset folder (the one holding ``data/``), downloading only if asked."""
    folder = resolve_minari_path(dataset_id_or_path, root)
    if (folder / "data" / _METADATA_FILE).is_file():
        return folder
    text = str(dataset_id_or_path)
    is_id = not (
        isinstance(dataset_id_or_path, os.PathLike)
        or text.startswith((".", "~", os.sep))
        or Path(text).exists()
    )
    if download and is_id:
        import minari

        with _minari_datasets_path(minari_root(root)):
            minari.download_dataset(text)
        if (folder / "data" / _METADATA_FILE).is_file():
            return folder
    if is_id:
        origin = (
            "the root argument"
            if root is not None
            else "$MINARI_DATASETS_PATH"
            if os.environ.get("MINARI_DATASETS_PATH")
            else "the default root ~/.minari/datasets"
        )
        where = f"under the Minari root {minari_root(root)} (from {origin})"
    else:
        where = "at the given path"
    hint = "" if download or not is_id else " Pass download=True to download it with Minari."
    raise DatasetNotFoundError(
        f"Minari dataset {text!r} not found {where}: looked for "
        f"{folder / 'data' / _METADATA_FILE}.{hint}"
    )


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
    spec[REWARD] = ((1,), dtype)
    for key in (DONE, TERMINATED, TRUNCATED):
        spec[key] = ((1,), torch.bool)
    spec[(EPISODE,)] = ((), torch.int64)
    for name in behavior_keys:
        spec[(name,)] = ((), dtype)
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


def _check_source(folder: Path) -> None:
    """Check the file sizes of a Minari dataset this package wrote against its manifest."""
    if not (folder / MANIFEST).is_file():
        return  # not written by torchrl_offline (e.g. downloaded): Minari's files only
    try:
        verify_manifest(folder, error=DatasetError)
    except DatasetError as err:
        raise DatasetError(
            f"The Minari dataset at {folder} is damaged: {err}. Write or collect it again "
            f"(if it was changed on purpose, delete {folder / MANIFEST})",
            field="manifest",
        ) from err


def _usable(target: Path) -> bool:
    """Whether the cache entry ``target`` is finished and its files have their recorded
    sizes; a damaged entry is logged (it is then converted again)."""
    if not target.exists():
        return False
    try:
        verify_dataset(target)
    except DatasetError as err:
        logger.warning(
            "Cache entry %s cannot be used (%s); converting the dataset again", target, err
        )
        return False
    return True


def _cache_entry(cache_dir: Path, dataset_id: str, key: str) -> Path:
    slug = re.sub(r"[^A-Za-z0-9._-]+", "_", dataset_id).strip("._") or "dataset"
    return cache_dir / "minari" / f"{slug}-{key[:24]}"


def load_minari(
    dataset_id_or_path: str | os.PathLike,
    *,
    root: str | os.PathLike | None = None,
    batch_size: int | None = 256,
    sampler: Sampler | None = None,
    transform: Transform | None = None,
    dtype: torch.dtype = torch.float32,
    one_hot_actions: bool = False,
    cache_dir: str | os.PathLike | None = None,
    download: bool = False,
    info_keys: Sequence[str] = (),
    chunk_transitions: int = _CHUNK_TRANSITIONS,
    **kwargs: Any,
) -> OfflineReplayBuffer:
    """Load a local Minari dataset as a replay buffer over memory-mapped storage.

    The buffer holds one entry per transition, in dataset order (episode after
    episode, step after step), so ``buffer.storage[i]`` is transition ``i``. Keys:
    ``observation``, ``action``, ``episode``, ``("next", "observation")``,
    ``("next", "reward")`` ``[N, 1]``, ``("next", "done")``, ``("next", "terminated")``
    and ``("next", "truncated")`` ``[N, 1]``, plus ``action_log_prob`` /
    ``action_prob`` ``[N]`` when the dataset's ``infos`` hold them. Dict and Tuple
    observation spaces become nested keys (Tuple entries are named ``"0"``,
    ``"1"``, ...). Floating data is cast to ``dtype``; integer data keeps its dtype;
    Discrete actions are int64 values of the space (one-hot int64 on request).
    Flags are Minari's, except that an episode whose last step has neither flag set
    (an episode cut short) gets its last step truncated, as Minari's own
    ``DataCollector`` does, so every episode boundary is a ``done`` (the count is
    ``metadata["truncated_unflagged_ends"]``).

    No network is used unless ``download=True``. The converted data is cached under
    ``cache_dir``, keyed by a hash of the files under the dataset's ``data/`` folder,
    the conversion options and the conversion format version: an unchanged dataset
    is reused, a changed one is converted again (the hash itself is recomputed only
    when a file's size, modification time or inode changed). The conversion reads a bounded
    number of transitions at a time, validates them and writes them into a
    memory-mapped file inside a temporary directory renamed into place only at the
    end, so an interrupted conversion leaves nothing that loads. A finished entry ends
    with a manifest of its files; every load compares their sizes with it, and an entry
    that fails (a truncated or missing file, no manifest) is converted again, with a
    logged warning. ``verify_dataset(buffer.path, full=True)`` or ``torchrl-offline
    verify`` hashes every byte. A Minari dataset written by this package carries a
    manifest too, checked the same way (a damaged one is an error). The conversion runs
    torch on a single thread (it is memory-bound; see ``_one_torch_thread``) and
    restores the thread count afterwards.

    Args:
        dataset_id_or_path: a Minari dataset id (resolved under ``root``), or the
            path of a dataset folder (the one holding ``data/``, or ``data/`` itself).
        root: Minari datasets root; default ``$MINARI_DATASETS_PATH``, else
            ``~/.minari/datasets``.
        batch_size: default number of transitions per :meth:`sample`.
        sampler: a TorchRL sampler; uniform with replacement by default.
        transform: a TorchRL transform applied to sampled batches.
        dtype: floating dtype of observations, actions, rewards and behaviour
            probabilities.
        one_hot_actions: store Discrete actions one-hot (``[N, n]``, int64).
        cache_dir: where conversions are cached; default ``$TORCHRL_OFFLINE_CACHE``,
            else ``~/.cache/torchrl_offline``.
        download: download a dataset id missing locally with Minari's own downloader.
        info_keys: more per-step fields to read from the episodes' ``infos``, stored
            under their own name (for example ``"policy_id"``; ``"group/entry"`` names an
            entry of nested infos, stored under the nested key ``("group", "entry")``). As
            for the behaviour fields, entry ``t + 1`` of ``infos`` belongs to transition
            ``t``.
        chunk_transitions: about how many transitions are read into memory at once.
        **kwargs: forwarded to :class:`~torchrl.data.TensorDictReplayBuffer` (a
            read-only :class:`~torchrl.data.replay_buffers.ImmutableDatasetWriter` by
            default, so the cached files are never overwritten).

    Returns:
        An :class:`~torchrl_offline.data.storage.OfflineReplayBuffer` whose
        ``metadata`` holds ``dataset_id``, ``source_path``, ``data_format``, the
        serialized ``observation_space`` / ``action_space``
        (:func:`minari.serialization.deserialize_space` restores them), ``env_spec``,
        ``ref_min_score`` / ``ref_max_score`` when the dataset has them, and the
        conversion options.

    Raises:
        DatasetNotFoundError: the dataset is not on disk (the message says where it looked).
        DatasetError: invalid data (non-finite values, an action outside the action
            space, ``terminated`` and ``truncated`` both set, inconsistent lengths),
            naming the field and the first offending transition index.
            Also a Minari dataset written by this package whose files no longer
            match its manifest (naming the file and the expected and actual size).

    Examples:
        >>> import gymnasium as gym, numpy as np, torch
        >>> from tensordict import TensorDict
        >>> from torchrl_offline.data.minari_writer import write_minari
        >>> from torchrl_offline.data.minari import load_minari
        >>> n = 6
        >>> steps = torch.arange(n + 1, dtype=torch.float32)[:, None].expand(n + 1, 3)
        >>> td = TensorDict({
        ...     "observation": steps[:-1],
        ...     ("next", "observation"): steps[1:],
        ...     "action": torch.zeros(n, 1),
        ...     ("next", "reward"): torch.ones(n, 1),
        ...     ("next", "terminated"): torch.arange(n)[:, None] == n - 1,
        ...     ("next", "truncated"): torch.zeros(n, 1, dtype=torch.bool),
        ...     "episode": torch.zeros(n, dtype=torch.int64),
        ... }, batch_size=[n])
        >>> box = gym.spaces.Box(-10, 10, (3,))
        >>> path = write_minari(td, "toy/doc-v0", observation_space=box,
        ...                     action_space=gym.spaces.Box(-1, 1, (1,)))
        >>> buffer = load_minari("toy/doc-v0")
        >>> len(buffer), buffer.storage[2]["observation"].tolist()
        (6, [2.0, 2.0, 2.0])
        >>> buffer.sample()["next", "reward"].shape
        torch.Size([256, 1])
    """
    if not (isinstance(dtype, torch.dtype) and dtype.is_floating_point):
        raise ValueError(f"dtype must be a floating torch dtype, got {dtype!r}")
    if chunk_transitions < 1:
        raise ValueError(f"chunk_transitions must be positive, got {chunk_transitions}")
    info_keys = [str(k) for k in info_keys]
    reserved = {OBSERVATION, ACTION, EPISODE, "next", "index"}
    if clash := reserved.intersection(k.split("/")[0] for k in info_keys):
        raise ValueError(f"info_keys may not use the reserved key(s) {sorted(clash)}")
    folder = _find_dataset(dataset_id_or_path, root, download)
    _check_source(folder)
    cache_root = Path(cache_dir).expanduser() if cache_dir is not None else default_cache_dir()
    content_hash = _memoized_content_hash(folder / "data", cache_root)
    options = {
        "format_version": CONVERSION_FORMAT_VERSION,
        "content_hash": content_hash,
        "dtype": str(dtype),
        "one_hot_actions": bool(one_hot_actions),
        "info_keys": list(info_keys),
    }
    key = hashlib.sha256(json.dumps(options, sort_keys=True).encode()).hexdigest()
    with reading(folder / "data" / _METADATA_FILE, "Minari metadata file"):
        with open(folder / "data" / _METADATA_FILE) as f:
            meta = json.load(f)
        if not isinstance(meta, dict):
            raise ValueError(f"a JSON object was expected, got {type(meta).__name__}")
    dataset_id = str(meta.get("dataset_id") or folder.name)
    target = _cache_entry(cache_root, dataset_id, key)
    remove_stale_builds(target.parent)
    if not _usable(target):
        with _one_torch_thread(), _tolerant_arrow_infos():
            _convert(
                folder,
                target,
                content_hash=content_hash,
                dtype=dtype,
                one_hot_actions=bool(one_hot_actions),
                info_keys=list(info_keys),
                chunk_transitions=chunk_transitions,
            )
    transitions, metadata = load_transitions(target)
    # Same memory-mapped storage, seen through plain tensors: indexing a
    # MemoryMappedTensor goes through a Python-level __getitem__ that costs about
    # 10% of the sampling throughput, for no benefit on a read-only dataset.
    transitions = transitions.apply(lambda t: t.as_subclass(torch.Tensor))
    # The same content may live at another path than when it was first converted.
    metadata["source_path"] = str(folder)
    kwargs.setdefault("writer", ImmutableDatasetWriter())
    return make_replay_buffer(
        transitions,
        batch_size=batch_size,
        sampler=sampler,
        transform=transform,
        metadata=metadata,
        path=target,
        **kwargs,
    )


register_dataset("minari-local", load_minari, replace=True)
