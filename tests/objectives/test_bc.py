"""Tests of BCLoss (deterministic, stochastic and discrete behaviour cloning)."""

from __future__ import annotations

import math
import warnings

import pytest
import torch
from tensordict import TensorDict
from tensordict.nn import NormalParamExtractor, TensorDictModule
from torchrl.data import Bounded, Categorical
from torchrl.modules import MLP, Actor, ProbabilisticActor, TanhNormal
from torchrl.objectives import BCLoss as TorchRLBCLoss

from torchrl_offline.objectives.bc import BCLoss
from torchrl_offline.objectives.common import OfflineLossError

OBS, ACT = 3, 2


def det_actor(hidden=16, obs_dim=OBS, act_dim=ACT, out_key="action", seed=0):
    torch.manual_seed(seed)
    spec = Bounded(-2.0, 2.0, (act_dim,))
    return Actor(
        MLP(in_features=obs_dim, out_features=act_dim, num_cells=[hidden]),
        spec=spec,
        out_keys=[out_key],
    )


def stoch_actor(hidden=16, obs_dim=OBS, act_dim=ACT, seed=0):
    torch.manual_seed(seed)
    spec = Bounded(-2.0 * torch.ones(act_dim), 2.0 * torch.ones(act_dim), (act_dim,))
    net = torch.nn.Sequential(
        MLP(in_features=obs_dim, out_features=2 * act_dim, num_cells=[hidden]),
        NormalParamExtractor(scale_mapping="biased_softplus_1.0", scale_lb=0.1),
    )
    return ProbabilisticActor(
        TensorDictModule(net, in_keys=["observation"], out_keys=["loc", "scale"]),
        in_keys=["loc", "scale"],
        spec=spec,
        distribution_class=TanhNormal,
        distribution_kwargs={"low": spec.space.low, "high": spec.space.high, "tanh_loc": False},
    )


def batch(n=12, act_dim=ACT, seed=1):
    g = torch.Generator().manual_seed(seed)
    return TensorDict(
        {
            "observation": torch.randn(n, OBS, generator=g),
            "action": (torch.rand(n, act_dim, generator=g) * 1.8 - 0.9) * 2.0,
        },
        [n],
    )


def test_deterministic_mse_matches_definition_and_torchrl():
    actor = det_actor()
    loss = BCLoss(actor)
    assert loss.mode == "deterministic"
    td = batch()
    out = loss(td.clone())
    with torch.no_grad():
        pred = actor(td.select("observation"))["action"]
    expected = ((pred - td["action"]) ** 2).mean()
    torch.testing.assert_close(out["loss_bc"], expected, atol=1e-6, rtol=1e-6)
    theirs = TorchRLBCLoss(actor, loss_function="l2")
    torch.testing.assert_close(theirs(td.clone())["loss_bc"], out["loss_bc"])


def test_stochastic_nll_matches_tanh_gaussian_density():
    actor = stoch_actor()
    loss = BCLoss(actor, action_eps=0.0)
    assert loss.mode == "stochastic"
    td = batch()
    out = loss(td.clone())
    with torch.no_grad():
        p = actor.module[0](td.select("observation"))
        x = td["action"] / 2.0
        u = torch.atanh(x)
        log_n = -((u - p["loc"]) ** 2) / (2 * p["scale"] ** 2) - p["scale"].log()
        log_n = log_n - 0.5 * math.log(2 * math.pi)
        log_pi = (log_n - torch.log1p(-(x**2)) - math.log(2.0)).sum(-1)
    torch.testing.assert_close(out["loss_bc"], -log_pi.mean(), atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(out["log_prob"], log_pi.mean(), atol=1e-5, rtol=1e-5)
    theirs = TorchRLBCLoss(actor)
    torch.testing.assert_close(theirs(td.clone())["loss_bc"], out["loss_bc"], atol=1e-5, rtol=1e-5)


def test_stochastic_actions_on_bounds_are_finite():
    loss = BCLoss(stoch_actor())
    td = batch()
    td["action"][:6] = 2.0
    td["action"][6:] = -2.0
    assert torch.isfinite(loss(td)["loss_bc"])


def test_discrete_cross_entropy_and_categorical_likelihood():
    torch.manual_seed(0)
    logits_net = TensorDictModule(
        MLP(in_features=OBS, out_features=3, num_cells=[8]),
        in_keys=["observation"],
        out_keys=["logits"],
    )
    td = batch()
    td["action"] = torch.randint(3, (12,), generator=torch.Generator().manual_seed(3))
    loss = BCLoss(logits_net)
    assert loss.mode == "discrete" or loss.mode == "deterministic"
    loss = BCLoss(logits_net, mode="discrete")
    out = loss(td.clone())
    with torch.no_grad():
        logits = logits_net(td.select("observation"))["logits"]
    expected = torch.nn.functional.cross_entropy(logits, td["action"])
    torch.testing.assert_close(out["loss_bc"], expected, atol=1e-6, rtol=1e-6)
    actor = ProbabilisticActor(
        logits_net,
        in_keys=["logits"],
        spec=Categorical(3),
        distribution_class=torch.distributions.Categorical,
    )
    out2 = BCLoss(actor)(td.clone())
    torch.testing.assert_close(out2["loss_bc"], expected, atol=1e-6, rtol=1e-6)


def test_reduction_none_is_per_sample_and_per_element_when_deterministic():
    # TorchRL's shapes: [B, A] for the deterministic form, [B] for a log-likelihood
    actor = det_actor()
    td = batch()
    mean = BCLoss(actor)(td.clone())["loss_bc"]
    per = BCLoss(actor, reduction="none")(td.clone())
    assert per["loss_bc"].shape == td["action"].shape
    torch.testing.assert_close(per["loss_bc"].mean(), mean)
    per_s = BCLoss(stoch_actor(), reduction="none")(td.clone())["loss_bc"]
    assert per_s.shape == (12,)
    total = BCLoss(actor, reduction="sum")(td.clone())["loss_bc"]
    torch.testing.assert_close(total, per["loss_bc"].sum())


def test_set_keys_and_pad_mask():
    actor = det_actor(out_key="act")
    loss = BCLoss(actor)
    loss.set_keys(action="act", pad_mask="is_pad")
    td = batch()
    renamed = TensorDict(
        {
            "observation": td["observation"],
            "act": td["action"],
            "is_pad": torch.arange(12) >= 8,
        },
        [12],
    )
    out = loss(renamed)
    with torch.no_grad():
        pred = actor(td.select("observation"))["act"]
    expected = ((pred[:8] - td["action"][:8]) ** 2).mean()
    torch.testing.assert_close(out["loss_bc"], expected, atol=1e-6, rtol=1e-6)
    assert "is_pad" in loss.in_keys


def test_gradients_reach_only_the_actor_and_state_dict_round_trip():
    actor = det_actor()
    loss = BCLoss(actor)
    loss(batch())["loss_bc"].backward()
    assert all(p.grad is not None for p in loss.actor_network_params.values(True, True))
    other = BCLoss(det_actor(seed=5))
    other.load_state_dict(loss.state_dict())
    td = batch()
    torch.testing.assert_close(other(td.clone())["loss_bc"], loss(td.clone())["loss_bc"])


def test_bad_input():
    loss = BCLoss(det_actor())
    td = batch()
    with pytest.raises(OfflineLossError, match="missing the key 'action'"):
        loss(td.exclude("action"))
    bad = td.clone()
    bad["observation"][4, 0] = float("nan")
    with pytest.raises(OfflineLossError, match=r"'observation'.*\(4,\)"):
        loss(bad)
    with pytest.raises(OfflineLossError, match="shape"):
        loss(batch(act_dim=3))
    with pytest.raises(OfflineLossError, match="shape"):
        BCLoss(stoch_actor())(batch(act_dim=3))
    # a NaN in a padded (masked-out) row never reaches loss_bc but would reach gradients
    masked = BCLoss(det_actor())
    masked.set_keys(pad_mask="pad")
    padded = td.clone()
    padded["pad"] = torch.zeros(padded.shape[0], dtype=torch.bool)
    padded["pad"][3] = True
    padded["action"][3, 0] = float("nan")
    with pytest.raises(OfflineLossError, match=r"'action'.*\(3,\)"):
        masked(padded)


def test_runs_inside_torchrl_trainer(pendulum_dataset, run_trainer):
    actor = det_actor(obs_dim=3, act_dim=1)
    loss = BCLoss(actor)
    optimizer = torch.optim.Adam(loss.parameters(), lr=1e-3)
    trainer = run_trainer(loss, optimizer, None, pendulum_dataset.data, optim_steps=3)
    assert trainer._optim_count == 6


def test_learns_on_pendulum_expert_episodes(pendulum_dataset, evaluate_actor):
    data = pendulum_dataset.data
    expert = data[data["episode"] < 4]  # the four near-expert episodes (800 transitions)
    actor = det_actor(hidden=64, obs_dim=3, act_dim=1)
    loss = BCLoss(actor)
    optimizer = torch.optim.Adam(loss.parameters(), lr=3e-3)
    g = torch.Generator().manual_seed(0)
    for _ in range(800):
        out = loss(expert[torch.randint(expert.numel(), (128,), generator=g)])
        optimizer.zero_grad()
        out["loss_bc"].backward()
        optimizer.step()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        score = evaluate_actor(actor, "Pendulum-v1", episodes=3, seed=100)
    # random policy about -1100; measured here: about -290
    assert score > pendulum_dataset.random_return + 300, (score, pendulum_dataset.random_return)
