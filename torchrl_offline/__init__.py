"""torchrl_offline: offline reinforcement learning for TorchRL.

Subpackages:
    data: Minari datasets, users' logs and collected datasets into TorchRL replay buffers.
    objectives: offline RL loss modules (CQL, IQL, AWAC, TD3+BC, BC).
    ope: off-policy evaluation (importance sampling, doubly robust, FQE, model-based).
    models: learned dynamics (a batched Gaussian ensemble, its fit, the model as a TorchRL
        environment) for model-based offline RL and model-based OPE.
    trainers: offline training inside TorchRL's Trainer, checkpoints, fine-tuning.
    deploy: a trained policy's actions from arrays (``load_policy(run).predict(obs)``) and
        its export to ONNX, TorchScript or ``torch.export`` files.
    registry: components by kind and name.

Importing the package is cheap (no torch, no TorchRL): the subpackages are imported on
first use (``torchrl_offline.data`` imports TorchRL), so the command line's ``--help``
answers at once.
"""

import importlib
from importlib.metadata import PackageNotFoundError, version
from typing import Any

from torchrl_offline import registry

try:
    __version__ = version("torchrl-offline")
except PackageNotFoundError:  # running from a source tree without installation
    __version__ = "0.0.0+unknown"

__all__ = ["TrainedPolicy", "__version__", "data", "load_policy", "registry"]

#: Subpackages imported at first use (``torchrl_offline.data`` imports TorchRL).
_LAZY_SUBPACKAGES = frozenset({"data"})
#: Names served from a subpackage imported at first use.
_LAZY = {"load_policy": "torchrl_offline.deploy", "TrainedPolicy": "torchrl_offline.deploy"}


def __getattr__(name: str) -> Any:
    """``torchrl_offline.data``, ``load_policy`` and ``TrainedPolicy`` imported on first
    access (PEP 562)."""
    if name in _LAZY_SUBPACKAGES:
        return importlib.import_module(f"{__name__}.{name}")
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
