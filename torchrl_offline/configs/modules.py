"""Hydra configs of the actors TorchRL's ``model`` group lacks (ConfigStore group ``model``).

* ``offline_tanh_mean_gaussian``: the IQL paper's Gaussian actor (tanh-bounded mean,
  state-independent log-std),
  :func:`~torchrl_offline.objectives.gaussian_actor.make_tanh_mean_gaussian_actor`;
* ``offline_categorical``: a categorical actor over a network's logits, for
  ``offline_discrete_iql``, ``offline_discrete_awac`` and ``offline_bc`` with discrete
  actions (TorchRL's ``qvalue`` model is the network of ``offline_discrete_cql``).
* ``offline_behavior_vae``: the conditional VAE of the behaviour policy that
  ``offline_bcq`` and ``offline_bear`` take as ``behavior_network``,
  :func:`~torchrl_offline.objectives.behavior_vae.make_behavior_vae`.

Examples:
    >>> import torch
    >>> from hydra.utils import instantiate
    >>> from tensordict import TensorDict
    >>> from torchrl.trainers.algorithms.configs import MLPConfig
    >>> from torchrl_offline.configs.modules import CategoricalActorConfig
    >>> actor = instantiate(CategoricalActorConfig(
    ...     network=MLPConfig(in_features=4, out_features=2, num_cells=[8])))
    >>> actor(TensorDict({"observation": torch.randn(5, 4)}, [5]))["action"].shape
    torch.Size([5])
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch
from omegaconf import MISSING
from tensordict.nn import TensorDictModule
from torch import nn
from torchrl.modules import ProbabilisticActor
from torchrl.trainers.algorithms.configs.common import _normalize_hydra_key
from torchrl.trainers.algorithms.configs.modules import ModelConfig

from torchrl_offline.configs.common import ConfigError, as_action_spec, as_module, plain

__all__ = ["BehaviorVAEConfig", "CategoricalActorConfig", "TanhMeanGaussianActorConfig"]

_MAKERS = "torchrl_offline.configs.modules."


@dataclass
class TanhMeanGaussianActorConfig(ModelConfig):
    """The IQL paper's actor (``model: offline_tanh_mean_gaussian``); ``action_spec`` is
    ``{low, high, shape}`` (a ``Bounded`` spec), the activation is ReLU."""

    observation_dim: int = MISSING
    action_spec: Any = MISSING
    num_cells: list[int] = field(default_factory=lambda: [256, 256])
    log_std_bounds: list[float] = field(default_factory=lambda: [-5.0, 2.0])
    log_std_mapping: str = "sigmoid"
    in_key: str = "observation"
    _target_: str = _MAKERS + "_make_tanh_mean_gaussian_actor"

    def __post_init__(self) -> None:
        super().__post_init__()


@dataclass
class CategoricalActorConfig(ModelConfig):
    """A categorical actor over the logits of ``network`` (``model: offline_categorical``);
    ``one_hot`` samples one-hot actions instead of indices."""

    network: Any = MISSING
    one_hot: bool = False
    return_log_prob: bool = False
    _target_: str = _MAKERS + "_make_categorical_actor"

    def __post_init__(self) -> None:
        super().__post_init__()


@dataclass
class BehaviorVAEConfig(ModelConfig):
    """The behaviour model of BCQ and BEAR (``model: offline_behavior_vae``); ``action_spec``
    is ``{low, high, shape}`` (a ``Bounded`` spec), the activation is ReLU."""

    observation_dim: int = MISSING
    action_spec: Any = MISSING
    num_cells: list[int] = field(default_factory=lambda: [750, 750])
    latent_dim: Any = None
    in_key: str = "observation"
    decoder_squash: str = "tanh"
    _target_: str = _MAKERS + "_make_behavior_vae"

    def __post_init__(self) -> None:
        super().__post_init__()


def _make_behavior_vae(
    *,
    observation_dim: int,
    action_spec: Any,
    num_cells: Any,
    latent_dim: Any,
    in_key: str,
    decoder_squash: str = "tanh",
    **ignored: Any,  # ModelConfig's in_keys / out_keys / shared
) -> nn.Module:
    from torchrl_offline.objectives.behavior_vae import make_behavior_vae

    spec = as_action_spec(action_spec, "model.action_spec")
    if spec is None:
        raise ConfigError("model.action_spec is required: {low, high, shape}")
    return make_behavior_vae(
        int(observation_dim),
        spec,
        num_cells=[int(c) for c in plain(num_cells)],
        latent_dim=None if latent_dim is None else int(latent_dim),
        in_key=in_key,
        decoder_squash=decoder_squash,
    )


def _make_tanh_mean_gaussian_actor(
    *,
    observation_dim: int,
    action_spec: Any,
    num_cells: Any,
    log_std_bounds: Any,
    log_std_mapping: str,
    in_key: str,
    **ignored: Any,  # ModelConfig's in_keys / out_keys / shared
) -> ProbabilisticActor:
    from torchrl_offline.objectives.gaussian_actor import make_tanh_mean_gaussian_actor

    spec = as_action_spec(action_spec, "model.action_spec")
    if spec is None:
        raise ConfigError("model.action_spec is required: {low, high, shape}")
    bounds = plain(log_std_bounds)
    return make_tanh_mean_gaussian_actor(
        int(observation_dim),
        spec,
        num_cells=[int(c) for c in plain(num_cells)],
        log_std_bounds=(float(bounds[0]), float(bounds[1])),
        log_std_mapping=log_std_mapping,
        in_key=in_key,
    )


def _make_categorical_actor(
    *,
    network: Any,
    one_hot: bool,
    return_log_prob: bool,
    in_keys: Any = None,
    out_keys: Any = None,
    shared: bool = False,
) -> ProbabilisticActor:
    net: nn.Module = as_module(network, "model.network")
    in_keys = [_normalize_hydra_key(k) for k in plain(in_keys) or ["observation"]]
    out_keys = [_normalize_hydra_key(k) for k in plain(out_keys) or ["action"]]
    if one_hot:
        from torchrl.modules.distributions import OneHotCategorical as dist
    else:
        dist = torch.distributions.Categorical
    actor = ProbabilisticActor(
        TensorDictModule(net, in_keys=in_keys, out_keys=["logits"]),
        in_keys=["logits"],
        out_keys=out_keys,
        distribution_class=dist,
        return_log_prob=return_log_prob,
    )
    return actor.share_memory() if shared else actor
