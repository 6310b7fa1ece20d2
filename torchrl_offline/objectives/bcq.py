r"""Batch-Constrained deep Q-learning (Fujimoto, Meger & Precup, ICML 2019).

Paper: "Off-Policy Deep Reinforcement Learning without Exploration",
https://arxiv.org/abs/1812.02900. TorchRL has no BCQ loss; :class:`BCQLoss` follows the
shape of TorchRL's losses (``_AcceptedKeys``, ``set_keys``, ``make_value_estimator``,
``reduction``, per-term methods, ``td_error`` for prioritized replay).
"""

from __future__ import annotations

from typing import Any

import torch
from tensordict import TensorDictBase
from tensordict.nn import TensorDictModule, dispatch
from torch import Tensor, nn
from torchrl.modules import MLP

from torchrl_offline.objectives._behavior_model import (
    BEHAVIOR_MODEL_DEFAULTS,
    BEHAVIOR_MODEL_OPTIMIZER,
    BehaviorModelLoss,
    behavior_model_networks,
)
from torchrl_offline.objectives.behavior_vae import DECODER_SQUASHES, BehaviorVAE, _out_features
from torchrl_offline.objectives.common import check_batch, check_output_dim, module_apply
from torchrl_offline.objectives.declaration import AlgorithmDeclaration

__all__ = ["BCQ_ALGORITHM", "BCQ_PRESETS", "BCQLoss", "make_perturbation_actor"]

#: Named settings of :class:`BCQLoss` and its run (:data:`BCQ_ALGORITHM`).
#:
#: * ``"d3rlpy"``: d3rlpy 2.8's ``BCQConfig`` defaults: 100 sampled actions both for the
#:   target and for acting (the paper's code acts with 100, its target uses 10), 2x256
#:   networks for the actor, the critics and the VAE, and a VAE decoder whose linear
#:   output is clipped into the action box instead of squashed by ``tanh`` (d3rlpy clips
#:   only the perturbed action; ours clips the decoded sample too).
BCQ_PRESETS: dict[str, dict[str, object]] = {
    "d3rlpy": {
        "num_target_samples": 100,
        "num_action_samples": 100,
        "hidden_sizes": (256, 256),
        "vae_hidden_sizes": (256, 256),
        "vae_decoder_squash": "clip",
    },
}


class BCQLoss(BehaviorModelLoss):
    r"""BCQ for continuous actions (Fujimoto, Meger & Precup, "Off-Policy Deep
    Reinforcement Learning without Exploration", ICML 2019).

    Three networks: a conditional VAE :math:`G_\omega(s)` of the behaviour policy
    (``behavior_network``, :class:`~torchrl_offline.objectives.behavior_vae.BehaviorVAE`),
    a perturbation model :math:`\xi_\phi(s, a)` (``actor_network``) and an ensemble of
    critics :math:`Q_{\theta_j}` (``qvalue_network``). With :math:`h = (\text{high} -
    \text{low}) / 2` from the action spec, the perturbed action is

    .. math::

        \pi(s, a) = \mathrm{clip}\big(a + \Phi\, h \tanh(\xi_\phi(s, a)),\ \text{low},
            \text{high}\big), \qquad \Phi = 0.05,

    and the three terms are (the paper's Algorithm 1):

    .. math::

        L_G &= \lVert G_\omega(s, a) - a \rVert^2 + \beta\, \mathrm{KL}, \qquad \beta = 0.5
        \\
        L_Q &= \sum_j \big(Q_{\theta_j}(s, a) - y\big)^2, \quad
            y = r + \gamma (1 - d) \max_{k \le n}\Big[\lambda \min_j Q_{\theta'_j}(s', a_k)
            + (1 - \lambda) \max_j Q_{\theta'_j}(s', a_k)\Big],
            \quad a_k = \pi'(s', G_\omega(s'))
        \\
        L_\pi &= -Q_{\theta_1}\big(s, \pi(s, G_\omega(s))\big)

    with :math:`\lambda = 0.75`, :math:`n = 10` decoded actions at :math:`s'`, the target
    perturbation model and target critics (Polyak-averaged) in :math:`y`, and VAE samples
    decoded from :math:`z \sim \mathcal{N}(0, I)` clipped to ``[-0.5, 0.5]``. The decoded
    actions carry no gradient (the VAE learns from :math:`L_G` only), the critics none
    from :math:`L_\pi`.

    The policy (:meth:`make_policy`, the ``policy`` that
    :func:`~torchrl_offline.trainers.algorithms.build_algorithm` returns) decodes
    ``num_action_samples`` actions at :math:`s`, perturbs them and takes the one with the
    highest :math:`Q_{\theta_1}`: the paper's :math:`\pi(s)` with the same :math:`n = 10`
    (the authors' code acts with 100; ``num_action_samples=100`` or the ``"d3rlpy"``
    preset).

    Args:
        actor_network (TensorDictModule): the perturbation model, reading the
            observation and the action (the decoded one is given in its place) and
            writing the pre-``tanh`` perturbation, one value per action dimension (e.g.
            :func:`make_perturbation_actor`).
        qvalue_network (TensorDictModule or list of TensorDictModule): ``Q(s, a)`` writing
            ``"state_action_value"``; duplicated ``num_qvalue_nets`` times and evaluated
            as one batched computation.
        behavior_network (BehaviorVAE): the behaviour model.

    Keyword Args:
        perturbation_scale (float, optional): :math:`\Phi`, the largest perturbation as a
            fraction of the action half-range. Defaults to ``0.05``.
        action_spec, num_qvalue_nets, lmbda, num_target_samples, num_action_samples,
        kl_weight, loss_function, delay_actor, delay_qvalue, reduction, deactivate_vmap,
        use_prioritized_weights, check_inputs: as in
            :class:`~torchrl_offline.objectives._behavior_model.BehaviorModelLoss`
            (``lmbda`` 0.75, 10 decoded actions in the target and when acting,
            ``kl_weight`` 0.5, a target perturbation model, squared-error critics).

    Examples:
        >>> import torch
        >>> from tensordict import TensorDict
        >>> from torchrl.data import Bounded
        >>> from torchrl.modules import MLP, ValueOperator
        >>> from torchrl_offline.objectives.bcq import BCQLoss, make_perturbation_actor
        >>> from torchrl_offline.objectives.behavior_vae import make_behavior_vae
        >>> n_obs, n_act = 3, 2
        >>> spec = Bounded(-2.0, 2.0, (n_act,))
        >>> qvalue = ValueOperator(MLP(in_features=n_obs + n_act, out_features=1,
        ...                            num_cells=[16]), in_keys=["observation", "action"])
        >>> loss = BCQLoss(make_perturbation_actor(n_obs, n_act, num_cells=[16]), qvalue,
        ...                make_behavior_vae(n_obs, spec, num_cells=[16]), action_spec=spec)
        >>> loss.make_value_estimator(gamma=0.99)
        >>> data = TensorDict({
        ...     "observation": torch.randn(8, n_obs), "action": spec.rand((8,)),
        ...     ("next", "observation"): torch.randn(8, n_obs),
        ...     ("next", "reward"): torch.randn(8, 1),
        ...     ("next", "done"): torch.zeros(8, 1, dtype=torch.bool),
        ...     ("next", "terminated"): torch.zeros(8, 1, dtype=torch.bool)}, [8])
        >>> out = loss(data)
        >>> sorted(k for k in out.keys() if k.startswith("loss_"))
        ['loss_actor', 'loss_behavior', 'loss_qvalue']
        >>> policy = loss.make_policy()  # the best of 10 perturbed VAE samples under Q1
        >>> policy(data.select("observation"))["action"].shape
        torch.Size([8, 2])
    """

    out_keys = [
        "loss_actor",
        "loss_qvalue",
        "loss_behavior",
        *BehaviorModelLoss._shared_out_keys,
    ]

    def __init__(
        self,
        actor_network: TensorDictModule,
        qvalue_network: TensorDictModule | list[TensorDictModule],
        behavior_network: BehaviorVAE,
        *,
        perturbation_scale: float = 0.05,
        **kwargs: Any,
    ) -> None:
        if perturbation_scale < 0:
            raise ValueError(f"perturbation_scale must be >= 0, got {perturbation_scale}")
        super().__init__(actor_network, qvalue_network, behavior_network, **kwargs)
        self.perturbation_scale = float(perturbation_scale)
        out_dim = _out_features(actor_network)
        if out_dim is not None:
            check_output_dim("actor_network", out_dim, self.action_low.shape[-1])

    # ------------------------------------------------------------------ actions
    def _perturb(
        self, tensordict: TensorDictBase, action: Tensor, *, target: bool, nxt: bool
    ) -> Tensor:
        """``clip(a + perturbation_scale * h * tanh(xi(s, a)), low, high)`` for the
        decoded ``action`` at ``s`` (``s'`` with ``nxt``), with the (target) actor."""
        raw = module_apply(
            self.actor_network,
            self._actor_params(target=target),
            *self._inputs(self.actor_network, tensordict, action, nxt=nxt),
        )
        low, high = self.action_low, self.action_high
        perturbed = action + (self.perturbation_scale * 0.5) * (high - low) * raw.tanh()
        return torch.maximum(torch.minimum(perturbed, high), low)

    def _decoded(self, tensordict: TensorDictBase, num_samples: int | None) -> Tensor:
        vae = self.behavior_network
        with torch.no_grad():
            action, _ = vae.sample(vae.observation(tensordict), num_samples)
        return action

    def _next_candidates(self, tensordict: TensorDictBase) -> Tensor:
        decoded = self._decoded(tensordict.get("next"), self.num_target_samples)
        return self._perturb(tensordict, decoded, target=True, nxt=True)

    def _candidate_actions(self, tensordict: TensorDictBase, num_samples: int) -> Tensor:
        decoded = self._decoded(tensordict, num_samples)
        return self._perturb(tensordict, decoded, target=False, nxt=False)

    # ------------------------------------------------------------------ losses
    def actor_loss(self, tensordict: TensorDictBase) -> tuple[Tensor, dict[str, Tensor]]:
        """``-Q_1(s, pi(s, G(s)))``: the perturbation model maximises the first critic at
        one decoded action per state (critic and VAE detached).

        Args:
            tensordict (TensorDictBase): a batch holding :attr:`in_keys`.

        Returns:
            ``(loss_actor, metadata)`` with the detached ``"state_action_value_actor"``.
        """
        weights = self._maybe_get_priority_weight(tensordict)
        action = self._perturb(tensordict, self._decoded(tensordict, None), target=False, nxt=False)
        self._check_action(action, tensordict.get(self.tensor_keys.action))
        q1 = self._q1(tensordict, action)
        loss = self._reduce_loss(-q1, tensordict=tensordict, weights=weights)
        return loss, {"state_action_value_actor": self._diagnostic(q1)}

    @dispatch
    def forward(self, tensordict: TensorDictBase) -> TensorDictBase:
        """Computes the VAE, critic and actor losses on one batch (all three, every call).

        Writes the per-sample TD error (max over critics) to the ``priority`` key of
        ``tensordict`` and returns ``loss_behavior``, ``loss_qvalue`` and ``loss_actor``
        with detached diagnostics.
        """
        if self.check_inputs:
            check_batch(tensordict, self.in_keys, finite=False)
        loss_behavior, behavior_metadata = self.behavior_loss(tensordict)
        loss_qvalue, metadata = self.qvalue_loss(tensordict)
        loss_actor, actor_metadata = self.actor_loss(tensordict)
        losses = {
            "loss_actor": loss_actor,
            "loss_qvalue": loss_qvalue,
            "loss_behavior": loss_behavior,
        }
        metadata = {**behavior_metadata, **actor_metadata, **metadata}
        return self._pack(tensordict, losses, metadata, "_num_calls")


def make_perturbation_actor(
    observation_dim: int,
    action_dim: int,
    *,
    num_cells=(400, 300),
    in_keys=("observation", "action"),
    out_key="perturbation",
) -> TensorDictModule:
    """BCQ's perturbation model ``xi(s, a)``: a ReLU MLP from the observation and the
    action to one pre-``tanh`` value per action dimension (400 x 300 in the authors'
    code).

    Examples:
        >>> from torchrl_offline.objectives.bcq import make_perturbation_actor
        >>> actor = make_perturbation_actor(3, 2, num_cells=[8])
        >>> actor.in_keys, actor.out_keys
        (['observation', 'action'], ['perturbation'])
    """
    mlp = MLP(
        in_features=observation_dim + action_dim,
        out_features=action_dim,
        num_cells=list(num_cells),
        activation_class=nn.ReLU,
    )
    return TensorDictModule(mlp, in_keys=list(in_keys), out_keys=[out_key])


# ------------------------------------------------------------------------- declaration
#: BCQ as :func:`~torchrl_offline.trainers.algorithms.build_algorithm` builds it: the
#: authors' networks (400 x 300 perturbation model and twin critics, 750 x 750 VAE with a
#: ``tanh`` decoder; ``vae_decoder_squash="clip"`` for d3rlpy's clipped one) and
#: optimizer (Adam at 1e-3 for all three), acting with :meth:`BCQLoss.make_policy` (the
#: best of ``num_action_samples`` perturbed VAE samples under the first critic). The
#: paper's batch of 100 is left to the training run's ``batch_size``.
BCQ_ALGORITHM = AlgorithmDeclaration(
    name="bcq",
    loss_class=BCQLoss,
    networks=lambda nets, hp: behavior_model_networks(
        nets,
        hp,
        make_perturbation_actor(nets.observation_dim, nets.action_dim, num_cells=nets.hidden_sizes),
    ),
    optimizer=BEHAVIOR_MODEL_OPTIMIZER,
    loss_terms=("loss_actor", "loss_qvalue", "loss_behavior"),
    defaults={**BEHAVIOR_MODEL_DEFAULTS, "vae_decoder_squash": "tanh"},
    choices={"vae_decoder_squash": DECODER_SQUASHES},
    presets=BCQ_PRESETS,
    action_spec_argument="action_spec",
    policy=lambda loss, networks: loss.make_policy(),
    discrete_variant="discrete_bcq",
)
