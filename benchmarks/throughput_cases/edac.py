"""Throughput cases for EDAC and SAC-N: ours, plain torch and (SAC-N) TorchRL's ``SACLoss``.

Each case does one full update on a fixed random batch: the loss forward, one backward
of the summed losses, an Adam step on the actor, the critics and the temperature, and a
soft target update. All use the same networks (``hidden x hidden`` ReLU MLPs from
``_nets``, a TanhNormal actor) and :data:`NUM_CRITICS` critics. ``edac`` has the ensemble
diversity term (``eta=1``, a second-order gradient through every critic); ``sac_n`` is
the same update without it, which is what TorchRL's ``SACLoss`` with ``num_qvalue_nets``
critics computes (the minimum over all critics in the target and the actor's objective),
so it is the nearest TorchRL baseline. d3rlpy has neither algorithm.
"""

from __future__ import annotations

import pathlib
import sys
from collections.abc import Callable

import torch
from tensordict import TensorDict
from torch import nn
from torchrl.objectives import SACLoss, SoftUpdate

from torchrl_offline.objectives.edac import EDACLoss

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))
import _nets

NUM_CRITICS = 10
LR = 3e-4
TAU = 0.005


def _loss_case(loss_module, data: TensorDict, *, ours: bool) -> Callable[[], None]:
    loss_module.make_value_estimator(gamma=0.99)
    updater = _nets.ours_soft_update(loss_module, TAU) if ours else SoftUpdate(loss_module, tau=TAU)
    return _nets.loss_update(
        loss_module, [_nets.adam(loss_module.parameters(), lr=LR)], updater, data
    )


def _plain_torch(obs_dim: int, act_dim: int, hidden: int, data: TensorDict, eta: float):
    """A minimal hand-written EDAC (SAC-N for ``eta=0``) update with stacked critics; the
    diversity term as the paper writes it: every pair's inner product of normalised
    action gradients (a batched ``[N, N]`` Gram matrix per sample)."""
    n = NUM_CRITICS
    critic = _nets.stacked_mlp(n, [obs_dim + act_dim, hidden, hidden, 1])
    target = [p.detach().clone() for p in critic]
    actor = _nets.plain_mlp(obs_dim, 2 * act_dim, hidden)
    log_alpha = nn.Parameter(torch.zeros(()))
    optim = _nets.adam([*critic, *actor.parameters(), log_alpha], lr=LR)
    off_diagonal = 1.0 - torch.eye(n)

    def q(params, o, a):  # a: [B, A] shared, or [N, B, A] one copy per critic
        x = torch.cat([o.expand(*a.shape[:-1], o.shape[-1]), a], -1)
        return _nets.stacked_apply(params, x)

    def update() -> None:
        obs, act = data["observation"], data["action"]
        next_obs, reward = data["next", "observation"], data["next", "reward"].squeeze(-1)
        not_done = (~data["next", "terminated"]).float().squeeze(-1)
        alpha = log_alpha.detach().exp()
        a_pi, logp_pi = _nets.plain_tanh_normal(actor, obs)
        with torch.no_grad():
            a_next, logp_next = _nets.plain_tanh_normal(actor, next_obs)
            y = reward + 0.99 * not_done * (
                q(target, next_obs, a_next).min(0).values - alpha * logp_next
            )
        frozen = [p.detach() for p in critic]
        actor_loss = (alpha * logp_pi - q(frozen, obs, a_pi).min(0).values).mean()
        alpha_loss = -(log_alpha * (logp_pi.detach() - act_dim)).mean()
        copies = act.expand(n, *act.shape).clone().requires_grad_(True)
        q_data = q(list(critic), obs, copies)
        critic_loss = ((q_data - y) ** 2).mean(1).sum()
        if eta > 0:
            (grads,) = torch.autograd.grad(q_data.sum(), copies, create_graph=True)
            unit = (grads / (grads.norm(dim=-1, keepdim=True) + 1e-10)).transpose(0, 1)
            gram = unit @ unit.transpose(1, 2)  # [B, N, N]
            critic_loss = critic_loss + eta * (gram * off_diagonal).sum((1, 2)).mean() / (n - 1)
        (actor_loss + alpha_loss + critic_loss).backward()
        optim.step()
        optim.zero_grad(set_to_none=True)
        with torch.no_grad():
            torch._foreach_lerp_(target, list(critic), TAU)

    return update


def cases(
    obs_dim: int, act_dim: int, batch_size: int, hidden: int
) -> dict[str, Callable[[], None]]:
    """``edac/ours``, ``edac/plain_torch``, ``sac_n/ours``, ``sac_n/torchrl`` and
    ``sac_n/plain_torch``."""
    data = _nets.random_batch(obs_dim, act_dim, batch_size)
    out = {}
    for name, eta in (("edac", 1.0), ("sac_n", 0.0)):
        torch.manual_seed(0)
        actor, critic = (
            _nets.tanh_normal_actor(obs_dim, act_dim, hidden),
            _nets.qvalue(obs_dim, act_dim, hidden),
        )
        ours = EDACLoss(actor, critic, num_qvalue_nets=NUM_CRITICS, eta=eta)
        out[f"{name}/ours"] = _loss_case(ours, data.clone(), ours=True)
        if eta == 0:
            torch.manual_seed(0)
            theirs = SACLoss(
                _nets.tanh_normal_actor(obs_dim, act_dim, hidden),
                _nets.qvalue(obs_dim, act_dim, hidden),
                num_qvalue_nets=NUM_CRITICS,
                loss_function="l2",
            )
            out[f"{name}/torchrl"] = _loss_case(theirs, data.clone(), ours=False)
        torch.manual_seed(0)
        out[f"{name}/plain_torch"] = _plain_torch(obs_dim, act_dim, hidden, data.clone(), eta)
    return out
