r"""EDAC and SAC-N (An, Moon, Kim & Song, NeurIPS 2021): SAC with a large critic ensemble.

Paper: "Uncertainty-Based Offline Reinforcement Learning with Diversified Q-Ensemble",
https://arxiv.org/abs/2110.01548; reference code https://github.com/snu-mllab/EDAC.

SAC-N is Soft Actor-Critic with ``N`` critics whose minimum is taken both in the target
and in the actor's objective: out-of-distribution actions, where the ensemble disagrees,
get a low minimum, so the clipped ensemble is pessimistic exactly where the data are
thin. EDAC adds a term that makes the critics' action gradients at the data points
point in different directions, which reaches the same pessimism with far fewer critics.
:class:`EDACLoss` is both (SAC-N is ``eta=0``, :class:`SACNLoss`); TorchRL has neither.
"""

from __future__ import annotations

from typing import Any

import torch
from tensordict import TensorDictBase
from tensordict.nn import ProbabilisticTensorDictSequential, TensorDictModule, dispatch
from torch import Tensor, nn
from torchrl.modules.distributions.utils import rsample_and_log_prob
from torchrl.objectives.utils import _GAMMA_LMBDA_DEPREC_ERROR

from torchrl_offline.objectives._actor_critic import ActorCriticLoss
from torchrl_offline.objectives._checks import check_reduction
from torchrl_offline.objectives._temperature import EntropyTemperature
from torchrl_offline.objectives.common import (
    OfflineLossError,
    actor_distribution,
    check_batch,
    find_action_spec,
    td_target,
)
from torchrl_offline.objectives.declaration import AlgorithmDeclaration, ParamGroup

__all__ = [
    "EDAC_ALGORITHM",
    "EDAC_PRESETS",
    "SAC_N_ALGORITHM",
    "SAC_N_PRESETS",
    "EDACLoss",
    "SACNLoss",
    "ensemble_gradient_similarity",
]

#: The reference code's guard of the action-gradient norms (``+ 1e-10``).
GRADIENT_NORM_EPS = 1e-10

#: EDAC's published per-task ensemble sizes and diversity weights on the D4RL Gym-MuJoCo
#: v2 datasets (CORL's configs, ``configs/offline/edac/<env>/<dataset>_v2.yaml``, for the
#: paper's algorithm; 3x256 networks, learning rates 3e-4, batch 256).
EDAC_PRESETS: dict[str, dict[str, float | int]] = {
    "halfcheetah-medium": {"num_qvalue_nets": 10, "eta": 1.0},
    "halfcheetah-medium-replay": {"num_qvalue_nets": 10, "eta": 1.0},
    "halfcheetah-medium-expert": {"num_qvalue_nets": 10, "eta": 5.0},
    "hopper-medium": {"num_qvalue_nets": 50, "eta": 1.0},
    "hopper-medium-replay": {"num_qvalue_nets": 50, "eta": 1.0},
    "hopper-medium-expert": {"num_qvalue_nets": 50, "eta": 1.0},
    "walker2d-medium": {"num_qvalue_nets": 10, "eta": 1.0},
    "walker2d-medium-replay": {"num_qvalue_nets": 10, "eta": 1.0},
    "walker2d-medium-expert": {"num_qvalue_nets": 10, "eta": 5.0},
}

#: SAC-N's per-task ensemble sizes on the same datasets (CORL's configs,
#: ``configs/offline/sac_n/<env>/<dataset>_v2.yaml``): without the diversity term, Hopper
#: needs 200 to 500 critics where EDAC needs 50.
SAC_N_PRESETS: dict[str, dict[str, float | int]] = {
    "halfcheetah-medium": {"num_qvalue_nets": 10},
    "halfcheetah-medium-replay": {"num_qvalue_nets": 10},
    "halfcheetah-medium-expert": {"num_qvalue_nets": 10},
    "hopper-medium": {"num_qvalue_nets": 500},
    "hopper-medium-replay": {"num_qvalue_nets": 200},
    "hopper-medium-expert": {"num_qvalue_nets": 200},
    "walker2d-medium": {"num_qvalue_nets": 20},
    "walker2d-medium-replay": {"num_qvalue_nets": 20},
    "walker2d-medium-expert": {"num_qvalue_nets": 20},
}


def ensemble_gradient_similarity(grads: Tensor) -> Tensor:
    r"""EDAC's ensemble similarity of the critics' action gradients, per sample.

    .. math::

        \mathrm{ES}(s, a) = \frac{1}{N-1} \sum_{1 \le i \ne j \le N}
            \langle \hat g_i, \hat g_j \rangle, \qquad
            \hat g_i = \frac{\nabla_a Q_i(s, a)}{\lVert \nabla_a Q_i(s, a) \rVert_2 + 10^{-10}}

    (the paper's Eq. 5, with the normalised gradients of its reference code). The sum
    over the :math:`N(N-1)` ordered pairs is computed as :math:`\lVert\sum_i \hat g_i
    \rVert^2 - \sum_i \lVert \hat g_i \rVert^2`, in :math:`O(N)` rather than
    :math:`O(N^2)`.

    Args:
        grads (Tensor): ``[N, *batch, action_dim]``, each critic's gradient with respect
            to the action.

    Returns:
        Tensor: ``[*batch]``.

    Examples:
        >>> import torch
        >>> from torchrl_offline.objectives.edac import ensemble_gradient_similarity
        >>> same = torch.tensor([[[1.0, 0.0]], [[2.0, 0.0]], [[0.5, 0.0]]])  # N=3, B=1
        >>> ensemble_gradient_similarity(same)  # 6 pairs of cosine 1, over N - 1 = 2
        tensor([3.])
        >>> ensemble_gradient_similarity(torch.tensor([[[1.0, 0.0]], [[0.0, 1.0]]]))
        tensor([0.])
    """
    n = grads.shape[0]
    if n < 2:
        raise OfflineLossError(f"the ensemble similarity needs at least 2 critics, got {n}")
    unit = grads / (grads.norm(dim=-1, keepdim=True) + GRADIENT_NORM_EPS)
    total = unit.sum(0).pow(2).sum(-1)
    own = unit.pow(2).sum(-1).sum(0)
    return (total - own) / (n - 1)


class EDACLoss(EntropyTemperature, ActorCriticLoss):
    r"""EDAC and SAC-N (An et al., "Uncertainty-Based Offline Reinforcement Learning with
    Diversified Q-Ensemble", NeurIPS 2021).

    SAC with ``N`` critics (one batched computation over stacked parameters) and the
    minimum over all of them, with an automatic entropy temperature :math:`\alpha`:

    .. math::

        y &= r + \gamma (1 - d) \Big(\min_{j} \bar Q_j(s', a') - \alpha \log\pi(a'|s')\Big),
            \quad a' \sim \pi(\cdot|s'), \\
        L_Q &= \sum_{i=1}^{N} \big(Q_i(s, a) - y\big)^2
            + \eta\, \mathrm{ES}(s, a), \\
        L_\pi &= \alpha \log \pi(\tilde a|s) - \min_j Q_j(s, \tilde a),
            \quad \tilde a \sim \pi(\cdot|s), \\
        L_\alpha &= -\log\alpha \,\big(\log \pi(\tilde a|s) + \bar{\mathcal H}\big),

    where :math:`\bar Q_j` are the target critics, :math:`\bar{\mathcal H} = -\dim(A)`
    and :math:`\mathrm{ES}` is the ensemble similarity of the critics' gradients at the
    logged actions (:func:`ensemble_gradient_similarity`: unit-normalised
    :math:`\nabla_a Q_i`, summed inner products over the ordered pairs :math:`i \ne j`,
    divided by :math:`N - 1`; the batch mean with the default reduction, as in the
    reference code). The critics get no gradient from :math:`L_\pi` and the actor none
    from :math:`L_Q`; only the critics learn from :math:`\mathrm{ES}` (the logged
    actions are data). ``loss_diversity`` is :math:`\eta\,\mathrm{ES}`, written only
    when ``eta > 0``: with ``eta=0`` this is SAC-N and the diversity term (a second-order
    gradient through every critic) is not computed at all.

    Differences from the reference code, none of which change the objective: the
    reference computes the diversity term on a random subset of ``min(N, dim(A))``
    critics each update (CORL, whose scores match the paper's, uses all ``N``, as here);
    and the three losses are computed from the same batch and summed (the reference
    steps the temperature, then the actor, then the critics, each with its own
    optimizer, so its critic target already uses the updated actor).

    Args:
        actor_network (ProbabilisticTensorDictSequential): the stochastic actor, e.g. a
            :class:`~torchrl.modules.ProbabilisticActor` with a
            :class:`~torchrl.modules.TanhNormal` distribution (SAC's).
        qvalue_network (TensorDictModule): :math:`Q(s, a)` writing
            ``"state_action_value"``; copied ``num_qvalue_nets`` times with fresh
            parameters and evaluated as one batched computation.

    Keyword Args:
        num_qvalue_nets (int, optional): the ensemble size :math:`N` (at least 2).
            Defaults to ``10`` (the paper's and CORL's default; per-task values:
            :data:`EDAC_PRESETS`, :data:`SAC_N_PRESETS`).
        eta (float, optional): the weight :math:`\eta` of the ensemble similarity;
            ``0`` is SAC-N. Defaults to ``1.0``.
        loss_function (str, optional): the critics' regression, ``"l2"`` (the paper's
            squared error), ``"l1"`` or ``"smooth_l1"``. Defaults to ``"l2"``.
        alpha_init (float, optional): the initial temperature. Defaults to ``1.0``.
        min_alpha (float, optional): a lower bound on the temperature. Defaults to
            ``None``.
        max_alpha (float, optional): an upper bound on the temperature. Defaults to
            ``None``.
        fixed_alpha (bool, optional): keep the temperature at ``alpha_init``. Defaults to
            ``False`` (automatic entropy tuning, as in the paper).
        target_entropy (float or "auto", optional): :math:`\bar{\mathcal H}`; ``"auto"``
            is ``-dim(A)``. Defaults to ``"auto"``.
        action_spec (TensorSpec, optional): the action spec, for ``dim(A)``; read from
            the actor's ``spec`` when omitted.
        gamma (float, optional): deprecated, use :meth:`make_value_estimator`.
        priority_key (str, optional): deprecated, use ``set_keys(priority=...)``.
        reduction (str, optional): ``"none"``, ``"mean"`` or ``"sum"``. Defaults to
            ``"mean"``.
        deactivate_vmap (bool, optional): evaluate critics that are not plain MLPs in a
            Python loop instead of ``torch.vmap``. Defaults to ``False``.
        use_prioritized_weights (str or bool, optional): weight the actor and critic
            losses by the ``priority_weight`` entry when present (``"auto"``). Defaults
            to ``"auto"``.
        check_inputs (bool, optional): check the batch for missing keys and NaN/inf and
            the losses for NaN/inf. The check reads one value back to the host per
            update (a device sync on GPU); ``False`` removes it. Defaults to ``True``.

    Raises:
        OfflineLossError: ``num_qvalue_nets < 2`` (the clipped ensemble and the
            similarity need an ensemble), or no action dimension for
            ``target_entropy="auto"``.

    Examples:
        >>> import torch
        >>> from tensordict import TensorDict
        >>> from tensordict.nn import NormalParamExtractor, TensorDictModule
        >>> from torch import nn
        >>> from torchrl.data import Bounded
        >>> from torchrl.modules import MLP, ProbabilisticActor, TanhNormal, ValueOperator
        >>> from torchrl.objectives import SoftUpdate
        >>> from torchrl_offline.objectives.edac import EDACLoss
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
        >>> loss = EDACLoss(actor, qvalue, num_qvalue_nets=5, eta=1.0)
        >>> loss.make_value_estimator(gamma=0.99)
        >>> updater = SoftUpdate(loss, tau=0.005)
        >>> data = TensorDict({
        ...     "observation": torch.randn(8, n_obs), "action": spec.rand((8,)),
        ...     ("next", "observation"): torch.randn(8, n_obs),
        ...     ("next", "reward"): torch.randn(8, 1),
        ...     ("next", "done"): torch.zeros(8, 1, dtype=torch.bool),
        ...     ("next", "terminated"): torch.zeros(8, 1, dtype=torch.bool)}, [8])
        >>> out = loss(data)
        >>> sorted(k for k in out.keys() if k.startswith("loss_"))
        ['loss_actor', 'loss_alpha', 'loss_diversity', 'loss_qvalue']
        >>> sum(v for k, v in out.items() if k.startswith("loss_")).backward()
        >>> updater.step()
        >>> out["pred_value"].shape  # every critic's value of the logged actions
        torch.Size([5, 8])
    """

    def __init__(
        self,
        actor_network: ProbabilisticTensorDictSequential,
        qvalue_network: TensorDictModule,
        *,
        num_qvalue_nets: int = 10,
        eta: float = 1.0,
        loss_function: str = "l2",
        alpha_init: float = 1.0,
        min_alpha: float | None = None,
        max_alpha: float | None = None,
        fixed_alpha: bool = False,
        target_entropy: str | float = "auto",
        action_spec=None,
        gamma: float | None = None,
        priority_key: str | None = None,
        reduction: str | None = None,
        deactivate_vmap: bool = False,
        use_prioritized_weights: str | bool = "auto",
        check_inputs: bool = True,
    ) -> None:
        if gamma is not None:
            raise TypeError(_GAMMA_LMBDA_DEPREC_ERROR)
        reduction = check_reduction(reduction, loss_function)
        if isinstance(num_qvalue_nets, bool) or int(num_qvalue_nets) < 2:
            raise OfflineLossError(
                f"num_qvalue_nets must be at least 2 for EDAC/SAC-N (the minimum over an "
                f"ensemble of critics is the method), got {num_qvalue_nets}"
            )
        if eta < 0:
            raise ValueError(f"eta must be >= 0, got {eta}")
        super().__init__()
        self._in_keys = None
        self._set_deprecated_ctor_keys(priority=priority_key)
        self.num_qvalue_nets = int(num_qvalue_nets)
        self.eta = float(eta)
        self.loss_function = loss_function
        self.reduction = reduction
        self.deactivate_vmap = deactivate_vmap
        self.use_prioritized_weights = use_prioritized_weights
        self.check_inputs = check_inputs
        self.convert_to_functional(actor_network, "actor_network", create_target_params=False)
        self.convert_to_functional(
            qvalue_network, "qvalue_network", self.num_qvalue_nets, create_target_params=True
        )
        spec = action_spec if action_spec is not None else getattr(actor_network, "spec", None)
        spec = find_action_spec(spec, self.tensor_keys.action)
        action_dim = None if spec is None or not spec.shape else int(spec.shape[-1])
        if target_entropy == "auto" and action_dim is None:
            raise OfflineLossError(
                "target_entropy='auto' is -dim(A): pass action_spec (or an actor with a "
                "spec), or a number as target_entropy"
            )
        device = next(iter(self.actor_network_params.values(True, True))).device
        self._init_temperature(
            alpha_init=alpha_init,
            min_alpha=min_alpha,
            max_alpha=max_alpha,
            fixed_alpha=fixed_alpha,
            target_entropy=target_entropy,
            action_dim=action_dim,
            device=device,
        )
        self._checked_action = False
        self._num_calls = 0
        self.register_load_state_dict_post_hook(self._drop_caches)

    _out_keys: list[str] | None = None

    @property
    def out_keys(self) -> list[str]:
        """The loss terms (``loss_diversity`` only with ``eta > 0``) and diagnostics."""
        if self._out_keys is not None:  # set by select_out_keys
            return self._out_keys
        losses = ["loss_actor", "loss_qvalue", "loss_diversity", "loss_alpha"]
        if self.eta == 0:
            losses.remove("loss_diversity")
        return [*losses, "alpha", "entropy", "pred_value", "target_value", "q_std"]

    @out_keys.setter
    def out_keys(self, values: list[str]) -> None:
        self._out_keys = list(values)

    # ------------------------------------------------------------------ network calls
    def _sample(self, tensordict: TensorDictBase, *, nxt: bool) -> tuple[Tensor, Tensor]:
        """A reparameterised action of the policy at ``s`` (or ``s'``) and its log-density."""
        td = tensordict.get("next") if nxt else tensordict
        dist = actor_distribution(self.actor_network, self.actor_network_params, td)
        action, log_prob = rsample_and_log_prob(dist)
        if log_prob.shape != td.batch_size:  # a distribution without an event dim
            log_prob = log_prob.reshape(*td.batch_size, -1).sum(-1)
        if not self._checked_action:
            self._check_action(action, tensordict.get(self.tensor_keys.action), verb="samples")
            self._checked_action = True
        return action, log_prob

    def _data_values(
        self, tensordict: TensorDictBase, *, diversity: bool
    ) -> tuple[Tensor, Tensor | None]:
        """Every critic's value of the logged actions, ``[N, *batch]``, and, with
        ``diversity``, the ensemble similarity of their action gradients, ``[*batch]``.

        For the similarity each critic reads its own copy of the action (one batched
        call), so that the gradient of the summed values with respect to copy ``i`` is
        critic ``i``'s own; it is kept in the graph (``create_graph``) so that the
        similarity trains the critics.
        """
        params = self._critic_params("qvalue_network_params")
        action = tensordict.get(self.tensor_keys.action)
        if not diversity:
            return self._critics(params, self._q_inputs(tensordict, action, nxt=False)), None
        n = self.num_qvalue_nets
        train = torch.is_grad_enabled()
        with torch.enable_grad():
            copies = action.detach().expand(n, *action.shape).clone().requires_grad_(True)
            inputs = self._q_inputs(tensordict, copies, nxt=False)
            inputs = [x if x is copies else x.expand(n, *x.shape) for x in inputs]
            pred = self._critics(params, inputs, stacked_inputs=True)
            (grads,) = torch.autograd.grad(pred.sum(), copies, create_graph=train)
        return pred, ensemble_gradient_similarity(grads)

    def _reduce(self, loss: Tensor, tensordict: TensorDictBase, weights: Tensor | None) -> Tensor:
        return self._reduce_loss(loss, tensordict=tensordict, weights=weights)

    def _mean(self, value: Tensor) -> Tensor:
        """A detached diagnostic: per sample with ``reduction="none"``, else its mean."""
        value = value.detach()
        return value if self.reduction == "none" else value.mean()

    # ------------------------------------------------------------------ losses
    def actor_loss(self, tensordict: TensorDictBase) -> tuple[Tensor, dict[str, Tensor]]:
        """SAC's actor loss ``alpha log pi(a~|s) - min_j Q_j(s, a~)``, the critics frozen.

        Returns:
            ``(loss_actor, metadata)`` with the detached per-sample ``"log_prob"`` of the
            sampled actions (what :meth:`alpha_loss` takes) and ``"entropy"``.
        """
        action, log_prob = self._sample(tensordict, nxt=False)
        q = self._critics(self._cache_q_detached, self._q_inputs(tensordict, action, nxt=False))
        loss = self._alpha * log_prob - q.min(0).values
        weights = self._maybe_get_priority_weight(tensordict)
        metadata = {"log_prob": log_prob.detach(), "entropy": self._mean(-log_prob)}
        return self._reduce(loss, tensordict, weights), metadata

    def alpha_loss(
        self, actor_metadata: dict[str, Tensor], tensordict: TensorDictBase | None = None
    ) -> tuple[Tensor, dict[str, Tensor]]:
        """The temperature's loss ``-log alpha (log pi + target_entropy)``.

        Args:
            actor_metadata (dict): the metadata of :meth:`actor_loss`.
            tensordict (TensorDictBase, optional): the batch, for its masks.
        """
        loss = self._temperature_loss(actor_metadata["log_prob"])
        return self._reduce_loss(loss, tensordict=tensordict), {"alpha": self._alpha}

    def qvalue_loss(self, tensordict: TensorDictBase) -> tuple[Tensor, dict[str, Tensor]]:
        """Every critic's squared error to the clipped soft target (no diversity term).

        Returns:
            ``(loss_qvalue, metadata)`` with ``"td_error"`` (``[N, *batch]``) and the
            detached ``"pred_value"``, ``"next_state_value"``, ``"target_value"`` and
            ``"q_std"`` (the ensemble's standard deviation at the logged actions).
        """
        losses, metadata = self._critic_losses(tensordict, diversity=False)
        return losses["loss_qvalue"], metadata

    def diversity_loss(self, tensordict: TensorDictBase) -> tuple[Tensor, dict[str, Tensor]]:
        """``eta`` times the ensemble similarity of the critics' action gradients.

        Returns:
            ``(loss_diversity, metadata)`` with the detached, unweighted ``"diversity"``.
        """
        _, es = self._data_values(tensordict, diversity=True)
        weights = self._maybe_get_priority_weight(tensordict)
        loss = self._reduce(self.eta * es, tensordict, weights)
        return loss, {"diversity": self._mean(es)}

    def _critic_losses(
        self, tensordict: TensorDictBase, *, diversity: bool
    ) -> tuple[dict[str, Tensor], dict[str, Tensor]]:
        """The critics' regression (and diversity term) from one batched critic call."""
        weights = self._maybe_get_priority_weight(tensordict)
        with torch.no_grad():
            next_action, next_log_prob = self._sample(tensordict, nxt=True)
            next_q = self._critics(
                self._critic_params("target_qvalue_network_params"),
                self._q_inputs(tensordict, next_action, nxt=True),
            )
            next_value = next_q.min(0).values - self._alpha * next_log_prob
            target_value = td_target(self, tensordict, next_value)
        pred, es = self._data_values(tensordict, diversity=diversity)
        loss_qvalue, metadata = self._critic_regression(
            pred, target_value, next_value, tensordict, weights
        )
        metadata["q_std"] = self._mean(pred.std(0))
        losses = {"loss_qvalue": loss_qvalue}
        if es is not None:
            losses["loss_diversity"] = self._reduce(self.eta * es, tensordict, weights)
            metadata["diversity"] = self._mean(es)
        return losses, metadata

    @dispatch
    def forward(self, tensordict: TensorDictBase) -> TensorDictBase:
        """Computes every EDAC loss term on one batch.

        :meth:`actor_loss` and :meth:`alpha_loss` at a policy sample at ``s``, then the
        critics' regression on the clipped soft target and, with ``eta > 0``, the
        diversity term, both from one batched call of all critics at the logged actions.
        Writes the per-sample TD error (max over critics) to the ``priority`` key of
        ``tensordict``.

        Returns:
            TensorDict: ``loss_actor``, ``loss_qvalue``, ``loss_diversity`` (``eta > 0``),
            ``loss_alpha`` and the detached ``alpha``, ``entropy``, ``pred_value``,
            ``next_state_value``, ``target_value``, ``q_std`` (and ``diversity``).
        """
        if self.check_inputs:
            check_batch(tensordict, self.in_keys, finite=False)
        loss_actor, actor_metadata = self.actor_loss(tensordict)
        loss_alpha, alpha_metadata = self.alpha_loss(actor_metadata, tensordict)
        losses, metadata = self._critic_losses(tensordict, diversity=self.eta > 0)
        losses = {"loss_actor": loss_actor, **losses, "loss_alpha": loss_alpha}
        metadata.update(alpha_metadata, entropy=actor_metadata["entropy"])
        return self._pack(tensordict, losses, metadata, "_num_calls")


class SACNLoss(EDACLoss):
    r"""SAC-N (An et al., 2021): :class:`EDACLoss` without the diversity term.

    The same loss with ``eta=0`` by default: ``N`` critics, the minimum over all of
    them in the soft target and in the actor's objective, and no ``loss_diversity``.
    The paper needs larger ensembles for it than for EDAC (:data:`SAC_N_PRESETS`).

    Keyword Args:
        eta (float, optional): the ensemble-similarity weight. Defaults to ``0.0``.
        **kwargs: the other arguments of :class:`EDACLoss`.

    Examples:
        >>> import torch
        >>> from tensordict.nn import NormalParamExtractor, TensorDictModule
        >>> from torchrl.data import Bounded
        >>> from torchrl.modules import MLP, ProbabilisticActor, TanhNormal, ValueOperator
        >>> from torchrl_offline.objectives.edac import SACNLoss
        >>> spec = Bounded(-1.0, 1.0, (1,))
        >>> actor = ProbabilisticActor(
        ...     TensorDictModule(torch.nn.Sequential(torch.nn.Linear(3, 2),
        ...                      NormalParamExtractor()),
        ...                      in_keys=["observation"], out_keys=["loc", "scale"]),
        ...     in_keys=["loc", "scale"], spec=spec, distribution_class=TanhNormal)
        >>> q = ValueOperator(MLP(in_features=4, out_features=1, num_cells=[8]),
        ...                   in_keys=["observation", "action"])
        >>> loss = SACNLoss(actor, q, num_qvalue_nets=20)
        >>> loss.eta, "loss_diversity" in loss.out_keys
        (0.0, False)
    """

    def __init__(
        self,
        actor_network: ProbabilisticTensorDictSequential,
        qvalue_network: TensorDictModule,
        *,
        eta: float = 0.0,
        **kwargs: Any,
    ) -> None:
        super().__init__(actor_network, qvalue_network, eta=eta, **kwargs)


# ------------------------------------------------------------------------- declaration
def _temperature(loss: EDACLoss) -> list[nn.Parameter]:
    return [loss.log_alpha] if isinstance(loss.log_alpha, nn.Parameter) else []


_EDAC_COMMON = {
    "networks": lambda nets, hp: {
        "actor_network": nets.tanh_normal_actor(),
        "qvalue_network": nets.qvalue(),
    },
    "optimizer": (
        ParamGroup("actor", "actor_lr", "actor_network_params"),
        ParamGroup("qvalue", "critic_lr", "qvalue_network_params"),
        ParamGroup("alpha", "alpha_lr", _temperature),
    ),
    "loss_terms": ("loss_actor", "loss_qvalue", "loss_diversity", "loss_alpha"),
    "defaults": {
        "hidden_sizes": (256, 256, 256),
        "actor_lr": 3e-4,
        "critic_lr": 3e-4,
        "alpha_lr": 3e-4,
    },
    "action_spec_argument": "action_spec",
}

#: EDAC as :func:`~torchrl_offline.trainers.algorithms.build_algorithm` builds it: SAC's
#: ``TanhNormal`` actor, 10 ``Q(s, a)`` critics, 3x256 MLPs and Adam at 3e-4 for the
#: actor, the critics and the temperature (the paper's and CORL's settings); per-task
#: ensemble sizes and weights: :data:`EDAC_PRESETS`.
EDAC_ALGORITHM = AlgorithmDeclaration(
    name="edac", loss_class=EDACLoss, presets=EDAC_PRESETS, **_EDAC_COMMON
)

#: SAC-N: the same networks and optimizer with :class:`SACNLoss` (``eta=0``); per-task
#: ensemble sizes: :data:`SAC_N_PRESETS`.
SAC_N_ALGORITHM = AlgorithmDeclaration(
    name="sac_n", loss_class=SACNLoss, presets=SAC_N_PRESETS, **_EDAC_COMMON
)
