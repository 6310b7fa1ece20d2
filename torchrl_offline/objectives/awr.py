"""AWR: Advantage-Weighted Regression (Peng, Kumar, Zhang & Levine, 2019).

TorchRL has no AWR loss. AWR fits a state-value function to the returns of the logged
episodes and the policy by advantage-weighted maximum likelihood of the logged actions:
two supervised regressions, no bootstrapped critic and no target networks. The returns
come with the batch: by default ``"mc_return"``, the discounted return of the rest of the
logged episode, which the trainers derive from the data's episode order
(:mod:`torchrl_offline.data.episodes`); with ``value_target="td_lambda"`` (the paper's)
``"td_lambda_return"``, which the trainers recompute over the dataset with the current
value network (:mod:`torchrl_offline.trainers.td_lambda`).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from tensordict import TensorDict, TensorDictBase, TensorDictParams
from tensordict.nn import ProbabilisticTensorDictSequential, TensorDictModule, dispatch
from tensordict.utils import NestedKey, unravel_key
from torch import Tensor
from torchrl.data.tensor_specs import TensorSpec
from torchrl.data.utils import _find_action_space
from torchrl.objectives.common import LossModule
from torchrl.objectives.utils import distance_loss

from torchrl_offline.data.episodes import MC_RETURN, TD_LAMBDA_RETURN
from torchrl_offline.objectives._checks import check_reduction, count_update
from torchrl_offline.objectives._keys import LazyInKeys
from torchrl_offline.objectives._likelihood import LikelihoodActor
from torchrl_offline.objectives.common import OfflineLossError, check_batch
from torchrl_offline.objectives.declaration import (
    AlgorithmDeclaration,
    ParamGroup,
    TDLambdaSettings,
)
from torchrl_offline.objectives.networks import STOCHASTIC_ACTORS

__all__ = [
    "AWR_ALGORITHM",
    "DISCRETE_AWR_ALGORITHM",
    "VALUE_TARGETS",
    "AWRLoss",
    "DiscreteAWRLoss",
]

# Added to the advantages' standard deviation when normalising them (the paper's code's).
_ADV_EPS = 1e-5
#: The returns :math:`V` can be fitted to, with the batch entry each is read from.
VALUE_TARGETS = {"monte_carlo": MC_RETURN, "td_lambda": TD_LAMBDA_RETURN}


class AWRLoss(LikelihoodActor, LazyInKeys, LossModule):
    r"""AWR loss (Peng, Kumar, Zhang & Levine, "Advantage-Weighted Regression: Simple
    and Scalable Off-Policy Reinforcement Learning", 2019).

    With :math:`R` the discounted return of the rest of the logged episode from
    :math:`s` (the batch's ``"mc_return"``):

    .. math::

        L_V = \big(V(s) - R\big)^2, \qquad
        L_\pi = -\min\big(\exp(\hat A / \beta),\ w_{\max}\big) \log \pi(a \mid s),
        \qquad A = R - V(s),

    where :math:`\hat A` is :math:`A` (detached) normalised to zero mean and unit
    standard deviation over the batch, as the paper's code normalises it over its
    buffer. Defaults are the paper's (its code's configuration for every task):
    temperature :math:`\beta = 1`, weights clipped at 20, normalised advantages.

    Where an episode was cut rather than terminated (a time limit, or the end of the
    data), the return is bootstrapped as in the paper's code: :math:`R = \sum_{k \le T - t}
    \gamma^k r_{t+k} + \gamma^{T - t + 1} V(s_{T+1})` with the current :math:`V`
    (detached), from the batch's ``"mc_tail_discount"`` and ``"mc_tail_observation"``
    (derived with the return; ``bootstrap_truncated=False`` leaves them out). Without
    it, the return of a step near a time limit is short by the rest of the episode, and
    the advantages reward being late in an episode rather than the action.

    The paper's value target is the TD(:math:`\lambda`) return (:math:`\lambda =
    0.95`), recomputed over the buffer with the current :math:`V` between rounds of
    updates: ``value_target="td_lambda"`` reads it from the batch's
    ``"td_lambda_return"`` as it is (it bootstraps itself, so the tail entries are not
    read), and :func:`~torchrl_offline.trainers.offline.train` recomputes that column
    over the whole dataset every ``td_lambda_interval`` updates
    (:mod:`~torchrl_offline.trainers.td_lambda`). The default, ``"monte_carlo"``, is the
    Monte Carlo return (TD(1)) derived once from the logged episodes, which needs no
    pass over the dataset during training (and is what the recorded learning table
    ran).

    Args:
        actor_network (ProbabilisticTensorDictSequential): the stochastic actor; its
            ``get_dist`` must give a distribution with ``log_prob``.
        value_network (TensorDictModule): :math:`V(s)` writing ``"state_value"``.

    Keyword Args:
        beta (float, optional): the temperature :math:`\beta`. Defaults to ``1.0``.
        max_weight (float, optional): clip of the weights. Defaults to ``20.0``.
        normalize_advantage (bool, optional): normalise the advantages over the batch
            before weighting. Defaults to ``True``.
        value_target (str, optional): the return :math:`V` is fitted to,
            ``"monte_carlo"`` (the batch's ``"mc_return"``, bootstrapped with the tail
            entries) or ``"td_lambda"`` (the batch's ``"td_lambda_return"``, as it is).
            Defaults to ``"monte_carlo"``.
        bootstrap_truncated (bool, optional): bootstrap the Monte Carlo return with
            :math:`V` where the episode was cut (not used with ``"td_lambda"``, whose
            return is bootstrapped already). Defaults to ``True``.
        loss_function (str, optional): value regression, ``"l2"``, ``"l1"`` or
            ``"smooth_l1"``. Defaults to ``"l2"``.
        reduction (str, optional): ``"none"``, ``"mean"`` or ``"sum"``. Defaults to
            ``"mean"``.
        check_inputs (bool, optional): check the batch for missing keys and NaN/inf
            and the losses for NaN/inf. Defaults to ``True``.

    Examples:
        >>> import torch
        >>> from tensordict import TensorDict
        >>> from torchrl.data import Bounded
        >>> from torchrl.modules import MLP, ValueOperator
        >>> from torchrl_offline.objectives import AWRLoss, make_tanh_mean_gaussian_actor
        >>> spec = Bounded(-1.0, 1.0, (2,))
        >>> actor = make_tanh_mean_gaussian_actor(3, spec, num_cells=(16,))
        >>> value = ValueOperator(MLP(in_features=3, out_features=1, num_cells=[16]),
        ...                       in_keys=["observation"])
        >>> loss = AWRLoss(actor, value)
        >>> batch = TensorDict({"observation": torch.randn(8, 3), "action": spec.rand((8,)),
        ...                     "mc_return": torch.randn(8, 1),  # derive_keys adds these
        ...                     "mc_tail_discount": torch.zeros(8, 1),  # all terminated
        ...                     "mc_tail_observation": torch.randn(8, 3)}, [8])
        >>> out = loss(batch)
        >>> (out["loss_actor"] + out["loss_value"]).backward()
        >>> sorted(k for k in out.keys() if k.startswith("loss_"))
        ['loss_actor', 'loss_value']
    """

    @dataclass
    class _AcceptedKeys:
        """Tensordict keys read by the loss, configurable with ``set_keys``.

        Attributes:
            action (NestedKey): the logged action. Defaults to ``"action"``.
            value_target (NestedKey): the return :math:`V(s)` is fitted to. Defaults to
                ``"mc_return"`` (``"td_lambda_return"`` with
                ``value_target="td_lambda"``).
            value (NestedKey): the value network's output. Defaults to ``"state_value"``.
            tail_discount (NestedKey): ``gamma^(T - t + 1)`` where the episode was cut, 0
                where it terminated. Defaults to ``"mc_tail_discount"``.
            tail_observation (NestedKey): the observation after the episode's last step.
                Defaults to ``"mc_tail_observation"``.
        """

        action: NestedKey = "action"
        value_target: NestedKey = "mc_return"
        value: NestedKey = "state_value"
        tail_discount: NestedKey = "mc_tail_discount"
        tail_observation: NestedKey = "mc_tail_observation"

    default_keys = _AcceptedKeys
    tensor_keys: _AcceptedKeys
    actor_network: TensorDictModule
    actor_network_params: TensorDictParams
    target_actor_network_params: TensorDictParams
    value_network: TensorDictModule
    value_network_params: TensorDictParams
    target_value_network_params: TensorDictParams
    out_keys = ["loss_actor", "loss_value", "advantage", "weight", "log_prob", "pred_value"]

    def __init__(
        self,
        actor_network: ProbabilisticTensorDictSequential,
        value_network: TensorDictModule,
        *,
        beta: float = 1.0,
        max_weight: float = 20.0,
        normalize_advantage: bool = True,
        value_target: str = "monte_carlo",
        bootstrap_truncated: bool = True,
        loss_function: str = "l2",
        reduction: str | None = None,
        check_inputs: bool = True,
    ) -> None:
        reduction = check_reduction(reduction, loss_function)
        if value_target not in VALUE_TARGETS:
            raise ValueError(
                f"value_target must be one of {', '.join(map(repr, VALUE_TARGETS))}, "
                f"got {value_target!r}"
            )
        if beta <= 0:
            raise ValueError(f"beta must be > 0, got {beta}")
        if max_weight <= 0:
            raise ValueError(f"max_weight must be > 0, got {max_weight}")
        super().__init__()
        self._in_keys = None
        self.beta = float(beta)
        self.max_weight = float(max_weight)
        self.normalize_advantage = bool(normalize_advantage)
        self.value_target = value_target
        # the TD(lambda) return is bootstrapped already
        self.bootstrap_truncated = bool(bootstrap_truncated) and value_target == "monte_carlo"
        self.loss_function = loss_function
        self.reduction = reduction
        self.check_inputs = check_inputs
        self.convert_to_functional(actor_network, "actor_network", create_target_params=False)
        self.convert_to_functional(value_network, "value_network", create_target_params=False)
        if self.bootstrap_truncated and len(value_network.in_keys) != 1:
            raise OfflineLossError(
                "bootstrap_truncated needs a value_network reading one observation entry "
                f"(it reads {value_network.in_keys}); pass bootstrap_truncated=False"
            )
        if value_target == "td_lambda" and len(value_network.in_keys) != 1:
            raise OfflineLossError(
                "value_target='td_lambda' needs a value_network reading one observation "
                f"entry, to evaluate the dataset's next observations (it reads "
                f"{value_network.in_keys})"
            )
        if VALUE_TARGETS[value_target] != self.default_keys.value_target:
            self.set_keys(value_target=VALUE_TARGETS[value_target])
        self._num_calls = 0

    def _forward_value_estimator_keys(self, **kwargs) -> None:
        self._in_keys = None
        self.__dict__.pop("_direct_value", None)

    def _set_in_keys(self) -> None:
        keys = [
            self.tensor_keys.action,
            self.tensor_keys.value_target,
            *(
                (self.tensor_keys.tail_discount, self.tensor_keys.tail_observation)
                if self.bootstrap_truncated
                else ()
            ),
            *self.actor_network.in_keys,
            *self.value_network.in_keys,
        ]
        self._in_keys = list(dict.fromkeys(unravel_key(k) for k in keys))

    # ------------------------------------------------------------------ pieces
    def _apply(self, fn):
        self.__dict__.pop("_direct_value", None)  # parameters may be new objects
        return super()._apply(fn)

    def _value_is_direct(self) -> bool:
        """Whether ``value_network`` is one module holding the loss's own parameters,
        called on tensors without a parameter swap or a tensordict round trip."""
        direct = self.__dict__.get("_direct_value")
        if direct is None:
            net = self.value_network
            own = dict(net.named_parameters())
            direct = (
                isinstance(net, TensorDictModule)
                and len(net.out_keys) == 1
                and unravel_key(net.out_keys[0]) == unravel_key(self.tensor_keys.value)
                and all(
                    own.get(k) is v
                    for k, v in self.value_network_params.flatten_keys(".").items()
                    if isinstance(v, torch.nn.Parameter)
                )
            )
            self.__dict__["_direct_value"] = direct
        return direct

    def _value(self, tensordict: TensorDictBase) -> Tensor:
        """``V(s)``, one value per sample (with gradient)."""
        if self._value_is_direct():
            net = self.value_network
            value = net.module(*[tensordict.get(k) for k in net.in_keys])
        else:
            td = tensordict.select(*self.value_network.in_keys, strict=False)
            with self.value_network_params.to_module(self.value_network):
                value = self.value_network(td).get(self.tensor_keys.value)
        if value.shape[-1:] != (1,):
            raise OfflineLossError(
                f"value_network must output one value per state at "
                f"{self.tensor_keys.value!r}, got shape {tuple(value.shape)}"
            )
        return value.squeeze(-1)

    def state_value(self, tensordict: TensorDictBase) -> Tensor:
        """``V(s)`` of every sample of ``tensordict`` (shaped like its batch) with the
        loss's current parameters: what the TD(lambda) refresh
        (:mod:`~torchrl_offline.trainers.td_lambda`) bootstraps with."""
        return self._value(tensordict)

    def _per_sample(self, tensordict: TensorDictBase, key: NestedKey) -> Tensor:
        value = tensordict.get(key)
        if value.shape != (*tensordict.batch_size, 1) and value.shape != tensordict.batch_size:
            raise OfflineLossError(
                f"{key!r} must hold one value per sample, shaped "
                f"{(*tensordict.batch_size, 1)}, got {tuple(value.shape)}"
            )
        return value.reshape(tensordict.batch_size).to(torch.get_default_dtype())

    @torch.no_grad()
    def _target(self, tensordict: TensorDictBase) -> Tensor:
        """The return :math:`V(s)` is fitted to, bootstrapped where the episode was cut."""
        target = self._per_sample(tensordict, self.tensor_keys.value_target)
        if not self.bootstrap_truncated:
            return target
        discount = self._per_sample(tensordict, self.tensor_keys.tail_discount)
        tail = tensordict.empty().set(
            self.value_network.in_keys[0], tensordict.get(self.tensor_keys.tail_observation)
        )
        return target + discount * self._value(tail)

    def _weights(self, advantage: Tensor) -> Tensor:
        if self.normalize_advantage:
            flat = advantage.reshape(-1)
            std = flat.std(unbiased=False) if flat.numel() > 1 else flat.new_zeros(())
            advantage = (advantage - flat.mean()) / (std + _ADV_EPS)
        return (advantage / self.beta).exp().clamp_max(self.max_weight)

    def _reduce(self, loss: Tensor) -> Tensor:
        if self.reduction == "mean":
            return loss.mean()
        if self.reduction == "sum":
            return loss.sum()
        return loss

    # ------------------------------------------------------------------ losses
    def value_loss(self, tensordict: TensorDictBase) -> tuple[Tensor, dict[str, Tensor]]:
        """Regression of :math:`V(s)` on the return.

        Returns:
            ``(loss_value, metadata)`` with the detached ``"pred_value"``.
        """
        loss, metadata, _ = self._value_loss(tensordict)
        return loss, metadata

    def _value_loss(self, tensordict: TensorDictBase, target: Tensor | None = None):
        if target is None:
            target = self._target(tensordict)
        value = self._value(tensordict)
        loss = distance_loss(value, target, self.loss_function)
        pred = value.detach()
        return self._reduce(loss), {"pred_value": self._summary(pred)}, pred

    def actor_loss(self, tensordict: TensorDictBase) -> tuple[Tensor, dict[str, Tensor]]:
        """The advantage-weighted log-likelihood of the logged actions.

        Returns:
            ``(loss_actor, metadata)`` with the detached ``"advantage"`` (before
            normalisation), ``"weight"`` and ``"log_prob"``.
        """
        return self._actor_loss(tensordict, None, None)

    def _actor_loss(self, tensordict: TensorDictBase, value: Tensor | None, target: Tensor | None):
        with torch.no_grad():
            if value is None:
                value = self._value(tensordict)
            if target is None:
                target = self._target(tensordict)
            advantage = target - value
            weight = self._weights(advantage)
        log_prob = self._log_prob(tensordict, self._dist(tensordict))
        loss = self._reduce(-(weight * log_prob))
        metadata = {"advantage": advantage, "weight": weight, "log_prob": log_prob.detach()}
        return loss, {k: self._summary(v) for k, v in metadata.items()}

    def _summary(self, value: Tensor) -> Tensor:
        return value if self.reduction == "none" else value.mean()

    @dispatch
    def forward(self, tensordict: TensorDictBase) -> TensorDictBase:
        """Computes the value and actor losses on one batch (``V(s)`` evaluated once)."""
        if self.check_inputs:
            check_batch(tensordict, self.in_keys, finite=False)
        target = self._target(tensordict)
        loss_value, metadata, value = self._value_loss(tensordict, target)
        loss_actor, actor_metadata = self._actor_loss(tensordict, value, target)
        out = TensorDict(
            {"loss_actor": loss_actor, "loss_value": loss_value, **actor_metadata, **metadata}
        )
        count_update(self, "_num_calls", out, batch=tensordict)
        return out


class DiscreteAWRLoss(AWRLoss):
    r"""AWR for discrete actions: the same losses with a categorical actor.

    Args:
        actor_network (ProbabilisticTensorDictSequential): a categorical actor
            (``OneHotCategorical`` for one-hot actions, ``Categorical`` for indices).
        value_network (TensorDictModule): :math:`V(s)` writing ``"state_value"``.

    Keyword Args:
        action_space (str or TensorSpec): ``"one-hot"`` or ``"categorical"`` (or a
            matching spec), the encoding of the action in the batch. Required.
        beta, max_weight, normalize_advantage, value_target, bootstrap_truncated,
            loss_function, reduction, check_inputs: as in :class:`AWRLoss`.

    Examples:
        >>> import torch
        >>> from tensordict import TensorDict
        >>> from tensordict.nn import TensorDictModule
        >>> from torchrl.modules import MLP, ProbabilisticActor, ValueOperator
        >>> from torchrl.modules.distributions import OneHotCategorical
        >>> from torchrl_offline.objectives import DiscreteAWRLoss
        >>> actor = ProbabilisticActor(
        ...     TensorDictModule(MLP(in_features=4, out_features=3, num_cells=[16]),
        ...                      in_keys=["observation"], out_keys=["logits"]),
        ...     in_keys=["logits"], distribution_class=OneHotCategorical)
        >>> value = ValueOperator(MLP(in_features=4, out_features=1, num_cells=[16]),
        ...                       in_keys=["observation"])
        >>> loss = DiscreteAWRLoss(actor, value, action_space="one-hot")
        >>> action = torch.nn.functional.one_hot(torch.randint(3, (8,)), 3)
        >>> batch = TensorDict({"observation": torch.randn(8, 4), "action": action,
        ...                     "mc_return": torch.randn(8, 1),
        ...                     "mc_tail_discount": torch.full((8, 1), 0.9),
        ...                     "mc_tail_observation": torch.randn(8, 4)}, [8])
        >>> loss(batch)["loss_actor"].shape
        torch.Size([])
    """

    def __init__(
        self,
        actor_network: ProbabilisticTensorDictSequential,
        value_network: TensorDictModule,
        *,
        action_space: str | TensorSpec,
        beta: float = 1.0,
        max_weight: float = 20.0,
        normalize_advantage: bool = True,
        value_target: str = "monte_carlo",
        bootstrap_truncated: bool = True,
        loss_function: str = "l2",
        reduction: str | None = None,
        check_inputs: bool = True,
    ) -> None:
        super().__init__(
            actor_network,
            value_network,
            beta=beta,
            max_weight=max_weight,
            normalize_advantage=normalize_advantage,
            value_target=value_target,
            bootstrap_truncated=bootstrap_truncated,
            loss_function=loss_function,
            reduction=reduction,
            check_inputs=check_inputs,
        )
        self.action_space = _find_action_space(action_space)
        if self.action_space not in ("one_hot", "categorical"):
            raise ValueError(
                f"action_space must be 'one-hot' or 'categorical', got {self.action_space!r}"
            )


# ------------------------------------------------------------------------- declaration
_AWR_OPTIMIZER = (
    ParamGroup("actor", "actor_lr", "actor_network_params"),
    ParamGroup("value", "value_lr", "value_network_params"),
)
# The paper's code: 128x64 networks. It trains them with SGD and momentum 0.9 (actor
# 5e-5, value 1e-2); this package's one Adam runs both at Adam's usual 3e-4.
_AWR_DEFAULTS = {"hidden_sizes": (128, 64), "actor_lr": 3e-4, "value_lr": 3e-4}

_VALUE_TARGETS = {"value_target": tuple(VALUE_TARGETS)}

#: AWR as :func:`~torchrl_offline.trainers.algorithms.build_algorithm` builds it: the
#: Gaussian actor with a state-independent log-std (the paper's code uses a fixed one),
#: ``V(s)``, 128x64 MLPs, no target networks, Monte Carlo returns of the logged
#: episodes added to the batches by the trainers; with ``value_target="td_lambda"``,
#: TD(lambda) returns (``td_lambda``, the paper's 0.95) recomputed by the trainers
#: every ``td_lambda_interval`` updates.
AWR_ALGORITHM = AlgorithmDeclaration(
    name="awr",
    loss_class=AWRLoss,
    networks=lambda nets, hp: {
        "actor_network": nets.stochastic_actor(hp["actor"]),
        "value_network": nets.value(),
    },
    optimizer=_AWR_OPTIMIZER,
    loss_terms=("loss_actor", "loss_value"),
    defaults={"actor": "gaussian", **_AWR_DEFAULTS},
    choices={"actor": STOCHASTIC_ACTORS, **_VALUE_TARGETS},
    discrete_variant="discrete_awr",
    target_update=False,
    derived_keys=("mc_return", "mc_tail_discount", "mc_tail_observation"),
    td_lambda_returns=TDLambdaSettings(),
)

#: Discrete AWR: a categorical actor and ``V(s)``, 128x64 MLPs; the same value targets.
DISCRETE_AWR_ALGORITHM = AlgorithmDeclaration(
    name="discrete_awr",
    loss_class=DiscreteAWRLoss,
    networks=lambda nets, hp: {
        "actor_network": nets.categorical_actor(),
        "value_network": nets.value(),
    },
    optimizer=_AWR_OPTIMIZER,
    loss_terms=("loss_actor", "loss_value"),
    action="discrete",
    defaults=_AWR_DEFAULTS,
    choices=_VALUE_TARGETS,
    action_spec_argument="action_space",
    target_update=False,
    derived_keys=("mc_return", "mc_tail_discount", "mc_tail_observation"),
    td_lambda_returns=TDLambdaSettings(),
)
