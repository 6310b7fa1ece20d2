"""Load a local Minari dataset (HDF5 or Arrow) into a TorchRL replay buffer.

The dataset is read episode by episode through Minari's own storage reader and
written, chunk by chunk, into a memory-mapped :class:`~tensordict.TensorDict` in
TorchRL's key layout. The conversion is cached on disk under a key derived from
the dataset's file contents and the conversion options, so loading the same
dataset again only opens the memory-mapped files. The conversion itself (Minari's
storage, episode by episode, into TorchRL's layout) is :mod:`.minari_reader`; this module
finds the dataset, keys and checks the cache, and returns the replay buffer.

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
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import torch
from torchrl.data.datasets import register_dataset
from torchrl.data.replay_buffers.samplers import Sampler
from torchrl.data.replay_buffers.writers import ImmutableDatasetWriter
from torchrl.envs.transforms import Transform

from torchrl_offline.data.errors import DatasetError, DatasetNotFoundError, reading
from torchrl_offline.data.keys import (
    ACTION,
    EPISODE,
    OBSERVATION,
)
from torchrl_offline.data.minari_reader import (
    CONVERSION_FORMAT_VERSION,
    _convert,
    _one_torch_thread,
    _tolerant_arrow_infos,
)
from torchrl_offline.data.minari_writer import (
    minari_root,
    resolve_minari_path,
)
from torchrl_offline.data.storage import (
    OfflineReplayBuffer,
    default_cache_dir,
    load_transitions,
    make_replay_buffer,
    remove_stale_builds,
    verify_dataset,
)
from torchrl_offline.integrity import MANIFEST, verify_manifest
from torchrl_offline.leftovers import OWNER, owner_tag, remove_stale

__all__ = ["CONVERSION_FORMAT_VERSION", "default_cache_dir", "load_minari", "minari_content_hash"]

_METADATA_FILE = "metadata.json"
_CHUNK_TRANSITIONS = 65_536
_HASH_BLOCK = 1 << 20
#: Temporary files of the content-hash memos (``.<memo>.json.tmp-<owner>``).
_STALE_MEMO = re.compile(rf"\.[0-9a-f]{{32}}\.json\.tmp-{OWNER}")

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
