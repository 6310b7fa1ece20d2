"""The pieces every actor-critic loss shares, written once.

:class:`ActorCriticLoss` is a :class:`~torchrl.objectives.LossModule` for a loss with an
actor and a batched ensemble of critics ``Q(s, a)`` (``qvalue_network``, stacked
parameters, target copies). It holds what is not an algorithm's own math:

* the tensordict keys (``_AcceptedKeys``), the keys a batch must hold
  (:attr:`in_keys`: the data action, the reward/done/terminated entries under
  ``"next"``, the actor's and the critics' observations at ``s`` and ``s'``), and the
  value estimator with its keys (:meth:`make_value_estimator`);
* the critic inputs for an action (:meth:`_q_inputs`), all critics in one call
  (:meth:`_critics`), with cached leaf views of their parameters
  (:meth:`_critic_params`, :attr:`_cache_q_detached`) dropped on ``.to()`` and
  ``load_state_dict``;
* the critics' regression on a target (:meth:`_critic_regression`) and the packing of
  the output, the priority and the update counter (:meth:`_pack`).

The TD target itself is :func:`~torchrl_offline.objectives.common.td_target`.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import ClassVar

import torch
from tensordict import TensorDict, TensorDictBase, TensorDictParams
from tensordict.nn import TensorDictModule
from tensordict.utils import NestedKey, unravel_key
from torch import Tensor, nn
from torchrl.objectives.common import LossModule
from torchrl.objectives.utils import ValueEstimators, distance_loss

from torchrl_offline.objectives._checks import OfflineLossError, count_update
from torchrl_offline.objectives._functional import _mlp_plan, ensemble_apply, module_apply
from torchrl_offline.objectives._keys import LazyInKeys
from torchrl_offline.objectives._targets import make_loss_value_estimator, next_key

__all__ = ["ActorCriticLoss"]


def _leaf_view(module: nn.Module, params: TensorDictBase):
    """``{key: tensor}`` of ``params`` when ``module`` is a plain MLP, else ``params``.

    The functional MLP path reads one tensor per layer with ``.get``; a dict of the
    (in-place updated) leaves spares a nested TensorDict lookup per layer and call.
    Views are cached by the loss and dropped on ``.to()`` / ``load_state_dict``.
    """
    if _mlp_plan(module) is None:
        return params
    return dict(params.items(True, True))


class ActorCriticLoss(LazyInKeys, LossModule):
    """Base of the losses with an actor and a batched ensemble of ``Q(s, a)`` critics.

    Subclasses call ``convert_to_functional`` for ``actor_network`` and
    ``qvalue_network`` (with ``num_qvalue_nets`` stacked copies), set
    ``deactivate_vmap``, ``loss_function`` and ``check_inputs``, and write their own
    loss terms with the helpers below. ``_estimator_value`` names the ``tensor_keys``
    entry the value estimator reads as its ``value``.

    Examples:
        >>> from torchrl_offline.objectives._actor_critic import ActorCriticLoss
        >>> from torchrl_offline.objectives import AWACLoss, CQLLoss, IQLLoss, TD3BCLoss
        >>> all(issubclass(c, ActorCriticLoss) for c in (AWACLoss, CQLLoss, IQLLoss, TD3BCLoss))
        True
    """

    @dataclass
    class _AcceptedKeys:
        """Tensordict keys read or written by the loss, configurable with ``set_keys``.

        Attributes:
            action (NestedKey): the action. Defaults to ``"action"``.
            state_action_value (NestedKey): the critic's output. Defaults to
                ``"state_action_value"``.
            priority (NestedKey): where the TD error is written for prioritized
                replay. Defaults to ``"td_error"``.
            reward (NestedKey): the reward, read under ``"next"``. Defaults to
                ``"reward"``.
            done (NestedKey): the done flag, read under ``"next"``. Defaults to
                ``"done"``.
            terminated (NestedKey): the termination flag, read under ``"next"``.
                Defaults to ``"terminated"``.
            priority_weight (NestedKey): importance weights of a prioritized sampler.
                Defaults to ``"priority_weight"``.
        """

        action: NestedKey = "action"
        state_action_value: NestedKey = "state_action_value"
        priority: NestedKey = "td_error"
        reward: NestedKey = "reward"
        done: NestedKey = "done"
        terminated: NestedKey = "terminated"
        priority_weight: NestedKey = "priority_weight"

    tensor_keys: _AcceptedKeys
    default_keys = _AcceptedKeys
    default_value_estimator = ValueEstimators.TD0
    SUPPORTED_VALUE_ESTIMATORS = (
        ValueEstimators.TD0,
        ValueEstimators.TD1,
        ValueEstimators.TDLambda,
    )
    _estimator_value: ClassVar[str] = "state_action_value"

    actor_network: TensorDictModule
    qvalue_network: TensorDictModule
    actor_network_params: TensorDictParams
    qvalue_network_params: TensorDictParams
    target_actor_network_params: TensorDictParams
    target_qvalue_network_params: TensorDictParams
    deactivate_vmap: bool
    loss_function: str

    # ------------------------------------------------------------------ keys & estimator
    def _estimator_keys(self) -> dict[str, NestedKey]:
        keys = self.tensor_keys
        return {
            "value": getattr(keys, self._estimator_value),
            "reward": keys.reward,
            "done": keys.done,
            "terminated": keys.terminated,
        }

    def _forward_value_estimator_keys(self, **kwargs) -> None:
        if self._value_estimator is not None:
            self._value_estimator.set_keys(**self._estimator_keys())
        self._in_keys = None

    def make_value_estimator(self, value_type: ValueEstimators = None, **hyperparams):
        """Builds the estimator of the critics' target from the next states' value.

        Args:
            value_type (ValueEstimators, optional): ``TD0`` (default, the one-step
                target), ``TD1`` or ``TDLambda`` (over the time dimension of trajectory
                batches), or a ``ValueEstimatorBase`` subclass or instance.

        Keyword Args:
            gamma (float): the discount factor.
        """
        return make_loss_value_estimator(
            self,
            value_type,
            tensor_keys=self._estimator_keys(),
            value_network=None,
            **hyperparams,
        )

    def _critic_obs_keys(self) -> list[NestedKey]:
        """The critics' inputs other than the action (read at ``s`` and ``s'``)."""
        action = unravel_key(self.tensor_keys.action)
        return [k for k in self.qvalue_network.in_keys if unravel_key(k) != action]

    def _set_in_keys(self) -> None:
        keys = [
            self.tensor_keys.action,
            next_key(self.tensor_keys.reward),
            next_key(self.tensor_keys.done),
            next_key(self.tensor_keys.terminated),
            *self.actor_network.in_keys,
            *[next_key(key) for key in self.actor_network.in_keys],
            *self.qvalue_network.in_keys,
            *[next_key(key) for key in self._critic_obs_keys()],
        ]
        self._in_keys = list(dict.fromkeys(unravel_key(k) for k in keys))

    # ------------------------------------------------------------------ critic calls
    def _critic_params(self, name: str) -> TensorDictBase:
        """Stacked critic parameters ``name`` (a cached leaf view for plain MLP critics)."""
        if self.deactivate_vmap:
            return getattr(self, name)
        cache_name = "_cache_critic_" + name
        cached = self.__dict__.get(cache_name)
        if cached is None:
            cached = self.__dict__[cache_name] = _leaf_view(
                self.qvalue_network, getattr(self, name)
            )
        return cached

    @property
    def _cache_q_detached(self) -> TensorDictBase:
        """The critics' parameters without gradient (cached, like :meth:`_critic_params`)."""
        cached = self.__dict__.get("_cache_q_detached_val")
        if cached is None:
            params = self.qvalue_network_params.data
            if not self.deactivate_vmap:
                params = _leaf_view(self.qvalue_network, params)
            cached = self.__dict__["_cache_q_detached_val"] = params
        return cached

    @property
    def _cache_q1_detached(self) -> TensorDictBase:
        """The first critic's parameters without gradient (cached, like
        :meth:`_critic_params`): what a deterministic actor's loss and a greedy policy
        query."""
        cached = self.__dict__.get("_cache_q1_detached_val")
        if cached is None:
            params = self.qvalue_network_params.data
            cached = _leaf_view(self.qvalue_network, params[0] if params.ndim else params)
            self.__dict__["_cache_q1_detached_val"] = cached
        return cached

    def _drop_caches(self, *args) -> None:
        self._erase_cache()

    def _critics(
        self, params: TensorDictBase, inputs: Sequence[Tensor], *, stacked_inputs: bool = False
    ) -> Tensor:
        """All critics at once: ``[E, *batch, *out]`` with a trailing singleton dropped.

        With ``stacked_inputs`` every input is ``[E, *batch, in]`` and critic ``i`` reads
        slice ``i`` (:func:`~torchrl_offline.objectives.common.ensemble_apply`)."""
        key = self.tensor_keys.state_action_value
        if self.deactivate_vmap:
            out = torch.stack(
                [
                    module_apply(
                        self.qvalue_network,
                        params[i],
                        *[x[i] for x in inputs] if stacked_inputs else inputs,
                        out_key=key,
                    )
                    for i in range(len(params))
                ]
            )
        else:
            out = ensemble_apply(
                self.qvalue_network,
                params,
                *inputs,
                out_key=key,
                randomness=self.vmap_randomness,
                stacked_inputs=stacked_inputs,
            )
        return out.squeeze(-1)

    def _q_inputs(self, tensordict: TensorDictBase, action: Tensor, *, nxt: bool) -> list[Tensor]:
        """The critics' inputs: ``action`` and the observations at ``s`` (or ``s'``)."""
        return self._inputs(self.qvalue_network, tensordict, action, nxt=nxt)

    def _inputs(
        self, module: nn.Module, tensordict: TensorDictBase, action: Tensor, *, nxt: bool
    ) -> list[Tensor]:
        """``module``'s inputs in ``in_keys`` order: ``action`` for the action key, the
        batch's entries at ``s`` (or ``s'``) for the others."""
        action_key = unravel_key(self.tensor_keys.action)
        inputs = []
        for key in module.in_keys:
            if unravel_key(key) == action_key:
                inputs.append(action)
            else:
                inputs.append(tensordict.get(next_key(key) if nxt else key))
        return inputs

    def _check_action(self, action: Tensor, data_action: Tensor, verb: str = "outputs") -> None:
        if action.shape != data_action.shape:
            raise OfflineLossError(
                f"actor_network {verb} actions of shape {tuple(action.shape)} but the batch "
                f"key {self.tensor_keys.action!r} holds shape {tuple(data_action.shape)}"
            )

    # ------------------------------------------------------------------ losses & output
    def _critic_regression(
        self,
        pred: Tensor,
        target_value: Tensor,
        next_value: Tensor,
        tensordict: TensorDictBase,
        weights: Tensor | None,
    ) -> tuple[Tensor, dict[str, Tensor]]:
        """Every critic's ``loss_function`` regression on the target, summed over critics.

        Args:
            pred (Tensor): the critics' values of the data actions, ``[E, *batch]``.
            target_value (Tensor): the target, ``[*batch]``.
            next_value (Tensor): the next states' value the target was built from.
            tensordict (TensorDictBase): the batch (for its masks).
            weights (Tensor, optional): prioritized-replay weights.

        Returns:
            ``(loss_qvalue, metadata)`` with ``"td_error"`` (``[E, *batch]``) and the
            detached ``"pred_value"``, ``"next_state_value"`` and ``"target_value"``.
        """
        target_value = target_value.to(pred.dtype)
        loss = distance_loss(pred, target_value.expand_as(pred), loss_function=self.loss_function)
        loss = self._reduce_loss(loss.sum(0), tensordict=tensordict, weights=weights)
        metadata = {
            "td_error": (pred.detach() - target_value).pow(2),
            "pred_value": pred.detach(),
            "next_state_value": next_value,
            "target_value": target_value,
        }
        return loss, metadata

    def _pack(
        self,
        tensordict: TensorDictBase,
        losses: dict[str, Tensor],
        metadata: dict[str, Tensor],
        counter: str,
    ) -> TensorDict:
        """The output: the losses and diagnostics, with the TD error (max over critics)
        written to the ``priority`` key of ``tensordict``, and the update ``counter``
        stepped (which checks batch and losses for NaN/inf)."""
        metadata = dict(metadata)
        tensordict.set(self.tensor_keys.priority, metadata.pop("td_error").max(0).values)
        out = TensorDict({**losses, **metadata})
        count_update(self, counter, out, batch=tensordict)
        return out
