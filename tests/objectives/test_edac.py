"""Tests for EDACLoss and SACNLoss (torchrl_offline.objectives.edac)."""

from __future__ import annotations

import math

import pytest
import torch
from tensordict import TensorDict
from tensordict.nn import NormalParamExtractor, TensorDictModule
from torch import nn
from torchrl.data import Bounded
from torchrl.modules import MLP, ProbabilisticActor, TanhNormal, ValueOperator
from torchrl.objectives import SoftUpdate

from torchrl_offline import registry
from torchrl_offline.cli import main
from torchrl_offline.objectives import EDACLoss, OfflineLossError, SACNLoss
from torchrl_offline.objectives.edac import (
    EDAC_PRESETS,
    SAC_N_PRESETS,
    ensemble_gradient_similarity,
)
from torchrl_offline.trainers.algorithms import algorithm_defaults, build_algorithm
from torchrl_offline.trainers.metadata import load_algorithm

pytestmark = pytest.mark.filterwarnings("ignore:No target network updater")

OBS, ACT, B, N = 3, 2, 6, 3
LOW, HIGH = torch.tensor([-1.0, 0.0]), torch.tensor([3.0, 0.5])
GAMMA = 0.9


# ----------------------------------------------------------------------------- fixtures
def make_actor(
    obs_dim=OBS, act_dim=ACT, low=LOW, high=HIGH, hidden=(8,), in_key="observation", with_spec=True
):
    spec = Bounded(low, high, (act_dim,))
    net = nn.Sequential(
        MLP(in_features=obs_dim, out_features=2 * act_dim, num_cells=list(hidden)),
        NormalParamExtractor(),
    )
    return ProbabilisticActor(
        TensorDictModule(net, in_keys=[in_key], out_keys=["loc", "scale"]),
        in_keys=["loc", "scale"],
        spec=spec if with_spec else None,
        distribution_class=TanhNormal,
        distribution_kwargs={"low": spec.space.low, "high": spec.space.high},
    )


def make_critic(obs_dim=OBS, act_dim=ACT, hidden=8):
    return ValueOperator(
        MLP(in_features=obs_dim + act_dim, out_features=1, num_cells=[hidden, hidden]),
        in_keys=["observation", "action"],
    )


def make_loss(**kwargs):
    torch.manual_seed(0)
    kwargs.setdefault("num_qvalue_nets", N)
    loss = EDACLoss(make_actor(), make_critic(), **kwargs)
    loss.make_value_estimator(gamma=GAMMA)
    with torch.no_grad():  # targets differ from the online critics
        for p in loss.target_qvalue_network_params.values(True, True):
            p.mul_(0.8)
    return loss


def make_batch(b=B, seed=1):
    g = torch.Generator().manual_seed(seed)
    terminated = torch.zeros(b, 1, dtype=torch.bool)
    terminated[0] = True
    return TensorDict(
        {
            "observation": torch.randn(b, OBS, generator=g),
            "action": LOW + (HIGH - LOW) * torch.rand(b, ACT, generator=g),
            "next": {
                "observation": torch.randn(b, OBS, generator=g),
                "reward": torch.randn(b, 1, generator=g),
                "done": terminated.clone(),
                "terminated": terminated,
            },
        },
        [b],
    )


# ----------------------------------------------------------------------------- reference
def _mlp(seq: nn.Module, params: dict, x: torch.Tensor) -> torch.Tensor:
    for name, child in seq.named_children():
        if isinstance(child, nn.Linear):
            x = x @ params[f"module.{name}.weight"].T + params[f"module.{name}.bias"]
        else:
            x = child(x)
    return x


def reference_edac(loss: EDACLoss, data: TensorDict, seed: int) -> dict[str, torch.Tensor]:
    """EDAC's equations in plain torch (An et al., 2021, Eqs. 1-5 and the reference code's
    normalised gradients), one critic at a time, with the loss's weights and the same
    noise drawn in the same order (the actor at s, then at s')."""
    s, a = data["observation"], data["action"]
    s2, r = data["next", "observation"], data["next", "reward"].squeeze(-1)
    not_term = 1.0 - data["next", "terminated"].float().squeeze(-1)
    mid, half = (HIGH + LOW) / 2, (HIGH - LOW) / 2
    actor_seq = loss.actor_network.module[0].module  # MLP + NormalParamExtractor
    n, eta = loss.num_qvalue_nets, loss.eta
    online = [loss.qvalue_network_params[j].flatten_keys(".").to_dict() for j in range(n)]
    target = [loss.target_qvalue_network_params[j].flatten_keys(".").to_dict() for j in range(n)]
    mlp = loss.qvalue_network.module

    def q(params, obs, act):
        return _mlp(mlp, params, torch.cat([obs, act], -1)).squeeze(-1)

    def policy(obs):
        loc, scale = actor_seq(obs)
        u = loc + scale * torch.randn(obs.shape[0], ACT)
        t = torch.tanh(u)
        logp = -0.5 * ((u - loc) / scale) ** 2 - scale.log() - 0.5 * math.log(2 * math.pi)
        logp = logp - torch.log1p(-t.pow(2)) - half.log()
        return mid + half * t, logp.sum(-1)

    torch.manual_seed(seed)
    alpha = loss.log_alpha.detach().exp()
    a_pi, logp_pi = policy(s)
    with torch.no_grad():
        a_next, logp_next = policy(s2)
        v_next = torch.stack([q(p, s2, a_next) for p in target]).min(0).values
        y = r + GAMMA * not_term * (v_next - alpha * logp_next)
    frozen = [{k: v.detach() for k, v in p.items()} for p in online]
    out = {
        "loss_actor": alpha * logp_pi - torch.stack([q(p, s, a_pi) for p in frozen]).min(0).values,
        "loss_alpha": -loss.log_alpha * (logp_pi.detach() - ACT),  # target entropy -dim(A)
    }
    q_data = [q(p, s, a) for p in online]
    out["loss_qvalue"] = sum((qd - y) ** 2 for qd in q_data)
    if eta > 0:
        grads = []
        for p in online:  # each critic's own gradient with respect to the action
            a_leaf = a.clone().requires_grad_(True)
            (g,) = torch.autograd.grad(q(p, s, a_leaf).sum(), a_leaf, create_graph=True)
            grads.append(g / (g.norm(dim=-1, keepdim=True) + 1e-10))
        es = sum((grads[i] * grads[j]).sum(-1) for i in range(n) for j in range(n) if i != j) / (
            n - 1
        )
        out["loss_diversity"] = eta * es
    out["td_error"] = torch.stack([(qd - y) ** 2 for qd in q_data]).max(0).values.detach()
    return out


@pytest.mark.parametrize("eta", [1.5, 0.0], ids=["edac", "sac_n"])
def test_matches_plain_torch_transcription(eta):
    loss = make_loss(eta=eta, alpha_init=0.7, reduction="none")
    data = make_batch()
    torch.manual_seed(123)
    out = loss(data)
    ref = reference_edac(loss, make_batch(), seed=123)
    assert ("loss_diversity" in out.keys()) == (eta > 0)
    for key, expected in ref.items():
        got = data["td_error"] if key == "td_error" else out[key]
        torch.testing.assert_close(got, expected.detach(), rtol=1e-5, atol=1e-5, msg=key)
    # the gradients of the summed terms agree too: the diversity term's second-order
    # gradient through the batched critics included
    params = [
        *loss.actor_network_params.values(True, True),
        *loss.qvalue_network_params.values(True, True),
        loss.log_alpha,
    ]
    ours = torch.autograd.grad(sum(out[k].mean() for k in ref if k.startswith("loss_")), params)
    theirs = torch.autograd.grad(sum(v.mean() for k, v in ref.items() if k != "td_error"), params)
    for g_ours, g_ref in zip(ours, theirs):
        torch.testing.assert_close(g_ours, g_ref, rtol=1e-5, atol=1e-5)
    # the mean reduction is the batch mean of the per-sample terms
    loss.reduction = "mean"
    torch.manual_seed(123)
    out_mean = loss(make_batch())
    for key in ref:
        if key.startswith("loss_"):
            torch.testing.assert_close(out_mean[key], out[key].mean(), rtol=1e-5, atol=1e-6)


def test_ensemble_similarity_is_the_pairwise_sum():
    g = torch.Generator().manual_seed(0)
    grads = torch.randn(5, 7, 3, generator=g)
    unit = grads / (grads.norm(dim=-1, keepdim=True) + 1e-10)
    pairs = sum((unit[i] * unit[j]).sum(-1) for i in range(5) for j in range(5) if i != j)
    torch.testing.assert_close(ensemble_gradient_similarity(grads), pairs / 4)
    # only directions count: rescaling a critic's gradient changes nothing
    scaled = grads * torch.tensor([1.0, 10.0, 0.1, 3.0, 7.0])[:, None, None]
    torch.testing.assert_close(ensemble_gradient_similarity(scaled), pairs / 4)
    with pytest.raises(OfflineLossError, match="at least 2 critics"):
        ensemble_gradient_similarity(grads[:1])


def test_gradient_routing():
    loss = make_loss(eta=1.0)
    out = loss(make_batch())
    groups = {
        "actor": list(loss.actor_network_params.values(True, True)),
        "critic": list(loss.qvalue_network_params.values(True, True)),
        "alpha": [loss.log_alpha],
    }
    touches = {
        "loss_actor": {"actor"},
        "loss_qvalue": {"critic"},
        "loss_diversity": {"critic"},  # the logged actions are data
        "loss_alpha": {"alpha"},
    }
    for key, allowed in touches.items():
        for name, params in groups.items():
            grads = torch.autograd.grad(out[key], params, retain_graph=True, allow_unused=True)
            nonzero = any(g is not None and g.abs().sum() > 0 for g in grads)
            assert nonzero == (name in allowed), (key, name)
    for p in loss.target_qvalue_network_params.values(True, True):
        assert not p.requires_grad


def test_vmap_and_loop_paths_agree_for_critics_that_are_not_plain_mlps():
    """A critic with a LayerNorm takes torch.vmap over the stacked parameters (per-critic
    action copies included), or a Python loop with deactivate_vmap: the same losses."""

    def critic():
        mlp = MLP(
            in_features=OBS + ACT,
            out_features=1,
            num_cells=[8],
            norm_class=nn.LayerNorm,
            norm_kwargs={"normalized_shape": 8},
        )
        return ValueOperator(mlp, in_keys=["observation", "action"])

    outs = []
    for deactivate_vmap in (False, True):
        torch.manual_seed(0)
        loss = EDACLoss(make_actor(), critic(), num_qvalue_nets=N, deactivate_vmap=deactivate_vmap)
        loss.make_value_estimator(gamma=GAMMA)
        torch.manual_seed(1)
        outs.append(loss(make_batch()))
    for key in ("loss_actor", "loss_qvalue", "loss_diversity", "loss_alpha"):
        torch.testing.assert_close(outs[0][key], outs[1][key], msg=key)


def test_sac_n_is_edac_without_the_diversity_term():
    torch.manual_seed(0)
    sac_n = SACNLoss(make_actor(), make_critic(), num_qvalue_nets=N)
    assert sac_n.eta == 0.0 and "loss_diversity" not in sac_n.out_keys
    sac_n.make_value_estimator(gamma=GAMMA)
    assert "loss_diversity" not in sac_n(make_batch()).keys()
    assert registry.get("loss", "sac_n") is SACNLoss and registry.get("loss", "edac") is EDACLoss
    sac_n.select_out_keys("loss_qvalue", "alpha")  # TorchRL's output filter
    assert sorted(sac_n(make_batch()).keys()) == ["alpha", "loss_qvalue"]


def test_reduction_set_keys_and_nested_batch():
    loss = make_loss(reduction="sum")
    assert loss(make_batch())["loss_diversity"].shape == ()
    torch.manual_seed(0)
    actor = make_actor(in_key="obs")
    critic = ValueOperator(make_critic().module, in_keys=["obs", "act"], out_keys=["q"])
    loss = EDACLoss(actor, critic, num_qvalue_nets=N, reduction="none")
    loss.set_keys(action="act", state_action_value="q", reward="rew", done="dn", terminated="term")
    loss.set_keys(priority="prio")
    loss.make_value_estimator(gamma=GAMMA)
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
    for key in ("loss_actor", "loss_qvalue", "loss_diversity", "loss_alpha", "entropy"):
        assert out[key].shape == (2, 3), key


def test_state_dict_round_trip():
    loss = make_loss()
    updater = SoftUpdate(loss, tau=0.5)
    with torch.no_grad():
        loss.log_alpha.fill_(0.3)
        for p in loss.qvalue_network_params.values(True, True):
            p.add_(0.1)
    updater.step()
    other = make_loss()
    other.load_state_dict(loss.state_dict())
    for key, value in loss.state_dict().items():
        torch.testing.assert_close(other.state_dict()[key], value, msg=key)
    torch.manual_seed(5)
    a = loss(make_batch())
    torch.manual_seed(5)
    b = other(make_batch())
    for key in a.keys():
        torch.testing.assert_close(a[key], b[key], msg=key)


def test_bad_input_is_named():
    with pytest.raises(OfflineLossError, match="num_qvalue_nets must be at least 2.*got 1"):
        EDACLoss(make_actor(), make_critic(), num_qvalue_nets=1)
    with pytest.raises(ValueError, match="eta must be >= 0"):
        EDACLoss(make_actor(), make_critic(), eta=-1.0)
    no_spec = make_actor(with_spec=False)
    with pytest.raises(OfflineLossError, match="target_entropy='auto'.*action_spec"):
        EDACLoss(no_spec, make_critic())
    assert EDACLoss(no_spec, make_critic(), target_entropy=-1.0).target_entropy == -1.0
    loss = make_loss()
    with pytest.raises(OfflineLossError, match="'terminated'"):
        loss(make_batch().exclude(("next", "terminated")))
    bad = make_batch()
    bad["observation"][4, 0] = float("nan")
    with pytest.raises(OfflineLossError, match=r"'observation'.*\(4,\)"):
        loss(bad)
    wide = make_batch()
    wide["action"] = torch.zeros(B, ACT + 1)
    with pytest.raises(OfflineLossError, match="'action'"):
        make_loss()(wide)


def test_declarations_presets_and_builder():
    obs, box = Bounded(-1.0, 1.0, (3,)), Bounded(-2.0, 2.0, (1,))
    edac = build_algorithm("edac", obs, box, hidden_sizes=(8,))
    assert type(edac.loss) is EDACLoss and edac.loss.num_qvalue_nets == 10
    assert edac.loss.eta == 1.0 and algorithm_defaults("edac")["hidden_sizes"] == (256, 256, 256)
    assert edac.loss_keys == ("loss_actor", "loss_qvalue", "loss_diversity", "loss_alpha")
    assert [g["name"] for g in edac.optimizer.param_groups] == ["actor", "qvalue", "alpha"]
    hopper = build_algorithm("edac", obs, box, hidden_sizes=(8,), preset="hopper-medium")
    assert (hopper.loss.num_qvalue_nets, hopper.loss.eta) == (50, 1.0)
    assert EDAC_PRESETS["halfcheetah-medium-expert"]["eta"] == 5.0
    sac_n = build_algorithm("sac_n", obs, box, hidden_sizes=(8,), preset="walker2d-medium")
    assert type(sac_n.loss) is SACNLoss and (sac_n.loss.num_qvalue_nets, sac_n.loss.eta) == (20, 0)
    assert sac_n.loss_keys == ("loss_actor", "loss_qvalue", "loss_alpha")
    assert SAC_N_PRESETS["hopper-medium"]["num_qvalue_nets"] == 500
    with pytest.raises(ValueError, match="num_qvalue_nets"):
        build_algorithm("edac", obs, box, hidden_sizes=(8,), num_qvalue_nets=1)


# ----------------------------------------------------------------------------- learning
def test_learns_on_pendulum(pendulum_dataset, evaluate_actor, one_thread):
    """400 updates on the mixed Pendulum data beat the random policy (-527 against -1093;
    two critics: on this broad-coverage data a larger ensemble is too pessimistic for so
    short a run, and stays near doing nothing)."""
    torch.manual_seed(0)
    data = pendulum_dataset.data
    low, high = torch.tensor([-2.0]), torch.tensor([2.0])
    actor = make_actor(3, 1, low, high, hidden=(64, 64))
    critic = ValueOperator(
        MLP(in_features=4, out_features=1, num_cells=[64, 64]), in_keys=["observation", "action"]
    )
    loss = EDACLoss(actor, critic, num_qvalue_nets=2, eta=1.0, alpha_init=0.005)
    loss.make_value_estimator(gamma=0.99)
    updater = SoftUpdate(loss, tau=0.05)
    optim = torch.optim.Adam(loss.parameters(), lr=3e-3)
    g = torch.Generator().manual_seed(0)
    for _ in range(400):
        out = loss(data[torch.randint(data.numel(), (128,), generator=g)])
        sum(v for k, v in out.items() if k.startswith("loss_")).backward()
        optim.step()
        optim.zero_grad()
        updater.step()
    score = evaluate_actor(actor, "Pendulum-v1", episodes=3)
    # random torques score about -1090 on these episodes and doing nothing about -950
    assert score > pendulum_dataset.random_return + 200, (score, pendulum_dataset.random_return)


@pytest.mark.parametrize("name", ["edac", "sac_n"])
def test_trains_and_finetunes_through_the_command_line(name, tmp_path, capsys, one_thread):
    root, run = str(tmp_path / "minari"), tmp_path / "run"
    collect = ["collect", "Pendulum-v1", "--dataset-id", "pendulum/tiny-v0", "--steps", "100",
               "--policy", "random", "--root", root, "--no-progress"]  # fmt: skip
    assert main(collect) == 0
    common = ["--dataset", "pendulum/tiny-v0", "--root", root, "--batch-size", "16",
              "--checkpoint-every", "3", "--eval-env", "none", "--no-progress"]  # fmt: skip
    train = ["train", "--algo", name, "--steps", "6", "--out", str(run), "--preset",
             "walker2d-medium", "--set", "hidden_sizes=(16,)", *common]  # fmt: skip
    assert main(train) == 0
    algo, step = load_algorithm(run)  # the checkpoint rebuilds the preset's ensemble
    assert step == 6 and algo.name == name
    assert algo.loss.num_qvalue_nets == (10 if name == "edac" else 20)
    online = ["finetune", str(run), "--steps", "9", "--out", str(tmp_path / "online"),
              "--frames-per-batch", "3", *common]  # fmt: skip
    assert main(online) == 0
    assert f"{name}: 9 fine-tuning steps in Pendulum-v1" in capsys.readouterr().out
