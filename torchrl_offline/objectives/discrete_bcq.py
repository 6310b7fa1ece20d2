r"""Discrete Batch-Constrained Q-learning (Fujimoto, Conti, Ghavamzadeh & Pineau, 2019).

Paper: "Benchmarking Batch Deep Reinforcement Learning Algorithms",
https://arxiv.org/abs/1910.01708; reference code https://github.com/sfujim/BCQ
(``discrete_BCQ``).

A DQN whose greedy action is taken only among the actions a learned imitation model
:math:`G(a|s)` of the data's behaviour finds likely enough:

.. math::

    \pi(s) = \operatorname*{argmax}_{a:\ G(a|s) / \max_b G(b|s) > \tau} Q(s, a).

The policy is a TorchRL :class:`~torchrl.modules.QValueActor` whose action values are
masked by that filter (:class:`DiscreteBCQActor`): one network with the two heads
:math:`Q(s, \cdot)` and the imitation logits, and TorchRL's own ``QValueModule`` with an
action mask to pick the action. :class:`DiscreteBCQLoss` trains both heads.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from tensordict import TensorDict, TensorDictBase, TensorDictParams
from tensordict.nn import TensorDictModule, TensorDictModuleBase, TensorDictSequential, dispatch
from tensordict.utils import NestedKey, unravel_key
from torch import Tensor, nn
from torchrl.data.tensor_specs import TensorSpec
from torchrl.data.utils import _find_action_space
from torchrl.modules import QValueActor
from torchrl.modules.tensordict_module.actors import QValueModule
from torchrl.objectives.common import LossModule
from torchrl.objectives.utils import _GAMMA_LMBDA_DEPREC_ERROR, ValueEstimators, distance_loss

from torchrl_offline.objectives._actor_critic import _leaf_view
from torchrl_offline.objectives._checks import check_reduction
from torchrl_offline.objectives._keys import LazyInKeys
from torchrl_offline.objectives.common import (
    OfflineLossError,
    check_batch,
    count_update,
    logged_action_value,
    make_loss_value_estimator,
    module_apply,
    next_key,
    td_target,
)
from torchrl_offline.objectives.declaration import AlgorithmDeclaration, ParamGroup

__all__ = [
    "DISCRETE_BCQ_ALGORITHM",
    "DISCRETE_BCQ_PRESETS",
    "BCQActionFilter",
    "DiscreteBCQActor",
    "DiscreteBCQLoss",
    "bcq_action_mask",
]

#: The reference code's Atari setting (Fujimoto et al., 2019, ``discrete_BCQ/main.py``
#: ``atari_parameters``): Adam at 6.25e-5 and a hard target update every 8,000 updates
#: (``tau=1`` every ``target_update_delay`` steps). Its Adam epsilon (1.5e-4), batch 32 and
#: one update per 4 environment steps are not settings of the declaration.
DISCRETE_BCQ_PRESETS: dict[str, dict[str, float | int]] = {
    "atari": {"critic_lr": 6.25e-5, "tau": 1.0, "target_update_delay": 8000},
}


def bcq_action_mask(logits: Tensor, threshold: float) -> Tensor:
    r"""The actions discrete BCQ may pick: :math:`G(a|s) / \max_b G(b|s) > \tau`.

    With :math:`G = \mathrm{softmax}(\text{logits})` the ratio is
    :math:`\exp(\ell_a - \max_b \ell_b)`, so the test is done on the logits,
    :math:`\ell_a - \max_b \ell_b > \log\tau`; the most likely action always passes for
    :math:`\tau < 1`, and :math:`\tau = 0` allows every action (DQN).

    Args:
        logits (Tensor): the imitation model's logits ``[*batch, n_actions]``.
        threshold (float): :math:`\tau` in ``[0, 1)``.

    Returns:
        Tensor: a boolean mask shaped like ``logits``.

    Examples:
        >>> import math, torch
        >>> from torchrl_offline.objectives.discrete_bcq import bcq_action_mask
        >>> logits = torch.log(torch.tensor([0.6, 0.3, 0.1]))
        >>> bcq_action_mask(logits, 0.3)  # ratios 1, 0.5, 0.17
        tensor([ True,  True, False])
    """
    if threshold <= 0:
        return torch.ones_like(logits, dtype=torch.bool)
    return logits - logits.max(-1, keepdim=True).values > math.log(threshold)


class BCQActionFilter(nn.Module):
    """:func:`bcq_action_mask` as a module (logits in, mask out), with its threshold.

    Examples:
        >>> import torch
        >>> from torchrl_offline.objectives.discrete_bcq import BCQActionFilter
        >>> BCQActionFilter(0.3)(torch.tensor([2.0, 0.0, 1.5]))
        tensor([ True, False,  True])
    """

    def __init__(self, threshold: float = 0.3) -> None:
        super().__init__()
        self.threshold = float(threshold)

    def forward(self, logits: Tensor) -> Tensor:
        return bcq_action_mask(logits, self.threshold)

    def extra_repr(self) -> str:
        return f"threshold={self.threshold}"


def _check_threshold(threshold: float) -> float:
    if not 0.0 <= threshold < 1.0:
        raise ValueError(f"threshold must be in [0, 1), got {threshold}")
    return float(threshold)


def _as_module(module, in_keys: Sequence[NestedKey], out_key: NestedKey) -> TensorDictModuleBase:
    if isinstance(module, TensorDictModuleBase):
        if unravel_key(out_key) not in [unravel_key(k) for k in module.out_keys]:
            raise OfflineLossError(f"the module {type(module).__name__} does not write {out_key!r}")
        return module
    return TensorDictModule(module, in_keys=list(in_keys), out_keys=[out_key])


class DiscreteBCQActor(QValueActor):
    r"""Discrete BCQ's policy: a :class:`~torchrl.modules.QValueActor` whose greedy action
    skips the actions the imitation model finds unlikely.

    A sequence of the Q head (writing ``action_value``), the imitation head (writing
    ``logits``), a :class:`BCQActionFilter` (writing ``action_mask``) and TorchRL's
    ``QValueModule`` with that mask, which writes ``action``, ``chosen_action_value`` and,
    as TorchRL's masked ``QValueModule`` does, ``action_value`` with the filtered actions
    set to the lowest float. The two heads are separate networks here, as in the
    reference code's fully connected model; for a shared encoder (its Atari model) give
    ``TensorDictModule`` heads reading the encoder's output key and put the encoder in
    front (a ``TensorDictSequential``), or pass any module writing both keys to
    :class:`DiscreteBCQLoss`.

    Args:
        qvalue_module (nn.Module or TensorDictModuleBase): :math:`Q(s, \cdot)`; a plain
            module is wrapped to read ``in_keys`` and write ``action_value``.
        imitation_module (nn.Module or TensorDictModuleBase): the imitation logits
            :math:`\log G(\cdot|s)` up to a constant; wrapped to write ``logits``.

    Keyword Args:
        in_keys (list of NestedKey, optional): the inputs of plain modules. Defaults to
            ``["observation"]``.
        spec (TensorSpec, optional): the action spec (``Categorical`` or ``OneHot``).
        action_space (str, optional): ``"one-hot"`` or ``"categorical"``, when no spec
            is given.
        threshold (float, optional): :math:`\tau`. Defaults to ``0.3`` (the paper's).
            :class:`DiscreteBCQLoss` sets it to the loss's own threshold.
        action_value_key, logits_key, action_mask_key (NestedKey, optional): the keys
            of the heads' outputs and of the mask. Default to ``"action_value"``,
            ``"logits"`` and ``"action_mask"``.

    Examples:
        >>> import torch
        >>> from tensordict import TensorDict
        >>> from torchrl.data import Categorical
        >>> from torchrl.modules import MLP
        >>> from torchrl_offline.objectives.discrete_bcq import DiscreteBCQActor
        >>> actor = DiscreteBCQActor(MLP(in_features=4, out_features=3, num_cells=[16]),
        ...                          MLP(in_features=4, out_features=3, num_cells=[16]),
        ...                          spec=Categorical(3))
        >>> td = actor(TensorDict({"observation": torch.randn(5, 4)}, [5]))
        >>> td["action"].shape, td["action_mask"].shape, actor.threshold
        (torch.Size([5]), torch.Size([5, 3]), 0.3)
        >>> bool(td["action_mask"].gather(-1, td["action"][:, None]).all())
        True
    """

    def __init__(
        self,
        qvalue_module: nn.Module | TensorDictModuleBase,
        imitation_module: nn.Module | TensorDictModuleBase,
        *,
        in_keys: Sequence[NestedKey] | None = None,
        spec: TensorSpec | None = None,
        action_space: str | None = None,
        threshold: float = 0.3,
        action_value_key: NestedKey = "action_value",
        logits_key: NestedKey = "logits",
        action_mask_key: NestedKey = "action_mask",
    ) -> None:
        in_keys = ["observation"] if in_keys is None else list(in_keys)
        heads = TensorDictSequential(
            _as_module(qvalue_module, in_keys, action_value_key),
            _as_module(imitation_module, in_keys, logits_key),
            TensorDictModule(
                BCQActionFilter(_check_threshold(threshold)),
                in_keys=[logits_key],
                out_keys=[action_mask_key],
            ),
        )
        super().__init__(
            heads,
            spec=spec,
            action_space=action_space,
            action_value_key=action_value_key,
            action_mask_key=action_mask_key,
        )
        self.logits_key = logits_key

    @property
    def heads(self) -> TensorDictSequential:
        """The Q head, the imitation head and the filter (everything before the argmax)."""
        return self.module[0]

    @property
    def threshold(self) -> float:
        """:math:`\\tau`, the filter's threshold."""
        return self.heads.module[2].module.threshold

    @threshold.setter
    def threshold(self, value: float) -> None:
        self.heads.module[2].module.threshold = _check_threshold(value)


class DiscreteBCQLoss(LazyInKeys, LossModule):
    r"""Discrete BCQ (Fujimoto, Conti, Ghavamzadeh & Pineau, "Benchmarking Batch Deep
    Reinforcement Learning Algorithms", 2019).

    With :math:`Q` and the imitation logits :math:`\ell` from one network (online) and
    :math:`\bar Q` its target copy:

    .. math::

        a' &= \operatorname*{argmax}_{a:\ \exp(\ell_a(s') - \max_b \ell_b(s')) > \tau}
            Q(s', a), \qquad y = r + \gamma (1 - d)\, \bar Q(s', a'), \\
        L_Q &= \mathrm{Huber}\big(Q(s, a) - y\big), \\
        L_G &= -\log \mathrm{softmax}(\ell(s))_a
            + \lambda\, \tfrac{1}{|A|} \textstyle\sum_b \ell_b(s)^2,

    the filtered argmax of the current network evaluated by the target network (double
    DQN with the BCQ filter), the Huber TD loss, and the imitation model's
    cross-entropy on the logged actions with the paper's penalty
    :math:`\lambda = 10^{-2}` on the squared logits (the reference code's
    ``1e-2 * i.pow(2).mean()``). Both terms train the one network; the target network
    gets no gradient.

    The network is a :class:`DiscreteBCQActor` (it is then also the policy, acting with
    the same filtered argmax) or any ``TensorDictModule`` writing ``action_value`` and
    ``logits`` from the observation; a trailing ``QValueModule`` is skipped by the loss,
    which reads the heads' unmasked outputs. The threshold of a :class:`DiscreteBCQActor`
    is set to the loss's, so that the policy acts as the target's backup does.

    Args:
        value_network (DiscreteBCQActor or TensorDictModuleBase): the two-headed network.

    Keyword Args:
        threshold (float, optional): :math:`\tau` in ``[0, 1)``. Defaults to ``0.3`` (the
            paper's); ``0`` is double DQN with an imitation head.
        logit_penalty (float, optional): :math:`\lambda`. Defaults to ``1e-2`` (the
            reference code's; d3rlpy's ``beta`` defaults to 0.5).
        loss_function (str, optional): the TD loss, ``"smooth_l1"`` (Huber, the
            paper's), ``"l2"`` or ``"l1"``. Defaults to ``"smooth_l1"``.
        delay_value (bool, optional): keep a target network. Defaults to ``True``.
        action_space (str or TensorSpec, optional): ``"one-hot"`` or ``"categorical"``
            (or a matching spec), the encoding of the batch's actions; read from the
            network when omitted.
        gamma (float, optional): deprecated, use :meth:`make_value_estimator`.
        reduction (str, optional): ``"none"``, ``"mean"`` or ``"sum"``. Defaults to
            ``"mean"``.
        use_prioritized_weights (str or bool, optional): weight both terms by the
            ``priority_weight`` entry when present (``"auto"``). Defaults to ``"auto"``.
        check_inputs (bool, optional): check the batch for missing keys and NaN/inf and
            the losses for NaN/inf (one host read per update); ``False`` removes it.
            Defaults to ``True``.

    Examples:
        >>> import torch
        >>> from tensordict import TensorDict
        >>> from torchrl.data import Categorical
        >>> from torchrl.modules import MLP
        >>> from torchrl.objectives import SoftUpdate
        >>> from torchrl_offline.objectives.discrete_bcq import DiscreteBCQActor, DiscreteBCQLoss
        >>> n_obs, n_act = 4, 3
        >>> actor = DiscreteBCQActor(MLP(in_features=n_obs, out_features=n_act, num_cells=[16]),
        ...                          MLP(in_features=n_obs, out_features=n_act, num_cells=[16]),
        ...                          spec=Categorical(n_act))
        >>> loss = DiscreteBCQLoss(actor, threshold=0.3)
        >>> loss.make_value_estimator(gamma=0.99)
        >>> updater = SoftUpdate(loss, tau=0.005)
        >>> data = TensorDict({
        ...     "observation": torch.randn(8, n_obs), "action": torch.randint(n_act, (8,)),
        ...     ("next", "observation"): torch.randn(8, n_obs),
        ...     ("next", "reward"): torch.randn(8, 1),
        ...     ("next", "done"): torch.zeros(8, 1, dtype=torch.bool),
        ...     ("next", "terminated"): torch.zeros(8, 1, dtype=torch.bool)}, [8])
        >>> out = loss(data)
        >>> (out["loss_qvalue"] + out["loss_imitation"]).backward()
        >>> updater.step()
        >>> sorted(k for k in out.keys() if k.startswith("loss_"))
        ['loss_imitation', 'loss_qvalue']
        >>> actor(data.select("observation"))["action"].shape  # the policy
        torch.Size([8])
    """

    @dataclass
    class _AcceptedKeys:
        r"""Tensordict keys read or written by the loss, configurable with ``set_keys``.

        Attributes:
            action (NestedKey): the logged action. Defaults to ``"action"``.
            action_value (NestedKey): the Q head's output :math:`Q(s, \cdot)`. Defaults
                to ``"action_value"``.
            logits (NestedKey): the imitation head's output. Defaults to ``"logits"``.
            value (NestedKey): the next-state value handed to the value estimator.
                Defaults to ``"chosen_action_value"``.
            value_target (NestedKey): the value estimator's target entry. Defaults to
                ``"value_target"``.
            priority (NestedKey): where the TD error is written for prioritized replay.
                Defaults to ``"td_error"``.
            priority_weight (NestedKey): importance weights of a prioritized sampler.
                Defaults to ``"priority_weight"``.
            reward (NestedKey): the reward, under ``"next"``. Defaults to ``"reward"``.
            done (NestedKey): the done flag, under ``"next"``. Defaults to ``"done"``.
            terminated (NestedKey): the terminal flag, under ``"next"``. Defaults to
                ``"terminated"``.
        """

        action: NestedKey = "action"
        action_value: NestedKey = "action_value"
        logits: NestedKey = "logits"
        value: NestedKey = "chosen_action_value"
        value_target: NestedKey = "value_target"
        priority: NestedKey = "td_error"
        priority_weight: NestedKey = "priority_weight"
        reward: NestedKey = "reward"
        done: NestedKey = "done"
        terminated: NestedKey = "terminated"

    tensor_keys: _AcceptedKeys
    default_keys = _AcceptedKeys
    default_value_estimator = ValueEstimators.TD0
    SUPPORTED_VALUE_ESTIMATORS = (
        ValueEstimators.TD0,
        ValueEstimators.TD1,
        ValueEstimators.TDLambda,
    )
    out_keys = ["loss_qvalue", "loss_imitation"]

    value_network: TensorDictModuleBase
    value_network_params: TensorDictParams
    target_value_network_params: TensorDictParams

    def __init__(
        self,
        value_network: DiscreteBCQActor | TensorDictModuleBase,
        *,
        threshold: float = 0.3,
        logit_penalty: float = 1e-2,
        loss_function: str = "smooth_l1",
        action_space: str | TensorSpec | None = None,
        gamma: float | None = None,
        reduction: str | None = None,
        use_prioritized_weights: str | bool = "auto",
        check_inputs: bool = True,
    ) -> None:
        if gamma is not None:
            raise TypeError(_GAMMA_LMBDA_DEPREC_ERROR)
        reduction = check_reduction(reduction, loss_function)
        if logit_penalty < 0:
            raise ValueError(f"logit_penalty must be >= 0, got {logit_penalty}")
        threshold = _check_threshold(threshold)
        if not isinstance(value_network, TensorDictModuleBase):
            raise OfflineLossError(
                "value_network must be a TensorDictModule writing 'action_value' and "
                f"'logits' (e.g. a DiscreteBCQActor), got {type(value_network).__name__}"
            )
        if action_space is None:
            action_space = getattr(value_network, "action_space", None)
        if action_space is None:
            raise OfflineLossError(
                "action_space is needed to read the batch's actions: pass 'one-hot' or "
                "'categorical' (or the action spec)"
            )
        super().__init__()
        self._in_keys = None
        self.action_space = _find_action_space(action_space)
        if self.action_space not in ("one_hot", "categorical"):
            raise OfflineLossError(
                f"DiscreteBCQLoss supports 'one-hot' and 'categorical' actions, got "
                f"{self.action_space!r}"
            )
        self.reduction = reduction
        self.logit_penalty = float(logit_penalty)
        self.loss_function = loss_function
        self.use_prioritized_weights = use_prioritized_weights
        self.check_inputs = check_inputs
        self.convert_to_functional(value_network, "value_network", create_target_params=True)
        self.threshold = threshold
        self._num_updates = 0
        self.register_load_state_dict_post_hook(self._drop_caches)

    @property
    def threshold(self) -> float:
        r""":math:`\tau`; setting it also sets the threshold of a :class:`DiscreteBCQActor`
        network, so that the policy filters as the target does."""
        return self._threshold

    @threshold.setter
    def threshold(self, value: float) -> None:
        self._threshold = _check_threshold(value)
        if isinstance(self.value_network, DiscreteBCQActor):
            self.value_network.threshold = self._threshold

    # ------------------------------------------------------------------ keys & estimator
    def _estimator_keys(self) -> dict[str, NestedKey]:
        keys = self.tensor_keys
        names = ("value_target", "value", "reward", "done", "terminated")
        return {name: getattr(keys, name) for name in names}

    def _forward_value_estimator_keys(self, **kwargs) -> None:
        if self._value_estimator is not None:
            self._value_estimator.set_keys(**self._estimator_keys())
        self._in_keys = None

    def make_value_estimator(self, value_type: ValueEstimators = None, **hyperparams):
        """Builds the estimator of the Bellman target from the next states' value.

        Args:
            value_type (ValueEstimators, optional): ``TD0`` (default), ``TD1`` or
                ``TDLambda`` (over the time dimension of trajectory batches), or a
                ``ValueEstimatorBase`` subclass or instance.

        Keyword Args:
            gamma (float): the discount factor.
        """
        return make_loss_value_estimator(
            self, value_type, tensor_keys=self._estimator_keys(), value_network=None, **hyperparams
        )

    def _set_in_keys(self) -> None:
        keys = [
            self.tensor_keys.action,
            next_key(self.tensor_keys.reward),
            next_key(self.tensor_keys.done),
            next_key(self.tensor_keys.terminated),
            *self.value_network.in_keys,
            *[next_key(k) for k in self.value_network.in_keys],
        ]
        self._in_keys = list(dict.fromkeys(unravel_key(k) for k in keys))

    # ------------------------------------------------------------------ network calls
    def _drop_caches(self, *args) -> None:
        self._erase_cache()

    def _head_params(self, name: str, index: int) -> TensorDictBase:
        """The parameters of head ``index`` of a :class:`DiscreteBCQActor` (cached view)."""
        cache = f"_cache_head_{name}_{index}"
        cached = self.__dict__.get(cache)
        if cached is None:
            head = self.value_network.heads.module[index]
            params = getattr(self, name).get(("module", "0", "module", str(index)))
            cached = self.__dict__[cache] = _leaf_view(head, params)
        return cached

    def _heads_only(self) -> TensorDictModuleBase:
        """The network without a trailing ``QValueModule`` (which masks ``action_value``)."""
        net = self.value_network
        modules = list(getattr(net, "module", ())) if isinstance(net, TensorDictSequential) else []
        if modules and isinstance(modules[-1], QValueModule):
            cached = self.__dict__.get("_heads_seq")
            if cached is None:
                cached = self.__dict__["_heads_seq"] = TensorDictSequential(*modules[:-1])
            return cached
        return net

    def _heads(
        self, name: str, tensordict: TensorDictBase, *, q: bool = True, logits: bool = True
    ) -> tuple[Tensor | None, Tensor | None]:
        """``Q(s, .)`` and the imitation logits of the network with parameters ``name``.

        The heads of a :class:`DiscreteBCQActor` are called with their own parameters
        (functionally for plain MLPs); any other network with its parameters swapped in.
        """
        keys = self.tensor_keys
        net = self.value_network
        if isinstance(net, DiscreteBCQActor):
            out = []
            for index, (wanted, key) in enumerate(((q, keys.action_value), (logits, keys.logits))):
                if not wanted:
                    out.append(None)
                    continue
                head = net.heads.module[index]
                inputs = [tensordict.get(k) for k in head.in_keys]
                out.append(module_apply(head, self._head_params(name, index), *inputs, out_key=key))
            return out[0], out[1]
        td = tensordict.select(*net.in_keys, strict=False)
        with getattr(self, name).to_module(net, preserve_module_state=False):
            td = self._heads_only()(td)
        return td.get(keys.action_value) if q else None, td.get(keys.logits) if logits else None

    def _logged(self, values: Tensor, tensordict: TensorDictBase, *, check: bool) -> Tensor:
        """``values[..., a]`` at the logged actions (one-hot or indices)."""
        return logged_action_value(
            values,
            tensordict.get(self.tensor_keys.action),
            one_hot=self.action_space == "one_hot",
            action_key=self.tensor_keys.action,
            check_inputs=check and self.check_inputs,
        )

    def _mean(self, value: Tensor) -> Tensor:
        """A detached diagnostic: per sample with ``reduction="none"``, else its mean."""
        value = value.detach()
        return value if self.reduction == "none" else value.mean()

    # ------------------------------------------------------------------ losses
    def qvalue_loss(self, tensordict: TensorDictBase) -> tuple[Tensor, dict[str, Tensor]]:
        """The TD loss of ``Q(s, a)`` on ``r + gamma (1 - d) Qbar(s', a')``, ``a'`` the
        filtered argmax of the current network at ``s'``.

        Writes the absolute TD error to the ``priority`` key of ``tensordict``.

        Returns:
            ``(loss_qvalue, metadata)`` with the detached ``"pred_value"``,
            ``"target_value"``, ``"td_error"`` and ``"allowed_fraction"`` (the share of
            actions the filter keeps at ``s'``).
        """
        q, _ = self._heads("value_network_params", tensordict, logits=False)
        return self._qvalue_loss(tensordict, q)

    def imitation_loss(self, tensordict: TensorDictBase) -> tuple[Tensor, dict[str, Tensor]]:
        """The imitation head's cross-entropy on the logged actions plus the logit penalty.

        Returns:
            ``(loss_imitation, metadata)`` with the detached ``"imitation_nll"``.
        """
        _, logits = self._heads("value_network_params", tensordict, q=False)
        return self._imitation_loss(tensordict, logits)

    def _qvalue_loss(self, tensordict: TensorDictBase, q: Tensor):
        with torch.no_grad():
            next_td = tensordict.get("next")
            q_next, logits_next = self._heads("value_network_params", next_td)
            if q_next.shape != logits_next.shape:
                raise OfflineLossError(
                    f"value_network writes {q_next.shape[-1]} action values but "
                    f"{logits_next.shape[-1]} imitation logits"
                )
            allowed = bcq_action_mask(logits_next, self.threshold)
            next_action = q_next.masked_fill(~allowed, -math.inf).argmax(-1, keepdim=True)
            q_target, _ = self._heads("target_value_network_params", next_td, logits=False)
            next_value = q_target.gather(-1, next_action).squeeze(-1)
            target = td_target(self, tensordict, next_value)
        pred = self._logged(q, tensordict, check=True)
        loss = distance_loss(pred, target, loss_function=self.loss_function)
        td_error = (pred.detach() - target).abs()
        tensordict.set(self.tensor_keys.priority, td_error)
        weights = self._maybe_get_priority_weight(tensordict)
        metadata = {
            "pred_value": self._mean(pred),
            "target_value": self._mean(target),
            "td_error": self._mean(td_error),
            "allowed_fraction": self._mean(allowed.float().mean(-1)),
        }
        return self._reduce_loss(loss, tensordict=tensordict, weights=weights), metadata

    def _imitation_loss(self, tensordict: TensorDictBase, logits: Tensor):
        nll = -self._logged(torch.log_softmax(logits, -1), tensordict, check=False)
        loss = nll + self.logit_penalty * logits.pow(2).mean(-1)
        weights = self._maybe_get_priority_weight(tensordict)
        loss = self._reduce_loss(loss, tensordict=tensordict, weights=weights)
        return loss, {"imitation_nll": self._mean(nll)}

    @dispatch
    def forward(self, tensordict: TensorDictBase) -> TensorDictBase:
        """Computes the TD and imitation losses from one call of the network at ``s``.

        Returns:
            TensorDict: ``loss_qvalue``, ``loss_imitation`` and the detached
            ``pred_value``, ``target_value``, ``td_error``, ``allowed_fraction`` and
            ``imitation_nll`` (per sample with ``reduction="none"``, else batch means).
        """
        if self.check_inputs:
            check_batch(tensordict, self.in_keys, finite=False)
        q, logits = self._heads("value_network_params", tensordict)
        loss_qvalue, metadata = self._qvalue_loss(tensordict, q)
        loss_imitation, imitation_metadata = self._imitation_loss(tensordict, logits)
        out = {"loss_qvalue": loss_qvalue, "loss_imitation": loss_imitation}
        out.update(metadata, **imitation_metadata)
        batch_size = tensordict.batch_size if self.reduction == "none" else ()
        result = TensorDict(out, batch_size)
        count_update(self, "_num_updates", result, batch=tensordict)
        return result


# ------------------------------------------------------------------------- declaration
def _discrete_bcq_actor(nets, hp) -> dict[str, DiscreteBCQActor]:
    """Two MLP heads over the observation, as the reference code's fully connected model."""
    n_obs, n_act = nets.observation_dim, nets.action_dim
    actor = DiscreteBCQActor(
        nets.mlp(n_obs, n_act),
        nets.mlp(n_obs, n_act),
        spec=nets.action_spec,
        threshold=hp["threshold"],
    )
    return {"value_network": actor}


#: Discrete BCQ as :func:`~torchrl_offline.trainers.algorithms.build_algorithm` builds it:
#: a :class:`DiscreteBCQActor` (two 2x256 MLP heads, the reference code's fully connected
#: model) that is also the policy, Adam at 3e-4 and soft target updates at 0.005 (the
#: reference code's non-Atari setting); the Atari setting: :data:`DISCRETE_BCQ_PRESETS`.
DISCRETE_BCQ_ALGORITHM = AlgorithmDeclaration(
    name="discrete_bcq",
    loss_class=DiscreteBCQLoss,
    networks=_discrete_bcq_actor,
    optimizer=(ParamGroup("qvalue", "critic_lr", "value_network_params"),),
    loss_terms=("loss_qvalue", "loss_imitation"),
    action="discrete",
    defaults={"critic_lr": 3e-4, "target_update_delay": 1},
    presets=DISCRETE_BCQ_PRESETS,
    action_spec_argument="action_space",
    policy="value_network",
)
