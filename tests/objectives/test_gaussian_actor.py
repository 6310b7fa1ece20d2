"""Tests of the IQL paper's tanh-mean Gaussian actor."""

from __future__ import annotations

import math

import pytest
import torch
from tensordict import TensorDict
from torchrl.data import Bounded, Unbounded
from torchrl.envs.utils import ExplorationType, set_exploration_type
from torchrl.modules import MLP, ValueOperator
from torchrl.objectives import SoftUpdate

from torchrl_offline.objectives.gaussian_actor import (
    TanhMeanGaussian,
    make_tanh_mean_gaussian_actor,
)
from torchrl_offline.objectives.iql import IQLLoss

LOW = torch.tensor([-2.0, 0.0])
HIGH = torch.tensor([2.0, 1.0])


def spec():
    return Bounded(LOW, HIGH, (2,))


def test_loc_inside_box_and_scale_from_log_std():
    torch.manual_seed(0)
    net = TanhMeanGaussian(3, LOW, HIGH, num_cells=[8])
    with torch.no_grad():  # saturate the mean
        net.net[-1].bias.fill_(50.0)
    loc, scale = net(torch.randn(6, 3))
    torch.testing.assert_close(loc, HIGH.expand(6, 2))
    half = (HIGH - LOW) / 2
    torch.testing.assert_close(scale, (half * math.exp(-1.5)).expand(6, 2))
    clamp = TanhMeanGaussian(3, LOW, HIGH, num_cells=[8], log_std_mapping="clamp")
    torch.testing.assert_close(clamp(torch.randn(6, 3))[1], half.expand(6, 2))
    with torch.no_grad():
        clamp.log_std.fill_(-9.0)
    torch.testing.assert_close(clamp.bounded_log_std(), torch.full((2,), -5.0))


def test_hidden_activation_is_relu_by_default():
    net = TanhMeanGaussian(3, LOW, HIGH, num_cells=[8])
    assert any(isinstance(m, torch.nn.ReLU) for m in net.net.modules())
    assert not any(isinstance(m, torch.nn.Tanh) for m in net.net.modules())


def test_deterministic_action_is_loc_and_log_prob_is_gaussian():
    torch.manual_seed(0)
    actor = make_tanh_mean_gaussian_actor(3, spec(), num_cells=[8])
    td = TensorDict({"observation": torch.randn(5, 3)}, [5])
    with set_exploration_type(ExplorationType.DETERMINISTIC):
        out = actor(td.clone())
    torch.testing.assert_close(out["action"], out["loc"])
    dist = actor.get_dist(td.clone())
    bound_action = HIGH.expand(5, 2)  # on the bound: finite, unlike a tanh-squashed actor
    expected = torch.distributions.Normal(out["loc"], out["scale"]).log_prob(bound_action).sum(-1)
    torch.testing.assert_close(dist.log_prob(bound_action), expected)
    assert torch.isfinite(expected).all()


def test_trains_with_iql_loss_and_log_std_gets_gradients():
    torch.manual_seed(0)
    actor = make_tanh_mean_gaussian_actor(3, spec(), num_cells=[8])
    relu = {"num_cells": [8], "activation_class": torch.nn.ReLU}
    qvalue = ValueOperator(
        MLP(in_features=5, out_features=1, **relu), in_keys=["observation", "action"]
    )
    value = ValueOperator(MLP(in_features=3, out_features=1, **relu), in_keys=["observation"])
    loss = IQLLoss(actor, qvalue, value)
    loss.make_value_estimator(gamma=0.99)
    SoftUpdate(loss, tau=0.005)
    n = 16
    batch = TensorDict(
        {
            "observation": torch.randn(n, 3),
            "action": spec().rand((n,)),
            "next": {
                "observation": torch.randn(n, 3),
                "reward": torch.randn(n, 1),
                "done": torch.zeros(n, 1, dtype=torch.bool),
                "terminated": torch.zeros(n, 1, dtype=torch.bool),
            },
        },
        [n],
    )
    batch["action"][0] = HIGH  # a logged action on the bound
    out = loss(batch)
    out["loss_actor"].backward()
    grad = loss.actor_network_params.get(("module", "0", "module", "log_std")).grad
    assert grad is not None and torch.isfinite(grad).all() and grad.abs().sum() > 0


def test_bad_arguments_are_named():
    with pytest.raises(ValueError, match="bounded"):
        make_tanh_mean_gaussian_actor(3, Unbounded(shape=(2,)))
    with pytest.raises(ValueError, match="log_std_mapping"):
        TanhMeanGaussian(3, LOW, HIGH, log_std_mapping="softplus")
    with pytest.raises(ValueError, match="low < high"):
        TanhMeanGaussian(3, HIGH, LOW)
    with pytest.raises(ValueError, match="log_std_bounds"):
        TanhMeanGaussian(3, LOW, HIGH, log_std_bounds=(2.0, -5.0))


def test_tanh_normal_actor_is_flagged_once_for_iql_and_awac(caplog, monkeypatch):
    """A TorchRL-example TanhNormal actor for a weighted-likelihood loss gets a one-time
    logged advice naming the measured difference and the paper's actor."""
    import logging

    from tensordict.nn import NormalParamExtractor, TensorDictModule
    from torchrl.data import Bounded
    from torchrl.modules import MLP, ProbabilisticActor, TanhNormal, ValueOperator

    from torchrl_offline.objectives import AWACLoss, IQLLoss, make_tanh_mean_gaussian_actor
    from torchrl_offline.objectives import gaussian_actor as module

    monkeypatch.setattr(module, "_ADVISED", set())
    spec = Bounded(-1.0, 1.0, (1,))

    def tanh_normal():
        net = torch.nn.Sequential(MLP(in_features=3, out_features=2, num_cells=[8]),
                                  NormalParamExtractor())  # fmt: skip
        body = TensorDictModule(net, in_keys=["observation"], out_keys=["loc", "scale"])
        return ProbabilisticActor(
            body, in_keys=["loc", "scale"], spec=spec, distribution_class=TanhNormal
        )

    def q():
        return ValueOperator(MLP(in_features=4, out_features=1, num_cells=[8]),
                             in_keys=["observation", "action"])  # fmt: skip

    def v():
        return ValueOperator(MLP(in_features=3, out_features=1, num_cells=[8]),
                             in_keys=["observation"])  # fmt: skip

    with caplog.at_level(logging.WARNING, logger="torchrl_offline"):
        IQLLoss(make_tanh_mean_gaussian_actor(3, spec, num_cells=[8]), q(), v())
        assert not caplog.records
        IQLLoss(tanh_normal(), q(), v())
        IQLLoss(tanh_normal(), q(), v())
        AWACLoss(tanh_normal(), q())
    messages = [r.getMessage() for r in caplog.records]
    assert len(messages) == 2  # once per loss
    assert "IQLLoss" in messages[0] and "-1014" in messages[0]
    assert "make_tanh_mean_gaussian_actor" in messages[0]
    assert "AWACLoss" in messages[1] and "-822" in messages[1]
