"""Offline data: load Minari datasets and users' logs into TorchRL replay buffers."""

from torchrl_offline.data.behavior import (
    BehaviorPolicy,
    EpsilonGreedyPolicy,
    GaussianNoisePolicy,
    MixturePolicy,
    ProbabilisticActorPolicy,
    UniformRandomPolicy,
    as_behavior_policy,
)
from torchrl_offline.data.collect import collect_dataset
from torchrl_offline.data.errors import DatasetError, DatasetNotFoundError, DatasetWarning
from torchrl_offline.data.logged import from_logged
from torchrl_offline.data.minari import load_minari
from torchrl_offline.data.minari_writer import write_minari
from torchrl_offline.data.normalize import normalized_score, observation_norm, reward_scaling
from torchrl_offline.data.sharding import ShardedRandomSampler, ShardedSampler, shard_replay_buffer
from torchrl_offline.data.stats import DatasetStats, dataset_stats
from torchrl_offline.data.storage import OfflineReplayBuffer, make_replay_buffer
from torchrl_offline.data.validate import validate_transitions

__all__ = [
    "BehaviorPolicy",
    "DatasetError",
    "DatasetNotFoundError",
    "DatasetStats",
    "DatasetWarning",
    "EpsilonGreedyPolicy",
    "GaussianNoisePolicy",
    "MixturePolicy",
    "OfflineReplayBuffer",
    "ProbabilisticActorPolicy",
    "ShardedRandomSampler",
    "ShardedSampler",
    "UniformRandomPolicy",
    "as_behavior_policy",
    "collect_dataset",
    "dataset_stats",
    "from_logged",
    "load_minari",
    "make_replay_buffer",
    "normalized_score",
    "observation_norm",
    "reward_scaling",
    "shard_replay_buffer",
    "validate_transitions",
    "write_minari",
]
