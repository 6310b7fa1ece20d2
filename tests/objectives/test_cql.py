"""Tests for CQLLoss (torchrl_offline.objectives.cql)."""

from __future__ import annotations

import math

import pytest
import torch
import torchrl
from tensordict import TensorDict
from tensordict.nn import NormalParamExtractor, TensorDictModule
from torch import nn
from torchrl.data import Bounded, LazyTensorStorage, TensorDictReplayBuffer
from torchrl.data.replay_buffers import SamplerWithoutReplacement
from torchrl.envs.utils import ExplorationType
from torchrl.modules import MLP, ProbabilisticActor, TanhNormal, ValueOperator
from torchrl.objectives import CQLLoss as TorchRLCQLLoss
from torchrl.objectives import SoftUpdate

from torchrl_offline.objectives.common import OfflineLossError
from torchrl_offline.objectives.cql import CQL_PRESETS, CQLLoss

pytestmark = pytest.mark.filterwarnings("ignore:No target network updater")

OBS, ACT, B, N = 3, 2, 6, 4
LOW, HIGH = torch.tensor([-1.0, 0.0]), torch.tensor([3.0, 0.5])


# ----------------------------------------------------------------------------- fixtures
def make_actor(obs_dim=OBS, act_dim=ACT, low=LOW, high=HIGH, hidden=8):
    spec = Bounded(low, high, (act_dim,))
    net = nn.Sequential(
        MLP(
            in_features=obs_dim,
            out_features=2 * act_dim,
            num_cells=[hidden],
            activation_class=nn.ReLU,
        ),
        NormalParamExtractor(),
    )
    return ProbabilisticActor(
        TensorDictModule(net, in_keys=["observation"], out_keys=["loc", "scale"]),
        in_keys=["loc", "scale"],
        spec=spec,
        distribution_class=TanhNormal,
        distribution_kwargs={"low": spec.space.low, "high": spec.space.high},
        default_interaction_type=ExplorationType.RANDOM,
    )


def make_critic(obs_dim=OBS, act_dim=ACT, hidden=8):
    return ValueOperator(
        MLP(
            in_features=obs_dim + act_dim,
            out_features=1,
            num_cells=[hidden, hidden],
            activation_class=nn.ReLU,
        ),
        in_keys=["observation", "action"],
    )


def make_batch(b=B, obs_dim=OBS, low=LOW, high=HIGH, seed=1):
    g = torch.Generator().manual_seed(seed)
    # interior actions, so that atanh of the data action is well conditioned
    u = torch.rand(b, len(low), generator=g) * 0.9 + 0.05
    terminated = torch.zeros(b, 1, dtype=torch.bool)
    terminated[0] = True
    return TensorDict(
        {
            "observation": torch.randn(b, obs_dim, generator=g),
            "action": low + (high - low) * u,
            "next": {
                "observation": torch.randn(b, obs_dim, generator=g),
                "reward": torch.randn(b, 1, generator=g),
                "done": terminated.clone(),
                "terminated": terminated,
            },
        },
        [b],
    )


def make_loss(**kwargs):
    torch.manual_seed(0)
    kwargs.setdefault("num_random", N)
    loss = CQLLoss(make_actor(), make_critic(), **kwargs)
    loss.make_value_estimator(gamma=0.9)
    return loss


# ----------------------------------------------------------------------------- reference
def _mlp(seq: nn.Module, params: dict, prefix: str, x: torch.Tensor) -> torch.Tensor:
    for name, child in seq.named_children():
        if isinstance(child, nn.Linear):
            x = x @ params[f"{prefix}{name}.weight"].T + params[f"{prefix}{name}.bias"]
        else:
            x = child(x)
    return x


def reference_cql(
    loss: CQLLoss, data: TensorDict, seed: int, lower_bound: torch.Tensor | None = None
) -> dict[str, torch.Tensor]:
    """The paper's equations in plain torch, drawing the same noise in the same order.

    With ``lower_bound`` (Cal-QL, Nakamoto et al. 2023), the policy-sampled actions'
    values in the conservative term are ``max(Q(s, a), lower_bound(s))``."""

    def calibrated(values):
        return values if lower_bound is None else torch.maximum(values, lower_bound)

    gamma, n = 0.9, loss.num_random
    temp, w, tau = loss.temperature, loss.min_q_weight, loss.target_action_gap
    s, a = data["observation"], data["action"]
    s2, r = data["next", "observation"], data["next", "reward"].squeeze(-1)
    not_term = 1.0 - data["next", "terminated"].float().squeeze(-1)
    b = s.shape[0]
    low, high = LOW, HIGH
    mid, half = (high + low) / 2, (high - low) / 2
    actor_seq = loss.actor_network.module[0].module  # MLP + NormalParamExtractor
    n_critics = loss.num_qvalue_nets

    def q(params_td, j, obs, act):
        params = params_td[j].flatten_keys(".").to_dict()
        x = torch.cat([obs.expand(*act.shape[:-1], obs.shape[-1]), act], -1)
        return _mlp(loss.qvalue_network.module, params, "module.", x).squeeze(-1)

    def tanh_normal(loc, scale, u):
        t = torch.tanh(u)
        logp = -0.5 * ((u - loc) / scale) ** 2 - scale.log() - 0.5 * math.log(2 * math.pi)
        logp = logp - torch.log1p(-t.pow(2)) - half.log()
        return mid + half * t, logp.sum(-1)

    torch.manual_seed(seed)
    loc, scale = actor_seq(torch.cat([s, s2]))
    eps1 = torch.randn(2 * b, ACT)
    eps2 = torch.randn(n, 2 * b, ACT)
    unif = torch.rand(n, b, ACT)
    a_both, logp_both = tanh_normal(loc, scale, loc + scale * eps1)
    a_pi, logp_pi = a_both[:b], logp_both[:b]
    a_next, logp_next = a_both[b:].detach(), logp_both[b:].detach()
    if loss.backup_action == "mean":  # the policy's deterministic action at s'
        a_next = (mid + half * torch.tanh(loc[b:])).detach()
        u_next = torch.atanh((a_next - mid) / half)
        logp_next = tanh_normal(loc[b:], scale[b:], u_next)[1].detach()
    a_smp, logp_smp = tanh_normal(loc, scale, loc + scale * eps2)
    a_smp, logp_smp = a_smp.detach(), logp_smp.detach()
    alpha = loss.log_alpha.detach().exp()

    # actor: alpha log pi - min_j Q_j(s, a~pi) with frozen critics
    q_pi = (
        torch.stack([q(loss.qvalue_network_params.detach(), j, s, a_pi) for j in range(n_critics)])
        .min(0)
        .values
    )
    out = {"loss_actor": alpha * logp_pi - q_pi}
    # BC warm-start: alpha log pi - log pi(a_data|s)
    u_data = torch.atanh((a - mid) / half)
    _, logp_data = tanh_normal(loc[:b], scale[:b], u_data)
    out["loss_actor_bc"] = alpha * logp_pi - logp_data
    out["loss_alpha"] = -loss.log_alpha * (logp_pi.detach() - ACT)

    # Bellman target (deterministic backup unless disabled, optional max-Q backup)
    with torch.no_grad():
        if loss.max_q_backup:
            qn = torch.stack(
                [
                    q(loss.target_qvalue_network_params, j, s2, a_smp[:, b:])
                    for j in range(n_critics)
                ]
            )
            v_next = qn.max(1).values.min(0).values
        else:
            qn = torch.stack(
                [q(loss.target_qvalue_network_params, j, s2, a_next) for j in range(n_critics)]
            )
            v_next = qn.min(0).values
            if not loss.deterministic_backup:
                v_next = v_next - alpha * logp_next
        y = r + gamma * not_term * v_next

    # CQL(H): tau * logsumexp over all 3N sampled actions at s, importance weighted
    rand = low + (high - low) * unif
    log_unif = -torch.log(high - low).sum()
    q_data, gaps = [], []
    for j in range(n_critics):
        qd = q(loss.qvalue_network_params, j, s, a)
        if loss.cql_variant == "H":
            terms = torch.cat(
                [
                    q(loss.qvalue_network_params, j, s, rand) - log_unif,
                    calibrated(q(loss.qvalue_network_params, j, s, a_smp[:, :b])) - logp_smp[:, :b],
                    calibrated(q(loss.qvalue_network_params, j, s, a_smp[:, b:])) - logp_smp[:, b:],
                ]
            )
            soft = temp * torch.logsumexp(terms / temp, 0)
        else:
            qs = calibrated(q(loss.qvalue_network_params, j, s, a_smp[:, :b]))
            soft = (torch.softmax(qs.detach() / temp, 0) * qs).sum(0)
        q_data.append(qd)
        gaps.append(soft - qd)
    out["loss_qvalue"] = sum((qd - y) ** 2 for qd in q_data)
    if loss.with_lagrange:
        alpha_prime = loss.log_alpha_prime.exp().clamp(0, 1e6)
        out["loss_cql"] = sum(alpha_prime.detach() * (w * g - tau) for g in gaps)
        out["loss_alpha_prime"] = -alpha_prime * sum(w * g.detach() - tau for g in gaps) / 2
    else:
        out["loss_cql"] = sum(w * g for g in gaps)
    out["cql_gap"] = sum(gaps).detach() / n_critics
    out["td_error"] = torch.stack([(qd - y).abs() for qd in q_data]).max(0).values.detach()
    return out


@pytest.mark.parametrize(
    "kwargs",
    [
        {},
        {"with_lagrange": True, "lagrange_thresh": 2.0},
        {"max_q_backup": True},
        {"deterministic_backup": False, "temperature": 0.5},
        {"cql_variant": "rho", "min_q_weight": 5.0},
        {"backup_action": "mean"},
        {"backup_action": "mean", "deterministic_backup": False},
    ],
    ids=["H", "lagrange", "max_q_backup", "soft_backup_temp", "rho", "mean", "mean_soft"],
)
def test_matches_plain_torch_transcription(kwargs):
    loss = make_loss(reduction="none", **kwargs)
    if loss.with_lagrange:
        with torch.no_grad():
            loss.log_alpha_prime.fill_(math.log(3.0))
    data = make_batch()
    torch.manual_seed(123)
    out = loss(data)
    ref = reference_cql(loss, make_batch(), seed=123)
    for key, expected in ref.items():
        got = data["td_error"] if key == "td_error" else out[key]
        torch.testing.assert_close(got, expected.detach(), rtol=1e-5, atol=1e-5, msg=key)
    # the mean reduction is the mean of the per-sample terms
    loss.reduction = "mean"
    torch.manual_seed(123)
    out_mean = loss(make_batch())
    for key in ref:
        if key.startswith("loss_"):
            torch.testing.assert_close(out_mean[key], out[key].mean(), rtol=1e-5, atol=1e-6)


def test_lagrange_gradient_direction():
    """Summing all losses must push the critic to shrink the gap, for any alpha'."""
    for alpha_prime in (0.5, 3.0, 20.0):
        loss = make_loss(with_lagrange=True, lagrange_thresh=-100.0)
        with torch.no_grad():
            loss.log_alpha_prime.fill_(math.log(alpha_prime))
        critic = list(loss.qvalue_network_params.values(True, True))
        ref = make_loss(with_lagrange=False, min_q_weight=1.0)
        ref.load_state_dict(loss.state_dict(), strict=False)
        torch.manual_seed(7)
        out = loss(make_batch())
        penalty_grad = torch.autograd.grad(
            out["loss_cql"] + out["loss_alpha_prime"], critic, retain_graph=True
        )
        # the gradient of the sum equals alpha' * min_q_weight * grad(sum_j gap_j)
        torch.manual_seed(7)
        ref_out = ref(make_batch())
        ref_grad = torch.autograd.grad(
            ref_out["loss_cql"], list(ref.qvalue_network_params.values(True, True))
        )
        dot = sum((g * h).sum() for g, h in zip(penalty_grad, ref_grad))
        assert dot > 0
        for g, h in zip(penalty_grad, ref_grad):
            scale = alpha_prime * loss.min_q_weight
            torch.testing.assert_close(g, scale * h, rtol=1e-4, atol=1e-6 * scale)
        # alpha' grows while the (weighted) gap exceeds the threshold
        (g_alpha_prime,) = torch.autograd.grad(out["loss_alpha_prime"], [loss.log_alpha_prime])
        assert g_alpha_prime < 0


@pytest.mark.skipif(torchrl.__version__ != "0.14.1", reason="documents torchrl 0.14.1")
def test_torchrl_lagrange_reverses_penalty_for_reference():
    """TorchRL 0.14.1's summed Lagrange losses push the critic up the gap once alpha' > 2."""
    torch.manual_seed(0)
    spec = Bounded(-torch.ones(ACT), torch.ones(ACT), (ACT,))
    actor = make_actor(low=spec.space.low, high=spec.space.high)
    theirs = TorchRLCQLLoss(actor, make_critic(), with_lagrange=True, lagrange_thresh=0.0)
    theirs.make_value_estimator(gamma=0.9)
    with torch.no_grad():
        theirs.log_alpha_prime.fill_(math.log(3.0))
    critic = list(theirs.qvalue_network_params.values(True, True))
    data = make_batch(low=spec.space.low, high=spec.space.high)
    torch.manual_seed(3)
    out = theirs(data.clone())
    g_sum = torch.autograd.grad(
        out["loss_cql"] + out["loss_alpha_prime"], critic, retain_graph=True
    )
    g_cql = torch.autograd.grad(out["loss_cql"], critic)
    assert sum((g * h).sum() for g, h in zip(g_sum, g_cql)) < 0


def test_gradient_routing():
    loss = make_loss(with_lagrange=True, delay_actor=False)
    out = loss(make_batch())
    actor = list(loss.actor_network_params.values(True, True))
    critic = list(loss.qvalue_network_params.values(True, True))
    temps = [loss.log_alpha, loss.log_alpha_prime]
    groups = {"actor": actor, "critic": critic, "temps": temps}
    touches = {
        "loss_actor": {"actor"},
        "loss_actor_bc": {"actor"},
        "loss_qvalue": {"critic"},
        "loss_cql": {"critic"},
        "loss_alpha": {"temps"},
        "loss_alpha_prime": {"temps"},
    }
    for key, allowed in touches.items():
        for name, params in groups.items():
            grads = torch.autograd.grad(out[key], params, retain_graph=True, allow_unused=True)
            nonzero = any(g is not None and g.abs().sum() > 0 for g in grads)
            assert nonzero == (name in allowed), (key, name)
    for p in loss.target_qvalue_network_params.values(True, True):
        assert not p.requires_grad


def test_state_dict_round_trip_and_soft_update():
    loss = make_loss(with_lagrange=True)
    updater = SoftUpdate(loss, tau=0.5)
    with torch.no_grad():
        loss.log_alpha.fill_(0.3)
        for p in loss.qvalue_network_params.values(True, True):
            p.add_(1.0)
    updater.step()
    state = loss.state_dict()
    other = make_loss(with_lagrange=True)
    other.load_state_dict(state)
    for key, value in state.items():
        torch.testing.assert_close(other.state_dict()[key], value)
    torch.manual_seed(5)
    a = loss(make_batch())
    torch.manual_seed(5)
    b = other(make_batch())
    for key in a.keys():
        torch.testing.assert_close(a[key], b[key])


def test_set_keys_and_nested_batch():
    torch.manual_seed(0)
    net = make_actor().module[0].module
    actor = ProbabilisticActor(
        TensorDictModule(net, in_keys=["obs"], out_keys=["loc", "scale"]),
        in_keys=["loc", "scale"],
        spec=Bounded(LOW, HIGH, (ACT,)),
        distribution_class=TanhNormal,
        distribution_kwargs={"low": LOW, "high": HIGH},
        out_keys=["act"],
    )
    critic = ValueOperator(make_critic().module, in_keys=["obs", "act"], out_keys=["q"])
    loss = CQLLoss(actor, critic, action_spec=Bounded(LOW, HIGH, (ACT,)), num_random=N)
    loss.set_keys(
        action="act",
        state_action_value="q",
        reward="rew",
        terminated="term",
        done="dn",
        priority="prio",
    )
    loss.make_value_estimator(gamma=0.9)
    data = make_batch()
    renamed = TensorDict(
        {
            "obs": data["observation"],
            "act": data["action"],
            "next": {
                "obs": data["next", "observation"],
                "rew": data["next", "reward"],
                "dn": data["next", "done"],
                "term": data["next", "terminated"],
            },
        },
        [B],
    ).reshape(2, 3)
    out = loss(renamed)
    assert renamed["prio"].shape == (2, 3)
    assert torch.isfinite(out["loss_qvalue"])


def test_reduction_none_output_modes():
    loss = make_loss(reduction="none")
    out = loss(make_batch())
    assert all(out[k].shape == (B,) for k in out.keys())
    loss = make_loss(reduction="none", scalar_output_mode="exclude")
    assert "alpha" not in loss(make_batch()).keys()
    loss = make_loss(reduction="sum")
    assert loss(make_batch())["loss_qvalue"].shape == ()


def test_bad_input():
    loss = make_loss()
    data = make_batch()
    with pytest.raises(OfflineLossError, match="'action'"):
        loss(data.exclude("action"))
    bad = make_batch()
    bad["next", "reward"][3] = float("nan")
    with pytest.raises(OfflineLossError, match=r"\('next', 'reward'\).*\(3,\)"):
        loss(bad)
    with pytest.raises(OfflineLossError, match="not bounded|no action spec"):
        from torchrl.data import Unbounded

        CQLLoss(make_actor(), make_critic(), action_spec=Unbounded((ACT,)))
    wide = make_batch()
    wide["action"] = torch.zeros(B, ACT + 1)
    with pytest.raises(OfflineLossError, match="'action'"):
        make_loss()(wide)


def test_non_finite_loss_names_term_and_step():
    loss = make_loss()
    loss(make_batch())
    with torch.no_grad():
        next(iter(loss.qvalue_network_params.values(True, True))).fill_(float("nan"))
    with pytest.raises(OfflineLossError, match="non-finite loss term 'loss_.*' at update step 2"):
        loss(make_batch())


# ----------------------------------------------------------------------------- drop-in
def test_drop_in_like_torchrl_offline_script(pendulum_dataset):
    """Built as sota-implementations/cql/utils.py builds it; only the import differs."""
    torch.manual_seed(0)
    data = pendulum_dataset.data
    action_spec = Bounded(-2.0, 2.0, (1,))
    actor_net = nn.Sequential(
        MLP(num_cells=[32, 32], out_features=2, activation_class=nn.ReLU),
        NormalParamExtractor(scale_mapping="biased_softplus_1.0", scale_lb=0.1),
    )
    actor = ProbabilisticActor(
        module=TensorDictModule(actor_net, in_keys=["observation"], out_keys=["loc", "scale"]),
        in_keys=["loc", "scale"],
        spec=action_spec,
        distribution_class=TanhNormal,
        distribution_kwargs={
            "low": action_spec.space.low,
            "high": action_spec.space.high,
            "tanh_loc": False,
        },
        default_interaction_type=ExplorationType.RANDOM,
    )
    qvalue = ValueOperator(
        in_keys=["observation", "action"],
        out_keys=["state_action_value"],
        module=MLP(num_cells=[32, 32], out_features=1, activation_class=nn.ReLU),
    )
    model = nn.ModuleList([actor, qvalue])
    with torch.no_grad():
        for net in model:
            net(data[:2].clone())
    loss_module = CQLLoss(
        model[0],
        model[1],
        loss_function="l2",
        temperature=1.0,
        min_q_weight=1.0,
        max_q_backup=False,
        deterministic_backup=False,
        num_random=10,
        with_lagrange=True,
        lagrange_thresh=5.0,
    )
    loss_module.make_value_estimator(gamma=0.99, device=None)
    target_net_updater = SoftUpdate(loss_module, tau=0.005)
    critic_params = loss_module.qvalue_network_params.flatten_keys().values()
    actor_params = loss_module.actor_network_params.flatten_keys().values()
    actor_optim = torch.optim.Adam(actor_params, lr=3e-4)
    critic_optim = torch.optim.Adam(critic_params, lr=3e-4)
    alpha_optim = torch.optim.Adam([loss_module.log_alpha], lr=3e-4)
    alpha_prime_optim = torch.optim.Adam([loss_module.log_alpha_prime], lr=3e-4)
    from torchrl.objectives import group_optimizers

    optimizer = group_optimizers(actor_optim, critic_optim, alpha_optim, alpha_prime_optim)
    rb = TensorDictReplayBuffer(
        storage=LazyTensorStorage(data.numel()),
        batch_size=64,
        sampler=SamplerWithoutReplacement(drop_last=False),
    )
    rb.extend(data)
    before = [p.clone() for p in critic_params]
    policy_eval_start = torch.tensor(2)
    for i in range(4):
        loss_vals = loss_module(rb.sample())
        actor_loss = torch.where(
            torch.tensor(i) >= policy_eval_start,
            loss_vals["loss_actor"],
            loss_vals["loss_actor_bc"],
        )
        q_loss = loss_vals["loss_qvalue"] + loss_vals["loss_cql"]
        loss = actor_loss + q_loss + loss_vals["loss_alpha"] + loss_vals["loss_alpha_prime"]
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        target_net_updater.step()
        assert torch.isfinite(loss)
    assert any((a != b).any() for a, b in zip(before, critic_params))


def test_runs_in_torchrl_trainer(pendulum_dataset, run_trainer):
    torch.manual_seed(0)
    loss = CQLLoss(
        make_actor(3, 1, torch.tensor([-2.0]), torch.tensor([2.0])), make_critic(3, 1), num_random=4
    )
    loss.make_value_estimator(gamma=0.99)
    updater = SoftUpdate(loss, tau=0.05)
    optim = torch.optim.Adam(loss.parameters(), lr=1e-3)
    target_before = [p.clone() for p in loss.target_qvalue_network_params.values(True, True)]
    trainer = run_trainer(
        loss,
        optim,
        updater,
        pendulum_dataset.data,
        iterations=3,
        optim_steps=2,
        loss_components=["loss_actor", "loss_qvalue", "loss_cql", "loss_alpha"],
    )
    assert trainer._optim_count == 6
    assert any(
        (a != b).any()
        for a, b in zip(target_before, loss.target_qvalue_network_params.values(True, True))
    )


# ----------------------------------------------------------------------------- learning
def test_learns_on_pendulum(pendulum_dataset, evaluate_actor, one_thread):
    torch.manual_seed(0)
    data = pendulum_dataset.data
    low, high = torch.tensor([-2.0]), torch.tensor([2.0])
    actor = make_actor(3, 1, low, high, hidden=64)
    loss = CQLLoss(actor, make_critic(3, 1, hidden=64), num_random=4, min_q_weight=5.0)
    loss.make_value_estimator(gamma=0.99)
    updater = SoftUpdate(loss, tau=0.01)
    actor_optim = torch.optim.Adam(loss.actor_network_params.values(True, True), lr=1e-3)
    critic_optim = torch.optim.Adam(
        [*loss.qvalue_network_params.values(True, True), loss.log_alpha], lr=1e-3
    )
    g = torch.Generator().manual_seed(0)
    for _ in range(1600):
        batch = data[torch.randint(data.numel(), (64,), generator=g)]
        out = loss(batch)
        total = out["loss_actor"] + out["loss_qvalue"] + out["loss_cql"] + out["loss_alpha"]
        total.backward()
        actor_optim.step()
        critic_optim.step()
        actor_optim.zero_grad()
        critic_optim.zero_grad()
        updater.step()
    score = evaluate_actor(actor, "Pendulum-v1", episodes=3)
    assert score > pendulum_dataset.random_return + 300, (score, pendulum_dataset.random_return)


def test_presets_are_named_and_overridable():
    defaults = make_loss()
    mujoco = CQLLoss.from_preset("mujoco", make_actor(), make_critic())
    for attr in ("min_q_weight", "with_lagrange", "deterministic_backup"):
        assert getattr(mujoco, attr) == getattr(defaults, attr)  # "mujoco" is the default
    lagrange = CQLLoss.from_preset("lagrange", make_actor(), make_critic(), lagrange_thresh=2.0)
    assert (lagrange.min_q_weight, lagrange.with_lagrange) == (1.0, True)
    assert (lagrange.deterministic_backup, lagrange.target_action_gap) == (False, 2.0)
    assert CQL_PRESETS["lagrange"]["lagrange_thresh"] == 5.0
    # d3rlpy's 5 alpha' (gap - 10): the threshold on the unweighted gap, times the weight
    d3rlpy = CQLLoss.from_preset("d3rlpy", make_actor(), make_critic())
    assert d3rlpy.target_action_gap / d3rlpy.min_q_weight == 10.0 and d3rlpy.with_lagrange
    with pytest.raises(KeyError, match="unknown CQL preset 'nope'.*'lagrange'"):
        CQLLoss.from_preset("nope", make_actor(), make_critic())
