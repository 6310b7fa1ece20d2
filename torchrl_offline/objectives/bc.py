r"""Behaviour cloning, the baseline every offline RL method is compared with.

Two forms, chosen from the actor (or forced with ``mode``):

.. math::

    L_{\text{det}} = \mathbb{E}\,\tfrac{1}{d}\lVert \pi(s) - a \rVert^2, \qquad
    L_{\text{stoch}} = -\mathbb{E}\,\log \pi(a \mid s)

and, for integer (discrete) actions, the cross-entropy of the actor's logits.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal

import torch
import torch.nn.functional as F
from tensordict import TensorDict, TensorDictBase, TensorDictParams
from tensordict.nn import ProbabilisticTensorDictSequential, TensorDictModule, dispatch
from tensordict.utils import NestedKey
from torch import Tensor
from torchrl.objectives.common import LossModule

from torchrl_offline.objectives._checks import check_reduction
from torchrl_offline.objectives._functional import _mlp_plan
from torchrl_offline.objectives._keys import LazyInKeys
from torchrl_offline.objectives.common import (
    OfflineLossError,
    actor_distribution,
    check_batch,
    count_update,
    module_apply,
    tanh_normal_log_prob,
)
from torchrl_offline.objectives.declaration import AlgorithmDeclaration, ParamGroup

__all__ = ["BC_ALGORITHM", "DISCRETE_BC_ALGORITHM", "ActorOutputError", "BCLoss"]


class ActorOutputError(OfflineLossError, RuntimeError):
    """The actor wrote no prediction under the loss's action key.

    Both an :class:`~torchrl_offline.objectives.common.OfflineLossError` (our
    ``ValueError`` for bad input) and the ``RuntimeError`` TorchRL's ``BCLoss`` raises.
    """


_ELEMENTWISE = {
    "l1": F.l1_loss,
    "l2": F.mse_loss,
    "mse": F.mse_loss,
    "smooth_l1": F.smooth_l1_loss,
}


class BCLoss(LazyInKeys, LossModule):
    r"""Behaviour cloning loss; a drop-in for TorchRL's ``BCLoss``.

    * ``mode="stochastic"`` (default for actors with ``get_dist``, e.g.
      ``ProbabilisticActor``): the negative log-likelihood ``-log pi(a | s)`` of the
      logged action. For tanh-squashed distributions the logged action is first
      clamped inside the open support (``action_eps``), so actions logged exactly on
      the bounds give finite losses.
    * ``mode="deterministic"`` (default otherwise): the squared error between the
      actor's action and the logged one, per action element (or ``loss_function``:
      ``"l1"``, ``"l2"``/``"mse"``, ``"smooth_l1"``, a callable). The actor writes its
      action under the ``action`` key; an actor writing ``"action"`` while the key is
      another one still works, with TorchRL's ``FutureWarning``, and one writing
      neither is an :class:`ActorOutputError` (a ``RuntimeError``, as in TorchRL). (In
      the discrete form, a plain module with one output, its logits, is also accepted.)
    * integer logged actions (``mode="discrete"``, picked automatically): the
      cross-entropy of the actor's logits (a ``ProbabilisticActor`` over a categorical
      distribution is trained by its log-likelihood instead).

    With ``reduction="none"`` the loss is per sample, shaped like the batch, and per
    action element in the deterministic form (as in TorchRL); with a pad mask in the
    batch it is the flat tensor of the unpadded entries (TorchRL's convention). Padded entries (the
    ``pad_mask`` key, when the batch holds it) and rows masked by ``("collector",
    "mask")`` are left out of the reduction; a configured ``pad_mask`` absent from the
    batch means no padding.

    Args:
        actor_network (TensorDictModule): the policy.

    Keyword Args:
        loss_function (str or callable, optional): elementwise loss of the
            deterministic form; giving one selects ``mode="deterministic"`` as in
            TorchRL. ``"cross_entropy"`` selects the discrete form.
        reduction (str, optional): ``"none"``, ``"mean"`` or ``"sum"``. Defaults to ``"mean"``.
        mode (str, optional): ``"auto"`` (default), ``"deterministic"``,
            ``"stochastic"`` or ``"discrete"``.
        action_eps (float, optional): relative margin for tanh-squashed actors.
            Defaults to ``1e-4``; ``0`` disables the clamp.
        check_inputs (bool, optional): check the batch for missing keys and NaN/inf and
            the loss for NaN/inf. Defaults to ``True``.

    Examples:
        >>> import torch
        >>> from tensordict import TensorDict
        >>> from torchrl.data import Bounded
        >>> from torchrl.modules import MLP, Actor
        >>> from torchrl_offline.objectives.bc import BCLoss
        >>> spec = Bounded(-1.0, 1.0, (2,))
        >>> actor = Actor(MLP(in_features=3, out_features=2, num_cells=[16]), spec=spec)
        >>> loss = BCLoss(actor)
        >>> batch = TensorDict({"observation": torch.randn(8, 3),
        ...                     "action": spec.rand((8,))}, [8])
        >>> out = loss(batch)
        >>> out["loss_bc"].backward()
        >>> loss.mode
        'deterministic'
    """

    @dataclass
    class _AcceptedKeys:
        """Configurable tensordict keys (same names and defaults as TorchRL's BCLoss).

        Attributes:
            action (NestedKey): the logged action, and the key the actor writes its
                own action to. Defaults to ``"action"``.
            pad_mask (NestedKey, optional): boolean entry marking padded samples or
                elements (``True`` = excluded). Defaults to ``None``.
        """

        action: NestedKey = "action"
        pad_mask: NestedKey | None = None

    tensor_keys: _AcceptedKeys
    default_keys = _AcceptedKeys
    out_keys = ["loss_bc"]

    actor_network: TensorDictModule
    actor_network_params: TensorDictParams
    target_actor_network_params: TensorDictParams

    def __init__(
        self,
        actor_network: TensorDictModule,
        *,
        loss_function: Callable[[Tensor, Tensor], Tensor]
        | Literal["l1", "l2", "mse", "smooth_l1", "cross_entropy"]
        | None = None,
        reduction: Literal["mean", "sum", "none"] | None = None,
        mode: Literal["auto", "deterministic", "stochastic", "discrete"] = "auto",
        action_eps: float = 1e-4,
        check_inputs: bool = True,
    ) -> None:
        reduction = check_reduction(reduction)
        if isinstance(loss_function, str) and loss_function not in (
            *_ELEMENTWISE,
            "cross_entropy",
        ):
            raise ValueError(f"unsupported loss_function {loss_function!r}")
        if mode not in ("auto", "deterministic", "stochastic", "discrete"):
            raise ValueError(f"unknown mode {mode!r}")
        super().__init__()
        self._in_keys = None
        self.convert_to_functional(actor_network, "actor_network")
        self.reduction = reduction
        self.loss_function = loss_function
        self.action_eps = float(action_eps)
        self.check_inputs = check_inputs
        self._requested_mode = mode
        self._num_updates = 0
        self._direct_actor = None

    # ------------------------------------------------------------------ configuration
    @property
    def mode(self) -> str:
        """The form in use: ``"deterministic"``, ``"stochastic"`` or ``"discrete"``."""
        if self._requested_mode != "auto":
            return self._requested_mode
        if self.loss_function == "cross_entropy":
            return "discrete"
        if self.loss_function is not None:
            return "deterministic"
        if isinstance(self.actor_network, ProbabilisticTensorDictSequential):
            return "stochastic"
        return "deterministic"

    def _forward_value_estimator_keys(self, **kwargs) -> None:
        self._in_keys = None

    def _set_in_keys(self) -> None:
        keys = [self.tensor_keys.action, *self.actor_network.in_keys]
        if self.tensor_keys.pad_mask is not None:
            keys.append(self.tensor_keys.pad_mask)
        self._in_keys = list(dict.fromkeys(keys))

    def _apply(self, fn):
        self._direct_actor = None
        return super()._apply(fn)

    # ------------------------------------------------------------------ actor calls
    def _actor_input(self, tensordict: TensorDictBase) -> TensorDictBase:
        return TensorDict(
            {k: tensordict.get(k) for k in self.actor_network.in_keys},
            batch_size=tensordict.batch_size,
        )

    def _call_actor(self, fn: Callable, td: TensorDictBase):
        actor = self.actor_network
        if self._direct_actor is None:
            own = dict(actor.named_parameters())
            flat = self.actor_network_params.flatten_keys(".")
            self._direct_actor = all(
                own.get(k) is v for k, v in flat.items() if isinstance(v, torch.nn.Parameter)
            )
        if self._direct_actor:
            return fn(td)
        with self.actor_network_params.to_module(actor, preserve_module_state=False):
            return fn(td)

    def _prediction_key(self) -> NestedKey:
        out_keys = self.actor_network.out_keys
        if self.tensor_keys.action in out_keys:
            return self.tensor_keys.action
        if "action" in out_keys:
            warnings.warn(
                "The actor writes its prediction at 'action' while the loss's action key "
                f"is {self.tensor_keys.action!r}; reading the prediction from the "
                "hardcoded 'action' key is deprecated in TorchRL (removed in v0.16): make "
                "the actor's out_keys match the loss's action key.",
                FutureWarning,
                stacklevel=2,
            )
            return "action"
        if self.mode == "discrete" and len(out_keys) == 1:  # the logits of a plain module
            return out_keys[0]
        raise ActorOutputError(
            f"The actor did not write a prediction at {self.tensor_keys.action!r} (it writes "
            f"{out_keys}): make the actor's out_keys match the loss's action key"
        )

    # ------------------------------------------------------------------ loss
    def _stochastic(self, td: TensorDictBase, action: Tensor) -> Tensor:
        log_prob = tanh_normal_log_prob(
            self.actor_network,
            self.actor_network_params,
            td,
            action,
            action_eps=self.action_eps,
            action_key=self.tensor_keys.action,
        )
        if log_prob is not None:
            return -log_prob
        dist = actor_distribution(self.actor_network, self.actor_network_params, td)
        scalar_event = len(getattr(dist, "event_shape", (0,))) == 0
        if not action.is_floating_point() and scalar_event and action.ndim > len(dist.batch_shape):
            action = action.squeeze(-1)
        expected = tuple(dist.batch_shape) + tuple(dist.event_shape)
        if tuple(action.shape) != expected:
            raise OfflineLossError(
                f"key {self.tensor_keys.action!r} has shape {tuple(action.shape)} but the "
                f"actor's distribution is over shape {expected}: the action spec or the "
                "actor's output size does not match the data"
            )
        low, high = getattr(dist, "low", None), getattr(dist, "high", None)
        if self.action_eps > 0 and isinstance(low, Tensor) and isinstance(high, Tensor):
            margin = self.action_eps * (high - low) / 2
            action = torch.max(torch.min(action, high - margin), low + margin)
        return -dist.log_prob(action)

    def _prediction(self, td: TensorDictBase, action: Tensor) -> Tensor:
        key = self._prediction_key()
        actor = self.actor_network
        if _mlp_plan(actor) is not None:  # plain MLP actor: functional call, no tensordict
            pred = module_apply(
                actor, self.actor_network_params, *(td.get(k) for k in actor.in_keys)
            )
        else:
            pred = self._call_actor(actor, td).get(key)
        if self.mode != "discrete" and pred.shape != action.shape:
            raise OfflineLossError(
                f"the actor's {key!r} has shape {tuple(pred.shape)} but the logged "
                f"{self.tensor_keys.action!r} has shape {tuple(action.shape)}: check the "
                "action spec against the actor's output"
            )
        return pred

    @dispatch
    def forward(self, tensordict: TensorDictBase) -> TensorDictBase:
        """Computes the behaviour cloning loss.

        Returns:
            TensorDict with ``loss_bc`` and a detached diagnostic: ``log_prob`` (mean
            log-likelihood of the logged action) in the stochastic and discrete
            forms, ``action_error`` (mean absolute error) in the deterministic form.
        """
        pad_key = self.tensor_keys.pad_mask
        required = [k for k in self.in_keys if k != pad_key]  # an absent pad mask: no padding
        if self.check_inputs:
            check_batch(tensordict, required, finite=False)
        action = tensordict.get(self.tensor_keys.action)
        td = self._actor_input(tensordict)
        mode = self.mode
        diagnostics = {}
        mask = None
        if mode == "stochastic":
            loss = self._stochastic(td, action)
            diagnostics["log_prob"] = -loss.detach().mean()
        elif mode == "discrete":
            if isinstance(self.actor_network, ProbabilisticTensorDictSequential):
                loss = self._stochastic(td, action)
            else:
                logits = self._prediction(td, action)
                target = action.squeeze(-1) if action.ndim == logits.ndim else action
                loss = F.cross_entropy(
                    logits.flatten(0, -2), target.reshape(-1).long(), reduction="none"
                ).reshape(target.shape)
            diagnostics["log_prob"] = -loss.detach().mean()
        else:
            pred = self._prediction(td, action)
            fn = self.loss_function if self.loss_function is not None else "l2"
            if isinstance(fn, str):
                loss = _ELEMENTWISE[fn](pred, action, reduction="none")
            else:
                loss = fn(pred, action)
            diagnostics["action_error"] = (pred.detach() - action).abs().mean()
        pad = None if pad_key is None else tensordict.get(pad_key, None)
        if pad is not None:
            mask = ~pad.bool()
            if mask.ndim > loss.ndim:
                raise RuntimeError(
                    f"pad_mask {pad_key!r} has more dimensions ({mask.ndim}) than the loss "
                    f"({loss.ndim}): per-element masking needs an elementwise loss (e.g. "
                    "loss_function='l1'), not a log-likelihood or cross-entropy"
                )
        loss = self._reduce_loss(loss, tensordict=tensordict, mask=mask)
        if self.reduction == "none":
            td_out = TensorDict({"loss_bc": loss}, batch_size=loss.shape[: tensordict.batch_dims])
        else:
            td_out = TensorDict({"loss_bc": loss, **diagnostics})
        count_update(self, "_num_updates", td_out, batch=tensordict, batch_keys=required)
        return td_out


# ------------------------------------------------------------------------- declaration
#: Behaviour cloning of continuous actions: a deterministic tanh actor, Adam at 3e-4.
BC_ALGORITHM = AlgorithmDeclaration(
    name="bc",
    loss_class=BCLoss,
    networks=lambda nets, hp: {"actor_network": nets.deterministic_actor()},
    optimizer=(ParamGroup("actor", "actor_lr", "actor_network_params"),),
    loss_terms=("loss_bc",),
    defaults={"actor_lr": 3e-4},
    discrete_variant="discrete_bc",
    target_update=False,
)

#: Behaviour cloning of discrete actions: a categorical actor, Adam at 3e-4.
DISCRETE_BC_ALGORITHM = AlgorithmDeclaration(
    name="discrete_bc",
    loss_class=BCLoss,
    networks=lambda nets, hp: {"actor_network": nets.categorical_actor()},
    optimizer=(ParamGroup("actor", "actor_lr", "actor_network_params"),),
    loss_terms=("loss_bc",),
    action="discrete",
    defaults={"actor_lr": 3e-4},
    target_update=False,
)
