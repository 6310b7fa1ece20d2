"""AWAC: Advantage-Weighted Actor-Critic (Nair, Gupta, Dalal & Levine, 2020).

TorchRL has no AWAC loss; these follow the shape of TorchRL's ``IQLLoss`` /
``CQLLoss`` (a ``ProbabilisticActor``, ``ValueOperator`` critics duplicated into a
batched ensemble with target copies, ``_AcceptedKeys``, ``set_keys``,
``make_value_estimator``, ``reduction``, ``td_error`` for prioritized replay).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from tensordict import TensorDict, TensorDictBase, TensorDictParams
from tensordict.nn import (
    ProbabilisticTensorDictModule,
    ProbabilisticTensorDictSequential,
    TensorDictModule,
    dispatch,
)
from tensordict.utils import NestedKey, unravel_key
from torch import Tensor
from torchrl.data.tensor_specs import TensorSpec
from torchrl.data.utils import _find_action_space
from torchrl.objectives.common import LossModule
from torchrl.objectives.utils import (
    ValueEstimators,
    distance_loss,
)

from torchrl_offline.objectives.common import (
    OfflineLossError,
    _mlp_plan,
    bootstrap_target,
    check_batch,
    count_update,
    ensemble_apply,
    make_loss_value_estimator,
    module_apply,
    next_key,
)
from torchrl_offline.objectives.gaussian_actor import advise_on_actor

__all__ = ["AWACLoss", "DiscreteAWACLoss"]


_LOG_SQRT_2PI = math.log(math.sqrt(2 * math.pi))
_LOG_2 = math.log(2.0)


class _TanhNormalSamples:
    """``sample`` / ``log_prob`` of TorchRL's ``TanhNormal`` (safe tanh, one event dim).

    The same computation as :class:`torchrl.modules.TanhNormal` with
    ``safe_tanh=True, tanh_loc=False`` (a Normal pushed through a tanh clamped at
    ``1 - resolution`` and the affine map onto ``[low, high]``), without building the
    transformed-distribution objects on every call; ``test_awac.py`` checks it against
    TorchRL's class.
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


def _fast_tanh_normal(dist_module) -> tuple | None:
    """``(low, high)`` if the actor's distribution can use :class:`_TanhNormalSamples`."""
    from torchrl.modules import TanhNormal

    if dist_module.distribution_class is not TanhNormal:
        return None
    kwargs = dict(dist_module.distribution_kwargs)
    if set(kwargs) - {"low", "high", "upscale", "tanh_loc", "safe_tanh", "event_dims"}:
        return None
    if kwargs.get("tanh_loc", False) or not kwargs.get("safe_tanh", True):
        return None
    if kwargs.get("event_dims", 1) != 1:
        return None
    return kwargs.get("low", -1.0), kwargs.get("high", 1.0)


class AWACLoss(LossModule):
    r"""AWAC loss for continuous actions (Nair et al., "AWAC: Accelerating Online
    Reinforcement Learning with Offline Datasets", 2020).

    The critics are learned by TD on the data with target networks and the next
    action drawn from the current policy; the actor by weighted likelihood of the
    data actions:

    .. math::

        L_Q = \sum_{j} \big(Q_j(s, a) - r - \gamma (1 - d) \min_k Q'_k(s', a')\big)^2,
        \quad a' \sim \pi(\cdot \mid s'),

        L_\pi = -\min\big(\exp(A(s, a) / \lambda),\ w_{\max}\big) \log \pi(a \mid s),
        \quad A(s, a) = \min_j Q_j(s, a) - \min_j Q_j(s, a_\pi),\ a_\pi \sim \pi(\cdot
        \mid s).

    :math:`V(s)` is estimated with one policy sample, as in the reference
    implementations (rlkit, CORL). The advantages use the current critics, detached.
    With ``normalize_weights=True`` the weights are divided by their batch mean
    (``N * softmax(A / lambda)`` over the batch, computed stably, as rlkit's
    ``normalize_over_batch``) before clipping.

    Defaults are CORL's D4RL settings: :math:`\lambda = 1/3`, weights clipped at
    100, twin critics, squared-error critic loss.

    Args:
        actor_network (ProbabilisticTensorDictSequential): the stochastic actor, e.g.
            the AWAC paper's Gaussian
            (:func:`~torchrl_offline.objectives.make_tanh_mean_gaussian_actor`). Its
            ``get_dist`` must give a distribution with ``log_prob`` and ``sample``. A
            :class:`~torchrl.modules.TanhNormal` actor works but fits logged actions
            on the bounds instead of the advantage (mixed Pendulum data: final return
            -822 against -131 with the Gaussian); it is flagged once, at construction,
            on the ``torchrl_offline`` logger.
        qvalue_network (TensorDictModule or list of TensorDictModule): :math:`Q(s, a)`
            writing ``"state_action_value"``; duplicated ``num_qvalue_nets`` times and
            evaluated as one batched computation.

    Keyword Args:
        num_qvalue_nets (int, optional): number of critics. Defaults to ``2``.
        loss_function (str, optional): critic regression, ``"l2"``, ``"l1"`` or
            ``"smooth_l1"``. Defaults to ``"l2"``.
        awac_lambda (float, optional): the temperature :math:`\lambda` (weights are
            ``exp(A / lambda)``). Defaults to ``1/3``.
        max_weight (float, optional): clip of the weights. Defaults to ``100.0``.
        normalize_weights (bool, optional): divide the weights by their batch mean.
            Defaults to ``False``.
        priority_key (str, optional): deprecated, use ``set_keys(priority=...)``.
        separate_losses (bool, optional): parameters shared by actor and critic get
            gradients from the actor loss only. Defaults to ``False``.
        reduction (str, optional): ``"none"``, ``"mean"`` or ``"sum"``. Defaults to
            ``"mean"``.
        deactivate_vmap (bool, optional): evaluate critics that are not plain MLPs in
            a Python loop instead of ``torch.vmap``. Defaults to ``False``.
        use_prioritized_weights (str or bool, optional): weight the losses by the
            ``priority_weight`` entry when present (``"auto"``). Defaults to ``"auto"``.
        check_inputs (bool, optional): check the batch for missing keys and NaN/inf
            and the losses for NaN/inf. The check reads one value back to the host per
            update (a device sync on GPU); ``False`` removes it. Defaults to ``True``.

    Examples:
        >>> import torch
        >>> from tensordict import TensorDict
        >>> from tensordict.nn import NormalParamExtractor, TensorDictModule
        >>> from torch import nn
        >>> from torchrl.data import Bounded
        >>> from torchrl.modules import MLP, ProbabilisticActor, TanhNormal, ValueOperator
        >>> from torchrl.objectives import SoftUpdate
        >>> from torchrl_offline.objectives.awac import AWACLoss
        >>> n_obs, n_act = 3, 2
        >>> spec = Bounded(-1.0, 1.0, (n_act,))
        >>> actor = ProbabilisticActor(
        ...     TensorDictModule(
        ...         nn.Sequential(MLP(in_features=n_obs, out_features=2 * n_act, num_cells=[16]),
        ...                       NormalParamExtractor()),
        ...         in_keys=["observation"], out_keys=["loc", "scale"]),
        ...     in_keys=["loc", "scale"], spec=spec, distribution_class=TanhNormal,
        ...     distribution_kwargs={"low": spec.space.low, "high": spec.space.high})
        >>> qvalue = ValueOperator(MLP(in_features=n_obs + n_act, out_features=1, num_cells=[16]),
        ...                        in_keys=["observation", "action"])
        >>> loss = AWACLoss(actor, qvalue)
        >>> _ = loss.make_value_estimator(gamma=0.99)
        >>> updater = SoftUpdate(loss, tau=0.005)
        >>> data = TensorDict({
        ...     "observation": torch.randn(8, n_obs), "action": spec.rand((8,)),
        ...     ("next", "observation"): torch.randn(8, n_obs),
        ...     ("next", "reward"): torch.randn(8, 1),
        ...     ("next", "done"): torch.zeros(8, 1, dtype=torch.bool),
        ...     ("next", "terminated"): torch.zeros(8, 1, dtype=torch.bool)}, [8])
        >>> out = loss(data)
        >>> (out["loss_actor"] + out["loss_qvalue"]).backward()
        >>> updater.step()
        >>> sorted(k for k in out.keys() if k.startswith("loss_"))
        ['loss_actor', 'loss_qvalue']
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
    out_keys = [
        "loss_actor",
        "loss_qvalue",
        "advantage",
        "weight",
        "log_prob",
        "pred_value",
        "next_state_value",
        "target_value",
    ]

    actor_network: TensorDictModule
    qvalue_network: TensorDictModule
    actor_network_params: TensorDictParams
    qvalue_network_params: TensorDictParams
    target_actor_network_params: TensorDictParams
    target_qvalue_network_params: TensorDictParams

    def __init__(
        self,
        actor_network: ProbabilisticTensorDictSequential,
        qvalue_network: TensorDictModule | list[TensorDictModule],
        *,
        num_qvalue_nets: int = 2,
        loss_function: str = "l2",
        awac_lambda: float = 1.0 / 3.0,
        max_weight: float = 100.0,
        normalize_weights: bool = False,
        priority_key: str | None = None,
        separate_losses: bool = False,
        reduction: str | None = None,
        deactivate_vmap: bool = False,
        use_prioritized_weights: str | bool = "auto",
        check_inputs: bool = True,
    ) -> None:
        if reduction is None:
            reduction = "mean"
        if reduction not in ("none", "mean", "sum"):
            raise ValueError(f"reduction must be 'none', 'mean' or 'sum', got {reduction!r}")
        if loss_function not in ("l2", "l1", "smooth_l1"):
            raise ValueError(f"unknown loss_function {loss_function!r}")
        if awac_lambda <= 0:
            raise ValueError(f"awac_lambda must be > 0, got {awac_lambda}")
        if max_weight <= 0:
            raise ValueError(f"max_weight must be > 0, got {max_weight}")
        super().__init__()
        self._in_keys = None
        self._set_deprecated_ctor_keys(priority=priority_key)
        self.use_prioritized_weights = use_prioritized_weights
        self.num_qvalue_nets = num_qvalue_nets
        self.loss_function = loss_function
        self.awac_lambda = awac_lambda
        self.max_weight = max_weight
        self.normalize_weights = normalize_weights
        self.deactivate_vmap = deactivate_vmap
        self.check_inputs = check_inputs
        self.reduction = reduction
        self.convert_to_functional(actor_network, "actor_network", create_target_params=False)
        advise_on_actor("AWACLoss", actor_network)
        policy_params = list(actor_network.parameters()) if separate_losses else None
        self.convert_to_functional(
            qvalue_network,
            "qvalue_network",
            num_qvalue_nets,
            create_target_params=True,
            compare_against=policy_params,
        )
        self._num_calls = 0
        self.register_load_state_dict_post_hook(self._drop_caches)

    # ------------------------------------------------------------------ keys & estimator
    def _forward_value_estimator_keys(self, **kwargs) -> None:
        if self._value_estimator is not None:
            self._value_estimator.set_keys(
                value=self.tensor_keys.state_action_value,
                reward=self.tensor_keys.reward,
                done=self.tensor_keys.done,
                terminated=self.tensor_keys.terminated,
            )
        self._set_in_keys()

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

    def _critic_obs_keys(self) -> list[NestedKey]:
        action = unravel_key(self.tensor_keys.action)
        return [k for k in self.qvalue_network.in_keys if unravel_key(k) != action]

    @property
    def in_keys(self) -> list[NestedKey]:
        if self._in_keys is None:
            self._set_in_keys()
        return self._in_keys

    @in_keys.setter
    def in_keys(self, values) -> None:
        self._in_keys = values

    def make_value_estimator(self, value_type: ValueEstimators = None, **hyperparams):
        return make_loss_value_estimator(
            self,
            value_type,
            tensor_keys={
                "value": self.tensor_keys.state_action_value,
                "reward": self.tensor_keys.reward,
                "done": self.tensor_keys.done,
                "terminated": self.tensor_keys.terminated,
            },
            value_network=None,
            **hyperparams,
        )

    # ------------------------------------------------------------------ network calls
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
                found = (params_module, dist_module, _fast_tanh_normal(dist_module))
        self.__dict__["_split_actor_val"] = found
        return found

    def _dist(self, tensordict: TensorDictBase):
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
            return _TanhNormalSamples(kwargs["loc"], kwargs["scale"], *tanh_bounds)
        return dist_module.distribution_class(**kwargs, **dict(dist_module.distribution_kwargs))

    @property
    def _cache_q_detached(self) -> TensorDictBase:
        cached = self.__dict__.get("_cache_q_detached_val")
        if cached is None:
            cached = self.__dict__["_cache_q_detached_val"] = self._leaf_view(
                self.qvalue_network_params.data
            )
        return cached

    def _leaf_view(self, params: TensorDictBase):
        """``{key: tensor}`` of critic ``params`` when the critic is a plain MLP.

        The functional MLP path of ``common`` reads one tensor per layer with ``.get``;
        a dict of the (in-place updated) leaves spares a nested TensorDict lookup per
        layer and call. Views are cached and dropped on ``.to()`` / ``load_state_dict``.
        """
        if self.deactivate_vmap or _mlp_plan(self.qvalue_network) is None:
            return params
        return dict(params.items(True, True))

    def _critic_params(self, name: str) -> TensorDictBase:
        cache_name = "_cache_critic_" + name
        cached = self.__dict__.get(cache_name)
        if cached is None:
            cached = self.__dict__[cache_name] = self._leaf_view(getattr(self, name))
        return cached

    def _drop_caches(self, *args) -> None:
        self._erase_cache()

    def _critics(self, params: TensorDictBase, inputs: Sequence[Tensor]) -> Tensor:
        """All critics at once: ``[E, *batch, *out]`` with the trailing singleton dropped."""
        key = self.tensor_keys.state_action_value
        if self.deactivate_vmap:
            out = torch.stack(
                [
                    module_apply(self.qvalue_network, params[i], *inputs, out_key=key)
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
            )
        return out.squeeze(-1) if out.shape[-1] == 1 else out

    def _q_inputs(self, tensordict: TensorDictBase, action: Tensor, *, nxt: bool) -> list[Tensor]:
        action_key = unravel_key(self.tensor_keys.action)
        inputs = []
        for key in self.qvalue_network.in_keys:
            if unravel_key(key) == action_key:
                inputs.append(action)
            else:
                inputs.append(tensordict.get(next_key(key) if nxt else key))
        return inputs

    def _td_target(self, tensordict: TensorDictBase, next_value: Tensor) -> Tensor:
        keys = self.tensor_keys
        return bootstrap_target(
            self.value_estimator,
            tensordict,
            next_value,
            reward_key=keys.reward,
            done_key=keys.done,
            terminated_key=keys.terminated,
        )

    @staticmethod
    def _sum_event(log_prob: Tensor, batch_shape: torch.Size) -> Tensor:
        # distributions without an event dim give one log-prob per action dimension
        if log_prob.shape != batch_shape:
            log_prob = log_prob.reshape(*batch_shape, -1).sum(-1)
        return log_prob

    def _check_action(self, sampled: Tensor, data: Tensor) -> None:
        if sampled.shape != data.shape:
            raise OfflineLossError(
                f"actor_network samples actions of shape {tuple(sampled.shape)} but the batch "
                f"key {self.tensor_keys.action!r} holds shape {tuple(data.shape)}"
            )

    # ------------------------------------------------------------------ algorithm pieces
    def _next_value(self, tensordict: TensorDictBase) -> Tensor:
        """``min_k Q'_k(s', a')`` with ``a' ~ pi(. | s')`` (no gradient)."""
        next_td = tensordict.get("next")
        next_action = self._dist(next_td).sample()
        q = self._critics(
            self._critic_params("target_qvalue_network_params"),
            self._q_inputs(tensordict, next_action, nxt=True),
        )
        return q.min(0).values

    def _predicted(self, tensordict: TensorDictBase) -> Tensor:
        """``Q_j(s, a)`` for the data actions, ``[E, *batch]`` (with gradient)."""
        return self._critics(
            self._critic_params("qvalue_network_params"),
            self._q_inputs(tensordict, tensordict.get(self.tensor_keys.action), nxt=False),
        )

    def _advantage(self, tensordict: TensorDictBase, dist, pred: Tensor | None) -> Tensor:
        """``min_j Q_j(s, a) - min_j Q_j(s, a_pi)`` with detached current critics."""
        data_action = tensordict.get(self.tensor_keys.action)
        policy_action = dist.sample()
        self._check_action(policy_action, data_action)
        params = self._cache_q_detached
        if pred is None:
            q_data = self._critics(params, self._q_inputs(tensordict, data_action, nxt=False))
        else:
            q_data = pred.detach()
        q_pi = self._critics(params, self._q_inputs(tensordict, policy_action, nxt=False))
        return q_data.min(0).values - q_pi.min(0).values

    def _log_prob(self, tensordict: TensorDictBase, dist) -> Tensor:
        action = tensordict.get(self.tensor_keys.action)
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

    def _weights(self, advantage: Tensor) -> Tensor:
        scaled = advantage / self.awac_lambda
        if self.normalize_weights:
            flat = scaled.reshape(-1)
            weights = (torch.softmax(flat, 0) * flat.numel()).reshape(scaled.shape)
        else:
            weights = scaled.exp()
        return weights.clamp_max(self.max_weight)

    # ------------------------------------------------------------------ losses
    def actor_loss(self, tensordict: TensorDictBase) -> tuple[Tensor, dict[str, Tensor]]:
        """The advantage-weighted log-likelihood of the data actions.

        Args:
            tensordict (TensorDictBase): a batch holding :attr:`in_keys`.

        Returns:
            ``(loss_actor, metadata)`` with the detached ``"advantage"``, ``"weight"``
            and ``"log_prob"`` (batch means unless ``reduction="none"``).
        """
        return self._actor_loss(tensordict, None)

    def _actor_loss(self, tensordict: TensorDictBase, _pred: Tensor | None):
        weights_prio = self._maybe_get_priority_weight(tensordict)
        dist = self._dist(tensordict)
        log_prob = self._log_prob(tensordict, dist)
        with torch.no_grad():
            advantage = self._advantage(tensordict, dist, _pred)
            weight = self._weights(advantage)
        loss = -(weight * log_prob)
        loss = self._reduce_loss(loss, tensordict=tensordict, weights=weights_prio)
        log_prob = log_prob.detach()
        if self.reduction != "none":
            advantage, weight, log_prob = advantage.mean(), weight.mean(), log_prob.mean()
        return loss, {"advantage": advantage, "weight": weight, "log_prob": log_prob}

    def qvalue_loss(self, tensordict: TensorDictBase) -> tuple[Tensor, dict[str, Tensor]]:
        """TD regression of every critic on ``r + gamma (1 - d) min_k Q'_k(s', a')``.

        Args:
            tensordict (TensorDictBase): a batch holding :attr:`in_keys`.

        Returns:
            ``(loss_qvalue, metadata)`` with ``"td_error"`` (``[E, *batch]``) and the
            detached ``"pred_value"``, ``"next_state_value"`` and ``"target_value"``.
        """
        loss, metadata, _ = self._qvalue_loss(tensordict)
        return loss, metadata

    def _qvalue_loss(self, tensordict: TensorDictBase):
        weights = self._maybe_get_priority_weight(tensordict)
        with torch.no_grad():
            next_value = self._next_value(tensordict)
            target_value = self._td_target(tensordict, next_value)
        pred = self._predicted(tensordict)
        target_value = target_value.to(pred.dtype)
        loss = distance_loss(pred, target_value.expand_as(pred), loss_function=self.loss_function)
        loss = self._reduce_loss(loss.sum(0), tensordict=tensordict, weights=weights)
        metadata = {
            "td_error": (pred.detach() - target_value).pow(2),
            "pred_value": pred.detach(),
            "next_state_value": next_value,
            "target_value": target_value,
        }
        return loss, metadata, pred

    @dispatch
    def forward(self, tensordict: TensorDictBase) -> TensorDictBase:
        """Computes the critic and actor losses on one batch.

        Writes the per-sample TD error (max over critics) to the ``priority`` key of
        ``tensordict`` and returns the ``loss_*`` terms with detached diagnostics.
        """
        if self.check_inputs:
            check_batch(tensordict, self.in_keys, finite=False)
        loss_qvalue, metadata, pred = self._qvalue_loss(tensordict)
        loss_actor, actor_metadata = self._actor_loss(tensordict, pred)
        tensordict.set(self.tensor_keys.priority, metadata.pop("td_error").max(0).values)
        out = TensorDict(
            {"loss_actor": loss_actor, "loss_qvalue": loss_qvalue, **actor_metadata, **metadata}
        )
        count_update(self, "_num_calls", out, batch=tensordict)
        return out


class DiscreteAWACLoss(AWACLoss):
    r"""AWAC loss for discrete actions.

    The critic outputs one value per action, :math:`Q_j(s, \cdot)`, and expectations
    over the policy are exact instead of sampled:

    .. math::

        L_Q = \sum_j \big(Q_j(s, a) - r - \gamma (1 - d) \textstyle\sum_{a'}
        \pi(a' \mid s') \min_k Q'_k(s', a')\big)^2,

        A(s, a) = \min_j Q_j(s, a) - \textstyle\sum_{b} \pi(b \mid s) \min_j Q_j(s, b),
        \qquad L_\pi = -\min\big(\exp(A / \lambda), w_{\max}\big) \log \pi(a \mid s).

    Args:
        actor_network (ProbabilisticTensorDictSequential): a categorical actor
            (:class:`~torchrl.modules.distributions.OneHotCategorical` for one-hot
            actions, ``Categorical`` for indices) whose distribution exposes ``probs``.
        qvalue_network (TensorDictModule): :math:`Q(s, \cdot)` writing
            ``"state_action_value"`` with one entry per action (no action input).

    Keyword Args:
        action_space (str or TensorSpec): ``"one-hot"`` or ``"categorical"`` (or a
            matching spec), the encoding of the action in the batch. Required.
        num_qvalue_nets, loss_function, awac_lambda, max_weight, normalize_weights,
        priority_key, separate_losses, reduction, deactivate_vmap,
        use_prioritized_weights, check_inputs: as in :class:`AWACLoss`.

    Examples:
        >>> import torch
        >>> from tensordict import TensorDict
        >>> from tensordict.nn import TensorDictModule
        >>> from torchrl.modules import MLP, ProbabilisticActor, ValueOperator
        >>> from torchrl.modules.distributions import OneHotCategorical
        >>> from torchrl_offline.objectives.awac import DiscreteAWACLoss
        >>> n_obs, n_act = 4, 3
        >>> actor = ProbabilisticActor(
        ...     TensorDictModule(MLP(in_features=n_obs, out_features=n_act, num_cells=[16]),
        ...                      in_keys=["observation"], out_keys=["logits"]),
        ...     in_keys=["logits"], distribution_class=OneHotCategorical)
        >>> qvalue = ValueOperator(MLP(in_features=n_obs, out_features=n_act, num_cells=[16]),
        ...                        in_keys=["observation"])
        >>> loss = DiscreteAWACLoss(actor, qvalue, action_space="one-hot")
        >>> action = torch.nn.functional.one_hot(torch.randint(n_act, (8,)), n_act)
        >>> data = TensorDict({
        ...     "observation": torch.randn(8, n_obs), "action": action,
        ...     ("next", "observation"): torch.randn(8, n_obs),
        ...     ("next", "reward"): torch.randn(8, 1),
        ...     ("next", "done"): torch.zeros(8, 1, dtype=torch.bool),
        ...     ("next", "terminated"): torch.zeros(8, 1, dtype=torch.bool)}, [8])
        >>> out = loss(data)
        >>> out["loss_actor"].shape, out["pred_value"].shape
        (torch.Size([]), torch.Size([2, 8]))
    """

    def __init__(
        self,
        actor_network: ProbabilisticTensorDictSequential,
        qvalue_network: TensorDictModule | list[TensorDictModule],
        *,
        action_space: str | TensorSpec,
        num_qvalue_nets: int = 2,
        loss_function: str = "l2",
        awac_lambda: float = 1.0 / 3.0,
        max_weight: float = 100.0,
        normalize_weights: bool = False,
        priority_key: str | None = None,
        separate_losses: bool = False,
        reduction: str | None = None,
        deactivate_vmap: bool = False,
        use_prioritized_weights: str | bool = "auto",
        check_inputs: bool = True,
    ) -> None:
        super().__init__(
            actor_network,
            qvalue_network,
            num_qvalue_nets=num_qvalue_nets,
            loss_function=loss_function,
            awac_lambda=awac_lambda,
            max_weight=max_weight,
            normalize_weights=normalize_weights,
            priority_key=priority_key,
            separate_losses=separate_losses,
            reduction=reduction,
            deactivate_vmap=deactivate_vmap,
            use_prioritized_weights=use_prioritized_weights,
            check_inputs=check_inputs,
        )
        self.action_space = _find_action_space(action_space)
        if self.action_space not in ("one_hot", "categorical"):
            raise ValueError(
                f"action_space must be 'one-hot' or 'categorical', got {self.action_space!r}"
            )

    def _critic_obs_keys(self) -> list[NestedKey]:
        return list(self.qvalue_network.in_keys)

    def _all_actions(self, params: TensorDictBase, tensordict: TensorDictBase) -> Tensor:
        """``Q_j(s, .)`` for every action: ``[E, *batch, n_actions]``."""
        return self._critics(params, [tensordict.get(k) for k in self.qvalue_network.in_keys])

    def _chosen(self, q: Tensor, action: Tensor) -> Tensor:
        """Values of the data actions: ``[E, *batch]``."""
        if self.action_space == "one_hot":
            if action.shape[-1] != q.shape[-1]:
                raise OfflineLossError(
                    f"qvalue_network outputs {q.shape[-1]} action values but the one-hot batch "
                    f"key {self.tensor_keys.action!r} has {action.shape[-1]} entries"
                )
            return (q * action.to(q.dtype)).sum(-1)
        index = action.long()
        if index.ndim == q.ndim - 1:  # a trailing singleton dim
            index = index.squeeze(-1)
        if self.check_inputs:
            bad = (index < 0) | (index >= q.shape[-1])
            if bool(bad.any()):
                first = int(bad.reshape(-1).nonzero()[0, 0])
                raise OfflineLossError(
                    f"batch key {self.tensor_keys.action!r} holds an action index outside "
                    f"[0, {q.shape[-1]}) (first at flat index {first})"
                )
        index = index.expand(q.shape[0], *index.shape).unsqueeze(-1)
        return q.gather(-1, index).squeeze(-1)

    @staticmethod
    def _probs(dist) -> Tensor:
        probs = getattr(dist, "probs", None)
        if probs is None:
            raise OfflineLossError(
                "actor_network's distribution has no 'probs'; DiscreteAWACLoss needs a "
                "categorical actor (OneHotCategorical or Categorical)"
            )
        return probs

    def _next_value(self, tensordict: TensorDictBase) -> Tensor:
        next_td = tensordict.get("next")
        probs = self._probs(self._dist(next_td))
        q = (
            self._all_actions(self._critic_params("target_qvalue_network_params"), next_td)
            .min(0)
            .values
        )
        if probs.shape != q.shape:
            raise OfflineLossError(
                f"actor_network gives {probs.shape[-1]} action probabilities but "
                f"qvalue_network outputs {q.shape[-1]} action values"
            )
        return (probs * q).sum(-1)

    def _predicted(self, tensordict: TensorDictBase) -> Tensor:
        # all action values, kept so the advantage reuses them
        return self._all_actions(self._critic_params("qvalue_network_params"), tensordict)

    def _qvalue_loss(self, tensordict: TensorDictBase):
        weights = self._maybe_get_priority_weight(tensordict)
        with torch.no_grad():
            next_value = self._next_value(tensordict)
            target_value = self._td_target(tensordict, next_value)
        q_all = self._predicted(tensordict)
        pred = self._chosen(q_all, tensordict.get(self.tensor_keys.action))
        target_value = target_value.to(pred.dtype)
        loss = distance_loss(pred, target_value.expand_as(pred), loss_function=self.loss_function)
        loss = self._reduce_loss(loss.sum(0), tensordict=tensordict, weights=weights)
        metadata = {
            "td_error": (pred.detach() - target_value).pow(2),
            "pred_value": pred.detach(),
            "next_state_value": next_value,
            "target_value": target_value,
        }
        return loss, metadata, q_all

    def _log_prob(self, tensordict: TensorDictBase, dist) -> Tensor:
        action = tensordict.get(self.tensor_keys.action)
        if self.action_space == "categorical" and action.ndim > tensordict.ndim:
            action = action.squeeze(-1)
        return self._sum_event(dist.log_prob(action), tensordict.batch_size)

    def _advantage(self, tensordict: TensorDictBase, dist, pred: Tensor | None) -> Tensor:
        if pred is None:
            q_all = self._all_actions(self._cache_q_detached, tensordict)
        else:
            q_all = pred.detach()
        q_min = q_all.min(0).values
        probs = self._probs(dist)
        q_data = self._chosen(q_all, tensordict.get(self.tensor_keys.action)).min(0).values
        return q_data - (probs * q_min).sum(-1)
