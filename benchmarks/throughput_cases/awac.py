"""Throughput cases for continuous AWAC: ours and a plain-torch update.

TorchRL has no AWAC loss, so there is no ``awac/torchrl`` case. Each case does one
full update on a fixed random batch: the critic TD loss (next action sampled from the
policy, twin target critics) and the advantage-weighted log-likelihood of the data
actions (one policy sample for V(s), weights ``exp(A / lambda)`` clipped at 100), one
backward of the summed losses, an Adam step (``_nets.adam``, the same for both) and a
soft target update. Both use the same networks: ``hidden x hidden`` ReLU MLPs, twin critics, a
TanhNormal actor whose scale is ``softplus(x + softplus^-1(1)) + 1e-4``
(tensordict's ``NormalParamExtractor``).
"""

from __future__ import annotations

import itertools
import math
import pathlib
import sys
from collections.abc import Callable

import torch
from tensordict import TensorDict
from tensordict.nn import NormalParamExtractor, TensorDictModule
from torch import nn
from torchrl.data import Bounded
from torchrl.modules import MLP, ProbabilisticActor, TanhNormal, ValueOperator

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))
import _nets

from torchrl_offline.objectives.awac import AWACLoss

LR = 3e-4
TAU = 0.005
LAMBDA = 1.0 / 3.0


def _adam(params) -> torch.optim.Adam:
    return _nets.adam(params, lr=LR)


def _networks(obs_dim: int, act_dim: int, hidden: int):
    spec = Bounded(-torch.ones(act_dim), torch.ones(act_dim), (act_dim,))
    actor_net = nn.Sequential(
        MLP(
            in_features=obs_dim,
            out_features=2 * act_dim,
            num_cells=[hidden, hidden],
            activation_class=nn.ReLU,
        ),
        NormalParamExtractor(),
    )
    actor = ProbabilisticActor(
        TensorDictModule(actor_net, in_keys=["observation"], out_keys=["loc", "scale"]),
        in_keys=["loc", "scale"],
        spec=spec,
        distribution_class=TanhNormal,
        distribution_kwargs={"low": spec.space.low, "high": spec.space.high},
    )
    qvalue = ValueOperator(
        MLP(
            in_features=obs_dim + act_dim,
            out_features=1,
            num_cells=[hidden, hidden],
            activation_class=nn.ReLU,
        ),
        in_keys=["observation", "action"],
    )
    return actor, qvalue


def _batch(obs_dim: int, act_dim: int, batch_size: int) -> TensorDict:
    g = torch.Generator().manual_seed(0)
    return TensorDict(
        {
            "observation": torch.randn(batch_size, obs_dim, generator=g),
            "action": torch.rand(batch_size, act_dim, generator=g) * 1.8 - 0.9,
            "next": {
                "observation": torch.randn(batch_size, obs_dim, generator=g),
                "reward": torch.randn(batch_size, 1, generator=g),
                "done": torch.zeros(batch_size, 1, dtype=torch.bool),
                "terminated": torch.zeros(batch_size, 1, dtype=torch.bool),
            },
        },
        [batch_size],
    )


def _ours(loss_module: AWACLoss, data: TensorDict) -> Callable[[], None]:
    loss_module.make_value_estimator(gamma=0.99)
    updater = _nets.ours_soft_update(loss_module, TAU)
    optim = _adam(loss_module.parameters())

    def update() -> None:
        out = loss_module(data)
        (out["loss_actor"] + out["loss_qvalue"]).backward()
        optim.step()
        optim.zero_grad(set_to_none=True)
        updater.step()

    return update


def _plain_torch(obs_dim: int, act_dim: int, hidden: int, data: TensorDict):
    """A minimal hand-written AWAC update with stacked (vectorized) twin critics."""
    n_critics = 2
    sizes = [obs_dim + act_dim, hidden, hidden, 1]

    def stacked_layer(i, o):
        w = torch.empty(n_critics, i, o)
        for k in range(n_critics):
            nn.init.kaiming_uniform_(w[k].T, a=math.sqrt(5))
        b = torch.empty(n_critics, 1, o).uniform_(-1 / math.sqrt(i), 1 / math.sqrt(i))
        return nn.Parameter(w), nn.Parameter(b)

    critic = [p for i, o in itertools.pairwise(sizes) for p in stacked_layer(i, o)]
    target = [p.detach().clone() for p in critic]
    actor = nn.Sequential(
        nn.Linear(obs_dim, hidden),
        nn.ReLU(),
        nn.Linear(hidden, hidden),
        nn.ReLU(),
        nn.Linear(hidden, 2 * act_dim),
    )
    optim = _adam([*critic, *actor.parameters()])
    scale_bias = math.log(math.expm1(1.0))
    half_log_2pi = 0.5 * math.log(2 * math.pi)

    def q(params, o, a):
        x = torch.cat([o, a], -1).expand(n_critics, -1, -1)
        for layer in range(len(params) // 2):
            x = torch.baddbmm(params[2 * layer + 1], x, params[2 * layer])
            if layer < len(params) // 2 - 1:
                x = torch.relu(x)
        return x.squeeze(-1)

    def gaussian(o):
        mu, pre = actor(o).chunk(2, -1)
        return mu, nn.functional.softplus(pre + scale_bias) + 1e-4

    def tanh_sample(mu, std):
        return torch.tanh(mu + std * torch.randn_like(mu))

    def log_prob(mu, std, a):
        a = a.clamp(-1 + 1e-6, 1 - 1e-6)
        u = torch.atanh(a)
        logp = -0.5 * ((u - mu) / std) ** 2 - std.log() - half_log_2pi
        return (logp - torch.log1p(-(a**2))).sum(-1)

    def update() -> None:
        obs, act = data["observation"], data["action"]
        next_obs, reward = data["next", "observation"], data["next", "reward"].squeeze(-1)
        not_done = (~data["next", "terminated"]).float().squeeze(-1)
        with torch.no_grad():
            next_act = tanh_sample(*gaussian(next_obs))
            y = reward + 0.99 * not_done * q(target, next_obs, next_act).min(0).values
        q_data = q(critic, obs, act)
        critic_loss = ((q_data - y) ** 2).mean(1).sum()
        mu, std = gaussian(obs)
        with torch.no_grad():
            v = q([p.detach() for p in critic], obs, tanh_sample(mu, std)).min(0).values
            adv = q_data.detach().min(0).values - v
            weight = torch.exp(adv / LAMBDA).clamp(max=100.0)
        actor_loss = -(weight * log_prob(mu, std, act)).mean()
        (actor_loss + critic_loss).backward()
        optim.step()
        optim.zero_grad(set_to_none=True)
        with torch.no_grad():
            torch._foreach_lerp_(target, critic, TAU)

    return update


def cases(
    obs_dim: int, act_dim: int, batch_size: int, hidden: int
) -> dict[str, Callable[[], None]]:
    """One-update closures for ``awac/ours`` and ``awac/plain_torch``."""
    data = _batch(obs_dim, act_dim, batch_size)
    torch.manual_seed(0)
    actor, qvalue = _networks(obs_dim, act_dim, hidden)
    ours = AWACLoss(actor, qvalue, awac_lambda=LAMBDA)
    torch.manual_seed(0)
    return {
        "awac/ours": _ours(ours, data.clone()),
        "awac/plain_torch": _plain_torch(obs_dim, act_dim, hidden, data.clone()),
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
