"""CalQLLoss: CQL whose conservative term bounds the policy's values by the data's returns."""

from __future__ import annotations

import math

import pytest
import torch
from torchrl.objectives import SoftUpdate

from tests.objectives.test_cql import make_actor, make_batch, make_critic, reference_cql
from torchrl_offline.data import make_replay_buffer
from torchrl_offline.data.episodes import EpisodeOrderError, derive_keys
from torchrl_offline.objectives import CalQLLoss, CQLLoss, OfflineLossError
from torchrl_offline.trainers.offline import train

pytestmark = pytest.mark.filterwarnings("ignore:No target network updater")


def make_loss(**kwargs):
    torch.manual_seed(0)
    kwargs.setdefault("num_random", 4)
    loss = CalQLLoss(make_actor(), make_critic(), **kwargs)
    loss.make_value_estimator(gamma=0.9)
    return loss


def _batch(returns):
    data = make_batch()
    data["mc_return"] = returns.reshape(-1, 1)
    return data


# Returns around the critics' initial values: some policy values lifted, some not.
RETURNS = torch.tensor([-0.3, 0.2, 5.0, -5.0, 0.0, 0.1])


@pytest.mark.parametrize(
    "kwargs",
    [{}, {"with_lagrange": False}, {"cql_variant": "rho"}],
    ids=["antmaze", "fixed_weight", "rho"],
)
def test_matches_the_paper_equations(kwargs):
    loss = make_loss(reduction="none", **kwargs)
    if loss.with_lagrange:
        with torch.no_grad():
            loss.log_alpha_prime.fill_(math.log(2.0))
    data = _batch(RETURNS)
    torch.manual_seed(7)
    out = loss(data)
    ref = reference_cql(loss, make_batch(), seed=7, lower_bound=RETURNS)
    for key, expected in ref.items():
        got = data["td_error"] if key == "td_error" else out[key]
        torch.testing.assert_close(got, expected.detach(), rtol=1e-5, atol=1e-5, msg=key)
    assert 0.0 < out["bounded_fraction"][0] < 1.0


def test_without_binding_bounds_it_is_cql():
    """Returns far below every value lift nothing: the same losses as CQLLoss."""
    cal = make_loss(with_lagrange=False, min_q_weight=10.0)
    torch.manual_seed(0)
    cql = CQLLoss(make_actor(), make_critic(), num_random=4, min_q_weight=10.0)
    cql.make_value_estimator(gamma=0.9)
    torch.manual_seed(3)
    a = cal(_batch(torch.full((6,), -1e6)))
    torch.manual_seed(3)
    b = cql(make_batch())
    for key in ("loss_qvalue", "loss_cql", "loss_actor"):
        torch.testing.assert_close(a[key], b[key], msg=key)
    assert a["bounded_fraction"] == 0


def test_the_bound_raises_the_penalty_and_routes_gradients_to_critics_above_it():
    low = make_loss(with_lagrange=False)
    torch.manual_seed(1)
    loose = low(_batch(torch.full((6,), -1e6)))["loss_cql"]
    torch.manual_seed(1)
    high = low(_batch(torch.full((6,), 1e3)))
    assert high["loss_cql"] > loose and high["bounded_fraction"] == 1
    high["loss_cql"].backward()
    # every policy value is lifted to the constant: only uniform and data actions remain
    grads = [p.grad for p in low.qvalue_network_params.values(True, True)]
    assert all(g is not None and torch.isfinite(g).all() for g in grads)
    assert all(p.grad is None for p in low.actor_network_params.values(True, True))


def test_missing_or_misshaped_returns_are_named():
    loss = make_loss()
    assert "mc_return" in loss.in_keys
    with pytest.raises(OfflineLossError, match="mc_return"):
        loss(make_batch())
    bad = make_batch()
    bad["mc_return"] = torch.zeros(6, 2)
    with pytest.raises(OfflineLossError, match="one return per sample"):
        loss(bad)


def test_set_keys_and_presets():
    loss = make_loss()
    loss.set_keys(mc_return="reference_value")
    assert "reference_value" in loss.in_keys
    data = make_batch()
    data["reference_value"] = torch.zeros(6, 1)
    loss(data)
    kitchen = CalQLLoss.from_preset("kitchen", make_actor(), make_critic())
    assert (kitchen.min_q_weight, kitchen.with_lagrange) == (5.0, False)
    default = CalQLLoss(make_actor(), make_critic())
    assert (default.min_q_weight, default.with_lagrange, default.target_action_gap) == (
        5.0,
        True,
        4.0,
    )


def test_learns_on_pendulum(pendulum_dataset, evaluate_actor, one_thread):
    """The CQL test's recipe (test_cql.py) with the returns as the lower bound."""
    torch.manual_seed(0)
    data = derive_keys(pendulum_dataset.data, ["mc_return"], gamma=0.99)
    low, high = torch.tensor([-2.0]), torch.tensor([2.0])
    actor = make_actor(3, 1, low, high, hidden=64)
    loss = CalQLLoss(actor, make_critic(3, 1, hidden=64), num_random=4, with_lagrange=False)
    loss.make_value_estimator(gamma=0.99)
    updater = SoftUpdate(loss, tau=0.01)
    optim = torch.optim.Adam(
        [
            {"params": list(loss.actor_network_params.values(True, True))},
            {"params": [*loss.qvalue_network_params.values(True, True), loss.log_alpha]},
        ],
        lr=1e-3,
    )
    g = torch.Generator().manual_seed(0)
    for _ in range(1600):
        out = loss(data[torch.randint(data.numel(), (64,), generator=g)])
        (out["loss_actor"] + out["loss_qvalue"] + out["loss_cql"] + out["loss_alpha"]).backward()
        optim.step()
        optim.zero_grad()
        updater.step()
    score = evaluate_actor(actor, "Pendulum-v1", episodes=3)
    assert score > pendulum_dataset.random_return + 0.25 * (
        pendulum_dataset.average_return - pendulum_dataset.random_return
    ), (score, pendulum_dataset.random_return, pendulum_dataset.average_return)


def test_train_derives_returns_and_refuses_shuffled_data(pendulum_dataset):
    data = pendulum_dataset.data[:300]
    kw = dict(total_steps=3, batch_size=16, progress=False, logger=None)
    result = train("cal_ql", make_replay_buffer(data), overrides={"hidden_sizes": (8,)}, **kw)
    assert result.step == 3
    assert result.algorithm.derived_keys == ("mc_return", "mc_tail_discount", "mc_tail_observation")
    shuffled = data[torch.randperm(300, generator=torch.Generator().manual_seed(0))]
    with pytest.raises(EpisodeOrderError):
        train("cal_ql", make_replay_buffer(shuffled), overrides={"hidden_sizes": (8,)}, **kw)


def test_bootstrapped_bounds_add_the_target_critics_value_of_the_tail():
    """R(s_t) + gamma^(T-t+1) min_j Qbar_j(s_{T+1}, a), a ~ pi(s_{T+1}), where cut."""
    from tensordict import TensorDict

    from tests.objectives.test_cql import OBS

    loss = make_loss(bootstrap_truncated=True, with_lagrange=False)
    assert {"mc_tail_discount", "mc_tail_observation"} <= set(loss.in_keys)
    assert "mc_tail_observation" not in make_loss().in_keys  # the paper's returns
    data = _batch(RETURNS)
    tail = torch.randn(6, OBS, generator=torch.Generator().manual_seed(5))
    discount = torch.tensor([0.0, 0.5, 0.9, 0.0, 0.25, 1.0])
    data["mc_tail_observation"] = tail
    data["mc_tail_discount"] = discount.reshape(-1, 1)
    torch.manual_seed(11)
    got = loss.reference_values(data)
    torch.manual_seed(11)
    with loss.actor_network_params.to_module(loss.actor_network):
        action = loss.actor_network.get_dist(TensorDict({"observation": tail}, [6])).rsample()
    values = []
    for params in loss.target_qvalue_network_params.unbind(0):
        with params.to_module(loss.qvalue_network):
            td = loss.qvalue_network(TensorDict({"observation": tail, "action": action}, [6]))
        values.append(td["state_action_value"].reshape(-1))
    expected = RETURNS + discount * torch.stack(values).min(0).values
    torch.testing.assert_close(got, expected.detach(), rtol=1e-5, atol=1e-5)
    assert not got.requires_grad  # a bound, not a target to move
    # terminated everywhere: the paper's returns
    data["mc_tail_discount"] = torch.zeros(6, 1)
    torch.testing.assert_close(loss.reference_values(data), RETURNS)
    del data["mc_tail_observation"]
    with pytest.raises(OfflineLossError, match="mc_tail_observation"):
        loss(data)


def test_the_declaration_derives_the_tails_and_train_bootstraps(pendulum_dataset):
    from torchrl_offline.trainers.algorithms import declaration

    assert set(declaration("cal_ql").derived_keys) == {
        "mc_return",
        "mc_tail_discount",
        "mc_tail_observation",
    }
    result = train(
        "cal_ql",
        make_replay_buffer(pendulum_dataset.data[:300]),
        total_steps=3,
        batch_size=32,
        overrides={"hidden_sizes": (16,), "bootstrap_truncated": True},
        logger=None,
        progress=False,
    )
    assert result.algorithm.loss.bootstrap_truncated
