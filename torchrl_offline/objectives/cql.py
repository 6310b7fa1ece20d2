"""Conservative Q-Learning (Kumar et al., 2020) for continuous actions.

Paper: "Conservative Q-Learning for Offline Reinforcement Learning",
https://arxiv.org/abs/2006.04779.

:class:`CQLLoss` is a drop-in for :class:`torchrl.objectives.CQLLoss` (same
constructor arguments, tensordict keys and output ``loss_*`` entries) that computes
the paper's CQL(H) regulariser, a per-state log-sum-exp over all sampled actions,
and gets the Lagrange version right. The discrete loss, :class:`DiscreteCQLLoss`, lives
in :mod:`torchrl_offline.objectives.discrete_cql` and is re-exported here (TorchRL has
both in ``torchrl.objectives.cql``).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar

import torch
from tensordict import TensorDict, TensorDictBase
from tensordict.nn import TensorDictModule, dispatch
from tensordict.utils import NestedKey, unravel_key
from torch import Tensor, nn
from torchrl.modules.distributions.utils import rsample_and_log_prob
from torchrl.objectives.common import LossModule
from torchrl.objectives.utils import (
    _GAMMA_LMBDA_DEPREC_ERROR,
    _cache_values,
    distance_loss,
)

from torchrl_offline.objectives._actor_critic import ActorCriticLoss
from torchrl_offline.objectives._temperature import EntropyTemperature
from torchrl_offline.objectives.common import (
    OfflineLossError,
    action_bounds,
    actor_distribution,
    check_batch,
    check_output_dim,
    count_update,
    ensemble_apply,
    next_key,
    td_target,
    uniform_actions,
)
from torchrl_offline.objectives.declaration import AlgorithmDeclaration, ParamGroup
from torchrl_offline.objectives.discrete_cql import DISCRETE_CQL_ALGORITHM, DiscreteCQLLoss

__all__ = ["CQL_ALGORITHM", "CQL_PRESETS", "DISCRETE_CQL_ALGORITHM", "CQLLoss", "DiscreteCQLLoss"]

#: Named settings of the conservative term, by use (:meth:`CQLLoss.from_preset`).
#:
#: * ``"mujoco"``: the constructor defaults, the D4RL Gym-MuJoCo setting (CQL weight 10,
#:   fixed, no entropy bonus in the target; CORL's values).
#: * ``"lagrange"``: CQL(H) with the weight tuned by dual descent so that the gap
#:   between sampled and data actions' Q stays at the threshold 5, weight 1 and the
#:   entropy bonus in the target (the configuration of TorchRL's offline CQL example).
#:   On the small mixed-quality Pendulum dataset of ``benchmarks/learning_algos.py``
#:   (5,000 steps) the fixed weight 10 is too conservative and this preset reaches the
#:   peers' score; see ``docs/benchmarks.md``.
#: * ``"d3rlpy"``: d3rlpy 2.8's conservative term, ``5 alpha' (gap - 10)`` with the dual
#:   threshold on the unweighted gap: weight 5 and threshold ``5 * 10`` here. Level with
#:   d3rlpy on mixed-quality Pendulum data where the fixed weight 10 reaches half of it,
#:   and better on the learning table's medium and mixed datasets, but worse on expert
#:   data, where the stronger fixed weight keeps the policy on the expert's actions
#:   (``docs/benchmarks.md``).
CQL_PRESETS: dict[str, dict[str, float | bool]] = {
    "mujoco": {"min_q_weight": 10.0, "with_lagrange": False, "deterministic_backup": True},
    "lagrange": {
        "min_q_weight": 1.0,
        "with_lagrange": True,
        "lagrange_thresh": 5.0,
        "deterministic_backup": False,
    },
    "d3rlpy": {"min_q_weight": 5.0, "with_lagrange": True, "lagrange_thresh": 50.0},
}

_CQL_VARIANTS = ("H", "rho")
_BACKUP_ACTIONS = ("sample", "mean")
_SCALAR_MODES = (None, "exclude", "non_tensor")
_CONSERVATIVE_STATES = ("all", "model")


class CQLLoss(EntropyTemperature, ActorCriticLoss):
    r"""Continuous Conservative Q-Learning on top of SAC (Kumar et al., 2020).

    For each critic :math:`Q_j` the loss is the soft Bellman error plus the
    conservative penalty

    .. math::

        \alpha_{\text{cql}}\,\Big(\tau\log\sum_{k=1}^{3N}
            \exp\big((Q_j(s, a_k) - \log q(a_k))/\tau\big) - Q_j(s, a)\Big)

    where the :math:`3N` actions are ``num_random`` draws each from the uniform
    distribution on the action box (read from the action spec, density
    :math:`1/\mathrm{vol}`), from :math:`\pi(\cdot|s)` and from
    :math:`\pi(\cdot|s')` (all evaluated at :math:`s`, importance-weighted by their
    densities :math:`q`), :math:`a` is the dataset action, :math:`\tau` the
    ``temperature`` and :math:`\alpha_{\text{cql}}` the ``min_q_weight``
    (this is CQL(H), the paper's Eq. 4 with the estimator of its Appendix F).
    With ``cql_variant="rho"`` the penalty is CQL(:math:`\rho`) with
    :math:`\rho=\pi(\cdot|s)`: :math:`\sum_k w_k Q_j(s,a_k) - Q_j(s,a)` with
    :math:`a_k\sim\pi(\cdot|s)` and detached weights :math:`w=\mathrm{softmax}(Q/\tau)`.

    With ``with_lagrange=True`` the penalty becomes
    :math:`\alpha'\,(\alpha_{\text{cql}}\,\mathrm{gap}_j - \tau_{\text{lag}})` with
    :math:`\alpha'` detached in the critic loss, and ``loss_alpha_prime``
    :math:`= -\alpha'\,\overline{(\alpha_{\text{cql}}\,\mathrm{gap} - \tau_{\text{lag}})}`
    with the gap detached, so that summing every ``loss_*`` entry (as TorchRL's
    scripts do) trains the critic and :math:`\alpha'` in the right directions for
    every :math:`\alpha'`.

    The actor and temperature losses are SAC's: :math:`\alpha\log\pi(\tilde a|s) -
    \min_j Q_j(s,\tilde a)` and :math:`-\log\alpha\,(\log\pi + \bar{\mathcal H})`.
    The Bellman target is :math:`r + \gamma(1-d)\min_j \bar Q_j(s', a')`, without the
    entropy bonus by default (``deterministic_backup=True``, as in the paper's code),
    or with a max over ``num_random`` policy actions (``max_q_backup=True``).

    All critic evaluations of the conservative term (the data action and the
    ``3 * num_random`` sampled actions, for every critic) are one batched call.

    Args:
        actor_network (ProbabilisticTensorDictSequential): stochastic actor, e.g. a
            :class:`~torchrl.modules.ProbabilisticActor` with a
            :class:`~torchrl.modules.TanhNormal` distribution.
        qvalue_network (TensorDictModule or list of TensorDictModule): Q(s, a)
            network writing ``"state_action_value"``. A single module is copied
            ``num_qvalue_nets`` times with fresh parameters.

    Keyword Args:
        loss_function (str, optional): Bellman-error distance. Defaults to ``"l2"``
            (the paper's MSE; TorchRL's default is ``"smooth_l1"``).
        alpha_init (float, optional): initial entropy coefficient. Defaults to 1.0.
        min_alpha (float, optional): lower bound on alpha. Defaults to ``None``.
        max_alpha (float, optional): upper bound on alpha. Defaults to ``None``.
        action_spec (TensorSpec, optional): the action spec; read from the actor
            when omitted. Must be bounded: the uniform proposal uses its box.
        fixed_alpha (bool, optional): keep alpha at ``alpha_init``. Defaults to
            ``False`` (automatic entropy tuning).
        target_entropy (float or "auto", optional): defaults to ``-dim(A)``.
        delay_actor (bool, optional): keep target actor parameters. Defaults to
            ``False``.
        delay_qvalue (bool, optional): keep target critic parameters. Defaults to
            ``True``.
        gamma (float, optional): deprecated, use :meth:`make_value_estimator`.
        temperature (float, optional): log-sum-exp temperature. Defaults to 1.0.
        min_q_weight (float, optional): the CQL weight (paper's alpha). Defaults to
            10.0 (CORL's MuJoCo value; TorchRL's default is 1.0).
        max_q_backup (bool, optional): max over ``num_random`` policy actions in the
            target. Defaults to ``False``.
        deterministic_backup (bool, optional): no entropy bonus in the target.
            Defaults to ``True``.
        backup_action (str, optional): the next action of the Bellman target:
            ``"sample"`` (default, the paper's code and CORL: a draw from
            :math:`\pi(\cdot|s')`) or ``"mean"`` (the policy's deterministic action,
            e.g. ``tanh(loc)`` of a ``TanhNormal``, as d3rlpy does).
        num_random (int, optional): actions sampled per state from each proposal.
            Defaults to 10.
        with_lagrange (bool, optional): tune the CQL weight by dual descent.
            Defaults to ``False``.
        lagrange_thresh (float, optional): the Lagrange threshold (paper's tau).
            Defaults to 10.0.
        reduction (str, optional): ``"none"`` | ``"mean"`` | ``"sum"``. Defaults to
            ``"mean"``.
        deactivate_vmap (bool, optional): accepted for compatibility; critics that
            are plain MLPs never use vmap here.
        scalar_output_mode (str, optional): with ``reduction="none"``, ``None``
            (default) writes ``alpha`` per sample, ``"exclude"`` drops ``alpha`` and
            ``entropy``, ``"non_tensor"`` stores them as non-tensor scalars.
        cql_variant (str, optional): ``"H"`` (default) or ``"rho"``.
        num_qvalue_nets (int, optional): number of critics. Defaults to 2.
        conservative_states (str, optional): where the conservative term's states come
            from: ``"all"`` (default, CQL) pushes down the sampled actions' values and
            pushes up the logged actions' at every row; ``"model"`` (COMBO,
            :class:`~torchrl_offline.objectives.combo.COMBOLoss`) pushes down at the rows
            the batch's ``model_data`` entry marks (states of model rollouts) and up at
            the others (dataset transitions), each term averaged over its own rows.
        check_inputs (bool, optional): check the batch for missing keys and NaN/inf
            and the losses for NaN/inf. The check reads one value back to the host per
            update (a device sync on GPU); ``False`` removes it. Defaults to ``True``.

    Examples:
        >>> import torch
        >>> from torch import nn
        >>> from tensordict import TensorDict
        >>> from tensordict.nn import NormalParamExtractor, TensorDictModule
        >>> from torchrl.data import Bounded
        >>> from torchrl.modules import MLP, ProbabilisticActor, TanhNormal, ValueOperator
        >>> from torchrl_offline.objectives.cql import CQLLoss
        >>> n_obs, n_act = 3, 2
        >>> spec = Bounded(-2.0, 2.0, (n_act,))
        >>> actor = ProbabilisticActor(
        ...     TensorDictModule(nn.Sequential(MLP(in_features=n_obs, out_features=2 * n_act,
        ...         num_cells=[16]), NormalParamExtractor()), ["observation"], ["loc", "scale"]),
        ...     in_keys=["loc", "scale"], spec=spec, distribution_class=TanhNormal,
        ...     distribution_kwargs={"low": spec.space.low, "high": spec.space.high})
        >>> qvalue = ValueOperator(MLP(in_features=n_obs + n_act, out_features=1, num_cells=[16]),
        ...                        in_keys=["observation", "action"])
        >>> loss = CQLLoss(actor, qvalue)
        >>> loss.make_value_estimator(gamma=0.99)
        >>> data = TensorDict({
        ...     "observation": torch.randn(8, n_obs), "action": spec.rand((8,)),
        ...     ("next", "observation"): torch.randn(8, n_obs),
        ...     ("next", "reward"): torch.randn(8, 1),
        ...     ("next", "done"): torch.zeros(8, 1, dtype=torch.bool),
        ...     ("next", "terminated"): torch.zeros(8, 1, dtype=torch.bool)}, [8])
        >>> out = loss(data)
        >>> sorted(k for k in out.keys() if k.startswith("loss_"))
        ['loss_actor', 'loss_actor_bc', 'loss_alpha', 'loss_cql', 'loss_qvalue']
    """

    @dataclass
    class _AcceptedKeys:
        """Maintains default values for all configurable tensordict keys.

        Attributes:
            action (NestedKey): the logged action. Defaults to ``"action"``.
            value (NestedKey): the next-state value handed to the value estimator.
                Defaults to ``"state_value"``.
            state_action_value (NestedKey): the critic's output. Defaults to
                ``"state_action_value"``.
            log_prob (NestedKey): the policy log-probability (actor metadata).
                Defaults to ``"_log_prob"``.
            pred_q1 (NestedKey): where :meth:`q_loss` writes the first critic's value
                of the logged action, read by :meth:`cql_loss`. Defaults to
                ``"pred_q1"`` (critics beyond the second: ``"pred_q3"``, ...).
            pred_q2 (NestedKey): the same for the second critic. Defaults to
                ``"pred_q2"``.
            priority (NestedKey): where the TD error is written for prioritized
                replay. Defaults to ``"td_error"``.
            cql_q1_loss (NestedKey): where :meth:`cql_loss` writes the first critic's
                weighted conservative gap, read by :meth:`alpha_prime_loss`. Defaults to
                ``"cql_q1_loss"`` (critics beyond the second: ``"cql_q3_loss"``, ...).
            cql_q2_loss (NestedKey): the same for the second critic. Defaults to
                ``"cql_q2_loss"``.
            reward (NestedKey): the reward, under ``"next"``. Defaults to ``"reward"``.
            done (NestedKey): the done flag, under ``"next"``. Defaults to ``"done"``.
            terminated (NestedKey): the terminal flag, under ``"next"``. Defaults to
                ``"terminated"``.
            model_data (NestedKey): a boolean ``[*batch]`` entry marking the rows from
                a learned model, read with ``conservative_states="model"``. Defaults to
                ``"model_data"``.
        """

        action: NestedKey = "action"
        model_data: NestedKey = "model_data"
        value: NestedKey = "state_value"
        state_action_value: NestedKey = "state_action_value"
        log_prob: NestedKey = "_log_prob"
        pred_q1: NestedKey = "pred_q1"
        pred_q2: NestedKey = "pred_q2"
        priority: NestedKey = "td_error"
        cql_q1_loss: NestedKey = "cql_q1_loss"
        cql_q2_loss: NestedKey = "cql_q2_loss"
        reward: NestedKey = "reward"
        done: NestedKey = "done"
        terminated: NestedKey = "terminated"

    tensor_keys: _AcceptedKeys
    default_keys = _AcceptedKeys
    _estimator_value: ClassVar[str] = "value"
    PRESETS: ClassVar[dict[str, dict[str, float | bool]]] = CQL_PRESETS

    def __init__(
        self,
        actor_network: TensorDictModule,
        qvalue_network: TensorDictModule | list[TensorDictModule],
        *,
        loss_function: str = "l2",
        alpha_init: float = 1.0,
        min_alpha: float | None = None,
        max_alpha: float | None = None,
        action_spec=None,
        fixed_alpha: bool = False,
        target_entropy: str | float = "auto",
        delay_actor: bool = False,
        delay_qvalue: bool = True,
        gamma: float | None = None,
        temperature: float = 1.0,
        min_q_weight: float = 10.0,
        max_q_backup: bool = False,
        deterministic_backup: bool = True,
        backup_action: str = "sample",
        num_random: int = 10,
        with_lagrange: bool = False,
        lagrange_thresh: float = 10.0,
        reduction: str | None = None,
        deactivate_vmap: bool = False,
        scalar_output_mode: str | None = None,
        cql_variant: str = "H",
        num_qvalue_nets: int = 2,
        check_inputs: bool = True,
        conservative_states: str = "all",
    ) -> None:
        if gamma is not None:
            raise TypeError(_GAMMA_LMBDA_DEPREC_ERROR)
        if cql_variant not in _CQL_VARIANTS:
            raise ValueError(f"cql_variant must be one of {_CQL_VARIANTS}, got {cql_variant!r}")
        if backup_action not in _BACKUP_ACTIONS:
            raise ValueError(
                f"backup_action must be one of {_BACKUP_ACTIONS}, got {backup_action!r}"
            )
        if scalar_output_mode not in _SCALAR_MODES:
            raise ValueError(
                f"scalar_output_mode must be one of {_SCALAR_MODES}, got {scalar_output_mode!r}"
            )
        if num_random < 1:
            raise ValueError(f"num_random must be >= 1, got {num_random}")
        if temperature <= 0:
            raise ValueError(f"temperature must be > 0, got {temperature}")
        self._out_keys = None
        super().__init__()
        self.reduction = "mean" if reduction is None else reduction
        self.scalar_output_mode = scalar_output_mode
        self.deactivate_vmap = deactivate_vmap
        self.check_inputs = check_inputs

        self.delay_actor = delay_actor
        self.convert_to_functional(actor_network, "actor_network", create_target_params=delay_actor)
        self.delay_qvalue = delay_qvalue
        self.num_qvalue_nets = num_qvalue_nets
        self.convert_to_functional(
            qvalue_network,
            "qvalue_network",
            num_qvalue_nets,
            create_target_params=delay_qvalue,
            compare_against=list(actor_network.parameters()),
        )

        self.loss_function = loss_function
        self.temperature = float(temperature)
        self.min_q_weight = float(min_q_weight)
        self.max_q_backup = max_q_backup
        self.deterministic_backup = deterministic_backup
        self.backup_action = backup_action
        self.num_random = int(num_random)
        self.with_lagrange = with_lagrange
        self.target_action_gap = float(lagrange_thresh)
        self.cql_variant = cql_variant
        self.conservative_states = conservative_states

        device = next(iter(self.actor_network_params.values(True, True))).device
        if with_lagrange:
            self.register_parameter("log_alpha_prime", nn.Parameter(torch.zeros((), device=device)))

        spec = action_spec if action_spec is not None else getattr(actor_network, "spec", None)
        low, high = action_bounds(spec, action_key=self.tensor_keys.action)
        if not bool(torch.isfinite((high - low).log()).all()):
            raise OfflineLossError(
                f"the action spec for {self.tensor_keys.action!r} is not bounded (the box "
                f"[{low.min().item():.3g}, {high.max().item():.3g}] has no finite volume); "
                "CQL samples uniform actions in it, so pass a Bounded action_spec"
            )
        self.register_buffer("action_low", low.to(device=device, dtype=torch.float32))
        self.register_buffer("action_high", high.to(device=device, dtype=torch.float32))
        self._init_temperature(
            alpha_init=alpha_init,
            min_alpha=min_alpha,
            max_alpha=max_alpha,
            fixed_alpha=fixed_alpha,
            target_entropy=target_entropy,
            action_dim=low.numel(),
            device=device,
        )
        self._checked_shapes = False
        self._num_updates = 0

    # ----------------------------------------------------------------- construction
    @classmethod
    def from_preset(
        cls,
        preset: str,
        actor_network: TensorDictModule,
        qvalue_network: TensorDictModule | list[TensorDictModule],
        **kwargs: Any,
    ) -> CQLLoss:
        """Builds the loss with a named setting of :data:`CQL_PRESETS`.

        Args:
            preset (str): ``"mujoco"`` (the defaults: weight 10, fixed, deterministic
                backup) or ``"lagrange"`` (weight 1 tuned by dual descent to a gap of
                5, entropy bonus in the target).
            actor_network, qvalue_network: as in the constructor.
            **kwargs: other keyword arguments; they override the preset.

        Examples:
            >>> import torch
            >>> from tensordict.nn import TensorDictModule
            >>> from torchrl.data import Bounded
            >>> from torchrl.modules import MLP, NormalParamExtractor, ProbabilisticActor
            >>> from torchrl.modules import TanhNormal, ValueOperator
            >>> actor = ProbabilisticActor(
            ...     TensorDictModule(torch.nn.Sequential(torch.nn.Linear(3, 2),
            ...                      NormalParamExtractor()),
            ...                      in_keys=["observation"], out_keys=["loc", "scale"]),
            ...     in_keys=["loc", "scale"], spec=Bounded(-1.0, 1.0, (1,)),
            ...     distribution_class=TanhNormal)
            >>> q = ValueOperator(MLP(in_features=4, out_features=1, num_cells=[8]),
            ...                   in_keys=["observation", "action"])
            >>> loss = CQLLoss.from_preset("lagrange", actor, q)
            >>> loss.min_q_weight, loss.with_lagrange, loss.target_action_gap
            (1.0, True, 5.0)
        """
        if preset not in cls.PRESETS:
            raise KeyError(f"unknown CQL preset {preset!r}; choose from {sorted(cls.PRESETS)}")
        return cls(actor_network, qvalue_network, **{**cls.PRESETS[preset], **kwargs})

    # ----------------------------------------------------------------- keys
    @property
    def out_keys(self) -> list[str]:
        if self._out_keys is None:
            keys = ["loss_actor", "loss_actor_bc", "loss_qvalue", "loss_cql", "loss_alpha"]
            if self.with_lagrange:
                keys.append("loss_alpha_prime")
            keys += ["alpha", "entropy"]
            self._out_keys = keys
        return self._out_keys

    @out_keys.setter
    def out_keys(self, values) -> None:
        self._out_keys = values

    @property
    def conservative_states(self) -> str:
        """Where the conservative term's states come from: ``"all"`` or ``"model"``
        (settable: the batch keys the loss reads follow)."""
        return self._conservative_states

    @conservative_states.setter
    def conservative_states(self, value: str) -> None:
        if value not in _CONSERVATIVE_STATES:
            raise ValueError(
                f"conservative_states must be one of {_CONSERVATIVE_STATES}, got {value!r}"
            )
        self._conservative_states = value
        self._in_keys = None

    def _set_in_keys(self) -> None:
        super()._set_in_keys()
        if self.conservative_states == "model":
            self._in_keys.append(unravel_key(self.tensor_keys.model_data))

    # ----------------------------------------------------------------- helpers
    @property
    @_cache_values
    def _cached_detach_qvalue_params(self):
        return self.qvalue_network_params.detach()

    @property
    def _alpha_prime(self) -> Tensor:
        return self.log_alpha_prime.exp().clamp(0.0, 1e6)

    def _critic_inputs(self, obs: dict, action: Tensor) -> list[Tensor]:
        action_key = unravel_key(self.tensor_keys.action)
        return [
            action if unravel_key(k) == action_key else obs[unravel_key(k)]
            for k in self.qvalue_network.in_keys
        ]

    def _q(self, params: TensorDictBase, obs: dict, action: Tensor) -> Tensor:
        """Ensemble Q values ``[E, *action.shape[:-1]]`` (obs broadcast on the left)."""
        out = ensemble_apply(
            self.qvalue_network,
            params,
            *self._critic_inputs(obs, action),
            out_key=self.tensor_keys.state_action_value,
            randomness=self.vmap_randomness,
        )
        return out.squeeze(-1)

    def _policy(self, obs_td: TensorDictBase):
        return actor_distribution(self.actor_network, self.actor_network_params, obs_td)

    def _check_shapes(self, action: Tensor, sample: Tensor) -> None:
        act_dim = self.action_low.shape[-1] if self.action_low.ndim else 1
        if action.shape[-1] != act_dim:
            raise OfflineLossError(
                f"batch key {self.tensor_keys.action!r} has last dim {action.shape[-1]} "
                f"but the action spec has {act_dim}"
            )
        check_output_dim("actor_network", sample.shape[-1], act_dim)
        self._checked_shapes = True

    def _flat(self, tensordict: TensorDictBase) -> TensorDictBase:
        return tensordict.reshape(-1) if tensordict.ndim != 1 else tensordict

    def _obs(self, td: TensorDictBase, *, nxt: bool = False) -> dict:
        """The critic's observation inputs (of ``s``, or of ``s'`` with ``nxt``)."""
        keys = [unravel_key(k) for k in self._critic_obs_keys()]
        return {k: td.get(next_key(k) if nxt else k) for k in keys}

    def _policy_at(self, td: TensorDictBase, *, nxt: bool = False):
        """The policy's distribution at ``s`` (or ``s'``) of a flat batch."""
        keys = [unravel_key(k) for k in self.actor_network.in_keys]
        obs = {k: td.get(next_key(k) if nxt else k) for k in keys}
        return self._policy(TensorDict(obs, td.batch_size))

    def _next_value(
        self, next_obs: dict, a_next: Tensor, logp_next: Tensor, a_next_samples: Tensor | None
    ) -> Tensor:
        """``min_j Qbar_j(s', a')`` (minus ``alpha log pi`` without the deterministic
        backup), or the max over sampled actions with ``max_q_backup``; ``[B]``."""
        params = self.target_qvalue_network_params
        if self.max_q_backup:
            return self._q(params, next_obs, a_next_samples).max(1).values.min(0).values
        next_value = self._q(params, next_obs, a_next).min(0).values
        if not self.deterministic_backup:
            next_value = next_value - self._alpha * logp_next
        return next_value

    def _backup_action(self, dist) -> tuple[Tensor, Tensor]:
        """The target's next action and its log-density under ``dist``."""
        if self.backup_action == "sample":
            return rsample_and_log_prob(dist)
        action = dist.deterministic_sample
        return action, dist.log_prob(action)

    def _bellman_target(self, tensordict: TensorDictBase, next_value: Tensor) -> Tensor:
        """The critics' target over the batch as given (TD(lambda) needs its time dim)."""
        return td_target(self, tensordict, next_value.reshape(tensordict.batch_size)).reshape(-1)

    def _proposal_log_density(self, logp_samples: Tensor) -> Tensor:
        """``log q(a_k)`` of the ``3N`` proposal actions (uniform, pi(s), pi(s')); ``[3N, B]``."""
        n, bsz = self.num_random, logp_samples.shape[1] // 2
        log_uniform = -torch.log(self.action_high - self.action_low).sum()
        return torch.cat(
            [log_uniform.expand(n, bsz), logp_samples[:, :bsz], logp_samples[:, bsz:]], 0
        )

    def _proposal_actions(self, a_samples: Tensor) -> Tensor:
        """The actions of the conservative term, ``[K, B, A]``: ``num_random`` uniform,
        from pi(s) and from pi(s') for CQL(H), from pi(s) for CQL(rho)."""
        bsz = a_samples.shape[1] // 2
        if self.cql_variant == "rho":
            return a_samples[:, :bsz]
        rand = uniform_actions(self.action_low, self.action_high, (self.num_random, bsz))
        return torch.cat([rand, a_samples[:, :bsz], a_samples[:, bsz:]], 0)

    def _bound_policy_values(self, q_samples: Tensor, td: TensorDictBase) -> Tensor:
        """The sampled actions' values ``[E, K, B]`` as the conservative term sees them:
        unchanged here; Cal-QL bounds the policy's from below."""
        return q_samples

    def _gap(
        self,
        q_data: Tensor,
        q_samples: Tensor,
        logp_samples: Tensor,
        rows: tuple[Tensor, Tensor] | None = None,
    ) -> Tensor:
        """Soft maximum over the sampled actions minus the data action's value, ``[E, B]``;
        with ``rows`` (:meth:`_conservative_rows`) each side weighted by its rows'."""
        temp = self.temperature
        if self.cql_variant == "H":
            log_q = self._proposal_log_density(logp_samples)
            soft_max = temp * torch.logsumexp((q_samples - log_q) / temp, dim=1)
        else:
            weights = torch.softmax(q_samples.detach() / temp, dim=1)
            soft_max = (weights * q_samples).sum(1)
        if rows is None:
            return soft_max - q_data
        down, up = rows
        return down * soft_max - up * q_data

    def _conservative_rows(self, td: TensorDictBase) -> tuple[Tensor, Tensor] | None:
        """``None`` with ``conservative_states="all"``; else per-row weights ``(down,
        up)`` ``[B]`` whose batch means are the means over the model rows and over the
        dataset rows (``B / M`` on the ``M`` model rows, ``B / (B - M)`` on the others).

        Raises:
            OfflineLossError: the batch has no ``model_data`` entry, or no row of one kind.
        """
        if self.conservative_states == "all":
            return None
        key = self.tensor_keys.model_data
        marks = td.get(key, None)
        if marks is None:
            raise OfflineLossError(
                f"conservative_states='model' needs the batch entry {key!r} marking the "
                "rows from the learned model (the model-rollout trainers write it)"
            )
        marks = marks.reshape(-1).to(torch.bool)
        n, n_model = marks.numel(), int(marks.sum())
        if n_model in (0, n):
            kind = "model" if n_model == 0 else "dataset"
            raise OfflineLossError(
                f"conservative_states='model' needs both kinds of rows, but the batch's "
                f"{key!r} marks no {kind} row (real_ratio must be in (0, 1))"
            )
        dtype = self.action_low.dtype
        down = marks.to(dtype) * (n / n_model)
        up = (~marks).to(dtype) * (n / (n - n_model))
        return down, up

    def _penalty(self, gap: Tensor) -> tuple[Tensor, Tensor | None]:
        """``(loss_cql, loss_alpha_prime)`` per sample from the per-critic gaps ``[E, B]``."""
        penalty = self.min_q_weight * gap
        if not self.with_lagrange:
            return penalty.sum(0), None
        alpha_prime = self._alpha_prime
        constraint = penalty - self.target_action_gap
        return (alpha_prime.detach() * constraint).sum(0), self._alpha_prime_term(constraint)

    def _alpha_prime_term(self, constraint: Tensor) -> Tensor:
        return -self._alpha_prime * constraint.detach().mean(0)

    def _reduce(
        self, loss: Tensor, tensordict: TensorDictBase | None, reduction: str | None = None
    ) -> Tensor:
        """Reduces a per-sample loss of the flat batch, honouring the batch's masks."""
        if tensordict is not None:
            loss = loss.reshape(tensordict.batch_size)
        return self._reduce_loss(loss, tensordict=tensordict, reduction=reduction)

    def _per_critic_keys(self, kind: str) -> list[NestedKey]:
        """Batch keys of one value per critic: ``"pred"`` (``pred_q1``, ``pred_q2``, then
        ``pred_q3``, ...) or ``"cql"`` (``cql_q1_loss``, ``cql_q2_loss``, ...)."""
        keys = self.tensor_keys
        first, second, extra = {
            "pred": (keys.pred_q1, keys.pred_q2, "pred_q{}"),
            "cql": (keys.cql_q1_loss, keys.cql_q2_loss, "cql_q{}_loss"),
        }[kind]
        return [first, second, *(extra.format(j + 1) for j in range(2, self.num_qvalue_nets))]

    def _read_per_critic(self, tensordict: TensorDictBase, kind: str, order: str) -> Tensor:
        """The per-critic values ``[E, B]`` a previous term wrote to the batch."""
        values = []
        for key in self._per_critic_keys(kind)[: self.num_qvalue_nets]:
            value = tensordict.get(key, None)
            if value is None:
                raise KeyError(f"the batch has no {key!r}: call {order}")
            values.append(value.reshape(-1))
        return torch.stack(values)

    # ----------------------------------------------------------------- loss terms
    def actor_loss(self, tensordict: TensorDictBase) -> tuple[Tensor, dict]:
        """SAC's actor loss ``alpha log pi(a~|s) - min_j Q_j(s, a~)`` (critics detached).

        Returns:
            ``(loss_actor, metadata)`` with the detached log-probability of the sampled
            actions under ``tensor_keys.log_prob`` (what :meth:`alpha_loss` takes).
        """
        td = self._flat(tensordict)
        dist = self._policy_at(td)
        a_pi, logp_pi = rsample_and_log_prob(dist)
        q_pi = self._q(self._cached_detach_qvalue_params, self._obs(td), a_pi).min(0).values
        loss = self._alpha * logp_pi - q_pi
        log_prob = logp_pi.detach().reshape(tensordict.batch_size)
        return self._reduce(loss, tensordict), {self.tensor_keys.log_prob: log_prob}

    def actor_bc_loss(self, tensordict: TensorDictBase) -> tuple[Tensor, dict]:
        """The behaviour-cloning warm-start loss ``alpha log pi(a~|s) - log pi(a|s)``."""
        td = self._flat(tensordict)
        dist = self._policy_at(td)
        _, logp_pi = rsample_and_log_prob(dist)
        bc_log_prob = dist.log_prob(td.get(self.tensor_keys.action))
        loss = self._alpha * logp_pi - bc_log_prob
        return self._reduce(loss, tensordict), {"bc_log_prob": bc_log_prob.detach().mean()}

    def alpha_loss(
        self, actor_metadata: dict, mask_tensordict: TensorDictBase | None = None
    ) -> tuple[Tensor, dict]:
        """The entropy temperature's loss ``-log alpha (log pi + target_entropy)``.

        Args:
            actor_metadata (dict): the metadata of :meth:`actor_loss`.
            mask_tensordict (TensorDictBase, optional): the batch, for its masks.
        """
        loss = self._temperature_loss(actor_metadata[self.tensor_keys.log_prob])
        return self._reduce_loss(loss, tensordict=mask_tensordict), {}

    def q_loss(self, tensordict: TensorDictBase) -> tuple[Tensor, dict]:
        """The critics' Bellman error on the logged actions.

        Writes each critic's value of the logged action to the batch (``pred_q1``,
        ``pred_q2``; :meth:`cql_loss` reads them, as in TorchRL) and the TD error to
        the ``priority`` key.

        Returns:
            ``(loss_qvalue, metadata)`` with the detached per-critic ``td_error``.
        """
        keys = self.tensor_keys
        td = self._flat(tensordict)
        with torch.no_grad():
            dist_next = self._policy_at(td, nxt=True)
            a_next, logp_next = self._backup_action(dist_next)
            a_next_samples = None
            if self.max_q_backup:
                a_next_samples = dist_next.sample((self.num_random,))
            next_value = self._next_value(
                self._obs(td, nxt=True), a_next, logp_next, a_next_samples
            )
            target = self._bellman_target(tensordict, next_value)
        q_data = self._q(self.qvalue_network_params, self._obs(td), td.get(keys.action))
        for key, q in zip(self._per_critic_keys("pred"), q_data):
            tensordict.set(key, q.reshape(*tensordict.batch_size, 1))
        loss = distance_loss(q_data, target.expand_as(q_data), loss_function=self.loss_function)
        td_error = (q_data - target).detach().abs()
        tensordict.set(keys.priority, td_error.max(0).values.reshape(tensordict.batch_size))
        return self._reduce(loss.sum(0), tensordict), {
            "td_error": td_error.reshape(-1, *tensordict.batch_size)
        }

    def cql_loss(self, tensordict: TensorDictBase) -> tuple[Tensor, dict]:
        """The conservative penalty (times ``alpha'`` with Lagrange), after :meth:`q_loss`.

        Writes each critic's weighted gap ``min_q_weight * gap_j`` to the batch
        (``cql_q1_loss``, ``cql_q2_loss``), which :meth:`alpha_prime_loss` reads.

        Returns:
            ``(loss_cql, metadata)`` with the detached mean ``cql_gap``.
        """
        q_data = self._read_per_critic(tensordict, "pred", order="q_loss before cql_loss")
        td = self._flat(tensordict)
        with torch.no_grad():
            a_samples, logp_samples = self._sampled_actions(td)
        q_samples = self._q(self.qvalue_network_params, self._obs(td), a_samples)
        gap = self._gap(
            q_data,
            self._bound_policy_values(q_samples, td),
            logp_samples,
            self._conservative_rows(td),
        )
        for key, gap_j in zip(self._per_critic_keys("cql"), gap):
            tensordict.set(key, (self.min_q_weight * gap_j).reshape(tensordict.batch_size))
        loss_cql, _ = self._penalty(gap)
        return self._reduce(loss_cql, tensordict), {"cql_gap": gap.detach().mean()}

    def alpha_prime_loss(self, tensordict: TensorDictBase) -> tuple[Tensor, dict]:
        """The Lagrange multiplier's loss ``-alpha' (min_q_weight gap - threshold)``,
        after :meth:`cql_loss` (``with_lagrange=True`` only)."""
        if not self.with_lagrange:
            raise RuntimeError("alpha_prime_loss needs with_lagrange=True")
        penalty = self._read_per_critic(tensordict, "cql", order="cql_loss before alpha_prime_loss")
        constraint = penalty - self.target_action_gap
        loss = self._alpha_prime_term(constraint)
        # a batch mean whatever the reduction, as TorchRL's: alpha' is one scalar
        loss = self._reduce(loss, tensordict, reduction="mean")
        return loss, {"alpha_prime": self._alpha_prime.detach()}

    def _sampled_actions(self, td: TensorDictBase) -> tuple[Tensor, Tensor]:
        """Proposal actions ``[K, B, A]`` and the policy samples' log-densities ``[N, 2B]``."""
        obs_both = self._obs_both(td)
        a_samples, logp_samples = rsample_and_log_prob(self._policy(obs_both), (self.num_random,))
        return self._proposal_actions(a_samples), logp_samples

    def _obs_both(self, td: TensorDictBase) -> TensorDict:
        """The actor's inputs at ``s`` and ``s'`` stacked along the batch: ``[2B]``."""
        keys = [unravel_key(k) for k in self.actor_network.in_keys]
        return TensorDict(
            {k: torch.cat([td.get(k), td.get(next_key(k))], 0) for k in keys},
            [2 * td.shape[0]],
        )

    # ----------------------------------------------------------------- forward
    @dispatch
    def forward(self, tensordict: TensorDictBase) -> TensorDictBase:
        """Computes every CQL loss term on a batch of transitions.

        The terms are those of :meth:`actor_loss`, :meth:`actor_bc_loss`,
        :meth:`q_loss`, :meth:`cql_loss`, :meth:`alpha_loss` and
        :meth:`alpha_prime_loss`, computed together: one actor call at ``s`` and
        ``s'`` and one batched critic call for the logged and all sampled actions.
        Writes the TD error (max over critics of ``|Q - target|``) under the
        ``priority`` key of ``tensordict``. Rows masked by ``("collector", "mask")``
        or ``"shifted_valid"`` are left out of every term, as in TorchRL.

        Args:
            tensordict (TensorDictBase): the batch, holding :attr:`in_keys`.

        Returns:
            TensorDict: ``loss_actor``, ``loss_actor_bc``, ``loss_qvalue``,
            ``loss_cql``, ``loss_alpha`` (and ``loss_alpha_prime`` with Lagrange),
            plus detached diagnostics ``alpha``, ``entropy``, ``pred_value``,
            ``target_value``, ``cql_gap`` (and ``alpha_prime``).
        """
        keys = self.tensor_keys
        if self.check_inputs:
            check_batch(tensordict, self.in_keys, finite=False)
        batch_shape = tensordict.batch_size
        td = self._flat(tensordict)
        bsz = td.shape[0]
        n = self.num_random

        # Policy at s and s' in one actor call.
        dist = self._policy(self._obs_both(td))
        a_both, logp_both = rsample_and_log_prob(dist)
        a_pi, logp_pi = a_both[:bsz], logp_both[:bsz]
        data_action = td.get(keys.action)
        if not self._checked_shapes:
            self._check_shapes(data_action, a_both)
        with torch.no_grad():
            a_samples, logp_samples = rsample_and_log_prob(dist, (n,))  # [N, 2B, A], [N, 2B]
        if self.backup_action == "sample":
            a_next, logp_next = a_both[bsz:].detach(), logp_both[bsz:].detach()
        else:
            with torch.no_grad():
                a_next, logp_next = self._backup_action(dist)
            a_next, logp_next = a_next[bsz:], logp_next[bsz:]

        # Actor (SAC) and BC-warm-start losses.
        alpha = self._alpha
        obs = self._obs(td)
        q_pi = self._q(self._cached_detach_qvalue_params, obs, a_pi).min(0).values
        loss_actor = alpha * logp_pi - q_pi
        # log pi(a_data | s); the s' half of the batch is padding for the [2B] dist.
        logp_data = dist.log_prob(torch.cat([data_action, a_next], 0))[:bsz]
        loss_actor_bc = alpha * logp_pi - logp_data
        loss_alpha = self._temperature_loss(logp_pi)

        # Bellman target.
        with torch.no_grad():
            next_value = self._next_value(
                self._obs(td, nxt=True), a_next, logp_next, a_samples[:, bsz:]
            )
            target = self._bellman_target(tensordict, next_value)

        # Critic: data action and all sampled actions, every critic, one call.
        actions = torch.cat([data_action.unsqueeze(0), self._proposal_actions(a_samples)], 0)
        q_all = self._q(self.qvalue_network_params, obs, actions)  # [E, K, B]
        q_data = q_all[:, 0]
        gap = self._gap(
            q_data,
            self._bound_policy_values(q_all[:, 1:], td),
            logp_samples,
            self._conservative_rows(td),
        )

        loss_qvalue = distance_loss(
            q_data, target.expand_as(q_data), loss_function=self.loss_function
        ).sum(0)
        loss_cql, loss_alpha_prime = self._penalty(gap)

        td_error = (q_data - target).detach().abs().max(0).values
        tensordict.set(keys.priority, td_error.reshape(batch_shape))

        out = {
            "loss_actor": loss_actor,
            "loss_actor_bc": loss_actor_bc,
            "loss_qvalue": loss_qvalue,
            "loss_cql": loss_cql,
            "loss_alpha": loss_alpha,
        }
        if loss_alpha_prime is not None:
            out["loss_alpha_prime"] = loss_alpha_prime
        diagnostics = {
            "entropy": -logp_pi.detach(),
            "pred_value": q_data.detach().mean(0),
            "target_value": target,
            "cql_gap": gap.detach().mean(0),
        }
        result = self._pack(out, diagnostics, alpha, tensordict)
        count_update(self, "_num_updates", result, batch=tensordict)
        return result

    def _pack(
        self, losses: dict, diagnostics: dict, alpha: Tensor, tensordict: TensorDictBase
    ) -> TensorDict:
        batch_shape = tensordict.batch_size
        # alpha' is one scalar: its loss is a batch mean (TorchRL's), even for "sum"
        reductions = {"loss_alpha_prime": "mean"} if self.reduction == "sum" else {}
        losses = {k: self._reduce(v, tensordict, reductions.get(k)) for k, v in losses.items()}
        if self.reduction == "none":
            out = {**losses, **{k: v.reshape(batch_shape) for k, v in diagnostics.items()}}
            mode = self.scalar_output_mode
            if mode is None:
                out["alpha"] = alpha.expand(batch_shape)
            result = TensorDict(out, batch_shape)
            if mode == "exclude":
                del result["entropy"]
            elif mode == "non_tensor":
                del result["entropy"]
                result.set_non_tensor("alpha", alpha)
                result.set_non_tensor("entropy", diagnostics["entropy"].mean())
            return result
        out = {**losses, **{k: v.mean() for k, v in diagnostics.items()}}
        out["alpha"] = alpha
        if self.with_lagrange:
            out["alpha_prime"] = self._alpha_prime.detach()
        return TensorDict(out)


# ------------------------------------------------------------------------- declaration
def _temperatures(loss: LossModule) -> list[nn.Parameter]:
    """The entropy temperature and the Lagrange multiplier (when learned)."""
    return [p for n, p in loss.named_parameters() if n.startswith("log_alpha")]


#: CQL as :func:`~torchrl_offline.trainers.algorithms.build_algorithm` builds it: SAC's
#: ``TanhNormal`` actor, twin ``Q(s, a)``, 3x256 MLPs (the paper's), Adam at 1e-4 for the
#: actor and the temperatures (the CQL authors' code and CORL: 3e-4 made the policy
#: unstable, ``benchmarks/learning_algos.py --algo cql``) and 3e-4 for the critics, and
#: the conservative term of :data:`CQL_PRESETS` ``"d3rlpy"`` (weight 5 tuned by dual
#: descent to a gap of 10): level with d3rlpy on mixed-quality data where the loss's
#: fixed weight 10 (``preset="mujoco"``) reaches half of it, and better on four of the
#: learning table's five Pendulum datasets, worse on the expert one
#: (``docs/benchmarks.md``).
CQL_ALGORITHM = AlgorithmDeclaration(
    name="cql",
    loss_class=CQLLoss,
    networks=lambda nets, hp: {
        "actor_network": nets.tanh_normal_actor(),
        "qvalue_network": nets.qvalue(),
    },
    optimizer=(
        ParamGroup("actor", "actor_lr", "actor_network_params"),
        ParamGroup("qvalue", "critic_lr", "qvalue_network_params"),
        ParamGroup("alpha", "alpha_lr", _temperatures),
    ),
    loss_terms=("loss_actor", "loss_qvalue", "loss_cql", "loss_alpha", "loss_alpha_prime"),
    defaults={
        "hidden_sizes": (256, 256, 256),
        "actor_lr": 1e-4,
        "critic_lr": 3e-4,
        "alpha_lr": 1e-4,
    },
    presets=CQL_PRESETS,
    default_preset="d3rlpy",
    discrete_variant="discrete_cql",
    action_spec_argument="action_spec",
)
