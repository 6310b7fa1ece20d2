"""Per-rank samplers for data-parallel training over one shared, memory-mapped dataset.

Every rank of a data-parallel run opens the same dataset (memory-mapped: nothing is
read until a batch is gathered) and draws its own batches from it with one of these
TorchRL samplers:

* :class:`ShardedSampler` (without replacement): each epoch, one permutation of the
  whole dataset, the same on every rank (drawn from the run's seed and the epoch), is
  cut into ``world_size`` equal, disjoint shards; rank ``r`` reads shard ``r`` in
  batches. Within an epoch no transition is seen twice, on any rank.
* :class:`ShardedRandomSampler` (with replacement): uniform over the whole dataset,
  from a generator of its own seeded with ``(seed, rank, stream)``, so the ranks'
  streams are independent and reproducible.

:func:`shard_replay_buffer` gives a rank its view of a replay buffer: a new buffer on
the same storage with the sharded counterpart of the buffer's sampler. Nothing here
knows about :mod:`torch.distributed`; ranks are plain integers.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from torchrl.data import ReplayBuffer
from torchrl.data.replay_buffers.samplers import RandomSampler, Sampler, SamplerWithoutReplacement
from torchrl.data.replay_buffers.storages import Storage
from torchrl.envs.transforms import Compose

from torchrl_offline.data.storage import OfflineReplayBuffer

__all__ = ["ShardedRandomSampler", "ShardedSampler", "derive_seed", "shard_replay_buffer"]


def derive_seed(*entropy: int) -> int:
    """A 63-bit seed mixed from integers (NumPy's ``SeedSequence``): distinct inputs give
    unrelated seeds.

    Examples:
        >>> from torchrl_offline.data.sharding import derive_seed
        >>> derive_seed(0, 1) == derive_seed(0, 1), derive_seed(0, 1) == derive_seed(1, 0)
        (True, False)
    """
    words = [int(e) % 2**64 for e in entropy]
    state = np.random.SeedSequence(words).generate_state(1, dtype=np.uint64)
    return int(state[0]) & (2**63 - 1)


def _check_rank(rank: int, world_size: int) -> None:
    if world_size < 1:
        raise ValueError(f"world_size must be >= 1, got {world_size}")
    if not 0 <= rank < world_size:
        raise ValueError(f"rank must be in [0, {world_size}), got {rank}")


class ShardedSampler(Sampler):
    """Without-replacement sampling of one rank's shard, disjoint from the other ranks'.

    Epoch ``e`` permutes the ``N`` stored transitions with a generator seeded from
    ``(seed, e)`` (identical on every rank; no communication needed), keeps the first
    ``world_size * (N // world_size)`` entries and gives rank ``r`` the ``r``-th of
    ``world_size`` equal slices. The rank reads its slice in order, ``batch_size`` at a
    time; a remainder smaller than a batch is skipped and the next epoch starts (with a
    new permutation, so nothing is skipped systematically). Every batch is full and all
    ranks reach an epoch's end at the same batch. :attr:`ran_out` is ``True`` after the
    last batch of an epoch, so iterating over the buffer yields one epoch.

    The state (:meth:`state_dict`) is the epoch and the position in the shard: a
    restored sampler continues exactly. :meth:`start_epoch` jumps to the start of an
    epoch (used when a run resumes with another number of ranks).

    Keyword Args:
        rank (int): this rank, in ``[0, world_size)``.
        world_size (int): number of ranks.
        seed (int): the run's seed (must be the same on every rank). Defaults to ``0``.
        shuffle (bool): permute each epoch; ``False`` gives every rank a fixed
            contiguous block in dataset order. Defaults to ``True``.

    Examples:
        >>> import torch
        >>> from tensordict import TensorDict
        >>> from torchrl_offline.data.sharding import ShardedSampler
        >>> from torchrl_offline.data.storage import make_replay_buffer
        >>> td = TensorDict({"observation": torch.arange(10.0).unsqueeze(-1)}, [10])
        >>> seen = []
        >>> for rank in range(2):
        ...     rb = make_replay_buffer(td, batch_size=2,
        ...                             sampler=ShardedSampler(rank=rank, world_size=2, seed=0))
        ...     seen.append({int(i) for _ in range(2) for i in rb.sample()["index"]})
        >>> seen[0].isdisjoint(seen[1]), len(seen[0]), len(seen[1])
        (True, 4, 4)
    """

    def __init__(self, *, rank: int, world_size: int, seed: int = 0, shuffle: bool = True):
        _check_rank(rank, world_size)
        self.rank = int(rank)
        self.world_size = int(world_size)
        self.seed = int(seed)
        self.shuffle = bool(shuffle)
        self.epoch = 0
        self.position = 0
        self._num_items: int | None = None
        self._shard: torch.Tensor | None = None
        self._ran_out = False

    def shard_indices(self, num_items: int, epoch: int) -> torch.Tensor:
        """The dataset indices of this rank's shard in ``epoch`` (in reading order)."""
        per_rank = num_items // self.world_size
        if self.shuffle:
            generator = torch.Generator().manual_seed(derive_seed(self.seed, epoch))
            order = torch.randperm(num_items, generator=generator)
        else:
            order = torch.arange(num_items)
        return order[self.rank * per_rank : (self.rank + 1) * per_rank].clone()

    def _load_shard(self, num_items: int) -> None:
        self._num_items = num_items
        self._shard = self.shard_indices(num_items, self.epoch)

    def start_epoch(self, epoch: int) -> None:
        """Moves to the start of ``epoch``."""
        if epoch < 0:
            raise ValueError(f"epoch must be >= 0, got {epoch}")
        self.epoch = int(epoch)
        self.position = 0
        self._shard = None
        self._ran_out = False

    def sample(self, storage: Storage, batch_size: int) -> tuple[torch.Tensor, dict]:
        num_items = len(storage)
        per_rank = num_items // self.world_size
        if per_rank < batch_size:
            raise ValueError(
                f"each of the {self.world_size} ranks' shards holds {per_rank} of the "
                f"{num_items} transitions, fewer than one batch of {batch_size}"
            )
        if self._shard is None or self._num_items != num_items:
            self._load_shard(num_items)
        if self.position + batch_size > per_rank:
            self.start_epoch(self.epoch + 1)
            self._load_shard(num_items)
        index = self._shard[self.position : self.position + batch_size]
        self.position += batch_size
        self._ran_out = self.position + batch_size > per_rank
        return index, {}

    @property
    def ran_out(self) -> bool:
        return self._ran_out

    @ran_out.setter
    def ran_out(self, value: bool) -> None:
        self._ran_out = bool(value)

    def _empty(self) -> None:
        self.start_epoch(0)

    def state_dict(self) -> dict[str, Any]:
        return {
            "kind": "sharded_without_replacement",
            "rank": self.rank,
            "world_size": self.world_size,
            "seed": self.seed,
            "shuffle": self.shuffle,
            "epoch": self.epoch,
            "position": self.position,
            "num_items": -1 if self._num_items is None else self._num_items,
        }

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        if state_dict.get("kind") != "sharded_without_replacement":
            raise ValueError(
                f"not a ShardedSampler state (kind {state_dict.get('kind')!r}); "
                "a sharded sampler restores only its own state"
            )
        for key in ("rank", "world_size", "seed", "shuffle"):
            if state_dict[key] != getattr(self, key):
                raise ValueError(
                    f"the saved sampler has {key}={state_dict[key]!r}, this one "
                    f"{getattr(self, key)!r}; restore it into a sampler of the same rank, "
                    "world size, seed and shuffle, or call start_epoch()"
                )
        self.start_epoch(int(state_dict["epoch"]))
        self.position = int(state_dict["position"])
        num_items = int(state_dict["num_items"])
        self._num_items = None if num_items < 0 else num_items

    def dumps(self, path: Any) -> None:
        torch.save(self.state_dict(), path)

    def loads(self, path: Any) -> None:
        self.load_state_dict(torch.load(path, weights_only=True))

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}(rank={self.rank}, world_size={self.world_size}, "
            f"seed={self.seed}, epoch={self.epoch}, position={self.position})"
        )


class ShardedRandomSampler(Sampler):
    """Uniform sampling with replacement from a generator of this rank's own.

    Each rank samples the whole dataset uniformly; its generator is seeded with
    ``derive_seed(seed, rank, stream)``, so the ranks' streams are independent, and the
    same arguments give the same stream. Together, ``world_size`` ranks drawing
    ``batch_size`` each sample exactly as one process drawing ``world_size *
    batch_size`` uniformly would. The state is the generator's state; :meth:`restart`
    reseeds with another ``stream`` (used when a run resumes with another number of
    ranks, with ``stream`` the resumed step).

    Keyword Args:
        rank (int): this rank, in ``[0, world_size)``.
        world_size (int): number of ranks.
        seed (int): the run's seed. Defaults to ``0``.
        stream (int): a further seed component. Defaults to ``0``.

    Examples:
        >>> import torch
        >>> from tensordict import TensorDict
        >>> from torchrl_offline.data.sharding import ShardedRandomSampler
        >>> from torchrl_offline.data.storage import make_replay_buffer
        >>> td = TensorDict({"observation": torch.arange(100.0).unsqueeze(-1)}, [100])
        >>> draws = [make_replay_buffer(td, batch_size=8, sampler=ShardedRandomSampler(
        ...     rank=rank, world_size=2, seed=0)).sample()["index"] for rank in (0, 1)]
        >>> bool((draws[0] != draws[1]).any())
        True
    """

    def __init__(self, *, rank: int, world_size: int, seed: int = 0, stream: int = 0):
        _check_rank(rank, world_size)
        self.rank = int(rank)
        self.world_size = int(world_size)
        self.seed = int(seed)
        self.restart(stream)

    def restart(self, stream: int) -> None:
        """Reseeds the generator with ``(seed, rank, stream)``."""
        self.stream = int(stream)
        self._generator = torch.Generator().manual_seed(
            derive_seed(self.seed, self.rank, self.stream)
        )

    def sample(self, storage: Storage, batch_size: int) -> tuple[torch.Tensor, dict]:
        num_items = len(storage)
        if num_items == 0:
            raise RuntimeError("Cannot sample from an empty storage.")
        return torch.randint(num_items, (batch_size,), generator=self._generator), {}

    def _empty(self) -> None:
        self.restart(self.stream)

    def state_dict(self) -> dict[str, Any]:
        return {
            "kind": "sharded_random",
            "rank": self.rank,
            "world_size": self.world_size,
            "seed": self.seed,
            "stream": self.stream,
            "generator": self._generator.get_state(),
        }

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        if state_dict.get("kind") != "sharded_random":
            raise ValueError(
                f"not a ShardedRandomSampler state (kind {state_dict.get('kind')!r}); "
                "a sharded sampler restores only its own state"
            )
        for key in ("rank", "world_size", "seed"):
            if state_dict[key] != getattr(self, key):
                raise ValueError(
                    f"the saved sampler has {key}={state_dict[key]!r}, this one "
                    f"{getattr(self, key)!r}; restore it into a sampler of the same rank, "
                    "world size and seed, or call restart()"
                )
        self.stream = int(state_dict["stream"])
        self._generator.set_state(state_dict["generator"])

    def dumps(self, path: Any) -> None:
        torch.save(self.state_dict(), path)

    def loads(self, path: Any) -> None:
        self.load_state_dict(torch.load(path, weights_only=True))

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}(rank={self.rank}, world_size={self.world_size}, "
            f"seed={self.seed}, stream={self.stream})"
        )


def shard_replay_buffer(
    buffer: ReplayBuffer, *, rank: int, world_size: int, seed: int = 0
) -> OfflineReplayBuffer:
    """This rank's view of an offline replay buffer: same storage, sharded sampler.

    The new buffer shares the storage (a memory-mapped dataset stays on disk, read one
    batch at a time), the batch size, the transform, ``metadata`` and ``path`` of
    ``buffer``; its sampler is the sharded counterpart of ``buffer``'s:
    :class:`ShardedRandomSampler` for a ``RandomSampler``, :class:`ShardedSampler` for
    a ``SamplerWithoutReplacement`` (same ``shuffle``; the last incomplete batch of an
    epoch is always dropped). ``buffer`` itself is not changed.

    Args:
        buffer: the replay buffer of the dataset.

    Keyword Args:
        rank (int): this rank.
        world_size (int): number of ranks.
        seed (int): the run's seed, the same on every rank. Defaults to ``0``.

    Raises:
        ValueError: a sampler with no sharded counterpart (prioritized, slice, ...), or a
            bad rank.

    Examples:
        >>> import torch
        >>> from tensordict import TensorDict
        >>> from torchrl.data import SamplerWithoutReplacement
        >>> from torchrl_offline.data.sharding import shard_replay_buffer
        >>> from torchrl_offline.data.storage import make_replay_buffer
        >>> rb = make_replay_buffer(TensorDict({"observation": torch.zeros(8, 1)}, [8]),
        ...                         batch_size=2, sampler=SamplerWithoutReplacement())
        >>> shard = shard_replay_buffer(rb, rank=1, world_size=2, seed=0)
        >>> type(shard.sampler).__name__, shard.storage is rb.storage
        ('ShardedSampler', True)
    """
    _check_rank(rank, world_size)
    sampler = buffer.sampler
    if isinstance(sampler, (ShardedSampler, SamplerWithoutReplacement)):
        new: Sampler = ShardedSampler(
            rank=rank, world_size=world_size, seed=seed, shuffle=sampler.shuffle
        )
    elif isinstance(sampler, ShardedRandomSampler) or type(sampler) is RandomSampler:
        new = ShardedRandomSampler(rank=rank, world_size=world_size, seed=seed)
    else:
        raise ValueError(
            f"the replay buffer's {type(sampler).__name__} has no sharded counterpart; "
            "data-parallel training supports RandomSampler (independent per-rank streams) "
            "and SamplerWithoutReplacement (disjoint per-epoch shards)"
        )
    transform = buffer.transform
    if isinstance(transform, Compose) and len(transform) == 0:
        transform = None
    return OfflineReplayBuffer(
        storage=buffer.storage,
        sampler=new,
        batch_size=buffer.batch_size,
        transform=transform,
        metadata=getattr(buffer, "metadata", None),
        path=getattr(buffer, "path", None),
    )
