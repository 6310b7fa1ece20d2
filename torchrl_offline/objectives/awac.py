"""AWAC: Advantage-Weighted Actor-Critic (Nair, Gupta, Dalal & Levine, 2020).

TorchRL has no AWAC loss; these follow the shape of TorchRL's ``IQLLoss`` /
``CQLLoss`` (a ``ProbabilisticActor``, ``ValueOperator`` critics duplicated into a
batched ensemble with target copies, ``_AcceptedKeys``, ``set_keys``,
``make_value_estimator``, ``reduction``, ``td_error`` for prioritized replay).
"""

from __future__ import annotations

import torch
from tensordict import TensorDictBase
from tensordict.nn import (
    ProbabilisticTensorDictSequential,
    TensorDictModule,
    dispatch,
)
from tensordict.utils import NestedKey
from torch import Tensor
from torchrl.data.tensor_specs import TensorSpec
from torchrl.data.utils import _find_action_space

from torchrl_offline.objectives._actor_critic import ActorCriticLoss
from torchrl_offline.objectives._checks import check_reduction
from torchrl_offline.objectives._likelihood import LikelihoodActor
from torchrl_offline.objectives.common import (
    OfflineLossError,
    check_batch,
    logged_action_value,
    td_target,
)
from torchrl_offline.objectives.declaration import AlgorithmDeclaration, ParamGroup
from torchrl_offline.objectives.gaussian_actor import advise_on_actor
from torchrl_offline.objectives.networks import STOCHASTIC_ACTORS

__all__ = [
    "AWAC_ALGORITHM",
    "AWAC_PRESETS",
    "DISCRETE_AWAC_ALGORITHM",
    "AWACLoss",
    "DiscreteAWACLoss",
]


class AWACLoss(LikelihoodActor, ActorCriticLoss):
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
        reduction = check_reduction(reduction, loss_function)
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

    def _data_action_value(self, q: Tensor, tensordict: TensorDictBase) -> Tensor:
        """The critics' values of the data actions from :meth:`_predicted`'s output."""
        return q

    def _advantage(self, tensordict: TensorDictBase, dist, pred: Tensor | None) -> Tensor:
        """``min_j Q_j(s, a) - min_j Q_j(s, a_pi)`` with detached current critics."""
        data_action = tensordict.get(self.tensor_keys.action)
        policy_action = dist.sample()
        self._check_action(policy_action, data_action, verb="samples")
        params = self._cache_q_detached
        if pred is None:
            q_data = self._critics(params, self._q_inputs(tensordict, data_action, nxt=False))
        else:
            q_data = pred.detach()
        q_pi = self._critics(params, self._q_inputs(tensordict, policy_action, nxt=False))
        return q_data.min(0).values - q_pi.min(0).values

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
            target_value = td_target(self, tensordict, next_value)
        q = self._predicted(tensordict)
        pred = self._data_action_value(q, tensordict)
        loss, metadata = self._critic_regression(
            pred, target_value, next_value, tensordict, weights
        )
        return loss, metadata, q

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
        losses = {"loss_actor": loss_actor, "loss_qvalue": loss_qvalue}
        return self._pack(tensordict, losses, {**actor_metadata, **metadata}, "_num_calls")


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
        return logged_action_value(
            q,
            action,
            one_hot=self.action_space == "one_hot",
            action_key=self.tensor_keys.action,
            check_inputs=self.check_inputs,
            ensemble_dims=1,
        )

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

    def _data_action_value(self, q: Tensor, tensordict: TensorDictBase) -> Tensor:
        return self._chosen(q, tensordict.get(self.tensor_keys.action))

    def _advantage(self, tensordict: TensorDictBase, dist, pred: Tensor | None) -> Tensor:
        if pred is None:
            q_all = self._all_actions(self._cache_q_detached, tensordict)
        else:
            q_all = pred.detach()
        q_min = q_all.min(0).values
        probs = self._probs(dist)
        q_data = self._chosen(q_all, tensordict.get(self.tensor_keys.action)).min(0).values
        return q_data - (probs * q_min).sum(-1)


# ------------------------------------------------------------------------- declaration
_AWAC_OPTIMIZER = (
    ParamGroup("actor", "actor_lr", "actor_network_params"),
    ParamGroup("qvalue", "critic_lr", "qvalue_network_params"),
)

#: Named temperatures: ``"corl"``, CORL's D4RL setting and the loss's default
#: (``lambda = 1/3``); ``"d3rlpy"``, d3rlpy's (``lambda = 1``), the softer weighting
#: ``build_algorithm`` uses by default.
AWAC_PRESETS: dict[str, dict[str, float]] = {
    "corl": {"awac_lambda": 1.0 / 3.0},
    "d3rlpy": {"awac_lambda": 1.0},
}

#: AWAC as :func:`~torchrl_offline.trainers.algorithms.build_algorithm` builds it: the
#: paper's (and CORL's) Gaussian actor with a tanh mean and a state-independent log-std
#: (with ``actor="tanh_normal"`` AWAC ends below the dataset average on mixed data:
#: ``benchmarks/learning_algos.py --algo awac``), twin ``Q(s, a)``, 3x256 MLPs, Adam at
#: 3e-4, and d3rlpy's temperature ``lambda = 1`` (the ``"d3rlpy"`` preset): with the
#: loss's 1/3, one seed in five collapsed on each of two mixed-quality datasets, and the
#: learning table's rows are level or better with 1 (``docs/benchmarks.md``);
#: ``preset="corl"`` is CORL's 1/3.
AWAC_ALGORITHM = AlgorithmDeclaration(
    name="awac",
    loss_class=AWACLoss,
    networks=lambda nets, hp: {
        "actor_network": nets.stochastic_actor(hp["actor"]),
        "qvalue_network": nets.qvalue(),
    },
    optimizer=_AWAC_OPTIMIZER,
    loss_terms=("loss_actor", "loss_qvalue"),
    defaults={
        "actor": "gaussian",
        "hidden_sizes": (256, 256, 256),
        "actor_lr": 3e-4,
        "critic_lr": 3e-4,
    },
    presets=AWAC_PRESETS,
    default_preset="d3rlpy",
    choices={"actor": STOCHASTIC_ACTORS},
    discrete_variant="discrete_awac",
)

#: Discrete AWAC: a categorical actor and ``Q(s, .)``, 3x256 MLPs, Adam at 3e-4.
DISCRETE_AWAC_ALGORITHM = AlgorithmDeclaration(
    name="discrete_awac",
    loss_class=DiscreteAWACLoss,
    networks=lambda nets, hp: {
        "actor_network": nets.categorical_actor(),
        "qvalue_network": nets.qvalue(),
    },
    optimizer=_AWAC_OPTIMIZER,
    loss_terms=("loss_actor", "loss_qvalue"),
    action="discrete",
    defaults={"hidden_sizes": (256, 256, 256), "actor_lr": 3e-4, "critic_lr": 3e-4},
    action_spec_argument="action_space",
)
