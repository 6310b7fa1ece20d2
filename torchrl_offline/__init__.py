"""torchrl_offline: offline reinforcement learning for TorchRL.

Subpackages:
    data: Minari datasets, users' logs and collected datasets into TorchRL replay buffers.
    objectives: offline RL loss modules (CQL, IQL, AWAC, TD3+BC, BC).
    ope: off-policy evaluation (importance sampling, doubly robust, FQE).
    trainers: offline training inside TorchRL's Trainer, checkpoints, fine-tuning.
    registry: components by kind and name.
"""

from importlib.metadata import PackageNotFoundError, version

from torchrl_offline import data, registry

try:
    __version__ = version("torchrl-offline")
except PackageNotFoundError:  # running from a source tree without installation
    __version__ = "0.0.0+unknown"

__all__ = ["__version__", "data", "registry"]
