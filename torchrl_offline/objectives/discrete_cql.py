"""Discrete Conservative Q-Learning (Kumar et al., 2020): CQL(H) on a DQN or QR-DQN critic.

Paper: "Conservative Q-Learning for Offline Reinforcement Learning",
https://arxiv.org/abs/2006.04779 (its Atari experiments use the QR-DQN critic).

:class:`DiscreteCQLLoss` is a drop-in for :class:`torchrl.objectives.DiscreteCQLLoss`
with the CQL weight ``alpha`` and an optional quantile critic; its target network gives
the bootstrap (TorchRL 0.14.1's bootstraps from the online network). The continuous
loss is :class:`~torchrl_offline.objectives.cql.CQLLoss`, which re-exports this one.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from tensordict import TensorDict, TensorDictBase, TensorDictParams
from tensordict.nn import TensorDictModule, dispatch
from tensordict.utils import NestedKey, unravel_key
from torch import Tensor, nn
from torchrl.data.utils import _find_action_space
from torchrl.modules.tensordict_module.actors import QValueActor
from torchrl.modules.tensordict_module.common import ensure_tensordict_compatible
from torchrl.objectives.common import LossModule
from torchrl.objectives.utils import _GAMMA_LMBDA_DEPREC_ERROR, ValueEstimators, distance_loss
from torchrl.objectives.value import TD0Estimator

from torchrl_offline.objectives.common import (
    OfflineLossError,
    check_batch,
    check_output_dim,
    count_update,
    make_loss_value_estimator,
    next_key,
    td_target,
)
from torchrl_offline.objectives.declaration import AlgorithmDeclaration, ParamGroup

__all__ = ["DISCRETE_CQL_ALGORITHM", "DiscreteCQLLoss"]


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
        >>> from torchrl_offline.objectives.discrete_cql import DiscreteCQLLoss
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
            pred_val (NestedKey): where :meth:`value_loss` writes the action values
                ``Q(s, .)`` (the quantile means with ``num_quantiles``), read by
                :meth:`cql_loss`. Defaults to ``"pred_val"``.
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
    SUPPORTED_VALUE_ESTIMATORS = (
        ValueEstimators.TD0,
        ValueEstimators.TD1,
        ValueEstimators.TDLambda,
    )
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

    def make_value_estimator(self, value_type: ValueEstimators = None, **hyperparams):
        """Builds the estimator of the Bellman target from the next states' value.

        Args:
            value_type (ValueEstimators, optional): ``TD0`` (default), ``TD1`` or
                ``TDLambda`` (over the time dimension of trajectory batches; not with
                ``num_quantiles``), or a ``ValueEstimatorBase`` subclass.

        Keyword Args:
            gamma (float): the discount factor.
        """
        td0 = (
            value_type in (None, ValueEstimators.TD0)
            or isinstance(value_type, TD0Estimator)
            or (isinstance(value_type, type) and issubclass(value_type, TD0Estimator))
        )
        if self.num_quantiles is not None and not td0:
            raise OfflineLossError(
                f"the quantile critic (num_quantiles={self.num_quantiles}) supports the "
                f"TD0 estimator only, got {value_type}"
            )
        return make_loss_value_estimator(
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

    def value_loss(self, tensordict: TensorDictBase) -> tuple[Tensor, dict]:
        """The Bellman error of the logged actions' values (DQN's, or QR-DQN's).

        Writes the action values ``Q(s, .)`` to the batch under ``pred_val`` (with their
        graph: :meth:`cql_loss` reads them, as in TorchRL) and the TD error under
        ``priority``.

        Returns:
            ``(loss_qvalue, metadata)`` with the detached ``td_error``, ``pred_value``
            and ``target_value``.
        """
        keys = self.tensor_keys
        batch_shape = tensordict.batch_size
        td = tensordict.reshape(-1) if len(batch_shape) != 1 else tensordict
        values = self._values(self.value_network_params, td)
        n_actions = values.shape[1]
        index = self._action_index(td.get(keys.action), n_actions)
        with torch.no_grad():
            next_values = self._values(self.target_value_network_params, td.get("next"))
        if self.num_quantiles is None:
            q_values = values
            pred = values.gather(-1, index.unsqueeze(-1)).squeeze(-1)
            target = self._target(tensordict, next_values.max(-1).values)
            loss = 0.5 * distance_loss(pred, target, self.loss_function)
        else:
            q_values = values.mean(-1)  # [B, A]
            k = values.shape[-1]
            theta = values.gather(1, index[:, None, None].expand(-1, 1, k)).squeeze(1)  # [B, K]
            best = next_values.mean(-1).argmax(-1)
            next_theta = next_values.gather(1, best[:, None, None].expand(-1, 1, k)).squeeze(1)
            target = self._target(tensordict, next_theta)  # [B, K]
            loss = self._quantile_huber(theta, target)
            pred = theta.mean(-1)
            target = target.mean(-1)
        td_error = (pred - target).detach().abs()
        tensordict.set(keys.priority, td_error.reshape(batch_shape))
        tensordict.set(keys.pred_val, q_values.reshape(*batch_shape, n_actions))
        metadata = {
            "pred_value": pred.detach(),
            "target_value": target.detach(),
            "td_error": td_error,
        }
        return self._reduce(loss, tensordict), metadata

    def cql_loss(self, tensordict: TensorDictBase) -> tuple[Tensor, dict]:
        """The conservative term ``alpha (log sum_a' exp Q(s, a') - Q(s, a))``, after
        :meth:`value_loss` (which writes the action values it reads).

        Returns:
            ``(loss_cql, metadata)`` with the detached per-sample ``cql_gap``.
        """
        keys = self.tensor_keys
        q_values = tensordict.get(keys.pred_val, None)
        if q_values is None:
            raise KeyError(
                f"the batch has no {keys.pred_val!r}: call value_loss before cql_loss (it "
                "writes the action values)"
            )
        q_values = q_values.reshape(-1, q_values.shape[-1])
        action = tensordict.get(keys.action)
        action = action.reshape(q_values.shape[0], *action.shape[tensordict.ndim :])
        index = self._action_index(action, q_values.shape[-1])
        q_data = q_values.gather(-1, index.unsqueeze(-1)).squeeze(-1)
        gap = torch.logsumexp(q_values, -1) - q_data
        return self._reduce(self.alpha * gap, tensordict), {"cql_gap": gap.detach()}

    def _reduce(self, loss: Tensor, tensordict: TensorDictBase) -> Tensor:
        """Reduces a per-sample loss of the flat batch, honouring the batch's masks."""
        return self._reduce_loss(loss.reshape(tensordict.batch_size), tensordict=tensordict)

    @dispatch
    def forward(self, tensordict: TensorDictBase) -> TensorDictBase:
        """Computes the Bellman and conservative losses on a batch of transitions.

        :meth:`value_loss` then :meth:`cql_loss`, from one call of the value network.
        Rows masked by ``("collector", "mask")`` or ``"shifted_valid"`` are left out,
        as in TorchRL.

        Args:
            tensordict (TensorDictBase): the batch, holding :attr:`in_keys`.

        Returns:
            TensorDict: ``loss_qvalue``, ``loss_cql`` (already multiplied by
            ``alpha``) and detached ``pred_value``, ``target_value``, ``td_error``,
            ``cql_gap``.
        """
        if self.check_inputs:
            check_batch(tensordict, self.in_keys, finite=False)
        batch_shape = tensordict.batch_size
        loss_q, diagnostics = self.value_loss(tensordict)
        loss_cql, cql_meta = self.cql_loss(tensordict)
        diagnostics.update(cql_meta)
        losses = {"loss_qvalue": loss_q, "loss_cql": loss_cql}
        if self.reduction == "none":
            out = {**losses, **{k: v.reshape(batch_shape) for k, v in diagnostics.items()}}
            result = TensorDict(out, batch_shape)
        else:
            result = TensorDict({**losses, **{k: v.mean() for k, v in diagnostics.items()}})
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

    def _target(self, tensordict: TensorDictBase, next_value: Tensor) -> Tensor:
        """The Bellman target of the flat batch from ``next_value`` ``[B]`` or ``[B, K]``."""
        shape = (*tensordict.batch_size, *next_value.shape[1:])
        return td_target(self, tensordict, next_value.reshape(shape)).reshape(next_value.shape)


# ------------------------------------------------------------------------- declaration
#: Discrete CQL (CQL on QR-/DQN): a greedy ``QValueActor`` over ``Q(s, .)``, Adam at 3e-4.
DISCRETE_CQL_ALGORITHM = AlgorithmDeclaration(
    name="discrete_cql",
    loss_class=DiscreteCQLLoss,
    networks=lambda nets, hp: {"value_network": nets.qvalue_actor()},
    optimizer=(ParamGroup("qvalue", "critic_lr", "value_network_params"),),
    loss_terms=("loss_qvalue", "loss_cql"),
    action="discrete",
    defaults={"critic_lr": 3e-4},
    action_spec_argument="action_space",
    policy="value_network",
)
