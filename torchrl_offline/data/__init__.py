"""Offline data: load Minari datasets and users' logs into TorchRL replay buffers."""

from torchrl_offline.data.errors import DatasetError, DatasetNotFoundError
from torchrl_offline.data.minari_writer import write_minari
from torchrl_offline.data.storage import OfflineReplayBuffer, make_replay_buffer
from torchrl_offline.data.validate import validate_transitions

__all__ = [
    "DatasetError",
    "DatasetNotFoundError",
    "OfflineReplayBuffer",
    "make_replay_buffer",
    "validate_transitions",
    "write_minari",
]
