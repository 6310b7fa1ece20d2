"""Data-parallel offline training on :mod:`torch.distributed` (``torchrun``).

Each rank (process) holds the whole model, opens the same memory-mapped dataset and
samples its own batches from it (:mod:`torchrl_offline.data.sharding`). After every
backward pass the gradients of all trainable parameters of the loss module (networks,
entropy temperatures, Lagrange multipliers) are averaged over the ranks in one
all-reduce, so every rank applies the same update: ``world_size`` ranks with batches
of ``B`` take the step one process would take on the union of their batches (exactly,
for losses that are means over the batch). Target networks are updated from the
parameters on every rank, so they stay identical too; checkpoints verify it.

Rank 0 alone evaluates, runs the user's hooks (OPE, early stopping), shows progress,
logs and writes checkpoints (with every rank's sampler and random state); a stop
requested on any rank (Ctrl-C, early stopping) ends the run on all of them. Every
collective has a timeout, and failures (a rank that died, stalled or was launched with
other settings, a dataset missing on one node) raise :class:`DistributedError` on
every surviving rank instead of hanging.

:func:`~torchrl_offline.trainers.offline.train` runs in this mode under ``torchrun``
(detected from ``RANK``, ``WORLD_SIZE``, ``MASTER_ADDR`` and ``MASTER_PORT``) or with
``distributed=True``; the pieces here also compose by hand with an
:class:`~torchrl_offline.trainers.offline.OfflineTrainer`.

This module gathers the public names of
:mod:`~torchrl_offline.trainers.process_group` (the :class:`DistributedContext` and its
collectives) and :mod:`~torchrl_offline.trainers.data_parallel` (the stepper, hooks and
resume that keep the ranks in step). How :func:`~torchrl_offline.trainers.offline.train`
runs in one process or data-parallel is a strategy object
(:mod:`~torchrl_offline.trainers.strategy`).
"""

from torchrl_offline.trainers.data_parallel import (
    AllReduceStepper,
    DistributedCheckpointHook,
    DistributedSync,
)
from torchrl_offline.trainers.data_parallel import check_settings as check_settings
from torchrl_offline.trainers.data_parallel import is_memory_mapped as is_memory_mapped
from torchrl_offline.trainers.data_parallel import prepare_dataset as prepare_dataset
from torchrl_offline.trainers.data_parallel import resume_distributed as resume_distributed
from torchrl_offline.trainers.data_parallel import seed_rank as seed_rank
from torchrl_offline.trainers.data_parallel import single_process_state as single_process_state
from torchrl_offline.trainers.process_group import (
    DEFAULT_TIMEOUT,
    DistributedContext,
    DistributedError,
    init_distributed,
    module_digest,
    torchrun_environment,
)
from torchrl_offline.trainers.process_group import dataset_fingerprint as dataset_fingerprint

__all__ = [
    "DEFAULT_TIMEOUT",
    "AllReduceStepper",
    "DistributedCheckpointHook",
    "DistributedContext",
    "DistributedError",
    "DistributedSync",
    "init_distributed",
    "module_digest",
    "torchrun_environment",
]
