r"""What BCQ and BEAR share: a learned behaviour model, a soft-clipped ensemble target
maximised over sampled actions, and a policy that acts with the best sampled action.

:class:`BehaviorModelLoss` is an
:class:`~torchrl_offline.objectives._actor_critic.ActorCriticLoss` with a third network,
``behavior_network``, a :class:`~torchrl_offline.objectives.behavior_vae.BehaviorVAE` of
the logged actions. It holds:

* the behaviour model's loss (:meth:`~BehaviorModelLoss.behavior_loss`, the VAE's
  reconstruction plus ``kl_weight`` times its KL);
* the critics' regression on the target both papers share,

  .. math::

      y = r + \gamma (1 - d) \max_{k \le n}\Big[\lambda \min_j Q'_j(s', a_k)
          + (1 - \lambda) \max_j Q'_j(s', a_k)\Big],

  over ``n = num_target_samples`` actions :math:`a_k` that each algorithm draws at
  :math:`s'` (:meth:`~BehaviorModelLoss._next_candidates`): all critics and all actions
  in one batched call;
* acting (:meth:`~BehaviorModelLoss.select_action`, :class:`SampledArgmaxPolicy`): draw
  ``num_action_samples`` candidate actions at :math:`s`
  (:meth:`~BehaviorModelLoss._candidate_actions`) and take the one the first critic
  values most, as both papers' code does.
"""

from __future__ import annotations

import torch
from tensordict import TensorDictBase, TensorDictParams
from tensordict.nn import TensorDictModuleBase
from tensordict.utils import NestedKey, unravel_key
from torch import Tensor
from torchrl.data.tensor_specs import TensorSpec

from torchrl_offline.objectives._actor_critic import ActorCriticLoss, _leaf_view
from torchrl_offline.objectives._checks import check_reduction
from torchrl_offline.objectives.behavior_vae import BehaviorVAE, vae_loss
from torchrl_offline.objectives.common import (
    OfflineLossError,
    action_bounds,
    module_apply,
    next_key,
    td_target,
)
from torchrl_offline.objectives.declaration import ParamGroup
from torchrl_offline.objectives.networks import NetworkFactory

__all__ = [
    "BEHAVIOR_MODEL_DEFAULTS",
    "BEHAVIOR_MODEL_OPTIMIZER",
    "BehaviorModelLoss",
    "SampledArgmaxPolicy",
    "behavior_model_networks",
]

#: The run settings both papers' code shares (their declarations' defaults): 400 x 300
#: actor and twin critics, a 750 x 750 VAE, and Adam at torch's default 1e-3 for every
#: network.
BEHAVIOR_MODEL_DEFAULTS = {
    "hidden_sizes": (400, 300),
    "vae_hidden_sizes": (750, 750),
    "actor_lr": 1e-3,
    "critic_lr": 1e-3,
    "behavior_lr": 1e-3,
}

#: The optimizer's parameter groups of the actor, the critics and the behaviour model.
BEHAVIOR_MODEL_OPTIMIZER = (
    ParamGroup("actor", "actor_lr", "actor_network_params"),
    ParamGroup("qvalue", "critic_lr", "qvalue_network_params"),
    ParamGroup("behavior", "behavior_lr", "behavior_network_params"),
)


def behavior_model_networks(
    nets: NetworkFactory, hp, actor_network: TensorDictModuleBase
) -> dict[str, TensorDictModuleBase]:
    """The networks of a declaration: ``actor_network``, ``Q(s, a)`` and the behaviour
    VAE (with ``hp["vae_hidden_sizes"]``, and ``hp["vae_decoder_squash"]`` where the
    algorithm declares it, ``"tanh"`` otherwise)."""
    vae = nets.behavior_vae(
        tuple(int(h) for h in hp["vae_hidden_sizes"]),
        decoder_squash=hp.get("vae_decoder_squash", "tanh"),
    )
    return {
        "actor_network": actor_network,
        "qvalue_network": nets.qvalue(),
        "behavior_network": vae,
    }


class BehaviorModelLoss(ActorCriticLoss):
    r"""Base of the losses with an actor, a critic ensemble and a learned behaviour model.

    Subclasses add their own settings to the constructor (forwarding the others here) and
    implement :meth:`_next_candidates` (the actions the target maximises over) and
    :meth:`_candidate_actions` (the actions the policy chooses from).

    Args:
        actor_network (TensorDictModule): the algorithm's actor.
        qvalue_network (TensorDictModule or list of TensorDictModule): ``Q(s, a)`` writing
            ``"state_action_value"``; duplicated ``num_qvalue_nets`` times and evaluated
            as one batched computation.
        behavior_network (BehaviorVAE): the behaviour model.

    Keyword Args:
        action_spec (TensorSpec, optional): the bounded action spec; the behaviour
            model's bounds when omitted (they must agree when both are given).
        num_qvalue_nets (int, optional): number of critics. Defaults to ``2``.
        lmbda (float, optional): :math:`\lambda` of the soft clipped target. Defaults to
            ``0.75`` (both papers).
        num_target_samples (int, optional): actions per next state in the target.
            Defaults to ``10`` (both papers).
        num_action_samples (int, optional): candidate actions per state when acting.
            Defaults to ``10`` (the papers' ``n``).
        kl_weight (float, optional): weight of the VAE's KL term. Defaults to ``0.5``
            (both papers' code).
        loss_function (str, optional): critic regression, ``"l2"`` (the papers'),
            ``"l1"`` or ``"smooth_l1"``. Defaults to ``"l2"``.
        delay_actor (bool, optional): use a target actor in the target. Defaults to
            ``True`` (both papers' code).
        delay_qvalue (bool, optional): use target critics. Defaults to ``True``.
        reduction (str, optional): ``"none"``, ``"mean"`` or ``"sum"``. Defaults to
            ``"mean"``.
        deactivate_vmap (bool, optional): evaluate critics that are not plain MLPs in a
            Python loop instead of ``torch.vmap``. Defaults to ``False``.
        use_prioritized_weights (str or bool, optional): weight the losses by the
            ``priority_weight`` entry when present (``"auto"``). Defaults to ``"auto"``.
        check_inputs (bool, optional): check the batch for missing keys and NaN/inf and
            the losses for NaN/inf (one host read per update). Defaults to ``True``.

    Examples:
        >>> from torchrl_offline.objectives._behavior_model import BehaviorModelLoss
        >>> from torchrl_offline.objectives.bcq import BCQLoss
        >>> from torchrl_offline.objectives.bear import BEARLoss
        >>> issubclass(BCQLoss, BehaviorModelLoss) and issubclass(BEARLoss, BehaviorModelLoss)
        True
    """

    behavior_network: BehaviorVAE
    behavior_network_params: TensorDictParams
    target_behavior_network_params: TensorDictParams

    #: The detached diagnostics every subclass writes after its ``loss_*`` entries.
    _shared_out_keys = (
        "reconstruction_loss",
        "kl_loss",
        "state_action_value_actor",
        "pred_value",
        "next_state_value",
        "target_value",
    )

    # ------------------------------------------------------------------ construction
    def __init__(
        self,
        actor_network: TensorDictModuleBase,
        qvalue_network: TensorDictModuleBase | list[TensorDictModuleBase],
        behavior_network: BehaviorVAE,
        *,
        action_spec: TensorSpec | None = None,
        num_qvalue_nets: int = 2,
        lmbda: float = 0.75,
        num_target_samples: int = 10,
        num_action_samples: int = 10,
        kl_weight: float = 0.5,
        loss_function: str = "l2",
        delay_actor: bool = True,
        delay_qvalue: bool = True,
        reduction: str | None = None,
        deactivate_vmap: bool = False,
        use_prioritized_weights: str | bool = "auto",
        check_inputs: bool = True,
    ) -> None:
        reduction = check_reduction(reduction, loss_function)
        if not 0.0 <= lmbda <= 1.0:
            raise ValueError(f"lmbda must be in [0, 1], got {lmbda}")
        for name, value in (
            ("num_target_samples", num_target_samples),
            ("num_action_samples", num_action_samples),
            ("num_qvalue_nets", num_qvalue_nets),
        ):
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be an int >= 1, got {value!r}")
        if kl_weight < 0:
            raise ValueError(f"kl_weight must be >= 0, got {kl_weight}")
        if not isinstance(behavior_network, BehaviorVAE):
            raise OfflineLossError(
                f"behavior_network must be a torchrl_offline.objectives.BehaviorVAE (e.g. "
                f"make_behavior_vae(obs_dim, action_spec)), got {type(behavior_network).__name__}"
            )
        super().__init__()
        self._in_keys = None
        self.use_prioritized_weights = use_prioritized_weights
        self.reduction = reduction
        self.loss_function = loss_function
        self.deactivate_vmap = deactivate_vmap
        self.check_inputs = check_inputs
        self.num_qvalue_nets = num_qvalue_nets
        self.lmbda = float(lmbda)
        self.num_target_samples = int(num_target_samples)
        self.num_action_samples = int(num_action_samples)
        self.kl_weight = float(kl_weight)
        self.delay_actor = delay_actor
        self.delay_qvalue = delay_qvalue

        self.convert_to_functional(actor_network, "actor_network", create_target_params=delay_actor)
        self.convert_to_functional(
            qvalue_network, "qvalue_network", num_qvalue_nets, create_target_params=delay_qvalue
        )
        self.convert_to_functional(behavior_network, "behavior_network")

        low, high = behavior_network.action_low, behavior_network.action_high
        if action_spec is not None:
            spec_low, spec_high = action_bounds(action_spec, action_key=self.tensor_keys.action)
            if spec_low.shape != low.shape or not (
                torch.allclose(spec_low.to(low), low) and torch.allclose(spec_high.to(high), high)
            ):
                raise OfflineLossError(
                    "action_spec's bounds differ from the ones behavior_network was built "
                    f"for ([{spec_low.tolist()}, {spec_high.tolist()}] vs "
                    f"[{low.tolist()}, {high.tolist()}])"
                )
        self.register_buffer("action_low", low.detach().clone())
        self.register_buffer("action_high", high.detach().clone())
        self._num_calls = 0
        self.register_load_state_dict_post_hook(self._drop_caches)

    # ------------------------------------------------------------------ keys
    def _observation_keys(self) -> list[NestedKey]:
        """The networks' inputs other than the action, each once."""
        action = unravel_key(self.tensor_keys.action)
        keys = []
        for net in (self.actor_network, self.qvalue_network, self.behavior_network):
            keys += [unravel_key(k) for k in net.in_keys if unravel_key(k) != action]
        return list(dict.fromkeys(keys))

    def _set_in_keys(self) -> None:
        keys = self.tensor_keys
        obs = self._observation_keys()
        in_keys = [
            keys.action,
            next_key(keys.reward),
            next_key(keys.done),
            next_key(keys.terminated),
            *obs,
            *[next_key(k) for k in obs],
        ]
        self._in_keys = list(dict.fromkeys(unravel_key(k) for k in in_keys))

    # ------------------------------------------------------------------ helpers
    def _actor_params(self, *, target: bool) -> TensorDictBase:
        """The (target) actor's parameters (a cached leaf view for plain MLP actors)."""
        name = "target_actor_network_params" if target else "actor_network_params"
        cache_name = "_cache_actor_" + name
        cached = self.__dict__.get(cache_name)
        if cached is None:
            cached = self.__dict__[cache_name] = _leaf_view(self.actor_network, getattr(self, name))
        return cached

    def _diagnostic(self, value: Tensor) -> Tensor:
        """A detached per-sample diagnostic, averaged unless ``reduction="none"``."""
        value = value.detach()
        return value if self.reduction == "none" else value.mean()

    def _check_candidates(self, actions: Tensor, tensordict: TensorDictBase) -> None:
        data_action = tensordict.get(self.tensor_keys.action, None)
        if data_action is not None:
            self._check_action(actions[0], data_action)

    def _next_candidates(self, tensordict: TensorDictBase) -> Tensor:
        """The ``num_target_samples`` actions ``[n, *batch, A]`` the target maximises
        over at ``s'`` (target networks, no gradient)."""
        raise NotImplementedError

    def _candidate_actions(self, tensordict: TensorDictBase, num_samples: int) -> Tensor:
        """``num_samples`` actions ``[n, *batch, A]`` the policy chooses from at ``s``."""
        raise NotImplementedError

    # ------------------------------------------------------------------ losses
    def behavior_loss(self, tensordict: TensorDictBase) -> tuple[Tensor, dict[str, Tensor]]:
        """The behaviour model's loss: reconstruction + ``kl_weight`` x KL.

        Args:
            tensordict (TensorDictBase): a batch holding :attr:`in_keys`.

        Returns:
            ``(loss_behavior, metadata)`` with the detached ``"reconstruction_loss"`` and
            ``"kl_loss"`` (batch means unless ``reduction="none"``).
        """
        weights = self._maybe_get_priority_weight(tensordict)
        vae = self.behavior_network
        reconstruction, kl = vae_loss(
            vae, vae.observation(tensordict), tensordict.get(self.tensor_keys.action)
        )
        loss = self._reduce_loss(
            reconstruction + self.kl_weight * kl, tensordict=tensordict, weights=weights
        )
        metadata = {
            "reconstruction_loss": self._diagnostic(reconstruction),
            "kl_loss": self._diagnostic(kl),
        }
        return loss, metadata

    def _soft_clipped_max(self, q: Tensor) -> Tensor:
        """``max_k [lmbda min_j q_jk + (1 - lmbda) max_j q_jk]`` of ``q`` ``[E, n, *batch]``."""
        soft = self.lmbda * q.min(0).values + (1.0 - self.lmbda) * q.max(0).values
        return soft.max(0).values

    def qvalue_loss(self, tensordict: TensorDictBase) -> tuple[Tensor, dict[str, Tensor]]:
        """Every critic's regression on the soft-clipped target maximised over sampled
        actions at ``s'``.

        Args:
            tensordict (TensorDictBase): a batch holding :attr:`in_keys`.

        Returns:
            ``(loss_qvalue, metadata)`` with ``"td_error"`` (``[E, *batch]``) and the
            detached ``"pred_value"``, ``"next_state_value"`` and ``"target_value"``.
        """
        weights = self._maybe_get_priority_weight(tensordict)
        with torch.no_grad():
            next_actions = self._next_candidates(tensordict)
            self._check_candidates(next_actions, tensordict)
            next_q = self._critics(
                self._critic_params("target_qvalue_network_params"),
                self._q_inputs(tensordict, next_actions, nxt=True),
            )
            next_value = self._soft_clipped_max(next_q)
            target_value = td_target(self, tensordict, next_value)
        pred = self._critics(
            self._critic_params("qvalue_network_params"),
            self._q_inputs(tensordict, tensordict.get(self.tensor_keys.action), nxt=False),
        )
        return self._critic_regression(pred, target_value, next_value, tensordict, weights)

    def _q1(self, tensordict: TensorDictBase, action: Tensor) -> Tensor:
        """The first critic at ``s`` (parameters detached, gradient to ``action``)."""
        return module_apply(
            self.qvalue_network,
            self._cache_q1_detached,
            *self._q_inputs(tensordict, action, nxt=False),
            out_key=self.tensor_keys.state_action_value,
        ).squeeze(-1)

    # ------------------------------------------------------------------ acting
    @torch.no_grad()
    def select_action(self, tensordict: TensorDictBase, num_samples: int | None = None) -> Tensor:
        """The best of ``num_samples`` (``num_action_samples``) candidate actions under the
        first critic, at the states of ``tensordict`` (any batch shape, ``[]`` included).

        Examples:
            >>> import torch
            >>> from tensordict import TensorDict
            >>> from torchrl.data import Bounded, Unbounded
            >>> from torchrl_offline.trainers.algorithms import build_algorithm
            >>> algo = build_algorithm("bcq", Unbounded(shape=(3,)), Bounded(-2.0, 2.0, (1,)),
            ...                        hidden_sizes=(8,), vae_hidden_sizes=(8,))
            >>> state = TensorDict({"observation": torch.zeros(3)}, [])
            >>> algo.loss.select_action(state).shape, algo.loss.select_action(state, 50).shape
            (torch.Size([1]), torch.Size([1]))
        """
        n = self.num_action_samples if num_samples is None else int(num_samples)
        candidates = self._candidate_actions(tensordict, n)  # [n, *batch, A]
        best = self._q1(tensordict, candidates).argmax(0)  # [*batch]
        index = best.reshape(1, *best.shape, 1).expand(1, *candidates.shape[1:])
        return candidates.gather(0, index).squeeze(0)

    def make_policy(self, num_samples: int | None = None) -> SampledArgmaxPolicy:
        """The TorchRL policy that acts with :meth:`select_action`."""
        return SampledArgmaxPolicy(self, num_samples=num_samples)


class SampledArgmaxPolicy(TensorDictModuleBase):
    """The policy of BCQ and BEAR: the best of ``n`` sampled candidate actions under the
    first critic (:meth:`BehaviorModelLoss.select_action`).

    It reads the observation entries and writes the action, like any TorchRL actor, and
    acts the same under every exploration type (both papers' code samples the
    candidates when evaluating too). It holds the loss (its networks), so it follows the
    loss's weights, e.g. after ``loss.load_state_dict``.

    Args:
        loss (BehaviorModelLoss): the trained loss.

    Keyword Args:
        num_samples (int, optional): candidates per state. Defaults to the loss's
            ``num_action_samples``.

    Examples:
        >>> import torch
        >>> from tensordict import TensorDict
        >>> from torchrl.data import Bounded
        >>> from torchrl_offline.objectives.networks import NetworkFactory
        >>> from torchrl_offline.objectives.bear import BEAR_ALGORITHM
        >>> nets = NetworkFactory(3, Bounded(-2.0, 2.0, (1,)), hidden_sizes=(8,))
        >>> loss = BEAR_ALGORITHM.loss_class(**BEAR_ALGORITHM.networks(
        ...     nets, {"vae_hidden_sizes": (8,)}))
        >>> policy = loss.make_policy()
        >>> policy(TensorDict({"observation": torch.randn(4, 3)}, [4]))["action"].shape
        torch.Size([4, 1])
    """

    def __init__(self, loss: BehaviorModelLoss, *, num_samples: int | None = None) -> None:
        super().__init__()
        self.loss = loss
        self.num_samples = num_samples
        self.in_keys = loss._observation_keys()
        self.out_keys = [loss.tensor_keys.action]

    @property
    def spec(self) -> TensorSpec:
        """The action spec the behaviour model was built with."""
        return self.loss.behavior_network.spec

    def forward(self, tensordict: TensorDictBase) -> TensorDictBase:
        tensordict.set(self.out_keys[0], self.loss.select_action(tensordict, self.num_samples))
        return tensordict
