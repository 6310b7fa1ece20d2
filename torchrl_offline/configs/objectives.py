"""Hydra configs of the offline losses (ConfigStore group ``loss``).

Each config exposes every keyword argument of its loss's constructor with the same
default (the papers' values), plus the networks and ``gamma`` (given to
``make_value_estimator``, as TorchRL's loss configs do). The networks are TorchRL
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

from dataclasses import dataclass
from typing import Any

from omegaconf import MISSING
from torchrl.objectives import LossModule
from torchrl.trainers.algorithms.configs.objectives import LossConfig

from torchrl_offline import registry
from torchrl_offline.configs.common import as_action_spec, as_module, as_tuple, plain

__all__ = [
    "LOSS_CONFIGS",
    "OfflineAWACLossConfig",
    "OfflineBCLossConfig",
    "OfflineCQLLossConfig",
    "OfflineDiscreteAWACLossConfig",
    "OfflineDiscreteCQLLossConfig",
    "OfflineDiscreteIQLLossConfig",
    "OfflineIQLLossConfig",
    "OfflineTD3BCLossConfig",
]

_MAKERS = "torchrl_offline.configs.objectives."


@dataclass
class OfflineIQLLossConfig(LossConfig):
    """Hydra config of :class:`torchrl_offline.objectives.iql.IQLLoss` (store name ``offline_iql``).

    Every constructor argument is a field with the constructor's default; ``gamma`` sets
    the value estimator's discount (the loss's default when ``None``).
    """

    actor_network: Any = None
    qvalue_network: Any = None
    value_network: Any = None
    num_qvalue_nets: int = 2
    loss_function: str = "l2"
    temperature: float = 3.0
    expectile: float = 0.7
    max_weight: float = 100.0
    action_eps: float = 1e-4
    gamma: float | None = None
    priority_key: str | None = None
    separate_losses: bool = False
    reduction: str | None = None
    deactivate_vmap: bool = False
    scalar_output_mode: str | None = None
    check_inputs: bool = True
    _target_: str = _MAKERS + "_make_iql_loss"

    def __post_init__(self) -> None:
        super().__post_init__()


@dataclass
class OfflineDiscreteIQLLossConfig(OfflineIQLLossConfig):
    """Hydra config of :class:`torchrl_offline.objectives.iql.DiscreteIQLLoss`
    (store name ``offline_discrete_iql``); ``action_space`` is ``"categorical"`` for
    integer actions, ``"one-hot"`` for one-hot actions."""

    action_space: str | None = None
    _target_: str = _MAKERS + "_make_discrete_iql_loss"


@dataclass
class OfflineCQLLossConfig(LossConfig):
    """Hydra config of :class:`torchrl_offline.objectives.cql.CQLLoss` (store name ``offline_cql``).

    ``action_spec`` (the box CQL samples random actions from) is a ``TensorSpec`` or
    ``{low, high, shape}``; when ``None`` it is read from the actor.
    """

    actor_network: Any = None
    qvalue_network: Any = None
    loss_function: str = "l2"
    alpha_init: float = 1.0
    min_alpha: float | None = None
    max_alpha: float | None = None
    action_spec: Any = None
    fixed_alpha: bool = False
    target_entropy: Any = "auto"
    delay_actor: bool = False
    delay_qvalue: bool = True
    gamma: float | None = None
    temperature: float = 1.0
    min_q_weight: float = 10.0
    max_q_backup: bool = False
    deterministic_backup: bool = True
    backup_action: str = "sample"
    num_random: int = 10
    with_lagrange: bool = False
    lagrange_thresh: float = 10.0
    reduction: str | None = None
    deactivate_vmap: bool = False
    scalar_output_mode: str | None = None
    cql_variant: str = "H"
    num_qvalue_nets: int = 2
    check_inputs: bool = True
    _target_: str = _MAKERS + "_make_cql_loss"

    def __post_init__(self) -> None:
        super().__post_init__()


@dataclass
class OfflineDiscreteCQLLossConfig(LossConfig):
    """Hydra config of :class:`torchrl_offline.objectives.cql.DiscreteCQLLoss`
    (store name ``offline_discrete_cql``); ``value_network`` is a ``QValueActor`` (TorchRL's
    ``model: qvalue`` config)."""

    value_network: Any = None
    loss_function: str | None = "l2"
    delay_value: bool = True
    gamma: float | None = None
    action_space: Any = None
    reduction: str | None = None
    alpha: float = 1.0
    num_quantiles: int | None = None
    kappa: float = 1.0
    check_inputs: bool = True
    _target_: str = _MAKERS + "_make_discrete_cql_loss"

    def __post_init__(self) -> None:
        super().__post_init__()


@dataclass
class OfflineAWACLossConfig(LossConfig):
    """Hydra config of :class:`torchrl_offline.objectives.awac.AWACLoss` (store name ``offline_awac``)."""

    actor_network: Any = None
    qvalue_network: Any = None
    num_qvalue_nets: int = 2
    loss_function: str = "l2"
    awac_lambda: float = 1.0 / 3.0
    max_weight: float = 100.0
    normalize_weights: bool = False
    priority_key: str | None = None
    separate_losses: bool = False
    reduction: str | None = None
    deactivate_vmap: bool = False
    use_prioritized_weights: Any = "auto"
    check_inputs: bool = True
    gamma: float | None = None
    _target_: str = _MAKERS + "_make_awac_loss"

    def __post_init__(self) -> None:
        super().__post_init__()


@dataclass
class OfflineDiscreteAWACLossConfig(OfflineAWACLossConfig):
    """Hydra config of :class:`torchrl_offline.objectives.awac.DiscreteAWACLoss`
    (store name ``offline_discrete_awac``); ``action_space`` is required."""

    action_space: Any = MISSING
    _target_: str = _MAKERS + "_make_discrete_awac_loss"


@dataclass
class OfflineTD3BCLossConfig(LossConfig):
    """Hydra config of :class:`torchrl_offline.objectives.td3_bc.TD3BCLoss`
    (store name ``offline_td3_bc``); give ``action_spec`` or ``bounds: [low, high]``."""

    actor_network: Any = None
    qvalue_network: Any = None
    action_spec: Any = None
    bounds: Any = None
    num_qvalue_nets: int = 2
    policy_noise: float = 0.2
    noise_clip: float = 0.5
    alpha: float = 2.5
    loss_function: str = "l2"
    delay_actor: bool = True
    delay_qvalue: bool = True
    priority_key: str | None = None
    separate_losses: bool = False
    reduction: str | None = None
    deactivate_vmap: bool = False
    use_prioritized_weights: Any = "auto"
    check_inputs: bool = True
    gamma: float | None = None
    _target_: str = _MAKERS + "_make_td3_bc_loss"

    def __post_init__(self) -> None:
        super().__post_init__()


@dataclass
class OfflineBCLossConfig(LossConfig):
    """Hydra config of :class:`torchrl_offline.objectives.bc.BCLoss` (store name ``offline_bc``),
    for continuous and discrete actions (``mode``)."""

    actor_network: Any = None
    loss_function: Any = None
    reduction: str | None = None
    mode: str = "auto"
    action_eps: float = 1e-4
    check_inputs: bool = True
    _target_: str = _MAKERS + "_make_bc_loss"

    def __post_init__(self) -> None:
        super().__post_init__()


#: Registry loss name -> its config class (stored as ``offline_<name>`` in group ``loss``).
LOSS_CONFIGS: dict[str, type[LossConfig]] = {
    "iql": OfflineIQLLossConfig,
    "discrete_iql": OfflineDiscreteIQLLossConfig,
    "cql": OfflineCQLLossConfig,
    "discrete_cql": OfflineDiscreteCQLLossConfig,
    "awac": OfflineAWACLossConfig,
    "discrete_awac": OfflineDiscreteAWACLossConfig,
    "td3_bc": OfflineTD3BCLossConfig,
    "bc": OfflineBCLossConfig,
}


# ----------------------------------------------------------------------------- makers
def _build(name: str, networks: tuple[str, ...], kwargs: dict[str, Any]) -> LossModule:
    """Builds the registered loss ``name`` from config fields."""
    gamma = kwargs.pop("gamma", None)
    # TorchRL's trainer makers call a partial loss with every network they know of
    for key in ("actor_network", "qvalue_network", "value_network", "critic_network"):
        if key not in networks and kwargs.get(key, 0) is None:
            kwargs.pop(key)
    modules = [as_module(kwargs.pop(key, None), f"loss.{key}") for key in networks]
    if "action_spec" in kwargs:
        kwargs["action_spec"] = as_action_spec(kwargs["action_spec"], "loss.action_spec")
    if kwargs.get("bounds") is not None:
        kwargs["bounds"] = as_tuple(kwargs["bounds"])
    kwargs = {k: plain(v) for k, v in kwargs.items()}
    loss = registry.get("loss", name)(*modules, **kwargs)
    if gamma is not None:
        loss.make_value_estimator(gamma=float(gamma))
    return loss


_ACTOR_Q_V = ("actor_network", "qvalue_network", "value_network")
_ACTOR_Q = ("actor_network", "qvalue_network")


def _make_iql_loss(**kwargs: Any) -> LossModule:
    return _build("iql", _ACTOR_Q_V, kwargs)


def _make_discrete_iql_loss(**kwargs: Any) -> LossModule:
    return _build("discrete_iql", _ACTOR_Q_V, kwargs)


def _make_cql_loss(**kwargs: Any) -> LossModule:
    return _build("cql", _ACTOR_Q, kwargs)


def _make_discrete_cql_loss(**kwargs: Any) -> LossModule:
    return _build("discrete_cql", ("value_network",), kwargs)


def _make_awac_loss(**kwargs: Any) -> LossModule:
    return _build("awac", _ACTOR_Q, kwargs)


def _make_discrete_awac_loss(**kwargs: Any) -> LossModule:
    return _build("discrete_awac", _ACTOR_Q, kwargs)


def _make_td3_bc_loss(**kwargs: Any) -> LossModule:
    return _build("td3_bc", _ACTOR_Q, kwargs)


def _make_bc_loss(**kwargs: Any) -> LossModule:
    return _build("bc", ("actor_network",), kwargs)
