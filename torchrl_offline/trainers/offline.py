"""Offline training: :func:`train` an algorithm on a dataset, with evaluation, logging,
checkpointing and resuming.

:func:`train` builds the algorithm for the dataset's specs
(:func:`~torchrl_offline.trainers.algorithms.build_algorithm`) and runs it through the
run builder (:mod:`~torchrl_offline.trainers.run`) that fine-tuning shares: an
:class:`OfflineTrainer` (:mod:`~torchrl_offline.trainers.trainer`), which counts gradient
steps, with evaluation, logs, checkpoints and resume, in one process or as one rank of a
data-parallel run (:mod:`~torchrl_offline.trainers.strategy`). The names of the loop
(:class:`OfflineTrainer`, :class:`OfflineSource`), of the result (:class:`TrainResult`),
of checkpoint loading (:func:`load_algorithm`) and of environments (:func:`as_env`,
:func:`float32_observations`) are importable from here too.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from typing import Any

from torchrl.data import ReplayBuffer
from torchrl.envs import EnvBase
from torchrl.record.loggers import Logger
from torchrl.trainers import LRSchedulerHook, TrainerHookBase

from torchrl_offline.trainers.algorithms import (
    Algorithm,
    AlgorithmError,
    build_algorithm,
    make_lr_scheduler,
    specs_from_dataset,
)
from torchrl_offline.trainers.envs import as_env, float32_observations
from torchrl_offline.trainers.metadata import load_algorithm
from torchrl_offline.trainers.model_rollouts import attach_model_rollouts, needs_model_rollouts
from torchrl_offline.trainers.normalization import observation_moments
from torchrl_offline.trainers.process_group import DistributedContext
from torchrl_offline.trainers.run import RunBuilder, RunSettings, TrainResult
from torchrl_offline.trainers.strategy import SingleProcess, Strategy, strategy_for
from torchrl_offline.trainers.td_lambda import attach_td_lambda, needs_td_lambda
from torchrl_offline.trainers.trainer import OfflineSource, OfflineTrainer

__all__ = [
    "OfflineSource",
    "OfflineTrainer",
    "TrainResult",
    "as_env",
    "float32_observations",
    "load_algorithm",
    "train",
]


def train(
    algorithm: str | Algorithm,
    dataset: ReplayBuffer,
    *,
    total_steps: int,
    seed: int = 0,
    out_dir: str | os.PathLike | None = None,
    resume: bool | str | os.PathLike = False,
    overwrite: bool = False,
    batch_size: int = 256,
    preset: str | None = None,
    overrides: Mapping[str, Any] | None = None,
    normalize_observations: bool = False,
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
    distributed: bool | DistributedContext | None = None,
) -> TrainResult:
    """Trains an offline algorithm on a dataset, with evaluation, logs and checkpoints.

    Seeds torch, NumPy and Python with ``seed``, builds the algorithm for the dataset's
    specs (:func:`~torchrl_offline.trainers.algorithms.build_algorithm`), and runs an
    :class:`OfflineTrainer` for ``total_steps`` gradient steps with: the target updater
    and learning-rate schedule of the algorithm, loss logging (``train/loss_*``),
    evaluation in ``eval_env`` (``eval/return_mean`` ...), the extra ``hooks``, a
    progress bar, and checkpoints in ``out_dir/checkpoints``. With ``resume=True`` the
    newest checkpoint in ``out_dir`` is loaded and the run continues to
    ``total_steps`` exactly as if it had not stopped (same parameters, bitwise, on the
    same machine). Ctrl-C ends the current update, writes a checkpoint and returns.

    ``out_dir`` is owned by the run
    (:func:`~torchrl_offline.trainers.run_dir.claim_run_directory`): a lock file keeps
    other processes out while it runs, and a directory already holding a run is refused
    unless ``resume`` or ``overwrite`` is set. Resuming checks that the algorithm,
    spaces, hyperparameters, dataset (content fingerprint), batch size and seed are the
    checkpoint's (:mod:`~torchrl_offline.trainers.resume`).

    Args:
        algorithm: an algorithm name (see
            :data:`~torchrl_offline.trainers.algorithms.ALGORITHMS`) or a built
            :class:`~torchrl_offline.trainers.algorithms.Algorithm`.
        dataset: the replay buffer (e.g. from :func:`torchrl_offline.data.load_minari`).

    Keyword Args:
        total_steps: gradient steps to reach (counted from the start of the run).
        seed: the run's seed.
        out_dir: the run directory (``checkpoints/`` and ``logs/``); ``None`` writes
            nothing.
        resume: ``True`` continues from the newest checkpoint in ``out_dir`` (an error
            when there is none); a checkpoint file of ``out_dir/checkpoints`` continues
            from that one (e.g. the previous good checkpoint that a damaged newest one's
            error names), after renaming the newer ones to ``<name>.set-aside``.
        overwrite: replace the run already in ``out_dir`` (only a run directory of
            ours: its checkpoints, logs, ``summary.json`` and ``run.json`` go; other
            files stay).
        batch_size: transitions per update (it replaces the dataset's own batch size).
        preset: a named published setting of the algorithm (e.g. IQL's ``"antmaze"``,
            with a name only); ``overrides`` apply on top of it.
        overrides: hyperparameters for ``build_algorithm`` (with a name only).
        normalize_observations: train the networks on observations normalised by the
            dataset's mean and standard deviation (with a name only); the policy still
            takes raw observations and checkpoints keep the statistics.
        eval_env: an environment or gymnasium id to evaluate in, or ``None``.
        eval_interval: steps between evaluations.
        eval_episodes: episodes per evaluation.
        eval_max_steps: cap on evaluation episode length.
        checkpoint_interval: steps between checkpoints.
        keep_checkpoints: checkpoints kept on disk.
        log_interval: steps between logged loss means.
        logger: ``"csv"``, ``"tensorboard"``, ``"wandb"``, ``"mlflow"``, a TorchRL
            ``Logger``, or ``None``. A logger kind needs ``out_dir``.
        progress: show a progress bar.
        hooks: more TorchRL trainer hooks (e.g. ``EarlyStopping``, an OPE hook),
            registered with ``hook.register(trainer)`` after evaluation.
        distributed: data-parallel training over ``torch.distributed``
            (:mod:`~torchrl_offline.trainers.distributed`): ``None`` (default) when the
            process was started by ``torchrun``, ``True`` always, ``False`` never, or a
            :class:`~torchrl_offline.trainers.distributed.DistributedContext`. Every rank
            calls ``train`` with the same arguments; ``batch_size`` is per rank; each rank
            samples its own shard of ``dataset``; evaluation, ``hooks``, progress, logs
            and checkpoints are on rank 0 only. See ``docs/distributed.md``.

    Returns:
        A :class:`TrainResult`.

    Raises:
        AlgorithmError: unknown algorithm or hyperparameter, or an env not matching the
            dataset.
        CheckpointError: ``resume`` with a corrupt checkpoint or one of another
            algorithm, spaces, hyperparameters, dataset, batch size or seed.
        RunDirectoryError: ``out_dir`` is in use by another process, holds a run and
            neither ``resume`` nor ``overwrite`` is set, has nothing to resume, or is
            not a run of ours to overwrite.

    Examples:
        >>> import torch
        >>> from tensordict import TensorDict
        >>> from torchrl_offline.data.storage import make_replay_buffer
        >>> from torchrl_offline.trainers.offline import train
        >>> n = 64
        >>> rb = make_replay_buffer(TensorDict({
        ...     "observation": torch.randn(n, 3), "action": torch.rand(n, 1) * 2 - 1,
        ...     ("next", "observation"): torch.randn(n, 3), ("next", "reward"): torch.randn(n, 1),
        ...     ("next", "done"): torch.zeros(n, 1, dtype=torch.bool),
        ...     ("next", "terminated"): torch.zeros(n, 1, dtype=torch.bool)}, [n]))
        >>> result = train("iql", rb, total_steps=3, batch_size=8, progress=False,
        ...                logger=None, overrides={"hidden_sizes": (16,)})
        >>> result.step, result.stop_reason
        (3, None)
    """
    strategy = strategy_for(distributed)
    try:
        builder = RunBuilder(
            RunSettings.pick(locals()),
            kind="train",
            strategy=strategy,
        )
        name = algorithm if isinstance(algorithm, str) else algorithm.name
        with builder.claimed(name, overwrite=overwrite):
            data, identity = builder.start(dataset)
            algo = _algorithm(algorithm, data, preset, overrides, normalize_observations, strategy)
            data = builder.derive(algo, data)
            trainer = builder.trainer(algo, data, builder.metadata(algo, identity))
            if needs_model_rollouts(algo):
                _model_rollouts(trainer, algo, data, batch_size, seed, strategy)
            if needs_td_lambda(algo):  # its value targets recomputed with the current V
                attach_td_lambda(trainer, algo, data)
            scheduler = make_lr_scheduler(algo, total_steps)
            if scheduler is not None:
                LRSchedulerHook(scheduler).register(trainer)
            return builder.run(trainer, algo, data)
    finally:
        strategy.close()


def _algorithm(
    algorithm: str | Algorithm,
    data: ReplayBuffer,
    preset: str | None,
    overrides: Mapping[str, Any] | None,
    normalize_observations: bool,
    strategy: Strategy,
) -> Algorithm:
    """``algorithm`` built for ``data``'s specs (the main process's observation
    statistics, when normalising), or the built ``algorithm`` as it is."""
    if not isinstance(algorithm, str):
        if overrides or preset is not None or normalize_observations:
            raise AlgorithmError(
                "preset, overrides and normalize_observations apply to an algorithm name, "
                "not a built Algorithm (pass them to build_algorithm instead)"
            )
        return algorithm
    obs_spec, act_spec = specs_from_dataset(data)
    norm = observation_moments(data) if normalize_observations else None
    norm = strategy.share(norm, what="broadcasting observation statistics")
    return strategy.call(
        "building the algorithm",
        build_algorithm,
        algorithm,
        obs_spec,
        act_spec,
        preset=preset,
        observation_norm=norm,
        **dict(overrides or {}),
    )


def _model_rollouts(
    trainer: OfflineTrainer,
    algo: Algorithm,
    data: ReplayBuffer,
    batch_size: int,
    seed: int,
    strategy: Strategy,
) -> None:
    """Trains a model-based algorithm (its declaration's need "model rollouts") on
    mixed dataset and model batches (:mod:`~torchrl_offline.trainers.model_rollouts`)."""
    if not isinstance(strategy, SingleProcess):
        raise AlgorithmError(
            f"{algo.name} trains on rollouts in a learned model, which data-parallel "
            "training does not support yet; train it in one process"
        )
    attach_model_rollouts(
        trainer,
        algo.policy,
        data,
        settings=algo.hyperparameters,
        observation_dim=int(algo.observation_spec.shape[-1]),
        action_dim=int(algo.action_spec.shape[-1]),
        batch_size=batch_size,
        seed=seed,
    )
