"""Offline-to-online fine-tuning: the same loss, trained on offline data mixed with new
experience gathered by a TorchRL :class:`~torchrl.collectors.Collector`.

Batches come from TorchRL's :class:`~torchrl.data.OfflineToOnlineReplayBuffer`: a fixed
fraction of each batch from the offline dataset, the rest from the online buffer, the
fraction optionally annealed linearly to zero. The run is set up by the run builder
offline training uses (:mod:`~torchrl_offline.trainers.run`): the training loop is an
:class:`~torchrl_offline.trainers.offline.OfflineTrainer`, so every hook of offline
training (evaluation, logging, checkpoints, TorchRL's hooks) works here too, and steps
are gradient steps.

A fine-tuning run is resumable. Its checkpoints hold, besides what offline checkpoints
hold, the online replay buffer (written incrementally next to the checkpoints as
memory-mapped chunks, so a checkpoint writes only the transitions collected since the
previous one), the collector's carried observation and counters, and the simulator state
of gymnasium environments whose state is plain numbers and arrays (classic control, MuJoCo
through ``mj_getState``). For those, a run interrupted and resumed gives bitwise the same
parameters as an uninterrupted one; for other environments the resumed run starts a new
episode (a warning says so) and everything else is restored exactly.
"""

from __future__ import annotations

import json
import os
import shutil
import uuid
import warnings
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from tensordict import TensorDict, TensorDictBase
from tensordict.nn import TensorDictModuleBase, TensorDictSequential
from tensordict.utils import NestedKey
from torchrl.collectors import Collector
from torchrl.data import Bounded, OfflineToOnlineReplayBuffer, ReplayBuffer
from torchrl.envs import EnvBase, TransformedEnv
from torchrl.modules import AdditiveGaussianModule, EGreedyModule, ProbabilisticActor
from torchrl.record.loggers import Logger
from torchrl.trainers import TrainerHookBase

from torchrl_offline.data.episodes import derive_keys
from torchrl_offline.data.keys import TRAINING_KEYS  # kept from offline and online data
from torchrl_offline.integrity import MANIFEST, verify_manifest, write_manifest
from torchrl_offline.trainers.algorithms import Algorithm, AlgorithmError
from torchrl_offline.trainers.checkpoint import CheckpointError, checkpoint_path
from torchrl_offline.trainers.env_state import env_state as _env_state
from torchrl_offline.trainers.env_state import set_env_state as _set_env_state
from torchrl_offline.trainers.envs import as_env, check_env
from torchrl_offline.trainers.run import RunBuilder, RunSettings, TrainResult
from torchrl_offline.trainers.td_lambda import needs_td_lambda

__all__ = ["TRAINING_KEYS", "OnlineSource", "finetune"]


#: Name of the folder, inside the checkpoint folder, holding the online buffer's chunks.
ONLINE_BUFFER_DIR = "online_buffer"


class _Selected:
    """A replay buffer view sampling only :data:`TRAINING_KEYS` and the algorithm's derived
    entries (so offline and online batches concatenate)."""

    def __init__(self, buffer: ReplayBuffer, derived_keys: tuple[NestedKey, ...] = ()) -> None:
        self.buffer = buffer
        self.keys = (*TRAINING_KEYS, *derived_keys)

    def sample(self, batch_size: int) -> TensorDictBase:
        with warnings.catch_warnings():  # a share of the batch differs from the buffer's size
            warnings.filterwarnings("ignore", "Got conflicting batch_sizes", UserWarning)
            return self.buffer.sample(batch_size).select(*self.keys)

    def __len__(self) -> int:
        return len(self.buffer)


# ----------------------------------------------------------------------------- online buffer
class _ChunkStore:
    """The online buffer's transitions on disk, as memory-mapped chunks.

    Each checkpoint writes one chunk, ``chunk_<start>_<end>_<id>``: the transitions
    numbered ``start`` to ``end - 1`` in insertion order (only those added since the
    previous checkpoint), to a temporary folder renamed into place, with a manifest of its
    files (checked in full when the chunk is read back, as checkpoints are). ``index.json``
    maps each checkpoint's step to the chunks it needs; chunks needed by no checkpoint left
    on disk are deleted.
    """

    def __init__(self, checkpoint_dir: Path) -> None:
        self.checkpoint_dir = Path(checkpoint_dir)
        self.directory = self.checkpoint_dir / ONLINE_BUFFER_DIR

    def write(self, data: TensorDictBase, start: int) -> str:
        self.directory.mkdir(parents=True, exist_ok=True)
        name = f"chunk_{start:012d}_{start + len(data):012d}_{uuid.uuid4().hex[:8]}"
        tmp = self.directory / f".{name}.tmp"
        data.memmap(prefix=tmp)
        for path in tmp.rglob("*"):  # on disk before a checkpoint refers to it
            if path.is_file():
                with open(path, "rb+") as f:
                    os.fsync(f.fileno())
        write_manifest(tmp)
        os.replace(tmp, self.directory / name)
        return name

    def read(self, name: str) -> TensorDictBase:
        path = self.directory / name
        if not path.is_dir():
            raise CheckpointError(
                f"the online buffer chunk {str(path)!r} of this checkpoint is missing"
            )
        if (path / MANIFEST).is_file():  # chunks of older versions have none
            try:
                verify_manifest(path, full=True, error=CheckpointError)
            except CheckpointError as err:
                raise CheckpointError(
                    f"the online buffer chunk {str(path)!r} of this checkpoint is damaged: {err}"
                ) from err
        try:
            return TensorDict.load_memmap(path)
        except Exception as err:
            raise CheckpointError(
                f"the online buffer chunk {str(path)!r} cannot be read ({err})"
            ) from err

    def _index(self) -> dict[str, list[str]]:
        try:
            return json.loads((self.directory / "index.json").read_text())
        except (OSError, ValueError):
            return {}

    def commit(self, step: int, names: list[str]) -> None:
        """Records the chunks of the checkpoint of ``step`` and prunes unneeded ones."""
        index = {
            s: chunks
            for s, chunks in self._index().items()
            if checkpoint_path(self.checkpoint_dir, int(s)).exists()
        }
        index[str(step)] = list(names)
        self.directory.mkdir(parents=True, exist_ok=True)  # no chunk yet: nothing online
        tmp = self.directory / f".index.{uuid.uuid4().hex}.tmp"
        tmp.write_text(json.dumps(index))
        os.replace(tmp, self.directory / "index.json")
        needed = {name for chunks in index.values() for name in chunks}
        for path in self.directory.iterdir():
            if path.is_dir() and path.name not in needed:
                shutil.rmtree(path, ignore_errors=True)


class OnlineSource:
    """Collects from an env every ``collect_every`` iterations, then yields mixed batches.

    It stands where a collector stands in an :class:`OfflineTrainer`: each iteration
    first runs the collector when due (``frames_per_batch`` env steps, added to the
    online part of ``buffer``), anneals the offline fraction, then yields one batch.

    Its ``state_dict`` (saved in the trainer's checkpoints) holds the online buffer, the
    collector's carried observation and counters, the env's simulator state when it can
    be read (see the module's description), the exploration noise and the offline
    sampler's state, so a resumed run continues the same online experience. With
    ``checkpoint_dir`` the online transitions go to memory-mapped chunks in
    ``checkpoint_dir/online_buffer`` (each checkpoint writes only the new ones);
    without it they are stored inside the checkpoint.

    Args:
        collector: a TorchRL collector over the env with the exploration policy.
        buffer: the mixed buffer.

    Keyword Args:
        batch_size (int): transitions per update.
        collect_every (int): updates between two collections.
        anneal_steps (int, optional): updates over which the offline fraction decays
            linearly to zero; ``None`` keeps it constant.
        exploration (module, optional): an exploration module with ``step(frames)``
            (its noise is annealed by the collected frames).
        checkpoint_dir (path, optional): the trainer's checkpoint folder.
        derived_keys (tuple of keys): entries the algorithm needs from the episode order
            (e.g. ``"mc_return"``, :mod:`~torchrl_offline.data.episodes`). Online steps
            then enter the buffer when their episode ends, with the entries computed over
            the whole episode; the unfinished episode is kept aside (and in the state).
        gamma (float): the discount of derived Monte Carlo returns. Defaults to ``0.99``.

    Attributes:
        episode_returns (list of float): returns of the online episodes finished so far.
        frames (int): env steps collected.

    Examples:
        >>> import torch
        >>> from tensordict import TensorDict
        >>> from torchrl.collectors import Collector
        >>> from torchrl.data import LazyTensorStorage, OfflineToOnlineReplayBuffer, ReplayBuffer
        >>> from torchrl.envs import GymEnv
        >>> from torchrl.envs.utils import RandomPolicy
        >>> from torchrl_offline.trainers.finetune import TRAINING_KEYS, OnlineSource
        >>> env = GymEnv("Pendulum-v1")
        >>> offline = ReplayBuffer(storage=LazyTensorStorage(20))
        >>> _ = offline.extend(env.rollout(20).select(*TRAINING_KEYS))
        >>> collector = Collector(env, RandomPolicy(env.action_spec), frames_per_batch=5,
        ...                       total_frames=-1)
        >>> mixed = OfflineToOnlineReplayBuffer(offline, online_capacity=100, batch_size=8)
        >>> source = OnlineSource(collector, mixed, batch_size=8, collect_every=5)
        >>> batch = next(iter(source))
        >>> batch.batch_size, len(mixed.online_buffer)
        (torch.Size([8]), 5)
        >>> collector.shutdown()
    """

    init_random_frames = 0

    def __init__(
        self,
        collector: Collector,
        buffer: OfflineToOnlineReplayBuffer,
        *,
        batch_size: int,
        collect_every: int,
        anneal_steps: int | None = None,
        exploration: Any = None,
        checkpoint_dir: str | os.PathLike | None = None,
        derived_keys: tuple[NestedKey, ...] = (),
        gamma: float = 0.99,
    ) -> None:
        self.collector = collector
        self.buffer = buffer
        self.batch_size = int(batch_size)
        self.collect_every = max(int(collect_every), 1)
        self.anneal_steps = anneal_steps
        self.exploration = exploration
        self.episode_returns: list[float] = []
        self.frames = 0
        self._running = 0.0
        self._iterations = 0
        self._iterator: Iterator[TensorDictBase] | None = None
        self._store = _ChunkStore(Path(checkpoint_dir)) if checkpoint_dir is not None else None
        self._chunks: list[tuple[str, int, int]] = []  # (name, start, end) on disk
        self._saved_total = 0  # transitions already in a chunk
        self.derived_keys = tuple(derived_keys)
        self.gamma = float(gamma)
        self._pending: TensorDictBase | None = None  # the unfinished episode's steps

    def _collect(self) -> None:
        if self._iterator is None:
            self._iterator = iter(self.collector)
        data = next(self._iterator)
        data = data.reshape(-1)
        reward = data.get(("next", "reward")).reshape(-1).tolist()
        done = data.get(("next", "done")).reshape(-1).tolist()
        for r, d in zip(reward, done):
            self._running += r
            if d:
                self.episode_returns.append(self._running)
                self._running = 0.0
        self._store_steps(data.select(*TRAINING_KEYS).clone())
        self.frames += data.numel()
        if self.exploration is not None:
            self.exploration.step(data.numel())

    def _store_steps(self, steps: TensorDictBase) -> None:
        """Adds collected steps to the online buffer: at once, or, with derived entries,
        each episode when it ends (with its returns to go and next actions)."""
        if not self.derived_keys:
            self.buffer.extend(steps)
            return
        if self._pending is not None:
            steps = torch.cat([self._pending, steps])
        ends = steps.get(("next", "done")).reshape(steps.shape[0], -1).any(-1).nonzero()
        cut = int(ends[-1, 0]) + 1 if ends.numel() else 0
        self._pending = steps[cut:] if cut < steps.shape[0] else None
        if cut:
            finished = steps[:cut]
            self.buffer.extend(
                derive_keys(finished, self.derived_keys, gamma=self.gamma, check_order=False)
            )

    def __iter__(self) -> Iterator[TensorDictBase]:
        while True:
            if self._iterations % self.collect_every == 0:
                self._collect()
            if self.anneal_steps:
                self.buffer.anneal(self._iterations, self.anneal_steps)
            self._iterations += 1
            yield self.buffer.sample(self.batch_size)

    def set_seed(self, seed: int, static_seed: bool = False) -> int:
        """Seeds the collector's env(s)."""
        return self.collector.set_seed(seed, static_seed=static_seed)

    def shutdown(self) -> None:
        """Shuts the collector down."""
        self.collector.shutdown()

    # -------------------------------------------------------------------- state
    @property
    def _online(self) -> ReplayBuffer:
        return self.buffer.online_buffer

    def _transitions(self, start: int, end: int) -> TensorDictBase:
        """Online transitions ``start`` to ``end - 1`` (insertion order) from the ring."""
        capacity = self._online._storage.max_size
        index = torch.arange(start, end) % capacity
        return self._online._storage[index].clone()

    def _buffer_state(self) -> dict[str, Any]:
        writer = self._online._writer
        total = int(writer._write_count)
        capacity = int(self._online._storage.max_size)
        low = max(0, total - capacity)
        state: dict[str, Any] = {"total": total, "capacity": capacity}
        if self._store is None:
            state["data"] = self._transitions(low, total).to_dict() if total > low else None
            return state
        start = max(self._saved_total, low)
        if total > start:
            name = self._store.write(self._transitions(start, total), start)
            self._chunks.append((name, start, total))
        self._chunks = [c for c in self._chunks if c[2] > low]
        self._saved_total = total
        state["chunks"] = [list(c) for c in self._chunks]
        self._store.commit(self._iterations, [c[0] for c in self._chunks])
        return state

    def _load_buffer(self, state: Mapping[str, Any]) -> None:
        total, capacity = int(state["total"]), int(state["capacity"])
        if capacity != int(self._online._storage.max_size):
            raise CheckpointError(
                f"the checkpoint's online buffer holds {capacity} transitions, this run "
                f"{int(self._online._storage.max_size)} (online_capacity differs)"
            )
        low = max(0, total - capacity)
        if "data" in state:
            data = state["data"]
            data = None if data is None else TensorDict(data, batch_size=[total - low])
            self._chunks = []
        else:
            if self._store is None:
                raise CheckpointError(
                    "the checkpoint keeps its online buffer in chunks; pass checkpoint_dir"
                )
            self._chunks = [(str(n), int(s), int(e)) for n, s, e in state["chunks"]]
            self._chunks = [c for c in self._chunks if c[2] > low]
            pieces = [self._store.read(n)[max(low - s, 0) :] for n, s, e in self._chunks]
            data = torch.cat(pieces) if pieces else None
        writer = self._online._writer
        writer._cursor = low % capacity
        writer._write_count = low
        if data is not None:
            self._online.extend(data)
        if int(writer._write_count) != total:
            raise CheckpointError(
                f"the checkpoint's online buffer is incomplete: {int(writer._write_count)} "
                f"of {total} transitions"
            )
        self._saved_total = total

    def state_dict(self) -> dict[str, Any]:
        collector = self.collector
        env_state = _env_state(collector.env)
        state: dict[str, Any] = {
            "frames": self.frames,
            "iterations": self._iterations,
            "episode_returns": list(self.episode_returns),
            "running": self._running,
            "buffer": self._buffer_state(),
            "pending": None if self._pending is None else self._pending.to_dict(),
            "offline_fraction": float(self.buffer.offline_fraction),
            "collector": {"frames": int(collector._frames), "iter": int(collector._iter)},
            "env": env_state,
        }
        if env_state is not None:  # the carried observation is only valid with its env state
            state["collector"]["carrier"] = collector._carrier.to_dict()
        if isinstance(collector.env, TransformedEnv):  # e.g. a StepCounter's or ObservationNorm's
            state["collector"]["transform"] = collector.env.transform.state_dict()
        pool = getattr(collector, "_traj_pool", None)
        if pool is not None:
            state["collector"]["traj_pool"] = pool.state_dict()
        if isinstance(self.exploration, torch.nn.Module):
            state["exploration"] = self.exploration.state_dict()
        offline = self.buffer.offline_buffer
        offline = getattr(offline, "buffer", offline)
        state["offline_sampler"] = offline._sampler.state_dict()
        rng = getattr(offline, "_rng", None)
        if rng is not None:
            state["offline_rng"] = rng.get_state()
        return state

    def load_state_dict(self, state_dict: Mapping[str, Any]) -> None:
        self.frames = int(state_dict.get("frames", 0))
        self._iterations = int(state_dict.get("iterations", 0))
        self.episode_returns = list(state_dict.get("episode_returns", []))
        self._running = float(state_dict.get("running", 0.0))
        if "buffer" in state_dict:
            self._load_buffer(state_dict["buffer"])
        pending = state_dict.get("pending")
        self._pending = (
            None
            if pending is None
            else TensorDict(pending, batch_size=[len(pending["observation"])])
        )
        if "offline_fraction" in state_dict:
            self.buffer._offline_fraction = float(state_dict["offline_fraction"])
        collector = self.collector
        saved = state_dict.get("collector", {})
        collector._frames = int(saved.get("frames", 0))
        collector._iter = int(saved.get("iter", -1))
        if "transform" in saved and isinstance(collector.env, TransformedEnv):
            collector.env.transform.load_state_dict(saved["transform"])
        if "traj_pool" in saved and getattr(collector, "_traj_pool", None) is not None:
            collector._traj_pool.load_state_dict(saved["traj_pool"])
        if state_dict.get("env") is not None and "carrier" in saved:
            _set_env_state(collector.env, state_dict["env"])
            carrier = collector._carrier
            carrier.update(TensorDict(saved["carrier"], batch_size=carrier.batch_size))
        elif "buffer" in state_dict:
            warnings.warn(
                "the environment's state could not be saved with the checkpoint: the "
                "resumed fine-tuning starts a new online episode",
                UserWarning,
                stacklevel=2,
            )
        if "exploration" in state_dict and isinstance(self.exploration, torch.nn.Module):
            self.exploration.load_state_dict(state_dict["exploration"])
        offline = self.buffer.offline_buffer
        offline = getattr(offline, "buffer", offline)
        if "offline_sampler" in state_dict:
            offline._sampler.load_state_dict(state_dict["offline_sampler"])
        rng = getattr(offline, "_rng", None)
        if rng is not None and "offline_rng" in state_dict:
            rng.set_state(state_dict["offline_rng"])


def _exploration_policy(algo: Algorithm, noise: float) -> tuple[TensorDictModuleBase, Any]:
    """The policy that acts in the env: stochastic actors sample; deterministic ones add
    Gaussian noise (a fraction ``noise`` of the action half-range) or act epsilon-greedily."""
    policy = algo.policy
    inner = getattr(policy, "policy", policy)  # a NormalizedPolicy wraps the actor
    if isinstance(inner, ProbabilisticActor):
        return policy, None
    spec = algo.action_spec
    if isinstance(spec, Bounded):
        half = float(((spec.space.high - spec.space.low) / 2).mean())
        module = AdditiveGaussianModule(
            spec, sigma_init=1.0, sigma_end=1.0, annealing_num_steps=1, std=noise * half
        )
    else:
        module = EGreedyModule(spec, eps_init=float(noise), eps_end=float(noise))
    return TensorDictSequential(policy, module), module


def finetune(
    algorithm: Algorithm,
    dataset: ReplayBuffer,
    env: EnvBase | str,
    *,
    total_steps: int,
    seed: int = 0,
    out_dir: str | os.PathLike | None = None,
    resume: bool | str | os.PathLike = False,
    overwrite: bool = False,
    batch_size: int = 256,
    offline_fraction: float = 0.5,
    anneal_steps: int | None = None,
    online_capacity: int = 1_000_000,
    frames_per_batch: int = 100,
    utd_ratio: float = 1.0,
    exploration_noise: float = 0.1,
    eval_env: EnvBase | str | None = None,
    eval_interval: int = 5000,
    eval_episodes: int = 10,
    eval_max_steps: int = 1000,
    checkpoint_interval: int = 5000,
    keep_checkpoints: int = 2,
    log_interval: int = 1000,
    logger: str | Logger | None = "csv",
    progress: bool = True,
    hooks: Sequence[TrainerHookBase] = (),
) -> TrainResult:
    """Fine-tunes an (offline-trained) algorithm online, with the same loss module.

    A TorchRL :class:`~torchrl.collectors.Collector` runs the policy in ``env`` (sampling
    from stochastic actors; Gaussian noise for deterministic ones; epsilon-greedy for
    discrete Q-learning), ``frames_per_batch`` steps at a time, every
    ``frames_per_batch / utd_ratio`` updates. Each update's batch is
    ``offline_fraction`` offline data and the rest online data
    (:class:`~torchrl.data.OfflineToOnlineReplayBuffer`; the fraction decays linearly to
    zero over ``anneal_steps`` updates when given). Online episode returns are logged as
    ``online/episode_return``.

    Checkpoints (in ``out_dir/checkpoints``) hold the online buffer (memory-mapped
    chunks in ``out_dir/checkpoints/online_buffer``), the collector's and env's state
    and everything an offline checkpoint holds. With ``resume=True`` the newest one is
    loaded and the run continues to ``total_steps``; on classic-control and MuJoCo envs
    the result is bitwise that of an uninterrupted run (same machine). Ctrl-C ends the
    current update, writes a checkpoint and returns.

    Args:
        algorithm: the algorithm to fine-tune, e.g. ``train(...).algorithm`` or
            ``load_algorithm(checkpoint)[0]``.
        dataset: its offline dataset.
        env: the environment (a gymnasium id or a TorchRL env) matching the dataset.

    Keyword Args:
        total_steps: gradient steps of fine-tuning.
        seed: seeds torch, NumPy, Python and the env.
        out_dir: run directory for logs and checkpoints (``None`` writes nothing).
        resume: ``True`` continues from the newest fine-tuning checkpoint in ``out_dir``
            (an error when there is none), a checkpoint file of ``out_dir/checkpoints``
            from that one (the newer ones are renamed ``<name>.set-aside``);
            ``algorithm``'s weights are replaced by the checkpoint's. The dataset (content fingerprint), batch size, seed and
            fine-tuning settings must be the checkpoint's.
        overwrite: replace the run already in ``out_dir`` (only a run directory of ours);
            without it (or ``resume``) a directory holding a run is refused, as in
            :func:`~torchrl_offline.trainers.offline.train`.
        batch_size: transitions per update.
        offline_fraction: share of each batch drawn from the offline data, in ``(0, 1)``.
        anneal_steps: updates over which the share decays to zero (``None``: constant).
        online_capacity: size of the online buffer.
        frames_per_batch: env steps per collection.
        utd_ratio: updates per collected env step.
        exploration_noise: Gaussian noise (fraction of the action half-range) for
            deterministic actors, epsilon for discrete greedy ones.
        eval_env, eval_interval, eval_episodes, eval_max_steps, checkpoint_interval,
        keep_checkpoints, log_interval, logger, progress, hooks: as in
            :func:`~torchrl_offline.trainers.offline.train`.

    Returns:
        A :class:`~torchrl_offline.trainers.offline.TrainResult` (its ``evaluations``
        come from ``eval_env``; the online episode returns are in the logs).

    Raises:
        AlgorithmError: bad settings, or an env not matching the algorithm's specs.
        CheckpointError: ``resume`` with a corrupt checkpoint, an offline-training
            checkpoint, or one of another algorithm, fine-tuning settings, dataset,
            batch size or seed.
        RunDirectoryError: ``out_dir`` is in use, holds a run and neither ``resume``
            nor ``overwrite`` is set, or has nothing to resume.

    Examples:
        >>> import torch
        >>> from torchrl.envs import GymEnv
        >>> from torchrl_offline.data import UniformRandomPolicy, collect_dataset, load_minari
        >>> from torchrl_offline.trainers.offline import train
        >>> from torchrl_offline.trainers.finetune import finetune
        >>> import tempfile
        >>> env = GymEnv("Pendulum-v1")
        >>> path = collect_dataset(env, UniformRandomPolicy(env.action_spec), 200,
        ...                        dataset_id="doc/pendulum-v0", root=tempfile.mkdtemp())
        >>> data = load_minari(path, batch_size=32)
        >>> offline = train("iql", data, total_steps=5, batch_size=32, progress=False,
        ...                 logger=None, overrides={"hidden_sizes": (16,)})
        >>> online = finetune(offline.algorithm, data, "Pendulum-v1", total_steps=20,
        ...                   batch_size=32, frames_per_batch=10, progress=False, logger=None)
        >>> online.step
        20
    """
    if not 0.0 < offline_fraction < 1.0:
        raise AlgorithmError(f"offline_fraction must be in (0, 1), got {offline_fraction}")
    if utd_ratio <= 0:
        raise AlgorithmError(f"utd_ratio must be > 0, got {utd_ratio}")
    if frames_per_batch < 1:
        raise AlgorithmError(f"frames_per_batch must be >= 1, got {frames_per_batch}")
    if online_capacity < 1:
        raise AlgorithmError(f"online_capacity must be >= 1, got {online_capacity}")
    if anneal_steps is not None and anneal_steps < 1:
        raise AlgorithmError(f"anneal_steps must be >= 1 or None, got {anneal_steps}")
    if getattr(algorithm.loss, "conservative_states", "all") == "model":
        raise AlgorithmError(
            f"{algorithm.name}'s conservative term pushes down at the rows of model "
            "rollouts, which fine-tuning does not make; set algorithm.loss."
            "conservative_states = 'all' to fine-tune with CQL's term on every row"
        )
    if needs_td_lambda(algorithm):
        raise AlgorithmError(
            f"{algorithm.name} with value_target='td_lambda' recomputes its returns over the "
            "offline dataset, which fine-tuning mixes with unfinished online episodes; "
            "fine-tune with Monte Carlo returns: an AWR trained with "
            "value_target='monte_carlo' (the default), or, in Python, this one rebuilt "
            "with build_algorithm(..., value_target='monte_carlo') and its "
            "loss.load_state_dict(algorithm.loss.state_dict())"
        )
    builder = RunBuilder(
        RunSettings.pick(locals()),
        kind="finetune",
    )
    with builder.claimed(algorithm.name, overwrite=overwrite):
        data, identity = builder.start(dataset)
        data = builder.derive(algorithm, data)
        train_env = as_env(env)
        try:
            check_env(train_env, algorithm)
        except AlgorithmError:
            if train_env is not env:
                train_env.close()
            raise
        train_env.set_seed(seed)
        policy, exploration = _exploration_policy(algorithm, exploration_noise)
        collector = Collector(
            train_env,
            policy,
            frames_per_batch=int(frames_per_batch),
            total_frames=-1,
            auto_register_policy_transforms=True,
        )
        try:
            mixed = OfflineToOnlineReplayBuffer(
                _Selected(data, algorithm.derived_keys),
                online_capacity=int(online_capacity),
                offline_fraction=float(offline_fraction),
                batch_size=int(batch_size),
            )
            out = builder.settings.out_dir
            source = OnlineSource(
                collector,
                mixed,
                batch_size=batch_size,
                collect_every=round(frames_per_batch / utd_ratio),
                anneal_steps=anneal_steps,
                exploration=exploration,
                checkpoint_dir=out / "checkpoints" if out is not None else None,
                derived_keys=algorithm.derived_keys,
                gamma=float(algorithm.hyperparameters.get("gamma", 0.99)),
            )
            settings = {
                "batch_size": int(batch_size),
                "offline_fraction": float(offline_fraction),
                "anneal_steps": anneal_steps,
                "online_capacity": int(online_capacity),
                "frames_per_batch": int(frames_per_batch),
                "utd_ratio": float(utd_ratio),
                "exploration_noise": float(exploration_noise),
            }
            metadata = builder.metadata(algorithm, identity, finetune=settings)
            trainer = builder.trainer(
                algorithm, data, metadata, exp_name=f"{algorithm.name}_finetune"
            )
            trainer.collector = source
            trainer.replay_buffer = mixed
            _OnlineReturns(source).register(trainer)
            _reset_learning_rates(algorithm)
            return builder.run(trainer, algorithm, data, eval_seed=seed + 1)
        finally:
            collector.shutdown()
            if train_env is not env:
                train_env.close()


def _reset_learning_rates(algo: Algorithm) -> None:
    """Fine-tuning runs at the configured constant learning rates (an offline schedule,
    such as IQL's cosine decay of the actor's rate, is not continued). Each parameter
    group's rate setting comes from the algorithm's declaration (``ParamGroup.lr``)."""
    from torchrl_offline import registry

    try:
        lr_keys = {g.name: g.lr for g in registry.get("algorithm", algo.name).optimizer}
    except KeyError:  # an Algorithm built by hand under an unregistered name
        lr_keys = {}
    for group in algo.optimizer.param_groups:
        key = lr_keys.get(group.get("name"))
        if key in algo.hyperparameters:
            group["lr"] = float(algo.hyperparameters[key])
        group.pop("initial_lr", None)


class _OnlineReturns(TrainerHookBase):
    """Logs the returns of online episodes as they finish (``online/episode_return``)."""

    def __init__(self, source: OnlineSource) -> None:
        self.source = source
        self._logged = 0
        self._trainer: Any = None

    def __call__(self, batch: TensorDictBase | None = None) -> None:
        returns = self.source.episode_returns
        logger = getattr(self._trainer, "logger", None)
        step = int(self._trainer.collected_frames)
        for value in returns[self._logged :]:
            if logger is not None:
                logger.log_scalar("online/episode_return", value, step=step)
            self._trainer._log_dict["online/episode_return"].append(value)
        self._logged = len(returns)

    def state_dict(self) -> dict[str, Any]:
        return {"logged": self._logged}

    def load_state_dict(self, state_dict: Mapping[str, Any]) -> None:
        self._logged = int(state_dict.get("logged", 0))

    def register(self, trainer: Any, name: str = "online_returns") -> None:
        self._trainer = trainer
        trainer.register_op("post_steps_log", self)
        trainer.register_module(name, self)
