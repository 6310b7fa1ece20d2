"""Write transitions in TorchRL layout as a Minari dataset (HDF5 or Arrow)."""

from __future__ import annotations

import contextlib
import json
import os
import re
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import gymnasium as gym
import numpy as np
import torch
from tensordict import TensorDictBase

from torchrl_offline.data.errors import DatasetError
from torchrl_offline.data.keys import (
    ACTION,
    ACTION_LOG_PROB,
    ACTION_PROB,
    EPISODE,
    NEXT_OBSERVATION,
    OBSERVATION,
    REWARD,
    TERMINATED,
    TRUNCATED,
)
from torchrl_offline.data.storage import atomic_directory
from torchrl_offline.data.validate import validate_transitions
from torchrl_offline.integrity import MANIFEST, write_manifest
from torchrl_offline.locks import FileLock, lock_file, remove_stale_locks

__all__ = [
    "BEHAVIOR_INFO_KEYS",
    "check_dataset_id",
    "dataset_lock",
    "minari_root",
    "new_dataset_directory",
    "resolve_minari_path",
    "write_minari",
]

#: Per-step behaviour-policy fields stored in a Minari episode's ``infos``.
#: Minari's ``infos`` hold T+1 entries (the reset info, then one per step), so
#: the value for ``actions[t]`` is stored at ``infos[key][t + 1]`` and entry 0 is
#: NaN, the same place a Minari ``DataCollector`` step callback would put it.
BEHAVIOR_INFO_KEYS = (ACTION_LOG_PROB, ACTION_PROB)


def minari_root(root: str | os.PathLike | None = None) -> Path:
    """The Minari datasets root: ``root``, else ``$MINARI_DATASETS_PATH``, else ``~/.minari/datasets``.

    The path is made absolute: Minari 0.5.4 joins a relative root to itself when it
    measures a dataset's size.
    """
    if root is not None:
        return Path(root).expanduser().absolute()
    env = os.environ.get("MINARI_DATASETS_PATH")
    base = Path(env).expanduser() if env else Path.home() / ".minari" / "datasets"
    return base.absolute()


#: One component of a dataset id: a letter or digit, then letters, digits, ``.``, ``_``, ``-``.
_ID_PART = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*$")


def check_dataset_id(dataset_id: str) -> str:
    """Returns ``dataset_id`` if it is a dataset id (``"pendulum/mixed-v0"``), which names a
    folder inside the datasets root and nothing outside it.

    Raises:
        DatasetError: an absolute path, a ``..`` or ``.`` component, an empty component, a
            backslash or a component starting with anything but a letter or digit.

    Examples:
        >>> from torchrl_offline.data.minari_writer import check_dataset_id
        >>> check_dataset_id("pendulum/mixed-v0")
        'pendulum/mixed-v0'
        >>> check_dataset_id("../../etc")  # doctest: +ELLIPSIS
        Traceback (most recent call last):
        ...
        torchrl_offline.data.errors.DatasetError: '../../etc' is not a dataset id...
    """
    text = str(dataset_id)
    parts = text.split("/")
    if not text or text.startswith("/") or not all(_ID_PART.match(p) for p in parts):
        raise DatasetError(
            f"{text!r} is not a dataset id: an id is one or more '/'-separated names of "
            "letters, digits, '.', '_' and '-', each starting with a letter or digit (e.g. "
            "'pendulum/mixed-v0'); no absolute path, '..' or '~'. Use root= (--root) to "
            "choose where datasets are stored",
            field="dataset_id",
        )
    return text


#: What overwriting a dataset replaces (the manifest last); other files of its folder stay.
DATASET_ENTRIES = ("data", MANIFEST)


def new_dataset_directory(
    dataset_id: str, root: str | os.PathLike | None = None, *, overwrite: bool = False
) -> Path:
    """The directory ``<root>/<dataset_id>`` of a dataset about to be written.

    Raises:
        DatasetError: ``dataset_id`` is not an id (:func:`check_dataset_id`), or the
            directory exists and is not a Minari dataset (never replaced).
        FileExistsError: the directory is a dataset and ``overwrite`` is False.
    """
    final = minari_root(root) / check_dataset_id(dataset_id)
    if final.exists() or final.is_symlink():
        is_dataset = not final.is_symlink() and (
            (final / "data" / "metadata.json").is_file()
            or any(final.glob(".replaced-*/data/metadata.json"))  # a replacement cut short
        )
        if not is_dataset:
            raise DatasetError(
                f"{final} exists and is not a Minari dataset (no data/metadata.json); it is "
                "never replaced: choose another id, or remove it yourself",
                field="dataset_id",
            )
        if not overwrite:
            raise FileExistsError(
                f"A Minari dataset already exists at {final}; replace it with overwrite=True "
                "(on the command line: collect --overwrite)"
            )
    return final


def dataset_lock(final: str | os.PathLike) -> FileLock:
    """Locks the dataset folder ``final`` for writing: ``.<name>.lock`` beside it.

    Raises:
        DatasetError: another live process is writing that dataset.
    """
    final = Path(final)
    final.parent.mkdir(parents=True, exist_ok=True)
    return lock_file(
        final.parent / f".{final.name}.lock",
        subject=f"the dataset {str(final)!r}",
        advice="it is being written; wait for that process to finish",
        error=DatasetError,
    )


@contextlib.contextmanager
def _writing(final: Path) -> Iterator[None]:
    """Holds :func:`dataset_lock` of ``final``; the folders made for the lock file alone
    are removed again when nothing was written into them."""
    missing = [p for p in (final.parent, *final.parent.parents) if not p.exists()]
    if not missing:
        remove_stale_locks(final.parent, ".*.lock")  # of writers killed with kill -9
    try:
        with dataset_lock(final):
            yield
    finally:
        for folder in missing:  # deepest first; a folder written into is not empty
            with contextlib.suppress(OSError):
                folder.rmdir()


def resolve_minari_path(
    dataset_id_or_path: str | os.PathLike, root: str | os.PathLike | None = None
) -> Path:
    """Return the dataset directory (the one holding ``data/``) without checking it exists."""
    candidate = Path(dataset_id_or_path).expanduser()
    if candidate.is_absolute() or candidate.exists() or str(dataset_id_or_path).startswith("."):
        return candidate.parent if candidate.name == "data" else candidate
    return minari_root(root) / str(dataset_id_or_path)


def _episode_bounds(episode: torch.Tensor) -> list[tuple[int, int]]:
    """Contiguous [start, stop) blocks of equal episode id; ids must not repeat after a gap."""
    episode = episode.reshape(-1)
    n = episode.shape[0]
    if n == 0:
        return []
    change = (episode[1:] != episode[:-1]).nonzero().reshape(-1) + 1
    starts = [0, *change.tolist()]
    stops = [*change.tolist(), n]
    ids = episode[starts]
    if ids.unique().numel() != len(starts):
        seen: set[int] = set()
        for s, i in zip(starts, ids.tolist()):
            if i in seen:
                raise DatasetError(
                    f"Field 'episode': episode {i} resumes at index {s} after another episode; "
                    "each episode's transitions must be contiguous and in time order",
                    field="episode",
                    index=s,
                )
            seen.add(i)
    return list(zip(starts, stops))


def _structured(value: Any, space: gym.Space) -> Any:
    """Convert a tensor / nested tensordict to the numpy structure Minari expects for ``space``."""
    if isinstance(space, gym.spaces.Dict):
        return {k: _structured(value.get(k), sub) for k, sub in space.spaces.items()}
    if isinstance(space, gym.spaces.Tuple):
        return tuple(_structured(value.get(str(i)), sub) for i, sub in enumerate(space.spaces))
    array = value.detach().cpu().numpy()
    if isinstance(space, gym.spaces.Discrete):
        if array.ndim == 2 and array.shape[-1] == space.n and space.n > 1:
            array = array.argmax(-1) + space.start  # one-hot -> index
        return array.reshape(-1).astype(space.dtype)
    return array.reshape(array.shape[0], *space.shape).astype(space.dtype, copy=False)


def _rows_equal(a: torch.Tensor | TensorDictBase, b: torch.Tensor | TensorDictBase) -> torch.Tensor:
    """Per-row equality ``[n]`` of two tensors or tensordicts with batch size ``[n]``."""
    n = a.shape[0]
    if isinstance(a, TensorDictBase):
        leaves = (a == b).values(include_nested=True, leaves_only=True)
        return torch.stack([leaf.reshape(n, -1).all(-1) for leaf in leaves]).all(0)
    return (a == b).reshape(n, -1).all(-1)


def _concat(first: Any, last: Any) -> Any:
    if isinstance(first, dict):
        return {k: _concat(first[k], last[k]) for k in first}
    if isinstance(first, tuple):
        return tuple(_concat(a, b) for a, b in zip(first, last))
    return np.concatenate([first, last], axis=0)


def write_minari(
    transitions: TensorDictBase,
    dataset_id: str,
    *,
    observation_space: gym.Space,
    action_space: gym.Space,
    root: str | os.PathLike | None = None,
    env_spec: gym.envs.registration.EnvSpec | str | None = None,
    data_format: str = "hdf5",
    ref_min_score: float | None = None,
    ref_max_score: float | None = None,
    algorithm_name: str | None = None,
    description: str | None = None,
    author: str | None = None,
    extra_metadata: Mapping[str, Any] | None = None,
    extra_info_keys: Sequence[str] = (),
    overwrite: bool = False,
) -> Path:
    """Write transitions (TorchRL keys, dataset order) as a Minari dataset.

    Episodes are the contiguous blocks of the ``episode`` key. Each Minari episode
    gets the T+1 observations (``observation`` of every step plus the final
    ``("next", "observation")``), the T actions, rewards, terminations and
    truncations; ``action_log_prob`` / ``action_prob``, when present, go to
    ``infos`` (see :data:`BEHAVIOR_INFO_KEYS`). The dataset is built in a temporary
    directory and renamed into place, so an interrupted write leaves nothing that
    loads; ``overwrite`` replaces only ``data/`` and the manifest, any other file of the
    folder stays, and a lock file (:func:`dataset_lock`) keeps a second writer of the
    same dataset out. Its last file is a manifest (``torchrl_offline.manifest.json``, beside
    ``data/``) of every episode file's size and hash (not of ``data/metadata.json``, which
    Minari's ``update_metadata`` may rewrite), which
    :func:`~torchrl_offline.data.load_minari` and ``torchrl-offline verify`` check.

    Args:
        transitions: transitions with batch size ``[N]``.
        dataset_id: Minari id, e.g. ``"pendulum/random-v0"``.
        observation_space: gymnasium observation space.
        action_space: gymnasium action space.
        root: datasets root (default ``$MINARI_DATASETS_PATH`` or ``~/.minari/datasets``).
        env_spec: the environment spec (or id) that generated the data, if any.
        data_format: ``"hdf5"`` or ``"arrow"``.
        ref_min_score: reference return of a random policy (for normalized scores).
        ref_max_score: reference return of an expert policy.
        algorithm_name: how the data was generated.
        description: free text.
        author: free text.
        extra_metadata: more JSON-serialisable metadata entries.
        extra_info_keys: more per-step fields (one value per transition, e.g. ``"policy_id"``)
            stored in ``infos`` like the behaviour fields; entry 0 (the reset info) is NaN
            for floating fields and -1 for integer ones.
        overwrite: replace an existing dataset with the same id (only a Minari dataset:
            an unrelated directory is never replaced; the dataset's other files stay).

    Returns:
        The dataset directory (``<root>/<dataset_id>``).

    Raises:
        DatasetError: invalid transitions, non-contiguous episodes, a next observation
            that differs from the following observation of its episode, a
            ``dataset_id`` that is not an id, an existing directory that is not a Minari
            dataset, or another process writing the same dataset.
        FileExistsError: the dataset exists and ``overwrite`` is False.
    """
    final = minari_root(root) / check_dataset_id(dataset_id)
    with _writing(final):
        return _write_minari(
            transitions,
            dataset_id,
            observation_space=observation_space,
            action_space=action_space,
            root=root,
            env_spec=env_spec,
            data_format=data_format,
            ref_min_score=ref_min_score,
            ref_max_score=ref_max_score,
            algorithm_name=algorithm_name,
            description=description,
            author=author,
            extra_metadata=extra_metadata,
            extra_info_keys=extra_info_keys,
            overwrite=overwrite,
        )


def _write_minari(
    transitions: TensorDictBase,
    dataset_id: str,
    *,
    observation_space: gym.Space,
    action_space: gym.Space,
    root: str | os.PathLike | None,
    env_spec: gym.envs.registration.EnvSpec | str | None,
    data_format: str,
    ref_min_score: float | None,
    ref_max_score: float | None,
    algorithm_name: str | None,
    description: str | None,
    author: str | None,
    extra_metadata: Mapping[str, Any] | None,
    extra_info_keys: Sequence[str],
    overwrite: bool,
) -> Path:
    """:func:`write_minari` once the dataset's lock is held (``collect_dataset`` holds it
    across the whole collection)."""
    import minari
    from minari.dataset.minari_storage import MinariStorage

    final = new_dataset_directory(dataset_id, root, overwrite=overwrite)
    required = (OBSERVATION, ACTION, NEXT_OBSERVATION, REWARD, TERMINATED, TRUNCATED, EPISODE)
    for key in (*required, *extra_info_keys):
        if key not in transitions.keys(True):
            raise DatasetError(f"Missing field {key!r} in the transitions to write", field=str(key))
    validate_transitions(transitions, action_space=action_space)
    if isinstance(env_spec, str):
        env_spec = gym.spec(env_spec)

    bounds = _episode_bounds(transitions.get(EPISODE))
    behavior_keys = [k for k in BEHAVIOR_INFO_KEYS if k in transitions.keys()]

    def episodes():
        from minari.data_collector import EpisodeBuffer

        for ep_id, (start, stop) in enumerate(bounds):
            chunk = transitions[start:stop]
            obs = chunk.get(OBSERVATION)
            nxt = chunk.get(NEXT_OBSERVATION)
            if stop - start > 1 and not bool((same := _rows_equal(obs[1:], nxt[:-1])).all()):
                first = int((~same).nonzero()[0, 0]) + start
                raise DatasetError(
                    f"Field 'next.observation' at index {first} differs from 'observation' at "
                    f"index {first + 1} of the same episode; Minari stores one observation "
                    "sequence per episode and cannot represent this",
                    field="next.observation",
                    index=first,
                )
            observations = _concat(
                _structured(obs, observation_space), _structured(nxt[-1:], observation_space)
            )
            infos = {}
            for key in behavior_keys:
                value = chunk.get(key).reshape(stop - start).to(torch.float64).numpy()
                # A list, not a 1-D array: Minari 0.5.4's Arrow reader cannot decode the
                # shape metadata it writes for 1-D info arrays.
                infos[key] = [float("nan"), *value.tolist()]
            for key in extra_info_keys:
                value = chunk.get(key).reshape(stop - start)
                first = float("nan") if value.is_floating_point() else -1
                infos[key] = [first, *value.tolist()]
            yield EpisodeBuffer(
                id=ep_id,
                observations=observations,
                actions=_structured(chunk.get(ACTION), action_space),
                rewards=chunk.get(REWARD).reshape(-1).to(torch.float64).numpy(),
                terminations=chunk.get(TERMINATED).reshape(-1).numpy(),
                truncations=chunk.get(TRUNCATED).reshape(-1).numpy(),
                infos=infos or None,
            )

    metadata: dict[str, Any] = {
        "dataset_id": dataset_id,
        "minari_version": minari.__version__,
        "algorithm_name": algorithm_name or "unknown",
        "description": description or "",
        "author": {author} if author else set(),
    }
    if ref_min_score is not None and ref_max_score is not None:
        metadata["ref_min_score"] = float(ref_min_score)
        metadata["ref_max_score"] = float(ref_max_score)
    elif (ref_min_score is None) != (ref_max_score is None):
        raise ValueError("ref_min_score and ref_max_score must be given together")
    if extra_metadata:
        metadata.update(json.loads(json.dumps(dict(extra_metadata), default=str)))

    with atomic_directory(final, overwrite=overwrite, replace_only=DATASET_ENTRIES) as tmp:
        storage = MinariStorage.new(
            tmp / "data",
            observation_space=observation_space,
            action_space=action_space,
            env_spec=env_spec,
            data_format=data_format,
            jpeg_encoding=False,
        )
        storage.update_metadata(metadata)
        # Minari 0.5.4's Arrow writer measures the whole data folder after every episode
        # (time quadratic in the number of episodes: 20,000 one-step episodes did not finish
        # in 30 minutes); the size is measured once, at the end, instead.
        storage.get_size = lambda: 0.0
        try:
            storage.update_episodes(episodes())
        finally:
            del storage.get_size
        storage.update_metadata({"dataset_size": storage.get_size()})
        # Last: load_minari checks the files' sizes against it. Minari's metadata.json is
        # left out: Minari's own update_metadata rewrites it (a damaged one is a JSON error).
        write_manifest(tmp, skip=("data/metadata.json",))
    return final
