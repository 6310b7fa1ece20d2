"""One training run, set up the same way by ``train``, ``finetune`` and data-parallel
training.

A run claims its directory, seeds the global generators, makes its logger, builds an
:class:`~torchrl_offline.trainers.trainer.OfflineTrainer` for the algorithm with the
hooks every run has (observation normalisation, loss logging, evaluation, the user's
hooks, a progress bar, checkpoints), resumes from a checkpoint when asked, trains and
reports a :class:`TrainResult`. :class:`RunBuilder` does each of these once;
:func:`~torchrl_offline.trainers.offline.train` adds only what is its own (the algorithm
built from a name, its learning-rate schedule) and
:func:`~torchrl_offline.trainers.finetune.finetune` its own (the collector, the mixed
buffer, the online returns). How the run is spread over processes is the builder's
strategy (:mod:`~torchrl_offline.trainers.strategy`): one process by default, one rank of
a ``torchrun`` job with :class:`~torchrl_offline.trainers.strategy.DataParallel`.
"""

from __future__ import annotations

import contextlib
import os
import random
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torchrl.data import ReplayBuffer
from torchrl.envs import EnvBase
from torchrl.record.loggers import Logger
from torchrl.trainers import TrainerHookBase

from torchrl_offline.data.episodes import with_derived_keys
from torchrl_offline.trainers.algorithms import Algorithm
from torchrl_offline.trainers.envs import as_env, check_env
from torchrl_offline.trainers.hooks import (
    CheckpointHook,
    EvaluationHook,
    LogLosses,
    ProgressBar,
    make_logger,
)
from torchrl_offline.trainers.metadata import algorithm_metadata
from torchrl_offline.trainers.metrics import FIGURE_FILE, METRICS_FILE
from torchrl_offline.trainers.normalization import NormalizeObservations
from torchrl_offline.trainers.resume import find_resumable, run_identity
from torchrl_offline.trainers.run_info import (
    dataset_summary,
    env_id,
    record_run_info,
    run_config,
)
from torchrl_offline.trainers.run_logs import LogRates, MetricsLogger, RecordMetrics
from torchrl_offline.trainers.strategy import SingleProcess, Strategy
from torchrl_offline.trainers.trainer import OfflineTrainer

__all__ = ["RunBuilder", "RunSettings", "TrainResult", "seed_everything"]


def seed_everything(seed: int) -> None:
    """Seeds torch's, NumPy's and Python's global generators with ``seed``.

    Examples:
        >>> import torch
        >>> from torchrl_offline.trainers.run import seed_everything
        >>> seed_everything(0)
        >>> a = torch.rand(1)
        >>> seed_everything(0)
        >>> bool(torch.rand(1) == a)
        True
    """
    torch.manual_seed(seed)
    np.random.seed(seed % 2**32)
    random.seed(seed)


@dataclass
class TrainResult:
    """What :func:`~torchrl_offline.trainers.offline.train` and
    :func:`~torchrl_offline.trainers.finetune.finetune` return.

    Attributes:
        algorithm: the trained algorithm (``algorithm.policy`` is the policy).
        step: gradient steps done.
        evaluations: one entry per evaluation (``step``, ``return_mean``,
            ``return_std``, ``normalized_score``, ``episode_length``).
        checkpoint: the last checkpoint written, or ``None``.
        log_dir: the directory of the logs, or ``None``: the run directory (where the
            metrics file is) with the ``"csv"`` logger, ``out_dir/logs`` with another kind.
        stop_reason: ``None`` when ``total_steps`` was reached, ``"interrupted"`` after
            Ctrl-C, or the reason given by a stopping hook.
        metrics: the run's metrics file (``out_dir/metrics.csv``), or ``None``.
        figure: the run's figure (``out_dir/metrics.png``), or ``None``.
    """

    algorithm: Algorithm
    step: int
    evaluations: list[dict[str, Any]] = field(default_factory=list)
    checkpoint: Path | None = None
    log_dir: Path | None = None
    stop_reason: str | None = None
    metrics: Path | None = None
    figure: Path | None = None

    @classmethod
    def of_run(
        cls,
        algorithm: Algorithm,
        trainer: OfflineTrainer,
        evaluation: EvaluationHook | None,
        checkpointer: CheckpointHook | None,
        log_dir: Path | None,
        *,
        metrics: Path | None = None,
        figure: Path | None = None,
    ) -> TrainResult:
        """The result of a finished ``trainer`` run with these (optional) hooks and files
        (those that do not exist are reported as ``None``)."""
        return cls(
            algorithm=algorithm,
            step=trainer.step,
            evaluations=list(evaluation.history) if evaluation is not None else [],
            checkpoint=checkpointer.last_path if checkpointer is not None else None,
            log_dir=log_dir,
            stop_reason=trainer.stop_reason,
            metrics=metrics if metrics is not None and metrics.is_file() else None,
            figure=figure if figure is not None and figure.is_file() else None,
        )


@dataclass(frozen=True)
class RunSettings:
    """The settings every run has: the keyword arguments of the same names of
    :func:`~torchrl_offline.trainers.offline.train` and
    :func:`~torchrl_offline.trainers.finetune.finetune` (documented there), with the
    same defaults; ``out_dir`` is made a :class:`~pathlib.Path`.

    Examples:
        >>> from torchrl_offline.trainers.run import RunSettings
        >>> settings = RunSettings.pick({"total_steps": 10, "out_dir": "runs/a", "other": 1})
        >>> settings.total_steps, settings.out_dir, settings.batch_size
        (10, PosixPath('runs/a'), 256)
    """

    total_steps: int
    seed: int = 0
    out_dir: Path | None = None
    resume: bool | str | os.PathLike = False
    batch_size: int = 256
    eval_env: EnvBase | str | None = None
    eval_interval: int = 5000
    eval_episodes: int = 10
    eval_max_steps: int = 1000
    checkpoint_interval: int = 5000
    keep_checkpoints: int = 2
    log_interval: int = 1000
    logger: str | Logger | None = "csv"
    progress: bool = True
    hooks: Sequence[TrainerHookBase] = ()

    def __post_init__(self) -> None:
        if self.out_dir is not None and not isinstance(self.out_dir, Path):
            object.__setattr__(self, "out_dir", Path(self.out_dir))

    @classmethod
    def pick(cls, arguments: Mapping[str, Any]) -> RunSettings:
        """The settings among ``arguments`` (e.g. a function's ``locals()``); other
        entries are ignored."""
        names = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in arguments.items() if k in names})


class RunBuilder:
    """Sets up, runs and reports one training run.

    Call, in order: :meth:`claimed` (a context holding the run directory), :meth:`start`
    (the run's identity, seeds, this process's part of the data), :meth:`trainer` (the
    logger and the :class:`~torchrl_offline.trainers.trainer.OfflineTrainer`), then
    register what is the caller's own and call :meth:`run` (the shared hooks,
    checkpoints and resume, training, the result). Where the run is spread over
    processes the builder asks ``strategy``; on a process other than the main one
    (rank 0), evaluation, the user's hooks, the logger and the progress bar are off.

    Args:
        settings: the run's settings.

    Keyword Args:
        kind (str): ``"train"`` or ``"finetune"``: recorded in the run directory, and a
            run resumes only checkpoints of its kind. Defaults to ``"train"``.
        strategy (Strategy, optional): how the run is spread over processes;
            :class:`~torchrl_offline.trainers.strategy.SingleProcess` when omitted.

    Attributes:
        settings: the settings (with the side effects off on a non-main process).
        strategy: the strategy.
        evaluation: the evaluation hook, once registered (or ``None``).
        checkpointer: the checkpoint hook, once registered (or ``None``).
        log_dir: the logs' directory, once the logger is made (or ``None``).
        metrics: the logger writing the run's metrics file, once made (or ``None``: no
            ``out_dir`` or no ``logger``, or not the main process).

    Examples:
        >>> import numpy as np
        >>> from torchrl_offline.data.logged import from_logged
        >>> from torchrl_offline.trainers.algorithms import build_algorithm, specs_from_dataset
        >>> from torchrl_offline.trainers.run import RunBuilder, RunSettings
        >>> rng = np.random.default_rng(0)
        >>> rb = from_logged({"observations": rng.normal(size=(32, 3)),
        ...                   "actions": rng.uniform(-1, 1, size=(32, 1)),
        ...                   "rewards": rng.normal(size=32), "terminals": [0] * 31 + [1]})
        >>> builder = RunBuilder(RunSettings(total_steps=3, batch_size=8, logger=None,
        ...                                  progress=False))
        >>> with builder.claimed("iql"):
        ...     data, identity = builder.start(rb)
        ...     algo = build_algorithm("iql", *specs_from_dataset(data), hidden_sizes=(16,))
        ...     trainer = builder.trainer(algo, data, builder.metadata(algo, identity))
        ...     result = builder.run(trainer, algo, data)
        >>> result.step, result.checkpoint
        (3, None)
    """

    def __init__(
        self,
        settings: RunSettings,
        *,
        kind: str = "train",
        strategy: Strategy | None = None,
    ) -> None:
        self.strategy = strategy if strategy is not None else SingleProcess()
        if not self.strategy.is_main:  # the main process alone evaluates, runs hooks, logs
            settings = replace(settings, eval_env=None, hooks=(), logger=None, progress=False)
        self.settings = settings
        self.kind = kind
        self.evaluation: EvaluationHook | None = None
        self.checkpointer: CheckpointHook | None = None
        self.log_dir: Path | None = None
        self.metrics: MetricsLogger | None = None
        self._dataset: dict[str, Any] = {}  # the dataset's summary, for run.json's info
        self._owned_env: EnvBase | None = None  # made here from a gymnasium id: closed here

    # ------------------------------------------------------------------ setup
    @contextlib.contextmanager
    def claimed(self, algorithm: str, *, overwrite: bool = False) -> Iterator[RunBuilder]:
        """Holds the run directory for the ``with`` block
        (:func:`~torchrl_offline.trainers.run_dir.claim_run_directory`, through the
        strategy), releasing it at the end.

        Raises:
            ValueError: ``resume`` or ``overwrite`` without ``out_dir``.
            RunDirectoryError: the directory cannot hold this run.
        """
        settings = self.settings
        if settings.resume and settings.out_dir is None:
            raise ValueError("resume=True needs out_dir")
        claim = self.strategy.claim(
            settings.out_dir,
            kind=self.kind,
            algorithm=algorithm,
            resume=bool(settings.resume),
            overwrite=overwrite,
        )
        try:
            yield self
        finally:
            if claim is not None:
                claim.release()

    def start(self, dataset: ReplayBuffer) -> tuple[ReplayBuffer, dict[str, Any]]:
        """Starts the run on ``dataset``: its identity (content fingerprint, batch size and
        seed, :func:`~torchrl_offline.trainers.resume.run_identity`), the global
        generators seeded, and the part of ``dataset`` this process samples.

        Returns:
            ``(data, identity)``.
        """
        settings = self.settings
        identity = run_identity(dataset, batch_size=settings.batch_size, seed=settings.seed)
        if self._records:
            self._dataset = dataset_summary(dataset)
        seed_everything(settings.seed)
        return self.strategy.shard(dataset, seed=settings.seed), identity

    def derive(self, algo: Algorithm, data: ReplayBuffer) -> ReplayBuffer:
        """``data`` with the entries ``algo`` needs from its episode order (its
        ``derived_keys``, Monte Carlo returns at its ``gamma``), or ``data`` itself."""
        if not algo.derived_keys:
            return data
        gamma = float(algo.hyperparameters.get("gamma", 0.99))
        return self.strategy.call(
            "deriving entries from the episodes",
            with_derived_keys,
            data,
            algo.derived_keys,
            gamma=gamma,
        )

    def metadata(
        self, algo: Algorithm, identity: Mapping[str, Any], **extra: Any
    ) -> dict[str, Any]:
        """What the run's checkpoints record: the algorithm's description
        (:func:`~torchrl_offline.trainers.metadata.algorithm_metadata`), ``extra`` entries
        and the run's identity."""
        return {**algorithm_metadata(algo), **extra, **identity}

    @property
    def _records(self) -> bool:
        """Whether this process writes the run directory's files (the main one, with
        ``out_dir``)."""
        return self.settings.out_dir is not None and self.strategy.is_main

    def logger(self, exp_name: str) -> Logger | None:
        """The run's logger, sets :attr:`log_dir` and :attr:`metrics`.

        With ``out_dir`` and a logger, a :class:`~torchrl_offline.trainers.run_logs.MetricsLogger`
        writing ``out_dir/metrics.csv``, passing everything on to the given ``Logger`` or
        to one of the given kind in ``out_dir/logs`` (``"csv"``: the metrics file alone).
        Without ``out_dir``: the given ``Logger``, or ``None``.
        """
        logger = self.settings.logger
        out = self.settings.out_dir
        inner: Logger | None = None
        if isinstance(logger, Logger):
            given = getattr(logger, "log_dir", None)
            self.log_dir = Path(given) if given else None
            inner = logger
        elif logger and logger != "csv" and out is not None:
            self.log_dir = out / "logs"
            inner = make_logger(logger, self.log_dir, exp_name=exp_name)
        elif logger == "csv" and out is not None:
            self.log_dir = out
        if not logger or out is None:
            return inner
        self.metrics = MetricsLogger(out / METRICS_FILE, also=inner, exp_name=exp_name)
        return self.metrics

    def trainer(
        self,
        algo: Algorithm,
        data: ReplayBuffer,
        metadata: Mapping[str, Any],
        *,
        exp_name: str | None = None,
    ) -> OfflineTrainer:
        """The run's trainer on ``data`` for ``algo``, with the logger (named ``exp_name``,
        the algorithm's name by default), the strategy's optimization step, the
        algorithm's target updater and policy delay, and observation normalisation when
        the algorithm has it."""
        settings = self.settings
        logger = self.logger(exp_name or algo.name)
        self.strategy.prepare(
            algo,
            data,
            seed=settings.seed,
            settings={
                "algorithm": algorithm_metadata(algo),
                "seed": settings.seed,
                "batch_size": settings.batch_size,
                "total_steps": settings.total_steps,
                "resume": bool(settings.resume),
                "checkpointing": settings.out_dir is not None,
                "checkpoint_interval": settings.checkpoint_interval,
            },
        )
        trainer = OfflineTrainer(
            optimization_stepper=self.strategy.stepper(algo.loss_keys),
            replay_buffer=data,
            loss_module=algo.loss,
            optimizer=algo.optimizer,
            total_steps=settings.total_steps,
            batch_size=settings.batch_size,
            loss_components=algo.loss_keys,
            target_net_updater=algo.target_updater,
            policy_update_delay=algo.policy_update_delay,
            target_update_delay=algo.target_update_delay,
            logger=logger,
            log_interval=settings.log_interval,
            metadata=metadata,
        )
        if algo.observation_norm is not None:
            NormalizeObservations(*algo.observation_norm).register(trainer)
        if self._records:
            record_run_info(settings.out_dir, self._info(metadata))
        return trainer

    def _info(self, metadata: Mapping[str, Any]) -> dict[str, Any]:
        """The run's ``info`` in ``run.json`` (:mod:`~torchrl_offline.trainers.run_info`)."""
        settings = self.settings
        evaluated = settings.eval_env is not None
        return {
            "algorithm": metadata.get("algorithm"),
            "seed": settings.seed,
            "total_steps": settings.total_steps,
            **self._dataset,
            "eval_env": env_id(settings.eval_env),
            "eval_episodes": settings.eval_episodes if evaluated else None,
            "config": run_config(self.kind, metadata),
        }

    # ------------------------------------------------------------------ run
    def run(
        self,
        trainer: OfflineTrainer,
        algo: Algorithm,
        data: ReplayBuffer,
        *,
        eval_seed: int | None = None,
    ) -> TrainResult:
        """Registers the shared hooks (loss logging, evaluation seeded with ``eval_seed``,
        the run's seed by default, the user's hooks, progress, checkpoints, the
        strategy's own), resumes when asked (from a checkpoint of this run: the same
        ``trainer.metadata``), trains, and closes the evaluation env made here.

        Returns:
            The run's :class:`TrainResult`.
        """
        try:
            self._register_hooks(
                trainer,
                algo,
                data,
                eval_seed=self.settings.seed if eval_seed is None else eval_seed,
            )
            trainer.train()
        finally:
            self.close()
        out = self.settings.out_dir if self.metrics is not None else None
        return TrainResult.of_run(
            algo,
            trainer,
            self.evaluation,
            self.checkpointer,
            self.log_dir,
            metrics=None if out is None else out / METRICS_FILE,
            figure=None if out is None else out / FIGURE_FILE,
        )

    def close(self) -> None:
        """Closes the evaluation env made from a gymnasium id, if any."""
        if self._owned_env is not None:
            env, self._owned_env = self._owned_env, None
            env.close()

    def _register_hooks(
        self,
        trainer: OfflineTrainer,
        algo: Algorithm,
        data: ReplayBuffer,
        *,
        eval_seed: int,
    ) -> None:
        settings = self.settings
        metadata = trainer.metadata
        LogLosses(settings.log_interval).register(trainer)
        LogRates(settings.log_interval).register(trainer)
        with self.strategy.main_work("setting up evaluation and hooks"):
            if settings.eval_env is not None:
                self.evaluation = self._evaluation(algo, data, eval_seed)
                self.evaluation.register(trainer)
            for hook in settings.hooks:
                hook.register(trainer)
            if settings.progress:
                ProgressBar().register(trainer)
        if settings.out_dir is not None:
            checkpointer = self.strategy.checkpoint_hook(
                settings.out_dir / "checkpoints",
                interval=settings.checkpoint_interval,
                keep=settings.keep_checkpoints,
                num_items=len(data),
            )
            checkpointer.register(trainer)
            self.checkpointer = checkpointer
            if settings.resume:
                self.strategy.resume(
                    trainer,
                    checkpointer,
                    lambda: find_resumable(
                        checkpointer.directory, metadata, settings.resume, kind=self.kind
                    ),
                    seed=settings.seed,
                )
        elif settings.resume:
            raise ValueError("resume=True needs out_dir")
        with self.strategy.main_work("starting the metrics file"):
            if self.metrics is not None:  # after every hook that logs, before checkpoints
                record = RecordMetrics(self.metrics, figure=settings.out_dir / FIGURE_FILE)
                record.start(trainer.step if settings.resume else None)
                record.register(trainer)
        self.strategy.register(trainer)  # last: e.g. shares stop requests between ranks

    def _evaluation(self, algo: Algorithm, data: ReplayBuffer, seed: int) -> EvaluationHook:
        settings = self.settings
        env = as_env(settings.eval_env)
        if env is not settings.eval_env:
            self._owned_env = env
        check_env(env, algo)
        return EvaluationHook(
            env,
            algo.policy,
            interval=settings.eval_interval,
            num_episodes=settings.eval_episodes,
            seed=seed,
            max_steps=settings.eval_max_steps,
            reference=_reference(data),
        )


def _reference(dataset: Any) -> tuple[float, float] | None:
    meta = getattr(dataset, "metadata", None) or {}
    lo, hi = meta.get("ref_min_score"), meta.get("ref_max_score")
    if lo is None or hi is None:
        return None
    return float(lo), float(hi)
