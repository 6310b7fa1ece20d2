"""Throughput cases for BCQ: ours and a plain-torch update.

TorchRL has no BCQ loss, so there is no ``bcq/torchrl`` case. Each case does one full
update on a fixed random batch: the VAE's reconstruction + 0.5 KL, the critics' soft
clipped double-Q target maximised over 10 perturbed VAE samples per next state (target
perturbation model and critics), the perturbation model's ``-Q1`` at one decoded action
per state, one backward of the summed losses, an Adam step (``_nets.adam``, the same for
both) and a soft target update. Both use the same networks: ``hidden x hidden`` ReLU MLPs
for the perturbation model, the twin critics and the VAE's encoder and decoder (d3rlpy's
default sizes; the authors' code has 400 x 300 and 750 x 750).
"""

from __future__ import annotations

import copy
import pathlib
import sys
from collections.abc import Callable

import torch
from tensordict import TensorDict
from torch import nn

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))
import _nets

from torchrl_offline.objectives.bcq import BCQLoss, make_perturbation_actor
from torchrl_offline.objectives.networks import NetworkFactory

LR = 1e-3
TAU = 0.005
N_TARGET = 10
PHI = 0.05
LMBDA = 0.75


def _ours(obs_dim: int, act_dim: int, hidden: int, data: TensorDict) -> Callable[[], None]:
    nets = NetworkFactory(obs_dim, _nets.action_spec(act_dim), (hidden, hidden))
    actor = make_perturbation_actor(obs_dim, act_dim, num_cells=(hidden, hidden))
    loss = BCQLoss(actor, nets.qvalue(), nets.behavior_vae(), num_target_samples=N_TARGET)
    loss.make_value_estimator(gamma=0.99)
    optim = _nets.adam(loss.parameters(), lr=LR)
    return _nets.loss_update(loss, [optim], _nets.ours_soft_update(loss, TAU), data)


def _plain_torch(obs_dim: int, act_dim: int, hidden: int, data: TensorDict):
    """A minimal hand-written BCQ update with stacked (vectorized) twin critics."""
    latent = 2 * act_dim
    critic = _nets.stacked_mlp(2, [obs_dim + act_dim, hidden, hidden, 1])
    critic_target = [p.detach().clone() for p in critic]
    actor = _nets.plain_mlp(obs_dim + act_dim, act_dim, hidden)
    actor_target = copy.deepcopy(actor).requires_grad_(False)
    encoder = _nets.plain_mlp(obs_dim + act_dim, 2 * latent, hidden)
    decoder = _nets.plain_mlp(obs_dim + latent, act_dim, hidden)
    modules = nn.ModuleList([actor, encoder, decoder])
    optim = _nets.adam([*critic, *modules.parameters()], lr=LR)
    sources = [*critic, *actor.parameters()]
    targets = [*critic_target, *actor_target.parameters()]

    def decode(s, z):
        return torch.tanh(decoder(torch.cat([s, z], -1)))

    def perturb(net, s, a):
        return (a + PHI * torch.tanh(net(torch.cat([s, a], -1)))).clamp(-1.0, 1.0)

    def update() -> None:
        obs, act = data["observation"], data["action"]
        next_obs, reward = data["next", "observation"], data["next", "reward"].squeeze(-1)
        not_done = (~data["next", "terminated"]).float().squeeze(-1)
        batch = obs.shape[0]
        vae_loss = _nets.plain_vae_loss(encoder, decoder, obs, act)
        with torch.no_grad():
            s2 = next_obs.repeat(N_TARGET, 1)
            z2 = torch.randn(s2.shape[0], latent).clamp(-0.5, 0.5)
            a2 = perturb(actor_target, s2, decode(s2, z2))
            q_t = _nets.stacked_apply(critic_target, torch.cat([s2, a2], -1))
            soft = LMBDA * q_t.min(0).values + (1 - LMBDA) * q_t.max(0).values
            y = reward + 0.99 * not_done * soft.view(N_TARGET, batch).max(0).values
            decoded = decode(obs, torch.randn(batch, latent).clamp(-0.5, 0.5))
        critic_loss = (
            ((_nets.stacked_apply(critic, torch.cat([obs, act], -1)) - y) ** 2).mean(1).sum()
        )
        a_pi = perturb(actor, obs, decoded)
        q1 = _nets.stacked_apply([p[:1].detach() for p in critic], torch.cat([obs, a_pi], -1))
        actor_loss = -q1.mean()
        (vae_loss + critic_loss + actor_loss).backward()
        optim.step()
        optim.zero_grad(set_to_none=True)
        with torch.no_grad():
            torch._foreach_lerp_(targets, sources, TAU)

    return update


def cases(
    obs_dim: int, act_dim: int, batch_size: int, hidden: int
) -> dict[str, Callable[[], None]]:
    """One-update closures for ``bcq/ours`` and ``bcq/plain_torch``."""
    return _nets.ours_and_plain("bcq", _ours, _plain_torch, obs_dim, act_dim, batch_size, hidden)
