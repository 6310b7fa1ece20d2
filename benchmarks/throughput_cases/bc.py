"""BC update throughput: ours vs TorchRL's BCLoss vs plain torch (deterministic and stochastic)."""

from __future__ import annotations

import math
import pathlib
import sys
from collections.abc import Callable

import torch
from torch import nn
from torchrl.modules import Actor

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))
import _nets


def _det_actor(obs_dim, act_dim, hidden):
    return Actor(_nets.mlp(obs_dim, act_dim, hidden), spec=_nets.action_spec(act_dim))


def _loss_case(loss_cls, actor, obs_dim, act_dim, batch_size, **kwargs) -> Callable[[], None]:
    loss = loss_cls(actor, **kwargs)
    optimizer = _nets.adam(loss.actor_network_params.values(True, True))
    return _nets.loss_update(
        loss, [optimizer], None, _nets.random_batch(obs_dim, act_dim, batch_size)
    )


def _plain_det(obs_dim, act_dim, batch_size, hidden) -> Callable[[], None]:
    torch.manual_seed(0)
    net = nn.Sequential(
        nn.Linear(obs_dim, hidden),
        nn.ReLU(),
        nn.Linear(hidden, hidden),
        nn.ReLU(),
        nn.Linear(hidden, act_dim),
    )
    optimizer = _nets.adam(net.parameters())
    batch = _nets.random_batch(obs_dim, act_dim, batch_size)

    def step() -> None:
        obs, act = batch["observation"], batch["action"]
        loss = (net(obs) - act).square().mean()
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()

    return step


def _plain_stoch(obs_dim, act_dim, batch_size, hidden) -> Callable[[], None]:
    torch.manual_seed(0)
    net = nn.Sequential(
        nn.Linear(obs_dim, hidden),
        nn.ReLU(),
        nn.Linear(hidden, hidden),
        nn.ReLU(),
        nn.Linear(hidden, 2 * act_dim),
    )
    optimizer = _nets.adam(net.parameters())
    batch = _nets.random_batch(obs_dim, act_dim, batch_size)
    bias = math.log(math.e - 1.0)

    def step() -> None:
        act = batch["action"].clamp(-1 + 1e-4, 1 - 1e-4)
        obs, pre, log_det = (
            batch["observation"],
            torch.atanh(act),
            torch.log1p(-act.square()).sum(-1),
        )
        loc, raw = net(obs).chunk(2, -1)
        scale = nn.functional.softplus(raw + bias) + 0.1
        log_prob = torch.distributions.Normal(loc, scale).log_prob(pre).sum(-1) - log_det
        loss = -log_prob.mean()
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()

    return step


def cases(
    obs_dim: int, act_dim: int, batch_size: int, hidden: int
) -> dict[str, Callable[[], None]]:
    from torchrl.objectives import BCLoss as TorchRLBCLoss

    from torchrl_offline.objectives.bc import BCLoss

    torch.manual_seed(0)
    return {
        "bc_det/ours": _loss_case(
            BCLoss, _det_actor(obs_dim, act_dim, hidden), obs_dim, act_dim, batch_size
        ),
        "bc_det/torchrl": _loss_case(
            TorchRLBCLoss,
            _det_actor(obs_dim, act_dim, hidden),
            obs_dim,
            act_dim,
            batch_size,
            loss_function="l2",
        ),
        "bc_det/plain_torch": _plain_det(obs_dim, act_dim, batch_size, hidden),
        "bc_stoch/ours": _loss_case(
            BCLoss, _nets.tanh_normal_actor(obs_dim, act_dim, hidden), obs_dim, act_dim, batch_size
        ),
        "bc_stoch/torchrl": _loss_case(
            TorchRLBCLoss,
            _nets.tanh_normal_actor(obs_dim, act_dim, hidden),
            obs_dim,
            act_dim,
            batch_size,
        ),
        "bc_stoch/plain_torch": _plain_stoch(obs_dim, act_dim, batch_size, hidden),
    }
