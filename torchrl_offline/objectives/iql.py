r"""Implicit Q-Learning (Kostrikov, Nair and Levine, ICLR 2022), continuous and discrete.

IQL never queries the critic at actions outside the dataset. With data ``(s, a, r, s')``:

.. math::

    L_V &= \mathbb{E}\,\big[\,|\tau - 1(u < 0)|\, u^2\,\big],
        \quad u = \min_i \bar Q_i(s, a) - V(s) \\
    L_Q &= \sum_i \mathbb{E}\,\big[(Q_i(s, a) - r - \gamma (1 - d) V(s'))^2\big] \\
    L_\pi &= -\mathbb{E}\,\big[\min(e^{\beta (\min_i \bar Q_i(s, a) - V(s))}, w_{\max})
        \log \pi(a \mid s)\big]

where :math:`\bar Q_i` are the target critics (Polyak-averaged), :math:`\tau` the
expectile, :math:`\beta` the inverse temperature and :math:`w_{\max} = 100`.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from typing import Any, ClassVar

import torch
from tensordict import TensorDict, TensorDictBase, TensorDictParams
from tensordict.nn import ProbabilisticTensorDictSequential, TensorDictModule, dispatch
from tensordict.utils import NestedKey
from torch import Tensor
from torchrl.data.tensor_specs import TensorSpec
from torchrl.data.utils import _find_action_space
from torchrl.objectives.utils import (
    _GAMMA_LMBDA_DEPREC_ERROR,
    distance_loss,
)

from torchrl_offline.objectives._actor_critic import ActorCriticLoss
from torchrl_offline.objectives._checks import check_reduction
from torchrl_offline.objectives.common import (
    OfflineLossError,
    actor_distribution,
    check_batch,
    count_update,
    find_action_spec,
    logged_action_value,
    module_apply,
    next_key,
    tanh_normal_log_prob,
    td_target,
)
from torchrl_offline.objectives.declaration import AlgorithmDeclaration, ParamGroup
from torchrl_offline.objectives.gaussian_actor import advise_on_actor
from torchrl_offline.objectives.networks import STOCHASTIC_ACTORS

__all__ = [
    "DISCRETE_IQL_ALGORITHM",
    "IQL_ALGORITHM",
    "IQL_PRESETS",
    "DiscreteIQLLoss",
    "IQLLoss",
    "expectile_loss",
]

#: Published IQL hyperparameters (Kostrikov et al., 2022, appendix), by task family.
IQL_PRESETS: dict[str, dict[str, float]] = {
    "mujoco": {"expectile": 0.7, "temperature": 3.0},
    "antmaze": {"expectile": 0.9, "temperature": 10.0},
    "kitchen": {"expectile": 0.7, "temperature": 0.5},
    "adroit": {"expectile": 0.7, "temperature": 0.5},
}


def expectile_loss(diff: Tensor, expectile: float) -> Tensor:
    r"""Asymmetric squared loss :math:`|\tau - 1(u < 0)|\,u^2` of IQL's value regression.

    Args:
        diff (Tensor): ``u = Q(s, a) - V(s)``.
        expectile (float): :math:`\tau` in ``[0, 1]``; ``0.5`` is the mean squared error.

    Examples:
        >>> import torch
        >>> expectile_loss(torch.tensor([2.0, -2.0]), 0.7)
        tensor([2.8000, 1.2000])
    """
    weight = torch.where(diff > 0, expectile, 1.0 - expectile)
    return weight * diff.square()


class IQLLoss(ActorCriticLoss):
    r"""Implicit Q-Learning loss for continuous actions; a drop-in for TorchRL's ``IQLLoss``.

    Presented in "Offline Reinforcement Learning with Implicit Q-Learning",
    https://arxiv.org/abs/2110.06169. The value network is fit by expectile regression
    on the minimum of the target critics, the twin critics by TD on ``V(s')``, and the
    actor by advantage-weighted log-likelihood of the dataset action with weights
    ``exp(temperature * A)`` clipped at ``max_weight``.

    The keys' plumbing, the value estimator, the batched critics and the TD target come
    from :class:`~torchrl_offline.objectives._actor_critic.ActorCriticLoss`; this class
    holds IQL's own math: the expectile regression of ``V``, the advantage-weighted actor
    and the critics' regression on ``r + gamma V(s')``.

    Compared with ``torchrl.objectives.IQLLoss`` (same arguments and keys):

    * defaults are the paper's MuJoCo values (expectile 0.7, temperature 3.0) and the
      critic loss is the paper's squared error; :data:`IQL_PRESETS` /
      :meth:`from_preset` hold the other published settings (AntMaze 0.9 / 10,
      Kitchen and Adroit 0.7 / 0.5);
    * the twin critics are one batched computation (stacked weights) and plain MLPs
      are evaluated functionally, without swapping parameters in and out of modules;
    * the batch is checked (missing keys, NaN/inf, naming the key and first index) and
      non-finite losses are reported with the update step;
    * the logged action is clamped into the open support of a tanh-squashed actor
      (``action_eps``), so actions logged exactly on the bounds do not produce
      infinite log-likelihoods;
    * ``reduction="none"`` returns per-sample losses; detached diagnostics
      (``value``, ``state_action_value``, ``advantage``, ``weight``,
      ``weight_clip_fraction``) come with the output.

    The actor matters more than any loss detail: with the IQL paper's Gaussian policy
    (``tanh`` mean in the action box, one state-independent log-std; see
    :func:`~torchrl_offline.objectives.gaussian_actor.make_tanh_mean_gaussian_actor`)
    this loss reaches d3rlpy's IQL returns on ``benchmarks/learning_pendulum.py``,
    while with the ``TanhNormal`` actor of TorchRL's IQL example (state-dependent
    scale) it ends below the dataset's average return (a ``TanhNormal`` actor is
    flagged once, at construction, on the ``torchrl_offline`` logger). Build the networks with ReLU
    hidden units: ``torchrl.modules.MLP`` defaults to ``Tanh``.

    Args:
        actor_network (ProbabilisticTensorDictSequential): stochastic actor.
        qvalue_network (TensorDictModule or list of TensorDictModule): ``Q(s, a)``;
            a single module is copied ``num_qvalue_nets`` times with fresh weights.
        value_network (TensorDictModule): ``V(s)``.

    Keyword Args:
        num_qvalue_nets (int, optional): number of critics. Defaults to ``2``.
        loss_function (str, optional): critic regression loss, ``"l2"`` (the paper),
            ``"smooth_l1"`` (TorchRL's default) or ``"l1"``. Defaults to ``"l2"``.
        temperature (float, optional): inverse temperature :math:`\beta`. Defaults to ``3.0``.
        expectile (float, optional): expectile :math:`\tau`. Defaults to ``0.7``.
        max_weight (float, optional): clip of the advantage weights. Defaults to ``100``.
        action_eps (float, optional): for actors with a ``TanhNormal``-like bounded
            distribution, the logged action is clamped to ``[low + eps * (high - low) / 2,
            high - eps * (high - low) / 2]`` before its log-likelihood is taken.
            ``0`` disables it. Defaults to ``1e-4``.
        gamma (float, optional): deprecated, use :meth:`make_value_estimator`.
        priority_key (str, optional): deprecated, use ``set_keys(priority=...)``.
        separate_losses (bool, optional): shared actor/critic parameters are trained
            by the actor loss only. Defaults to ``False``.
        reduction (str, optional): ``"none"``, ``"mean"`` or ``"sum"``. Defaults to ``"mean"``.
        deactivate_vmap (bool, optional): loop over critics instead of batching them.
        scalar_output_mode (str, optional): with ``reduction="none"``, ``"exclude"``
            (default) drops the scalar diagnostics, ``"non_tensor"`` keeps them as
            non-tensor data.
        check_inputs (bool, optional): check the batch for missing keys and NaN/inf
            and the losses for NaN/inf. Defaults to ``True``.

    Examples:
        >>> import torch
        >>> from tensordict import TensorDict
        >>> from tensordict.nn import TensorDictModule
        >>> from torchrl.data import Bounded
        >>> from torchrl.modules import MLP, NormalParamExtractor, ProbabilisticActor
        >>> from torchrl.modules import TanhNormal, ValueOperator
        >>> from torchrl.objectives import SoftUpdate
        >>> from torchrl_offline.objectives.iql import IQLLoss
        >>> n_obs, n_act = 3, 2
        >>> spec = Bounded(-torch.ones(n_act), torch.ones(n_act), (n_act,))
        >>> actor = ProbabilisticActor(
        ...     TensorDictModule(
        ...         torch.nn.Sequential(MLP(in_features=n_obs, out_features=2 * n_act,
        ...                                 num_cells=[16]), NormalParamExtractor()),
        ...         in_keys=["observation"], out_keys=["loc", "scale"]),
        ...     in_keys=["loc", "scale"], spec=spec, distribution_class=TanhNormal)
        >>> qvalue = ValueOperator(MLP(in_features=n_obs + n_act, out_features=1,
        ...                            num_cells=[16]), in_keys=["observation", "action"])
        >>> value = ValueOperator(MLP(in_features=n_obs, out_features=1, num_cells=[16]),
        ...                       in_keys=["observation"])
        >>> loss = IQLLoss(actor, qvalue, value)
        >>> loss.make_value_estimator(gamma=0.99)
        >>> updater = SoftUpdate(loss, tau=0.005)  # call updater.step() after each update
        >>> batch = TensorDict({
        ...     "observation": torch.randn(8, n_obs),
        ...     "action": spec.rand((8,)),
        ...     ("next", "observation"): torch.randn(8, n_obs),
        ...     ("next", "reward"): torch.randn(8, 1),
        ...     ("next", "done"): torch.zeros(8, 1, dtype=torch.bool),
        ...     ("next", "terminated"): torch.zeros(8, 1, dtype=torch.bool),
        ... }, [8])
        >>> out = loss(batch)
        >>> sorted(k for k in out.keys() if k.startswith("loss_"))
        ['loss_actor', 'loss_qvalue', 'loss_value']
        >>> (out["loss_actor"] + out["loss_qvalue"] + out["loss_value"]).backward()
    """

    @dataclass
    class _AcceptedKeys:
        """Configurable tensordict keys (same names and defaults as TorchRL's IQLLoss).

        Attributes:
            value (NestedKey): output key of the value network. Defaults to ``"state_value"``.
            action (NestedKey): the logged action. Defaults to ``"action"``.
            log_prob (NestedKey): where the actor's log-probability of the logged action
                is written. Defaults to ``"_log_prob"``.
            priority (NestedKey): where the TD error is written for prioritized replay.
                Defaults to ``"td_error"``.
            state_action_value (NestedKey): output key of the critics.
                Defaults to ``"state_action_value"``.
            reward (NestedKey): the reward, read under ``"next"``. Defaults to ``"reward"``.
            done (NestedKey): the done flag, read under ``"next"``. Defaults to ``"done"``.
            terminated (NestedKey): the termination flag, read under ``"next"``.
                Defaults to ``"terminated"``.
        """

        value: NestedKey = "state_value"
        action: NestedKey = "action"
        log_prob: NestedKey = "_log_prob"
        priority: NestedKey = "td_error"
        state_action_value: NestedKey = "state_action_value"
        reward: NestedKey = "reward"
        done: NestedKey = "done"
        terminated: NestedKey = "terminated"

    tensor_keys: _AcceptedKeys
    default_keys = _AcceptedKeys
    # TorchRL's continuous IQL reduces its critic term without the batch's validity masks
    # (("collector", "mask"), "shifted_valid"; it selects the critic's batch without
    # them) while its actor and value terms use them; its discrete IQL masks all three.
    _masked_critic: ClassVar[bool] = False
    out_keys = ["loss_actor", "loss_qvalue", "loss_value", "entropy"]
    # TD0 (default), TD1 or TD(lambda) on V(s'), the value network's ``value`` output
    _estimator_value: ClassVar[str] = "value"
    PRESETS: ClassVar[dict[str, dict[str, float]]] = IQL_PRESETS

    actor_network: TensorDictModule
    actor_network_params: TensorDictParams
    target_actor_network_params: TensorDictParams
    qvalue_network: TensorDictModule
    qvalue_network_params: TensorDictParams
    target_qvalue_network_params: TensorDictParams
    value_network: TensorDictModule | None
    value_network_params: TensorDictParams | None
    target_value_network_params: TensorDictParams | None

    def __init__(
        self,
        actor_network: ProbabilisticTensorDictSequential,
        qvalue_network: TensorDictModule | list[TensorDictModule],
        value_network: TensorDictModule | None,
        *,
        num_qvalue_nets: int = 2,
        loss_function: str = "l2",
        temperature: float = 3.0,
        expectile: float = 0.7,
        max_weight: float = 100.0,
        action_eps: float = 1e-4,
        gamma: float | None = None,
        priority_key: str | None = None,
        separate_losses: bool = False,
        reduction: str | None = None,
        deactivate_vmap: bool = False,
        scalar_output_mode: str | None = None,
        check_inputs: bool = True,
    ) -> None:
        self._in_keys = None
        self._out_keys = None
        reduction = check_reduction(reduction)
        if not 0.0 <= expectile <= 1.0:
            raise ValueError(f"expectile must be in [0, 1], got {expectile}")
        if temperature < 0:
            raise ValueError(f"temperature must be >= 0, got {temperature}")
        if value_network is None:
            raise TypeError("IQLLoss needs a value_network V(s)")
        if gamma is not None:
            raise TypeError(_GAMMA_LMBDA_DEPREC_ERROR)
        super().__init__()
        self._set_deprecated_ctor_keys(priority=priority_key)
        self.temperature = float(temperature)
        self.expectile = float(expectile)
        self.max_weight = float(max_weight)
        self.action_eps = float(action_eps)
        self.loss_function = loss_function
        self.deactivate_vmap = deactivate_vmap
        self.check_inputs = check_inputs
        self.num_qvalue_nets = num_qvalue_nets
        self.delay_qvalue = True  # the critics always have target copies (TorchRL's attribute)
        self.reduction = reduction
        self._num_updates = 0

        self.convert_to_functional(actor_network, "actor_network", create_target_params=False)
        advise_on_actor("IQLLoss", actor_network)
        policy_params = list(actor_network.parameters()) if separate_losses else None
        self.convert_to_functional(
            value_network,
            "value_network",
            create_target_params=False,
            compare_against=policy_params,
        )
        if separate_losses:
            policy_params = policy_params + list(value_network.parameters())
        if isinstance(qvalue_network, (list, tuple)) and len(qvalue_network) != num_qvalue_nets:
            raise ValueError(
                f"got {len(qvalue_network)} qvalue networks but num_qvalue_nets={num_qvalue_nets}"
            )
        self.convert_to_functional(
            qvalue_network,
            "qvalue_network",
            num_qvalue_nets,
            create_target_params=True,
            compare_against=policy_params,
        )
        if reduction == "none" and scalar_output_mode is None:
            scalar_output_mode = "exclude"
        if scalar_output_mode not in (None, "exclude", "non_tensor"):
            raise ValueError(
                f"scalar_output_mode must be 'exclude' or 'non_tensor', got {scalar_output_mode!r}"
            )
        self.scalar_output_mode = scalar_output_mode
        spec = find_action_spec(actor_network)
        shape = getattr(spec, "shape", None)
        self._action_dim = int(shape[-1]) if shape is not None and len(shape) else None
        self.register_load_state_dict_post_hook(self._drop_caches)

    # ------------------------------------------------------------------ construction
    @classmethod
    def from_preset(
        cls,
        preset: str,
        actor_network: ProbabilisticTensorDictSequential,
        qvalue_network: TensorDictModule | list[TensorDictModule],
        value_network: TensorDictModule,
        **kwargs: Any,
    ) -> IQLLoss:
        """Builds the loss with a named set of published hyperparameters.

        Args:
            preset (str): a key of :data:`IQL_PRESETS`: ``"mujoco"`` (expectile 0.7,
                temperature 3.0), ``"antmaze"`` (0.9, 10.0), ``"kitchen"`` or
                ``"adroit"`` (0.7, 0.5).
            actor_network, qvalue_network, value_network: as in the constructor.
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
            >>> v = ValueOperator(MLP(in_features=3, out_features=1, num_cells=[8]),
            ...                   in_keys=["observation"])
            >>> loss = IQLLoss.from_preset("antmaze", actor, q, v)
            >>> loss.expectile, loss.temperature
            (0.9, 10.0)
        """
        if preset not in cls.PRESETS:
            raise KeyError(f"unknown IQL preset {preset!r}; choose from {sorted(cls.PRESETS)}")
        return cls(
            actor_network, qvalue_network, value_network, **{**cls.PRESETS[preset], **kwargs}
        )

    # ------------------------------------------------------------------ keys
    def _set_in_keys(self) -> None:
        keys = [
            self.tensor_keys.action,
            ("next", self.tensor_keys.reward),
            ("next", self.tensor_keys.done),
            ("next", self.tensor_keys.terminated),
            *self.actor_network.in_keys,
            *self.qvalue_network.in_keys,
            *self.value_network.in_keys,
            *[next_key(key) for key in self.value_network.in_keys],
        ]
        self._in_keys = list(dict.fromkeys(keys))

    # ------------------------------------------------------------------ network calls
    def _actor_dist(self, tensordict: TensorDictBase):
        return actor_distribution(self.actor_network, self.actor_network_params, tensordict)

    def _logged_action_log_prob(self, dist, action: Tensor) -> Tensor:
        expected = tuple(dist.batch_shape) + tuple(dist.event_shape)
        if tuple(action.shape) != expected:
            raise OfflineLossError(
                f"key {self.tensor_keys.action!r} has shape {tuple(action.shape)} but the "
                f"actor's distribution is over shape {expected}: the action spec or the "
                "actor's output size does not match the data"
            )
        if self.action_eps > 0:
            low = getattr(dist, "low", None)
            high = getattr(dist, "high", None)
            if isinstance(low, Tensor) and isinstance(high, Tensor):
                margin = self.action_eps * (high - low) / 2
                action = torch.max(torch.min(action, high - margin), low + margin)
        return dist.log_prob(action)

    def _check_action_dim(self, tensordict: TensorDictBase) -> None:
        if self._action_dim is None:
            return
        action = tensordict.get(self.tensor_keys.action)
        if action.shape[-1] != self._action_dim:
            raise OfflineLossError(
                f"key {self.tensor_keys.action!r} has {action.shape[-1]} action dims but "
                f"the actor's action spec has {self._action_dim}"
            )

    def _value(self, params: TensorDictBase, inputs: list[Tensor]) -> Tensor:
        return module_apply(
            self.value_network, params, *inputs, out_key=self.tensor_keys.value
        ).squeeze(-1)

    def _qvalues(self, params: TensorDictBase, tensordict: TensorDictBase) -> Tensor:
        """All critics' values of the logged action, ``[E, *batch]``."""
        q = self._critics(params, [tensordict.get(k) for k in self.qvalue_network.in_keys])
        return self._select_action_value(q, tensordict)

    def _select_action_value(self, q: Tensor, tensordict: TensorDictBase) -> Tensor:
        return q  # the critics take the action as input

    def _critic_target(self, tensordict: TensorDictBase) -> Tensor:
        """``r + gamma (1 - terminated) V(s')`` (or the configured estimator's target)."""
        next_inputs = [tensordict.get(next_key(k)) for k in self.value_network.in_keys]
        next_value = self._value(self.value_network_params, next_inputs)  # under no_grad
        return td_target(self, tensordict, next_value)

    # ------------------------------------------------------------------ losses
    def _reduce(self, loss: Tensor, tensordict: TensorDictBase | None) -> Tensor:
        return self._reduce_loss(loss, tensordict=tensordict)

    def _min_target_q(self, tensordict: TensorDictBase) -> Tensor:
        """Minimum over the target critics of the logged action's value, ``[*batch]``."""
        with torch.no_grad():
            params = self._critic_params("target_qvalue_network_params")
            target_q = self._qvalues(params, tensordict).min(0)[0]
        return target_q

    def value_loss(self, tensordict: TensorDictBase) -> tuple[Tensor, dict]:
        """Expectile regression of ``V(s)`` on the minimum of the target critics."""
        target_q = self._min_target_q(tensordict)
        value = self._value(
            self.value_network_params, [tensordict.get(k) for k in self.value_network.in_keys]
        )
        loss = expectile_loss(target_q - value, self.expectile)
        return self._reduce(loss, tensordict), {
            "value": value.detach(),
            "target_q": target_q,
        }

    def actor_loss(
        self, tensordict: TensorDictBase, *, _cache: dict | None = None
    ) -> tuple[Tensor, dict]:
        """Advantage-weighted log-likelihood of the logged action."""
        if _cache is not None:
            target_q, value = _cache["target_q"], _cache["value"]
        else:
            target_q = self._min_target_q(tensordict)
            with torch.no_grad():
                value = self._value(
                    self.value_network_params,
                    [tensordict.get(k) for k in self.value_network.in_keys],
                )
        advantage = target_q - value
        weight = torch.exp(advantage * self.temperature).clamp_max(self.max_weight)
        action = tensordict.get(self.tensor_keys.action)
        log_prob = tanh_normal_log_prob(
            self.actor_network,
            self.actor_network_params,
            tensordict,
            action,
            action_eps=self.action_eps,
            action_key=self.tensor_keys.action,
        )
        if log_prob is None:  # any other actor: through its distribution
            log_prob = self._logged_action_log_prob(self._actor_dist(tensordict), action)
        if log_prob.shape != weight.shape:
            raise OfflineLossError(
                f"actor log-prob has shape {tuple(log_prob.shape)} but the critics give "
                f"{tuple(weight.shape)}: check the action spec against the actor's output"
            )
        tensordict.set(self.tensor_keys.log_prob, log_prob.detach())
        loss = -(weight * log_prob)
        return self._reduce(loss, tensordict), {
            "log_prob": log_prob.detach(),
            "advantage": advantage,
            "weight": weight,
        }

    def qvalue_loss(self, tensordict: TensorDictBase) -> tuple[Tensor, dict]:
        """TD regression of every critic on ``r + gamma (1 - terminated) V(s')``."""
        with torch.no_grad():
            target = self._critic_target(tensordict)
        q = self._qvalues(self._critic_params("qvalue_network_params"), tensordict)
        target = target.expand_as(q)
        if self.loss_function in ("l2", "mse"):
            per_critic = (q - target).square()
        else:
            per_critic = distance_loss(q, target, loss_function=self.loss_function)
        loss = per_critic.sum(0)
        td_error = (q.detach() - target).abs().max(0)[0]
        mask_source = tensordict if self._masked_critic else None
        return self._reduce(loss, mask_source), {
            "td_error": td_error,
            "state_action_value": q.detach(),
        }

    @dispatch
    def forward(self, tensordict: TensorDictBase) -> TensorDictBase:
        """Computes the value, critic and actor losses on a batch of transitions.

        Returns:
            TensorDict with ``loss_actor``, ``loss_qvalue``, ``loss_value`` and the
            detached diagnostics ``entropy`` (minus the mean log-likelihood of the
            logged action, as in TorchRL), ``value``, ``state_action_value``,
            ``advantage``, ``weight`` and ``weight_clip_fraction``. The absolute TD
            error (max over critics) is written to the batch under the ``priority`` key.
        """
        if self.check_inputs:
            check_batch(tensordict, self.in_keys, finite=False)
            self._check_action_dim(tensordict)
        loss_value, meta_v = self.value_loss(tensordict)
        loss_actor, meta_a = self.actor_loss(tensordict, _cache=meta_v)
        loss_qvalue, meta_q = self.qvalue_loss(tensordict)
        tensordict.set(self.tensor_keys.priority, meta_q["td_error"])
        out = {"loss_actor": loss_actor, "loss_qvalue": loss_qvalue, "loss_value": loss_value}
        scalars = {
            "entropy": -meta_a["log_prob"].mean(),
            "value": meta_v["value"].mean(),
            "state_action_value": meta_q["state_action_value"].mean(),
            "advantage": meta_a["advantage"].mean(),
            "weight": meta_a["weight"].mean(),
            "weight_clip_fraction": (meta_a["weight"] >= self.max_weight).float().mean(),
        }
        if self.reduction == "none":
            td_out = TensorDict(out, batch_size=tensordict.batch_size)
            if self.scalar_output_mode == "non_tensor":
                for key, value in scalars.items():
                    td_out.set_non_tensor(key, value)
        else:
            out.update(scalars)
            td_out = TensorDict(out)
        count_update(self, "_num_updates", td_out, batch=tensordict)
        return td_out


class DiscreteIQLLoss(IQLLoss):
    r"""Implicit Q-Learning loss for discrete actions; a drop-in for TorchRL's ``DiscreteIQLLoss``.

    The critics output one value per action (``[*batch, n_actions]``) and the value of
    the logged action is selected; the actor is a categorical policy. Everything else
    is :class:`IQLLoss`.

    Args:
        actor_network (ProbabilisticTensorDictSequential): categorical actor.
        qvalue_network (TensorDictModule): ``Q(s, .)`` with one output per action.
        value_network (TensorDictModule): ``V(s)``.

    Keyword Args:
        action_space (str or TensorSpec): ``"categorical"`` (integer indices) or
            ``"one-hot"``, or the corresponding spec. Required (TorchRL warns and assumes
            one-hot; here it must be given).
        **kwargs: as in :class:`IQLLoss`.

    Examples:
        >>> import torch
        >>> from tensordict import TensorDict
        >>> from tensordict.nn import TensorDictModule
        >>> from torchrl.data import Categorical
        >>> from torchrl.modules import MLP, ProbabilisticActor, ValueOperator
        >>> from torchrl_offline.objectives.iql import DiscreteIQLLoss
        >>> n_obs, n_act = 4, 2
        >>> actor = ProbabilisticActor(
        ...     TensorDictModule(MLP(in_features=n_obs, out_features=n_act, num_cells=[16]),
        ...                      in_keys=["observation"], out_keys=["logits"]),
        ...     in_keys=["logits"], spec=Categorical(n_act), distribution_class=torch.distributions.Categorical)
        >>> qvalue = TensorDictModule(MLP(in_features=n_obs, out_features=n_act, num_cells=[16]),
        ...                           in_keys=["observation"], out_keys=["state_action_value"])
        >>> value = ValueOperator(MLP(in_features=n_obs, out_features=1, num_cells=[16]),
        ...                       in_keys=["observation"])
        >>> loss = DiscreteIQLLoss(actor, qvalue, value, action_space="categorical")
        >>> batch = TensorDict({
        ...     "observation": torch.randn(8, n_obs),
        ...     "action": torch.randint(n_act, (8,)),
        ...     ("next", "observation"): torch.randn(8, n_obs),
        ...     ("next", "reward"): torch.randn(8, 1),
        ...     ("next", "done"): torch.zeros(8, 1, dtype=torch.bool),
        ...     ("next", "terminated"): torch.zeros(8, 1, dtype=torch.bool),
        ... }, [8])
        >>> loss(batch)["loss_qvalue"].shape
        torch.Size([])
    """

    _masked_critic: ClassVar[bool] = True

    def __init__(
        self,
        actor_network: ProbabilisticTensorDictSequential,
        qvalue_network: TensorDictModule,
        value_network: TensorDictModule | None,
        *,
        action_space: str | TensorSpec | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(actor_network, qvalue_network, value_network, **kwargs)
        if action_space is None:
            warnings.warn(
                "action_space was not given; DiscreteIQLLoss assumes 'one-hot' as TorchRL does. "
                "Pass action_space='categorical' for integer actions.",
                stacklevel=2,
            )
            action_space = "one-hot"
        self.action_space = _find_action_space(action_space)
        if self.action_space not in ("categorical", "one_hot"):
            raise OfflineLossError(
                f"DiscreteIQLLoss supports 'categorical' and 'one-hot' actions, "
                f"got {self.action_space!r}"
            )

    def _check_action_dim(self, tensordict: TensorDictBase) -> None:
        pass  # indices are range-checked against the critic's output in _select_action_value

    def _select_action_value(self, q: Tensor, tensordict: TensorDictBase) -> Tensor:
        return logged_action_value(
            q,
            tensordict.get(self.tensor_keys.action),
            one_hot=self.action_space == "one_hot",
            action_key=self.tensor_keys.action,
            check_inputs=self.check_inputs,
            ensemble_dims=1,
        )

    def _logged_action_log_prob(self, dist, action: Tensor) -> Tensor:
        if self.action_space == "categorical":
            event = getattr(dist, "event_shape", torch.Size())
            if len(event) == 0 and action.ndim > len(dist.batch_shape):
                action = action.squeeze(-1)
        return dist.log_prob(action)


# ------------------------------------------------------------------------- declaration
_IQL_OPTIMIZER = (
    ParamGroup("actor", "actor_lr", "actor_network_params"),
    ParamGroup("qvalue", "critic_lr", "qvalue_network_params"),
    ParamGroup("value", "value_lr", "value_network_params"),
)
_IQL_TERMS = ("loss_actor", "loss_qvalue", "loss_value")

#: IQL as :func:`~torchrl_offline.trainers.algorithms.build_algorithm` builds it: the
#: paper's Gaussian actor (``actor="tanh_normal"`` for TorchRL's ``TanhNormal``, which
#: stays below the dataset average on mixed data: ``docs/benchmarks.md``), twin
#: ``Q(s, a)`` and ``V(s)``, 2x256 MLPs, Adam at 3e-4 with the actor's rate on the paper's
#: cosine decay over its 1,000,000 steps (``actor_lr_decay_steps``; ``0`` decays over the
#: run instead, which at short budgets ends the actor's training early and cost 10 to 28
#: points on mixed data: ``docs/benchmarks.md``); presets: :data:`IQL_PRESETS`.
IQL_ALGORITHM = AlgorithmDeclaration(
    name="iql",
    loss_class=IQLLoss,
    networks=lambda nets, hp: {
        "actor_network": nets.stochastic_actor(hp["actor"]),
        "qvalue_network": nets.qvalue(),
        "value_network": nets.value(),
    },
    optimizer=_IQL_OPTIMIZER,
    loss_terms=_IQL_TERMS,
    defaults={
        "actor": "gaussian",
        "actor_lr": 3e-4,
        "critic_lr": 3e-4,
        "value_lr": 3e-4,
        "actor_lr_schedule": "cosine",
        "actor_lr_decay_steps": 1_000_000,
    },
    choices={"actor": STOCHASTIC_ACTORS, "actor_lr_schedule": ("cosine", "constant")},
    presets=IQL_PRESETS,
    discrete_variant="discrete_iql",
)

#: Discrete IQL: a categorical actor and ``Q(s, .)``, Adam at 3e-4.
DISCRETE_IQL_ALGORITHM = AlgorithmDeclaration(
    name="discrete_iql",
    loss_class=DiscreteIQLLoss,
    networks=lambda nets, hp: {
        "actor_network": nets.categorical_actor(),
        "qvalue_network": nets.qvalue(),
        "value_network": nets.value(),
    },
    optimizer=_IQL_OPTIMIZER,
    loss_terms=_IQL_TERMS,
    action="discrete",
    defaults={"actor_lr": 3e-4, "critic_lr": 3e-4, "value_lr": 3e-4},
    presets=IQL_PRESETS,
    action_spec_argument="action_space",
)
