"""Throughput cases for discrete BCQ: ours and a plain-torch update (TorchRL has none).

Each case does one full update on a fixed random batch of ``act_dim`` discrete actions:
the Q head and the imitation head at ``s`` (with gradients) and at ``s'`` (for the BCQ
filter and the argmax), the target Q head at ``s'``, one backward of the TD and
imitation losses, an Adam step and a soft target update. Both heads are separate
``hidden x hidden`` ReLU MLPs (the reference code's fully connected model).
``loss_throughput_d3rlpy.py`` times d3rlpy's ``DiscreteBCQ`` on the same networks.
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
from torchrl.data import Categorical

from torchrl_offline.objectives.discrete_bcq import DiscreteBCQActor, DiscreteBCQLoss

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))
import _nets

LR = 3e-4
TAU = 0.005
THRESHOLD = 0.3


def discrete_batch(obs_dim: int, n_actions: int, batch_size: int) -> TensorDict:
    """:func:`_nets.random_batch` with integer actions in ``[0, n_actions)``."""
    data = _nets.random_batch(obs_dim, 1, batch_size)
    g = torch.Generator().manual_seed(1)
    data["action"] = torch.randint(n_actions, (batch_size,), generator=g)
    return data


def _ours(obs_dim: int, n_actions: int, hidden: int, data: TensorDict) -> Callable[[], None]:
    torch.manual_seed(0)
    actor = DiscreteBCQActor(
        _nets.mlp(obs_dim, n_actions, hidden),
        _nets.mlp(obs_dim, n_actions, hidden),
        spec=Categorical(n_actions),
        threshold=THRESHOLD,
    )
    loss = DiscreteBCQLoss(actor)
    loss.make_value_estimator(gamma=0.99)
    updater = _nets.ours_soft_update(loss, TAU)
    return _nets.loss_update(loss, [_nets.adam(loss.parameters(), lr=LR)], updater, data)


def _plain_torch(obs_dim: int, n_actions: int, hidden: int, data: TensorDict):
    """The reference code's update, written out: filter, target, Huber, NLL, penalty."""
    torch.manual_seed(0)
    q_net, i_net = _nets.mlp(obs_dim, n_actions, hidden), _nets.mlp(obs_dim, n_actions, hidden)
    q_target = copy.deepcopy(q_net).requires_grad_(False)
    online, targets = list(q_net.parameters()), list(q_target.parameters())
    optim = _nets.adam([*online, *i_net.parameters()], lr=LR)
    log_threshold = math.log(THRESHOLD)

    def update() -> None:
        obs, action = data["observation"], data["action"]
        next_obs, reward = data["next", "observation"], data["next", "reward"].squeeze(-1)
        not_done = (~data["next", "terminated"]).float().squeeze(-1)
        with torch.no_grad():
            logits_next = i_net(next_obs)
            allowed = logits_next - logits_next.max(-1, keepdim=True).values > log_threshold
            next_action = q_net(next_obs).masked_fill(~allowed, -math.inf).argmax(-1, keepdim=True)
            next_q = q_target(next_obs).gather(-1, next_action).squeeze(-1)
            y = reward + 0.99 * not_done * next_q
        q = q_net(obs).gather(-1, action[:, None]).squeeze(-1)
        logits = i_net(obs)
        loss = nn.functional.smooth_l1_loss(q, y)
        loss = loss + nn.functional.cross_entropy(logits, action) + 1e-2 * logits.pow(2).mean()
        loss.backward()
        optim.step()
        optim.zero_grad(set_to_none=True)
        with torch.no_grad():
            torch._foreach_lerp_(targets, online, TAU)

    return update


def cases(
    obs_dim: int, act_dim: int, batch_size: int, hidden: int
) -> dict[str, Callable[[], None]]:
    """``discrete_bcq/ours`` and ``discrete_bcq/plain_torch``, with ``act_dim`` actions."""
    data = discrete_batch(obs_dim, act_dim, batch_size)
    return {
        "discrete_bcq/ours": _ours(obs_dim, act_dim, hidden, data.clone()),
        "discrete_bcq/plain_torch": _plain_torch(obs_dim, act_dim, hidden, data.clone()),
    }
