"""Tests for DiscreteCQLLoss (torchrl_offline.objectives.discrete_cql)."""

from __future__ import annotations

import pytest
import torch
from tensordict import TensorDict
from torch import nn
from torchrl.data import Categorical, OneHot
from torchrl.modules import MLP, QValueActor
from torchrl.objectives import SoftUpdate

from torchrl_offline.objectives import cql
from torchrl_offline.objectives.common import OfflineLossError
from torchrl_offline.objectives.discrete_cql import DiscreteCQLLoss

pytestmark = pytest.mark.filterwarnings("ignore:No target network updater")

OBS, B = 3, 6


def make_qnet(n_act=3, quantiles=None, obs_dim=OBS):
    out = n_act * (quantiles or 1)
    return MLP(in_features=obs_dim, out_features=out, num_cells=[8], activation_class=nn.ReLU)


def make_discrete_batch(spec, b=B, seed=1):
    g = torch.Generator().manual_seed(seed)
    terminated = torch.zeros(b, 1, dtype=torch.bool)
    terminated[0] = True
    return TensorDict(
        {
            "observation": torch.randn(b, OBS, generator=g),
            "action": spec.rand((b,)),
            "next": {
                "observation": torch.randn(b, OBS, generator=g),
                "reward": torch.randn(b, 1, generator=g),
                "done": terminated.clone(),
                "terminated": terminated,
            },
        },
        [b],
    )


def _mlp(seq: nn.Module, params: dict, prefix: str, x: torch.Tensor) -> torch.Tensor:
    """A plain-torch pass of ``seq`` with the flat parameters ``params``."""
    for name, child in seq.named_children():
        if isinstance(child, nn.Linear):
            x = x @ params[f"{prefix}{name}.weight"].T + params[f"{prefix}{name}.bias"]
        else:
            x = child(x)
    return x


@pytest.mark.parametrize("one_hot", [True, False])
def test_discrete_matches_transcription(one_hot):
    torch.manual_seed(0)
    spec = OneHot(3) if one_hot else Categorical(3)
    qnet = make_qnet()
    actor = QValueActor(qnet, in_keys=["observation"], spec=spec)
    loss = DiscreteCQLLoss(actor, action_space=spec, alpha=2.5, reduction="none")
    loss.make_value_estimator(gamma=0.9)
    with torch.no_grad():
        for p in loss.target_value_network_params.values(True, True):
            p.mul_(0.5)  # target differs from the online network
    data = make_discrete_batch(spec)
    out = loss(data)
    idx = data["action"].long().argmax(-1) if one_hot else data["action"]
    online = {k: v for k, v in loss.value_network_params.flatten_keys(".").items()}
    target = {k: v for k, v in loss.target_value_network_params.flatten_keys(".").items()}
    prefix = "module.0.module."
    q = _mlp(qnet, online, prefix, data["observation"])
    q_next = _mlp(qnet, target, prefix, data["next", "observation"])
    y = (
        data["next", "reward"].squeeze(-1)
        + 0.9 * (1 - data["next", "terminated"].float().squeeze(-1)) * q_next.max(-1).values
    )
    q_a = q.gather(-1, idx[:, None]).squeeze(-1)
    torch.testing.assert_close(out["loss_qvalue"], 0.5 * (q_a - y) ** 2, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(
        out["loss_cql"], 2.5 * (torch.logsumexp(q, -1) - q_a), rtol=1e-5, atol=1e-6
    )
    torch.testing.assert_close(data["td_error"], (q_a - y).abs().detach())
    # gradients: only the online network, never the target
    total = out["loss_qvalue"].mean() + out["loss_cql"].mean()
    total.backward()
    assert all(p.grad is None for p in loss.target_value_network_params.values(True, True))


def test_discrete_qr_dqn_matches_transcription():
    torch.manual_seed(0)
    spec, k = OneHot(3), 5
    qnet = make_qnet(3, k)
    loss = DiscreteCQLLoss(qnet, action_space=spec, num_quantiles=k, reduction="none")
    loss.make_value_estimator(gamma=0.9)
    data = make_discrete_batch(spec)
    out = loss(data)
    params = loss.value_network_params.flatten_keys(".")
    theta_all = _mlp(qnet, params, "module.", data["observation"]).reshape(B, 3, k)
    theta_next = _mlp(qnet, params, "module.", data["next", "observation"]).reshape(B, 3, k)
    idx = data["action"].long().argmax(-1)
    theta = theta_all[torch.arange(B), idx]
    best = theta_next.mean(-1).argmax(-1)
    y = (
        data["next", "reward"]
        + 0.9 * (1 - data["next", "terminated"].float()) * theta_next[torch.arange(B), best]
    )
    taus = (torch.arange(k) + 0.5) / k
    expected = torch.zeros(B)
    for i in range(k):  # predicted quantile i
        for jj in range(k):  # target sample j
            u = y[:, jj] - theta[:, i]
            huber = torch.where(u.abs() <= 1, 0.5 * u**2, u.abs() - 0.5)
            expected += (taus[i] - (u < 0).float()).abs() * huber / k
    torch.testing.assert_close(out["loss_qvalue"], expected, rtol=1e-5, atol=1e-6)
    q = theta_all.mean(-1)
    torch.testing.assert_close(
        out["loss_cql"], torch.logsumexp(q, -1) - q[torch.arange(B), idx], rtol=1e-5, atol=1e-6
    )


def test_discrete_bad_input_and_keys():
    torch.manual_seed(0)
    spec = OneHot(3)
    loss = DiscreteCQLLoss(
        QValueActor(make_qnet(), in_keys=["observation"], spec=spec), action_space=spec
    )
    loss.make_value_estimator(gamma=0.9)
    data = make_discrete_batch(spec)
    with pytest.raises(OfflineLossError, match="'terminated'"):
        loss(data.exclude(("next", "terminated")))
    bad = make_discrete_batch(spec)
    bad["observation"][2, 1] = float("inf")
    with pytest.raises(OfflineLossError, match="'observation'.*\\(2,\\)"):
        loss(bad)
    loss.set_keys(reward="rew", priority="prio")
    data = make_discrete_batch(spec)
    data["next", "rew"] = data["next"].pop("reward")
    loss(data)
    assert data["prio"].shape == (B,)


def test_discrete_learns_on_cartpole(cartpole_dataset, evaluate_actor, one_thread):
    torch.manual_seed(0)
    data = cartpole_dataset.data
    spec = Categorical(2)
    qnet = MLP(in_features=4, out_features=2, num_cells=[64, 64], activation_class=nn.ReLU)
    actor = QValueActor(qnet, in_keys=["observation"], spec=spec)
    loss = DiscreteCQLLoss(actor, action_space=spec, alpha=1.0)
    loss.make_value_estimator(gamma=0.99)
    updater = SoftUpdate(loss, tau=0.02)
    optim = torch.optim.Adam(loss.parameters(), lr=1e-3)
    g = torch.Generator().manual_seed(0)
    for _ in range(800):
        batch = data[torch.randint(data.numel(), (64,), generator=g)]
        out = loss(batch)
        (out["loss_qvalue"] + out["loss_cql"]).backward()
        optim.step()
        optim.zero_grad()
        updater.step()
    score = evaluate_actor(actor, "CartPole-v1", episodes=3)
    assert score > 2 * cartpole_dataset.random_return, (score, cartpole_dataset.random_return)


def test_discrete_drop_in_like_torchrl_script(cartpole_dataset):
    """Built as sota-implementations/cql/utils.py builds the discrete model and loss."""
    from torchrl.data import Composite

    torch.manual_seed(0)
    action_spec = OneHot(2)
    qvalue_module = QValueActor(
        module=MLP(num_cells=[32, 32], out_features=2, activation_class=nn.ReLU),
        spec=Composite(action=action_spec),
        in_keys=["observation"],
    )
    data = cartpole_dataset.data.clone()
    data["action"] = torch.nn.functional.one_hot(data["action"], 2)
    with torch.no_grad():
        qvalue_module(data[:2].clone())
    loss_module = DiscreteCQLLoss(qvalue_module, loss_function="l2", delay_value=True)
    loss_module.make_value_estimator(gamma=0.99)
    target_net_updater = SoftUpdate(loss_module, tau=0.005)
    optim = torch.optim.Adam(loss_module.parameters(), lr=3e-4)
    for i in range(3):
        loss_vals = loss_module(data[i * 32 : (i + 1) * 32])
        loss = loss_vals["loss_qvalue"] + loss_vals["loss_cql"]
        loss.backward()
        optim.step()
        optim.zero_grad()
        target_net_updater.step()
        assert torch.isfinite(loss)


def test_still_importable_from_cql():
    """Users and TorchRL-style code import it from ``objectives.cql``, as from TorchRL."""
    assert cql.DiscreteCQLLoss is DiscreteCQLLoss
    assert cql.DISCRETE_CQL_ALGORITHM.loss_class is DiscreteCQLLoss
