"""The log-likelihood of logged actions under a stochastic actor, written once.

Advantage-weighted losses (AWAC, AWR) fit the actor by weighted maximum likelihood of
the data's actions. :class:`LikelihoodActor` gives them the actor's distribution at a
batch (:meth:`~LikelihoodActor._dist`, with a fast path for a
``ProbabilisticActor(TensorDictModule)``) and the log-likelihood of the logged actions
(:meth:`~LikelihoodActor._log_prob`, continuous or categorical).
"""

from __future__ import annotations

import torch
from tensordict import TensorDictBase
from tensordict.nn import (
    ProbabilisticTensorDictModule,
    ProbabilisticTensorDictSequential,
    TensorDictModule,
)
from tensordict.utils import unravel_key
from torch import Tensor

from torchrl_offline.objectives._checks import OfflineLossError
from torchrl_offline.objectives._tanh_normal import TanhNormalSamples, fast_tanh_normal_bounds

__all__ = ["LikelihoodActor"]


class LikelihoodActor:
    """Mixin of a loss with a stochastic ``actor_network`` fitted by likelihood.

    The loss sets ``self.actor_network`` (``convert_to_functional``) and
    ``tensor_keys.action``; a discrete loss sets ``self.action_space`` to
    ``"categorical"`` or ``"one_hot"``.

    Examples:
        >>> from torchrl_offline.objectives._likelihood import LikelihoodActor
        >>> from torchrl_offline.objectives import AWACLoss
        >>> issubclass(AWACLoss, LikelihoodActor)
        True
    """

    def _split_actor(self):
        """``(params_module, dist_module, tanh_bounds)`` for ``ProbabilisticActor(TDModule)``.

        The loss then calls the parameter network on tensors and builds the actor's own
        distribution class from its outputs: the same distribution as ``get_dist``
        without the tensordict round trip (for TorchRL's default ``TanhNormal``, the
        same sampling and log-density without the distribution objects). Other actors
        go through ``get_dist``.
        """
        cached = self.__dict__.get("_split_actor_val", False)
        if cached is not False:
            return cached
        found = None
        modules = getattr(self.actor_network, "module", None)
        if (
            isinstance(self.actor_network, ProbabilisticTensorDictSequential)
            and isinstance(modules, torch.nn.ModuleList)
            and len(modules) == 2
            and type(modules[0]) is TensorDictModule
            and isinstance(modules[1], ProbabilisticTensorDictModule)
            and not getattr(self.actor_network, "return_composite", False)
        ):
            params_module, dist_module = modules
            produced = {unravel_key(k) for k in params_module.out_keys}
            if all(unravel_key(k) in produced for k in dist_module.in_keys):
                found = (params_module, dist_module, fast_tanh_normal_bounds(dist_module))
        self.__dict__["_split_actor_val"] = found
        return found

    def _dist(self, tensordict: TensorDictBase):
        """The actor's action distribution at the batch's observations."""
        split = self._split_actor()
        if split is None:
            td = tensordict.select(*self.actor_network.in_keys, strict=False)
            return self.actor_network.get_dist(td)
        params_module, dist_module, tanh_bounds = split
        outputs = params_module.module(*[tensordict.get(k) for k in params_module.in_keys])
        if isinstance(outputs, Tensor):
            outputs = (outputs,)
        by_key = {unravel_key(k): v for k, v in zip(params_module.out_keys, outputs)}
        kwargs = {}
        for dist_key, td_key in zip(dist_module.dist_keys, dist_module.in_keys):
            kwargs[dist_key[-1] if isinstance(dist_key, tuple) else dist_key] = by_key[
                unravel_key(td_key)
            ]
        if tanh_bounds is not None and set(kwargs) == {"loc", "scale"}:
            return TanhNormalSamples(kwargs["loc"], kwargs["scale"], *tanh_bounds)
        return dist_module.distribution_class(**kwargs, **dict(dist_module.distribution_kwargs))

    @staticmethod
    def _sum_event(log_prob: Tensor, batch_shape: torch.Size) -> Tensor:
        # distributions without an event dim give one log-prob per action dimension
        if log_prob.shape != batch_shape:
            log_prob = log_prob.reshape(*batch_shape, -1).sum(-1)
        return log_prob

    def _log_prob(self, tensordict: TensorDictBase, dist) -> Tensor:
        """``log pi(a | s)`` of the batch's actions, one value per sample."""
        action = tensordict.get(self.tensor_keys.action)
        if getattr(self, "action_space", None) is not None:  # categorical actor
            if self.action_space == "categorical" and action.ndim > tensordict.ndim:
                action = action.squeeze(-1)
            return self._sum_event(dist.log_prob(action), tensordict.batch_size)
        batch_shape = getattr(dist, "batch_shape", None)
        event_shape = getattr(dist, "event_shape", None)
        if batch_shape is not None and event_shape is not None:
            expected = batch_shape + event_shape
            if action.shape != expected:
                if action.shape[-1:] == (1,) and action.shape[:-1] == expected:
                    action = action.squeeze(-1)  # categorical index with a trailing dim
                else:
                    raise OfflineLossError(
                        f"actor_network's distribution has shape {tuple(expected)} but the "
                        f"batch key {self.tensor_keys.action!r} holds shape {tuple(action.shape)}"
                    )
        return self._sum_event(dist.log_prob(action), tensordict.batch_size)
