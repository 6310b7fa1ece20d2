"""How a run is spread over processes: one strategy object the run builder asks.

:class:`SingleProcess` is the default: the whole dataset, TorchRL's optimization step,
the plain :class:`~torchrl_offline.trainers.hooks.CheckpointHook`, and every side effect
(run-directory claim, evaluation, user hooks, logs, progress) in this process.
:class:`DataParallel` runs one rank of a ``torchrun`` job
(:mod:`~torchrl_offline.trainers.distributed`): each rank samples its own shard, the
gradients are averaged in one all-reduce
(:class:`~torchrl_offline.trainers.distributed.AllReduceStepper`), rank 0 alone claims
the run directory, evaluates, runs the user's hooks, logs and writes checkpoints
(:class:`~torchrl_offline.trainers.distributed.DistributedCheckpointHook`), a failure of
work done on one rank stops every rank, and stop requests are shared
(:class:`~torchrl_offline.trainers.distributed.DistributedSync`).

The run builder (:class:`~torchrl_offline.trainers.run.RunBuilder`) calls the same
methods of :class:`Strategy` whatever the strategy, never branching on which one it
has; :func:`strategy_for` picks one from ``train``'s ``distributed`` argument.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any, TypeVar

from torchrl.data import ReplayBuffer
from torchrl.trainers import OptimizationStepper, Trainer

from torchrl_offline.trainers.algorithms import Algorithm
from torchrl_offline.trainers.data_parallel import (
    AllReduceStepper,
    DistributedCheckpointHook,
    DistributedSync,
    check_settings,
    prepare_dataset,
    resume_distributed,
    seed_rank,
    single_process_state,
)
from torchrl_offline.trainers.hooks import CheckpointHook
from torchrl_offline.trainers.process_group import (
    DistributedContext,
    dataset_fingerprint,
    init_distributed,
    torchrun_environment,
)
from torchrl_offline.trainers.run_dir import RunLock, claim_run_directory

__all__ = ["DataParallel", "SingleProcess", "Strategy", "strategy_for"]

_T = TypeVar("_T")
#: Finds the checkpoint to resume and its state (``None``: nothing to resume).
Finder = Callable[[], "tuple[Path, Mapping[str, Any]] | None"]


class Strategy:
    """How a run is spread over processes: the questions the run builder asks.

    The answers here are a single process's (no sharding, no collectives, every side
    effect here): :class:`SingleProcess` keeps them, :class:`DataParallel` overrides them.

    Examples:
        >>> from torchrl_offline.trainers.strategy import SingleProcess
        >>> strategy = SingleProcess()
        >>> strategy.is_main, strategy.stepper(["loss_actor"])
        (True, None)
        >>> strategy.call("building", sum, [1, 2])
        3
    """

    @property
    def is_main(self) -> bool:
        """Whether this process has the run's side effects (evaluation, user hooks, logs,
        progress, checkpoint files)."""
        return True

    def close(self) -> None:
        """Releases what the strategy set up (nothing here)."""

    # -------------------------------------------------------------- run directory
    def claim(
        self, out: Path | None, *, kind: str, algorithm: str, resume: bool, overwrite: bool
    ) -> RunLock | None:
        """Claims ``out`` for the run
        (:func:`~torchrl_offline.trainers.run_dir.claim_run_directory`), or ``None``
        without an output directory."""
        if out is None:
            if overwrite:
                raise ValueError("overwrite=True needs out_dir")
            return None
        return claim_run_directory(
            out, kind=kind, algorithm=algorithm, resume=resume, overwrite=overwrite
        )

    # -------------------------------------------------------------- data and model
    def shard(self, dataset: ReplayBuffer, *, seed: int) -> ReplayBuffer:
        """The part of ``dataset`` this process samples from: all of it."""
        return dataset

    def call(self, what: str, fn: Callable[..., _T], *args: Any, **kwargs: Any) -> _T:
        """Runs ``fn`` (``what`` names the step in a data-parallel run's errors)."""
        return fn(*args, **kwargs)

    def share(self, obj: _T, *, what: str) -> _T:
        """The main process's ``obj``: ``obj`` itself."""
        return obj

    def prepare(
        self, algo: Algorithm, dataset: ReplayBuffer, *, seed: int, settings: Mapping[str, Any]
    ) -> None:
        """Readies ``algo`` before its trainer is built (nothing to do here)."""

    def stepper(self, loss_keys: Sequence[str]) -> OptimizationStepper | None:
        """The optimization step; ``None``: the trainer's default."""
        return None

    # -------------------------------------------------------------- hooks
    @contextlib.contextmanager
    def main_work(self, what: str) -> Iterator[None]:
        """Wraps work only the main process does (setting up evaluation and user hooks)."""
        yield

    def checkpoint_hook(
        self, directory: Path, *, interval: int, keep: int, num_items: int
    ) -> CheckpointHook:
        """The hook writing the run's checkpoints in ``directory``."""
        return CheckpointHook(directory, interval=interval, keep=keep)

    def resume(
        self, trainer: Any, checkpointer: CheckpointHook, find: Finder, *, seed: int
    ) -> None:
        """Loads the checkpoint ``find`` returns, if any, into ``trainer``; a checkpoint of
        a data-parallel run continues in this process
        (:func:`~torchrl_offline.trainers.distributed.single_process_state`)."""
        found = find()
        if found is None:
            return
        path, state = found
        if "distributed" in state:  # written by a data-parallel run
            state = single_process_state(trainer, state, path)
        trainer.load_checkpoint_state(state)
        checkpointer.last_path = path

    def register(self, trainer: Trainer) -> None:
        """Registers the strategy's own hooks, after every other hook (none here)."""


class SingleProcess(Strategy):
    """A run in this process alone: the default strategy (whole dataset, TorchRL's
    optimization step, :class:`~torchrl_offline.trainers.hooks.CheckpointHook`, every side
    effect in this process)."""


class DataParallel(Strategy):
    """One rank of a data-parallel run over ``torch.distributed``.

    Args:
        context: this rank's :class:`~torchrl_offline.trainers.distributed.DistributedContext`.

    Keyword Args:
        owned (bool): :meth:`close` closes ``context`` (when the strategy made it).
            Defaults to ``False``.

    Examples:
        >>> import torch.distributed as dist
        >>> from torchrl_offline.trainers.distributed import init_distributed
        >>> from torchrl_offline.trainers.strategy import DataParallel
        >>> dist.init_process_group("gloo", store=dist.HashStore(), rank=0, world_size=1)
        >>> strategy = DataParallel(init_distributed())
        >>> strategy.is_main, type(strategy.stepper(["loss_actor"])).__name__
        (True, 'AllReduceStepper')
        >>> dist.destroy_process_group()
    """

    def __init__(self, context: DistributedContext, *, owned: bool = False) -> None:
        self.context = context
        self.owned = owned

    @property
    def is_main(self) -> bool:
        return self.context.is_main

    def close(self) -> None:
        """Closes the context when the strategy made it."""
        if self.owned:
            self.context.close()

    def claim(
        self, out: Path | None, *, kind: str, algorithm: str, resume: bool, overwrite: bool
    ) -> RunLock | None:
        """Rank 0 claims ``out``; a refusal there stops every rank."""
        if out is None:
            return super().claim(
                out, kind=kind, algorithm=algorithm, resume=resume, overwrite=overwrite
            )
        claim, error = None, None
        if self.is_main:
            try:
                claim = super().claim(
                    out, kind=kind, algorithm=algorithm, resume=resume, overwrite=overwrite
                )
            except Exception as err:
                error = err
        try:
            self.context.check("claiming the run directory", error)
        except BaseException:
            if claim is not None:
                claim.release()
            raise
        return claim

    def shard(self, dataset: ReplayBuffer, *, seed: int) -> ReplayBuffer:
        """This rank's shard (:func:`~torchrl_offline.trainers.distributed.prepare_dataset`)."""
        return prepare_dataset(self.context, dataset, seed=seed)

    def call(self, what: str, fn: Callable[..., _T], *args: Any, **kwargs: Any) -> _T:
        """Runs ``fn`` on every rank; a failure on any rank raises on all
        (:meth:`DistributedContext.call`)."""
        return self.context.call(what, fn, *args, **kwargs)

    def share(self, obj: _T, *, what: str) -> _T:
        """Rank 0's ``obj`` on every rank."""
        return self.context.broadcast_object(obj, what=what)

    def prepare(
        self, algo: Algorithm, dataset: ReplayBuffer, *, seed: int, settings: Mapping[str, Any]
    ) -> None:
        """Checks that every rank has the same ``settings`` and dataset, gives each rank its
        own random streams and moves the loss to the context's device."""
        check_settings(self.context, {**settings, "dataset": dataset_fingerprint(dataset)})
        seed_rank(self.context, seed)
        if self.context.device.type != "cpu":
            algo.loss.to(self.context.device)

    def stepper(self, loss_keys: Sequence[str]) -> OptimizationStepper | None:
        """TorchRL's step with the gradients averaged over the ranks."""
        return AllReduceStepper(self.context, loss_keys)

    @contextlib.contextmanager
    def main_work(self, what: str) -> Iterator[None]:
        """Rank 0 does the work alone; a failure there stops every rank."""
        error = None
        try:
            yield
        except Exception as err:
            error = err
        self.context.check(what, error)

    def checkpoint_hook(
        self, directory: Path, *, interval: int, keep: int, num_items: int
    ) -> CheckpointHook:
        """Every rank's state, written by rank 0."""
        return DistributedCheckpointHook(
            directory, self.context, interval=interval, keep=keep, num_items=num_items
        )

    def resume(
        self, trainer: Any, checkpointer: CheckpointHook, find: Finder, *, seed: int
    ) -> None:
        """Rank 0 finds the checkpoint, every rank loads it
        (:func:`~torchrl_offline.trainers.distributed.resume_distributed`)."""
        resume_distributed(trainer, checkpointer, find, seed=seed)

    def register(self, trainer: Trainer) -> None:
        """Shares stop requests between the ranks (the last hook)."""
        DistributedSync(self.context).register(trainer)


def strategy_for(distributed: bool | DistributedContext | None) -> Strategy:
    """The strategy for ``train(distributed=...)``.

    ``None`` joins the data-parallel run when the process was launched by ``torchrun``
    (else runs alone), ``True`` always (the process group already initialized, or one
    made from the torchrun environment; an error without either), ``False`` never; a
    :class:`~torchrl_offline.trainers.distributed.DistributedContext` is used as is (and
    left open by :meth:`~Strategy.close`).

    Raises:
        TypeError: another value.
        DistributedError: ``True`` without a launcher or process group.

    Examples:
        >>> from torchrl_offline.trainers.strategy import strategy_for
        >>> type(strategy_for(False)).__name__
        'SingleProcess'
    """
    if isinstance(distributed, DistributedContext):
        return DataParallel(distributed)
    if distributed is False:
        return SingleProcess()
    if distributed is None and torchrun_environment() is None:
        return SingleProcess()
    if distributed not in (None, True):
        raise TypeError(
            f"distributed must be None, True, False or a DistributedContext, got {distributed!r}"
        )
    context = init_distributed()
    return DataParallel(context, owned=context.owns_group)
