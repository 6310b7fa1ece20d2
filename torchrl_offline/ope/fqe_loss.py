r"""The Fitted Q Evaluation loss (Le, Voloshin and Yue, ICML 2019) as a TorchRL loss module.

FQE estimates :math:`Q^\pi` of a fixed evaluation policy :math:`\pi` from logged transitions
``(s, a, r, s')`` by repeated regression on the policy's own Bellman target

.. math::

    L(\theta) = \mathbb{E}_{(s, a, r, s') \sim \mathcal{D}}
        \Big[\big(Q_\theta(s, a) - r - \gamma (1 - d)\,
        \mathbb{E}_{a' \sim \pi(\cdot \mid s')} \bar Q(s', a')\big)^2\Big],

where :math:`\bar Q` is a target network (hard or Polyak updates) and :math:`d` the
termination flag (a time-limit truncation still bootstraps).

:class:`FQELoss` is the :class:`~torchrl.objectives.LossModule` (usable in a plain TorchRL
loop); ``_PolicyQuery`` is what it asks of the evaluation policy (``E_pi`` weights or
draws). The estimator that fits this loss and evaluates the policy is
:class:`~torchrl_offline.ope.fqe.FQE`.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from tensordict import TensorDict, TensorDictBase, TensorDictParams
from tensordict.nn import TensorDictModule, TensorDictModuleBase, dispatch
from tensordict.utils import NestedKey
from torch import Tensor
from torchrl.data.tensor_specs import TensorSpec
from torchrl.data.utils import _find_action_space
from torchrl.envs.utils import ExplorationType, set_exploration_type
from torchrl.objectives.common import LossModule
from torchrl.objectives.utils import ValueEstimators, distance_loss

from torchrl_offline.objectives.common import (
    OfflineLossError,
    check_batch,
    check_finite_losses,
    ensemble_apply,
    find_action_spec,
    logged_action_value,
    make_loss_value_estimator,
    module_apply,
    next_key,
    td_target,
)
from torchrl_offline.ope.policy import EvaluationPolicy, _greedy_actor, check_policy_mode

__all__ = ["FQELoss"]


def _discrete_space(action_space: str | TensorSpec | None, policy) -> str | None:
    """``"categorical"``, ``"one_hot"`` or ``None`` (continuous) for the loss."""
    if isinstance(policy, EvaluationPolicy):
        policy = policy.policy
    if action_space is None:
        if getattr(policy, "discrete", None) is True:  # behaviour policies of the data layer
            return "categorical"
        spec = find_action_spec(policy)
        if spec is None:
            return None
        try:
            found = _find_action_space(spec)
        except (ValueError, NotImplementedError, TypeError):
            return None
        return found if found in ("categorical", "one_hot") else None
    if isinstance(action_space, str) and action_space in ("continuous", "box"):
        return None
    found = _find_action_space(action_space)
    if found not in ("categorical", "one_hot"):
        if isinstance(action_space, TensorSpec):
            return None
        raise OfflineLossError(
            f"action_space must be 'continuous', 'categorical' or 'one-hot', got {action_space!r}"
        )
    return found


class _PolicyQuery:
    """What FQE asks of the evaluation policy: ``E_pi`` weights (discrete) or draws (continuous).

    Policies with a distribution, a ``log_prob`` or a stated kernel / epsilon go through
    :class:`~torchrl_offline.ope.policy.EvaluationPolicy` (so FQE evaluates exactly the policy
    the importance-sampling estimators see); a plain deterministic actor is run as it is.
    Not an ``nn.Module``: the policy's weights never join the loss's parameters.
    """

    def __init__(
        self,
        policy,
        *,
        epsilon: float | None,
        kernel_bandwidth: float | None,
        action_key: NestedKey,
        mode: str | None = None,
    ) -> None:
        self.action_key = action_key
        check_policy_mode(mode, kernel_bandwidth=kernel_bandwidth, epsilon=epsilon)
        plain_greedy = epsilon is None and kernel_bandwidth is None and mode != "stochastic"
        if isinstance(policy, EvaluationPolicy):
            if mode is not None and mode != policy.mode:
                raise ValueError(
                    f"the EvaluationPolicy scores its {policy.mode} policy, not {mode}"
                )
            self.wrapped, self.actor = policy, policy.policy
        elif plain_greedy and (
            mode == "greedy" or not (hasattr(policy, "get_dist") or hasattr(policy, "log_prob"))
        ):
            if not callable(policy):
                raise TypeError(
                    f"Cannot evaluate a {type(policy).__name__}: expected a TorchRL actor "
                    "(deterministic, or with get_dist) or an EvaluationPolicy"
                )
            # The greedy policy itself, run under ExplorationType.DETERMINISTIC.
            self.wrapped, self.actor = None, _greedy_actor(policy)
        else:
            self.wrapped = EvaluationPolicy(
                policy, epsilon=epsilon, kernel_bandwidth=kernel_bandwidth, mode=mode
            )
            self.actor = policy
        in_keys = getattr(self.actor, "in_keys", None)
        self.in_keys = [k for k in (in_keys or ["observation"]) if k != action_key]

    @property
    def mode(self) -> str:
        """``"greedy"`` or ``"stochastic"``: the policy whose value the loss fits."""
        return "greedy" if self.wrapped is None else self.wrapped.mode

    def describe(self) -> str:
        if self.wrapped is not None:
            return self.wrapped.describe()
        return f"{type(self.actor).__name__}, greedy (its deterministic action)"

    def _inputs(self, td: TensorDictBase) -> TensorDictBase:
        return td.select(*self.in_keys).reshape(-1).to_tensordict()

    def _actor_action(self, flat: TensorDictBase) -> Tensor:
        with set_exploration_type(ExplorationType.DETERMINISTIC):
            out = self.actor(flat)
        return out.get(self.action_key) if isinstance(out, TensorDictBase) else out

    def action_probs(self, td: TensorDictBase, n_actions: int) -> Tensor:
        """``[*batch, n_actions]`` probabilities of every action."""
        flat = self._inputs(td)
        if self.wrapped is not None:
            if self.wrapped.num_actions is None:
                self.wrapped.num_actions = n_actions
            probs = self.wrapped.action_probs(flat)
        else:
            action = self._actor_action(flat)
            if action.dtype.is_floating_point or action.dtype == torch.bool:
                if action.shape[-1] != n_actions:
                    raise OfflineLossError(
                        f"the policy writes one-hot actions of size {action.shape[-1]} but the "
                        f"critic outputs {n_actions} action values: mismatched action spaces"
                    )
                index = action.reshape(flat.shape[0], -1).float().argmax(-1)
            else:
                index = action.reshape(flat.shape[0]).long()
            bad = (index < 0) | (index >= n_actions)
            if bool(bad.any()):
                first = int(bad.nonzero()[0, 0])
                raise OfflineLossError(
                    f"the policy chose action {int(index[first])} at flat batch index {first}, "
                    f"outside the critic's {n_actions} actions: mismatched action spaces"
                )
            probs = torch.nn.functional.one_hot(index, n_actions)
        return probs.reshape(*td.batch_size, -1)

    def sample_actions(self, td: TensorDictBase, num_samples: int) -> Tensor:
        """``[S, *batch, d]`` actions of the policy (``S = 1`` for a deterministic actor)."""
        flat = self._inputs(td)
        b = flat.shape[0]
        if self.wrapped is None:
            action = self._actor_action(flat)
            return action.reshape(1, *td.batch_size, -1)
        if self.wrapped.kind == "deterministic" and self.wrapped.kernel_bandwidth is None:
            num_samples = 1
        rep = flat.expand(num_samples, b).reshape(num_samples * b).to_tensordict()
        action = self.wrapped.sample(rep)
        return action.reshape(num_samples, *td.batch_size, -1)


class FQELoss(LossModule):
    r"""Fitted Q Evaluation loss: TD regression of ``Q(s, a)`` on the evaluation policy's target.

    The target is ``r + gamma (1 - terminated) V(s')`` with
    ``V(s') = E_{a' ~ pi(.|s')} Qbar(s', a')`` computed with the target parameters
    (``target_qvalue_network_params``, kept up to date by
    :class:`~torchrl.objectives.SoftUpdate` or :class:`~torchrl.objectives.HardUpdate`)
    and turned into a return by the loss's TorchRL value estimator (TD(0); ``gamma`` is
    set with :meth:`make_value_estimator`). Only TD(0) is offered: multi-step returns
    along logged trajectories would follow the behaviour policy's actions and bias the
    evaluation of ``pi``.

    The evaluation policy is not trained: it is held as it is (not in the loss's
    parameters of the optimiser) and queried without gradients, so its weights may keep
    changing outside (e.g. inside a training run) and the loss always evaluates the
    current policy.

    * Continuous actions: the critic reads ``observation`` and ``action`` and writes one
      value; ``E_{a'}`` is the average over ``num_action_samples`` draws of ``pi(.|s')``
      (one action for a deterministic actor).
    * Discrete actions: the critic reads the observation and writes one value per action
      ``[*batch, n_actions]``; ``E_{a'}`` is the exact sum over actions weighted by the
      policy's probabilities (one-hot for a greedy actor, mixed with ``epsilon``).

    With ``num_qvalue_nets = E > 1`` the loss holds an ensemble of ``E`` critics with
    stacked parameters, evaluated in one batched computation; every value it returns
    (``state_action_value``, ``state_value``, the per-sample losses) then has a leading
    ensemble dimension ``[E, *batch]``. The critics share each batch and each draw of the
    policy; weighting their per-sample losses differently (``reduction="none"``) fits each
    on its own resample of the data, as :class:`~torchrl_offline.ope.fqe.FQE` does for its
    bootstrap interval.

    Args:
        qvalue_network (TensorDictModule or list of them): the critic ``Q(s, a)``
            (continuous) or ``Q(s, .)`` (discrete); for an ensemble, a list of
            ``num_qvalue_nets`` critics of the same structure (their weights initialise
            the members), or one critic (TorchRL resamples the other members' weights).
        policy (TensorDictModuleBase): the evaluation policy: a TorchRL
            ``ProbabilisticActor`` (any module with ``get_dist``), a behaviour policy of
            :mod:`torchrl_offline.data.behavior`, or a deterministic actor writing
            ``"action"``.

    Keyword Args:
        action_space (str or TensorSpec, optional): ``"continuous"``, ``"categorical"``
            (integer indices) or ``"one-hot"``, or the action spec. Defaults to the
            policy's spec (or ``discrete`` flag) when it has one, else continuous.
        epsilon (float, optional): for a deterministic discrete actor, evaluate the
            epsilon-greedy policy around it (as the importance-sampling estimators do with
            the same ``epsilon``). Defaults to the greedy actor itself.
        kernel_bandwidth (float, optional): for a deterministic continuous actor, evaluate
            the Gaussian-smoothed policy ``N(mu(s), h^2 I)`` that the importance-sampling
            estimators use with this bandwidth. Defaults to the actor itself.
        num_action_samples (int, optional): draws of ``pi(.|s')`` per next state for a
            stochastic continuous policy. Defaults to ``1`` (an unbiased target).
        policy_mode (str, optional): which policy to evaluate: ``"stochastic"`` (sampling
            its distribution), ``"greedy"`` (its deterministic action, smoothed by
            ``epsilon`` / ``kernel_bandwidth`` when given) or ``None`` (as given: the
            distribution of a policy that has one, else its action). Defaults to ``None``.
        num_qvalue_nets (int, optional): number of critics in the ensemble. Defaults to
            ``1`` (one critic, no ensemble dimension).
        loss_function (str, optional): ``"l2"`` (default), ``"smooth_l1"`` or ``"l1"``.
        reduction (str, optional): ``"none"``, ``"mean"`` (default) or ``"sum"``.
        check_inputs (bool, optional): check batches for missing keys and NaN/inf and
            losses for NaN/inf. Defaults to ``True``.

    Examples:
        >>> import torch
        >>> from tensordict import TensorDict
        >>> from tensordict.nn import TensorDictModule
        >>> from torchrl.modules import MLP, ValueOperator
        >>> from torchrl.objectives import SoftUpdate
        >>> from torchrl_offline.ope.fqe_loss import FQELoss
        >>> actor = TensorDictModule(torch.nn.Linear(3, 1), ["observation"], ["action"])
        >>> qvalue = ValueOperator(MLP(in_features=4, out_features=1, num_cells=[16]),
        ...                        in_keys=["observation", "action"])
        >>> loss = FQELoss(qvalue, actor)
        >>> loss.make_value_estimator(gamma=0.9)
        >>> updater = SoftUpdate(loss, tau=0.01)
        >>> batch = TensorDict({
        ...     "observation": torch.randn(8, 3), "action": torch.randn(8, 1),
        ...     ("next", "observation"): torch.randn(8, 3),
        ...     ("next", "reward"): torch.randn(8, 1),
        ...     ("next", "done"): torch.zeros(8, 1, dtype=torch.bool),
        ...     ("next", "terminated"): torch.zeros(8, 1, dtype=torch.bool),
        ... }, [8])
        >>> out = loss(batch)
        >>> out["loss_qvalue"].backward()
        >>> updater.step()
        >>> sorted(out.keys())
        ['loss_qvalue', 'state_action_value', 'target_value', 'td_error']
    """

    @dataclass
    class _AcceptedKeys:
        """Configurable tensordict keys.

        Attributes:
            action (NestedKey): the logged action. Defaults to ``"action"``.
            state_action_value (NestedKey): output key of the critic.
                Defaults to ``"state_action_value"``.
            value (NestedKey): where ``V(s')`` is read by the value estimator (under
                ``"next"``). Defaults to ``"state_value"``.
            priority (NestedKey): where the absolute TD error is written for prioritized
                replay. Defaults to ``"td_error"``.
            reward (NestedKey): the reward, read under ``"next"``. Defaults to ``"reward"``.
            done (NestedKey): the done flag, read under ``"next"``. Defaults to ``"done"``.
            terminated (NestedKey): the termination flag, read under ``"next"``.
                Defaults to ``"terminated"``.
        """

        action: NestedKey = "action"
        state_action_value: NestedKey = "state_action_value"
        value: NestedKey = "state_value"
        priority: NestedKey = "td_error"
        reward: NestedKey = "reward"
        done: NestedKey = "done"
        terminated: NestedKey = "terminated"

    tensor_keys: _AcceptedKeys
    default_keys = _AcceptedKeys
    default_value_estimator = ValueEstimators.TD0
    SUPPORTED_VALUE_ESTIMATORS = (ValueEstimators.TD0,)
    out_keys = ["loss_qvalue"]

    qvalue_network: TensorDictModule
    qvalue_network_params: TensorDictParams
    target_qvalue_network_params: TensorDictParams

    def __init__(
        self,
        qvalue_network: TensorDictModule,
        policy: TensorDictModuleBase,
        *,
        action_space: str | TensorSpec | None = None,
        epsilon: float | None = None,
        kernel_bandwidth: float | None = None,
        num_action_samples: int = 1,
        loss_function: str = "l2",
        reduction: str | None = None,
        check_inputs: bool = True,
        policy_mode: str | None = None,
        num_qvalue_nets: int = 1,
    ) -> None:
        self._in_keys = None
        if reduction is None:
            reduction = "mean"
        if reduction not in ("none", "mean", "sum"):
            raise ValueError(f"reduction must be 'none', 'mean' or 'sum', got {reduction!r}")
        if loss_function not in ("l2", "mse", "smooth_l1", "l1"):
            raise ValueError(
                f"loss_function must be 'l2', 'smooth_l1' or 'l1', got {loss_function!r}"
            )
        if num_action_samples < 1:
            raise ValueError(f"num_action_samples must be >= 1, got {num_action_samples}")
        if num_qvalue_nets < 1:
            raise ValueError(f"num_qvalue_nets must be >= 1, got {num_qvalue_nets}")
        super().__init__()
        self.discrete_space = _discrete_space(action_space, policy)
        self.evaluation_policy = _PolicyQuery(
            policy,
            epsilon=epsilon,
            kernel_bandwidth=kernel_bandwidth,
            action_key=self.tensor_keys.action,
            mode=policy_mode,
        )
        self.num_qvalue_nets = int(num_qvalue_nets)
        self.num_action_samples = int(num_action_samples)
        self.loss_function = loss_function
        self.reduction = reduction
        self.check_inputs = check_inputs
        self._num_updates = 0
        if isinstance(qvalue_network, (list, tuple)) and len(qvalue_network) == 1:
            qvalue_network = qvalue_network[0]
        self.convert_to_functional(
            qvalue_network,
            "qvalue_network",
            self.num_qvalue_nets if self.num_qvalue_nets > 1 else None,
            create_target_params=True,
        )

    @property
    def policy_mode(self) -> str:
        """``"greedy"`` or ``"stochastic"``: the policy whose value the loss fits."""
        return self.evaluation_policy.mode

    @property
    def _ensemble_dims(self) -> int:
        return 1 if self.num_qvalue_nets > 1 else 0

    @property
    def discrete(self) -> bool:
        """Whether the critic outputs one value per discrete action."""
        return self.discrete_space is not None

    # ------------------------------------------------------------------ keys / estimator
    def _forward_value_estimator_keys(self, **kwargs) -> None:
        self._in_keys = None
        if self._value_estimator is not None:
            self._value_estimator.set_keys(
                value=self.tensor_keys.value,
                reward=self.tensor_keys.reward,
                done=self.tensor_keys.done,
                terminated=self.tensor_keys.terminated,
            )

    def make_value_estimator(self, value_type: ValueEstimators = None, **hyperparams) -> None:
        """Builds the TD(0) estimator of the target ``r + gamma (1 - terminated) V(s')``.

        Args:
            value_type (ValueEstimators, optional): ``ValueEstimators.TD0`` (the default
                and only supported type) or a ``ValueEstimatorBase`` subclass.
            **hyperparams: e.g. ``gamma`` (default 0.99).
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
            **hyperparams,
        )

    def _critic_obs_keys(self) -> list[NestedKey]:
        return [k for k in self.qvalue_network.in_keys if k != self.tensor_keys.action]

    @property
    def in_keys(self) -> list[NestedKey]:
        if self._in_keys is None:
            obs = list(dict.fromkeys([*self._critic_obs_keys(), *self.evaluation_policy.in_keys]))
            keys = [
                self.tensor_keys.action,
                *self._critic_obs_keys(),
                *[next_key(k) for k in obs],
                ("next", self.tensor_keys.reward),
                ("next", self.tensor_keys.done),
                ("next", self.tensor_keys.terminated),
            ]
            self._in_keys = list(dict.fromkeys(keys))
        return self._in_keys

    @in_keys.setter
    def in_keys(self, values) -> None:
        self._in_keys = values

    # ------------------------------------------------------------------ critic queries
    def _q(self, params: TensorDictBase, obs: Sequence[Tensor], action: Tensor | None) -> Tensor:
        """The critic's raw output: ``[*batch, 1]`` (continuous) or ``[*batch, n]``."""
        inputs = []
        obs_iter = iter(obs)
        for key in self.qvalue_network.in_keys:
            inputs.append(action if key == self.tensor_keys.action else next(obs_iter))
        if params.batch_dims:  # stacked parameters of an ensemble
            return ensemble_apply(
                self.qvalue_network, params, *inputs, out_key=self.tensor_keys.state_action_value
            )
        return module_apply(
            self.qvalue_network, params, *inputs, out_key=self.tensor_keys.state_action_value
        )

    def _action_value(self, q: Tensor, action: Tensor, ensemble_dims: int) -> Tensor:
        """Discrete critic output ``[*E, *batch, n]`` at the logged action -> ``[*E, *batch]``."""
        # The data's encoding decides, not the policy's: a one-hot policy may be evaluated on
        # index actions and the other way round (``load_minari(one_hot_actions=...)``).
        one_hot_data = action.ndim == q.ndim - ensemble_dims and (
            action.shape[-1] > 1 or (q.shape[-1] == 1 and self.discrete_space == "one_hot")
        )
        return logged_action_value(
            q,
            action,
            one_hot=one_hot_data,
            action_key=self.tensor_keys.action,
            check_inputs=self.check_inputs,
            ensemble_dims=ensemble_dims,
        )

    def _params(self, target: bool, member: int | None) -> TensorDictBase:
        params = self.target_qvalue_network_params if target else self.qvalue_network_params
        if member is None or not self._ensemble_dims:
            return params
        return params[member]

    def state_action_value(
        self, tensordict: TensorDictBase, *, target: bool = False, member: int | None = None
    ) -> Tensor:
        """``Q(s, a)`` at the logged actions of ``tensordict``, shaped ``[*batch]`` (``[E, *batch]``
        for an ensemble, unless ``member`` picks one of its critics)."""
        params = self._params(target, member)
        obs = [tensordict.get(k) for k in self._critic_obs_keys()]
        action = tensordict.get(self.tensor_keys.action)
        if self.discrete:
            return self._action_value(self._q(params, obs, None), action, params.batch_dims)
        return self._q(params, obs, action).squeeze(-1)

    def state_value(
        self,
        tensordict: TensorDictBase,
        *,
        target: bool = False,
        num_action_samples: int | None = None,
        member: int | None = None,
    ) -> Tensor:
        """``V(s) = E_{a ~ pi(.|s)} Q(s, a)`` at the states of ``tensordict``, ``[*batch]``
        (``[E, *batch]`` for an ensemble, unless ``member`` picks one of its critics).

        Reads the root keys (use ``tensordict.get("next")`` for next states). The policy
        is queried without gradients; gradients flow into the critic's parameters.
        """
        params = self._params(target, member)
        ensemble_dims = params.batch_dims
        obs = [tensordict.get(k) for k in self._critic_obs_keys()]
        if self.discrete:
            q = self._q(params, obs, None)
            with torch.no_grad():
                probs = self.evaluation_policy.action_probs(tensordict, q.shape[-1]).to(q.dtype)
            if probs.shape != q.shape[ensemble_dims:]:
                raise OfflineLossError(
                    f"the policy gives action probabilities of shape {tuple(probs.shape)} but the "
                    f"critic outputs {tuple(q.shape[ensemble_dims:])}: mismatched action spaces"
                )
            return (probs * q).sum(-1)
        samples = self.num_action_samples if num_action_samples is None else num_action_samples
        with torch.no_grad():
            actions = self.evaluation_policy.sample_actions(tensordict, samples)  # [S, *b, d]
        s = actions.shape[0]
        obs = [o.unsqueeze(0).expand(s, *o.shape) for o in obs]
        return self._q(params, obs, actions).squeeze(-1).mean(ensemble_dims)

    # ------------------------------------------------------------------ loss
    def qvalue_loss(self, tensordict: TensorDictBase) -> tuple[Tensor, dict[str, Tensor]]:
        """The TD regression loss of the critic and its diagnostics (a minibatch of
        terminal steps only, e.g. from a log of one-step decisions, is regressed on its
        rewards: nothing is bootstrapped, the policy is not queried)."""
        with torch.no_grad():
            reward = tensordict.get(("next", self.tensor_keys.reward))
            terminated = tensordict.get(("next", self.tensor_keys.terminated), None)
            if terminated is not None and bool(terminated.all()):
                # Nothing to bootstrap (e.g. a log of one-step decisions): the target is
                # the reward, and the policy and the target critic are not queried.
                target = reward.reshape(tensordict.batch_size).expand(
                    *[self.num_qvalue_nets] * self._ensemble_dims, *tensordict.batch_size
                )
            elif self._ensemble_dims:  # [E, *batch] -> targets [*batch, E] -> [E, *batch]
                next_value = self.state_value(tensordict.get("next"), target=True)
                target = td_target(self, tensordict, next_value.movedim(0, -1).to(reward.dtype))
                target = target.movedim(-1, 0)
            else:
                next_value = self.state_value(tensordict.get("next"), target=True)
                next_value = next_value.reshape(reward.shape).to(reward.dtype)
                estimator = self.value_estimator
                td = tensordict.select(
                    ("next", self.tensor_keys.reward),
                    ("next", self.tensor_keys.done),
                    ("next", self.tensor_keys.terminated),
                    strict=False,
                )
                target = estimator.value_estimate(td, next_value=next_value).reshape(
                    tensordict.batch_size
                )
        q = self.state_action_value(tensordict)
        if self.loss_function in ("l2", "mse"):
            loss = (q - target).square()
        else:
            loss = distance_loss(q, target, loss_function=self.loss_function)
        td_error = (q.detach() - target).abs()
        return self._reduce_loss(loss, tensordict=tensordict), {
            "td_error": td_error,
            "state_action_value": q.detach(),
            "target_value": target,
        }

    @dispatch
    def forward(self, tensordict: TensorDictBase) -> TensorDictBase:
        """Computes the FQE critic loss on a batch of transitions.

        Returns:
            TensorDict with ``loss_qvalue`` and the detached diagnostics
            ``state_action_value``, ``target_value`` and ``td_error`` (means, or
            per-sample with ``reduction="none"``, batch size ``[E, *batch]`` for an
            ensemble). The absolute TD error (averaged over an ensemble) is also written
            to the batch under the ``priority`` key.
        """
        if self.check_inputs:
            check_batch(tensordict, self.in_keys)
        loss, meta = self.qvalue_loss(tensordict)
        td_error = meta["td_error"].mean(0) if self._ensemble_dims else meta["td_error"]
        tensordict.set(self.tensor_keys.priority, td_error)
        if self.reduction == "none":
            batch = [self.num_qvalue_nets] * self._ensemble_dims + list(tensordict.batch_size)
            out = TensorDict({"loss_qvalue": loss, **meta}, batch_size=batch)
        else:
            out = TensorDict(
                {"loss_qvalue": loss, **{k: v.mean() for k, v in meta.items()}}, batch_size=[]
            )
        self._num_updates += 1
        if self.check_inputs:
            check_finite_losses(out, self._num_updates)
        return out

    def _reduce_loss(self, loss: Tensor, tensordict: TensorDictBase) -> Tensor:
        if self.reduction == "mean":
            return loss.mean()
        if self.reduction == "sum":
            return loss.sum()
        return loss
