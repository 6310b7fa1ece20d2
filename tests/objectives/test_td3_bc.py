"""Tests of TD3BCLoss: equations, gradients, call semantics, keys, TorchRL integration."""

from __future__ import annotations

import pytest
import torch
from tensordict import TensorDict
from tensordict.nn import TensorDictModule, TensorDictSequential
from torch import nn
from torchrl.data import Bounded, LazyTensorStorage, TensorDictReplayBuffer
from torchrl.envs.utils import ExplorationType, set_exploration_type
from torchrl.modules import MLP, TanhModule, ValueOperator
from torchrl.objectives import SoftUpdate
from torchrl.objectives import TD3BCLoss as TorchRLTD3BCLoss

from torchrl_offline.objectives.common import OfflineLossError
from torchrl_offline.objectives.td3_bc import TD3BCLoss

OBS, ACT = 3, 2


@pytest.fixture(autouse=True)
def _one_thread():
    # tiny networks: one thread is faster, and far less sensitive to a busy machine
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


LOW = torch.tensor([-2.0, 0.0])
HIGH = torch.tensor([2.0, 1.0])


def make_actor(
    obs=OBS, act=ACT, low=LOW, high=HIGH, hidden=16, obs_key="observation", action_key="action"
):
    spec = Bounded(low, high, (act,))
    return TensorDictSequential(
        TensorDictModule(
            MLP(
                in_features=obs,
                out_features=act,
                num_cells=[hidden, hidden],
                activation_class=nn.ReLU,
            ),
            in_keys=[obs_key],
            out_keys=["param"],
        ),
        TanhModule(in_keys=["param"], out_keys=[action_key], spec=spec),
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


def make_batch(n=16, seed=0, obs=OBS, low=LOW, high=HIGH):
    g = torch.Generator().manual_seed(seed)
    act = low + (high - low) * torch.rand(n, len(low), generator=g)
    terminated = torch.rand(n, 1, generator=g) < 0.3
    return TensorDict(
        {
            "observation": torch.randn(n, obs, generator=g),
            "action": act,
            "next": {
                "observation": torch.randn(n, obs, generator=g),
                "reward": torch.randn(n, 1, generator=g),
                "done": terminated.clone(),
                "terminated": terminated,
            },
        },
        [n],
    )


def make_loss(**kwargs):
    torch.manual_seed(0)
    loss = TD3BCLoss(make_actor(), make_critic(), action_spec=Bounded(LOW, HIGH, (ACT,)), **kwargs)
    loss.make_value_estimator(gamma=0.9)
    # make the targets differ from the online networks, so the test sees which is used
    with torch.no_grad():
        for key, p in loss.target_actor_network_params.items(True, True):
            if key[-1] in ("weight", "bias"):  # not the TanhModule's bound buffers
                p.add_(0.05 * torch.randn_like(p))
        for p in loss.target_qvalue_network_params.values(True, True):
            p.add_(0.05 * torch.randn_like(p))
    return loss


# ----------------------------------------------------------------------------- reference
def _mlp(x, params, prefix):
    """Plain-torch ReLU MLP from a flat {key: tensor} dict; layers 0, 2, 4."""
    for i, layer in enumerate((0, 2, 4)):
        x = x @ params[(*prefix, str(layer), "weight")].T + params[(*prefix, str(layer), "bias")]
        if i < 2:
            x = torch.relu(x)
    return x


def _flat(td):
    return {k: v.detach().clone() for k, v in td.items(True, True)}


def reference(loss, batch, noise_std_normal, gamma=0.9, alpha=2.5, unit_box=False):
    """TD3+BC (Fujimoto & Gu 2021, Alg. 1) written directly from the paper's equations."""
    actor = _flat(loss.actor_network_params)
    actor_t = _flat(loss.target_actor_network_params)
    critics = _flat(loss.qvalue_network_params)
    critics_t = _flat(loss.target_qvalue_network_params)
    body = ("module", "0", "module")

    def pi(params, s):
        u = torch.tanh(_mlp(s, params, body))
        return LOW + (HIGH - LOW) * (u + 1) / 2

    def q(params, j, s, a):
        p = {k: v[j] for k, v in params.items()}
        return _mlp(torch.cat([s, a], -1), p, ("module",)).squeeze(-1)

    s, a = batch["observation"], batch["action"]
    s2, r = batch["next", "observation"], batch["next", "reward"].squeeze(-1)
    not_term = 1.0 - batch["next", "terminated"].float().squeeze(-1)
    max_action = (HIGH - LOW) / 2  # half range; the paper's max_action for symmetric boxes
    eps = (noise_std_normal * 0.2 * max_action).clamp(-0.5 * max_action, 0.5 * max_action)
    a2 = torch.max(torch.min(pi(actor_t, s2) + eps, HIGH), LOW)
    target_q = torch.min(q(critics_t, 0, s2, a2), q(critics_t, 1, s2, a2))
    y = r + gamma * not_term * target_q
    q1, q2 = q(critics, 0, s, a), q(critics, 1, s, a)
    critic_loss = ((q1 - y) ** 2).mean() + ((q2 - y) ** 2).mean()
    pi_s = pi(actor, s)
    q_pi = q(critics, 0, s, pi_s)
    lmbda = alpha / q_pi.abs().mean()
    # bc_in_unit_box: the BC term in half-range units (d3rlpy's scaled actions)
    scale = max_action if unit_box else 1.0
    bc = (((pi_s - a) / scale) ** 2).mean()
    actor_loss = -lmbda * q_pi.mean() + bc
    td_error = torch.max((q1 - y) ** 2, (q2 - y) ** 2)
    return {
        "loss_qvalue": critic_loss,
        "loss_actor": actor_loss,
        "lmbd": lmbda,
        "bc_loss": bc,
        "target_value": y,
        "pred_value": torch.stack([q1, q2]),
        "td_error": td_error,
    }


def test_matches_paper_equations():
    loss = make_loss().eval()  # eval: every call computes both terms
    batch = make_batch()
    torch.manual_seed(123)
    out = loss(batch)
    torch.manual_seed(123)
    noise = torch.randn(16, ACT)
    ref = reference(loss, batch, noise)
    for key in ("loss_qvalue", "loss_actor", "lmbd", "bc_loss", "target_value", "pred_value"):
        torch.testing.assert_close(out[key], ref[key], rtol=1e-5, atol=1e-5, msg=key)
    torch.testing.assert_close(batch["td_error"], ref["td_error"], rtol=1e-5, atol=1e-5)


def test_bc_in_unit_box_measures_actions_in_half_ranges():
    # d3rlpy's scaled actions: on a half-range of 2 the BC term is a quarter of the raw one
    loss = make_loss(bc_in_unit_box=True).eval()
    batch = make_batch()
    torch.manual_seed(123)
    out = loss(batch)
    torch.manual_seed(123)
    ref = reference(loss, batch, torch.randn(16, ACT), unit_box=True)
    for key in ("loss_actor", "bc_loss"):
        torch.testing.assert_close(out[key], ref[key], rtol=1e-5, atol=1e-5, msg=key)
    raw = make_loss().eval()
    raw.load_state_dict(loss.state_dict())
    assert not torch.allclose(raw(batch)["bc_loss"], out["bc_loss"])


def test_noise_is_scaled_to_the_action_range():
    # the critic target uses noise 0.2 * half-range clipped at 0.5 * half-range
    loss = make_loss(policy_noise=1e3, noise_clip=0.5).eval()
    batch = make_batch(n=64)
    torch.manual_seed(0)
    out = loss(batch)
    torch.manual_seed(0)
    ref = reference_with(loss, batch, policy_noise=1e3)
    torch.testing.assert_close(out["target_value"], ref, rtol=1e-5, atol=1e-5)


def reference_with(loss, batch, policy_noise):
    noise = torch.randn(batch.shape[0], ACT)
    return reference(loss, batch, noise * policy_noise / 0.2)["target_value"]


# ----------------------------------------------------------------------------- gradients
def _grads(params):
    return [p.grad for p in params.values(True, True) if isinstance(p, nn.Parameter)]


def test_gradient_routing():
    loss = make_loss()
    batch = make_batch()
    actor_loss, _ = loss.actor_loss(batch)
    actor_loss.backward()
    assert all(g is None for g in _grads(loss.qvalue_network_params))
    assert all(g is not None for g in _grads(loss.actor_network_params))
    loss.zero_grad(set_to_none=True)
    critic_loss, _ = loss.qvalue_loss(batch)
    critic_loss.backward()
    assert all(g is None for g in _grads(loss.actor_network_params))
    assert all(g is not None and g.abs().sum() > 0 for g in _grads(loss.qvalue_network_params))
    for name in ("target_actor_network_params", "target_qvalue_network_params"):
        assert not any(p.requires_grad for p in getattr(loss, name).values(True, True))


def test_forward_computes_both_terms_on_every_call():
    # TorchRL's contract: the policy delay belongs to the training loop, not to forward
    loss = make_loss()
    batch = make_batch()
    for _ in range(3):
        out = loss(batch)
        assert out["loss_actor"].requires_grad and out["loss_qvalue"].requires_grad
        (out["loss_actor"] + out["loss_qvalue"]).backward()
        assert all(g is not None for g in _grads(loss.actor_network_params))
        loss.zero_grad(set_to_none=True)
    assert not hasattr(loss, "policy_update_delay")


# ----------------------------------------------------------------------------- api
def test_reduction_none_is_per_sample():
    loss = make_loss(reduction="none").eval()
    mean_loss = make_loss().eval()
    batch = make_batch()
    torch.manual_seed(1)
    out = loss(batch.clone())
    torch.manual_seed(1)
    out_mean = mean_loss(batch.clone())
    assert out["loss_actor"].shape == (16,) and out["loss_qvalue"].shape == (16,)
    assert out["bc_loss"].shape == (16,)
    torch.testing.assert_close(out["loss_actor"].mean(), out_mean["loss_actor"])
    torch.testing.assert_close(out["loss_qvalue"].mean(), out_mean["loss_qvalue"])
    torch.testing.assert_close(out["bc_loss"].mean(), out_mean["bc_loss"])
    # per-sample: the BC term of sample i depends on sample i only
    action = loss.actor_network(batch.select("observation").clone())["action"]
    ref = ((action - batch["action"]) ** 2).mean(-1)
    torch.testing.assert_close(out["bc_loss"], ref.detach())


def test_priority_weights_are_applied():
    loss = make_loss().eval()
    batch = make_batch()
    batch["priority_weight"] = torch.linspace(0, 2, 16)
    per_sample = make_loss(reduction="none").eval()
    torch.manual_seed(3)
    out = loss(batch.clone())
    torch.manual_seed(3)
    ref = per_sample(batch.exclude("priority_weight"))
    torch.testing.assert_close(
        out["loss_qvalue"], (ref["loss_qvalue"] * batch["priority_weight"]).mean()
    )


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
    loss = TD3BCLoss(
        make_actor(obs_key="obs", action_key="act"),
        make_critic(obs_key="obs", action_key="act"),
        bounds=(LOW, HIGH),
    )
    loss.set_keys(action="act", reward="rew", done="stop", terminated="term", priority="prio")
    loss.make_value_estimator(gamma=0.9)
    default = make_loss()
    default.load_state_dict(loss.state_dict())
    loss.eval()
    default.eval()
    torch.manual_seed(5)
    out = loss(renamed)
    torch.manual_seed(5)
    ref = default(batch)
    for key in ("loss_actor", "loss_qvalue", "target_value"):
        torch.testing.assert_close(out[key], ref[key])
    assert "prio" in renamed.keys()
    assert ("next", "rew") in loss.in_keys


def test_state_dict_round_trip():
    loss = make_loss()
    batch = make_batch()
    loss(batch)  # one counted call
    state = loss.state_dict()
    torch.manual_seed(1)
    other = TD3BCLoss(make_actor(), make_critic(), bounds=(LOW, HIGH))
    other.make_value_estimator(gamma=0.9)
    other.load_state_dict(state)
    for a, b in zip(loss.state_dict().values(), other.state_dict().values()):
        if isinstance(a, torch.Tensor):
            assert torch.equal(a, b)
    # the update counter (quoted in non-finite loss errors) is restored
    assert other._num_calls == loss._num_calls == 1


def test_loads_torchrl_state_dict():
    torch.manual_seed(0)
    theirs = TorchRLTD3BCLoss(make_actor(), make_critic(), bounds=(LOW, HIGH))
    ours = TD3BCLoss(make_actor(), make_critic(), bounds=(LOW, HIGH))
    ours.load_state_dict(theirs.state_dict())
    for k, v in theirs.state_dict().items():
        assert torch.equal(ours.state_dict()[k], v), k


# ----------------------------------------------------------------------------- bad input
def test_missing_key_and_nan_are_named():
    loss = make_loss()
    with pytest.raises(OfflineLossError, match="'reward'"):
        loss(make_batch().exclude(("next", "reward")))
    batch = make_batch()
    batch["next", "observation"][4, 1] = float("nan")
    with pytest.raises(OfflineLossError, match=r"'next', 'observation'.*\(4,\)"):
        loss(batch)


def test_action_dim_mismatch_and_missing_bounds():
    with pytest.raises(OfflineLossError, match="actor_network produces 3"):
        TD3BCLoss(
            make_actor(act=3, low=-torch.ones(3), high=torch.ones(3)),
            make_critic(),
            bounds=(LOW, HIGH),
        )
    with pytest.raises(ValueError, match="action_spec"):
        TD3BCLoss(make_actor(), make_critic())


# ----------------------------------------------------------------------------- torchrl
def test_runs_in_torchrl_trainer(pendulum_dataset, run_trainer):
    torch.manual_seed(0)
    low, high = torch.tensor([-2.0]), torch.tensor([2.0])
    loss = TD3BCLoss(
        make_actor(3, 1, low, high), make_critic(3, 1), action_spec=Bounded(low, high, (1,))
    )
    loss.make_value_estimator(gamma=0.99)
    updater = SoftUpdate(loss, tau=0.05)
    optim = torch.optim.Adam(loss.parameters(), lr=1e-3)
    actor_before = [p.clone() for p in loss.actor_network_params.values(True, True)]
    target_before = [p.clone() for p in loss.target_qvalue_network_params.values(True, True)]
    trainer = run_trainer(
        loss,
        optim,
        updater,
        pendulum_dataset.data,
        iterations=3,
        optim_steps=2,
        loss_components=["loss_actor", "loss_qvalue"],
    )
    assert trainer._optim_count == 6
    assert loss.get_extra_state()["num_calls"] == 6
    assert any(
        (a != b).any() for a, b in zip(actor_before, loss.actor_network_params.values(True, True))
    )
    assert any(
        (a != b).any()
        for a, b in zip(target_before, loss.target_qvalue_network_params.values(True, True))
    )


def _sota_agent(action_spec, fake_td):
    """The networks of TorchRL's sota-implementations/td3_bc/utils.py (make_td3_agent)."""
    actor_net = MLP(
        num_cells=[32, 32], out_features=action_spec.shape[-1], activation_class=nn.ReLU
    )
    actor = TensorDictSequential(
        TensorDictModule(actor_net, in_keys=["observation"], out_keys=["param"]),
        TanhModule(in_keys=["param"], out_keys=["action"], spec=action_spec),
    )
    qvalue = ValueOperator(
        in_keys=["action", "observation"],
        module=MLP(num_cells=[32, 32], out_features=1, activation_class=nn.ReLU),
    )
    model = nn.ModuleList([actor, qvalue])
    with torch.no_grad(), set_exploration_type(ExplorationType.RANDOM):
        for net in model:
            net(fake_td.clone())
    return model


@pytest.mark.parametrize("loss_cls", [TD3BCLoss, TorchRLTD3BCLoss])
def test_drop_in_for_torchrl_sota_script(loss_cls, pendulum_dataset):
    """Built as sota-implementations/td3_bc builds it; only the loss class changes."""
    torch.manual_seed(0)
    action_spec = Bounded(-2.0, 2.0, (1,))
    data = pendulum_dataset.data
    model = _sota_agent(action_spec, data[:1])
    loss_module = loss_cls(
        actor_network=model[0],
        qvalue_network=model[1],
        num_qvalue_nets=2,
        loss_function="l2",
        delay_actor=True,
        delay_qvalue=True,
        action_spec=model[0][1].spec,
        policy_noise=0.2,
        noise_clip=0.5,
        alpha=2.5,
    )
    loss_module.make_value_estimator(gamma=0.99)
    target_net_updater = SoftUpdate(loss_module, eps=0.995)
    critic_params = list(loss_module.qvalue_network_params.values(True, True))
    actor_params = list(loss_module.actor_network_params.values(True, True))
    optimizer_actor = torch.optim.Adam(actor_params, lr=3e-4, eps=1e-4)
    optimizer_critic = torch.optim.Adam(critic_params, lr=3e-4, eps=1e-4)
    rb = TensorDictReplayBuffer(storage=LazyTensorStorage(data.numel()), batch_size=64)
    rb.extend(data)
    actor_before = [p.clone() for p in actor_params]
    delayed_updates = 2
    for update_counter in range(6):  # the update() of the script, unrolled
        update_actor = update_counter % delayed_updates == 0
        sampled_tensordict = rb.sample()
        q_loss, *_ = loss_module.qvalue_loss(sampled_tensordict)
        q_loss.backward()
        optimizer_critic.step()
        optimizer_critic.zero_grad(set_to_none=True)
        if update_actor:
            actor_loss, actorloss_metadata = loss_module.actor_loss(sampled_tensordict)
            actor_loss.backward()
            optimizer_actor.step()
            optimizer_actor.zero_grad(set_to_none=True)
            target_net_updater.step()
        else:
            actorloss_metadata = {}
            actor_loss = q_loss.new_zeros(())
        metadata = TensorDict(actorloss_metadata)
        metadata.set("q_loss", q_loss.detach())
        metadata.set("actor_loss", actor_loss.detach())
        if update_actor:
            assert {"bc_loss", "lmbd", "state_action_value_actor"} <= set(metadata.keys())
        assert torch.isfinite(metadata["q_loss"])
    assert any((a != b).any() for a, b in zip(actor_before, actor_params))
    # and the forward() path of the TorchRL API gives the same output keys
    out = loss_module(rb.sample())
    assert {
        "loss_actor",
        "loss_qvalue",
        "bc_loss",
        "lmbd",
        "pred_value",
        "state_action_value_actor",
        "next_state_value",
        "target_value",
    } <= set(out.keys())


# ----------------------------------------------------------------------------- learning
def test_learns_on_pendulum(pendulum_dataset, evaluate_actor):
    torch.manual_seed(0)
    data = pendulum_dataset.data
    low, high = torch.tensor([-2.0]), torch.tensor([2.0])
    actor = make_actor(3, 1, low, high, hidden=64)
    loss = TD3BCLoss(actor, make_critic(3, 1, hidden=64), action_spec=Bounded(low, high, (1,)))
    loss.make_value_estimator(gamma=0.99)
    updater = SoftUpdate(loss, tau=0.005)
    optim = torch.optim.Adam(loss.parameters(), lr=1e-3)
    rb = TensorDictReplayBuffer(storage=LazyTensorStorage(data.numel()), batch_size=128)
    rb.extend(data)
    for _ in range(1000):
        out = loss(rb.sample())
        (out["loss_actor"] + out["loss_qvalue"]).backward()
        optim.step()
        optim.zero_grad()
        updater.step()
    score = evaluate_actor(actor, "Pendulum-v1", episodes=3)
    assert score > pendulum_dataset.random_return + 0.25 * (
        pendulum_dataset.average_return - pendulum_dataset.random_return
    ), (score, pendulum_dataset.random_return, pendulum_dataset.average_return)


def test_deactivate_vmap_and_generic_actor_give_the_same_losses():
    batch = make_batch()
    fast = make_loss().eval()
    loop = make_loss(deactivate_vmap=True).eval()
    loop._tanh_head = None  # force the generic (tensordict) actor path
    torch.manual_seed(4)
    a = fast(batch.clone())
    torch.manual_seed(4)
    b = loop(batch.clone())
    for key in ("loss_actor", "loss_qvalue", "pred_value", "target_value", "lmbd"):
        torch.testing.assert_close(a[key], b[key], rtol=1e-5, atol=1e-6)


def test_load_state_dict_after_use_refreshes_cached_views():
    used = make_loss().eval()
    torch.manual_seed(1)
    fresh = TD3BCLoss(make_actor(), make_critic(), bounds=(LOW, HIGH)).eval()
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


def test_generic_actor_with_wrong_action_size_is_named():
    from torchrl.modules import Actor

    torch.manual_seed(0)
    wide = Actor(nn.Linear(OBS, 3), in_keys=["observation"])  # 3 dims, the data has 2
    loss = TD3BCLoss(wide, make_critic(), bounds=(LOW, HIGH))
    with pytest.raises(OfflineLossError, match="actor_network outputs actions of shape"):
        loss(make_batch())
