"""Throughput cases for ReBRAC: ours and plain torch (TorchRL has no ReBRAC).

Both follow the paper's networks and schedule: a deterministic tanh actor and twin
critics with 3 hidden layers, the critics' hidden layers ``Linear -> ReLU -> LayerNorm``,
Adam at 1e-3, a critic step on every call and an actor step (with the target update) on
every second call. The batch holds the dataset's next action.

* ``rebrac/ours``: :class:`~torchrl_offline.objectives.rebrac.ReBRACLoss` on the
  networks ``build_algorithm("rebrac", ...)`` makes, driven as ``OfflineTrainer`` does
  (``policy_update_delay=2``, ``target_update_delay=2``);
* ``rebrac/plain_torch``: a hand-written update, the twin critics stacked (one
  ``baddbmm`` per layer for both), targets updated with ``torch._foreach_lerp_``.
"""

from __future__ import annotations

import copy
import itertools
import pathlib
import sys
from collections.abc import Callable

import torch
from tensordict import TensorDict
from torch import nn

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))
import _nets

from torchrl_offline.objectives import NetworkFactory, ReBRACLoss

LR = 1e-3
TAU = 0.005
DELAY = 2
DEPTH = 3
BETA_ACTOR, BETA_CRITIC = 0.001, 0.01


def _batch(obs_dim: int, act_dim: int, batch_size: int) -> TensorDict:
    batch = _nets.random_batch(obs_dim, act_dim, batch_size)
    g = torch.Generator().manual_seed(1)
    batch["next", "action"] = torch.rand(batch_size, act_dim, generator=g) * 2 - 1
    return batch


def _ours(obs_dim: int, act_dim: int, hidden: int, batch: TensorDict) -> Callable[[], None]:
    torch.manual_seed(0)
    spec = _nets.action_spec(act_dim)
    nets = NetworkFactory(obs_dim, spec, hidden_sizes=(hidden,) * DEPTH)
    loss = ReBRACLoss(
        nets.deterministic_actor(),
        nets.qvalue(layer_norm=True),
        action_spec=spec,
        beta_actor=BETA_ACTOR,
        beta_critic=BETA_CRITIC,
    )
    loss.make_value_estimator(gamma=0.99)
    updater = _nets.ours_soft_update(loss, TAU)
    optim = _nets.adam(loss.parameters(), lr=LR)
    return _nets.delayed_update(loss, optim, updater, batch, delay=DELAY)


def _plain_torch(obs_dim: int, act_dim: int, hidden: int, batch: TensorDict):
    """ReBRAC's update written directly: stacked twin LayerNorm critics, a tanh actor."""
    torch.manual_seed(0)
    n_critics = 2
    sizes = [obs_dim + act_dim, *[hidden] * DEPTH, 1]
    layers = [nn.Linear(i, o) for i, o in itertools.pairwise(sizes) for _ in range(n_critics)]
    critic = []  # per layer: weight [2, in, out], bias [2, 1, out], then LayerNorm gain/bias
    for layer in range(len(sizes) - 1):
        pair = layers[n_critics * layer : n_critics * (layer + 1)]
        critic.append(nn.Parameter(torch.stack([m.weight.detach().T for m in pair])))
        critic.append(nn.Parameter(torch.stack([m.bias.detach()[None] for m in pair])))
        if layer < DEPTH:
            critic.append(nn.Parameter(torch.ones(n_critics, 1, sizes[layer + 1])))
            critic.append(nn.Parameter(torch.zeros(n_critics, 1, sizes[layer + 1])))
    critic_target = [p.detach().clone() for p in critic]
    dims = [obs_dim, *[hidden] * DEPTH]
    actor = nn.Sequential(
        *[m for i, o in itertools.pairwise(dims) for m in (nn.Linear(i, o), nn.ReLU())],
        nn.Linear(hidden, act_dim),
        nn.Tanh(),
    )
    actor_target = copy.deepcopy(actor).requires_grad_(False)
    actor_params, actor_target_params = list(actor.parameters()), list(actor_target.parameters())
    optim_critic = _nets.adam(critic, lr=LR)
    optim_actor = _nets.adam(actor_params, lr=LR)
    counter = [0]

    def critic_forward(params, o, a):  # [2, batch]
        x = torch.cat([o, a], -1).expand(n_critics, -1, -1)
        k = 0
        for _ in range(DEPTH):
            x = torch.relu(torch.baddbmm(params[k + 1], x, params[k]))
            x = nn.functional.layer_norm(x, x.shape[-1:]) * params[k + 2] + params[k + 3]
            k += 4
        return torch.baddbmm(params[k + 1], x, params[k]).squeeze(-1)

    def update() -> None:
        counter[0] += 1
        obs, act = batch["observation"], batch["action"]
        next_obs, next_act_data = batch["next", "observation"], batch["next", "action"]
        reward = batch["next", "reward"].squeeze(-1)
        not_done = (~batch["next", "terminated"]).float().squeeze(-1)
        with torch.no_grad():
            noise = (torch.randn_like(act) * 0.2).clamp(-0.5, 0.5)
            next_act = (actor_target(next_obs) + noise).clamp(-1.0, 1.0)
            penalty = ((next_act - next_act_data) ** 2).sum(-1)
            next_q = critic_forward(critic_target, next_obs, next_act).min(0).values
            y = reward + 0.99 * not_done * (next_q - BETA_CRITIC * penalty)
        critic_loss = ((critic_forward(critic, obs, act) - y) ** 2).mean(1).sum()
        optim_critic.zero_grad(set_to_none=True)
        critic_loss.backward()
        optim_critic.step()
        if counter[0] % DELAY == 0:
            pi = actor(obs)
            q_pi = critic_forward([p.detach() for p in critic], obs, pi).min(0).values
            lmbda = 1.0 / q_pi.abs().mean().detach()
            actor_loss = (BETA_ACTOR * ((pi - act) ** 2).sum(-1) - lmbda * q_pi).mean()
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
    """One-update closures for ``rebrac/ours`` and ``rebrac/plain_torch`` (3 hidden layers
    of ``hidden`` units, whatever the other algorithms' depth)."""
    batch = _batch(obs_dim, act_dim, batch_size)
    return {
        "rebrac/ours": _ours(obs_dim, act_dim, hidden, batch.clone()),
        "rebrac/plain_torch": _plain_torch(obs_dim, act_dim, hidden, batch.clone()),
    }
