"""Throughput cases for TD3+BC: ours, TorchRL's ``TD3BCLoss``, plain torch.

Each case does one full update on a fixed random batch. Every case follows the
paper's schedule: a critic step on every call and an actor step on every second
call. All use the same networks (``hidden x hidden`` ReLU MLPs, a tanh actor, twin
critics), the same Adam (``_nets.adam``) and a soft target update:

* ``td3_bc/ours``: what ``OfflineTrainer(policy_update_delay=2)`` does: the critic
  term alone (``qvalue_loss``) on odd calls, the loss's ``forward`` (both terms) on
  even calls, one backward of the summed losses, one optimizer;
* ``td3_bc/torchrl``: ``torchrl.objectives.TD3BCLoss`` driven exactly like TorchRL's
  ``sota-implementations/td3_bc``: ``qvalue_loss`` + critic optimizer on every call,
  ``actor_loss`` + actor optimizer + ``SoftUpdate`` on every second call;
* ``td3_bc/plain_torch``: a hand-written update with stacked (vectorized) twin critics
  and the same schedule, targets updated with ``torch._foreach_lerp_`` on actor steps.
"""

from __future__ import annotations

import copy
import itertools
import math
import pathlib
import sys
from collections.abc import Callable

import torch
from tensordict import TensorDict
from tensordict.nn import TensorDictModule, TensorDictSequential
from torch import nn
from torchrl.data import Bounded
from torchrl.modules import MLP, TanhModule, ValueOperator
from torchrl.objectives import SoftUpdate
from torchrl.objectives import TD3BCLoss as TorchRLTD3BCLoss

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))
import _nets

from torchrl_offline.objectives.td3_bc import TD3BCLoss

LR = 3e-4
TAU = 0.005
DELAY = 2


def _adam(params) -> torch.optim.Adam:
    return _nets.adam(params, lr=LR)


def _networks(obs_dim: int, act_dim: int, hidden: int):
    spec = Bounded(-torch.ones(act_dim), torch.ones(act_dim), (act_dim,))
    actor = TensorDictSequential(
        TensorDictModule(
            MLP(
                in_features=obs_dim,
                out_features=act_dim,
                num_cells=[hidden, hidden],
                activation_class=nn.ReLU,
            ),
            in_keys=["observation"],
            out_keys=["param"],
        ),
        TanhModule(in_keys=["param"], out_keys=["action"], spec=spec),
    )
    qvalue = ValueOperator(
        MLP(
            in_features=obs_dim + act_dim,
            out_features=1,
            num_cells=[hidden, hidden],
            activation_class=nn.ReLU,
        ),
        in_keys=["action", "observation"],
    )
    return spec, actor, qvalue


def _batch(obs_dim: int, act_dim: int, batch_size: int) -> TensorDict:
    g = torch.Generator().manual_seed(0)
    return TensorDict(
        {
            "observation": torch.randn(batch_size, obs_dim, generator=g),
            "action": torch.rand(batch_size, act_dim, generator=g) * 2 - 1,
            "next": {
                "observation": torch.randn(batch_size, obs_dim, generator=g),
                "reward": torch.randn(batch_size, 1, generator=g),
                "done": torch.zeros(batch_size, 1, dtype=torch.bool),
                "terminated": torch.zeros(batch_size, 1, dtype=torch.bool),
            },
        },
        [batch_size],
    )


def _ours(loss_module: TD3BCLoss, data: TensorDict, *, every_step: bool) -> Callable[[], None]:
    loss_module.make_value_estimator(gamma=0.99)
    updater = _nets.ours_soft_update(loss_module, TAU)
    optim = _adam(loss_module.parameters())
    return _nets.delayed_update(
        loss_module, optim, updater, data, delay=DELAY, target_every_step=every_step
    )


def _torchrl(loss_module: TorchRLTD3BCLoss, data: TensorDict) -> Callable[[], None]:
    loss_module.make_value_estimator(gamma=0.99)
    updater = SoftUpdate(loss_module, tau=TAU)
    optim_actor = _adam(loss_module.actor_network_params.values(True, True))
    optim_critic = _adam(loss_module.qvalue_network_params.values(True, True))
    counter = [0]

    def update() -> None:
        counter[0] += 1
        q_loss, _ = loss_module.qvalue_loss(data)
        optim_critic.zero_grad()
        q_loss.backward()
        optim_critic.step()
        if counter[0] % DELAY == 0:
            actor_loss, _ = loss_module.actor_loss(data)
            optim_actor.zero_grad()
            actor_loss.backward()
            optim_actor.step()
            updater.step()

    return update


def _plain_torch(obs_dim: int, act_dim: int, hidden: int, data: TensorDict):
    """A minimal hand-written TD3+BC update with stacked (vectorized) twin critics."""
    n_critics = 2
    sizes = [obs_dim + act_dim, hidden, hidden, 1]

    def stacked_layer(i, o):
        w = torch.empty(n_critics, i, o)
        for k in range(n_critics):
            nn.init.kaiming_uniform_(w[k].T, a=math.sqrt(5))
        b = torch.empty(n_critics, 1, o).uniform_(-1 / math.sqrt(i), 1 / math.sqrt(i))
        return nn.Parameter(w), nn.Parameter(b)

    critic = [p for i, o in itertools.pairwise(sizes) for p in stacked_layer(i, o)]
    critic_target = [p.detach().clone() for p in critic]
    actor = nn.Sequential(
        nn.Linear(obs_dim, hidden),
        nn.ReLU(),
        nn.Linear(hidden, hidden),
        nn.ReLU(),
        nn.Linear(hidden, act_dim),
        nn.Tanh(),
    )
    actor_target = copy.deepcopy(actor).requires_grad_(False)
    actor_params, actor_target_params = list(actor.parameters()), list(actor_target.parameters())
    optim_critic = _adam(critic)
    optim_actor = _adam(actor_params)
    counter = [0]

    def q(params, o, a):
        x = torch.cat([a, o], -1).expand(len(params[0]), -1, -1)
        for layer in range(len(params) // 2):
            x = torch.baddbmm(params[2 * layer + 1], x, params[2 * layer])
            if layer < len(params) // 2 - 1:
                x = torch.relu(x)
        return x.squeeze(-1)

    def update() -> None:
        counter[0] += 1
        obs, act = data["observation"], data["action"]
        next_obs, reward = data["next", "observation"], data["next", "reward"].squeeze(-1)
        not_done = (~data["next", "terminated"]).float().squeeze(-1)
        with torch.no_grad():
            noise = (torch.randn_like(act) * 0.2).clamp(-0.5, 0.5)
            next_act = (actor_target(next_obs) + noise).clamp(-1.0, 1.0)
            y = reward + 0.99 * not_done * q(critic_target, next_obs, next_act).min(0).values
        critic_loss = ((q(critic, obs, act) - y) ** 2).mean(1).sum()
        optim_critic.zero_grad(set_to_none=True)
        critic_loss.backward()
        optim_critic.step()
        if counter[0] % DELAY == 0:
            pi = actor(obs)
            q1 = q([p[:1].detach() for p in critic], obs, pi)[0]
            lmbda = 2.5 / q1.abs().mean().detach()
            actor_loss = -lmbda * q1.mean() + ((pi - act) ** 2).mean()
            optim_actor.zero_grad(set_to_none=True)
            actor_loss.backward()
            optim_actor.step()
            with torch.no_grad():
                torch._foreach_lerp_(critic_target, critic, TAU)
                torch._foreach_lerp_(actor_target_params, actor_params, TAU)

    return update


def cases(
    obs_dim: int, act_dim: int, batch_size: int, hidden: int
) -> dict[str, Callable[[], None]]:
    """One-update closures for ``td3_bc/ours``, ``td3_bc/torchrl`` and ``td3_bc/plain_torch``."""
    data = _batch(obs_dim, act_dim, batch_size)
    common = dict(loss_function="l2", policy_noise=0.2, noise_clip=0.5, alpha=2.5)
    torch.manual_seed(0)
    spec, actor, qvalue = _networks(obs_dim, act_dim, hidden)
    ours = TD3BCLoss(actor, qvalue, action_spec=spec, **common)
    torch.manual_seed(0)
    spec, actor, qvalue = _networks(obs_dim, act_dim, hidden)
    ours_every_step = TD3BCLoss(actor, qvalue, action_spec=spec, **common)
    torch.manual_seed(0)
    spec, actor, qvalue = _networks(obs_dim, act_dim, hidden)
    theirs = TorchRLTD3BCLoss(actor, qvalue, action_spec=spec, **common)
    torch.manual_seed(0)
    return {
        "td3_bc/ours": _ours(ours, data.clone(), every_step=False),
        "td3_bc/ours_target_every_step": _ours(ours_every_step, data.clone(), every_step=True),
        "td3_bc/torchrl": _torchrl(theirs, data.clone()),
        "td3_bc/plain_torch": _plain_torch(obs_dim, act_dim, hidden, data.clone()),
    }


if __name__ == "__main__":
    import time

    torch.set_num_threads(2)
    fns = cases(17, 6, 256, 256)
    for fn in fns.values():
        for _ in range(4):
            fn()
    for _ in range(3):
        for name, fn in fns.items():
            start = time.perf_counter()
            for _ in range(20):
                fn()
            print(f"{name:20s} {20 / (time.perf_counter() - start):7.1f} updates/s")
