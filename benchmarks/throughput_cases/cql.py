"""Throughput cases for continuous CQL: ours, TorchRL's ``CQLLoss``, plain torch.

Each case does one full update on a fixed random batch: the loss forward, one
backward of the summed losses, an Adam step on the actor, critics and temperature,
and a soft target update. All three use the same networks (``hidden x hidden``
ReLU MLPs from ``_nets``, twin critics, a TanhNormal actor), 10 sampled actions per proposal,
deterministic backup and a fixed CQL weight.
"""

from __future__ import annotations

import math
import pathlib
import sys
from collections.abc import Callable

import torch
from tensordict import TensorDict
from torch import nn
from torchrl.objectives import CQLLoss as TorchRLCQLLoss
from torchrl.objectives import SoftUpdate

from torchrl_offline.objectives.cql import CQLLoss

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))
import _nets

NUM_RANDOM = 10
LR = 3e-4
TAU = 0.005


def _adam(params) -> torch.optim.Adam:
    return _nets.adam(params, lr=LR)


def _loss_update(loss_module, data: TensorDict, *, ours: bool) -> Callable[[], None]:
    loss_module.make_value_estimator(gamma=0.99)
    updater = _nets.ours_soft_update(loss_module, TAU) if ours else SoftUpdate(loss_module, tau=TAU)
    optim = _adam(loss_module.parameters())
    keys = ["loss_actor", "loss_qvalue", "loss_cql", "loss_alpha"]

    def update() -> None:
        out = loss_module(data)
        total = sum(out[k] for k in keys)
        total.backward()
        optim.step()
        optim.zero_grad(set_to_none=True)
        updater.step()

    return update


def _plain_torch(obs_dim: int, act_dim: int, batch_size: int, hidden: int, data: TensorDict):
    """A minimal hand-written CQL(H) update with stacked (vectorized) twin critics."""
    n_critics = 2
    critic = _nets.stacked_mlp(n_critics, [obs_dim + act_dim, hidden, hidden, 1])
    target = [p.detach().clone() for p in critic]
    actor = _nets.plain_mlp(obs_dim, 2 * act_dim, hidden)
    log_alpha = nn.Parameter(torch.zeros(()))
    optim = _adam([*critic, *actor.parameters(), log_alpha])
    n = NUM_RANDOM
    log_uniform = -act_dim * math.log(2.0)

    def q(params, o, a):
        x = torch.cat([o.expand(*a.shape[:-1], o.shape[-1]), a], -1)
        out = _nets.stacked_apply(params, x.reshape(-1, x.shape[-1]))
        return out.reshape(n_critics, *x.shape[:-1])

    def policy(o, shape=()):
        return _nets.plain_tanh_normal(actor, o, shape)

    def update() -> None:
        obs, act = data["observation"], data["action"]
        next_obs, reward = data["next", "observation"], data["next", "reward"].squeeze(-1)
        not_done = (~data["next", "terminated"]).float().squeeze(-1)
        alpha = log_alpha.detach().exp()
        both = torch.cat([obs, next_obs])
        a_both, logp_both = policy(both)
        a_pi, logp_pi = a_both[:batch_size], logp_both[:batch_size]
        with torch.no_grad():
            a_s, logp_s = policy(both, (n,))
            next_v = q(target, next_obs, a_both[batch_size:]).min(0).values
            y = reward + 0.99 * not_done * next_v
        actor_loss = (
            alpha * logp_pi - q([p.detach() for p in critic], obs, a_pi).min(0).values
        ).mean()
        alpha_loss = -(log_alpha * (logp_pi.detach() - act_dim)).mean()
        rand = torch.rand(n, batch_size, act_dim) * 2 - 1
        actions = torch.cat([act[None], rand, a_s[:, :batch_size], a_s[:, batch_size:]])
        q_all = q(list(critic), obs, actions)
        log_q = torch.cat(
            [
                torch.full((n, batch_size), log_uniform),
                logp_s[:, :batch_size],
                logp_s[:, batch_size:],
            ]
        )
        gap = torch.logsumexp(q_all[:, 1:] - log_q, 1) - q_all[:, 0]
        critic_loss = ((q_all[:, 0] - y) ** 2).mean(1).sum() + 10.0 * gap.mean(1).sum()
        (actor_loss + alpha_loss + critic_loss).backward()
        optim.step()
        optim.zero_grad(set_to_none=True)
        with torch.no_grad():
            torch._foreach_lerp_(target, list(critic), TAU)

    return update


def cases(
    obs_dim: int, act_dim: int, batch_size: int, hidden: int
) -> dict[str, Callable[[], None]]:
    """One-update closures for ``cql/ours``, ``cql/torchrl`` and ``cql/plain_torch``."""
    data = _nets.random_batch(obs_dim, act_dim, batch_size)
    common = dict(
        loss_function="l2",
        min_q_weight=10.0,
        num_random=NUM_RANDOM,
        deterministic_backup=True,
        max_q_backup=False,
        with_lagrange=False,
    )
    nets = []
    for _ in range(2):
        torch.manual_seed(0)
        nets.append(
            (
                _nets.tanh_normal_actor(obs_dim, act_dim, hidden),
                _nets.qvalue(obs_dim, act_dim, hidden),
            )
        )
    ours = CQLLoss(*nets[0], **common)
    theirs = TorchRLCQLLoss(*nets[1], **common)
    torch.manual_seed(0)
    return {
        "cql/ours": _loss_update(ours, data.clone(), ours=True),
        "cql/torchrl": _loss_update(theirs, data.clone(), ours=False),
        "cql/plain_torch": _plain_torch(obs_dim, act_dim, batch_size, hidden, data.clone()),
    }


if __name__ == "__main__":
    import time

    torch.set_num_threads(2)
    fns = cases(17, 6, 256, 256)
    for fn in fns.values():
        for _ in range(3):
            fn()
    for _ in range(3):
        for name, fn in fns.items():
            start = time.perf_counter()
            for _ in range(10):
                fn()
            print(f"{name:18s} {10 / (time.perf_counter() - start):7.1f} updates/s")
