"""ReBRAC: TD3+BC revisited (Tarasov, Kurenkov, Nikulin & Kolesnikov, NeurIPS 2023).

:class:`ReBRACLoss` is :class:`~torchrl_offline.objectives.td3_bc.TD3BCLoss` with the
behaviour-cloning penalty split in two: one on the actor and one inside the critics'
target, against the dataset's next action. Everything else (the target-policy
smoothing, the batched twin critics, the keys, the checks) is TD3+BC's; this file holds
ReBRAC's own math and its declaration (deeper layer-normalised critics, larger
learning rates, the paper's per-dataset penalties as presets).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from tensordict import TensorDictBase
from tensordict.nn import TensorDictModule, dispatch
from tensordict.utils import NestedKey, unravel_key
from torch import Tensor
from torchrl.data.tensor_specs import TensorSpec

from torchrl_offline.data.episodes import NEXT_ACTION
from torchrl_offline.objectives._checks import _key_str
from torchrl_offline.objectives.common import OfflineLossError
from torchrl_offline.objectives.declaration import AlgorithmDeclaration, ParamGroup
from torchrl_offline.objectives.td3_bc import TD3BCLoss

__all__ = ["REBRAC_ALGORITHM", "REBRAC_PRESETS", "ReBRACLoss"]


class ReBRACLoss(TD3BCLoss):
    r"""ReBRAC loss (Tarasov et al., "Revisiting the Minimalist Approach to Offline
    Reinforcement Learning", NeurIPS 2023, https://arxiv.org/abs/2305.09836).

    TD3+BC with decoupled behaviour-cloning penalties. With the smoothed target action
    :math:`a' = \mathrm{clip}(\pi'(s') + \epsilon, \text{low}, \text{high})`,
    :math:`\epsilon = \mathrm{clip}(\mathcal{N}(0, \sigma^2), -c, c)` (as in TD3+BC,
    :math:`\sigma` and :math:`c` are fractions of the action half-range) and
    :math:`\hat a'` the action the dataset logged at :math:`s'`:

    .. math::

        y = r + \gamma (1 - d) \Big(\min_k Q'_k(s', a')
            - \beta_{\text{critic}} \lVert a' - \hat a' \rVert^2\Big),
        \qquad
        L_Q = \sum_{j} \big(Q_j(s, a) - y\big)^2,

    .. math::

        L_\pi = \beta_{\text{actor}} \lVert \pi(s) - a \rVert^2
            - \lambda \min_j Q_j(s, \pi(s)),
        \qquad
        \lambda = \frac{1}{\frac{1}{N}\sum_i |\min_j Q_j(s_i, \pi(s_i))|}.

    The squared distances are summed over action dimensions (in raw action units, as
    in the authors' code on D4RL's :math:`[-1, 1]` boxes; ``bc_in_unit_box=True``
    measures them in units of the action half-range, as
    :class:`~torchrl_offline.objectives.TD3BCLoss` can), and :math:`\lambda` is
    TD3+BC's Q normalisation without its :math:`\alpha` (the penalty weights play that
    role; ``normalize_q=False`` sets :math:`\lambda = 1`), as in the authors' code
    (released in CORL). The actor maximises the minimum over the critics where TD3+BC
    uses the first critic. The other changes of the paper are network and optimiser
    settings, made by :data:`REBRAC_ALGORITHM`: 3x256 layers with a LayerNorm after each
    hidden ReLU of the critics, learning rate 1e-3, batches of 1024 and the policy (and
    target) update on every 2nd step.

    The dataset's next action is read from the batch at ``tensor_keys.next_action``
    (``("next", "action")``). Datasets do not store it: it is the action of the next
    step of the same episode, derived from the episode order by
    :func:`~torchrl_offline.data.episodes.with_derived_keys` (``train`` and
    ``finetune`` do it for ReBRAC). At terminal transitions it is multiplied by
    :math:`1 - d = 0`; after a truncation the step's own action stands in.

    As in TorchRL's TD3+BC, :meth:`forward` computes both terms on every call; the
    delayed policy update is the training loop's (call :meth:`qvalue_loss` on every
    update and :meth:`actor_loss` on every 2nd one).

    Args:
        actor_network (TensorDictModule): the deterministic actor writing the action
            key (e.g. ``TensorDictSequential(MLP module, TanhModule)``).
        qvalue_network (TensorDictModule or list of TensorDictModule): the critic,
            writing ``"state_action_value"``; duplicated ``num_qvalue_nets`` times and
            evaluated as one batched computation (LayerNorm included).

    Keyword Args:
        action_spec (TensorSpec, optional): bounded action spec. Exclusive with
            ``bounds``; one is required.
        bounds (tuple of float or Tensor, optional): ``(low, high)``.
        beta_actor (float, optional): :math:`\beta_{\text{actor}}`. Defaults to
            ``0.001`` (the paper's halfcheetah-medium value; see
            :data:`REBRAC_PRESETS` for the others).
        beta_critic (float, optional): :math:`\beta_{\text{critic}}`. Defaults to
            ``0.01``.
        normalize_q (bool, optional): divide the actor's Q term by the batch's mean
            :math:`|Q|`. Defaults to ``True``.
        bc_in_unit_box (bool, optional): measure both penalties' action differences in
            units of the action half-range; ``False`` compares raw actions. Defaults to
            ``False``.
        num_qvalue_nets (int, optional): number of critics. Defaults to ``2``.
        policy_noise (float, optional): target-policy noise std, as a fraction of the
            action half-range. Defaults to ``0.2``.
        noise_clip (float, optional): noise clip, as a fraction of the action
            half-range. Defaults to ``0.5``.
        loss_function (str, optional): ``"l2"`` (the paper), ``"l1"`` or
            ``"smooth_l1"`` for the critic. Defaults to ``"l2"``.
        delay_actor (bool, optional): use a target actor. Defaults to ``True``.
        delay_qvalue (bool, optional): use target critics. Defaults to ``True``.
        priority_key (str, optional): deprecated, use ``set_keys(priority=...)``.
        separate_losses (bool, optional): parameters shared by actor and critic get
            gradients from the actor loss only. Defaults to ``False``.
        reduction (str, optional): ``"none"``, ``"mean"`` or ``"sum"``. Defaults to
            ``"mean"``.
        deactivate_vmap (bool, optional): evaluate the critics in a Python loop.
            Defaults to ``False``.
        use_prioritized_weights (str or bool, optional): weight the losses by the
            ``priority_weight`` entry when present (``"auto"``). Defaults to ``"auto"``.
        check_inputs (bool, optional): check the batch for missing keys and NaN/inf
            and the losses for NaN/inf. Defaults to ``True``.

    Examples:
        >>> import torch
        >>> from tensordict import TensorDict
        >>> from torchrl.data import Bounded
        >>> from torchrl_offline.objectives import NetworkFactory, ReBRACLoss
        >>> spec = Bounded(-2.0, 2.0, (1,))
        >>> nets = NetworkFactory(3, spec, hidden_sizes=(16, 16))
        >>> loss = ReBRACLoss(nets.deterministic_actor(), nets.qvalue(layer_norm=True),
        ...                   action_spec=spec, beta_actor=0.01, beta_critic=0.1)
        >>> _ = loss.make_value_estimator(gamma=0.99)
        >>> data = TensorDict({
        ...     "observation": torch.randn(8, 3), "action": spec.rand((8,)),
        ...     ("next", "observation"): torch.randn(8, 3),
        ...     ("next", "action"): spec.rand((8,)),  # the dataset's next action
        ...     ("next", "reward"): torch.randn(8, 1),
        ...     ("next", "done"): torch.zeros(8, 1, dtype=torch.bool),
        ...     ("next", "terminated"): torch.zeros(8, 1, dtype=torch.bool)}, [8])
        >>> out = loss(data)
        >>> (out["loss_actor"] + out["loss_qvalue"]).backward()
        >>> out["critic_bc_penalty"].shape
        torch.Size([8])
    """

    @dataclass
    class _AcceptedKeys(TD3BCLoss._AcceptedKeys):
        """Tensordict keys read or written by the loss, configurable with ``set_keys``:
        those of :class:`~torchrl_offline.objectives.td3_bc.TD3BCLoss` (``action``,
        ``state_action_value``, ``priority``, ``reward``, ``done``, ``terminated``,
        ``priority_weight``) and ReBRAC's own.

        Attributes:
            next_action (NestedKey): the action the dataset logged at the next state
                (a full key, not relative to ``"next"``). Defaults to
                ``("next", "action")``.
        """

        next_action: NestedKey = ("next", "action")

    tensor_keys: _AcceptedKeys
    default_keys = _AcceptedKeys
    out_keys = [*TD3BCLoss.out_keys, "critic_bc_penalty"]

    def __init__(
        self,
        actor_network: TensorDictModule,
        qvalue_network: TensorDictModule | list[TensorDictModule],
        *,
        action_spec: TensorSpec | None = None,
        bounds: tuple[float | Tensor, float | Tensor] | None = None,
        beta_actor: float = 0.001,
        beta_critic: float = 0.01,
        normalize_q: bool = True,
        bc_in_unit_box: bool = False,
        num_qvalue_nets: int = 2,
        policy_noise: float = 0.2,
        noise_clip: float = 0.5,
        loss_function: str = "l2",
        delay_actor: bool = True,
        delay_qvalue: bool = True,
        priority_key: str | None = None,
        separate_losses: bool = False,
        reduction: str | None = None,
        deactivate_vmap: bool = False,
        use_prioritized_weights: str | bool = "auto",
        check_inputs: bool = True,
    ) -> None:
        for name, value in (("beta_actor", beta_actor), ("beta_critic", beta_critic)):
            if not value >= 0:
                raise ValueError(f"{name} must be >= 0, got {value!r}")
        super().__init__(
            actor_network,
            qvalue_network,
            action_spec=action_spec,
            bounds=bounds,
            num_qvalue_nets=num_qvalue_nets,
            policy_noise=policy_noise,
            noise_clip=noise_clip,
            alpha=1.0,  # unused: ReBRAC's actor objective has no alpha
            bc_in_unit_box=bc_in_unit_box,
            loss_function=loss_function,
            delay_actor=delay_actor,
            delay_qvalue=delay_qvalue,
            priority_key=priority_key,
            separate_losses=separate_losses,
            reduction=reduction,
            deactivate_vmap=deactivate_vmap,
            use_prioritized_weights=use_prioritized_weights,
            check_inputs=check_inputs,
        )
        del self.alpha
        self.beta_actor = beta_actor
        self.beta_critic = beta_critic
        self.normalize_q = normalize_q

    def _set_in_keys(self) -> None:
        super()._set_in_keys()
        self._in_keys.append(unravel_key(self.tensor_keys.next_action))

    def _data_next_action(self, tensordict: TensorDictBase) -> Tensor:
        """The dataset's next action, or an error saying how to provide it."""
        key = self.tensor_keys.next_action
        value = tensordict.get(key, None)
        if value is None:
            raise OfflineLossError(
                f"ReBRACLoss reads the dataset's next action (the action logged at the "
                f"next step of the same episode) at batch key {_key_str(key)}, which the "
                "batch does not hold. Offline datasets do not store it: derive it from the "
                "episode order with torchrl_offline.data.episodes.with_derived_keys(buffer, "
                "[('next', 'action')], gamma=...) (or derive_keys for a TensorDict; train() "
                "and finetune() do it for ReBRAC), or name the key that holds it with "
                "loss.set_keys(next_action=...)"
            )
        return value

    # ------------------------------------------------------------------ ReBRAC's math
    def _actor_q(self, tensordict: TensorDictBase, action: Tensor) -> Tensor:
        """:math:`\\min_j Q_j(s, \\pi(s))`, ``[*batch]``, the critics' parameters detached."""
        inputs = self._q_inputs(tensordict, action, nxt=False)
        return self._critics(self._cache_q_detached, inputs).min(0).values

    def _actor_objective(
        self, q: Tensor, action: Tensor, data_action: Tensor
    ) -> tuple[Tensor, Tensor, Tensor]:
        """``beta_actor * ||pi(s) - a||^2 - lmbd * q`` per sample, the squared distance
        and ``lmbd = 1 / mean |q|`` (``1`` without ``normalize_q``)."""
        bc = self._action_difference(action, data_action).pow(2).reshape(*q.shape, -1).sum(-1)
        if self.normalize_q:
            lmbd = 1.0 / q.detach().abs().mean()
        else:
            lmbd = torch.ones((), dtype=q.dtype, device=q.device)
        return self.beta_actor * bc - lmbd * q, bc, lmbd

    def _next_state_value(
        self, tensordict: TensorDictBase, next_action: Tensor
    ) -> tuple[Tensor, dict[str, Tensor]]:
        """:math:`\\min_k Q'_k(s', a') - \\beta_{critic} ||a' - \\hat a'||^2`, and the
        per-sample penalty ``"critic_bc_penalty"`` (:math:`||a' - \\hat a'||^2`)."""
        next_value, metadata = super()._next_state_value(tensordict, next_action)
        data_next_action = self._data_next_action(tensordict)
        if data_next_action.shape != next_action.shape:
            raise OfflineLossError(
                f"batch key {_key_str(self.tensor_keys.next_action)} holds shape "
                f"{tuple(data_next_action.shape)} but the actions have shape "
                f"{tuple(next_action.shape)}"
            )
        diff = self._action_difference(next_action, data_next_action)
        penalty = diff.pow(2).reshape(*next_value.shape, -1).sum(-1)
        metadata = {**metadata, "critic_bc_penalty": penalty}
        return next_value - self.beta_critic * penalty, metadata

    @dispatch
    def forward(self, tensordict: TensorDictBase) -> TensorDictBase:
        """Computes the critic and actor losses (both, on every call, as TorchRL does).

        Returns the ``loss_*`` terms with TD3+BC's detached diagnostics (``bc_loss`` is
        the actor's squared distance to the data action) and ``critic_bc_penalty``,
        the per-sample :math:`\\lVert a' - \\hat a' \\rVert^2` of the target.
        """
        if self.check_inputs:
            self._data_next_action(tensordict)
        return super().forward(tensordict)


# ------------------------------------------------------------------------- declaration
def _per_dataset(domain: dict, betas: dict[str, tuple[float, float]]) -> dict[str, dict]:
    return {
        name: {**domain, "beta_actor": actor, "beta_critic": critic}
        for name, (actor, critic) in betas.items()
    }


_MUJOCO = {"actor_lr": 1e-3, "critic_lr": 1e-3, "gamma": 0.99}
_ANTMAZE = {"actor_lr": 3e-4, "critic_lr": 5e-5, "gamma": 0.999}
_ADROIT = {"actor_lr": 3e-4, "critic_lr": 3e-4, "gamma": 0.99}

#: The paper's published settings (Tarasov et al. 2023, appendix hyperparameter
#: tables; the values of the authors' configs released in CORL,
#: ``configs/offline/rebrac/<domain>/<dataset>.yaml``). A domain preset
#: (``"mujoco"``, ``"antmaze"``, ``"adroit"``, ``"maze2d"``) sets the learning rates
#: and discount and keeps the default penalties; a dataset preset (D4RL's name without
#: its version, e.g. ``"hopper-medium-replay"``) adds the paper's
#: ``(beta_actor, beta_critic)`` for it. Run settings are not presets: the paper trains
#: on batches of 1024 on MuJoCo and 256 elsewhere (``batch_size``), and multiplies
#: AntMaze rewards by 100.
REBRAC_PRESETS: dict[str, dict[str, float]] = {
    "mujoco": dict(_MUJOCO),
    "antmaze": dict(_ANTMAZE),
    "adroit": dict(_ADROIT),
    "maze2d": dict(_ADROIT),
    **_per_dataset(
        _MUJOCO,
        {
            "halfcheetah-random": (0.001, 0.1),
            "halfcheetah-medium": (0.001, 0.01),
            "halfcheetah-expert": (0.01, 0.01),
            "halfcheetah-medium-expert": (0.01, 0.1),
            "halfcheetah-medium-replay": (0.01, 0.001),
            "halfcheetah-full-replay": (0.001, 0.1),
            "hopper-random": (0.001, 0.01),
            "hopper-medium": (0.01, 0.01),
            "hopper-expert": (0.1, 0.1),
            "hopper-medium-expert": (0.1, 0.01),
            "hopper-medium-replay": (0.05, 0.5),
            "hopper-full-replay": (0.01, 0.01),
            "walker2d-random": (0.01, 0.0),
            "walker2d-medium": (0.05, 0.1),
            "walker2d-expert": (0.01, 0.5),
            "walker2d-medium-expert": (0.01, 0.01),
            "walker2d-medium-replay": (0.05, 0.01),
            "walker2d-full-replay": (0.01, 0.01),
        },
    ),
    **_per_dataset(
        _ANTMAZE,
        {
            "antmaze-umaze": (0.003, 0.002),
            "antmaze-umaze-diverse": (0.003, 0.001),
            "antmaze-medium-play": (0.001, 0.0005),
            "antmaze-medium-diverse": (0.001, 0.0),
            "antmaze-large-play": (0.002, 0.001),
            "antmaze-large-diverse": (0.002, 0.002),
        },
    ),
    **_per_dataset(
        _ADROIT,
        {
            "pen-human": (0.1, 0.5),
            "pen-cloned": (0.05, 0.5),
            "pen-expert": (0.01, 0.01),
            "door-human": (0.1, 0.1),
            "door-cloned": (0.01, 0.1),
            "door-expert": (0.05, 0.01),
            "hammer-human": (0.01, 0.5),
            "hammer-cloned": (0.1, 0.5),
            "hammer-expert": (0.01, 0.01),
            "relocate-human": (0.1, 0.01),
            "relocate-cloned": (0.1, 0.01),
            "relocate-expert": (0.05, 0.01),
            "maze2d-umaze": (0.003, 0.001),
            "maze2d-medium": (0.003, 0.001),
            "maze2d-large": (0.003, 0.001),
        },
    ),
}

#: ReBRAC as :func:`~torchrl_offline.trainers.algorithms.build_algorithm` builds it: the
#: paper's deterministic tanh actor and twin ``Q(s, a)``, 3x256 MLPs with a LayerNorm
#: after each hidden ReLU of the critics (``actor_layer_norm`` / ``critic_layer_norm``),
#: Adam at 1e-3 for both, the actor and the targets on every 2nd update; presets:
#: :data:`REBRAC_PRESETS`. The dataset's next action is a derived key
#: (:mod:`torchrl_offline.data.episodes`), which ``train`` and ``finetune`` add.
REBRAC_ALGORITHM = AlgorithmDeclaration(
    name="rebrac",
    loss_class=ReBRACLoss,
    networks=lambda nets, hp: {
        "actor_network": nets.deterministic_actor(layer_norm=hp["actor_layer_norm"]),
        "qvalue_network": nets.qvalue(layer_norm=hp["critic_layer_norm"]),
    },
    optimizer=(
        ParamGroup("actor", "actor_lr", "actor_network_params"),
        ParamGroup("qvalue", "critic_lr", "qvalue_network_params"),
    ),
    loss_terms=("loss_actor", "loss_qvalue"),
    defaults={
        "hidden_sizes": (256, 256, 256),
        "actor_layer_norm": False,
        "critic_layer_norm": True,
        "actor_lr": 1e-3,
        "critic_lr": 1e-3,
        "policy_update_delay": 2,
        "target_update_delay": 2,
    },
    presets=REBRAC_PRESETS,
    action_spec_argument="action_spec",
    derived_keys=(NEXT_ACTION,),
)
