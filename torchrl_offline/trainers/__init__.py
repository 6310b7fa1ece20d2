"""Offline training: TorchRL's Trainer on a replay buffer, hooks, checkpoints, algorithms.

Public names live in their modules:

* :mod:`torchrl_offline.trainers.offline`: ``train`` (and, from the modules below,
  ``OfflineTrainer``, ``OfflineSource``, ``TrainResult``, ``load_algorithm``);
* :mod:`torchrl_offline.trainers.finetune`: ``finetune`` (offline-to-online), ``OnlineSource``;
* :mod:`torchrl_offline.trainers.trainer`: ``OfflineTrainer``, ``OfflineSource`` (the loop);
* :mod:`torchrl_offline.trainers.run`: ``RunBuilder``, ``RunSettings``, ``TrainResult`` (the run
  setup ``train`` and ``finetune`` share); :mod:`torchrl_offline.trainers.strategy`:
  ``SingleProcess``, ``DataParallel`` (how a run is spread over processes);
* :mod:`torchrl_offline.trainers.metadata`: ``load_algorithm``, ``algorithm_metadata`` (the
  algorithm description in checkpoints); :mod:`torchrl_offline.trainers.envs`: ``as_env``;
* :mod:`torchrl_offline.trainers.plot`: ``plot_run``, ``plot_runs``, ``plot_learning_curves``
  (matplotlib figures); :mod:`torchrl_offline.trainers.metrics`: ``read_metrics``,
  ``MetricsFileError`` (a run's ``metrics.csv``); :mod:`torchrl_offline.trainers.run_logs`:
  ``MetricsLogger``, ``RecordMetrics``, ``LogRates``;
* :mod:`torchrl_offline.trainers.algorithms`: ``build_algorithm``, ``Algorithm``,
  ``ALGORITHMS``, ``algorithm_names``, ``declaration``, ``algorithm_defaults``,
  ``specs_from_dataset``, ``make_lr_scheduler``;
* :mod:`torchrl_offline.trainers.hooks`: ``EvaluationHook``, ``CheckpointHook``,
  ``LogLosses``, ``ProgressBar``, ``evaluate_policy``, ``make_logger``;
* :mod:`torchrl_offline.trainers.checkpoint`: ``save_checkpoint``, ``load_checkpoint``,
  ``latest_checkpoint``, ``CheckpointError``;
* :mod:`torchrl_offline.trainers.run_dir`: ``claim_run_directory``, ``RunDirectoryError``
  (a run owns its directory); :mod:`torchrl_offline.trainers.resume`: what a resumed run
  must share with its checkpoint;
* :mod:`torchrl_offline.trainers.distributed`: ``init_distributed``, ``DistributedContext``,
  ``DistributedError``, ``AllReduceStepper``, ``DistributedSync``,
  ``DistributedCheckpointHook`` (data-parallel training, see ``docs/distributed.md``; defined
  in :mod:`~torchrl_offline.trainers.process_group` and
  :mod:`~torchrl_offline.trainers.data_parallel`).
"""

from torchrl_offline.trainers.algorithms import (
    ALGORITHMS,
    Algorithm,
    AlgorithmError,
    algorithm_defaults,
    algorithm_names,
    build_algorithm,
    declaration,
)
from torchrl_offline.trainers.checkpoint import CheckpointError, load_checkpoint, save_checkpoint
from torchrl_offline.trainers.distributed import (
    AllReduceStepper,
    DistributedCheckpointHook,
    DistributedContext,
    DistributedError,
    DistributedSync,
    init_distributed,
)
from torchrl_offline.trainers.finetune import OnlineSource, finetune
from torchrl_offline.trainers.hooks import (
    CheckpointHook,
    EvaluationHook,
    EvaluationResult,
    LogLosses,
    ProgressBar,
    evaluate_policy,
    make_logger,
)
from torchrl_offline.trainers.metrics import MetricsFileError, read_metrics
from torchrl_offline.trainers.offline import (
    OfflineSource,
    OfflineTrainer,
    TrainResult,
    load_algorithm,
    train,
)
from torchrl_offline.trainers.plot import plot_learning_curves, plot_run, plot_runs
from torchrl_offline.trainers.run_dir import RunDirectoryError

__all__ = [
    "ALGORITHMS",
    "Algorithm",
    "AlgorithmError",
    "AllReduceStepper",
    "CheckpointError",
    "CheckpointHook",
    "DistributedCheckpointHook",
    "DistributedContext",
    "DistributedError",
    "DistributedSync",
    "EvaluationHook",
    "EvaluationResult",
    "LogLosses",
    "MetricsFileError",
    "OfflineSource",
    "OfflineTrainer",
    "OnlineSource",
    "ProgressBar",
    "RunDirectoryError",
    "TrainResult",
    "algorithm_defaults",
    "algorithm_names",
    "build_algorithm",
    "declaration",
    "evaluate_policy",
    "finetune",
    "init_distributed",
    "load_algorithm",
    "load_checkpoint",
    "make_logger",
    "plot_learning_curves",
    "plot_run",
    "plot_runs",
    "read_metrics",
    "save_checkpoint",
    "train",
]
