"""The pieces that keep the ranks of a data-parallel run in step: the gradient
all-reduce (:class:`AllReduceStepper`), stop requests and start-up broadcast
(:class:`DistributedSync`), rank-0 checkpoints of every rank's state
(:class:`DistributedCheckpointHook`), resuming on any world size
(:func:`resume_distributed`), and each rank's data shard and random streams.

:class:`~torchrl_offline.trainers.strategy.DataParallel` puts them together for
:func:`~torchrl_offline.trainers.offline.train`; see
:mod:`torchrl_offline.trainers.distributed` for data-parallel training as a whole.
"""

from __future__ import annotations

import json
import os
import random
import warnings
import zlib
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
from tensordict import MemoryMappedTensor, TensorDictBase
from torch import nn
from torchrl.data import ReplayBuffer
from torchrl.trainers import DefaultOptimizationStepper, Trainer, TrainerHookBase

from torchrl_offline.data.sharding import (
    ShardedRandomSampler,
    ShardedSampler,
    derive_seed,
    shard_replay_buffer,
)
from torchrl_offline.trainers.checkpoint import (
    CheckpointError,
    checkpoint_path,
    get_rng_state,
    list_checkpoints,
    save_checkpoint,
)
from torchrl_offline.trainers.hooks import CheckpointHook
from torchrl_offline.trainers.process_group import DistributedContext, DistributedError

__all__ = [
    "AllReduceStepper",
    "DistributedCheckpointHook",
    "DistributedSync",
    "check_settings",
    "is_memory_mapped",
    "prepare_dataset",
    "resume_distributed",
    "seed_rank",
    "single_process_state",
]


def seed_rank(context: DistributedContext, seed: int) -> None:
    """Gives each rank its own global random streams: rank 0 keeps ``seed``'s, rank ``r``
    gets streams derived from ``(seed, r)`` (stochastic losses then draw independent
    noise on each rank, as one process would on the union batch)."""
    if context.rank == 0:
        return
    derived = derive_seed(seed, context.rank)
    torch.manual_seed(derived)
    np.random.seed(derived % 2**32)
    random.seed(derived)


# ----------------------------------------------------------------------------- stepper
class AllReduceStepper(DefaultOptimizationStepper):
    """TorchRL's optimization step with the gradients averaged over the ranks.

    Loss, backward, **one all-reduce** of every gradient of the optimizer's parameters
    (flattened into one buffer, divided by ``world_size``), then TorchRL's clipping and
    optimizer step: every rank applies the same update. A parameter without a gradient
    on a rank counts as a zero gradient there; one without a gradient on every rank
    stays without one (Adam skips it). The scalar entries of the returned losses are
    averaged over the ranks in the same all-reduce, so the logged losses are those of
    the global batch. Returned losses are detached.

    Args:
        context: the run's :class:`DistributedContext`.
        loss_components (sequence of str, optional): loss entries summed for backward;
            every ``loss*`` entry when omitted.

    Examples:
        A data-parallel :class:`~torchrl_offline.trainers.offline.OfflineTrainer` put
        together by hand (what :func:`~torchrl_offline.trainers.offline.train` does under
        torchrun; here a one-process group):

        >>> import tempfile, torch
        >>> import torch.distributed as dist
        >>> from tensordict import TensorDict
        >>> from torchrl.data import Bounded, Unbounded
        >>> from torchrl_offline.data.sharding import shard_replay_buffer
        >>> from torchrl_offline.data.storage import make_replay_buffer
        >>> from torchrl_offline.trainers.algorithms import build_algorithm
        >>> from torchrl_offline.trainers.checkpoint import latest_checkpoint, load_checkpoint
        >>> from torchrl_offline.trainers.distributed import (
        ...     AllReduceStepper, DistributedCheckpointHook, DistributedSync, init_distributed)
        >>> from torchrl_offline.trainers.offline import OfflineTrainer
        >>> dist.init_process_group("gloo", store=dist.HashStore(), rank=0, world_size=1)
        >>> context = init_distributed()
        >>> n = 64
        >>> rb = make_replay_buffer(TensorDict({
        ...     "observation": torch.randn(n, 3), "action": torch.rand(n, 1) * 2 - 1,
        ...     ("next", "observation"): torch.randn(n, 3), ("next", "reward"): torch.randn(n, 1),
        ...     ("next", "done"): torch.zeros(n, 1, dtype=torch.bool),
        ...     ("next", "terminated"): torch.zeros(n, 1, dtype=torch.bool)}, [n]), batch_size=16)
        >>> shard = shard_replay_buffer(rb, rank=context.rank, world_size=context.world_size)
        >>> algo = build_algorithm("td3_bc", Unbounded(shape=(3,)), Bounded(-1.0, 1.0, (1,)),
        ...                        hidden_sizes=(16,))
        >>> trainer = OfflineTrainer(
        ...     replay_buffer=shard, loss_module=algo.loss, optimizer=algo.optimizer,
        ...     total_steps=4, loss_components=algo.loss_keys,
        ...     target_net_updater=algo.target_updater,
        ...     optimization_stepper=AllReduceStepper(context, algo.loss_keys))
        >>> directory = tempfile.mkdtemp()
        >>> DistributedCheckpointHook(directory, context, interval=2).register(trainer)
        >>> DistributedSync(context).register(trainer)  # after every other hook
        >>> trainer.train()
        >>> load_checkpoint(latest_checkpoint(directory))["distributed"]["world_size"]
        1
        >>> dist.destroy_process_group()
    """

    def __init__(
        self, context: DistributedContext, loss_components: Sequence[str] | None = None
    ) -> None:
        super().__init__(loss_components)
        self.context = context
        self._params: list[nn.Parameter] | None = None

    def _parameters(self, optimizer: torch.optim.Optimizer) -> list[nn.Parameter]:
        if self._params is None:
            seen: set[int] = set()
            params = []
            for group in optimizer.param_groups:
                for p in group["params"]:
                    if id(p) not in seen:
                        seen.add(id(p))
                        params.append(p)
            self._params = params
        return self._params

    def all_reduce(self, optimizer: torch.optim.Optimizer, losses: TensorDictBase) -> None:
        """Averages the gradients of ``optimizer``'s parameters and ``losses``' scalars.

        One buffer holds, in order: every gradient (zeros where a parameter has none), one
        has-a-gradient flag per parameter, the scalar losses (sorted by name) and a code
        of the loss names, which must add up to ``world_size`` times this rank's.
        """
        params = self._parameters(optimizer)
        world = self.context.world_size
        device = params[0].device if params else self.context.device
        dtype = torch.float32
        for p in params:
            dtype = torch.promote_types(dtype, p.dtype)
        keys = sorted(
            k
            for k, v in losses.items()
            if isinstance(v, torch.Tensor) and v.numel() == 1 and v.is_floating_point()
        )
        code = float(zlib.crc32(",".join(keys).encode()) % 1024)  # x world stays exact
        grads = [
            p.grad.reshape(-1).to(dtype)
            if p.grad is not None
            else torch.zeros(p.numel(), dtype=dtype, device=device)
            for p in params
        ]
        flags = torch.tensor([p.grad is not None for p in params], dtype=dtype, device=device)
        scalars = [losses.get(k).detach().reshape(1).to(device=device, dtype=dtype) for k in keys]
        footer = torch.tensor([code], dtype=dtype, device=device)
        flat = torch.cat([*grads, flags, *scalars, footer])
        with self.context.collective("the gradient all-reduce"):
            dist.all_reduce(flat)
        if float(flat[-1]) != code * world:
            raise DistributedError(
                "the ranks computed different loss entries in the same update "
                f"(this rank: {keys}); every rank must run the same loss"
            )
        n_grads = sum(p.numel() for p in params)
        counts = flat[n_grads : n_grads + len(params)].tolist()
        offset = 0
        for p, count in zip(params, counts):
            n = p.numel()
            if count > 0:  # a rank without a gradient contributed zeros
                grad = (flat[offset : offset + n] / world).view_as(p).to(p.dtype)
                if p.grad is None:
                    p.grad = grad
                else:
                    p.grad.copy_(grad)
            offset += n
        for key, value in zip(keys, flat[n_grads + len(params) : -1] / world):
            old = losses.get(key)
            losses.set(key, value.to(old.dtype).reshape(old.shape))

    def step(self, trainer: Trainer, sub_batch: TensorDictBase) -> TensorDictBase:
        losses = trainer.compute_loss(sub_batch)
        if trainer.optimizer is None:
            raise RuntimeError("AllReduceStepper needs the trainer's optimizer")
        if self.loss_components is not None:
            items = [v for k, v in losses.items() if k in self.loss_components]
        else:
            items = [v for k, v in losses.items() if k.startswith("loss")]
        sum(items).backward()
        losses = losses.detach()
        self.all_reduce(trainer.optimizer, losses)
        norm = self._compute_and_clip_grad_norm(
            trainer.optimizer, trainer.clip_grad_norm, trainer.clip_norm
        )
        losses["grad_norm"] = torch.tensor(norm)
        trainer.optimizer.step()
        trainer.optimizer.zero_grad()
        return losses


# ----------------------------------------------------------------------------- hooks
class DistributedSync(TrainerHookBase):
    """Keeps the ranks of an :class:`OfflineTrainer` in step; register it on every rank,
    after every other hook.

    * Before the first update, rank 0's parameters and buffers are broadcast to all
      ranks (same start, even if the ranks built their networks differently seeded).
    * On a GPU, sampled batches are copied to the context's device.
    * A stop requested on any rank during update ``t`` (Ctrl-C, ``EarlyStopping``, a
      hook calling ``request_stop``) is shared in a non-blocking all-reduce that
      overlaps update ``t + 1``; every rank then stops after update ``t + 1``, with the
      reason given on the requesting rank. A second Ctrl-C raises ``KeyboardInterrupt``.

    Args:
        context: the run's :class:`DistributedContext`.
    """

    def __init__(self, context: DistributedContext) -> None:
        self.context = context
        self._trainer: Any = None
        self._pending: Any = None
        self._flag: torch.Tensor | None = None
        self._reason: str | None = None
        self._interrupted = False

    def setup(self) -> None:
        self.context.broadcast_module_(self._trainer.loss_module)

    def _on_sigint(self, signum: int, frame: Any) -> None:
        if self._interrupted:
            raise KeyboardInterrupt
        self._interrupted = True

    def __call__(self, batch: TensorDictBase | None = None) -> None:
        trainer = self._trainer
        if self._interrupted and self._reason is None:
            self._reason = "interrupted"
        if trainer._stop_training:  # asked on this rank during this update: defer it
            self._reason = self._reason or trainer._stop_reason or "stop requested"
            trainer._stop_training = False
        if trainer.collected_frames >= trainer.total_frames:
            return  # every rank ends here anyway
        if self._pending is not None:
            with self.context.collective("sharing stop requests"):
                self._pending.wait()
            self._pending = None
            if float(self._flag[0]) > 0:
                reasons = self.context.all_gather_object(self._reason, what="sharing stop reasons")
                reason = next((r for r in reasons if r is not None), "stop requested")
                trainer.request_stop(reason)
                return
        local = 1.0 if self._reason is not None else 0.0
        self._flag = torch.tensor([local], device=self.context.device)
        with self.context.collective("sharing stop requests"):
            self._pending = dist.all_reduce(self._flag, async_op=True)

    def shutdown(self) -> None:
        """Completes the last stop-flag exchange (every rank issued it)."""
        if self._pending is not None:
            with self.context.collective("sharing stop requests"):
                self._pending.wait()
            self._pending = None

    def state_dict(self) -> dict[str, Any]:
        return {}

    def load_state_dict(self, state_dict: Mapping[str, Any]) -> None:
        return None

    def to_device(self, batch: TensorDictBase) -> TensorDictBase:
        """Copies a sampled batch to the context's device (a GPU with NCCL)."""
        return batch.to(self.context.device, non_blocking=True)

    def register(self, trainer: Trainer, name: str = "distributed_sync") -> None:
        self._trainer = trainer
        trainer._on_sigint = self._on_sigint  # OfflineTrainer.train installs this handler
        if self.context.device.type != "cpu":
            trainer.register_op("batch_process", self.to_device)
        trainer.register_op("setup", self.setup)
        trainer.register_op("post_steps_log", self)
        trainer.register_op("shutdown", self.shutdown)


class DistributedCheckpointHook(CheckpointHook):
    """A :class:`~torchrl_offline.trainers.hooks.CheckpointHook` for data-parallel runs.

    Register it on every rank: at each checkpoint the ranks gather their sampler and
    random-generator states and check that their models are bitwise identical; rank 0
    alone writes the file (the state of :meth:`OfflineTrainer.checkpoint_state` plus a
    ``"distributed"`` entry: ``world_size``, per-rank ``sources`` and ``rngs``, the
    dataset size), and a failed write is reported on every rank.

    Args:
        directory: where rank 0 writes checkpoints.
        context: the run's :class:`DistributedContext`.

    Keyword Args:
        interval (int): steps between checkpoints. Defaults to ``5000``.
        keep (int): checkpoints kept. Defaults to ``2``.
        metadata (dict, optional): JSON-able entries stored with every checkpoint.
        num_items (int, optional): the dataset size, stored to refuse a resume on
            another dataset.
    """

    def __init__(
        self,
        directory: str | os.PathLike,
        context: DistributedContext,
        *,
        interval: int = 5000,
        keep: int = 2,
        metadata: Mapping[str, Any] | None = None,
        num_items: int | None = None,
    ) -> None:
        super().__init__(directory, interval=interval, keep=keep, metadata=metadata)
        self.context = context
        self.num_items = num_items

    def save(self, trainer: Any) -> Any:
        ctx = self.context
        step = int(trainer.collected_frames)
        ctx.check_identical(trainer.loss_module, what=f"checkpoint at step {step}")
        mine = {"source": trainer.collector.state_dict(), "rng": get_rng_state()}
        everyone = ctx.all_gather_object(mine, what=f"gathering the checkpoint of step {step}")
        error = None
        path = None
        if ctx.is_main:
            try:
                state = trainer.checkpoint_state()
                state["distributed"] = {
                    "world_size": ctx.world_size,
                    "sources": [e["source"] for e in everyone],
                    "rngs": [e["rng"] for e in everyone],
                    "num_items": -1 if self.num_items is None else int(self.num_items),
                }
                state["metadata"] = {**self.metadata, **state.get("metadata", {})}
                path = save_checkpoint(checkpoint_path(self.directory, step), state)
                for old in list_checkpoints(self.directory)[: -self.keep]:
                    old.unlink(missing_ok=True)
            except Exception as err:
                error = err
        ctx.check(f"writing the checkpoint of step {step} on rank 0", error)
        self.last_path = path if path is not None else checkpoint_path(self.directory, step)
        return self.last_path


# ----------------------------------------------------------------------------- resume
def resume_distributed(
    trainer: Any,
    checkpointer: DistributedCheckpointHook,
    load: Callable[[], tuple[Any, Mapping[str, Any]] | None],
    *,
    seed: int,
) -> None:
    """Resumes a data-parallel run from rank 0's newest checkpoint, on any world size.

    Rank 0 calls ``load()`` (which finds the newest checkpoint and checks it belongs to
    this run) and broadcasts the state; every rank loads the same networks, targets,
    optimizer, hooks and step. Per-rank state:

    * same world size as when saved: each rank restores its own sampler position and
      random generators, so the run continues exactly as if it had not stopped;
    * another world size (or a checkpoint of a single-process run): the data order
      restarts: without replacement at the start of the epoch after the furthest one
      any rank had reached, with replacement from per-rank streams seeded with
      ``(seed, rank, step)``; the global random generators are reseeded the same way.

    Raises:
        CheckpointError: on every rank, when rank 0's checkpoint is unreadable or not of
            this run, the checkpoint's per-rank entries are inconsistent, or it was
            trained on a dataset of another size.
    """
    ctx = checkpointer.context
    payload: Any = None
    if ctx.is_main:
        try:
            found = load()
            payload = ("ok", None if found is None else (str(found[0]), found[1]))
        except CheckpointError as err:
            payload = ("error", str(err))
    payload = ctx.broadcast_object(payload, what="broadcasting the checkpoint to resume from")
    if payload[0] == "error":
        raise CheckpointError(payload[1])
    if payload[1] is None:
        return
    path, state = payload[1]
    info = state.get("distributed")
    source = rng = None
    num_items = len(trainer.collector.replay_buffer)
    if info is not None:
        world = int(info.get("world_size", -1))
        if world < 1 or len(info.get("sources", ())) != world or len(info.get("rngs", ())) != world:
            raise CheckpointError(
                f"Checkpoint {path!r} is inconsistent: world size {world} with "
                f"{len(info.get('sources', ()))} sampler states and {len(info.get('rngs', ()))} "
                "generator states"
            )
        saved_items = int(info.get("num_items", -1))
        if saved_items >= 0 and saved_items != num_items:
            raise CheckpointError(
                f"Checkpoint {path!r} was trained on a dataset of {saved_items} transitions; "
                f"this run's has {num_items}. Resume with the same dataset or use another out_dir"
            )
        sampler = trainer.collector.replay_buffer.sampler
        kinds = {s.get("sampler", {}).get("kind") for s in info["sources"]}
        if world == ctx.world_size and kinds == {sampler.state_dict()["kind"]}:
            source, rng = info["sources"][ctx.rank], info["rngs"][ctx.rank]
    step = int(state["step"])
    if source is None:
        _restart_data_order(trainer, info, seed=seed, step=step, rank=ctx.rank)
        source = trainer.collector.state_dict()
        rng = get_rng_state()
        if ctx.is_main:
            saved_world = 1 if info is None else int(info["world_size"])
            warnings.warn(
                f"resuming a {saved_world}-process checkpoint (step {step}) on "
                f"{ctx.world_size} process(es): networks, targets, optimizer and step continue "
                "exactly, the data order restarts (see docs/distributed.md) and the global "
                f"batch is now {ctx.world_size} x the per-rank batch size",
                stacklevel=2,
            )
    trainer.load_checkpoint_state({**state, "source": source, "rng": rng})
    checkpointer.last_path = Path(path)


def single_process_state(
    trainer: Any, state: Mapping[str, Any], path: str | os.PathLike
) -> dict[str, Any]:
    """A data-parallel checkpoint's state made loadable by a single-process trainer.

    Networks, targets, optimizer, hooks and step are kept; the random generators are
    rank 0's; the sampler keeps its current state (the data order restarts), unless the
    trainer samples with the same kind of sampler as the checkpoint's rank 0 and the run
    had one rank, in which case it continues exactly.

    Raises:
        CheckpointError: the checkpoint was trained on a dataset of another size.
    """
    info = state["distributed"]
    num_items = len(trainer.collector.replay_buffer)
    saved_items = int(info.get("num_items", -1))
    if saved_items >= 0 and saved_items != num_items:
        raise CheckpointError(
            f"Checkpoint {str(path)!r} was trained on a dataset of {saved_items} transitions; "
            f"this run's has {num_items}. Resume with the same dataset or use another out_dir"
        )
    current = trainer.collector.state_dict()
    saved_kind = state["source"].get("sampler", {}).get("kind")
    if int(info.get("world_size", 1)) == 1 and saved_kind == current["sampler"].get("kind"):
        return dict(state)
    warnings.warn(
        f"resuming a {info.get('world_size')}-process checkpoint (step {state['step']}) in one "
        "process: networks, targets, optimizer and step continue exactly; the data order "
        "restarts",
        stacklevel=3,
    )
    return {**state, "source": current}


def _restart_data_order(
    trainer: Any, info: Mapping[str, Any] | None, *, seed: int, step: int, rank: int
) -> None:
    sampler = trainer.collector.replay_buffer.sampler
    if isinstance(sampler, ShardedSampler):
        epochs = [
            int(s["sampler"].get("epoch", -1))
            for s in (info or {}).get("sources", [])
            if s.get("sampler", {}).get("kind") == "sharded_without_replacement"
        ]
        sampler.start_epoch(max(epochs) + 1 if epochs else 0)
    elif isinstance(sampler, ShardedRandomSampler):
        sampler.restart(step)
    derived = derive_seed(seed, rank, step)
    torch.manual_seed(derived)
    np.random.seed(derived % 2**32)
    random.seed(derived)


def is_memory_mapped(dataset: ReplayBuffer) -> bool:
    """Whether the dataset's storage is a memory-mapped tensordict (read lazily)."""
    inner = getattr(dataset.storage, "_storage", None)
    if not isinstance(inner, TensorDictBase):
        return False
    leaves = list(inner.values(True, True))
    return bool(leaves) and all(isinstance(t, MemoryMappedTensor) for t in leaves)


def prepare_dataset(
    context: DistributedContext, dataset: ReplayBuffer, *, seed: int
) -> ReplayBuffer:
    """This rank's shard of ``dataset`` (see :func:`~torchrl_offline.data.sharding.shard_replay_buffer`);
    warns on rank 0 when the dataset is held in RAM (every rank then holds a copy)."""
    shard = context.call(
        "sharding the dataset",
        shard_replay_buffer,
        dataset,
        rank=context.rank,
        world_size=context.world_size,
        seed=seed,
    )
    if context.is_main and not is_memory_mapped(dataset):
        warnings.warn(
            "the dataset is not memory-mapped: every rank holds its own copy in RAM; open "
            "it with load_minari/from_logged to share one file-backed copy",
            stacklevel=3,
        )
    return shard


def check_settings(context: DistributedContext, settings: Mapping[str, Any]) -> None:
    """Raises on every rank unless the ranks were started with the same ``settings``."""
    plain = json.loads(json.dumps(settings, sort_keys=True, default=str))
    context.check_same("settings", plain)
