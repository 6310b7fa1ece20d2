"""AWR update throughput: ours vs plain torch (TorchRL and d3rlpy 2.8 have no AWR).

Both do one full update on a fixed random batch holding Monte Carlo returns (bootstrapped
with ``V`` where the episode was cut): ``V(s)``
regressed on the return, a ``TanhNormal`` actor fitted by likelihood weighted with
``min(exp(norm(R - V(s)) / beta), 20)``, one Adam over both networks, no target networks.
"""

from __future__ import annotations

import math
import pathlib
import sys
from collections.abc import Callable

import torch
from torch import nn

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))
import _nets


def _batch(obs_dim: int, act_dim: int, batch_size: int):
    batch = _nets.random_batch(obs_dim, act_dim, batch_size)
    g = torch.Generator().manual_seed(1)
    batch["mc_return"] = torch.randn(batch_size, 1, generator=g)
    batch["mc_tail_discount"] = torch.rand(batch_size, 1, generator=g)
    batch["mc_tail_observation"] = torch.randn(batch_size, obs_dim, generator=g)
    return batch


def _ours(obs_dim, act_dim, batch_size, hidden) -> Callable[[], None]:
    from torchrl_offline.objectives.awr import AWRLoss

    loss = AWRLoss(_nets.tanh_normal_actor(obs_dim, act_dim, hidden), _nets.value(obs_dim, hidden))
    optimizer = _nets.adam(loss.parameters())
    return _nets.loss_update(loss, [optimizer], None, _batch(obs_dim, act_dim, batch_size))


def _mlp(n_in: int, n_out: int, hidden: int) -> nn.Sequential:
    return nn.Sequential(
        nn.Linear(n_in, hidden),
        nn.ReLU(),
        nn.Linear(hidden, hidden),
        nn.ReLU(),
        nn.Linear(hidden, n_out),
    )


def _plain(obs_dim, act_dim, batch_size, hidden) -> Callable[[], None]:
    torch.manual_seed(0)
    actor, value = _mlp(obs_dim, 2 * act_dim, hidden), _mlp(obs_dim, 1, hidden)
    optimizer = _nets.adam([*actor.parameters(), *value.parameters()])
    batch = _batch(obs_dim, act_dim, batch_size)
    bias = math.log(math.e - 1.0)
    obs, mc = batch["observation"], batch["mc_return"].squeeze(-1)
    tail_discount = batch["mc_tail_discount"].squeeze(-1)
    tail_obs = batch["mc_tail_observation"]
    act = batch["action"].clamp(-1 + 1e-6, 1 - 1e-6)
    pre, log_det = torch.atanh(act), torch.log1p(-act.square()).sum(-1)

    def step() -> None:
        with torch.no_grad():  # the return, bootstrapped where the episode was cut
            ret = mc + tail_discount * value(tail_obs).squeeze(-1)
        v = value(obs).squeeze(-1)
        with torch.no_grad():
            adv = ret - v
            adv = (adv - adv.mean()) / (adv.std(unbiased=False) + 1e-5)
            weight = adv.exp().clamp(max=20.0)
        loc, raw = actor(obs).chunk(2, -1)
        scale = nn.functional.softplus(raw + bias) + 0.1
        log_prob = torch.distributions.Normal(loc, scale).log_prob(pre).sum(-1) - log_det
        loss = -(weight * log_prob).mean() + (v - ret).square().mean()
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()

    return step


def cases(
    obs_dim: int, act_dim: int, batch_size: int, hidden: int
) -> dict[str, Callable[[], None]]:
    torch.manual_seed(0)
    return {
        "awr/ours": _ours(obs_dim, act_dim, batch_size, hidden),
        "awr/plain_torch": _plain(obs_dim, act_dim, batch_size, hidden),
    }
