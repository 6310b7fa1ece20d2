"""Throughput cases for BEAR: ours and a plain-torch update.

TorchRL has no BEAR loss, so there is no ``bear/torchrl`` case. Each case does one full
update after the warm-up on a fixed random batch: the VAE's reconstruction + 0.5 KL, the
critics' soft clipped double-Q target maximised over 10 target-actor samples per next
state, the actor's ``-min_j mean_i Q_j + alpha MMD`` over 5 actor and 5 VAE samples per
state (Laplacian kernel on the pre-tanh actions), the Lagrange multiplier's
``-alpha (MMD - 0.05)``, one backward of the summed losses, an Adam step (``_nets.adam``,
the same for both) and a soft target update. Both use the same networks:
``hidden x hidden`` ReLU MLPs for the TanhNormal actor (scale ``softplus(x +
softplus^-1(1))``, tensordict's ``NormalParamExtractor``), the twin critics and the VAE's
encoder and decoder.
"""

from __future__ import annotations

import copy
import math
import pathlib
import sys
from collections.abc import Callable

import torch
from tensordict import TensorDict
from torch import nn

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))
import _nets

from torchrl_offline.objectives.bear import BEARLoss
from torchrl_offline.objectives.networks import NetworkFactory

LR = 1e-3
TAU = 0.005
N_TARGET = 10
N_MMD = 5
SIGMA = 20.0
LMBDA = 0.75
THRESHOLD = 0.05


def _ours(obs_dim: int, act_dim: int, hidden: int, data: TensorDict) -> Callable[[], None]:
    nets = NetworkFactory(obs_dim, _nets.action_spec(act_dim), (hidden, hidden))
    loss = BEARLoss(
        nets.tanh_normal_actor(),
        nets.qvalue(),
        nets.behavior_vae(),
        num_target_samples=N_TARGET,
        num_mmd_samples=N_MMD,
        warmup_steps=0,
    )
    loss.make_value_estimator(gamma=0.99)
    optim = _nets.adam(loss.parameters(), lr=LR)
    return _nets.loss_update(loss, [optim], _nets.ours_soft_update(loss, TAU), data)


def _plain_torch(obs_dim: int, act_dim: int, hidden: int, data: TensorDict):
    """A minimal hand-written BEAR update with stacked (vectorized) twin critics."""
    latent = 2 * act_dim
    critic = _nets.stacked_mlp(2, [obs_dim + act_dim, hidden, hidden, 1])
    critic_target = [p.detach().clone() for p in critic]
    actor = _nets.plain_mlp(obs_dim, 2 * act_dim, hidden)
    actor_target = copy.deepcopy(actor).requires_grad_(False)
    encoder = _nets.plain_mlp(obs_dim + act_dim, 2 * latent, hidden)
    decoder = _nets.plain_mlp(obs_dim + latent, act_dim, hidden)
    log_alpha = nn.Parameter(torch.zeros(()))
    modules = nn.ModuleList([actor, encoder, decoder])
    optim = _nets.adam([*critic, *modules.parameters(), log_alpha], lr=LR)
    sources = [*critic, *actor.parameters()]
    targets = [*critic_target, *actor_target.parameters()]
    bias = math.log(math.e - 1.0)

    def sample(net, s, n, clip):
        loc, scale = net(s).chunk(2, -1)
        scale = nn.functional.softplus(scale + bias).clamp_min(1e-4)
        eps = torch.randn(n, *loc.shape)
        if clip:
            eps = eps.clamp(-0.5, 0.5)
        return loc + scale * eps  # pre-tanh, [n, B, A]

    def mean_kernel(a, b):
        dist = (a.unsqueeze(1) - b.unsqueeze(0)).abs().sum(-1)
        return torch.exp(dist / (-2.0 * SIGMA)).mean((0, 1))

    def update() -> None:
        obs, act = data["observation"], data["action"]
        next_obs, reward = data["next", "observation"], data["next", "reward"].squeeze(-1)
        not_done = (~data["next", "terminated"]).float().squeeze(-1)
        batch = obs.shape[0]
        vae_loss = _nets.plain_vae_loss(encoder, decoder, obs, act)
        with torch.no_grad():
            a2 = torch.tanh(sample(actor_target, next_obs, N_TARGET, False))
            s2 = next_obs.expand(N_TARGET, *next_obs.shape)
            q_t = _nets.stacked_apply(critic_target, torch.cat([s2, a2], -1).flatten(0, 1))
            soft = LMBDA * q_t.min(0).values + (1 - LMBDA) * q_t.max(0).values
            y = reward + 0.99 * not_done * soft.view(N_TARGET, batch).max(0).values
            z = torch.randn(N_MMD, batch, latent).clamp(-0.5, 0.5)
            s_n = obs.expand(N_MMD, *obs.shape)
            raw_beta = decoder(torch.cat([s_n, z], -1))
        critic_loss = (
            ((_nets.stacked_apply(critic, torch.cat([obs, act], -1)) - y) ** 2).mean(1).sum()
        )
        raw_pi = sample(actor, obs, N_MMD, True)
        mmd = (
            mean_kernel(raw_beta, raw_beta)
            + mean_kernel(raw_pi, raw_pi)
            - 2.0 * mean_kernel(raw_beta, raw_pi)
            + 1e-6
        ).sqrt()
        q = _nets.stacked_apply(
            [p.detach() for p in critic], torch.cat([s_n, torch.tanh(raw_pi)], -1).flatten(0, 1)
        )
        value = q.view(2, N_MMD, batch).mean(1).min(0).values
        alpha = log_alpha.exp()
        actor_loss = (alpha.detach() * mmd - value).mean()
        alpha_loss = -(alpha * (mmd.detach() - THRESHOLD)).mean()
        (vae_loss + critic_loss + actor_loss + alpha_loss).backward()
        optim.step()
        optim.zero_grad(set_to_none=True)
        with torch.no_grad():
            log_alpha.clamp_(-5.0, 10.0)
            torch._foreach_lerp_(targets, sources, TAU)

    return update


def cases(
    obs_dim: int, act_dim: int, batch_size: int, hidden: int
) -> dict[str, Callable[[], None]]:
    """One-update closures for ``bear/ours`` and ``bear/plain_torch``."""
    return _nets.ours_and_plain("bear", _ours, _plain_torch, obs_dim, act_dim, batch_size, hidden)
