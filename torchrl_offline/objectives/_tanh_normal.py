"""The tanh-squashed Gaussian policy's density, without TorchRL's distribution objects.

* :func:`tanh_normal_log_prob`, the log-likelihood of a (logged) action straight from
  a plain-MLP ``TanhNormal`` actor's parameters (IQL, BC);
* :class:`TanhNormalSamples`, the same distribution built from ``loc``/``scale``
  tensors, with ``sample`` and ``log_prob`` (AWAC), and
  :func:`fast_tanh_normal_bounds`, which says when an actor can use it.
"""

from __future__ import annotations

import contextlib
import math

import torch
from tensordict import TensorDictBase
from tensordict.utils import NestedKey
from torch import Tensor

from torchrl_offline.objectives._checks import OfflineLossError, _key_str
from torchrl_offline.objectives._functional import _actor_plan, _plan_apply_single

__all__ = ["TanhNormalSamples", "fast_tanh_normal_bounds", "tanh_normal_log_prob"]


_TANH_NORMAL_KWARGS = {"low", "high", "tanh_loc", "upscale", "event_dims", "safe_tanh"}


def tanh_normal_log_prob(
    actor,
    params: TensorDictBase,
    tensordict: TensorDictBase,
    action: Tensor,
    *,
    action_eps: float = 0.0,
    action_key: NestedKey = "action",
) -> Tensor | None:
    """Log-likelihood of ``action`` under a plain-MLP ``TanhNormal`` actor, or ``None``.

    For the actor shape of TorchRL's offline examples (one plain MLP with a
    ``NormalParamExtractor`` feeding :class:`~torchrl.modules.TanhNormal` with
    ``event_dims`` 1) the density is computed directly, ``sum_d [log N(atanh(x_d);
    loc_d, scale_d) - log(1 - x_d^2) - log((high_d - low_d) / 2)]`` with ``x`` the
    action mapped to ``[-1, 1]`` and clamped to ``[-1 + eps, 1 - eps]``, without building
    the distribution object. Returns ``None`` for any other actor (the caller then uses
    :func:`actor_distribution`).

    Raises:
        OfflineLossError: if ``action``'s shape does not match the actor's output.

    Examples:
        >>> import torch
        >>> from tensordict import TensorDict
        >>> from tensordict.nn import NormalParamExtractor, TensorDictModule
        >>> from torchrl.modules import MLP, ProbabilisticActor, TanhNormal
        >>> from torchrl_offline.objectives.common import tanh_normal_log_prob
        >>> actor = ProbabilisticActor(
        ...     TensorDictModule(torch.nn.Sequential(MLP(in_features=3, out_features=2,
        ...                      num_cells=[8]), NormalParamExtractor()),
        ...                      in_keys=["observation"], out_keys=["loc", "scale"]),
        ...     in_keys=["loc", "scale"], distribution_class=TanhNormal)
        >>> td = TensorDict({"observation": torch.randn(5, 3)}, [5])
        >>> params = TensorDict.from_module(actor)
        >>> lp = tanh_normal_log_prob(actor, params, td, torch.zeros(5, 1))
        >>> torch.allclose(lp, actor.get_dist(td).log_prob(torch.zeros(5, 1)))
        True
    """
    from torchrl.modules import TanhNormal

    found = _actor_plan(actor)
    if found is None:
        return None
    plan, in_key, out_keys, prob = found
    kwargs = dict(prob.distribution_kwargs)
    if prob.distribution_class is not TanhNormal or set(kwargs) - _TANH_NORMAL_KWARGS:
        return None
    if kwargs.get("event_dims", 1) != 1 or sorted(prob.dist_keys) != ["loc", "scale"]:
        return None
    out = _plan_apply_single(plan, params, tensordict.get(in_key))
    if not isinstance(out, tuple) or len(out) != 2:
        return None
    named = dict(zip(prob.dist_keys, (dict(zip(out_keys, out))[k] for k in prob.in_keys)))
    loc, scale = named["loc"], named["scale"]
    if tuple(action.shape) != tuple(loc.shape):
        raise OfflineLossError(
            f"key {_key_str(action_key)} has shape {tuple(action.shape)} but the actor's "
            f"distribution is over shape {tuple(loc.shape)}: the action spec or the actor's "
            "output size does not match the data"
        )
    if kwargs.get("tanh_loc", False):
        upscale = kwargs.get("upscale", 5.0)
        loc = upscale * torch.tanh(loc / upscale)
    low = torch.as_tensor(kwargs.get("low", -1.0), dtype=loc.dtype, device=loc.device)
    high = torch.as_tensor(kwargs.get("high", 1.0), dtype=loc.dtype, device=loc.device)
    eps = max(float(action_eps), torch.finfo(loc.dtype).eps)
    with contextlib.nullcontext() if action.requires_grad else torch.no_grad():
        # What depends on the action only (no graph for a logged action): the pre-tanh
        # action and the log-Jacobian of the squashing and affine maps, summed over dims.
        half = (high - low) / 2
        x = ((action - (high + low) / 2) / half).clamp(-1.0 + eps, 1.0 - eps)
        pre = torch.atanh(x)
        log_jacobian = (torch.log1p(-x.square()) + torch.log(half).expand_as(x)).sum(-1)
    z = (pre - loc) / scale
    log_normal = (z.square() * -0.5 - scale.log()).sum(-1)
    return log_normal - (log_jacobian + 0.5 * math.log(2 * math.pi) * loc.shape[-1])


_LOG_SQRT_2PI = math.log(math.sqrt(2 * math.pi))
_LOG_2 = math.log(2.0)


class TanhNormalSamples:
    """``sample`` / ``log_prob`` of TorchRL's ``TanhNormal`` (safe tanh, one event dim).

    The distribution object of an actor whose ``TanhNormal`` is built from tensors
    (AWAC's sampled policy actions and log-likelihoods). :func:`tanh_normal_log_prob`
    is the density of the same distribution for a logged action, taken straight from
    a plain-MLP actor's parameters: the two keep their own (equal up to float rounding)
    forms of the log-Jacobian, ``log(1 - x^2)`` there and TorchRL's
    ``2 (log 2 - y - softplus(-2 y))`` here, so that each loss's numbers stay as they
    were.

    The same computation as :class:`torchrl.modules.TanhNormal` with
    ``safe_tanh=True, tanh_loc=False`` (a Normal pushed through a tanh clamped at
    ``1 - resolution`` and the affine map onto ``[low, high]``), without building the
    transformed-distribution objects on every call; ``test_awac.py`` checks it against
    TorchRL's class.

    Args:
        loc (Tensor): the Gaussian's mean, ``[*batch, d]``.
        scale (Tensor): its standard deviation, shaped like ``loc``.
        low, high (float or Tensor): the action box.

    Examples:
        >>> import torch
        >>> from torchrl.modules import TanhNormal
        >>> from torchrl_offline.objectives._tanh_normal import TanhNormalSamples
        >>> loc, scale = torch.zeros(4, 2), torch.ones(4, 2)
        >>> ours = TanhNormalSamples(loc, scale, -2.0, 2.0)
        >>> ref = TanhNormal(loc, scale, low=-2.0, high=2.0, safe_tanh=True)
        >>> a = ours.sample()
        >>> torch.allclose(ours.log_prob(a), ref.log_prob(a), atol=1e-5)
        True
    """

    def __init__(self, loc: Tensor, scale: Tensor, low, high) -> None:
        self.loc, self.scale = loc, scale
        low = torch.as_tensor(low, dtype=loc.dtype, device=loc.device)
        high = torch.as_tensor(high, dtype=loc.dtype, device=loc.device)
        self.mid, self.half = (high + low) / 2, (high - low) / 2
        self.lim = 1.0 - torch.finfo(loc.dtype).resolution
        self.batch_shape, self.event_shape = loc.shape[:-1], loc.shape[-1:]

    def sample(self) -> Tensor:
        with torch.no_grad():
            x = torch.normal(self.loc, self.scale).tanh().clamp(-self.lim, self.lim)
            return self.mid + self.half * x

    def log_prob(self, value: Tensor) -> Tensor:
        y = ((value - self.mid) / self.half).clamp(-self.lim, self.lim)
        x = y.atanh()
        log_det = 2.0 * (_LOG_2 - x - torch.nn.functional.softplus(-2.0 * x))
        log_det = log_det + self.half.abs().log()
        normal = -((x - self.loc) ** 2) / (2 * self.scale**2) - self.scale.log() - _LOG_SQRT_2PI
        return (normal - log_det).sum(-1)


def fast_tanh_normal_bounds(dist_module) -> tuple | None:
    """``(low, high)`` if the actor's distribution can use :class:`TanhNormalSamples`.

    Args:
        dist_module (ProbabilisticTensorDictModule): the actor's distribution module.

    Returns:
        ``(low, high)`` for a ``TanhNormal`` with ``safe_tanh``, no ``tanh_loc`` and one
        event dim, else ``None``.
    """
    from torchrl.modules import TanhNormal

    if dist_module.distribution_class is not TanhNormal:
        return None
    kwargs = dict(dist_module.distribution_kwargs)
    if set(kwargs) - _TANH_NORMAL_KWARGS:
        return None
    if kwargs.get("tanh_loc", False) or not kwargs.get("safe_tanh", True):
        return None
    if kwargs.get("event_dims", 1) != 1:
        return None
    return kwargs.get("low", -1.0), kwargs.get("high", 1.0)
