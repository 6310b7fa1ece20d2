"""Offline RL loss modules in TorchRL's conventions.

Each loss is a :class:`torchrl.objectives.LossModule`; where TorchRL has a loss of the
same name, ours takes the same constructor arguments and tensordict keys (a drop-in
replacement) with the paper's defaults.
"""

from torchrl_offline.objectives.awac import AWACLoss, DiscreteAWACLoss
from torchrl_offline.objectives.bc import ActorOutputError, BCLoss
from torchrl_offline.objectives.common import OfflineLossError
from torchrl_offline.objectives.cql import CQL_PRESETS, CQLLoss, DiscreteCQLLoss
from torchrl_offline.objectives.gaussian_actor import (
    TanhMeanGaussian,
    make_tanh_mean_gaussian_actor,
)
from torchrl_offline.objectives.iql import IQL_PRESETS, DiscreteIQLLoss, IQLLoss
from torchrl_offline.objectives.target_update import FusedSoftUpdate
from torchrl_offline.objectives.td3_bc import TD3BCLoss

__all__ = [
    "CQL_PRESETS",
    "IQL_PRESETS",
    "AWACLoss",
    "ActorOutputError",
    "BCLoss",
    "CQLLoss",
    "DiscreteAWACLoss",
    "DiscreteCQLLoss",
    "DiscreteIQLLoss",
    "FusedSoftUpdate",
    "IQLLoss",
    "OfflineLossError",
    "TD3BCLoss",
    "TanhMeanGaussian",
    "make_tanh_mean_gaussian_actor",
]
