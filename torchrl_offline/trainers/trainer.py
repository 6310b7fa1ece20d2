"""The training loop: TorchRL's :class:`~torchrl.trainers.Trainer` driven by a replay buffer.

TorchRL's ``Trainer`` is driven by a collector. Here an :class:`OfflineSource` stands
where the collector stands (it yields batches sampled from a replay buffer) and
:class:`OfflineTrainer` counts *gradient steps* instead of collected frames, so every
TorchRL hook (``LogScalar``, ``LRSchedulerHook``, ``TargetNetUpdaterHook``,
``EarlyStopping``, ...) and every interval (logging, evaluation, checkpoints) is in
gradient steps. :func:`~torchrl_offline.trainers.offline.train` and
:func:`~torchrl_offline.trainers.finetune.finetune` set one up
(:mod:`~torchrl_offline.trainers.run`); both names are also importable from
:mod:`torchrl_offline.trainers.offline`.
"""

from __future__ import annotations

import json
import signal
import threading
import warnings
from collections.abc import Iterator, Mapping, Sequence
from typing import Any

import numpy as np
import torch
from tensordict import TensorDict, TensorDictBase
from torchrl.data import ReplayBuffer
from torchrl.objectives import LossModule
from torchrl.objectives.utils import TargetNetUpdater
from torchrl.record.loggers import Logger
from torchrl.trainers import (
    DefaultOptimizationStepper,
    OptimizationStepper,
    TargetNetUpdaterHook,
    Trainer,
)

from torchrl_offline.objectives.common import check_finite_losses
from torchrl_offline.trainers.algorithms import default_policy_update_delay
from torchrl_offline.trainers.checkpoint import CheckpointError, get_rng_state, set_rng_state
from torchrl_offline.trainers.hooks import CheckpointHook

__all__ = ["OfflineSource", "OfflineTrainer"]


# ----------------------------------------------------------------------------- source
class OfflineSource:
    """A replay buffer standing where a TorchRL collector stands.

    Iterating yields ``replay_buffer.sample(batch_size)`` forever. It has the parts of
    the collector interface a ``Trainer`` uses (``set_seed``, ``shutdown``,
    ``state_dict``, ``init_random_frames``); its state is the sampler's state and the
    buffer's own generator, if it has one (the global torch generator is saved by the
    trainer's checkpoint).

    Args:
        replay_buffer: the offline dataset.

    Keyword Args:
        batch_size (int, optional): sample size; the buffer's default when omitted. It
            replaces the buffer's own batch size (TorchRL's warning about two batch sizes
            is not raised: the replacement is intended).

    Examples:
        >>> import torch
        >>> from tensordict import TensorDict
        >>> from torchrl_offline.data.storage import make_replay_buffer
        >>> from torchrl_offline.trainers.offline import OfflineSource
        >>> rb = make_replay_buffer(TensorDict({"observation": torch.randn(10, 3)}, [10]))
        >>> batch = next(iter(OfflineSource(rb, batch_size=4)))
        >>> batch.batch_size
        torch.Size([4])
    """

    init_random_frames = 0

    def __init__(self, replay_buffer: ReplayBuffer, *, batch_size: int | None = None) -> None:
        if batch_size is None and getattr(replay_buffer, "batch_size", None) is None:
            raise ValueError("the replay buffer has no batch_size; pass batch_size=")
        if len(replay_buffer) == 0:
            raise ValueError("the replay buffer is empty")
        self.replay_buffer = replay_buffer
        # the buffer's own batch size is used as is (TorchRL warns when sample() overrides it)
        self.batch_size = None if batch_size == replay_buffer.batch_size else batch_size

    def __iter__(self) -> Iterator[TensorDictBase]:
        if self.batch_size is not None and self.replay_buffer.batch_size is not None:
            # TorchRL warns on a buffer's first sample with another size, once per buffer
            with warnings.catch_warnings():
                warnings.filterwarnings("ignore", "Got conflicting batch_sizes")
                batch = self.replay_buffer.sample(self.batch_size)
            yield batch
        while True:
            yield self.replay_buffer.sample(self.batch_size)

    def set_seed(self, seed: int, static_seed: bool = False) -> int:
        """Seeds torch's and NumPy's global generators (the sampler draws from them)."""
        torch.manual_seed(seed)
        np.random.seed(seed % 2**32)
        return seed

    def shutdown(self) -> None:
        """Nothing to release."""

    def state_dict(self) -> dict[str, Any]:
        rb = self.replay_buffer
        state: dict[str, Any] = {"sampler": rb._sampler.state_dict()}
        rng = getattr(rb, "_rng", None)
        if rng is not None:
            state["rng"] = rng.get_state()
        return state

    def load_state_dict(self, state_dict: Mapping[str, Any]) -> None:
        rb = self.replay_buffer
        rb._sampler.load_state_dict(state_dict["sampler"])
        rng = getattr(rb, "_rng", None)
        if rng is not None and "rng" in state_dict:
            rng.set_state(state_dict["rng"])


class _DetachedStepper(DefaultOptimizationStepper):
    """TorchRL's default step (sum the selected losses, backward, clip, step) returning
    detached losses, so hooks holding the latest losses do not keep the graph alive."""

    def step(self, trainer: Trainer, sub_batch: TensorDictBase) -> TensorDictBase:
        return super().step(trainer, sub_batch).detach()


# ----------------------------------------------------------------------------- trainer
class OfflineTrainer(Trainer):
    """A TorchRL :class:`~torchrl.trainers.Trainer` that trains from a replay buffer alone.

    One iteration is one gradient step on one sampled batch, and
    ``collected_frames`` counts gradient steps, so TorchRL hooks registered at
    ``"post_steps"`` (``TargetNetUpdaterHook``, ``LRSchedulerHook``) run once per update
    and intervals are in updates. The optimization is TorchRL's
    :class:`~torchrl.trainers.DefaultOptimizationStepper` over ``loss_components``.

    Training stops at ``total_steps`` or when a hook calls :meth:`request_stop`
    (``EarlyStopping``; Ctrl-C, which finishes the current update first). In both
    cases checkpoint hooks (:class:`~torchrl_offline.trainers.hooks.CheckpointHook`)
    write a final checkpoint; :meth:`checkpoint_state` and
    :meth:`load_checkpoint_state` give the full training state (networks, targets,
    optimizer, hooks, sampler, random generators, step).

    Args:
        replay_buffer: the offline dataset.
        loss_module: the loss.
        optimizer: the optimizer of the loss's parameters.
        total_steps: number of gradient steps to reach.

    Keyword Args:
        batch_size (int, optional): sample size (the buffer's default when omitted).
        loss_components (sequence of str, optional): loss entries summed for backward;
            every ``loss*`` entry when omitted.
        target_net_updater (TargetNetUpdater, optional): stepped through TorchRL's
            ``TargetNetUpdaterHook`` after every ``target_update_delay``-th update.
        logger (Logger, optional): a TorchRL logger.
        log_interval (int): TorchRL's logging interval, in steps. Defaults to ``1000``.
        clip_norm (float, optional): gradient-norm clipping. Defaults to ``None``.
        seed (int, optional): seeds the global generators (through the source).
        metadata (dict, optional): JSON-able description stored in checkpoints.
        optimization_stepper (OptimizationStepper, optional): replaces the default step
            (e.g. :class:`~torchrl_offline.trainers.distributed.AllReduceStepper`, which
            averages gradients over data-parallel ranks); it should return detached
            losses.
        policy_update_delay (int, optional): delayed policy updates (TD3's): the full
            loss (actor included) on every ``policy_update_delay``-th step, the critic
            term alone (the loss's ``qvalue_loss``) on the others, so the actor's
            parameters get no gradient and the optimizer leaves them as they are.
            Defaults to the loss's algorithm's (2 for our ``TD3BCLoss``, 1 otherwise:
            :func:`~torchrl_offline.trainers.algorithms.default_policy_update_delay`).
        target_update_delay (int, optional): the target networks move after every
            ``target_update_delay``-th update only. TD3's Algorithm 1 (and the TD3+BC
            authors' code, d3rlpy, TorchRL's TD3+BC script) moves them with the delayed
            actor: ``target_update_delay=policy_update_delay``. Defaults to ``1``, every
            update.

    Examples:
        >>> import torch
        >>> from tensordict import TensorDict
        >>> from torchrl.data import Bounded, Unbounded
        >>> from torchrl_offline.data.storage import make_replay_buffer
        >>> from torchrl_offline.trainers.algorithms import build_algorithm
        >>> from torchrl_offline.trainers.offline import OfflineTrainer
        >>> n = 64
        >>> rb = make_replay_buffer(TensorDict({
        ...     "observation": torch.randn(n, 3), "action": torch.rand(n, 1) * 2 - 1,
        ...     ("next", "observation"): torch.randn(n, 3), ("next", "reward"): torch.randn(n, 1),
        ...     ("next", "done"): torch.zeros(n, 1, dtype=torch.bool),
        ...     ("next", "terminated"): torch.zeros(n, 1, dtype=torch.bool)}, [n]), batch_size=16)
        >>> algo = build_algorithm("td3_bc", Unbounded(shape=(3,)), Bounded(-1.0, 1.0, (1,)),
        ...                        hidden_sizes=(16,))
        >>> trainer = OfflineTrainer(replay_buffer=rb, loss_module=algo.loss,
        ...                          optimizer=algo.optimizer, total_steps=5,
        ...                          loss_components=algo.loss_keys,
        ...                          target_net_updater=algo.target_updater)
        >>> trainer.train()
        >>> trainer.step
        5
    """

    def __init__(
        self,
        *,
        replay_buffer: ReplayBuffer,
        loss_module: LossModule,
        optimizer: torch.optim.Optimizer,
        total_steps: int,
        batch_size: int | None = None,
        loss_components: Sequence[str] | None = None,
        target_net_updater: TargetNetUpdater | None = None,
        logger: Logger | None = None,
        log_interval: int = 1000,
        clip_norm: float | None = None,
        seed: int | None = None,
        metadata: Mapping[str, Any] | None = None,
        optimization_stepper: OptimizationStepper | None = None,
        policy_update_delay: int | None = None,
        target_update_delay: int = 1,
    ) -> None:
        if total_steps < 1:
            raise ValueError(f"total_steps must be >= 1, got {total_steps}")
        if policy_update_delay is None:
            policy_update_delay = default_policy_update_delay(loss_module)
        if int(policy_update_delay) < 1:
            raise ValueError(f"policy_update_delay must be >= 1, got {policy_update_delay}")
        if policy_update_delay > 1 and not callable(getattr(loss_module, "qvalue_loss", None)):
            raise ValueError(
                f"policy_update_delay={policy_update_delay} needs a loss with a qvalue_loss "
                f"method (the critic-only step); {type(loss_module).__name__} has none"
            )
        super().__init__(
            collector=OfflineSource(replay_buffer, batch_size=batch_size),
            total_frames=int(total_steps),
            frame_skip=1,
            optim_steps_per_batch=1,
            loss_module=loss_module,
            optimizer=optimizer,
            optimization_stepper=optimization_stepper or _DetachedStepper(loss_components),
            replay_buffer=replay_buffer,
            target_net_updater=target_net_updater,
            logger=logger,
            log_interval=log_interval,
            clip_grad_norm=True,
            clip_norm=clip_norm,
            progress_bar=False,
            seed=seed,
            auto_log_optim_steps=False,
        )
        self.metadata: dict[str, Any] = dict(metadata or {})
        self.policy_update_delay = int(policy_update_delay)
        if int(target_update_delay) < 1:
            raise ValueError(f"target_update_delay must be >= 1, got {target_update_delay}")
        self.target_update_delay = int(target_update_delay)
        self._checkpointers: list[CheckpointHook] = []
        self._interrupted = False
        if target_net_updater is not None:
            _DelayedTargetUpdate(target_net_updater, self).register(self, "target_net_updater")

    # -------------------------------------------------------------------- properties
    @property
    def step(self) -> int:
        """Gradient steps done so far."""
        return int(self.collected_frames)

    @property
    def stop_reason(self) -> str | None:
        """Why training stopped early (``"interrupted"``, an ``EarlyStopping`` reason) or ``None``."""
        return self._stop_reason if self._stop_training else None

    # -------------------------------------------------------------------- checkpoints
    def add_checkpointer(self, hook: CheckpointHook) -> None:
        """Attaches a checkpoint hook (called by :meth:`CheckpointHook.register`)."""
        self._checkpointers.append(hook)

    def checkpoint_state(self) -> dict[str, Any]:
        """The full training state, loadable with ``torch.load(weights_only=True)``."""
        modules = {
            name: module.state_dict()
            for name, module in self._modules.items()
            if name not in ("optimizer", "optimization_stepper")
        }
        return {
            "step": self.step,
            "optim_count": int(self._optim_count),
            "last_log": dict(self._last_log),
            "loss_module": self.loss_module.state_dict(),
            "optimizer": self.optimizer.state_dict() if self.optimizer is not None else {},
            "hooks": modules,
            "source": self.collector.state_dict(),
            "rng": get_rng_state(),
            "metadata": {"json": json.dumps(self.metadata, sort_keys=True)},
        }

    def load_checkpoint_state(self, state: Mapping[str, Any]) -> None:
        """Restores a state from :meth:`checkpoint_state`; the run continues exactly."""
        try:
            self.loss_module.load_state_dict(state["loss_module"])
            if self.optimizer is not None:
                self.optimizer.load_state_dict(state["optimizer"])
            hooks = state.get("hooks", {})
            for name, module in self._modules.items():
                if name in hooks:
                    module.load_state_dict(hooks[name])
            self.collector.load_state_dict(state["source"])
        except (KeyError, RuntimeError, ValueError) as err:
            raise CheckpointError(
                f"the checkpoint does not fit this trainer's modules: {err}"
            ) from err
        self.collected_frames = int(state["step"])
        self._optim_count = int(state.get("optim_count", state["step"]))
        self._last_log = dict(state.get("last_log", {}))
        self._last_save = self.collected_frames
        set_rng_state(state["rng"])

    def save_trainer(self, force_save: bool = False) -> None:
        """Runs the attached checkpoint hooks (each at its own interval, or now if ``force_save``)."""
        for hook in self._checkpointers:
            hook.maybe_save(self, force=force_save)

    # -------------------------------------------------------------------- loop
    def compute_loss(
        self, sub_batch: TensorDictBase, method: str | None = None
    ) -> TensorDictBase | tuple[Any, ...]:
        """The loss of this step: the whole loss, or the critic term alone on the steps a
        ``policy_update_delay`` skips (update ``t`` is full when ``t % delay == 0``)."""
        if method is None and self._optim_count % self.policy_update_delay:
            loss_qvalue, _ = super().compute_loss(sub_batch, "qvalue_loss")
            losses = TensorDict({"loss_qvalue": loss_qvalue})
            loss = self.loss_module
            if getattr(loss, "check_inputs", False):  # forward's NaN/inf check, same read
                check_finite_losses(
                    losses, self._optim_count, batch=sub_batch, batch_keys=loss.in_keys
                )
            return losses
        return super().compute_loss(sub_batch, method)

    def _on_sigint(self, signum: int, frame: Any) -> None:
        if self._interrupted:
            raise KeyboardInterrupt
        self._interrupted = True
        self.request_stop("interrupted")

    def train(self) -> None:
        """Runs gradient steps until ``total_steps`` or a stop request."""
        previous = None
        if threading.current_thread() is threading.main_thread():
            previous = signal.signal(signal.SIGINT, self._on_sigint)
        try:
            self._setup_hook()
            iterator = iter(self.collector)
            while self.collected_frames < self.total_frames and not self._stop_training:
                batch = self._process_batch_hook(next(iterator))
                self.collected_frames += 1
                self._pre_steps_log_hook(batch)
                self.optim_steps(batch)
                self._post_steps_hook()
                self._post_steps_log_hook(batch)
                if self._stop_training:
                    break
                self.save_trainer()
            self.save_trainer(force_save=True)
            self._shutdown_hook()
        finally:
            if previous is not None:
                signal.signal(signal.SIGINT, previous)


class _DelayedTargetUpdate(TargetNetUpdaterHook):
    """TorchRL's target-update hook, run after every ``trainer.target_update_delay``-th
    update only (TD3 moves the targets with its delayed actor)."""

    def __init__(self, target_params_updater: TargetNetUpdater, trainer: OfflineTrainer):
        super().__init__(target_params_updater)
        self._trainer = trainer

    def __call__(self, tensordict: TensorDictBase | None = None) -> TensorDictBase | None:
        trainer = self._trainer
        if trainer._optim_count % trainer.target_update_delay == 0:
            return super().__call__(tensordict)
        return tensordict
