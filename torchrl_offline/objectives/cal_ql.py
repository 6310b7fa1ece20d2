"""Cal-QL: calibrated conservative Q-learning (Nakamoto et al., 2023).

CQL pushes down the values of the policy's actions; on offline data that can push them
below what the behaviour policy already earns, and the first online updates then spend
themselves "unlearning" the underestimate (the dip at the start of fine-tuning). Cal-QL
bounds the policy's values from below, inside CQL's conservative term, by a reference
value: the Monte Carlo return of the logged episode from that state (``"mc_return"``,
derived from the data's episode order by the trainers:
:mod:`torchrl_offline.data.episodes`). Everything else is CQL.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from tensordict import TensorDict, TensorDictBase
from tensordict.nn import TensorDictModule, dispatch
from tensordict.utils import NestedKey, unravel_key
from torch import Tensor

from torchrl_offline.objectives.common import OfflineLossError
from torchrl_offline.objectives.cql import CQL_ALGORITHM, CQLLoss
from torchrl_offline.objectives.declaration import AlgorithmDeclaration

__all__ = ["CAL_QL_ALGORITHM", "CAL_QL_PRESETS", "CalQLLoss"]

#: Cal-QL's published settings (the authors' released example commands, JaxCQL
#: parametrisation ``alpha' w (gap - tau)``, which is ``alpha' (w gap - w tau)`` here):
#:
#: * ``"antmaze"``: weight 5 tuned by dual descent to an unweighted gap of 0.8 (the
#:   constructor's defaults);
#: * ``"kitchen"``: a fixed weight 5.
CAL_QL_PRESETS: dict[str, dict[str, float | bool]] = {
    "antmaze": {"min_q_weight": 5.0, "with_lagrange": True, "lagrange_thresh": 4.0},
    "kitchen": {"min_q_weight": 5.0, "with_lagrange": False},
}


class CalQLLoss(CQLLoss):
    r"""Cal-QL loss (Nakamoto, Zhai, Singh, Sobol Mark, Ma, Finn, Kumar & Levine,
    "Cal-QL: Calibrated Offline RL Pre-Training for Efficient Online Fine-Tuning",
    NeurIPS 2023).

    :class:`~torchrl_offline.objectives.CQLLoss` with one change in the conservative
    term: the values of the actions sampled from the policy (at :math:`s` and, for
    CQL(H), at :math:`s'`) are bounded from below by the reference value :math:`V^\mu(s)`,
    the Monte Carlo return :math:`R(s)` of the logged episode from :math:`s`:

    .. math::

        \mathcal{R}(\theta) = \log \sum_{a \sim \mathcal{U}} e^{Q(s, a) - \log \mathcal{U}(a)}
        + \sum_{a \sim \pi} e^{\max(Q(s, a), R(s)) - \log \pi(a | s)} - Q(s, a_{\text{data}}),

    so the term stops pushing a policy value down once it is below what the data's
    behaviour earned. Uniform actions are not bounded. The Bellman target, actor and
    temperature losses are CQL's.

    Defaults are the paper's AntMaze setting (its authors' released command): weight 5
    tuned by dual descent to an unweighted gap of 0.8 (``lagrange_thresh = 5 * 0.8``
    in this parametrisation); :data:`CAL_QL_PRESETS` has the Kitchen one.

    Episodes cut by a time limit (or by the end of the data): their Monte Carlo return
    stops at the cut, as in the paper, which is not a lower bound of :math:`V^\mu` where
    the rewards are negative (it leaves out a negative tail). With
    ``bootstrap_truncated=True`` the tail is estimated and added,

    .. math::

        R(s_t) = \sum_{k=t}^{T} \gamma^{k-t} r_k + \gamma^{T-t+1}
            \min_j \bar Q_j\big(s_{T+1}, a\big),\quad a \sim \pi(s_{T+1}),

    from the batch's ``"mc_tail_discount"`` (:math:`\gamma^{T-t+1}`, 0 where the episode
    terminated) and ``"mc_tail_observation"`` (:math:`s_{T+1}`), which the trainers
    derive with the returns.

    Args:
        actor_network, qvalue_network: as in :class:`~torchrl_offline.objectives.CQLLoss`.

    Keyword Args:
        min_q_weight (float, optional): the conservative weight. Defaults to ``5.0``.
        with_lagrange (bool, optional): tune the weight by dual descent. Defaults to
            ``True``.
        lagrange_thresh (float, optional): the dual threshold on the weighted gap.
            Defaults to ``4.0``.
        bootstrap_truncated (bool, optional): add the target critics' estimate of the
            tail to the returns of truncated episodes (above). Defaults to ``False``
            (the paper's returns).
        **kwargs: the other arguments of :class:`~torchrl_offline.objectives.CQLLoss`.

    Examples:
        >>> import torch
        >>> from tensordict import TensorDict
        >>> from tensordict.nn import NormalParamExtractor, TensorDictModule
        >>> from torchrl.data import Bounded
        >>> from torchrl.modules import MLP, ProbabilisticActor, TanhNormal, ValueOperator
        >>> from torchrl_offline.objectives import CalQLLoss
        >>> spec = Bounded(-1.0, 1.0, (1,))
        >>> actor = ProbabilisticActor(
        ...     TensorDictModule(torch.nn.Sequential(MLP(in_features=3, out_features=2,
        ...                      num_cells=[16]), NormalParamExtractor()),
        ...                      in_keys=["observation"], out_keys=["loc", "scale"]),
        ...     in_keys=["loc", "scale"], spec=spec, distribution_class=TanhNormal)
        >>> qvalue = ValueOperator(MLP(in_features=4, out_features=1, num_cells=[16]),
        ...                        in_keys=["observation", "action"])
        >>> loss = CalQLLoss(actor, qvalue)
        >>> _ = loss.make_value_estimator(gamma=0.99)
        >>> batch = TensorDict({
        ...     "observation": torch.randn(8, 3), "action": spec.rand((8,)),
        ...     "mc_return": torch.randn(8, 1),
        ...     ("next", "observation"): torch.randn(8, 3),
        ...     ("next", "reward"): torch.randn(8, 1),
        ...     ("next", "done"): torch.zeros(8, 1, dtype=torch.bool),
        ...     ("next", "terminated"): torch.zeros(8, 1, dtype=torch.bool)}, [8])
        >>> out = loss(batch)
        >>> 0 <= out["bounded_fraction"].item() <= 1
        True
    """

    @dataclass
    class _AcceptedKeys(CQLLoss._AcceptedKeys):
        """CQL's keys (:class:`~torchrl_offline.objectives.CQLLoss`) and:

        Attributes:
            mc_return (NestedKey): the reference value, the Monte Carlo return of the
                logged episode from the state. Defaults to ``"mc_return"``.
            tail_discount (NestedKey): ``gamma^(T - t + 1)`` where the episode was cut,
                0 where it terminated (read with ``bootstrap_truncated`` only).
                Defaults to ``"mc_tail_discount"``.
            tail_observation (NestedKey): the observation after the episode's last step
                (read with ``bootstrap_truncated`` only). Defaults to
                ``"mc_tail_observation"``.
        """

        mc_return: NestedKey = "mc_return"
        tail_discount: NestedKey = "mc_tail_discount"
        tail_observation: NestedKey = "mc_tail_observation"

    tensor_keys: _AcceptedKeys
    default_keys = _AcceptedKeys
    PRESETS = CAL_QL_PRESETS

    def __init__(
        self,
        actor_network: TensorDictModule,
        qvalue_network: TensorDictModule | list[TensorDictModule],
        *,
        min_q_weight: float = 5.0,
        with_lagrange: bool = True,
        lagrange_thresh: float = 4.0,
        bootstrap_truncated: bool = False,
        **kwargs: Any,
    ) -> None:
        self.bootstrap_truncated = bool(bootstrap_truncated)
        super().__init__(
            actor_network,
            qvalue_network,
            min_q_weight=min_q_weight,
            with_lagrange=with_lagrange,
            lagrange_thresh=lagrange_thresh,
            **kwargs,
        )
        self._bounded = torch.zeros(())

    @property
    def out_keys(self) -> list[str]:
        return [*super().out_keys, "bounded_fraction"]

    @out_keys.setter
    def out_keys(self, values) -> None:
        self._out_keys = values

    def _set_in_keys(self) -> None:
        super()._set_in_keys()
        keys = [self.tensor_keys.mc_return]
        if self.bootstrap_truncated:
            keys += [self.tensor_keys.tail_discount, self.tensor_keys.tail_observation]
        for key in map(unravel_key, keys):
            if key not in self._in_keys:
                self._in_keys.append(key)

    def _per_sample(self, td: TensorDictBase, key: NestedKey, n: int, what: str) -> Tensor:
        value = td.get(key)
        if value.numel() != n:
            raise OfflineLossError(
                f"{key!r} must hold one {what} per sample, got shape {tuple(value.shape)} "
                f"for {n} samples"
            )
        return value.reshape(-1)

    def reference_values(self, td: TensorDictBase) -> Tensor:
        """The lower bound :math:`R(s)` of a flat batch, ``[B]``: the Monte Carlo return,
        plus the estimated tail of truncated episodes with ``bootstrap_truncated``."""
        n = td.shape[0]
        bound = self._per_sample(td, self.tensor_keys.mc_return, n, "return")
        if not self.bootstrap_truncated:
            return bound
        discount = self._per_sample(td, self.tensor_keys.tail_discount, n, "discount")
        discount = discount.to(bound.dtype)
        obs_keys = [unravel_key(k) for k in self.actor_network.in_keys]
        if len(obs_keys) != 1:
            raise OfflineLossError(
                f"bootstrap_truncated needs an actor with one observation input, got {obs_keys}"
            )
        tail = {obs_keys[0]: td.get(self.tensor_keys.tail_observation)}
        with torch.no_grad():
            action, _ = self._backup_action(self._policy(TensorDict(tail, [n])))
            critic_obs = {unravel_key(k): tail[obs_keys[0]] for k in self._critic_obs_keys()}
            value = self._q(self.target_qvalue_network_params, critic_obs, action).min(0).values
        return bound + discount * torch.where(discount > 0, value, torch.zeros_like(value))

    def _bound_policy_values(self, q_samples: Tensor, td: TensorDictBase) -> Tensor:
        """``max(Q(s, a), R(s))`` for the policy's sampled actions (the last ``2N``, or
        all ``N`` for CQL(rho)); the uniform ones as they are."""
        bound = self.reference_values(td).reshape(1, 1, -1).to(q_samples.dtype)
        start = 0 if self.cql_variant == "rho" else self.num_random
        policy = q_samples[:, start:]
        self._bounded = (policy < bound).float().mean().detach()
        return torch.cat([q_samples[:, :start], torch.maximum(policy, bound)], 1)

    @dispatch
    def forward(self, tensordict: TensorDictBase) -> TensorDictBase:
        """CQL's terms (:meth:`CQLLoss.forward`) with the calibrated conservative term,
        plus ``bounded_fraction``: the share of the policy's sampled values the bound
        lifted."""
        out = super().forward(tensordict)
        bounded = self._bounded
        if self.reduction == "none":
            bounded = bounded.expand(tensordict.batch_size)
        out.set("bounded_fraction", bounded)
        return out


#: Cal-QL as :func:`~torchrl_offline.trainers.algorithms.build_algorithm` builds it:
#: CQL's networks, optimizer and learning rates (:data:`CQL_ALGORITHM`), the paper's
#: AntMaze conservative term, and the Monte Carlo returns of the logged episodes added to
#: the batches by the trainers (online episodes' too, when fine-tuning: its point).
CAL_QL_ALGORITHM = AlgorithmDeclaration(
    name="cal_ql",
    loss_class=CalQLLoss,
    networks=CQL_ALGORITHM.networks,
    optimizer=CQL_ALGORITHM.optimizer,
    loss_terms=CQL_ALGORITHM.loss_terms,
    defaults=dict(CQL_ALGORITHM.defaults),
    presets=CAL_QL_PRESETS,
    action_spec_argument="action_spec",
    derived_keys=("mc_return", "mc_tail_discount", "mc_tail_observation"),
)
