"""Hydra configs of torchrl_offline, stored in TorchRL's ConfigStore groups.

:func:`register_configs` stores, next to TorchRL's own entries:

* group ``loss``: ``offline_<name>`` for every registered algorithm (``offline_iql``,
  ``offline_discrete_iql``, ``offline_cql``, ``offline_discrete_cql``, ``offline_awac``,
  ``offline_discrete_awac``, ``offline_td3_bc``, ``offline_bc``, ``offline_discrete_bc``
  and those other packages declare), generated from the declarations
  (:mod:`torchrl_offline.configs.objectives`);
* group ``dataset``: ``minari``, ``logged``, ``collect``, and the same configs in group
  ``replay_buffer`` as ``offline_minari``, ``offline_logged``, ``offline_collect``
  (:mod:`torchrl_offline.configs.data`);
* group ``trainer``: ``offline`` (:mod:`torchrl_offline.configs.trainers`);
* group ``model``: ``offline_tanh_mean_gaussian`` (the IQL paper's actor),
  ``offline_categorical`` and ``offline_behavior_vae`` (BCQ's and BEAR's behaviour model)
  (:mod:`torchrl_offline.configs.modules`);
* the OmegaConf resolver ``offline_spec``: network sizes and action bounds read from the
  dataset node, ``${offline_spec:${dataset},observation_dim}``
  (:mod:`torchrl_offline.configs.specs`).

The ``offline_`` prefix keeps our losses apart from TorchRL's ``loss: iql`` and
``loss: cql`` (TorchRL's own implementations, with their defaults). Everything else
(networks, models, optimizers, samplers, transforms, loggers, target-net updaters,
hooks) comes from TorchRL's groups, so a config composes both, e.g.::

    defaults:
      - network@networks.policy: mlp
      - model@models.policy: tanh_normal
      - loss: offline_iql
      - dataset: minari
      - optimizer: adam
      - trainer: offline
      - _self_

This package needs ``hydra-core`` (the optional ``hydra`` extra); importing
``torchrl_offline`` does not import it.

Examples:
    >>> from torchrl_offline.configs import register_configs
    >>> cs = register_configs()
    >>> "offline_iql.yaml" in cs.repo["loss"] and "iql.yaml" in cs.repo["loss"]
    True
"""

from __future__ import annotations

try:
    from hydra.core.config_store import ConfigStore
except ImportError as err:  # pragma: no cover - exercised without the extra only
    raise ImportError(
        "torchrl_offline.configs needs hydra-core: pip install 'torchrl-offline[hydra]'"
    ) from err

from torchrl_offline.configs.common import ConfigError
from torchrl_offline.configs.data import (
    DATASET_CONFIGS,
    CollectedDatasetConfig,
    DatasetConfig,
    LoggedDatasetConfig,
    MinariDatasetConfig,
)
from torchrl_offline.configs.modules import (
    BehaviorVAEConfig,
    CategoricalActorConfig,
    TanhMeanGaussianActorConfig,
)
from torchrl_offline.configs.objectives import (
    LOSS_CONFIGS,
    OfflineAWACLossConfig,
    OfflineBCLossConfig,
    OfflineCQLLossConfig,
    OfflineDiscreteAWACLossConfig,
    OfflineDiscreteBCLossConfig,
    OfflineDiscreteCQLLossConfig,
    OfflineDiscreteIQLLossConfig,
    OfflineIQLLossConfig,
    OfflineReBRACLossConfig,
    OfflineTD3BCLossConfig,
    loss_config,
    loss_configs,
)
from torchrl_offline.configs.specs import register_spec_resolver
from torchrl_offline.configs.trainers import OfflineTrainerConfig, default_loss_components

__all__ = [
    "DATASET_CONFIGS",
    "LOSS_CONFIGS",
    "BehaviorVAEConfig",
    "CategoricalActorConfig",
    "CollectedDatasetConfig",
    "ConfigError",
    "DatasetConfig",
    "LoggedDatasetConfig",
    "MinariDatasetConfig",
    "OfflineAWACLossConfig",
    "OfflineBCLossConfig",
    "OfflineCQLLossConfig",
    "OfflineDiscreteAWACLossConfig",
    "OfflineDiscreteBCLossConfig",
    "OfflineDiscreteCQLLossConfig",
    "OfflineDiscreteIQLLossConfig",
    "OfflineIQLLossConfig",
    "OfflineReBRACLossConfig",
    "OfflineTD3BCLossConfig",
    "OfflineTrainerConfig",
    "TanhMeanGaussianActorConfig",
    "config_entries",
    "default_loss_components",
    "loss_config",
    "loss_configs",
    "register_configs",
]


def config_entries() -> list[tuple[str, str, type]]:
    """Our ``(group, name, config class)`` entries, in storing order."""
    entries = [("loss", f"offline_{name}", node) for name, node in loss_configs().items()]
    for name, node in DATASET_CONFIGS.items():
        entries.append(("dataset", name, node))
        entries.append(("replay_buffer", f"offline_{name}", node))
    entries.append(("trainer", "offline", OfflineTrainerConfig))
    entries.append(("model", "offline_tanh_mean_gaussian", TanhMeanGaussianActorConfig))
    entries.append(("model", "offline_categorical", CategoricalActorConfig))
    entries.append(("model", "offline_behavior_vae", BehaviorVAEConfig))
    return entries


def _stored_target(cs: ConfigStore, group: str, name: str) -> str | None:
    node = cs.repo.get(group, {}).get(f"{name}.yaml")
    if node is None:
        return None
    return str(node.node.get("_target_"))


def register_configs(cs: ConfigStore | None = None) -> ConfigStore:
    """Stores our configs in ``cs`` (the global ``ConfigStore`` by default).

    With the global store, TorchRL's own configs are registered first (importing
    ``torchrl.trainers.algorithms.configs`` does it), so the groups hold both. Also
    registers the ``offline_spec`` resolver (:mod:`torchrl_offline.configs.specs`:
    network sizes and action bounds read from the dataset). Calling again is harmless.

    Args:
        cs: the store to fill; ``ConfigStore.instance()`` when ``None``.

    Returns:
        The store.

    Raises:
        ConfigError: a ``(group, name)`` we use already holds another project's config.

    Examples:
        >>> from torchrl_offline.configs import register_configs
        >>> cs = register_configs()
        >>> sorted(cs.list("dataset"))
        ['collect.yaml', 'logged.yaml', 'minari.yaml']
    """
    if cs is None:
        import torchrl.trainers.algorithms.configs  # noqa: F401  (stores TorchRL's entries)

        cs = ConfigStore.instance()
    entries = config_entries()
    for group, name, node in entries:
        stored = _stored_target(cs, group, name)
        if stored is not None and stored != node._target_:
            raise ConfigError(
                f"The config store already holds {group}/{name} with _target_ {stored!r}; "
                f"torchrl_offline's {node.__name__} would replace it"
            )
    for group, name, node in entries:
        cs.store(group=group, name=name, node=node, provider="torchrl_offline")
    register_spec_resolver()
    return cs
