"""Per-rank samplers: disjoint shards without replacement, independent random streams."""

from __future__ import annotations

import pytest
import torch
from tensordict import TensorDict
from torchrl.data import RandomSampler, SamplerWithoutReplacement, SliceSampler

from torchrl_offline.data.sharding import (
    ShardedRandomSampler,
    ShardedSampler,
    derive_seed,
    shard_replay_buffer,
)
from torchrl_offline.data.storage import make_replay_buffer


def _epoch(sampler, n: int, batch: int, batches: int) -> list[torch.Tensor]:
    return [sampler.sample(range(n), batch)[0] for _ in range(batches)]


def test_shards_are_disjoint_within_an_epoch_and_reshuffled_between_epochs():
    n, world, batch = 100, 3, 5  # shards of 33, 6 full batches each
    samplers = [ShardedSampler(rank=r, world_size=world, seed=7) for r in range(world)]
    epoch0 = [torch.cat(_epoch(s, n, batch, 6)) for s in samplers]
    assert all(s.ran_out for s in samplers)
    together = torch.cat(epoch0)
    assert together.numel() == 90 and together.unique().numel() == 90
    assert int(together.min()) >= 0 and int(together.max()) < n
    epoch1 = [torch.cat(_epoch(s, n, batch, 6)) for s in samplers]
    assert all(s.epoch == 1 for s in samplers)
    assert torch.cat(epoch1).unique().numel() == 90
    assert not torch.equal(epoch0[0], epoch1[0])  # a new permutation


def test_the_shard_order_depends_on_the_seed_only():
    a = _epoch(ShardedSampler(rank=1, world_size=2, seed=0), 50, 4, 8)
    b = _epoch(ShardedSampler(rank=1, world_size=2, seed=0), 50, 4, 8)
    c = _epoch(ShardedSampler(rank=1, world_size=2, seed=1), 50, 4, 8)
    assert all(torch.equal(x, y) for x, y in zip(a, b))
    assert not all(torch.equal(x, y) for x, y in zip(a, c))


def test_unshuffled_shards_are_contiguous_blocks():
    sampler = ShardedSampler(rank=1, world_size=2, seed=0, shuffle=False)
    assert torch.cat(_epoch(sampler, 10, 2, 2)).tolist() == [5, 6, 7, 8]


def test_state_dict_continues_exactly_mid_epoch(tmp_path):
    sampler = ShardedSampler(rank=0, world_size=2, seed=3)
    _epoch(sampler, 40, 4, 7)  # into epoch 1
    sampler.dumps(tmp_path / "state.pt")
    restored = ShardedSampler(rank=0, world_size=2, seed=3)
    restored.loads(tmp_path / "state.pt")
    assert (restored.epoch, restored.position) == (1, 8)
    for x, y in zip(_epoch(sampler, 40, 4, 5), _epoch(restored, 40, 4, 5)):
        assert torch.equal(x, y)


def test_state_of_another_rank_or_kind_is_refused():
    state = ShardedSampler(rank=0, world_size=2).state_dict()
    with pytest.raises(ValueError, match="rank=0"):
        ShardedSampler(rank=1, world_size=2).load_state_dict(state)
    with pytest.raises(ValueError, match="not a ShardedRandomSampler state"):
        ShardedRandomSampler(rank=0, world_size=2).load_state_dict(state)
    with pytest.raises(ValueError, match="not a ShardedSampler state"):
        ShardedSampler(rank=0, world_size=2).load_state_dict({})


def test_start_epoch_jumps_to_an_epoch_start():
    a, b = (
        ShardedSampler(rank=0, world_size=2, seed=1),
        ShardedSampler(rank=0, world_size=2, seed=1),
    )
    _epoch(a, 20, 2, 5)  # the whole of epoch 0
    b.start_epoch(1)
    assert torch.equal(a.sample(range(20), 2)[0], b.sample(range(20), 2)[0])


def test_a_shard_smaller_than_a_batch_is_an_error():
    with pytest.raises(
        ValueError, match="holds 5 of the 10 transitions, fewer than one batch of 8"
    ):
        ShardedSampler(rank=0, world_size=2).sample(range(10), 8)


@pytest.mark.parametrize("rank, world", [(2, 2), (-1, 2), (0, 0)])
def test_bad_rank(rank, world):
    with pytest.raises(ValueError, match="rank|world_size"):
        ShardedSampler(rank=rank, world_size=world)


def test_random_streams_are_independent_and_reproducible():
    def draw(rank, stream=0):
        sampler = ShardedRandomSampler(rank=rank, world_size=2, seed=5, stream=stream)
        return sampler.sample(range(1000), 64)[0]

    assert torch.equal(draw(0), draw(0))
    assert not torch.equal(draw(0), draw(1))
    assert not torch.equal(draw(0), draw(0, stream=1))
    assert derive_seed(5, 0, 0) != derive_seed(5, 1, 0)


def test_random_state_roundtrip_and_restart():
    sampler = ShardedRandomSampler(rank=1, world_size=2, seed=0)
    sampler.sample(range(100), 8)
    state = sampler.state_dict()
    expected = sampler.sample(range(100), 8)[0]
    restored = ShardedRandomSampler(rank=1, world_size=2, seed=0)
    restored.load_state_dict(state)
    assert torch.equal(restored.sample(range(100), 8)[0], expected)
    restored.restart(4)
    assert torch.equal(
        restored.sample(range(100), 8)[0],
        ShardedRandomSampler(rank=1, world_size=2, seed=0, stream=4).sample(range(100), 8)[0],
    )


def _buffer(sampler, n: int = 12):
    td = TensorDict({"observation": torch.arange(float(n)).unsqueeze(-1)}, [n])
    return make_replay_buffer(td, batch_size=2, sampler=sampler, metadata={"name": "x"}, path="p")


def test_shard_replay_buffer_picks_the_sharded_counterpart():
    rb = _buffer(SamplerWithoutReplacement(shuffle=False))
    shard = shard_replay_buffer(rb, rank=1, world_size=2, seed=0)
    assert isinstance(shard.sampler, ShardedSampler) and not shard.sampler.shuffle
    assert shard.storage is rb.storage and isinstance(rb.sampler, SamplerWithoutReplacement)
    assert shard.metadata == {"name": "x"} and str(shard.path) == "p"
    epoch = [batch["observation"].squeeze(-1).tolist() for batch in shard]  # one epoch
    assert epoch == [[6.0, 7.0], [8.0, 9.0], [10.0, 11.0]]
    random = shard_replay_buffer(_buffer(RandomSampler()), rank=0, world_size=2, seed=0)
    assert isinstance(random.sampler, ShardedRandomSampler)
    assert random.sample().batch_size == torch.Size([2])


def test_shard_replay_buffer_refuses_other_samplers():
    with pytest.raises(ValueError, match="SliceSampler has no sharded counterpart"):
        shard_replay_buffer(_buffer(SliceSampler(num_slices=1)), rank=0, world_size=2)
