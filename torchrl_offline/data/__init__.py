"""Offline data: load Minari datasets and users' logs into TorchRL replay buffers."""

from torchrl_offline.data.errors import DatasetError, DatasetNotFoundError
from torchrl_offline.data.logged import from_logged
from torchrl_offline.data.minari_writer import write_minari
from torchrl_offline.data.normalize import normalized_score, observation_norm, reward_scaling
from torchrl_offline.data.stats import DatasetStats, dataset_stats
from torchrl_offline.data.storage import OfflineReplayBuffer, make_replay_buffer
from torchrl_offline.data.validate import validate_transitions

__all__ = [
    "DatasetError",
    "DatasetNotFoundError",
    "DatasetStats",
    "OfflineReplayBuffer",
    "dataset_stats",
    "from_logged",
    "make_replay_buffer",
    "normalized_score",
    "observation_norm",
    "reward_scaling",
    "validate_transitions",
    "write_minari",
]
