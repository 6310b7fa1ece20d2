"""Hydra configs of the offline losses (ConfigStore group ``loss``).

Each config is generated from the algorithm's declaration
(:class:`~torchrl_offline.objectives.declaration.AlgorithmDeclaration`): every argument
of its loss's constructor with the same default (the papers' values), plus the networks
and, for losses with target networks, ``gamma`` (given to ``make_value_estimator``, as
TorchRL's loss configs do). An algorithm another package declares gets its config the
same way (:func:`loss_config`). The networks are TorchRL
model configs (``model@models.policy: tanh_normal``, ``model@models.qvalue: value``, ...)
or anything that instantiates to a ``TensorDictModule``; a ``_partial_`` network config
is called once. ``action_spec`` may be written ``{low: -1.0, high: 1.0, shape: [1]}``.

Examples:
    >>> import torch
    >>> from hydra.utils import instantiate
    >>> from torchrl.trainers.algorithms.configs import MLPConfig, TanhNormalModelConfig
    >>> from torchrl.trainers.algorithms.configs import ValueModelConfig
    >>> from torchrl_offline.configs.objectives import OfflineIQLLossConfig
    >>> obs, act = 3, 1
    >>> cfg = OfflineIQLLossConfig(
    ...     actor_network=TanhNormalModelConfig(
    ...         network=MLPConfig(in_features=obs, out_features=2 * act, num_cells=[16]),
    ...         return_log_prob=True),
    ...     qvalue_network=ValueModelConfig(
    ...         network=MLPConfig(in_features=obs + act, out_features=1, num_cells=[16]),
    ...         in_keys=["observation", "action"]),
    ...     value_network=ValueModelConfig(
    ...         network=MLPConfig(in_features=obs, out_features=1, num_cells=[16]),
    ...         in_keys=["observation"]),
    ...     expectile=0.8, gamma=0.98)
    >>> loss = instantiate(cfg)
    >>> type(loss).__name__, loss.expectile, loss.temperature
    ('IQLLoss', 0.8, 3.0)
"""

from __future__ import annotations

import inspect
from dataclasses import field, make_dataclass
from typing import Any, Optional

from torchrl.objectives import LossModule
from torchrl.trainers.algorithms.configs.objectives import LossConfig

from torchrl_offline import registry
from torchrl_offline.configs.common import as_action_spec, as_module, as_tuple, plain
from torchrl_offline.objectives.declaration import AlgorithmDeclaration, constructor_parameters

__all__ = [
    "LOSS_CONFIGS",
    "OfflineAWACLossConfig",
    "OfflineAWRLossConfig",
    "OfflineBCLossConfig",
    "OfflineBCQLossConfig",
    "OfflineBEARLossConfig",
    "OfflineBanditIPSLossConfig",
    "OfflineCOMBOLossConfig",
    "OfflineCQLLossConfig",
    "OfflineCalQLLossConfig",
    "OfflineDiscreteAWACLossConfig",
    "OfflineDiscreteAWRLossConfig",
    "OfflineDiscreteBCLossConfig",
    "OfflineDiscreteBCQLossConfig",
    "OfflineDiscreteCQLLossConfig",
    "OfflineDiscreteIQLLossConfig",
    "OfflineEDACLossConfig",
    "OfflineIQLLossConfig",
    "OfflineMOPOLossConfig",
    "OfflineReBRACLossConfig",
    "OfflineSACNLossConfig",
    "OfflineTD3BCLossConfig",
    "loss_config",
    "loss_configs",
    "make_loss",
]

_SCALARS = (bool, int, float, str)


def _field(param: inspect.Parameter) -> tuple[str, Any, Any]:
    default = param.default
    if param.name.endswith("_network") or default is inspect.Parameter.empty:
        return param.name, Any, field(default=None)
    if type(default) in _SCALARS:
        return param.name, Optional[type(default)], field(default=default)  # noqa: UP045
    if isinstance(default, tuple):
        return param.name, Any, field(default_factory=lambda d=default: list(d))
    return param.name, Any, field(default=default)


def _class_name(name: str) -> str:
    words = {
        "iql": "IQL",
        "cql": "CQL",
        "awac": "AWAC",
        "td3": "TD3",
        "bc": "BC",
        "awr": "AWR",
        "ips": "IPS",
        "ql": "QL",
        "rebrac": "ReBRAC",
        "bcq": "BCQ",
        "bear": "BEAR",
        "edac": "EDAC",
        "mopo": "MOPO",
        "combo": "COMBO",
        "sac": "SAC",
        "n": "N",
    }
    return "Offline" + "".join(words.get(w, w.capitalize()) for w in name.split("_")) + "LossConfig"


_CONFIGS: dict[str, type[LossConfig]] = {}


def loss_config(name: str) -> type[LossConfig]:
    """The Hydra config class of algorithm ``name``'s loss (store name ``offline_<name>``).

    Its fields are the loss constructor's arguments with their defaults (networks
    ``None``: they come from model configs), ``gamma`` for losses with target networks,
    and ``algorithm``, which :func:`make_loss` (the ``_target_``) reads.

    Examples:
        >>> from torchrl_offline.configs.objectives import loss_config
        >>> cfg = loss_config("td3_bc")
        >>> cfg.__name__, cfg().alpha, cfg().algorithm
        ('OfflineTD3BCLossConfig', 2.5, 'td3_bc')
    """
    if name not in _CONFIGS:
        decl = registry.get("algorithm", name)
        if not isinstance(decl, AlgorithmDeclaration):
            raise TypeError(f"the algorithm {name!r} is not an AlgorithmDeclaration: {decl!r}")
        fields = [_field(p) for p in constructor_parameters(decl.loss_class)]
        if decl.target_update and "gamma" not in {f[0] for f in fields}:
            fields.append(("gamma", Optional[float], field(default=None)))  # noqa: UP045
        fields.append(("algorithm", str, field(default=name)))
        fields.append(("_target_", str, field(default=f"{__name__}.make_loss")))
        cls = make_dataclass(_class_name(name), fields, bases=(LossConfig,))
        cls.__module__ = __name__
        cls.__doc__ = (
            f"Hydra config of ``{decl.loss_class.__module__}.{decl.loss_class.__name__}`` "
            f"(store name ``offline_{name}``), generated from its constructor."
        )
        _CONFIGS[name] = cls
    return _CONFIGS[name]


def loss_configs() -> dict[str, type[LossConfig]]:
    """The loss config of every registered algorithm, ours and other packages'."""
    return {name: loss_config(name) for name in registry.names("algorithm")}


def make_loss(algorithm: str, **kwargs: Any) -> LossModule:
    """Builds algorithm ``algorithm``'s loss from config fields (the configs' target).

    Networks are module configs or modules (a ``_partial_`` network config is called
    once); ``action_spec`` may be ``{low, high, shape}``; ``gamma`` makes the value
    estimator.
    """
    decl = registry.get("algorithm", algorithm)
    gamma = kwargs.pop("gamma", None) if decl.target_update else None
    params = constructor_parameters(decl.loss_class)
    networks = [p.name for p in params if p.name.endswith("_network")]
    # TorchRL's trainer makers call a partial loss with every network they know of
    for key in ("actor_network", "qvalue_network", "value_network", "critic_network"):
        if key not in networks and kwargs.get(key, 0) is None:
            kwargs.pop(key)
    modules = {key: as_module(kwargs.pop(key, None), f"loss.{key}") for key in networks}
    if "action_spec" in kwargs:
        kwargs["action_spec"] = as_action_spec(kwargs["action_spec"], "loss.action_spec")
    if kwargs.get("bounds") is not None:
        kwargs["bounds"] = as_tuple(kwargs["bounds"])
    kwargs = {k: plain(v) for k, v in kwargs.items()}
    loss = decl.loss_class(**modules, **kwargs)
    if gamma is not None:
        loss.make_value_estimator(gamma=float(gamma))
    return loss


#: The loss config of each algorithm this package declares, by algorithm name.
LOSS_CONFIGS: dict[str, type[LossConfig]] = {
    name: loss_config(name) for name in registry.BUILTIN_ALGORITHMS
}
OfflineIQLLossConfig = LOSS_CONFIGS["iql"]
OfflineDiscreteIQLLossConfig = LOSS_CONFIGS["discrete_iql"]
OfflineCQLLossConfig = LOSS_CONFIGS["cql"]
OfflineCalQLLossConfig = LOSS_CONFIGS["cal_ql"]
OfflineDiscreteCQLLossConfig = LOSS_CONFIGS["discrete_cql"]
OfflineAWACLossConfig = LOSS_CONFIGS["awac"]
OfflineDiscreteAWACLossConfig = LOSS_CONFIGS["discrete_awac"]
OfflineAWRLossConfig = LOSS_CONFIGS["awr"]
OfflineDiscreteAWRLossConfig = LOSS_CONFIGS["discrete_awr"]
OfflineBanditIPSLossConfig = LOSS_CONFIGS["bandit_ips"]
OfflineTD3BCLossConfig = LOSS_CONFIGS["td3_bc"]
OfflineBCLossConfig = LOSS_CONFIGS["bc"]
OfflineBCQLossConfig = LOSS_CONFIGS["bcq"]
OfflineBEARLossConfig = LOSS_CONFIGS["bear"]
OfflineDiscreteBCLossConfig = LOSS_CONFIGS["discrete_bc"]
OfflineDiscreteBCQLossConfig = LOSS_CONFIGS["discrete_bcq"]
OfflineEDACLossConfig = LOSS_CONFIGS["edac"]
OfflineSACNLossConfig = LOSS_CONFIGS["sac_n"]
OfflineReBRACLossConfig = LOSS_CONFIGS["rebrac"]
OfflineMOPOLossConfig = LOSS_CONFIGS["mopo"]
OfflineCOMBOLossConfig = LOSS_CONFIGS["combo"]
