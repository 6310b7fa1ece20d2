"""Turn users' logged data into an offline replay buffer: arrays, DataFrames, Parquet, CSV, HDF5.

:func:`from_logged` reads a log column by column and chunk by chunk, twice. Pass 1
(:mod:`.log_scan`) works out episode boundaries (from done flags or an episode-id column)
and next observations (from the following row of the same episode when the log has
none), checks every value (:mod:`.log_tensors`, against the spaces of :mod:`.log_spaces`)
and fingerprints the content; pass 2 writes the transitions in TorchRL's layout into a
memory-mapped storage that is renamed into place only once complete, or reuses an intact
copy of the same content.
The same transitions can also be written as a Minari dataset.
"""

from __future__ import annotations

import functools
import json
import logging
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import gymnasium as gym
import numpy as np
import torch
from tensordict import TensorDictBase
from torchrl.data.replay_buffers.samplers import Sampler
from torchrl.data.replay_buffers.writers import ImmutableDatasetWriter
from torchrl.envs.transforms import Transform

from torchrl_offline.data import minari_writer
from torchrl_offline.data.errors import DatasetError, naming_source
from torchrl_offline.data.keys import (
    ACTION,
    ACTION_LOG_PROB,
    ACTION_PROB,
    BEHAVIOR_PROBS,
    EPISODE,
    NEXT_OBSERVATION,
    OBSERVATION,
    POSITION,
)
from torchrl_offline.data.log_columns import ACCEPTED_NAMES, FLOAT_FIELDS, Column, resolve_columns
from torchrl_offline.data.log_decisions import BehaviorProbsReport, check_behavior_probs
from torchrl_offline.data.log_env import check_observation_shape, log_env
from torchrl_offline.data.log_episodes import Walk, iter_transitions
from torchrl_offline.data.log_scan import infer_spaces, scan_log
from torchrl_offline.data.log_sources import Name, dotted, open_source
from torchrl_offline.data.log_spaces import (
    _leaf_spaces,
    _space_from_leaves,
    _stored_dtype,
    _stored_shape,
)
from torchrl_offline.data.log_tensors import stored_names, to_tensordict
from torchrl_offline.data.storage import (
    COMPLETE_MARKER,
    OfflineReplayBuffer,
    allocate_transitions,
    atomic_directory,
    default_cache_dir,
    load_transitions,
    make_replay_buffer,
    step_layout,
    verify_dataset,
    write_complete_marker,
)
from torchrl_offline.integrity import file_digest

__all__ = ["ACCEPTED_NAMES", "from_logged"]

logger = logging.getLogger("torchrl_offline")

#: Bumped whenever the stored layout changes, so older cached conversions are not reused.
_FORMAT_VERSION = 1


# --------------------------------------------------------------------------- tensors


# --------------------------------------------------------------------------- entry point


def _default_root() -> Path:
    """``<conversion cache>/logged``, beside :func:`load_minari`'s conversions."""
    return default_cache_dir() / "logged"


def _float_np(dtype: torch.dtype) -> np.dtype:
    if not dtype.is_floating_point:
        raise ValueError(f"dtype must be a floating dtype, got {dtype}")
    return torch.zeros((), dtype=dtype).numpy().dtype


def from_logged(
    source: Mapping[str, Any] | TensorDictBase | Any | str | os.PathLike,
    *,
    path: str | os.PathLike | None = None,
    columns: Mapping[str, str | Sequence[str] | Mapping[str, str | Sequence[str]]] | None = None,
    ignore: Sequence[str] = (),
    observation_space: gym.Space | None = None,
    action_space: gym.Space | None = None,
    drop_incomplete: bool = False,
    env_id: str | None = None,
    dtype: torch.dtype = torch.float32,
    one_hot_actions: bool = False,
    file_format: str | None = None,
    chunk_size: int = 65536,
    batch_size: int | None = 256,
    sampler: Sampler | None = None,
    transform: Transform | None = None,
    ref_min_score: float | None = None,
    ref_max_score: float | None = None,
    overwrite: bool = False,
    minari_id: str | None = None,
    minari_root: str | os.PathLike | None = None,
    minari_kwargs: Mapping[str, Any] | None = None,
    horizon: int | None = None,
    num_positions: int | None = None,
    **kwargs: Any,
) -> OfflineReplayBuffer:
    """Load logged transitions into an offline replay buffer (and optionally a Minari dataset).

    Sources:

    * a mapping of numpy arrays / torch tensors / lists, one entry per field (nested
      mappings give nested observations), or a :class:`~tensordict.TensorDict` such as a
      TorchRL rollout flattened to one batch dimension;
    * a pandas ``DataFrame``;
    * a path to a Parquet, CSV or HDF5 (D4RL layout) file, read chunk by chunk.

    Field names may be TorchRL's (``observation``, ``action``, ``("next", "reward")``,
    ...), D4RL's (``observations``, ``actions``, ``rewards``, ``terminals``,
    ``timeouts``, ``next_observations``, ``infos/action_log_probs``) or Minari's
    (``terminations``, ``truncations``); see :data:`ACCEPTED_NAMES`. A vector field can
    be one array-valued column (arrays, lists, Arrow list columns, or CSV strings such
    as ``"[0.1, 0.2]"``) or scalar columns ``observation_0``, ``observation_1``, ...;
    ``columns=`` maps any other names, e.g. ``{"observation": ["x", "y"], "action":
    "a", "episode": "run"}``. A column that maps to no field is an error unless named
    in ``ignore=``.

    Episodes end at a done flag (``terminated``, ``truncated``, or ``done``, which
    counts as ``terminated`` when no ``truncated`` column tells otherwise) or, when
    the log has an episode-id column, where the id changes. An episode that ends
    without a flag (the log stops or the id changes) is marked truncated. Without a
    next-observation column, the next observation of a step is the observation of the
    following row of the same episode; the last step of an episode then has none. A
    terminal last step needs none (its value is never bootstrapped): it is kept, with
    a copy of its observation as next observation. A non-terminal (truncated or cut)
    last step is an error unless ``drop_incomplete=True`` drops it (its predecessor
    then ends the episode, truncated). The metadata count both:
    ``terminal_next_observations_filled`` and ``dropped_transitions``.

    Logs of decisions (recommendations, pricing, treatments: one decision per context,
    the action taken, its propensity and the outcome) hold one-step episodes. With
    ``horizon=1`` every row is a whole episode: terminated, with no next observation
    needed (the stored next observation is a copy of the observation, as for any
    terminal step, and is never bootstrapped); ``episode`` is the row's index among the
    stored rows (ids of an ``episode`` column must then be distinct). A log without
    flags or next observations whose episode ids all differ row to row is read the
    same way without ``horizon=1``. The behaviour policy's propensity of the logged
    action is ``action_prob`` (in (0, 1]) or ``action_log_prob`` (in (-inf, 0]), stored
    under that name where the OPE estimators read it; a ``position`` (``slot``) column,
    the place of the decision in a ranked list, is stored as its own integer key
    ``"position"``, not in the observation (``num_positions=K`` declares its range:
    a position outside ``0 .. K - 1`` is an error naming the row). A
    ``behavior_probs`` column (one vector per row, or scalar columns
    ``behavior_probs_0``, ``behavior_probs_1``, ...) holds the logging policy's probability
    of every action: the logged action's entry must equal its propensity (and gives it
    when the log has no propensity column), and rows not summing to 1 are reported with
    a :class:`~torchrl_offline.data.errors.DatasetWarning` and in
    ``metadata["behavior_probs_report"]`` (:mod:`~torchrl_offline.data.log_decisions`).
    ``metadata["horizon"]`` is 1 when every stored episode is one terminal step, else
    ``None``.

    The data are validated before anything is written (non-finite values, mismatched
    lengths, actions outside the action space, terminated and truncated both set, flags
    disagreeing with episode ids): errors are :class:`DatasetError` naming the field
    and the first bad row of the source. The transitions are written to a memory-mapped
    storage built in a temporary directory and renamed into place when complete, so a
    failure leaves nothing behind.

    Args:
        source: the log (see above).
        path: the dataset directory to write. By default a directory keyed by the
            data's content under ``$TORCHRL_OFFLINE_CACHE/logged`` (or
            ``~/.cache/torchrl_offline/logged``), reused when the same data
            and options are loaded again. An existing ``path`` holding the same data
            is reused too (after checking its files' sizes against its manifest; a
            damaged copy is converted again, with a logged warning); one holding other
            data is an error unless ``overwrite``.
        columns: field -> source column name, list of scalar column names (stacked
            into a vector), or, for observations, a mapping of nested entries.
        ignore: source columns to skip.
        observation_space: the gymnasium observation space; inferred when absent
            (unbounded Box for floating data, Discrete(max + 1) for integer scalars).
        action_space: the gymnasium action space, checked against every action;
            inferred when absent (Box over the data's range for floating actions,
            Discrete(max + 1) for integer actions, MultiDiscrete for integer vectors).
        drop_incomplete: drop the non-terminal transitions whose next observation
            cannot be derived instead of raising (terminal ones are always kept).
        env_id: the gymnasium id of the env that generated the log. It is stored in the
            metadata as Minari datasets keep theirs (``env_spec``, the spec's JSON), and
            in the Minari copy, so the command line finds the env by itself. The env is
            made once: without ``action_space``, its action space is the dataset's
            (rather than one inferred from the logged actions), and logged observations
            of another shape than its Box observations are refused.
        dtype: the floating dtype of the stored data.
        one_hot_actions: store Discrete actions one-hot (int64) instead of indices.
        file_format: ``"parquet"``, ``"csv"`` or ``"hdf5"`` when the file suffix does
            not tell.
        chunk_size: rows read and written at a time.
        batch_size: the replay buffer's sample size.
        sampler: a TorchRL sampler (uniform by default).
        transform: a TorchRL transform applied to sampled batches.
        ref_min_score: reference return of a random policy, for normalized scores.
        ref_max_score: reference return of an expert policy.
        overwrite: replace an existing dataset at ``path`` (and Minari dataset) that
            holds other data.
        minari_id: also write the transitions as the Minari dataset with this id. Its
            metadata records the log (``torchrl_offline_log``: the counts of dropped and
            filled transitions and, for a file, its path, size, modification time and
            hash, which :func:`~torchrl_offline.data.load_minari` returns as
            ``source_log``).
        minari_root: the Minari datasets root (default ``$MINARI_DATASETS_PATH`` or
            ``~/.minari/datasets``).
        minari_kwargs: more arguments of
            :func:`~torchrl_offline.data.minari_writer.write_minari` (``data_format``,
            ``env_spec``, ``author``, ...).
        horizon: ``1`` for a log of one-step episodes (see above); ``None`` (default)
            finds episodes from the flags and ids.
        num_positions: the number of positions (slots) of the log's ``position``
            column, whose values must then be ``0 .. num_positions - 1``.
        **kwargs: forwarded to the replay buffer (its ``writer`` is a read-only
            :class:`~torchrl.data.replay_buffers.ImmutableDatasetWriter` by default, so
            the stored files are never overwritten through the buffer).

    Returns:
        An :class:`~torchrl_offline.data.storage.OfflineReplayBuffer` over the
        memory-mapped transitions, in the log's order, with ``.metadata`` (source,
        spaces, counts) and ``.path``.

    Raises:
        DatasetError: invalid data, naming the field and the first bad index.
        FileExistsError: ``path`` or the Minari dataset holds other data and
            ``overwrite`` is False.

    Examples:
        >>> import numpy as np
        >>> from torchrl_offline.data.logged import from_logged
        >>> rng = np.random.default_rng(0)
        >>> log = {
        ...     "observations": rng.normal(size=(6, 3)),
        ...     "actions": rng.uniform(-1, 1, size=(6, 2)),
        ...     "rewards": rng.normal(size=6),
        ...     "terminals": [0, 0, 1, 0, 0, 0],
        ... }
        >>> rb = from_logged(log, drop_incomplete=True)
        >>> len(rb), rb.storage[0]["next", "observation"].shape
        (5, torch.Size([3]))
        >>> rb.storage[:]["episode"].tolist()
        [0, 0, 0, 1, 1]
        >>> rb.metadata["terminal_next_observations_filled"], rb.metadata["dropped_transitions"]
        (1, 1)

        A log of decisions, one per row (no next observation, no flags):

        >>> bandit = {
        ...     "observation": rng.normal(size=(4, 3)),
        ...     "action": [2, 0, 3, 1],
        ...     "action_prob": [0.5, 0.25, 0.125, 0.125],
        ...     "reward": [1.0, 0.0, 0.0, 1.0],
        ...     "position": [0, 1, 0, 2],
        ... }
        >>> rb = from_logged(bandit, horizon=1)
        >>> data = rb.storage[:]
        >>> data["episode"].tolist(), data["next", "terminated"].all().item()
        ([0, 1, 2, 3], True)
        >>> data["position"].tolist(), rb.metadata["horizon"]
        ([0, 1, 0, 2], 1)
    """
    from minari.serialization import serialize_space

    float_np = _float_np(dtype)
    if (ref_min_score is None) != (ref_max_score is None):
        raise ValueError("ref_min_score and ref_max_score must be given together")
    if chunk_size < 1:
        raise ValueError(f"chunk_size must be positive, got {chunk_size}")
    if horizon not in (None, 1):
        raise ValueError(f"horizon must be 1 (a log of one-step episodes) or None, got {horizon}")
    if num_positions is not None and not (isinstance(num_positions, int) and num_positions > 0):
        raise ValueError(f"num_positions must be a positive integer, got {num_positions!r}")
    env = log_env(env_id) if env_id is not None else None
    if action_space is None and env is not None:
        action_space = env.action_space
    table = open_source(source, file_format, chunk_size)
    # every error about the data from here on names the file first
    in_file = functools.partial(naming_source, table.describe().get("source_path"))
    with in_file():
        resolved, skipped = resolve_columns(table.names, columns, ignore)
        if num_positions is not None and not any(c.target[0] == POSITION for c in resolved):
            raise DatasetError(
                f"num_positions={num_positions} is given but the log has no position column "
                f"(named {' / '.join(ACCEPTED_NAMES['position'])}; map yours with "
                "columns={'position': ...})",
                field="position",
            )
        table.select(
            {n for c in resolved for n in c.sources},
            {n for c in resolved if c.target[0] in FLOAT_FIELDS for n in c.sources},
        )
        given = _given_spaces(observation_space, action_space, resolved)
        walk_options = {
            "chunk_size": chunk_size,
            "drop_incomplete": drop_incomplete,
            "one_step": horizon == 1,
        }

        # Pass 1: check every value, gather shapes / ranges, and fingerprint the content.
        names = stored_names(resolved)
        scan = scan_log(
            table,
            resolved,
            names=names,
            spaces=given,
            action_space=action_space,
            dtype=dtype,
            num_positions=num_positions,
            **walk_options,
        )
        if scan.total == 0:
            raise DatasetError("The log holds no transition to store", field="observation")
        spaces = infer_spaces(scan, given, names=names, float_np=float_np)
    obs_space = (
        observation_space
        if observation_space is not None
        else _space_from_leaves({k: v for k, v in spaces.items() if k[0] == "observation"}, 1)
    )
    act_space = action_space if action_space is not None else spaces[("action",)]
    if env is not None:
        check_observation_shape(obs_space, env, env_id)
    if one_hot_actions and not isinstance(act_space, gym.spaces.Discrete):
        raise ValueError(f"one_hot_actions=True needs a Discrete action space, got {act_space}")
    behavior_keys = [c.target[0] for c in resolved if c.target[0] in (ACTION_LOG_PROB, ACTION_PROB)]
    has_probs = any(c.target[0] == BEHAVIOR_PROBS for c in resolved)
    if has_probs and not behavior_keys:
        behavior_keys = [ACTION_PROB]  # the logged action's entry of behavior_probs
    options = {
        "format_version": _FORMAT_VERSION,
        "dtype": str(dtype).replace("torch.", ""),
        "one_hot_actions": one_hot_actions,
        "observation_space": serialize_space(obs_space),
        "action_space": serialize_space(act_space),
        "ref_scores": [ref_min_score, ref_max_score],
    }
    if env is not None:  # only then: the content hash of a log without env id is unchanged
        options["env_spec"] = env.env_spec
    scan.hasher.update(json.dumps(options, sort_keys=True).encode())
    content_hash = scan.hasher.hexdigest()

    spec = _layout(
        spaces,
        act_space,
        dtype=dtype,
        one_hot_actions=one_hot_actions,
        behavior_keys=behavior_keys,
        positions=any(c.target[0] == POSITION for c in resolved),
        probs_width=scan.probs.width if has_probs else None,
    )
    metadata: dict[str, Any] = {
        "source": "logged",
        **table.describe(),
        "total_steps": scan.total,
        "dropped_transitions": scan.walk.dropped,
        "terminal_next_observations_filled": scan.walk.terminal_filled,
        "observation_space": options["observation_space"],
        "action_space": options["action_space"],
        "content_hash": content_hash,
        "conversion": {k: options[k] for k in ("format_version", "dtype", "one_hot_actions")},
        "behavior_keys": behavior_keys,
        "ignored_columns": skipped,
        "horizon": 1 if scan.terminal == scan.walk.episodes_started == scan.total else None,
    }
    if has_probs:
        metadata["behavior_probs_report"] = scan.probs.metadata()
        scan.probs.warn(names.get(BEHAVIOR_PROBS, BEHAVIOR_PROBS))
    if ref_min_score is not None:
        metadata["ref_min_score"] = float(ref_min_score)
        metadata["ref_max_score"] = float(ref_max_score)
    if minari_id is not None:
        metadata["minari_id"] = minari_id
        minari_kwargs = _with_log_record(minari_kwargs, table.describe(), scan.walk)
    if env is not None:
        metadata["env_spec"] = env.env_spec
    minari_copy = (
        None
        if minari_id is None
        else functools.partial(
            _write_minari,
            dataset_id=minari_id,
            root=minari_root,
            observation_space=obs_space,
            action_space=act_space,
            content_hash=content_hash,
            overwrite=overwrite,
            kwargs=minari_kwargs,
        )
    )

    # Pass 2: write the transitions beside the destination, then rename them into place.
    final = Path(path).expanduser() if path is not None else _default_root() / content_hash[:24]
    reuse = _reusable(final, content_hash, overwrite=overwrite)
    if not reuse:
        with atomic_directory(final, overwrite=True) as tmp:
            out = allocate_transitions(spec, scan.total, tmp / "transitions")
            with in_file():
                episodes = _write_transitions(
                    out,
                    table,
                    resolved,
                    names=names,
                    spaces=spaces,
                    dtype=dtype,
                    one_hot=act_space if one_hot_actions else None,
                    **walk_options,
                )
            metadata["total_episodes"] = episodes
            if minari_copy is not None:
                minari_copy(out, metadata=metadata)
            write_complete_marker(tmp, metadata)
    transitions, stored = load_transitions(final)
    kwargs.setdefault("writer", ImmutableDatasetWriter())
    if reuse and minari_copy is not None:
        minari_copy(transitions, metadata=stored)
    return make_replay_buffer(
        transitions,
        batch_size=batch_size,
        sampler=sampler,
        transform=transform,
        metadata=stored,
        path=final,
        **kwargs,
    )


def _given_spaces(
    observation_space: gym.Space | None, action_space: gym.Space | None, columns: list[Column]
) -> dict[Name, gym.Space]:
    """The leaf spaces the caller gave, by target, checked against the log's columns."""
    given: dict[Name, gym.Space] = {}
    if observation_space is not None:
        given.update(_leaf_spaces(observation_space, ("observation",)))
        data_obs = {c.target for c in columns if c.target[0] == "observation"}
        if set(given) != data_obs:
            raise DatasetError(
                f"The observation space has entries {sorted(dotted(k) for k in given)} but the "
                f"data has {sorted(dotted(k) for k in data_obs)}",
                field="observation",
            )
    if action_space is not None:
        actions = _leaf_spaces(action_space, ("action",))
        if len(actions) != 1:
            raise DatasetError(
                "Only single (non-Dict, non-Tuple) action spaces are supported", field="action"
            )
        given.update(actions)
    return given


def _layout(
    spaces: Mapping[Name, gym.Space],
    action_space: gym.Space,
    *,
    dtype: torch.dtype,
    one_hot_actions: bool,
    behavior_keys: Sequence[str],
    positions: bool,
    probs_width: int | None,
) -> dict[Name, tuple[tuple[int, ...], torch.dtype]]:
    """The stored key -> (per-step shape, dtype) of every field, in TorchRL's layout."""
    spec: dict[Name, tuple[tuple[int, ...], torch.dtype]] = {}
    for target, space in spaces.items():
        shape, leaf_dtype = _stored_shape(space), _stored_dtype(space, dtype)
        if target[0] == "observation":
            spec[(OBSERVATION, *target[1:])] = (shape, leaf_dtype)
            spec[(*NEXT_OBSERVATION, *target[1:])] = (shape, leaf_dtype)
        elif one_hot_actions:
            spec[(ACTION,)] = ((int(action_space.n),), torch.int64)
        else:
            spec[(ACTION,)] = (shape, leaf_dtype)
    spec.update(step_layout(dtype, behavior_keys))
    if positions:
        spec[(POSITION,)] = ((), torch.int64)
    if probs_width is not None:
        spec[(BEHAVIOR_PROBS,)] = ((probs_width,), dtype)
    return spec


def _reusable(final: Path, content_hash: str, *, overwrite: bool) -> bool:
    """Whether ``final`` already holds this content, intact; raises where it holds other
    data that may not be replaced."""
    ours = (final / COMPLETE_MARKER).is_file()
    same = ours and _stored_hash(final) == content_hash
    if same and _intact(final):
        return True
    if final.exists():
        if not ours and (not final.is_dir() or any(final.iterdir())):
            raise FileExistsError(
                f"{final} exists and is not a torchrl_offline dataset; refusing to replace it"
            )
        if ours and not same and not overwrite:
            raise FileExistsError(
                f"{final} already holds another dataset; pass overwrite=True to replace it"
            )
    return False


def _write_transitions(
    out: TensorDictBase,
    table: Any,
    columns: list[Column],
    *,
    names: Mapping[str, str],
    spaces: Mapping[Name, gym.Space],
    dtype: torch.dtype,
    one_hot: gym.spaces.Discrete | None,
    chunk_size: int,
    drop_incomplete: bool,
    one_step: bool,
) -> int:
    """Pass 2: reads ``table`` again into the allocated ``out``; returns the episode count.

    Raises:
        DatasetError: the source holds a different number of transitions than in pass 1.
    """
    start = episodes = 0
    for fields, rows in iter_transitions(
        table, columns, chunk_size=chunk_size, drop_incomplete=drop_incomplete, one_step=one_step
    ):
        if not len(rows):
            continue
        if start + len(rows) > len(out):
            break
        # sets the propensity from behavior_probs where the log has no propensity column
        check_behavior_probs(fields, rows, names, BehaviorProbsReport())
        chunk = to_tensordict(fields, rows, spaces=spaces, float_dtype=dtype, one_hot=one_hot)
        out[start : start + len(rows)] = chunk
        start += len(rows)
        episodes = int(chunk.get(EPISODE)[-1]) + 1
    if start != len(out):
        raise DatasetError(
            f"The source changed while it was read ({len(out)} transitions, then {start})",
            field="source",
        )
    return episodes


def _stored_hash(path: Path) -> str | None:
    try:
        with open(path / COMPLETE_MARKER) as f:
            return json.load(f).get("content_hash")
    except (OSError, ValueError, AttributeError):  # a damaged marker: not known to be ours
        return None


def _intact(path: Path) -> bool:
    """Whether the stored dataset at ``path`` matches its manifest's sizes; a damaged one
    is logged (the caller converts the source again)."""
    try:
        verify_dataset(path)
    except DatasetError as err:
        logger.warning("%s cannot be reused (%s); converting the source again", path, err)
        return False
    return True


def _with_log_record(
    minari_kwargs: Mapping[str, Any] | None, source: Mapping[str, Any], walk: Walk
) -> dict[str, Any]:
    """``minari_kwargs`` whose extra metadata records the log the Minari copy comes from
    (``torchrl_offline_log``): what was dropped or filled and, for a file, its resolved
    path, size, modification time and hash (:func:`~torchrl_offline.integrity.file_digest`),
    by which a later reader tells that the file changed since."""
    record: dict[str, Any] = {
        "source_type": source.get("source_type"),
        "dropped_transitions": walk.dropped,
        "terminal_next_observations_filled": walk.terminal_filled,
    }
    if source.get("source_path") is not None:
        file = Path(source["source_path"]).resolve()
        stat = file.stat()
        record.update(
            path=str(file), size=stat.st_size, mtime_ns=stat.st_mtime_ns, hash=file_digest(file)
        )
    options = dict(minari_kwargs or {})
    options["extra_metadata"] = {
        **dict(options.get("extra_metadata") or {}),
        "torchrl_offline_log": record,
    }
    return options


def _write_minari(
    transitions: TensorDictBase,
    *,
    metadata: Mapping[str, Any],
    dataset_id: str,
    root: str | os.PathLike | None,
    observation_space: gym.Space,
    action_space: gym.Space,
    content_hash: str,
    overwrite: bool,
    kwargs: Mapping[str, Any] | None,
) -> None:
    """Write the Minari copy, unless the same content is already there under that id."""
    target = minari_writer.minari_root(root) / dataset_id
    meta_file = target / "data" / "metadata.json"
    if meta_file.is_file() and not overwrite:
        with open(meta_file) as f:
            if json.load(f).get("torchrl_offline_content_hash") == content_hash:
                return
    options = dict(kwargs or {})
    extra = dict(options.pop("extra_metadata", None) or {})
    extra["torchrl_offline_content_hash"] = content_hash
    for name in ("ref_min_score", "ref_max_score"):
        if name in metadata and name not in options:
            options[name] = metadata[name]
    if metadata.get("env_spec") is not None and "env_spec" not in options:
        options["env_spec"] = json.loads(metadata["env_spec"])["id"]
    minari_writer.write_minari(
        transitions,
        dataset_id,
        observation_space=observation_space,
        action_space=action_space,
        root=root,
        overwrite=overwrite,
        extra_metadata=extra,
        **options,
    )
