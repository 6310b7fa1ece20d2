r"""Bootstrapping Error Accumulation Reduction (Kumar, Fu, Tucker & Levine, NeurIPS 2019).

Paper: "Stabilizing Off-Policy Q-Learning via Bootstrapping Error Reduction",
https://arxiv.org/abs/1906.00949; the settings follow the authors' code
(github.com/aviralkumar2907/BEAR). TorchRL has no BEAR loss; :class:`BEARLoss` follows the
shape of TorchRL's losses, with the Lagrange multiplier trained by the same optimizer as
the networks (as :class:`~torchrl_offline.objectives.cql.CQLLoss` trains ``alpha'``).
"""

from __future__ import annotations

import math
from typing import Any

import torch
from tensordict import TensorDictBase
from tensordict.nn import ProbabilisticTensorDictSequential, TensorDictModule, dispatch
from torch import Tensor, nn
from torchrl.modules import TanhNormal

from torchrl_offline.objectives._behavior_model import (
    BEHAVIOR_MODEL_DEFAULTS,
    BEHAVIOR_MODEL_OPTIMIZER,
    BehaviorModelLoss,
    behavior_model_networks,
)
from torchrl_offline.objectives.behavior_vae import BehaviorVAE
from torchrl_offline.objectives.common import (
    OfflineLossError,
    actor_distribution,
    check_batch,
    from_unit_interval,
)
from torchrl_offline.objectives.declaration import AlgorithmDeclaration, ParamGroup

__all__ = ["BEAR_ALGORITHM", "BEAR_PRESETS", "MMD_KERNELS", "BEARLoss", "mmd"]

#: The kernels of :func:`mmd`.
MMD_KERNELS = ("laplacian", "gaussian")

#: Named settings of :class:`BEARLoss` and its run (:data:`BEAR_ALGORITHM`).
#:
#: * ``"laplacian"``: the Laplacian kernel with bandwidth 10, the first setting the authors'
#:   README recommends across environments (its Hopper command; the code's comment: 10
#:   for Hopper and HalfCheetah).
#: * ``"gaussian"``: the Gaussian kernel with bandwidth 20, the README's second setting
#:   (its Walker2d command).
#: * ``"d3rlpy"``: d3rlpy 2.8's ``BEARConfig`` defaults that this loss has: Adam at 1e-4
#:   (actor), 3e-4 (critics, VAE) and 1e-3 (Lagrange multiplier), 100 actions when acting,
#:   4 per state in the MMD, unclipped actor noise, 40,000 warm-up steps, the current actor
#:   (no target actor) in the target, 2x256 networks. d3rlpy also adds SAC's entropy term,
#:   which this loss does not have.
BEAR_PRESETS: dict[str, dict[str, object]] = {
    "laplacian": {"mmd_kernel": "laplacian", "mmd_sigma": 10.0},
    "gaussian": {"mmd_kernel": "gaussian", "mmd_sigma": 20.0},
    "d3rlpy": {
        "actor_lr": 1e-4,
        "critic_lr": 3e-4,
        "behavior_lr": 3e-4,
        "alpha_lr": 1e-3,
        "num_action_samples": 100,
        "num_target_samples": 10,
        "num_mmd_samples": 4,
        "mmd_kernel": "laplacian",
        "mmd_sigma": 20.0,
        "clip_actor_noise": False,
        "warmup_steps": 40_000,
        "delay_actor": False,
        "hidden_sizes": (256, 256),
        "vae_hidden_sizes": (256, 256),
    },
}


def mmd(x: Tensor, y: Tensor, *, kernel: str = "laplacian", sigma: float = 20.0) -> Tensor:
    r"""The sampled maximum mean discrepancy of BEAR between two sets of actions.

    .. math::

        \mathrm{MMD}(x, y) = \sqrt{\tfrac{1}{n^2}\textstyle\sum_{i,i'} k(x_i, x_{i'})
            - \tfrac{2}{nm}\sum_{i,j} k(x_i, y_j) + \tfrac{1}{m^2}\sum_{j,j'} k(y_j, y_{j'})
            + 10^{-6}}

    with :math:`k(u, v) = \exp(-\lVert u - v\rVert_1 / (2\sigma))` (``"laplacian"``) or
    :math:`\exp(-\lVert u - v\rVert_2^2 / (2\sigma))` (``"gaussian"``), as in the authors'
    code.

    Args:
        x (Tensor): ``[n, *batch, d]``, ``n`` samples per batch entry.
        y (Tensor): ``[m, *batch, d]``.

    Keyword Args:
        kernel (str): ``"laplacian"`` or ``"gaussian"``.
        sigma (float): the bandwidth.

    Returns:
        Tensor: ``[*batch]``.

    Examples:
        >>> import torch
        >>> from torchrl_offline.objectives.bear import mmd
        >>> x = torch.zeros(5, 3, 2)
        >>> mmd(x, x).shape, bool(mmd(x, x + 10.0).mean() > mmd(x, x).mean())
        (torch.Size([3]), True)
    """
    if kernel not in MMD_KERNELS:
        raise ValueError(f"kernel must be one of {MMD_KERNELS}, got {kernel!r}")

    def mean_kernel(a: Tensor, b: Tensor) -> Tensor:
        diff = a.unsqueeze(1) - b.unsqueeze(0)  # [n, m, *batch, d]
        dist = diff.abs().sum(-1) if kernel == "laplacian" else diff.pow(2).sum(-1)
        return torch.exp(dist / (-2.0 * sigma)).mean((0, 1))

    return (mean_kernel(x, x) + mean_kernel(y, y) - 2.0 * mean_kernel(x, y) + 1e-6).sqrt()


class BEARLoss(BehaviorModelLoss):
    r"""BEAR for continuous actions (Kumar, Fu, Tucker & Levine, "Stabilizing Off-Policy
    Q-Learning via Bootstrapping Error Reduction", NeurIPS 2019).

    Three networks: a conditional VAE of the behaviour policy :math:`\pi_\beta`
    (``behavior_network``, :class:`~torchrl_offline.objectives.behavior_vae.BehaviorVAE`),
    a tanh-squashed Gaussian actor :math:`\pi` (``actor_network``, TorchRL's
    :class:`~torchrl.modules.TanhNormal`) and an ensemble of critics :math:`Q_j`. The
    terms, as in the authors' code (``mode=auto``, its default ``version=0``, no ensemble
    variance):

    .. math::

        L_\beta &= \lVert \hat a_\beta(s, a) - a \rVert^2 + \beta_{KL}\, \mathrm{KL}
        \\
        L_Q &= \sum_j \big(Q_j(s, a) - y\big)^2, \quad
            y = r + \gamma (1 - d) \max_{k \le n}\Big[\lambda \min_j Q'_j(s', a_k)
            + (1 - \lambda) \max_j Q'_j(s', a_k)\Big], \quad a_k \sim \pi'(\cdot \mid s')
        \\
        L_\pi &= -\min_j \tfrac{1}{m} \textstyle\sum_{i \le m} Q_j(s, a_i)
            + \alpha\, \mathrm{MMD}(\{u^\beta_i\}, \{u_i\}), \quad a_i \sim \pi(\cdot \mid s)
        \\
        L_\alpha &= -\alpha\,\big(\mathrm{MMD} - \epsilon\big)

    with :math:`\lambda = 0.75`, :math:`n = 10` target samples from the target actor,
    :math:`m = 5` samples per state from the actor and from :math:`\pi_\beta` in the MMD
    (:func:`mmd`, Laplacian kernel, :math:`\sigma = 20`), computed on the actions before
    the ``tanh`` (:math:`u`, as the authors' code does "to prevent gradient dying out due
    to saturation") and with the critics' values of the same actor samples. The actor
    maximises the ensemble minimum of the sample-mean values (the code's ``version=0``).
    The MMD constraint :math:`\mathrm{MMD} \le \epsilon = 0.05` is enforced by the
    Lagrange multiplier :math:`\alpha = e^{\log\alpha}`, trained by dual gradient ascent
    through :math:`L_\alpha` by the same optimizer as the networks (:math:`\alpha` is
    detached in :math:`L_\pi`, the MMD in :math:`L_\alpha`), with :math:`\log\alpha`
    clamped to ``[min_log_alpha, max_log_alpha] = [-5, 10]`` before each use (the code
    clamps it after each step). For the first ``warmup_steps`` actor updates (counted
    by the ``num_updates`` buffer, saved with the loss) the actor minimises
    :math:`\alpha\,\mathrm{MMD}` alone. There is no entropy term: the authors' code has
    none (d3rlpy's BEAR adds SAC's).

    Sampling: the actor's standard-normal noise is clipped to ``[-0.5, 0.5]`` for the
    MMD and value samples ("this trick stabilizes learning", the authors' code;
    ``clip_actor_noise``), not for the target's samples nor when acting; the VAE decodes
    :math:`z \sim \mathcal{N}(0, I)` clipped to ``[-0.5, 0.5]``. Acting
    (:meth:`make_policy`) takes the best of ``num_action_samples`` (10) actor samples under
    the first critic, as the authors' code does; d3rlpy 2.8 samples 100.

    Args:
        actor_network (ProbabilisticTensorDictSequential): the actor, whose distribution
            is a :class:`~torchrl.modules.TanhNormal` over the action box (e.g.
            :meth:`~torchrl_offline.objectives.networks.NetworkFactory.tanh_normal_actor`).
        qvalue_network (TensorDictModule or list of TensorDictModule): ``Q(s, a)`` writing
            ``"state_action_value"``; duplicated ``num_qvalue_nets`` times and evaluated
            as one batched computation.
        behavior_network (BehaviorVAE): the behaviour model.

    Keyword Args:
        num_mmd_samples (int, optional): samples per state from the actor and from the
            behaviour model in the MMD. Defaults to ``5`` (the README's recommendation).
        mmd_kernel (str, optional): ``"laplacian"`` or ``"gaussian"``. Defaults to
            ``"laplacian"``.
        mmd_sigma (float, optional): the kernel's bandwidth. Defaults to ``20.0``.
        mmd_threshold (float, optional): :math:`\epsilon`. Defaults to ``0.05``.
        alpha_init (float, optional): the initial Lagrange multiplier. Defaults to
            ``1.0`` (the authors' code draws its log from :math:`\mathcal{N}(0, 1)`).
        min_log_alpha (float, optional): lower clamp of :math:`\log\alpha`. Defaults to
            ``-5.0``.
        max_log_alpha (float, optional): upper clamp of :math:`\log\alpha` (the code's
            ``lagrange_thresh``). Defaults to ``10.0``.
        warmup_steps (int, optional): actor updates trained by the MMD term alone: the
            code's 20 epochs of its default 5,000 steps. Defaults to ``100_000``.
        clip_actor_noise (bool, optional): clip the actor's standard-normal noise to
            ``[-0.5, 0.5]`` in the MMD and value samples, as the authors' code does.
            Defaults to ``True``.
        action_spec, num_qvalue_nets, lmbda, num_target_samples, num_action_samples,
        kl_weight, loss_function, delay_actor, delay_qvalue, reduction, deactivate_vmap,
        use_prioritized_weights, check_inputs: as in
            :class:`~torchrl_offline.objectives._behavior_model.BehaviorModelLoss`
            (``num_qvalue_nets`` 2, the code's ``num_qs``; ``lmbda`` 0.75; 10 actor
            samples in the target and when acting; ``kl_weight`` 0.5; a target actor,
            as the authors' code has; squared-error critics).

    Examples:
        >>> import torch
        >>> from tensordict import TensorDict
        >>> from torchrl.data import Bounded
        >>> from torchrl_offline.objectives.bear import BEARLoss
        >>> from torchrl_offline.objectives.networks import NetworkFactory
        >>> spec = Bounded(-2.0, 2.0, (2,))
        >>> nets = NetworkFactory(3, spec, hidden_sizes=(16,))
        >>> loss = BEARLoss(nets.tanh_normal_actor(), nets.qvalue(), nets.behavior_vae(),
        ...                 action_spec=spec, warmup_steps=1)
        >>> loss.make_value_estimator(gamma=0.99)
        >>> data = TensorDict({
        ...     "observation": torch.randn(8, 3), "action": spec.rand((8,)),
        ...     ("next", "observation"): torch.randn(8, 3),
        ...     ("next", "reward"): torch.randn(8, 1),
        ...     ("next", "done"): torch.zeros(8, 1, dtype=torch.bool),
        ...     ("next", "terminated"): torch.zeros(8, 1, dtype=torch.bool)}, [8])
        >>> out = loss(data)  # update 1: the warm-up (MMD term alone)
        >>> sorted(k for k in out.keys() if k.startswith("loss_"))
        ['loss_actor', 'loss_alpha', 'loss_behavior', 'loss_qvalue']
        >>> bool(out["warmup"]), bool(loss(data)["warmup"]), int(loss.num_updates)
        (True, False, 2)
    """

    out_keys = [
        "loss_actor",
        "loss_qvalue",
        "loss_behavior",
        "loss_alpha",
        "alpha",
        "mmd",
        "warmup",
        *BehaviorModelLoss._shared_out_keys,
    ]

    def __init__(
        self,
        actor_network: ProbabilisticTensorDictSequential,
        qvalue_network: TensorDictModule | list[TensorDictModule],
        behavior_network: BehaviorVAE,
        *,
        num_mmd_samples: int = 5,
        mmd_kernel: str = "laplacian",
        mmd_sigma: float = 20.0,
        mmd_threshold: float = 0.05,
        alpha_init: float = 1.0,
        min_log_alpha: float = -5.0,
        max_log_alpha: float = 10.0,
        warmup_steps: int = 100_000,
        clip_actor_noise: bool = True,
        **kwargs: Any,
    ) -> None:
        if mmd_kernel not in MMD_KERNELS:
            raise ValueError(f"mmd_kernel must be one of {MMD_KERNELS}, got {mmd_kernel!r}")
        if mmd_sigma <= 0:
            raise ValueError(f"mmd_sigma must be > 0, got {mmd_sigma}")
        if isinstance(num_mmd_samples, bool) or not isinstance(num_mmd_samples, int):
            raise ValueError(f"num_mmd_samples must be an int >= 1, got {num_mmd_samples!r}")
        if num_mmd_samples < 1:
            raise ValueError(f"num_mmd_samples must be an int >= 1, got {num_mmd_samples!r}")
        if alpha_init <= 0:
            raise ValueError(f"alpha_init must be > 0, got {alpha_init}")
        if min_log_alpha > max_log_alpha:
            raise ValueError(
                f"min_log_alpha ({min_log_alpha}) is above max_log_alpha ({max_log_alpha})"
            )
        if warmup_steps < 0:
            raise ValueError(f"warmup_steps must be >= 0, got {warmup_steps}")
        super().__init__(actor_network, qvalue_network, behavior_network, **kwargs)
        if behavior_network.decoder_squash != "tanh":
            raise OfflineLossError(
                "BEARLoss compares the actor's and the behaviour model's actions before "
                "their tanh: behavior_network needs decoder_squash='tanh', got "
                f"{behavior_network.decoder_squash!r}"
            )
        self.num_mmd_samples = int(num_mmd_samples)
        self.mmd_kernel = mmd_kernel
        self.mmd_sigma = float(mmd_sigma)
        self.mmd_threshold = float(mmd_threshold)
        self.min_log_alpha = float(min_log_alpha)
        self.max_log_alpha = float(max_log_alpha)
        self.warmup_steps = int(warmup_steps)
        self.clip_actor_noise = bool(clip_actor_noise)
        device = self.action_low.device
        log_alpha = math.log(alpha_init)
        log_alpha = min(max(log_alpha, self.min_log_alpha), self.max_log_alpha)
        self.register_parameter("log_alpha", nn.Parameter(torch.tensor(log_alpha, device=device)))
        self.register_buffer("num_updates", torch.zeros((), dtype=torch.long, device=device))
        self._checked_actor = False

    # ------------------------------------------------------------------ helpers
    @property
    def _alpha(self) -> Tensor:
        """``exp(log_alpha)``, with ``log_alpha`` first clamped in place to its bounds."""
        with torch.no_grad():
            self.log_alpha.clamp_(self.min_log_alpha, self.max_log_alpha)
        return self.log_alpha.exp()

    def noise(self, shape, like: Tensor) -> Tensor:
        """The actor's standard-normal draws (every random number of the actor's samples)."""
        return torch.randn(tuple(shape), dtype=like.dtype, device=like.device)

    def _policy_samples(
        self,
        tensordict: TensorDictBase,
        num_samples: int,
        *,
        target: bool = False,
        noise_clip: float | None = None,
    ) -> tuple[Tensor, Tensor]:
        """``(action, pre_tanh)``, ``[num_samples, *batch, A]``, drawn from the (target)
        actor at the states of ``tensordict`` by reparameterisation."""
        params = getattr(self, "target_actor_network_params" if target else "actor_network_params")
        dist = actor_distribution(self.actor_network, params, tensordict)
        if not self._checked_actor:
            self._check_actor(dist)
        loc, scale = dist.loc, dist.scale
        eps = self.noise((num_samples, *loc.shape), loc)
        if noise_clip is not None:
            eps = eps.clamp(-noise_clip, noise_clip)
        pre_tanh = loc + scale * eps
        low, high = dist.low.to(loc), dist.high.to(loc)
        return from_unit_interval(pre_tanh.tanh(), low, high), pre_tanh

    def _check_actor(self, dist) -> None:
        if not isinstance(dist, TanhNormal):
            raise OfflineLossError(
                "BEARLoss needs an actor_network whose distribution is a TanhNormal "
                f"(torchrl.modules.TanhNormal), got {type(dist).__name__}"
            )
        low, high = self.action_low, self.action_high
        dlow = torch.as_tensor(dist.low).to(low).expand_as(low)
        dhigh = torch.as_tensor(dist.high).to(high).expand_as(high)
        if dist.loc.shape[-1] != low.shape[-1]:
            raise OfflineLossError(
                f"actor_network's distribution has {dist.loc.shape[-1]} action dims but the "
                f"action spec has {low.shape[-1]}"
            )
        if not (torch.allclose(dlow, low) and torch.allclose(dhigh, high)):
            raise OfflineLossError(
                f"actor_network's TanhNormal maps into [{dlow.tolist()}, {dhigh.tolist()}] "
                f"but the action spec's box is [{low.tolist()}, {high.tolist()}]: build the "
                "actor with distribution_kwargs={'low': spec.space.low, 'high': spec.space.high}"
            )
        self._checked_actor = True

    def _next_candidates(self, tensordict: TensorDictBase) -> Tensor:
        action, _ = self._policy_samples(
            tensordict.get("next"), self.num_target_samples, target=self.delay_actor
        )
        return action

    def _candidate_actions(self, tensordict: TensorDictBase, num_samples: int) -> Tensor:
        action, _ = self._policy_samples(tensordict, num_samples)
        return action

    # ------------------------------------------------------------------ losses
    def actor_loss(self, tensordict: TensorDictBase) -> tuple[Tensor, dict[str, Tensor]]:
        """The actor's loss ``-min_j mean_i Q_j(s, a_i) + alpha MMD`` (``alpha MMD`` alone
        during the warm-up); counts one update in ``num_updates``.

        Args:
            tensordict (TensorDictBase): a batch holding :attr:`in_keys`.

        Returns:
            ``(loss_actor, metadata)`` with the detached per-sample ``"mmd"`` (what
            :meth:`alpha_loss` takes), ``"state_action_value_actor"`` and ``"warmup"``.
        """
        weights = self._maybe_get_priority_weight(tensordict)
        action, pre_tanh = self._policy_samples(
            tensordict, self.num_mmd_samples, noise_clip=0.5 if self.clip_actor_noise else None
        )
        self._check_action(action[0], tensordict.get(self.tensor_keys.action), verb="samples")
        vae = self.behavior_network
        with torch.no_grad():
            _, behavior_pre_tanh = vae.sample(vae.observation(tensordict), self.num_mmd_samples)
        distance = mmd(behavior_pre_tanh, pre_tanh, kernel=self.mmd_kernel, sigma=self.mmd_sigma)
        q = self._critics(self._cache_q_detached, self._q_inputs(tensordict, action, nxt=False))
        value = q.mean(1).min(0).values  # [*batch]
        penalty = self._alpha.detach() * distance
        with torch.no_grad():
            warmup = self.num_updates < self.warmup_steps
            self.num_updates += 1
        loss = torch.where(warmup, penalty, penalty - value)
        loss = self._reduce_loss(loss, tensordict=tensordict, weights=weights)
        metadata = {
            "mmd": distance.detach(),
            "state_action_value_actor": self._diagnostic(value),
            "warmup": warmup,
        }
        return loss, metadata

    def alpha_loss(
        self, actor_metadata: dict[str, Tensor], mask_tensordict: TensorDictBase | None = None
    ) -> tuple[Tensor, dict[str, Tensor]]:
        """The Lagrange multiplier's loss ``-alpha (MMD - mmd_threshold)`` (dual ascent:
        ``alpha`` grows while the MMD is above the threshold).

        Args:
            actor_metadata (dict): the metadata of :meth:`actor_loss`.
            mask_tensordict (TensorDictBase, optional): the batch, for its masks and
                priority weights.

        Returns:
            ``(loss_alpha, metadata)`` with the detached ``"alpha"``.
        """
        weights = None
        if mask_tensordict is not None:
            weights = self._maybe_get_priority_weight(mask_tensordict)
        alpha = self._alpha
        loss = -alpha * (actor_metadata["mmd"] - self.mmd_threshold)
        loss = self._reduce_loss(loss, tensordict=mask_tensordict, weights=weights)
        return loss, {"alpha": alpha.detach()}

    @dispatch
    def forward(self, tensordict: TensorDictBase) -> TensorDictBase:
        """Computes the VAE, critic, actor and Lagrange-multiplier losses on one batch.

        Writes the per-sample TD error (max over critics) to the ``priority`` key of
        ``tensordict`` and returns ``loss_behavior``, ``loss_qvalue``, ``loss_actor`` and
        ``loss_alpha`` with detached diagnostics (``alpha``, ``mmd``, ``warmup``, ...).
        """
        if self.check_inputs:
            check_batch(tensordict, self.in_keys, finite=False)
        loss_behavior, behavior_metadata = self.behavior_loss(tensordict)
        loss_qvalue, metadata = self.qvalue_loss(tensordict)
        loss_actor, actor_metadata = self.actor_loss(tensordict)
        loss_alpha, alpha_metadata = self.alpha_loss(actor_metadata, tensordict)
        losses = {
            "loss_actor": loss_actor,
            "loss_qvalue": loss_qvalue,
            "loss_behavior": loss_behavior,
            "loss_alpha": loss_alpha,
        }
        actor_metadata = {**actor_metadata, "mmd": self._diagnostic(actor_metadata["mmd"])}
        metadata = {**behavior_metadata, **actor_metadata, **alpha_metadata, **metadata}
        return self._pack(tensordict, losses, metadata, "_num_calls")


# ------------------------------------------------------------------------- declaration
#: BEAR as :func:`~torchrl_offline.trainers.algorithms.build_algorithm` builds it: the
#: authors' networks (400 x 300 ``TanhNormal`` actor and twin critics, 750 x 750 VAE) and
#: optimizers (Adam at its default 1e-3 for the networks and the Lagrange multiplier),
#: acting with :meth:`BEARLoss.make_policy` (the best of 10 actor samples under the first
#: critic); presets: :data:`BEAR_PRESETS`. The warm-up (``warmup_steps``, 100,000) is
#: counted in actor updates: a run shorter than that trains the actor by the MMD term
#: alone.
BEAR_ALGORITHM = AlgorithmDeclaration(
    name="bear",
    loss_class=BEARLoss,
    networks=lambda nets, hp: behavior_model_networks(nets, hp, nets.tanh_normal_actor()),
    optimizer=(
        *BEHAVIOR_MODEL_OPTIMIZER,
        ParamGroup("alpha", "alpha_lr", lambda loss: [loss.log_alpha]),
    ),
    loss_terms=("loss_actor", "loss_qvalue", "loss_behavior", "loss_alpha"),
    defaults={**BEHAVIOR_MODEL_DEFAULTS, "alpha_lr": 1e-3},
    presets=BEAR_PRESETS,
    action_spec_argument="action_spec",
    policy=lambda loss, networks: loss.make_policy(),
)
