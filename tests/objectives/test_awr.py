"""AWRLoss / DiscreteAWRLoss: the paper's two regressions, written out in plain torch."""

from __future__ import annotations

import math

import pytest
import torch
from tensordict import TensorDict
from tensordict.nn import NormalParamExtractor, TensorDictModule
from torch import nn
from torchrl.data import Bounded, LazyTensorStorage, TensorDictReplayBuffer, Unbounded
from torchrl.modules import MLP, ProbabilisticActor, ValueOperator
from torchrl.modules.distributions import OneHotCategorical

from torchrl_offline.data import make_replay_buffer
from torchrl_offline.data.episodes import EpisodeOrderError, derive_keys
from torchrl_offline.objectives import AWRLoss, DiscreteAWRLoss, OfflineLossError
from torchrl_offline.objectives.awr import AWR_ALGORITHM
from torchrl_offline.trainers.algorithms import build_algorithm
from torchrl_offline.trainers.offline import train


def _normal_actor(n_obs=3, n_act=2, hidden=16):
    """A plain Normal actor: its log-density is easy to write out by hand."""
    body = nn.Sequential(
        MLP(in_features=n_obs, out_features=2 * n_act, num_cells=[hidden]), NormalParamExtractor()
    )
    return ProbabilisticActor(
        TensorDictModule(body, in_keys=["observation"], out_keys=["loc", "scale"]),
        in_keys=["loc", "scale"],
        distribution_class=torch.distributions.Normal,
    )


def _value(n_obs=3, hidden=16):
    return ValueOperator(
        MLP(in_features=n_obs, out_features=1, num_cells=[hidden]), in_keys=["observation"]
    )


def _batch(n=32, n_obs=3, n_act=2, seed=0):
    g = torch.Generator().manual_seed(seed)
    return TensorDict(
        {
            "observation": torch.randn(n, n_obs, generator=g),
            "action": torch.randn(n, n_act, generator=g),
            "mc_return": torch.randn(n, 1, generator=g) * 5,
            # half the steps are in episodes cut by a time limit (a nonzero discount)
            "mc_tail_discount": (torch.rand(n, 1, generator=g) > 0.5) * 0.9,
            "mc_tail_observation": torch.randn(n, n_obs, generator=g),
        },
        [n],
    )


def _paper_losses(actor, value, batch, beta, max_weight):
    """AWR (Peng et al., 2019) in plain torch: L_V = (V(s) - R)^2,
    L_pi = -min(exp(norm(R - V(s)) / beta), w_max) log N(a; mu(s), sigma(s)), with R the
    logged return bootstrapped with V after a cut episode's end (the paper's code)."""
    mlp = actor.module[0].module[0]
    v_mlp = value.module
    s, a = batch["observation"], batch["action"]
    with torch.no_grad():
        tail = batch["mc_tail_discount"].squeeze(-1) * v_mlp(batch["mc_tail_observation"]).squeeze(
            -1
        )
    ret = batch["mc_return"].squeeze(-1) + tail
    v = v_mlp(s).squeeze(-1)
    loc, raw = mlp(s).chunk(2, -1)
    # NormalParamExtractor's default map: softplus(x + b) + 0.01 with softplus(b) = 0.99
    scale = nn.functional.softplus(raw + math.log(math.expm1(0.99))) + 0.01
    log_prob = (-((a - loc) ** 2) / (2 * scale**2) - scale.log() - 0.5 * math.log(2 * math.pi)).sum(
        -1
    )
    adv = (ret - v).detach()
    adv = (adv - adv.mean()) / (adv.std(unbiased=False) + 1e-5)
    weight = torch.exp(adv / beta).clamp(max=max_weight)
    return -(weight * log_prob).mean(), ((v - ret) ** 2).mean()


@pytest.mark.parametrize("beta", [1.0, 0.3])
def test_matches_paper_equations(beta):
    torch.manual_seed(0)
    actor, value = _normal_actor(), _value()
    loss = AWRLoss(actor, value, beta=beta, max_weight=3.0)
    batch = _batch()
    out = loss(batch)
    expected_actor, expected_value = _paper_losses(actor, value, batch, beta, 3.0)
    torch.testing.assert_close(out["loss_actor"], expected_actor, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(out["loss_value"], expected_value, atol=1e-5, rtol=1e-5)


def test_discrete_matches_paper_equations():
    torch.manual_seed(0)
    n_obs, n_act = 4, 3
    logits = MLP(in_features=n_obs, out_features=n_act, num_cells=[16])
    actor = ProbabilisticActor(
        TensorDictModule(logits, in_keys=["observation"], out_keys=["logits"]),
        in_keys=["logits"],
        distribution_class=OneHotCategorical,
    )
    value = _value(n_obs)
    idx = torch.randint(n_act, (16,))
    batch = TensorDict(
        {
            "observation": torch.randn(16, n_obs),
            "action": nn.functional.one_hot(idx, n_act),
            "mc_return": torch.randn(16, 1),
        },
        [16],
    )
    out = DiscreteAWRLoss(
        actor, value, action_space="one-hot", normalize_advantage=False, bootstrap_truncated=False
    )(batch)
    v = value.module(batch["observation"]).squeeze(-1)
    log_prob = logits(batch["observation"]).log_softmax(-1).gather(-1, idx[:, None]).squeeze(-1)
    weight = torch.exp(batch["mc_return"].squeeze(-1) - v).detach().clamp(max=20.0)
    torch.testing.assert_close(out["loss_actor"], -(weight * log_prob).mean(), atol=1e-5, rtol=0)


def test_gradient_routing():
    torch.manual_seed(0)
    loss = AWRLoss(_normal_actor(), _value())
    batch = _batch()
    actor_params = list(loss.actor_network_params.values(True, True))
    value_params = list(loss.value_network_params.values(True, True))
    loss.actor_loss(batch)[0].backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in actor_params)
    assert all(p.grad is None for p in value_params)  # the advantage is detached
    loss.zero_grad()
    for p in actor_params:
        p.grad = None
    loss.value_loss(batch)[0].backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in value_params)
    assert all(p.grad is None for p in actor_params)


def test_reduction_none_is_per_sample_and_sums_to_the_mean():
    torch.manual_seed(0)
    batch = _batch()
    actor, value = _normal_actor(), _value()
    per = AWRLoss(actor, value, reduction="none")(batch)
    mean = AWRLoss(actor, value)(batch)
    assert per["loss_actor"].shape == (32,) and per["loss_value"].shape == (32,)
    torch.testing.assert_close(per["loss_actor"].mean(), mean["loss_actor"])
    torch.testing.assert_close(per["loss_value"].mean(), mean["loss_value"])


def test_weights_are_clipped():
    torch.manual_seed(0)
    batch = _batch()
    out = AWRLoss(_normal_actor(), _value(), beta=0.01, max_weight=2.0, reduction="none")(batch)
    assert out["weight"].max() <= 2.0 and out["weight"].min() >= 0


def test_set_keys_reads_another_return():
    torch.manual_seed(0)
    batch = _batch()
    loss = AWRLoss(_normal_actor(), _value())
    expected = loss(batch)["loss_value"]
    renamed = batch.rename_key_("mc_return", "lambda_return")
    loss.set_keys(value_target="lambda_return")
    assert "lambda_return" in loss.in_keys and "mc_return" not in loss.in_keys
    torch.testing.assert_close(loss(renamed)["loss_value"], expected)


def test_missing_return_and_nan_are_named():
    loss = AWRLoss(_normal_actor(), _value())
    with pytest.raises(OfflineLossError, match="mc_return"):
        loss(_batch().exclude("mc_return"))
    bad = _batch()
    bad["mc_return"][3] = float("nan")
    with pytest.raises(OfflineLossError, match="mc_return"):
        loss(bad)


def test_bad_arguments_are_refused():
    with pytest.raises(ValueError, match="beta"):
        AWRLoss(_normal_actor(), _value(), beta=0.0)
    with pytest.raises(ValueError, match="action_space"):
        DiscreteAWRLoss(_normal_actor(), _value(), action_space="binary")


def test_state_dict_round_trip():
    torch.manual_seed(0)
    a = AWRLoss(_normal_actor(), _value())
    b = AWRLoss(_normal_actor(), _value())
    b.load_state_dict(a.state_dict())
    batch = _batch()
    torch.testing.assert_close(a(batch)["loss_value"], b(batch)["loss_value"])


def test_learns_on_pendulum(pendulum_dataset, evaluate_actor):
    torch.manual_seed(0)
    data = derive_keys(pendulum_dataset.data, AWR_ALGORITHM.derived_keys, gamma=0.99)
    algo = build_algorithm(
        "awr", Unbounded(shape=(3,)), Bounded(-2.0, 2.0, (1,)), hidden_sizes=(64, 64)
    )
    rb = TensorDictReplayBuffer(storage=LazyTensorStorage(data.numel()), batch_size=128)
    rb.extend(data)
    for _ in range(400):
        out = algo.loss(rb.sample())
        (out["loss_actor"] + out["loss_value"]).backward()
        algo.optimizer.step()
        algo.optimizer.zero_grad()
    score = evaluate_actor(algo.policy, "Pendulum-v1", episodes=3)
    assert score > pendulum_dataset.random_return + 0.25 * (
        pendulum_dataset.average_return - pendulum_dataset.random_return
    ), (score, pendulum_dataset.random_return, pendulum_dataset.average_return)


def test_train_derives_the_returns_and_refuses_shuffled_data(pendulum_dataset):
    data = pendulum_dataset.data[:400]
    result = train(
        "awr",
        make_replay_buffer(data, batch_size=32),
        total_steps=5,
        batch_size=32,
        progress=False,
        logger=None,
        overrides={"hidden_sizes": (16,)},
    )
    assert result.step == 5
    shuffled = data[torch.randperm(400, generator=torch.Generator().manual_seed(0))]
    with pytest.raises(EpisodeOrderError, match="'mc_return'.*episode order"):
        train(
            "awr",
            make_replay_buffer(shuffled, batch_size=32),
            total_steps=5,
            batch_size=32,
            progress=False,
            logger=None,
            overrides={"hidden_sizes": (16,)},
        )


def test_a_terminated_episode_is_not_bootstrapped_and_a_cut_one_is():
    torch.manual_seed(0)
    loss = AWRLoss(_normal_actor(), _value(), reduction="none")
    batch = _batch()
    batch["mc_tail_discount"].zero_()  # every episode terminated: the plain return
    plain = AWRLoss(_normal_actor(), _value(), bootstrap_truncated=False, reduction="none")
    plain.load_state_dict(loss.state_dict())
    torch.testing.assert_close(loss(batch)["loss_value"], plain(batch)["loss_value"])
    batch["mc_tail_discount"].fill_(0.5)
    assert not torch.allclose(loss(batch)["loss_value"], plain(batch)["loss_value"])


def test_td_lambda_target_reads_its_column_as_it_is():
    """value_target='td_lambda': V is fitted to the batch's td_lambda_return, with no tail
    bootstrap (the TD(lambda) return bootstraps itself), the tail entries not read."""
    torch.manual_seed(0)
    mc = AWRLoss(_normal_actor(), _value(), bootstrap_truncated=False)
    td = AWRLoss(_normal_actor(), _value(), value_target="td_lambda")
    td.load_state_dict(mc.state_dict())
    batch = _batch()
    assert "td_lambda_return" in td.in_keys
    assert not {"mc_return", "mc_tail_discount", "mc_tail_observation"} & set(td.in_keys)
    column = batch.select("observation", "action").set("td_lambda_return", batch["mc_return"])
    expected = mc(batch)
    out = td(column)
    torch.testing.assert_close(out["loss_value"], expected["loss_value"])
    torch.testing.assert_close(out["loss_actor"], expected["loss_actor"])
    with pytest.raises(OfflineLossError, match="td_lambda_return"):
        td(batch)  # the Monte Carlo entries are not what it reads
    with pytest.raises(ValueError, match="value_target must be one of"):
        AWRLoss(_normal_actor(), _value(), value_target="gae")
