"""Conservative Q-Learning (Kumar et al., 2020), continuous and discrete.

Paper: "Conservative Q-Learning for Offline Reinforcement Learning",
https://arxiv.org/abs/2006.04779.

:class:`CQLLoss` is a drop-in for :class:`torchrl.objectives.CQLLoss` (same
constructor arguments, tensordict keys and output ``loss_*`` entries) that computes
the paper's CQL(H) regulariser, a per-state log-sum-exp over all sampled actions,
and gets the Lagrange version right. :class:`DiscreteCQLLoss` is a drop-in for
:class:`torchrl.objectives.DiscreteCQLLoss` with the CQL weight ``alpha`` and an
optional QR-DQN critic as in the paper's Atari experiments.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, ClassVar

import torch
from tensordict import TensorDict, TensorDictBase, TensorDictParams
from tensordict.nn import TensorDictModule, dispatch
from tensordict.utils import NestedKey, unravel_key
from torch import Tensor, nn
from torchrl.data.utils import _find_action_space
from torchrl.modules.distributions.utils import rsample_and_log_prob
from torchrl.modules.tensordict_module.actors import QValueActor
from torchrl.modules.tensordict_module.common import ensure_tensordict_compatible
from torchrl.objectives.common import LossModule
from torchrl.objectives.utils import (
    _GAMMA_LMBDA_DEPREC_ERROR,
    ValueEstimators,
    _cache_values,
    distance_loss,
)
from torchrl.objectives.value import TD0Estimator

from torchrl_offline.objectives.common import (
    OfflineLossError,
    action_bounds,
    actor_distribution,
    check_batch,
    check_output_dim,
    count_update,
    ensemble_apply,
    make_loss_value_estimator,
    next_key,
    uniform_actions,
)

__all__ = ["CQL_PRESETS", "CQLLoss", "DiscreteCQLLoss"]

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
CQL_PRESETS: dict[str, dict[str, float | bool]] = {
    "mujoco": {"min_q_weight": 10.0, "with_lagrange": False, "deterministic_backup": True},
    "lagrange": {
        "min_q_weight": 1.0,
        "with_lagrange": True,
        "lagrange_thresh": 5.0,
        "deterministic_backup": False,
    },
}

_CQL_VARIANTS = ("H", "rho")
_SCALAR_MODES = (None, "exclude", "non_tensor")


class CQLLoss(LossModule):
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
            pred_q1 (NestedKey): accepted for compatibility with TorchRL; not written.
            pred_q2 (NestedKey): accepted for compatibility with TorchRL; not written.
            priority (NestedKey): where the TD error is written for prioritized
                replay. Defaults to ``"td_error"``.
            cql_q1_loss (NestedKey): accepted for compatibility; not written.
            cql_q2_loss (NestedKey): accepted for compatibility; not written.
            reward (NestedKey): the reward, under ``"next"``. Defaults to ``"reward"``.
            done (NestedKey): the done flag, under ``"next"``. Defaults to ``"done"``.
            terminated (NestedKey): the terminal flag, under ``"next"``. Defaults to
                ``"terminated"``.
        """

        action: NestedKey = "action"
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
    default_value_estimator = ValueEstimators.TD0
    SUPPORTED_VALUE_ESTIMATORS = (ValueEstimators.TD0,)
    PRESETS: ClassVar[dict[str, dict[str, float | bool]]] = CQL_PRESETS

    actor_network: TensorDictModule
    qvalue_network: TensorDictModule
    actor_network_params: TensorDictParams
    qvalue_network_params: TensorDictParams
    target_actor_network_params: TensorDictParams
    target_qvalue_network_params: TensorDictParams

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
        num_random: int = 10,
        with_lagrange: bool = False,
        lagrange_thresh: float = 10.0,
        reduction: str | None = None,
        deactivate_vmap: bool = False,
        scalar_output_mode: str | None = None,
        cql_variant: str = "H",
        num_qvalue_nets: int = 2,
        check_inputs: bool = True,
    ) -> None:
        if gamma is not None:
            raise TypeError(_GAMMA_LMBDA_DEPREC_ERROR)
        if cql_variant not in _CQL_VARIANTS:
            raise ValueError(f"cql_variant must be one of {_CQL_VARIANTS}, got {cql_variant!r}")
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
        self.num_random = int(num_random)
        self.with_lagrange = with_lagrange
        self.target_action_gap = float(lagrange_thresh)
        self.cql_variant = cql_variant

        device = next(iter(self.actor_network_params.values(True, True))).device
        self.register_buffer("alpha_init", torch.tensor(float(alpha_init), device=device))
        self.min_log_alpha = None if min_alpha is None else math.log(min_alpha)
        self.max_log_alpha = None if max_alpha is None else math.log(max_alpha)
        self.fixed_alpha = fixed_alpha
        log_alpha = torch.tensor(math.log(alpha_init), device=device)
        if fixed_alpha:
            self.register_buffer("log_alpha", log_alpha)
        else:
            self.register_parameter("log_alpha", nn.Parameter(log_alpha))
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
        if target_entropy == "auto":
            target_entropy = -float(low.numel())
        self.register_buffer("target_entropy", torch.tensor(float(target_entropy), device=device))
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

    # ----------------------------------------------------------------- keys / estimator
    def _forward_value_estimator_keys(self, **kwargs) -> None:
        if self._value_estimator is not None:
            self._value_estimator.set_keys(
                value=self.tensor_keys.value,
                reward=self.tensor_keys.reward,
                done=self.tensor_keys.done,
                terminated=self.tensor_keys.terminated,
            )

    def make_value_estimator(self, value_type: ValueEstimators = None, **hyperparams) -> None:
        """Builds the value estimator (TD(0), the one-step target CQL uses).

        Keyword Args:
            gamma (float): the discount factor.
        """
        make_loss_value_estimator(
            self,
            value_type,
            tensor_keys={
                "value_target": "value_target",
                "value": self.tensor_keys.value,
                "reward": self.tensor_keys.reward,
                "done": self.tensor_keys.done,
                "terminated": self.tensor_keys.terminated,
            },
            value_network=None,
            **hyperparams,
        )

    @property
    def in_keys(self) -> list[NestedKey]:
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
        return list(dict.fromkeys(unravel_key(k) for k in keys))

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

    # ----------------------------------------------------------------- helpers
    @property
    @_cache_values
    def _cached_detach_qvalue_params(self):
        return self.qvalue_network_params.detach()

    @property
    def _alpha(self) -> Tensor:
        log_alpha = self.log_alpha.detach()
        if self.min_log_alpha is not None or self.max_log_alpha is not None:
            log_alpha = log_alpha.clamp(self.min_log_alpha, self.max_log_alpha)
        return log_alpha.exp()

    @property
    def _alpha_prime(self) -> Tensor:
        return self.log_alpha_prime.exp().clamp(0.0, 1e6)

    def _critic_obs_keys(self) -> list[NestedKey]:
        action = unravel_key(self.tensor_keys.action)
        return [k for k in self.qvalue_network.in_keys if unravel_key(k) != action]

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

    # ----------------------------------------------------------------- forward
    @dispatch
    def forward(self, tensordict: TensorDictBase) -> TensorDictBase:
        """Computes every CQL loss term on a batch of transitions.

        Writes the TD error (max over critics of ``|Q - target|``) under the
        ``priority`` key of ``tensordict``.

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
        td = tensordict.reshape(-1) if len(batch_shape) != 1 else tensordict
        bsz = td.shape[0]
        n = self.num_random

        # Policy at s and s' in one actor call.
        actor_keys = [unravel_key(k) for k in self.actor_network.in_keys]
        obs_both = TensorDict(
            {k: torch.cat([td.get(k), td.get(next_key(k))], 0) for k in actor_keys},
            [2 * bsz],
        )
        dist = self._policy(obs_both)
        a_both, logp_both = rsample_and_log_prob(dist)
        a_pi, logp_pi = a_both[:bsz], logp_both[:bsz]
        data_action = td.get(keys.action)
        if not self._checked_shapes:
            self._check_shapes(data_action, a_both)
        with torch.no_grad():
            a_samples, logp_samples = rsample_and_log_prob(dist, (n,))  # [N, 2B, A], [N, 2B]
        a_next, logp_next = a_both[bsz:].detach(), logp_both[bsz:].detach()

        # Actor (SAC) and BC-warm-start losses.
        alpha = self._alpha
        critic_obs_keys = [unravel_key(k) for k in self._critic_obs_keys()]
        obs = {k: td.get(k) for k in critic_obs_keys}
        q_pi = self._q(self._cached_detach_qvalue_params, obs, a_pi).min(0).values
        loss_actor = alpha * logp_pi - q_pi
        # log pi(a_data | s); the s' half of the batch is padding for the [2B] dist.
        logp_data = dist.log_prob(torch.cat([data_action, a_next], 0))[:bsz]
        loss_actor_bc = alpha * logp_pi - logp_data
        loss_alpha = -self.log_alpha * (logp_pi.detach() + self.target_entropy)

        # Bellman target.
        next_obs = {k: td.get(next_key(k)) for k in critic_obs_keys}
        with torch.no_grad():
            if self.max_q_backup:
                q_next = self._q(self.target_qvalue_network_params, next_obs, a_samples[:, bsz:])
                next_value = q_next.max(1).values.min(0).values
            else:
                q_next = self._q(self.target_qvalue_network_params, next_obs, a_next)
                next_value = q_next.min(0).values
                if not self.deterministic_backup:
                    next_value = next_value - alpha * logp_next
            target = self._target(td, next_value)

        # Critic: data action and all sampled actions, every critic, one call.
        if self.cql_variant == "H":
            rand = uniform_actions(self.action_low, self.action_high, (n, bsz))
            actions = torch.cat(
                [data_action.unsqueeze(0), rand, a_samples[:, :bsz], a_samples[:, bsz:]], 0
            )
        else:
            actions = torch.cat([data_action.unsqueeze(0), a_samples[:, :bsz]], 0)
        q_all = self._q(self.qvalue_network_params, obs, actions)  # [E, K, B]
        q_data = q_all[:, 0]
        q_samples = q_all[:, 1:]
        temp = self.temperature
        if self.cql_variant == "H":
            log_uniform = -torch.log(self.action_high - self.action_low).sum()
            log_q = torch.cat(
                [
                    log_uniform.expand(n, bsz),
                    logp_samples[:, :bsz],
                    logp_samples[:, bsz:],
                ],
                0,
            )
            soft_max = temp * torch.logsumexp((q_samples - log_q) / temp, dim=1)
        else:
            weights = torch.softmax(q_samples.detach() / temp, dim=1)
            soft_max = (weights * q_samples).sum(1)
        gap = soft_max - q_data  # [E, B]

        loss_qvalue = distance_loss(
            q_data, target.expand_as(q_data), loss_function=self.loss_function
        ).sum(0)
        penalty = self.min_q_weight * gap
        out = {}
        if self.with_lagrange:
            alpha_prime = self._alpha_prime
            constraint = penalty - self.target_action_gap
            loss_cql = (alpha_prime.detach() * constraint).sum(0)
            out["loss_alpha_prime"] = -alpha_prime * constraint.detach().mean(0)
        else:
            loss_cql = penalty.sum(0)

        td_error = (q_data - target).detach().abs().max(0).values
        tensordict.set(keys.priority, td_error.reshape(batch_shape))

        out = {
            "loss_actor": loss_actor,
            "loss_actor_bc": loss_actor_bc,
            "loss_qvalue": loss_qvalue,
            "loss_cql": loss_cql,
            "loss_alpha": loss_alpha,
            **out,
        }
        diagnostics = {
            "entropy": -logp_pi.detach(),
            "pred_value": q_data.detach().mean(0),
            "target_value": target,
            "cql_gap": gap.detach().mean(0),
        }
        result = self._pack(out, diagnostics, alpha, batch_shape)
        count_update(self, "_num_updates", result, batch=tensordict)
        return result

    def _target(self, td: TensorDictBase, next_value: Tensor) -> Tensor:
        keys = self.tensor_keys
        estimator = self.value_estimator
        if type(estimator) is TD0Estimator and not estimator.average_rewards:
            reward = td.get(next_key(keys.reward))
            terminated = td.get(next_key(keys.terminated), None)
            if terminated is None:
                terminated = td.get(next_key(keys.done))
            gamma = estimator.gamma.to(reward.device)
            steps = td.get(estimator.tensor_keys.steps_to_next_obs, None)
            if steps is not None:
                gamma = gamma ** steps.view_as(reward)
            not_term = (~terminated.bool()).to(reward.dtype)
            target = reward + gamma * not_term * next_value.unsqueeze(-1)
            return target.squeeze(-1)
        td_v = td.select(
            next_key(keys.reward), next_key(keys.done), next_key(keys.terminated), strict=False
        ).clone(False)
        td_v.set(next_key(keys.value), next_value.unsqueeze(-1))
        return estimator.value_estimate(td_v).squeeze(-1)

    def _pack(self, losses: dict, diagnostics: dict, alpha: Tensor, batch_shape) -> TensorDict:
        reduction = self.reduction
        if reduction == "none":
            out = {k: v.reshape(batch_shape) for k, v in losses.items()}
            out.update({k: v.reshape(batch_shape) for k, v in diagnostics.items()})
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
        out = {k: self._reduce_loss(v, reduction=reduction) for k, v in losses.items()}
        out.update({k: v.mean() for k, v in diagnostics.items()})
        out["alpha"] = alpha
        if self.with_lagrange:
            out["alpha_prime"] = self._alpha_prime.detach()
        return TensorDict(out)


class DiscreteCQLLoss(LossModule):
    r"""Discrete Conservative Q-Learning (CQL(H) on DQN or QR-DQN).

    The loss is the (half) squared Bellman error of a DQN critic with a target
    network, plus the paper's conservative term for discrete actions

    .. math::

        \alpha\,\Big(\log\sum_{a'} \exp Q(s, a') - Q(s, a)\Big).

    With ``num_quantiles=K`` the critic outputs ``K`` quantiles per action
    (``action_value`` of size ``n_actions * K``, laid out action-major) and is
    trained with the quantile-regression Huber loss of QR-DQN (Dabney et al.,
    2018; the CQL paper's Atari setup); the conservative term then uses the
    quantile mean as Q.

    Args:
        value_network (QValueActor or nn.Module): the Q network; a plain
            ``nn.Module`` mapping observations to action values is wrapped in a
            :class:`~torchrl.modules.QValueActor`.

    Keyword Args:
        loss_function (str, optional): Bellman-error distance for DQN. Defaults to
            ``"l2"`` (times 0.5). Ignored with quantiles.
        delay_value (bool, optional): keep a target network. Defaults to ``True``.
        gamma (float, optional): deprecated, use :meth:`make_value_estimator`.
        action_space (str or TensorSpec, optional): ``"one-hot"`` or
            ``"categorical"`` (or a spec); inferred from the network if omitted.
        reduction (str, optional): ``"none"`` | ``"mean"`` | ``"sum"``.
        alpha (float, optional): the CQL weight. Defaults to 1.0 (TorchRL's loss
            has no weight, i.e. 1.0).
        num_quantiles (int, optional): QR-DQN quantiles per action. Defaults to
            ``None`` (plain DQN critic).
        kappa (float, optional): Huber threshold of the quantile loss. Defaults to 1.0.
        check_inputs (bool, optional): check the batch for missing keys and NaN/inf
            and the losses for NaN/inf. The check reads one value back to the host per
            update (a device sync on GPU); ``False`` removes it. Defaults to ``True``.

    Examples:
        >>> import torch
        >>> from tensordict import TensorDict
        >>> from torchrl.data import OneHot
        >>> from torchrl.modules import MLP, QValueActor
        >>> from torchrl_offline.objectives.cql import DiscreteCQLLoss
        >>> n_obs, n_act = 4, 3
        >>> spec = OneHot(n_act)
        >>> actor = QValueActor(MLP(in_features=n_obs, out_features=n_act, num_cells=[16]),
        ...                     in_keys=["observation"], spec=spec)
        >>> loss = DiscreteCQLLoss(actor, action_space=spec)
        >>> loss.make_value_estimator(gamma=0.99)
        >>> data = TensorDict({
        ...     "observation": torch.randn(8, n_obs), "action": spec.rand((8,)),
        ...     ("next", "observation"): torch.randn(8, n_obs),
        ...     ("next", "reward"): torch.randn(8, 1),
        ...     ("next", "done"): torch.zeros(8, 1, dtype=torch.bool),
        ...     ("next", "terminated"): torch.zeros(8, 1, dtype=torch.bool)}, [8])
        >>> out = loss(data)
        >>> sorted(k for k in out.keys() if k.startswith("loss_"))
        ['loss_cql', 'loss_qvalue']
    """

    @dataclass
    class _AcceptedKeys:
        """Maintains default values for all configurable tensordict keys.

        Attributes:
            value_target (NestedKey): the value-target entry of the estimator.
                Defaults to ``"value_target"``.
            value (NestedKey): the chosen-action value written by the network.
                Defaults to ``"chosen_action_value"``.
            action_value (NestedKey): the per-action values written by the network.
                Defaults to ``"action_value"``.
            action (NestedKey): the logged action. Defaults to ``"action"``.
            priority (NestedKey): where the TD error is written. Defaults to
                ``"td_error"``.
            reward (NestedKey): the reward, under ``"next"``. Defaults to ``"reward"``.
            done (NestedKey): the done flag, under ``"next"``. Defaults to ``"done"``.
            terminated (NestedKey): the terminal flag, under ``"next"``. Defaults to
                ``"terminated"``.
            pred_val (NestedKey): accepted for compatibility with TorchRL; not written.
        """

        value_target: NestedKey = "value_target"
        value: NestedKey = "chosen_action_value"
        action_value: NestedKey = "action_value"
        action: NestedKey = "action"
        priority: NestedKey = "td_error"
        reward: NestedKey = "reward"
        done: NestedKey = "done"
        terminated: NestedKey = "terminated"
        pred_val: NestedKey = "pred_val"

    tensor_keys: _AcceptedKeys
    default_keys = _AcceptedKeys
    default_value_estimator = ValueEstimators.TD0
    SUPPORTED_VALUE_ESTIMATORS = (ValueEstimators.TD0,)
    out_keys = ["loss_qvalue", "loss_cql"]

    value_network: TensorDictModule
    value_network_params: TensorDictParams
    target_value_network_params: TensorDictParams

    def __init__(
        self,
        value_network: QValueActor | nn.Module,
        *,
        loss_function: str | None = "l2",
        delay_value: bool = True,
        gamma: float | None = None,
        action_space=None,
        reduction: str | None = None,
        alpha: float = 1.0,
        num_quantiles: int | None = None,
        kappa: float = 1.0,
        check_inputs: bool = True,
    ) -> None:
        if gamma is not None:
            raise TypeError(_GAMMA_LMBDA_DEPREC_ERROR)
        if num_quantiles is not None and num_quantiles < 1:
            raise ValueError(f"num_quantiles must be >= 1, got {num_quantiles}")
        super().__init__()
        self.reduction = "mean" if reduction is None else reduction
        if num_quantiles is None:
            value_network = ensure_tensordict_compatible(
                module=value_network, wrapper_type=QValueActor, action_space=action_space
            )
        elif not isinstance(value_network, TensorDictModule):
            value_network = TensorDictModule(
                value_network, in_keys=["observation"], out_keys=[self.tensor_keys.action_value]
            )
        if action_space is None:
            action_space = getattr(value_network, "action_space", None)
            if action_space is None:
                spec = getattr(value_network, "spec", None)
                action_space = spec if spec is not None else "one-hot"
        self.action_space = _find_action_space(action_space)
        self._n_actions = None
        spec_n = getattr(action_space, "space", None)
        if spec_n is not None and getattr(spec_n, "n", None) is not None:
            self._n_actions = int(spec_n.n)
        self.delay_value = delay_value
        self.convert_to_functional(value_network, "value_network", create_target_params=delay_value)
        self.loss_function = loss_function
        self.alpha = float(alpha)
        self.num_quantiles = num_quantiles
        self.kappa = float(kappa)
        self.check_inputs = check_inputs
        self._num_updates = 0

    def _forward_value_estimator_keys(self, **kwargs) -> None:
        if self._value_estimator is not None:
            self._value_estimator.set_keys(
                value_target=self.tensor_keys.value_target,
                value=self.tensor_keys.value,
                reward=self.tensor_keys.reward,
                done=self.tensor_keys.done,
                terminated=self.tensor_keys.terminated,
            )

    def make_value_estimator(self, value_type: ValueEstimators = None, **hyperparams) -> None:
        """Builds the value estimator (TD(0)).

        Keyword Args:
            gamma (float): the discount factor.
        """
        make_loss_value_estimator(
            self,
            value_type,
            tensor_keys={
                "value_target": self.tensor_keys.value_target,
                "value": self.tensor_keys.value,
                "reward": self.tensor_keys.reward,
                "done": self.tensor_keys.done,
                "terminated": self.tensor_keys.terminated,
            },
            value_network=None,
            **hyperparams,
        )

    @property
    def in_keys(self) -> list[NestedKey]:
        keys = [
            self.tensor_keys.action,
            next_key(self.tensor_keys.reward),
            next_key(self.tensor_keys.done),
            next_key(self.tensor_keys.terminated),
            *self.value_network.in_keys,
            *[next_key(k) for k in self.value_network.in_keys],
        ]
        return list(dict.fromkeys(unravel_key(k) for k in keys))

    def _values(self, params: TensorDictBase, td: TensorDictBase) -> Tensor:
        net = self.value_network
        head = net[0] if self.num_quantiles is not None and isinstance(net, QValueActor) else net
        inputs = td.select(*head.in_keys, strict=False)
        with params.to_module(net, preserve_module_state=False):
            values = head(inputs).get(self.tensor_keys.action_value)
        if self.num_quantiles is not None:
            values = values.unflatten(-1, (-1, self.num_quantiles))  # [B, A, K]
        return values

    def _action_index(self, action: Tensor, n_actions: int) -> Tensor:
        if self.action_space == "categorical":
            if action.ndim > 1 and action.shape[-1] == 1:
                action = action.squeeze(-1)
            index = action.long()
        else:
            if action.shape[-1] != n_actions:
                raise OfflineLossError(
                    f"batch key {self.tensor_keys.action!r} has last dim {action.shape[-1]} "
                    f"but the value network outputs {n_actions} action values"
                )
            index = action.long().argmax(-1)
        if self._n_actions is not None and n_actions != self._n_actions:
            check_output_dim("value_network", n_actions, self._n_actions)
        return index

    @dispatch
    def forward(self, tensordict: TensorDictBase) -> TensorDictBase:
        """Computes the Bellman and conservative losses on a batch of transitions.

        Args:
            tensordict (TensorDictBase): the batch, holding :attr:`in_keys`.

        Returns:
            TensorDict: ``loss_qvalue``, ``loss_cql`` (already multiplied by
            ``alpha``) and detached ``pred_value``, ``target_value``, ``td_error``,
            ``cql_gap``.
        """
        keys = self.tensor_keys
        if self.check_inputs:
            check_batch(tensordict, self.in_keys, finite=False)
        batch_shape = tensordict.batch_size
        td = tensordict.reshape(-1) if len(batch_shape) != 1 else tensordict
        values = self._values(self.value_network_params, td)
        n_actions = values.shape[1]
        index = self._action_index(td.get(keys.action), n_actions)
        with torch.no_grad():
            next_td = td.get("next")
            next_values = self._values(self.target_value_network_params, next_td)
        if self.num_quantiles is None:
            q_values = values
            q_data = values.gather(-1, index.unsqueeze(-1)).squeeze(-1)
            next_value = next_values.max(-1).values
            target = self._target(td, next_value)
            loss_q = 0.5 * distance_loss(q_data, target, self.loss_function)
            td_error = (q_data - target).detach().abs()
            pred = q_data
        else:
            q_values = values.mean(-1)  # [B, A]
            theta = values.gather(1, index[:, None, None].expand(-1, 1, values.shape[-1]))
            theta = theta.squeeze(1)  # [B, K]
            best = next_values.mean(-1).argmax(-1)
            next_theta = next_values.gather(
                1, best[:, None, None].expand(-1, 1, values.shape[-1])
            ).squeeze(1)
            target = self._target(td, next_theta)  # [B, K]
            loss_q = self._quantile_huber(theta, target)
            pred = theta.mean(-1)
            td_error = (pred - target.mean(-1)).detach().abs()
            target = target.mean(-1)
        gap = torch.logsumexp(q_values, -1) - q_values.gather(-1, index.unsqueeze(-1)).squeeze(-1)
        loss_cql = self.alpha * gap
        tensordict.set(keys.priority, td_error.reshape(batch_shape))
        losses = {"loss_qvalue": loss_q, "loss_cql": loss_cql}
        diagnostics = {
            "pred_value": pred.detach(),
            "target_value": target.detach(),
            "td_error": td_error,
            "cql_gap": gap.detach(),
        }
        if self.reduction == "none":
            out = {k: v.reshape(batch_shape) for k, v in {**losses, **diagnostics}.items()}
            result = TensorDict(out, batch_shape)
        else:
            out = {k: self._reduce_loss(v) for k, v in losses.items()}
            out.update({k: v.mean() for k, v in diagnostics.items()})
            result = TensorDict(out)
        count_update(self, "_num_updates", result, batch=tensordict)
        return result

    def _quantile_huber(self, theta: Tensor, target: Tensor) -> Tensor:
        """QR-DQN loss: sum over predicted quantiles, mean over target samples."""
        k = theta.shape[-1]
        tau_hat = (torch.arange(k, device=theta.device, dtype=theta.dtype) + 0.5) / k
        u = target.unsqueeze(-2) - theta.unsqueeze(-1)  # [B, K_pred, K_target]
        huber = torch.nn.functional.huber_loss(
            u, torch.zeros_like(u), reduction="none", delta=self.kappa
        )
        weight = (tau_hat.unsqueeze(-1) - (u.detach() < 0).to(u.dtype)).abs()
        return (weight * huber / self.kappa).mean(-1).sum(-1)

    def _target(self, td: TensorDictBase, next_value: Tensor) -> Tensor:
        keys = self.tensor_keys
        reward = td.get(next_key(keys.reward))
        terminated = td.get(next_key(keys.terminated), None)
        if terminated is None:
            terminated = td.get(next_key(keys.done))
        gamma = self.value_estimator.gamma.to(reward.device)
        not_term = (~terminated.bool()).to(reward.dtype)
        # reward and flags are [B, 1]; next_value is [B] or [B, K]
        if next_value.ndim == 1:
            return (reward + gamma * not_term * next_value.unsqueeze(-1)).squeeze(-1)
        return reward + gamma * not_term * next_value
