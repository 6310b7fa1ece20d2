"""Helpers shared by the config makers: the error type and value conversions."""

from __future__ import annotations

import functools
from collections.abc import Mapping, Sequence
from typing import Any

import torch
from omegaconf import DictConfig, ListConfig, OmegaConf
from torch import nn
from torchrl.data import Bounded, TensorSpec

__all__ = ["ConfigError"]


class ConfigError(ValueError):
    """A config value that cannot be turned into the object it describes."""


def plain(value: Any) -> Any:
    """``value`` with OmegaConf containers turned into plain dicts and lists."""
    if isinstance(value, (DictConfig, ListConfig)):
        return OmegaConf.to_container(value, resolve=True)
    return value


def as_module(value: Any, field: str, *, required: bool = True) -> nn.Module | None:
    """A network given as a module, a factory (``_partial_`` config) or a config node."""
    if isinstance(value, nn.Module):
        return value
    if value is None:
        if required:
            raise ConfigError(
                f"{field} is not set: point it at a network or model config, "
                f"e.g. {field}: ${{models.policy}}"
            )
        return None
    if isinstance(value, DictConfig) and "_target_" in value:
        from hydra.utils import instantiate

        return as_module(instantiate(value), field, required=required)
    if callable(value) and isinstance(value, functools.partial):
        return as_module(value(), field, required=required)
    raise ConfigError(
        f"{field} must be a torch module, a module factory or a config with a _target_, "
        f"got {type(value).__name__}"
    )


def as_action_spec(value: Any, field: str) -> TensorSpec | None:
    """An action spec given as a ``TensorSpec`` or as ``{low, high, shape}`` (a ``Bounded``)."""
    value = plain(value)
    if value is None or isinstance(value, TensorSpec):
        return value
    if isinstance(value, Mapping):
        unknown = sorted(set(value) - {"low", "high", "shape"})
        if unknown or "low" not in value or "high" not in value:
            raise ConfigError(
                f"{field} must be a TensorSpec or a mapping with 'low', 'high' and optionally "
                f"'shape' (a Bounded spec), got keys {sorted(value)}"
            )
        low = torch.as_tensor(value["low"], dtype=torch.float32)
        high = torch.as_tensor(value["high"], dtype=torch.float32)
        shape = value.get("shape")
        if shape is None:
            shape = torch.broadcast_shapes(low.shape, high.shape) or (1,)
        return Bounded(low, high, shape=tuple(int(s) for s in shape))
    raise ConfigError(
        f"{field} must be a TensorSpec or a mapping {{low, high, shape}}, got {value!r}"
    )


def as_dtype(value: Any, field: str) -> torch.dtype:
    """A floating dtype given as a ``torch.dtype`` or a name such as ``"float32"``."""
    if isinstance(value, torch.dtype):
        return value
    dtype = getattr(torch, str(value).removeprefix("torch."), None)
    if not isinstance(dtype, torch.dtype) or not dtype.is_floating_point:
        raise ConfigError(
            f"{field} must name a floating torch dtype (float16, bfloat16, float32, float64), "
            f"got {value!r}"
        )
    return dtype


def as_tuple(value: Any) -> Any:
    """Lists (including ``ListConfig``) as tuples; anything else unchanged."""
    value = plain(value)
    if isinstance(value, Sequence) and not isinstance(value, str):
        return tuple(value)
    return value
