"""Offline-to-online fine-tuning: the same loss, trained on offline data mixed with new
experience gathered by a TorchRL :class:`~torchrl.collectors.Collector`.

Batches come from TorchRL's :class:`~torchrl.data.OfflineToOnlineReplayBuffer`: a fixed
fraction of each batch from the offline dataset, the rest from the online buffer, the
fraction optionally annealed linearly to zero. The training loop is an
:class:`~torchrl_offline.trainers.offline.OfflineTrainer`, so every hook of offline
training (evaluation, logging, checkpoints, TorchRL's hooks) works here too, and steps
are gradient steps.
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from tensordict import TensorDictBase
from tensordict.nn import TensorDictModuleBase, TensorDictSequential
from torchrl.collectors import Collector
from torchrl.data import Bounded, OfflineToOnlineReplayBuffer, ReplayBuffer
from torchrl.envs import EnvBase
from torchrl.modules import AdditiveGaussianModule, EGreedyModule, ProbabilisticActor
from torchrl.record.loggers import Logger
from torchrl.trainers import TrainerHookBase

from torchrl_offline.trainers.algorithms import Algorithm, AlgorithmError
from torchrl_offline.trainers.hooks import (
    CheckpointHook,
    EvaluationHook,
    LogLosses,
    ProgressBar,
    make_logger,
)
from torchrl_offline.trainers.normalization import NormalizeObservations
from torchrl_offline.trainers.offline import (
    OfflineTrainer,
    TrainResult,
    _algorithm_metadata,
    _check_env,
    _make_env,
    _reference,
)

__all__ = ["TRAINING_KEYS", "OnlineSource", "finetune"]

#: The entries kept from offline and online data (both must have them, with equal dtypes).
TRAINING_KEYS = (
    "observation",
    "action",
    ("next", "observation"),
    ("next", "reward"),
    ("next", "done"),
    ("next", "terminated"),
)


class _Selected:
    """A replay buffer view sampling only :data:`TRAINING_KEYS` (so offline and online
    batches concatenate)."""

    def __init__(self, buffer: ReplayBuffer) -> None:
        self.buffer = buffer

    def sample(self, batch_size: int) -> TensorDictBase:
        with warnings.catch_warnings():  # a share of the batch differs from the buffer's size
            warnings.filterwarnings("ignore", "Got conflicting batch_sizes", UserWarning)
            return self.buffer.sample(batch_size).select(*TRAINING_KEYS)

    def __len__(self) -> int:
        return len(self.buffer)


class OnlineSource:
    """Collects from an env every ``collect_every`` iterations, then yields mixed batches.

    It stands where a collector stands in an :class:`OfflineTrainer`: each iteration
    first runs the collector when due (``frames_per_batch`` env steps, added to the
    online part of ``buffer``), anneals the offline fraction, then yields one batch.

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

    Attributes:
        episode_returns (list of float): returns of the online episodes finished so far.
        frames (int): env steps collected.
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
        self.buffer.extend(data.select(*TRAINING_KEYS).clone())
        self.frames += data.numel()
        if self.exploration is not None:
            self.exploration.step(data.numel())

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

    def state_dict(self) -> dict[str, Any]:
        return {
            "frames": self.frames,
            "iterations": self._iterations,
            "episode_returns": list(self.episode_returns),
        }

    def load_state_dict(self, state_dict: Mapping[str, Any]) -> None:
        self.frames = int(state_dict.get("frames", 0))
        self._iterations = int(state_dict.get("iterations", 0))
        self.episode_returns = list(state_dict.get("episode_returns", []))


def _exploration_policy(algo: Algorithm, noise: float) -> tuple[TensorDictModuleBase, Any]:
    """The policy that acts in the env: stochastic actors sample; deterministic ones add
    Gaussian noise (a fraction ``noise`` of the action half-range) or act epsilon-greedily."""
    policy = algo.policy
    if isinstance(policy, ProbabilisticActor):
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

    Args:
        algorithm: the algorithm to fine-tune, e.g. ``train(...).algorithm`` or
            ``load_algorithm(checkpoint)[0]``.
        dataset: its offline dataset.
        env: the environment (a gymnasium id or a TorchRL env) matching the dataset.

    Keyword Args:
        total_steps: gradient steps of fine-tuning.
        seed: seeds torch and the env.
        out_dir: run directory for logs and checkpoints (``None`` writes nothing).
        batch_size: transitions per update.
        offline_fraction: share of each batch drawn from the offline data, in ``(0, 1)``.
        anneal_steps: updates over which the share decays to zero (``None``: constant).
        online_capacity: size of the online buffer.
        frames_per_batch: env steps per collection.
        utd_ratio: updates per collected env step.
        exploration_noise: Gaussian noise (fraction of the action half-range) for
            deterministic actors, epsilon for discrete greedy ones.
        eval_env, eval_interval, eval_episodes, eval_max_steps, checkpoint_interval,
        log_interval, logger, progress, hooks: as in
            :func:`~torchrl_offline.trainers.offline.train`.

    Returns:
        A :class:`~torchrl_offline.trainers.offline.TrainResult` (its ``evaluations``
        come from ``eval_env``; the online episode returns are in the logs).

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
    torch.manual_seed(seed)
    algo = algorithm
    train_env = _make_env(env)
    _check_env(train_env, algo)
    train_env.set_seed(seed)
    policy, exploration = _exploration_policy(algo, exploration_noise)
    collector = Collector(
        train_env,
        policy,
        frames_per_batch=int(frames_per_batch),
        total_frames=-1,
        auto_register_policy_transforms=True,
    )
    mixed = OfflineToOnlineReplayBuffer(
        _Selected(dataset),
        online_capacity=int(online_capacity),
        offline_fraction=float(offline_fraction),
        batch_size=int(batch_size),
    )
    source = OnlineSource(
        collector,
        mixed,
        batch_size=batch_size,
        collect_every=round(frames_per_batch / utd_ratio),
        anneal_steps=anneal_steps,
        exploration=exploration,
    )
    out = Path(out_dir) if out_dir is not None else None
    log_dir = None
    if isinstance(logger, Logger):
        the_logger: Logger | None = logger
    elif logger and out is not None:
        log_dir = out / "logs"
        the_logger = make_logger(logger, log_dir, exp_name=f"{algo.name}_finetune")
    else:
        the_logger = None

    trainer = OfflineTrainer(
        replay_buffer=dataset,
        loss_module=algo.loss,
        optimizer=algo.optimizer,
        total_steps=total_steps,
        batch_size=batch_size,
        loss_components=algo.loss_keys,
        target_net_updater=algo.target_updater,
        logger=the_logger,
        log_interval=log_interval,
        metadata={**_algorithm_metadata(algo), "finetune": True},
    )
    trainer.collector = source
    trainer.replay_buffer = mixed
    if algo.observation_norm is not None:  # online data is raw, like the offline data
        NormalizeObservations(*algo.observation_norm).register(trainer)
    _OnlineReturns(source).register(trainer)
    _reset_learning_rates(algo)
    LogLosses(log_interval).register(trainer)
    evaluation = None
    eval_env_arg = eval_env
    if eval_env is not None:
        eval_env = _make_env(eval_env)
        _check_env(eval_env, algo)
        evaluation = EvaluationHook(
            eval_env,
            algo.policy,
            interval=eval_interval,
            num_episodes=eval_episodes,
            seed=seed + 1,
            max_steps=eval_max_steps,
            reference=_reference(dataset),
        )
        evaluation.register(trainer)
    for hook in hooks:
        hook.register(trainer)
    if progress:
        ProgressBar().register(trainer)
    checkpointer = None
    if out is not None:
        checkpointer = CheckpointHook(out / "checkpoints", interval=checkpoint_interval)
        checkpointer.register(trainer)
    try:
        trainer.train()
    finally:
        collector.shutdown()
        if train_env is not env:
            train_env.close()
        if evaluation is not None and evaluation.env is not eval_env_arg:
            evaluation.env.close()
    return TrainResult(
        algorithm=algo,
        step=trainer.step,
        evaluations=list(evaluation.history) if evaluation is not None else [],
        checkpoint=checkpointer.last_path if checkpointer is not None else None,
        log_dir=log_dir,
        stop_reason=trainer.stop_reason,
    )


_LR_KEYS = {"actor": "actor_lr", "qvalue": "critic_lr", "value": "value_lr", "alpha": "alpha_lr"}


def _reset_learning_rates(algo: Algorithm) -> None:
    """Fine-tuning runs at the configured constant learning rates (an offline schedule,
    such as IQL's cosine decay of the actor's rate, is not continued)."""
    for group in algo.optimizer.param_groups:
        key = _LR_KEYS.get(group.get("name"))
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
