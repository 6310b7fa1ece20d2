r"""A conditional VAE of the behaviour policy, the generative model of BCQ and BEAR.

Both BCQ (Fujimoto, Meger & Precup, ICML 2019) and BEAR (Kumar, Fu, Tucker & Levine,
NeurIPS 2019) learn :math:`\pi_\beta(a \mid s)` from the logged ``(s, a)`` pairs with the
same conditional variational auto-encoder, written once here:

* encoder :math:`E(s, a) = (\mu, \log\sigma)`, with :math:`\log\sigma` clamped to
  ``[-4, 15]`` (the BCQ authors' code, for numerical stability);
* decoder :math:`D(s, z)`, squashed by ``tanh`` into the action box ``[low, high]`` of
  the action spec (both papers' code), or, with ``decoder_squash="clip"`` (d3rlpy's linear
  decoder), a linear output that the reconstruction regresses as it is and sampling clips
  into the box (d3rlpy's BCQ clips only after its perturbation); latent size
  ``2 * action_dim``;
* sampling decodes :math:`z \sim \mathcal{N}(0, I)` clipped to ``[-0.5, 0.5]``, which
  keeps the samples near the mode of the behaviour policy;
* loss :math:`\lVert D(s, \mu + \sigma \epsilon) - a \rVert^2 + \beta\,
  \mathrm{KL}(\mathcal{N}(\mu, \sigma^2) \,\Vert\, \mathcal{N}(0, I))`, :math:`\beta = 0.5`
  in both papers' code (``kl_weight`` of the losses).

:class:`BehaviorVAE` is a TorchRL module: calling it on a tensordict samples one action
per state from the model (it is a behaviour-cloning policy in its own right), and the
losses call :meth:`~BehaviorVAE.sample` and :func:`vae_loss` on tensors. Build one with
:func:`make_behavior_vae` or
:meth:`~torchrl_offline.objectives.networks.NetworkFactory.behavior_vae`.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from tensordict import TensorDictBase
from tensordict.nn import TensorDictModuleBase
from tensordict.utils import NestedKey
from torch import Tensor, nn
from torchrl.data.tensor_specs import TensorSpec
from torchrl.modules import MLP

from torchrl_offline.objectives._actions import action_bounds, from_unit_interval
from torchrl_offline.objectives._checks import OfflineLossError, check_output_dim

__all__ = ["DECODER_SQUASHES", "BehaviorVAE", "make_behavior_vae", "vae_loss"]

#: How :class:`BehaviorVAE`'s decoder output becomes an action in the box.
DECODER_SQUASHES = ("tanh", "clip")


def _out_features(module: nn.Module) -> int | None:
    linears = [m for m in module.modules() if type(m) is nn.Linear]
    return linears[-1].out_features if linears else None


class BehaviorVAE(TensorDictModuleBase):
    r"""Conditional VAE :math:`\pi_\beta(a \mid s)` of the logged actions (BCQ's and BEAR's).

    Args:
        encoder (nn.Module): maps ``cat(observation, action)`` to ``2 * latent_dim``
            values, the latent mean and log-std.
        decoder (nn.Module): maps ``cat(observation, z)`` to ``action_dim`` values in
            units of the action box (``-1`` and ``1`` its edges), squashed into it as
            ``decoder_squash`` says.
        action_spec (TensorSpec): the bounded action spec (its ``low``/``high``).

    Keyword Args:
        latent_dim (int, optional): the latent size. Defaults to ``2 * action_dim``.
        in_keys (sequence of NestedKey, optional): the observation entries, concatenated
            in order. Defaults to ``["observation"]``.
        action_key (NestedKey, optional): where :meth:`forward` writes the sampled
            action. Defaults to ``"action"``.
        log_std_bounds (tuple of float, optional): clamp of the encoder's log-std.
            Defaults to ``(-4.0, 15.0)``.
        latent_clip (float, optional): sampling clips :math:`z \sim \mathcal{N}(0, I)` to
            ``[-latent_clip, latent_clip]``. Defaults to ``0.5``.
        decoder_squash (str, optional): how the decoder's output becomes an action in
            the box: ``"tanh"`` (both papers' code) or ``"clip"`` (a clamp of the linear
            output, d3rlpy's BCQ). ``tanh`` reaches the box's edges only as its input
            grows without bound, so logged actions clipped at the bounds are
            reconstructed with vanishing gradients; with ``"clip"``, :func:`vae_loss`
            regresses the unclipped output and reaches them. Defaults to ``"tanh"``.

    Examples:
        >>> import torch
        >>> from tensordict import TensorDict
        >>> from torchrl.data import Bounded
        >>> from torchrl_offline.objectives.behavior_vae import make_behavior_vae, vae_loss
        >>> vae = make_behavior_vae(3, Bounded(-2.0, 2.0, (1,)), num_cells=[16, 16])
        >>> td = vae(TensorDict({"observation": torch.randn(5, 3)}, [5]))
        >>> td["action"].shape, bool((td["action"].abs() <= 2).all())
        (torch.Size([5, 1]), True)
        >>> action, pre_tanh = vae.sample(torch.randn(5, 3), num_samples=4)
        >>> action.shape, pre_tanh.shape
        (torch.Size([4, 5, 1]), torch.Size([4, 5, 1]))
        >>> recon, kl = vae_loss(vae, torch.randn(5, 3), td["action"])
        >>> recon.shape, kl.shape
        (torch.Size([5]), torch.Size([5]))
    """

    def __init__(
        self,
        encoder: nn.Module,
        decoder: nn.Module,
        action_spec: TensorSpec,
        *,
        latent_dim: int | None = None,
        in_keys: Sequence[NestedKey] = ("observation",),
        action_key: NestedKey = "action",
        log_std_bounds: tuple[float, float] = (-4.0, 15.0),
        latent_clip: float = 0.5,
        decoder_squash: str = "tanh",
    ) -> None:
        super().__init__()
        if decoder_squash not in DECODER_SQUASHES:
            raise ValueError(
                f"decoder_squash must be one of {DECODER_SQUASHES}, got {decoder_squash!r}"
            )
        low, high = action_bounds(action_spec, action_key=action_key)
        if low.ndim != 1:
            raise OfflineLossError(
                f"BehaviorVAE needs a 1-d action spec, got shape {tuple(low.shape)}"
            )
        action_dim = int(low.shape[-1])
        self.latent_dim = 2 * action_dim if latent_dim is None else int(latent_dim)
        got = _out_features(decoder)
        if got is not None:
            check_output_dim("BehaviorVAE's decoder", got, action_dim)
        got = _out_features(encoder)
        if got is not None and got != 2 * self.latent_dim:
            raise OfflineLossError(
                f"BehaviorVAE's encoder produces {got} values but a latent size of "
                f"{self.latent_dim} needs {2 * self.latent_dim} (mean and log-std)"
            )
        if latent_clip <= 0:
            raise ValueError(f"latent_clip must be > 0, got {latent_clip}")
        self.encoder = encoder
        self.decoder = decoder
        self.spec = action_spec
        self.in_keys = list(in_keys)
        self.out_keys = [action_key]
        self.log_std_bounds = (float(log_std_bounds[0]), float(log_std_bounds[1]))
        self.latent_clip = float(latent_clip)
        self.decoder_squash = decoder_squash
        self.register_buffer("action_low", low.to(torch.get_default_dtype()))
        self.register_buffer("action_high", high.to(torch.get_default_dtype()))

    # ------------------------------------------------------------------ tensors
    def observation(self, tensordict: TensorDictBase) -> Tensor:
        """The model's observation input: the ``in_keys`` entries, concatenated."""
        values = [tensordict.get(key) for key in self.in_keys]
        return values[0] if len(values) == 1 else torch.cat(values, -1)

    def noise(self, shape: Sequence[int], like: Tensor) -> Tensor:
        """Standard-normal draws: every random number the model uses comes from here."""
        return torch.randn(tuple(shape), dtype=like.dtype, device=like.device)

    def encode(self, observation: Tensor, action: Tensor) -> tuple[Tensor, Tensor]:
        """The latent mean and (clamped) log-std of ``(s, a)``."""
        mean, log_std = self.encoder(torch.cat([observation, action], -1)).chunk(2, -1)
        return mean, log_std.clamp(*self.log_std_bounds)

    def decode(self, observation: Tensor, latent: Tensor) -> tuple[Tensor, Tensor]:
        """``(action, raw)``: the decoded action in the box and the decoder's output
        before the squash (before the ``tanh``, or unclipped with ``"clip"``);
        ``observation`` broadcasts against ``latent``'s leading dimensions."""
        if observation.ndim != latent.ndim or observation.shape[:-1] != latent.shape[:-1]:
            shape = torch.broadcast_shapes(observation.shape[:-1], latent.shape[:-1])
            observation = observation.expand(*shape, observation.shape[-1])
            latent = latent.expand(*shape, latent.shape[-1])
        raw = self.decoder(torch.cat([observation, latent], -1))
        unit = raw.tanh() if self.decoder_squash == "tanh" else raw.clamp(-1.0, 1.0)
        return from_unit_interval(unit, self.action_low, self.action_high), raw

    def sample(self, observation: Tensor, num_samples: int | None = None) -> tuple[Tensor, Tensor]:
        r"""Actions of the behaviour model at ``observation`` (``[*batch, obs]``), from
        :math:`z \sim \mathcal{N}(0, I)` clipped to ``[-latent_clip, latent_clip]``.

        Returns:
            ``(action, raw)`` as :meth:`decode` gives them, ``[*batch, action_dim]``, or
            ``[num_samples, *batch, action_dim]`` when ``num_samples`` is given.
        """
        lead = () if num_samples is None else (int(num_samples),)
        shape = (*lead, *observation.shape[:-1], self.latent_dim)
        latent = self.noise(shape, observation).clamp(-self.latent_clip, self.latent_clip)
        return self.decode(observation, latent)

    # ------------------------------------------------------------------ module
    def forward(self, tensordict: TensorDictBase) -> TensorDictBase:
        """Writes one action per state sampled from the behaviour model."""
        action, _ = self.sample(self.observation(tensordict))
        tensordict.set(self.out_keys[0], action)
        return tensordict


def vae_loss(vae: BehaviorVAE, observation: Tensor, action: Tensor) -> tuple[Tensor, Tensor]:
    r"""The two terms of the VAE's loss, per sample: ``(reconstruction, kl)``.

    ``reconstruction`` is the mean over action dimensions of :math:`(D(s, \mu + \sigma
    \epsilon) - a)^2` (with ``decoder_squash="clip"``, :math:`D` unclipped: a clipped
    output has no gradient outside the box) and ``kl`` the mean over latent dimensions of
    :math:`-\tfrac12 (1 + \log\sigma^2 - \mu^2 - \sigma^2)`; their batch means are the
    BCQ and BEAR authors' ``F.mse_loss(recon, action)`` and ``KL_loss``, and the loss they
    minimise is ``reconstruction + kl_weight * kl``.

    Args:
        vae (BehaviorVAE): the model.
        observation (Tensor): ``[*batch, obs]``, as :meth:`BehaviorVAE.observation` gives.
        action (Tensor): the logged actions, ``[*batch, action_dim]``.

    Raises:
        OfflineLossError: if the actions do not have the model's action size.
    """
    if action.shape[-1] != vae.action_low.shape[-1]:
        raise OfflineLossError(
            f"the behaviour model is built for {vae.action_low.shape[-1]} action dims but "
            f"the batch's actions have shape {tuple(action.shape)}"
        )
    mean, log_std = vae.encode(observation, action)
    std = log_std.exp()
    latent = mean + std * vae.noise(std.shape, std)
    recon, raw = vae.decode(observation, latent)
    if vae.decoder_squash == "clip":
        recon = from_unit_interval(raw, vae.action_low, vae.action_high)
    reconstruction = (recon - action).pow(2).mean(-1)
    kl = (-0.5 * (1.0 + 2.0 * log_std - mean.pow(2) - std.pow(2))).mean(-1)
    return reconstruction, kl


def make_behavior_vae(
    observation_dim: int,
    action_spec: TensorSpec,
    *,
    num_cells: Sequence[int] = (750, 750),
    latent_dim: int | None = None,
    in_key: NestedKey = "observation",
    activation_class: type[nn.Module] = nn.ReLU,
    decoder_squash: str = "tanh",
) -> BehaviorVAE:
    """A :class:`BehaviorVAE` with MLP encoder and decoder (ReLU, ``num_cells`` each: the
    BCQ and BEAR authors' 750 x 750 by default) and the decoder's ``decoder_squash``
    (``"tanh"`` or ``"clip"``, see :class:`BehaviorVAE`).

    Examples:
        >>> from torchrl.data import Bounded
        >>> from torchrl_offline.objectives.behavior_vae import make_behavior_vae
        >>> vae = make_behavior_vae(3, Bounded(-1.0, 1.0, (2,)), num_cells=[8])
        >>> vae.latent_dim, vae.in_keys, vae.out_keys
        (4, ['observation'], ['action'])
    """
    low, _ = action_bounds(action_spec)
    action_dim = int(low.shape[-1])
    latent = 2 * action_dim if latent_dim is None else int(latent_dim)

    def mlp(n_in: int, n_out: int) -> MLP:
        return MLP(
            in_features=n_in,
            out_features=n_out,
            num_cells=list(num_cells),
            activation_class=activation_class,
        )

    return BehaviorVAE(
        mlp(observation_dim + action_dim, 2 * latent),
        mlp(observation_dim + latent, action_dim),
        action_spec,
        latent_dim=latent,
        in_keys=[in_key],
        decoder_squash=decoder_squash,
    )
