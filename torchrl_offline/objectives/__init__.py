"""Offline RL loss modules in TorchRL's conventions, each with its algorithm's declaration.

Each loss is a :class:`torchrl.objectives.LossModule`; where TorchRL has a loss of the
same name, ours takes the same constructor arguments and tensordict keys (a drop-in
replacement) with the paper's defaults. Next to each loss, an
:class:`~torchrl_offline.objectives.declaration.AlgorithmDeclaration` (``IQL_ALGORITHM``,
...) says what a training run needs around it.
"""

from torchrl_offline.objectives.awac import AWAC_PRESETS, AWACLoss, DiscreteAWACLoss
from torchrl_offline.objectives.awr import AWRLoss, DiscreteAWRLoss
from torchrl_offline.objectives.bandit_ips import BanditIPSLoss
from torchrl_offline.objectives.bc import ActorOutputError, BCLoss
from torchrl_offline.objectives.bcq import BCQLoss
from torchrl_offline.objectives.bear import BEARLoss
from torchrl_offline.objectives.behavior_vae import BehaviorVAE, make_behavior_vae
from torchrl_offline.objectives.cal_ql import CAL_QL_PRESETS, CalQLLoss
from torchrl_offline.objectives.combo import COMBO_PRESETS, COMBOLoss
from torchrl_offline.objectives.common import OfflineLossError
from torchrl_offline.objectives.cql import CQL_PRESETS, CQLLoss
from torchrl_offline.objectives.declaration import AlgorithmDeclaration, ParamGroup
from torchrl_offline.objectives.discrete_bcq import DiscreteBCQActor, DiscreteBCQLoss
from torchrl_offline.objectives.discrete_cql import DiscreteCQLLoss
from torchrl_offline.objectives.edac import EDACLoss, SACNLoss
from torchrl_offline.objectives.gaussian_actor import (
    TanhMeanGaussian,
    make_tanh_mean_gaussian_actor,
)
from torchrl_offline.objectives.iql import IQL_PRESETS, DiscreteIQLLoss, IQLLoss
from torchrl_offline.objectives.mopo import MOPO_PRESETS, MOPOLoss
from torchrl_offline.objectives.networks import NetworkFactory
from torchrl_offline.objectives.rebrac import REBRAC_PRESETS, ReBRACLoss
from torchrl_offline.objectives.target_update import FusedSoftUpdate
from torchrl_offline.objectives.td3_bc import TD3BCLoss

__all__ = [
    "AWAC_PRESETS",
    "CAL_QL_PRESETS",
    "COMBO_PRESETS",
    "CQL_PRESETS",
    "IQL_PRESETS",
    "MOPO_PRESETS",
    "REBRAC_PRESETS",
    "AWACLoss",
    "AWRLoss",
    "ActorOutputError",
    "AlgorithmDeclaration",
    "BCLoss",
    "BCQLoss",
    "BEARLoss",
    "BanditIPSLoss",
    "BehaviorVAE",
    "COMBOLoss",
    "CQLLoss",
    "CalQLLoss",
    "DiscreteAWACLoss",
    "DiscreteAWRLoss",
    "DiscreteBCQActor",
    "DiscreteBCQLoss",
    "DiscreteCQLLoss",
    "DiscreteIQLLoss",
    "EDACLoss",
    "FusedSoftUpdate",
    "IQLLoss",
    "MOPOLoss",
    "NetworkFactory",
    "OfflineLossError",
    "ParamGroup",
    "ReBRACLoss",
    "SACNLoss",
    "TD3BCLoss",
    "TanhMeanGaussian",
    "make_behavior_vae",
    "make_tanh_mean_gaussian_actor",
]
