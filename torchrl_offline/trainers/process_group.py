"""This process's place in a data-parallel run: joining the ``torch.distributed``
process group (``torchrun``'s ``env://`` variables) and the collectives the run uses, each
turning a failure on any rank into a :class:`DistributedError` on every rank.

See :mod:`torchrl_offline.trainers.distributed` for data-parallel training as a whole.
"""

from __future__ import annotations

import contextlib
import datetime
import hashlib
import os
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any, TypeVar

import torch
import torch.distributed as dist
from tensordict import TensorDictBase
from torch import nn
from torchrl.data import ReplayBuffer

__all__ = [
    "DEFAULT_TIMEOUT",
    "DistributedContext",
    "DistributedError",
    "dataset_fingerprint",
    "init_distributed",
    "module_digest",
    "torchrun_environment",
]

#: Seconds a collective (or the start-up rendezvous) may wait for the other ranks.
DEFAULT_TIMEOUT = 600.0

_T = TypeVar("_T")
_ENV_KEYS = ("RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT")


class DistributedError(RuntimeError):
    """A data-parallel run that cannot go on: a rank failed, died, stalled past the
    timeout, or was launched with other settings. Raised on every surviving rank; the
    message names the failing rank(s) and what they were doing."""


def torchrun_environment() -> dict[str, int] | None:
    """``rank``, ``world_size`` and ``local_rank`` when the process was started by
    ``torchrun`` (or any ``env://`` launcher: ``RANK``, ``WORLD_SIZE``, ``MASTER_ADDR``
    and ``MASTER_PORT`` set), else ``None``.

    Examples:
        >>> import os
        >>> from torchrl_offline.trainers.distributed import torchrun_environment
        >>> "RANK" in os.environ or torchrun_environment() is None
        True
    """
    if not all(key in os.environ for key in _ENV_KEYS):
        return None
    rank = int(os.environ["RANK"])
    return {
        "rank": rank,
        "world_size": int(os.environ["WORLD_SIZE"]),
        "local_rank": int(os.environ.get("LOCAL_RANK", rank)),
    }


# ----------------------------------------------------------------------------- context
@dataclass
class DistributedContext:
    """This process's place in a data-parallel run, and the collectives the run uses.

    Every collective method wraps failures (a closed connection when a peer died, a
    timeout when it stalls) in :class:`DistributedError`. Make one with
    :func:`init_distributed`; use it as a context manager to destroy the process group
    it created.

    Attributes:
        rank: this process's rank.
        world_size: number of processes.
        local_rank: rank on this node (``LOCAL_RANK``).
        backend: ``"gloo"`` or ``"nccl"``.
        device: where the model and batches live (``cuda:<local_rank>`` with NCCL,
            else CPU).
        timeout: seconds a collective may wait.
        owns_group: whether :meth:`close` destroys the default process group.

    Examples:
        >>> import torch.distributed as dist
        >>> from torchrl_offline.trainers.distributed import init_distributed
        >>> dist.init_process_group("gloo", store=dist.HashStore(), rank=0, world_size=1)
        >>> context = init_distributed()
        >>> context.all_gather_object({"step": 3}, what="a demo")
        [{'step': 3}]
        >>> context.check("opening the dataset", None)  # raises if it failed on any rank
        >>> context.check_same("settings", {"seed": 0, "batch_size": 256})  # or if they differ
        >>> dist.destroy_process_group()
    """

    rank: int
    world_size: int
    local_rank: int
    backend: str
    device: torch.device
    timeout: float = DEFAULT_TIMEOUT
    owns_group: bool = False

    @property
    def is_main(self) -> bool:
        """Whether this is rank 0 (the one that evaluates, logs and writes checkpoints)."""
        return self.rank == 0

    def close(self) -> None:
        """Destroys the process group if this context created it."""
        if self.owns_group and dist.is_initialized():
            dist.destroy_process_group()
        self.owns_group = False

    def __enter__(self) -> DistributedContext:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    # ------------------------------------------------------------------ collectives
    @contextlib.contextmanager
    def collective(self, what: str) -> Iterator[None]:
        """Turns a failed collective into a :class:`DistributedError` naming ``what``."""
        try:
            yield
        except DistributedError:
            raise
        except RuntimeError as err:  # gloo/NCCL errors, DistBackendError, timeouts
            detail = " ".join(str(err).split())[:400]
            raise DistributedError(
                f"rank {self.rank} of {self.world_size}: {what} failed ({detail}). Another "
                f"rank has probably died, stalled longer than the {self.timeout:.0f} s "
                "timeout, or is running different code; check the other ranks' output"
            ) from err

    def all_gather_object(self, obj: Any, *, what: str) -> list[Any]:
        """Every rank's ``obj`` (picklable), in rank order."""
        out: list[Any] = [None] * self.world_size
        with self.collective(what):
            dist.all_gather_object(out, obj)
        return out

    def broadcast_object(self, obj: Any, *, what: str, src: int = 0) -> Any:
        """Rank ``src``'s ``obj`` on every rank."""
        box = [obj if self.rank == src else None]
        with self.collective(what):
            dist.broadcast_object_list(box, src=src, device=self._object_device())
        return box[0]

    def _object_device(self) -> torch.device | None:
        return self.device if self.backend == "nccl" else None

    def check(self, what: str, error: BaseException | None) -> None:
        """Shares whether ``what`` failed on any rank; raises on every rank if so.

        Args:
            what: the step, e.g. ``"opening the dataset"``.
            error: the exception this rank hit, or ``None``.

        Raises:
            DistributedError: on every rank when any rank passed an error; the message
                lists the failing ranks and their errors. When every rank failed with
                the same message (e.g. a bad argument), each re-raises its own error.
        """
        mine = None if error is None else f"{type(error).__name__}: {error}"
        reports = self.all_gather_object(mine, what=f"sharing the outcome of {what}")
        failed = [(rank, text) for rank, text in enumerate(reports) if text is not None]
        if error is not None and len(failed) == self.world_size and set(reports) == {mine}:
            raise error
        if failed:
            lines = "; ".join(f"rank {rank}: {text}" for rank, text in failed)
            raise DistributedError(f"{what} failed on {len(failed)} rank(s): {lines}") from (error)

    def call(self, what: str, fn: Callable[..., _T], *args: Any, **kwargs: Any) -> _T:
        """Runs ``fn`` on every rank and raises on every rank if it failed on any.

        The first process of each node (``local_rank == 0``) runs ``fn`` before the
        others of its node, so a conversion into a node-local cache (e.g. ``from_logged``
        on a Parquet file) is done once per node and then found by the others.

        Raises:
            DistributedError: ``fn`` raised on some rank (the message names it).
        """
        result: Any = None
        for turn in (0, 1):
            error = None
            if (self.local_rank == 0) == (turn == 0):
                try:
                    result = fn(*args, **kwargs)
                except Exception as err:
                    error = err
            self.check(what, error)
        return result

    def check_same(self, what: str, values: Mapping[str, Any]) -> None:
        """Raises on every rank unless every rank passed equal ``values``.

        Raises:
            DistributedError: naming the first differing entry and two ranks' values.
        """
        gathered = self.all_gather_object(dict(values), what=f"comparing {what}")
        for key in values:
            for rank, other in enumerate(gathered):
                if other.get(key) != gathered[0].get(key):
                    raise DistributedError(
                        f"the ranks were started with different {what}: {key} is "
                        f"{_short(gathered[0].get(key))} on rank 0 and {_short(other.get(key))} "
                        f"on rank {rank}; launch every rank with the same command and data"
                    )

    def broadcast_module_(self, module: nn.Module, *, src: int = 0) -> None:
        """Copies rank ``src``'s parameters and buffers into ``module`` on every rank."""
        tensors = [t for _, t in _state_tensors(module)]
        with torch.no_grad(), self.collective("broadcasting the initial parameters"):
            for tensor in tensors:
                dist.broadcast(tensor.data, src=src)

    def check_identical(self, module: nn.Module, *, what: str) -> str:
        """Raises unless ``module``'s parameters and buffers are bitwise equal on all ranks.

        Returns:
            The SHA-1 of the module's state (the same on every rank).

        Raises:
            DistributedError: the ranks' states differ (e.g. a hook changed the model on
                some ranks only).
        """
        digest = module_digest(module)
        digests = self.all_gather_object(digest, what=f"comparing parameters ({what})")
        differing = [rank for rank, d in enumerate(digests) if d != digests[0]]
        if differing:
            raise DistributedError(
                f"the model differs between rank 0 and rank(s) {differing} ({what}); every "
                "rank must apply the same updates (a hook that changes the model ran on some "
                "ranks only?)"
            )
        return digest


def _short(value: Any, limit: int = 160) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _state_tensors(module: nn.Module) -> list[tuple[str, torch.Tensor]]:
    seen: set[int] = set()
    out = []
    for name, tensor in [*module.named_parameters(), *module.named_buffers()]:
        if id(tensor) in seen:
            continue
        seen.add(id(tensor))
        out.append((name, tensor))
    return out


def _raw_bytes(tensor: torch.Tensor) -> bytes:
    """The bytes of a tensor's values in row-major order (any strides, any dtype)."""
    data = tensor.detach().cpu()
    dense = torch.empty(data.shape, dtype=data.dtype).copy_(data)
    return dense.reshape(-1).view(torch.uint8).numpy().tobytes()


def module_digest(module: nn.Module) -> str:
    """SHA-1 of a module's parameters and buffers (names, dtypes, shapes and bytes).

    Examples:
        >>> import torch
        >>> from torchrl_offline.trainers.distributed import module_digest
        >>> _ = torch.manual_seed(0)
        >>> a = torch.nn.Linear(2, 2)
        >>> _ = torch.manual_seed(0)
        >>> b = torch.nn.Linear(2, 2)
        >>> module_digest(a) == module_digest(b)
        True
    """
    sha = hashlib.sha1()
    for name, tensor in _state_tensors(module):
        sha.update(f"{name}:{tensor.dtype}:{tuple(tensor.shape)}".encode())
        sha.update(_raw_bytes(tensor))
    return sha.hexdigest()


def init_distributed(
    *,
    backend: str | None = None,
    timeout: float = DEFAULT_TIMEOUT,
) -> DistributedContext:
    """Joins the data-parallel run described by the ``torchrun`` environment.

    Uses the default process group when one is already initialized (the caller then
    owns it); otherwise initializes it from ``RANK``, ``WORLD_SIZE``, ``MASTER_ADDR``
    and ``MASTER_PORT`` (``env://``) with ``timeout`` on the rendezvous and every
    collective.

    Keyword Args:
        backend: ``"gloo"`` (CPU) or ``"nccl"`` (one GPU per process); by default NCCL
            when CUDA is available, else gloo.
        timeout: seconds the rendezvous and each collective may wait. It must exceed
            the longest work rank 0 does alone (an evaluation, an OPE hook, writing a
            checkpoint), during which the other ranks wait.

    Returns:
        A :class:`DistributedContext` (a context manager destroying the group it made).

    Raises:
        DistributedError: no torchrun environment and no initialized group, or the
            rendezvous timed out.

    Examples:
        >>> import torch.distributed as dist
        >>> from torchrl_offline.trainers.distributed import init_distributed
        >>> dist.init_process_group("gloo", store=dist.HashStore(), rank=0, world_size=1)
        >>> context = init_distributed()  # under torchrun, this call alone joins the run
        >>> context.rank, context.world_size, context.backend, context.owns_group
        (0, 1, 'gloo', False)
        >>> dist.destroy_process_group()
    """
    if timeout <= 0:
        raise ValueError(f"timeout must be positive, got {timeout}")
    owns = False
    if not dist.is_available():
        raise DistributedError("this PyTorch build has no torch.distributed")
    if dist.is_initialized():
        rank, world = dist.get_rank(), dist.get_world_size()
        env = torchrun_environment() or {}
        local_rank = int(env.get("local_rank", rank))
        backend = dist.get_backend()
    else:
        env = torchrun_environment()
        if env is None:
            raise DistributedError(
                "distributed training needs a launcher: run the command with torchrun "
                "(e.g. `torchrun --nproc-per-node 2 ...`), which sets RANK, WORLD_SIZE, "
                "MASTER_ADDR and MASTER_PORT, or initialize torch.distributed first"
            )
        rank, world, local_rank = env["rank"], env["world_size"], env["local_rank"]
        if backend is None:
            backend = "nccl" if torch.cuda.is_available() else "gloo"
        if backend not in ("gloo", "nccl"):
            raise ValueError(f"backend must be 'gloo' or 'nccl', got {backend!r}")
        if backend == "nccl":
            torch.cuda.set_device(local_rank)
        try:
            dist.init_process_group(
                backend,
                init_method="env://",
                rank=rank,
                world_size=world,
                timeout=datetime.timedelta(seconds=timeout),
            )
        except (RuntimeError, ValueError) as err:
            detail = " ".join(str(err).split())[:400]
            raise DistributedError(
                f"rank {rank} of {world} could not join the process group at "
                f"{os.environ.get('MASTER_ADDR')}:{os.environ.get('MASTER_PORT')} within "
                f"{timeout:.0f} s ({detail}); are all ranks started and the address reachable?"
            ) from err
        owns = True
    device = torch.device("cuda", local_rank) if backend == "nccl" else torch.device("cpu")
    return DistributedContext(
        rank=rank,
        world_size=world,
        local_rank=local_rank,
        backend=backend,
        device=device,
        timeout=float(timeout),
        owns_group=owns,
    )


def dataset_fingerprint(dataset: ReplayBuffer) -> dict[str, Any]:
    """Size, entries (shape and dtype per transition) and a digest of the first and last
    transitions of a dataset: cheap to compute on a memory-mapped one, and equal on
    every rank when the ranks opened the same data."""
    storage = dataset.storage
    n = len(storage)
    info: dict[str, Any] = {"num_items": n}
    if n:
        ends = storage[torch.tensor([0, n - 1])]
        if isinstance(ends, TensorDictBase):
            leaves = sorted(ends.items(True, True), key=lambda kv: str(kv[0]))
            info["entries"] = [
                f"{k}:{tuple(v.shape[1:])}:{v.dtype}".replace("'", "") for k, v in leaves
            ]
            sha = hashlib.sha1()
            for _, v in leaves:
                sha.update(_raw_bytes(v))
            info["ends_sha1"] = sha.hexdigest()
    return info
