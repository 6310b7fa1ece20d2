"""Network sizes and action bounds read from the dataset, for Hydra configs.

TorchRL's network and model configs (``network: mlp``, ``model: tanh_normal``) need
numbers: ``in_features``, ``out_features``, ``low``, ``high``. Written by hand they tie
a config to one environment. :func:`register_spec_resolver` (called by
:func:`~torchrl_offline.configs.register_configs`) registers the OmegaConf resolver
``offline_spec``, which reads them from the dataset node of the same config::

    networks:
      policy:
        in_features: ${offline_spec:${dataset},observation_dim}
        out_features: ${offline_spec:${dataset},loc_scale_dim}
    models:
      policy:
        low: ${offline_spec:${dataset},action_low}

The dataset node is instantiated once per process and config (a collected dataset is
collected, or reused when already on disk; a log is converted, or its cached conversion
reused), and its specs come from
:func:`~torchrl_offline.trainers.algorithms.specs_from_dataset`: the gymnasium spaces
stored in the dataset's metadata, else the stored data.

Fields (:data:`SPEC_FIELDS`):

* ``observation_dim``: the flat observation size;
* ``action_dim``: the action size (continuous), or the number of actions (discrete);
* ``num_actions``: the number of actions of a discrete action space;
* ``observation_action_dim``: ``observation_dim + action_dim``, the input of ``Q(s, a)``;
* ``loc_scale_dim``: ``2 * action_dim``, the output of a Gaussian actor's network;
* ``action_low`` / ``action_high``: the action bounds, a number when every dimension
  shares it, else a list;
* ``action_spec``: ``{low, high, shape}``, the form the loss configs' ``action_spec``
  takes (BCQ, BEAR, TD3+BC, ...).

Examples:
    >>> import tempfile
    >>> import numpy as np
    >>> import pandas as pd
    >>> from omegaconf import OmegaConf
    >>> from torchrl_offline.configs.specs import register_spec_resolver
    >>> register_spec_resolver()
    >>> rng = np.random.default_rng(0)
    >>> log = tempfile.mkdtemp() + "/log.parquet"
    >>> pd.DataFrame({**{f"observation_{i}": rng.normal(size=8) for i in range(3)},
    ...               "action_0": rng.uniform(-1, 1, 8), "reward": rng.normal(size=8),
    ...               "terminated": [False] * 7 + [True]}).to_parquet(log)
    >>> cfg = OmegaConf.create({
    ...     "dataset": {"_target_": "torchrl_offline.configs.data._make_logged_dataset",
    ...                 "source": log, "path": tempfile.mkdtemp() + "/rb", "dtype": "float32",
    ...                 "ignore": [], "drop_incomplete": True},
    ...     "qvalue": {"in_features": "${offline_spec:${dataset},observation_action_dim}"}})
    >>> cfg.qvalue.in_features
    4
"""

from __future__ import annotations

from typing import Any

from omegaconf import DictConfig, OmegaConf

__all__ = ["SPEC_FIELDS", "SpecResolverError", "dataset_spec_field", "register_spec_resolver"]

#: The name of the resolver in configs: ``${offline_spec:${dataset},FIELD}``.
RESOLVER = "offline_spec"
#: The fields ``offline_spec`` answers.
SPEC_FIELDS = (
    "observation_dim",
    "action_dim",
    "num_actions",
    "observation_action_dim",
    "loc_scale_dim",
    "action_low",
    "action_high",
    "action_spec",
)

_SPECS: dict[str, tuple[Any, Any]] = {}


class SpecResolverError(ValueError):
    """``offline_spec`` got something other than a dataset node and a known field."""


def register_spec_resolver() -> None:
    """Registers the ``offline_spec`` OmegaConf resolver (once; later calls do nothing)."""
    if not OmegaConf.has_resolver(RESOLVER):
        OmegaConf.register_new_resolver(RESOLVER, dataset_spec_field)


def dataset_spec_field(dataset: Any, field: str) -> Any:
    """The value of ``field`` (one of :data:`SPEC_FIELDS`) for the dataset config
    ``dataset`` (a node with a ``_target_``, as in the ``dataset`` group)."""
    if field not in SPEC_FIELDS:
        raise SpecResolverError(
            f"${{{RESOLVER}:...}}: unknown field {field!r}; known: {', '.join(SPEC_FIELDS)}"
        )
    obs_spec, act_spec = _specs(dataset)
    from torchrl_offline.objectives.networks import is_discrete

    discrete = is_discrete(act_spec)
    obs_dim = int(obs_spec.shape[-1])
    if discrete:
        act_dim = int(getattr(act_spec, "n", None) or act_spec.space.n)
    else:
        act_dim = int(act_spec.shape[-1])
    if field == "observation_dim":
        return obs_dim
    if field in ("action_dim", "num_actions"):
        if field == "num_actions" and not discrete:
            raise SpecResolverError(
                f"${{{RESOLVER}:...,num_actions}}: the dataset's actions are continuous "
                f"(shape {tuple(act_spec.shape)}); use action_dim"
            )
        return act_dim
    if field == "observation_action_dim":
        return obs_dim + act_dim
    if field == "loc_scale_dim":
        return 2 * act_dim
    if discrete:
        raise SpecResolverError(
            f"${{{RESOLVER}:...,{field}}}: the dataset's actions are discrete ({act_dim} "
            "actions) and have no bounds"
        )
    if field == "action_spec":
        return {
            "low": _bound(act_spec.space.low),
            "high": _bound(act_spec.space.high),
            "shape": [int(s) for s in act_spec.shape],
        }
    return _bound(act_spec.space.low if field == "action_low" else act_spec.space.high)


def _bound(bound: Any) -> float | list[float]:
    values = [float(v) for v in bound.reshape(-1).tolist()]
    return values[0] if len(set(values)) == 1 else values


def _specs(dataset: Any) -> tuple[Any, Any]:
    if not isinstance(dataset, DictConfig) or "_target_" not in dataset:
        raise SpecResolverError(
            f"${{{RESOLVER}:DATASET,FIELD}} takes the dataset node (e.g. ${{dataset}}), "
            f"got {type(dataset).__name__}"
        )
    key = OmegaConf.to_yaml(dataset, resolve=True)
    if key not in _SPECS:
        from hydra.utils import instantiate

        from torchrl_offline.trainers.algorithms import specs_from_dataset

        _SPECS[key] = specs_from_dataset(instantiate(dataset))
    return _SPECS[key]
