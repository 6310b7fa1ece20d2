"""IQL update throughput: ours vs TorchRL's IQLLoss vs a minimal plain-torch update."""

from __future__ import annotations

import copy
import math
import pathlib
import sys
from collections.abc import Callable

import torch
from torch import nn

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))
import _nets


def _optimizers(loss):
    groups = (loss.actor_network_params, loss.qvalue_network_params, loss.value_network_params)
    return [_nets.adam(g.values(True, True)) for g in groups]


def _loss_case(loss_cls, obs_dim, act_dim, batch_size, hidden, ours) -> Callable[[], None]:
    from torchrl.objectives import SoftUpdate

    torch.manual_seed(0)
    loss = loss_cls(
        _nets.tanh_normal_actor(obs_dim, act_dim, hidden),
        _nets.qvalue(obs_dim, act_dim, hidden),
        _nets.value(obs_dim, hidden),
        expectile=0.7,
        temperature=3.0,
        loss_function="l2",
    )
    loss.make_value_estimator(gamma=0.99)
    updater = _nets.ours_soft_update(loss, 0.005) if ours else SoftUpdate(loss, tau=0.005)
    batch = _nets.random_batch(obs_dim, act_dim, batch_size)
    return _nets.loss_update(loss, _optimizers(loss), updater, batch)


def _plain_torch_case(obs_dim, act_dim, batch_size, hidden) -> Callable[[], None]:
    """The whole IQL update in plain torch: separate twin critics, tanh-Gaussian actor."""
    torch.manual_seed(0)

    def mlp(i, o):
        return nn.Sequential(
            nn.Linear(i, hidden),
            nn.ReLU(),
            nn.Linear(hidden, hidden),
            nn.ReLU(),
            nn.Linear(hidden, o),
        )

    actor, value = mlp(obs_dim, 2 * act_dim), mlp(obs_dim, 1)
    q1, q2 = mlp(obs_dim + act_dim, 1), mlp(obs_dim + act_dim, 1)
    q1_t, q2_t = copy.deepcopy(q1), copy.deepcopy(q2)
    for p in (*q1_t.parameters(), *q2_t.parameters()):
        p.requires_grad_(False)
    critic_params = [*q1.parameters(), *q2.parameters()]
    target_params = [*q1_t.parameters(), *q2_t.parameters()]
    optimizers = [
        _nets.adam(actor.parameters()),
        _nets.adam(critic_params),
        _nets.adam(value.parameters()),
    ]
    batch = _nets.random_batch(obs_dim, act_dim, batch_size)
    bias = math.log(math.e - 1.0)  # biased softplus: scale = softplus(x + bias) + 0.1 ~ 1 at 0

    def step() -> None:
        obs, act = batch["observation"], batch["action"]
        next_obs = batch["next", "observation"]
        reward = batch["next", "reward"].squeeze(-1)
        not_done = 1.0 - batch["next", "terminated"].float().squeeze(-1)
        act_c = act.clamp(-1 + 1e-4, 1 - 1e-4)
        pre_tanh = torch.atanh(act_c)
        log_det = torch.log1p(-act_c.square()).sum(-1)
        sa = torch.cat([obs, act], -1)
        with torch.no_grad():
            target_q = torch.min(q1_t(sa), q2_t(sa)).squeeze(-1)
            target = reward + 0.99 * not_done * value(next_obs).squeeze(-1)
        v = value(obs).squeeze(-1)
        diff = target_q - v
        loss_v = (torch.where(diff > 0, 0.7, 0.3) * diff.square()).mean()
        loss_q = (
            (q1(sa).squeeze(-1) - target).square() + (q2(sa).squeeze(-1) - target).square()
        ).mean()
        weight = torch.exp(3.0 * diff.detach()).clamp_max(100.0)
        loc, raw = actor(obs).chunk(2, -1)
        scale = nn.functional.softplus(raw + bias) + 0.1
        log_prob = torch.distributions.Normal(loc, scale).log_prob(pre_tanh).sum(-1) - log_det
        loss_pi = -(weight * log_prob).mean()
        for opt in optimizers:
            opt.zero_grad(set_to_none=True)
        (loss_v + loss_q + loss_pi).backward()
        for opt in optimizers:
            opt.step()
        with torch.no_grad():
            torch._foreach_lerp_(target_params, critic_params, 0.005)

    return step


def cases(
    obs_dim: int, act_dim: int, batch_size: int, hidden: int
) -> dict[str, Callable[[], None]]:
    from torchrl.objectives import IQLLoss as TorchRLIQLLoss

    from torchrl_offline.objectives.iql import IQLLoss

    return {
        "iql/ours": _loss_case(IQLLoss, obs_dim, act_dim, batch_size, hidden, True),
        "iql/torchrl": _loss_case(TorchRLIQLLoss, obs_dim, act_dim, batch_size, hidden, False),
        "iql/plain_torch": _plain_torch_case(obs_dim, act_dim, batch_size, hidden),
    }
