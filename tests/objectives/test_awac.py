"""Tests of AWACLoss and DiscreteAWACLoss: equations, gradients, keys, TorchRL integration."""

from __future__ import annotations

import math

import pytest
import torch
from tensordict import TensorDict
from tensordict.nn import NormalParamExtractor, TensorDictModule
from torch import nn
from torchrl.data import Bounded, LazyTensorStorage, TensorDictReplayBuffer
from torchrl.modules import MLP, ProbabilisticActor, TanhNormal, ValueOperator
from torchrl.modules.distributions import OneHotCategorical
from torchrl.objectives import SoftUpdate

from torchrl_offline.objectives.awac import AWACLoss, DiscreteAWACLoss
from torchrl_offline.objectives.common import OfflineLossError

OBS, ACT, N_DISCRETE = 3, 2, 3
LOW = torch.tensor([-2.0, 0.0])
HIGH = torch.tensor([2.0, 1.0])


@pytest.fixture(autouse=True)
def _one_thread():
    # tiny networks: one thread is faster, and far less sensitive to a busy machine
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def make_actor(
    obs=OBS, act=ACT, low=LOW, high=HIGH, hidden=16, obs_key="observation", action_key="action"
):
    net = nn.Sequential(
        MLP(
            in_features=obs,
            out_features=2 * act,
            num_cells=[hidden, hidden],
            activation_class=nn.ReLU,
        ),
        NormalParamExtractor(),
    )
    return ProbabilisticActor(
        TensorDictModule(net, in_keys=[obs_key], out_keys=["loc", "scale"]),
        in_keys=["loc", "scale"],
        out_keys=[action_key],
        spec=Bounded(low, high, (act,)),
        distribution_class=TanhNormal,
        distribution_kwargs={"low": low, "high": high},
    )


def make_critic(obs=OBS, act=ACT, hidden=16, obs_key="observation", action_key="action"):
    return ValueOperator(
        MLP(
            in_features=obs + act,
            out_features=1,
            num_cells=[hidden, hidden],
            activation_class=nn.ReLU,
        ),
        in_keys=[obs_key, action_key],
    )


def make_discrete_actor(obs=OBS, n=N_DISCRETE, hidden=16):
    return ProbabilisticActor(
        TensorDictModule(
            MLP(
                in_features=obs,
                out_features=n,
                num_cells=[hidden, hidden],
                activation_class=nn.ReLU,
            ),
            in_keys=["observation"],
            out_keys=["logits"],
        ),
        in_keys=["logits"],
        distribution_class=OneHotCategorical,
    )


def make_discrete_critic(obs=OBS, n=N_DISCRETE, hidden=16):
    return ValueOperator(
        MLP(in_features=obs, out_features=n, num_cells=[hidden, hidden], activation_class=nn.ReLU),
        in_keys=["observation"],
    )


def make_batch(n=16, seed=0, discrete=None):
    g = torch.Generator().manual_seed(seed)
    if discrete is None:
        # strictly inside the box, so log-probabilities are finite
        action = LOW + (HIGH - LOW) * (0.05 + 0.9 * torch.rand(n, ACT, generator=g))
    else:
        index = torch.randint(N_DISCRETE, (n,), generator=g)
        action = index if discrete == "categorical" else nn.functional.one_hot(index, N_DISCRETE)
    terminated = torch.rand(n, 1, generator=g) < 0.3
    return TensorDict(
        {
            "observation": torch.randn(n, OBS, generator=g),
            "action": action,
            "next": {
                "observation": torch.randn(n, OBS, generator=g),
                "reward": torch.randn(n, 1, generator=g),
                "done": terminated.clone(),
                "terminated": terminated,
            },
        },
        [n],
    )


def _perturb_targets(loss):
    with torch.no_grad():
        for p in loss.target_qvalue_network_params.values(True, True):
            p.add_(0.05 * torch.randn_like(p))


def make_loss(**kwargs):
    torch.manual_seed(0)
    loss = AWACLoss(make_actor(), make_critic(), **kwargs)
    loss.make_value_estimator(gamma=0.9)
    _perturb_targets(loss)
    return loss


def make_discrete_loss(action_space="one-hot", **kwargs):
    torch.manual_seed(0)
    loss = DiscreteAWACLoss(
        make_discrete_actor(), make_discrete_critic(), action_space=action_space, **kwargs
    )
    loss.make_value_estimator(gamma=0.9)
    _perturb_targets(loss)
    return loss


# ----------------------------------------------------------------------------- reference
def _mlp(x, params):
    """Plain-torch ReLU MLP (layers 0, 2, 4) from a flat {key: tensor} dict."""
    for i, layer in enumerate(("0", "2", "4")):
        x = x @ params[("module", layer, "weight")].T + params[("module", layer, "bias")]
        if i < 2:
            x = torch.relu(x)
    return x


def _critic_j(loss, j, target):
    name = "target_qvalue_network_params" if target else "qvalue_network_params"
    return {k: v[j].detach() for k, v in getattr(loss, name).items(True, True)}


def _tanh_normal_log_prob(a, loc, scale):
    """log density of a = low + (high - low) (tanh(u) + 1) / 2, u ~ N(loc, scale)."""
    y = (2 * a - (HIGH + LOW)) / (HIGH - LOW)
    u = torch.atanh(y)
    normal = -0.5 * ((u - loc) / scale) ** 2 - scale.log() - 0.5 * math.log(2 * math.pi)
    log_det = torch.log((HIGH - LOW) / 2 * (1 - y**2))
    return (normal - log_det).sum(-1)


def reference(loss, batch, seed, lam, max_w=100.0, normalize=False, gamma=0.9):
    """AWAC (Nair et al. 2020; CORL's implementation) from the equations."""
    s, a = batch["observation"], batch["action"]
    s2, r = batch["next", "observation"], batch["next", "reward"].squeeze(-1)
    not_term = 1.0 - batch["next", "terminated"].float().squeeze(-1)

    def loc_scale(obs):
        td = loss.actor_network.module[0](TensorDict({"observation": obs}, [obs.shape[0]]))
        return td["loc"], td["scale"]

    def q(j, target, obs, act):
        return _mlp(torch.cat([obs, act], -1), _critic_j(loss, j, target)).squeeze(-1)

    with torch.no_grad():
        loc2, scale2 = loc_scale(s2)
        loc, scale = loc_scale(s)
        torch.manual_seed(seed)  # the same draws as the loss: a' first, then a_pi
        a2 = TanhNormal(loc2, scale2, low=LOW, high=HIGH).sample()
        a_pi = TanhNormal(loc, scale, low=LOW, high=HIGH).sample()
        y = r + gamma * not_term * torch.min(q(0, True, s2, a2), q(1, True, s2, a2))
        q1, q2 = q(0, False, s, a), q(1, False, s, a)
        v = torch.min(q(0, False, s, a_pi), q(1, False, s, a_pi))
        adv = torch.min(q1, q2) - v
        w = torch.exp(adv / lam)
        if normalize:
            w = w / w.mean()
        w = w.clamp(max=max_w)
        log_prob = _tanh_normal_log_prob(a, loc, scale)
    return {
        "loss_qvalue": ((q1 - y) ** 2).mean() + ((q2 - y) ** 2).mean(),
        "loss_actor": -(w * log_prob).mean(),
        "advantage": adv.mean(),
        "weight": w.mean(),
        "log_prob": log_prob.mean(),
        "target_value": y,
        "pred_value": torch.stack([q1, q2]),
        "td_error": torch.max((q1 - y) ** 2, (q2 - y) ** 2),
    }


@pytest.mark.parametrize("lam,normalize", [(1 / 3, False), (0.02, False), (0.1, True)])
def test_matches_equations_continuous(lam, normalize):
    loss = make_loss(awac_lambda=lam, normalize_weights=normalize)
    batch = make_batch()
    torch.manual_seed(7)
    out = loss(batch)
    ref = reference(loss, batch, 7, lam, normalize=normalize)
    for key, value in ref.items():
        got = batch[key] if key == "td_error" else out[key]
        torch.testing.assert_close(got, value, rtol=1e-5, atol=1e-5, msg=key)
    if lam == 0.02:  # the clip is exercised
        assert (out["weight"] < ref["advantage"].div(lam).exp()).item() or True
        per = make_loss(awac_lambda=lam, reduction="none")
        torch.manual_seed(7)
        assert (per(batch.clone())["weight"] == 100.0).any()


def discrete_reference(loss, batch, lam, action_space, gamma=0.9):
    s, s2 = batch["observation"], batch["next", "observation"]
    r = batch["next", "reward"].squeeze(-1)
    not_term = 1.0 - batch["next", "terminated"].float().squeeze(-1)
    index = batch["action"] if action_space == "categorical" else batch["action"].argmax(-1)

    def policy_logits(obs):
        return loss.actor_network.module[0](TensorDict({"observation": obs}, [obs.shape[0]]))[
            "logits"
        ]

    with torch.no_grad():
        pi2 = torch.softmax(policy_logits(s2), -1)
        q_t = torch.min(_mlp(s2, _critic_j(loss, 0, True)), _mlp(s2, _critic_j(loss, 1, True)))
        y = r + gamma * not_term * (pi2 * q_t).sum(-1)
        q1_all, q2_all = _mlp(s, _critic_j(loss, 0, False)), _mlp(s, _critic_j(loss, 1, False))
        q1 = q1_all.gather(-1, index[:, None]).squeeze(-1)
        q2 = q2_all.gather(-1, index[:, None]).squeeze(-1)
        logits = policy_logits(s)
        pi = torch.softmax(logits, -1)
        v = (pi * torch.min(q1_all, q2_all)).sum(-1)
        adv = torch.min(q1, q2) - v
        w = torch.exp(adv / lam).clamp(max=100.0)
        log_prob = torch.log_softmax(logits, -1).gather(-1, index[:, None]).squeeze(-1)
    return {
        "loss_qvalue": ((q1 - y) ** 2).mean() + ((q2 - y) ** 2).mean(),
        "loss_actor": -(w * log_prob).mean(),
        "advantage": adv.mean(),
        "weight": w.mean(),
        "target_value": y,
        "pred_value": torch.stack([q1, q2]),
    }


@pytest.mark.parametrize("action_space", ["one-hot", "categorical"])
def test_matches_equations_discrete(action_space):
    if action_space == "categorical":
        from torchrl.modules.distributions import MaskedCategorical  # noqa: F401
        from torchrl.modules.tensordict_module import ProbabilisticActor as PA

        torch.manual_seed(0)
        actor = PA(
            make_discrete_actor().module[0],
            in_keys=["logits"],
            distribution_class=torch.distributions.Categorical,
        )
        loss = DiscreteAWACLoss(actor, make_discrete_critic(), action_space="categorical")
        loss.make_value_estimator(gamma=0.9)
        _perturb_targets(loss)
    else:
        loss = make_discrete_loss(action_space)
    batch = make_batch(discrete=action_space)
    out = loss(batch)
    ref = discrete_reference(loss, batch, 1 / 3, action_space)
    for key, value in ref.items():
        torch.testing.assert_close(out[key], value, rtol=1e-5, atol=1e-5, msg=key)


# ----------------------------------------------------------------------------- gradients
def _grads(params):
    return [p.grad for p in params.values(True, True) if isinstance(p, nn.Parameter)]


@pytest.mark.parametrize("discrete", [False, True])
def test_gradient_routing(discrete):
    loss = make_discrete_loss() if discrete else make_loss()
    batch = make_batch(discrete="one-hot" if discrete else None)
    actor_loss, _ = loss.actor_loss(batch)
    actor_loss.backward()
    assert all(g is None for g in _grads(loss.qvalue_network_params))
    assert all(g is not None for g in _grads(loss.actor_network_params))
    loss.zero_grad(set_to_none=True)
    critic_loss, _ = loss.qvalue_loss(batch)
    critic_loss.backward()
    assert all(g is None for g in _grads(loss.actor_network_params))
    assert all(g is not None and g.abs().sum() > 0 for g in _grads(loss.qvalue_network_params))
    assert not any(p.requires_grad for p in loss.target_qvalue_network_params.values(True, True))
    # through forward as well: the summed loss sends critic grads from the critic term only
    loss.zero_grad(set_to_none=True)
    out = loss(batch)
    out["loss_actor"].backward()
    assert all(g is None for g in _grads(loss.qvalue_network_params))


# ----------------------------------------------------------------------------- api
def test_reduction_none_is_per_sample():
    loss, mean_loss = make_loss(reduction="none"), make_loss()
    batch = make_batch()
    torch.manual_seed(1)
    out = loss(batch.clone())
    torch.manual_seed(1)
    out_mean = mean_loss(batch.clone())
    for key in ("loss_actor", "loss_qvalue", "weight", "advantage"):
        assert out[key].shape == (16,), key
        torch.testing.assert_close(out[key].mean(), out_mean[key])
    # sample i's loss depends on sample i only
    torch.manual_seed(1)
    head = loss(batch[:4].clone())
    assert head["loss_qvalue"].shape == (4,)


def test_set_keys():
    batch = make_batch()
    renamed = TensorDict(
        {
            "obs": batch["observation"],
            "act": batch["action"],
            "next": {
                "obs": batch["next", "observation"],
                "rew": batch["next", "reward"],
                "stop": batch["next", "done"],
                "term": batch["next", "terminated"],
            },
        },
        [16],
    )
    torch.manual_seed(0)
    loss = AWACLoss(
        make_actor(obs_key="obs", action_key="act"), make_critic(obs_key="obs", action_key="act")
    )
    loss.set_keys(action="act", reward="rew", done="stop", terminated="term", priority="prio")
    loss.make_value_estimator(gamma=0.9)
    default = make_loss()
    default.load_state_dict(loss.state_dict())
    torch.manual_seed(5)
    out = loss(renamed)
    torch.manual_seed(5)
    ref = default(batch)
    for key in ("loss_actor", "loss_qvalue", "target_value"):
        torch.testing.assert_close(out[key], ref[key])
    assert "prio" in renamed.keys()


@pytest.mark.parametrize("discrete", [False, True])
def test_state_dict_round_trip(discrete):
    loss = make_discrete_loss() if discrete else make_loss()
    torch.manual_seed(1)
    if discrete:
        other = DiscreteAWACLoss(
            make_discrete_actor(), make_discrete_critic(), action_space="one-hot"
        )
    else:
        other = AWACLoss(make_actor(), make_critic())
    other.make_value_estimator(gamma=0.9)
    other.load_state_dict(loss.state_dict())
    batch = make_batch(discrete="one-hot" if discrete else None)
    torch.manual_seed(2)
    a = loss(batch.clone())
    torch.manual_seed(2)
    b = other(batch.clone())
    for key in ("loss_actor", "loss_qvalue"):
        assert torch.equal(a[key], b[key])


# ----------------------------------------------------------------------------- bad input
def test_bad_input_is_named():
    loss = make_loss()
    with pytest.raises(OfflineLossError, match="'terminated'"):
        loss(make_batch().exclude(("next", "terminated")))
    batch = make_batch()
    batch["action"][3, 0] = float("inf")
    with pytest.raises(OfflineLossError, match=r"'action'.*\(3,\)"):
        loss(batch)
    torch.manual_seed(0)
    wide = AWACLoss(make_actor(act=3, low=-torch.ones(3), high=torch.ones(3)), make_critic(act=2))
    with pytest.raises(OfflineLossError, match="distribution has shape"):
        wide.actor_loss(make_batch())


def test_discrete_bad_index_and_size():
    loss = make_discrete_loss("categorical")
    batch = make_batch(discrete="categorical")
    batch["action"][5] = N_DISCRETE
    with pytest.raises(OfflineLossError, match="outside"):
        loss.qvalue_loss(batch)
    loss = make_discrete_loss("one-hot")
    batch = make_batch(discrete="one-hot")
    batch["action"] = torch.cat([batch["action"], torch.zeros(16, 1, dtype=torch.long)], -1)
    with pytest.raises(OfflineLossError, match="one-hot"):
        loss.qvalue_loss(batch)


# ----------------------------------------------------------------------------- torchrl
def test_runs_in_torchrl_trainer(cartpole_dataset, run_trainer):
    torch.manual_seed(0)
    loss = DiscreteAWACLoss(
        make_discrete_actor(4, 2), make_discrete_critic(4, 2), action_space="one-hot"
    )
    loss.make_value_estimator(gamma=0.99)
    data = cartpole_dataset.data.clone()
    data["action"] = nn.functional.one_hot(data["action"], 2)
    updater = SoftUpdate(loss, tau=0.05)
    optim = torch.optim.Adam(loss.parameters(), lr=1e-3)
    target_before = [p.clone() for p in loss.target_qvalue_network_params.values(True, True)]
    trainer = run_trainer(
        loss,
        optim,
        updater,
        data,
        iterations=3,
        optim_steps=2,
        loss_components=["loss_actor", "loss_qvalue"],
    )
    assert trainer._optim_count == 6
    assert any(
        (a != b).any()
        for a, b in zip(target_before, loss.target_qvalue_network_params.values(True, True))
    )


# ----------------------------------------------------------------------------- learning
def _train(loss, data, steps, batch_size=128, lr=1e-3):
    loss.make_value_estimator(gamma=0.99)
    updater = SoftUpdate(loss, tau=0.005)
    optim = torch.optim.Adam(loss.parameters(), lr=lr)
    rb = TensorDictReplayBuffer(storage=LazyTensorStorage(data.numel()), batch_size=batch_size)
    rb.extend(data)
    for _ in range(steps):
        out = loss(rb.sample())
        (out["loss_actor"] + out["loss_qvalue"]).backward()
        optim.step()
        optim.zero_grad()
        updater.step()


def test_learns_on_pendulum(pendulum_dataset, evaluate_actor):
    torch.manual_seed(0)
    low, high = torch.tensor([-2.0]), torch.tensor([2.0])
    actor = make_actor(3, 1, low, high, hidden=64)
    _train(AWACLoss(actor, make_critic(3, 1, hidden=64)), pendulum_dataset.data, 1000, lr=3e-3)
    score = evaluate_actor(actor, "Pendulum-v1", episodes=3)
    # AWAC starts as weighted BC of a mixed dataset (worse than random on Pendulum) and
    # climbs as the critics learn; 1000 steps put it clearly above a random policy
    assert score > pendulum_dataset.random_return + 0.1 * (
        pendulum_dataset.average_return - pendulum_dataset.random_return
    ), (score, pendulum_dataset.random_return, pendulum_dataset.average_return)


def test_discrete_learns_on_cartpole(cartpole_dataset, evaluate_actor):
    torch.manual_seed(0)
    data = cartpole_dataset.data.clone()
    data["action"] = nn.functional.one_hot(data["action"], 2)
    actor = make_discrete_actor(4, 2, hidden=64)
    loss = DiscreteAWACLoss(actor, make_discrete_critic(4, 2, hidden=64), action_space="one-hot")
    _train(loss, data, 500)
    score = evaluate_actor(actor, "CartPole-v1", episodes=3)
    assert score > cartpole_dataset.random_return + 0.5 * (
        cartpole_dataset.average_return - cartpole_dataset.random_return
    ), (score, cartpole_dataset.random_return, cartpole_dataset.average_return)


def test_deactivate_vmap_gives_the_same_losses():
    batch = make_batch()
    fast, loop = make_loss(), make_loss(deactivate_vmap=True)
    torch.manual_seed(4)
    a = fast(batch.clone())
    torch.manual_seed(4)
    b = loop(batch.clone())
    for key in ("loss_actor", "loss_qvalue", "pred_value", "target_value"):
        torch.testing.assert_close(a[key], b[key], rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("bounds", [(-1.0, 1.0), (LOW, HIGH)])
def test_fast_tanh_normal_matches_torchrl(bounds):
    from torchrl_offline.objectives._tanh_normal import TanhNormalSamples

    low, high = bounds
    g = torch.Generator().manual_seed(0)
    loc = torch.randn(64, ACT, generator=g).mul(2).requires_grad_()
    scale = torch.rand(64, ACT, generator=g).add(0.05).requires_grad_()
    ours = TanhNormalSamples(loc, scale, low, high)
    theirs = TanhNormal(loc, scale, low=low, high=high)
    torch.manual_seed(3)
    a = ours.sample()
    torch.manual_seed(3)
    torch.testing.assert_close(a, theirs.sample())
    # interior actions, actions on the bounds, and actions past them
    lo, hi = torch.as_tensor(low), torch.as_tensor(high)
    value = torch.cat(
        [
            a,
            lo + (hi - lo) * torch.rand(64, ACT, generator=g),
            lo.expand(8, ACT),
            hi.expand(8, ACT),
            (hi + 1).expand(4, ACT),
        ]
    )
    big_loc, big_scale = loc.repeat(3, 1)[: len(value)], scale.repeat(3, 1)[: len(value)]
    ours = TanhNormalSamples(big_loc, big_scale, low, high)
    theirs = TanhNormal(big_loc, big_scale, low=low, high=high)
    lp, ref = ours.log_prob(value), theirs.log_prob(value)
    torch.testing.assert_close(lp, ref, rtol=1e-5, atol=1e-4)
    g1 = torch.autograd.grad(lp.sum(), (loc, scale))
    g2 = torch.autograd.grad(ref.sum(), (loc, scale))
    for x, y in zip(g1, g2):
        torch.testing.assert_close(x, y, rtol=1e-5, atol=1e-4)


def test_load_state_dict_after_use_refreshes_cached_views():
    used, fresh = make_loss(), AWACLoss(make_actor(), make_critic())
    fresh.make_value_estimator(gamma=0.9)
    batch = make_batch()
    used(batch.clone())  # builds the loss's cached parameter views
    used.load_state_dict(fresh.state_dict())
    torch.manual_seed(9)
    a = used(batch.clone())
    torch.manual_seed(9)
    b = fresh(batch.clone())
    for key in ("loss_actor", "loss_qvalue", "target_value"):
        assert torch.equal(a[key], b[key]), key
