"""Tests for MOPO (torchrl_offline.objectives.mopo): the penalised target of the model
rows against a plain-torch transcription, the declaration, gradient routing."""

from __future__ import annotations

import math

import pytest
import torch
from tensordict import TensorDict
from torchrl.data import Bounded, Unbounded

from tests.objectives.conftest import assert_gradient_routing
from tests.objectives.test_edac import _mlp
from tests.trainers.conftest import make_dataset
from torchrl_offline import registry
from torchrl_offline.models.env import LearnedModelEnv
from torchrl_offline.models.fit import fit_dynamics
from torchrl_offline.objectives import MOPO_PRESETS, MOPOLoss
from torchrl_offline.trainers.algorithms import algorithm_defaults, build_algorithm

pytestmark = pytest.mark.filterwarnings("ignore:No target network updater")

LAMBDA, GAMMA, B = 2.5, 0.99, 16


@pytest.fixture(scope="module")
def model_rows():
    """One step of 16 model rollouts, penalised at LAMBDA, with the unpenalised reward of
    the same draws (the same seed, penalty 0)."""
    data = make_dataset(n=256)
    model = fit_dynamics(data, num_members=3, num_elites=2, hidden_sizes=(16,),
                         max_updates=30, seed=0).model  # fmt: skip
    steps = []
    for penalty in (LAMBDA, 0.0):
        env = LearnedModelEnv(
            model, data, batch_size=B, reward_penalty=penalty, seed=5, range_check="ignore"
        )
        td = env.reset()
        td["action"] = torch.linspace(-2, 2, B).unsqueeze(-1)
        steps.append(env.step(td))
    penalised, raw = steps
    torch.testing.assert_close(penalised["next", "observation"], raw["next", "observation"])
    return penalised, raw["next", "reward"]


def reference_target(loss: MOPOLoss, rows: TensorDict, raw_reward, uncertainty, seed: int):
    """MOPO's critic target in plain torch (Yu et al., 2020, Algorithm 2 with SAC):
    y = (r - lambda u) + gamma (1 - d) (min_j Qbar_j(s', a') - alpha log pi(a'|s')),
    a' ~ pi(.|s'), with the loss's networks and the same noise."""
    s2 = rows["next", "observation"]
    not_term = 1.0 - rows["next", "terminated"].float().squeeze(-1)
    low, high = torch.tensor([-2.0]), torch.tensor([2.0])
    mid, half = (high + low) / 2, (high - low) / 2
    torch.manual_seed(seed)
    loc, scale = loss.actor_network.module[0].module(s2)
    u = loc + scale * torch.randn_like(loc)
    t = torch.tanh(u)
    logp = -0.5 * ((u - loc) / scale) ** 2 - scale.log() - 0.5 * math.log(2 * math.pi)
    logp = (logp - torch.log1p(-t.pow(2)) - half.log()).sum(-1)
    a_next = mid + half * t
    targets = [loss.target_qvalue_network_params[j].flatten_keys(".").to_dict() for j in (0, 1)]
    q_next = torch.stack(
        [_mlp(loss.qvalue_network.module, p, torch.cat([s2, a_next], -1)) for p in targets]
    ).squeeze(-1)
    v_next = q_next.min(0).values - loss.log_alpha.exp() * logp
    reward = raw_reward.squeeze(-1) - LAMBDA * uncertainty.squeeze(-1)
    return reward + GAMMA * not_term * v_next


def test_penalised_target_matches_plain_torch_transcription(model_rows):
    penalised, raw_reward = model_rows
    uncertainty = penalised["next", "model_uncertainty"]
    assert (uncertainty > 0).all()
    torch.manual_seed(0)
    algo = build_algorithm("mopo", Unbounded(shape=(3,)), Bounded(-2.0, 2.0, (1,)),
                           hidden_sizes=(16,), alpha_init=0.3)  # fmt: skip
    loss = algo.loss
    with torch.no_grad():  # targets differ from the online critics
        for p in loss.target_qvalue_network_params.values(True, True):
            p.mul_(0.8)
    batch = penalised.select("observation", "action", "next").exclude(
        ("next", "model_uncertainty"), ("next", "model_disagreement")
    )
    torch.manual_seed(7)
    _, metadata = loss.qvalue_loss(batch)
    expected = reference_target(loss, penalised, raw_reward, uncertainty, seed=7)
    torch.testing.assert_close(metadata["target_value"], expected, rtol=1e-5, atol=1e-5)


def test_is_sac_n_with_two_critics_and_its_gradients_route_as_sac():
    torch.manual_seed(0)
    algo = build_algorithm("mopo", Unbounded(shape=(3,)), Bounded(-2.0, 2.0, (1,)),
                           hidden_sizes=(8,))  # fmt: skip
    loss = algo.loss
    assert type(loss) is MOPOLoss and registry.get("loss", "mopo") is MOPOLoss
    assert (loss.num_qvalue_nets, loss.eta) == (2, 0.0)
    assert algo.loss_keys == ("loss_actor", "loss_qvalue", "loss_alpha")
    data = make_dataset().storage[:32]
    out = loss(data)
    groups = {
        "actor": list(loss.actor_network_params.values(True, True)),
        "critic": list(loss.qvalue_network_params.values(True, True)),
        "alpha": [loss.log_alpha],
    }
    touches = {"loss_actor": {"actor"}, "loss_qvalue": {"critic"}, "loss_alpha": {"alpha"}}
    assert_gradient_routing(out, groups, touches)


def test_declared_defaults_and_presets():
    d = algorithm_defaults("mopo")
    assert (d["rollout_length"], d["reward_penalty"], d["real_ratio"]) == (5, 1.0, 0.05)
    assert (d["rollout_interval"], d["rollout_batch_size"], d["rollout_retain_epochs"]) == (
        1000, 50_000, 5)  # fmt: skip
    assert (d["model_num_members"], d["model_num_elites"]) == (7, 5)
    assert d["model_hidden_sizes"] == (200, 200, 200, 200) and d["hidden_sizes"] == (256, 256)
    hopper = algorithm_defaults("mopo", "hopper-medium")
    assert (hopper["rollout_length"], hopper["reward_penalty"]) == (5, 5.0)
    assert MOPO_PRESETS["halfcheetah-medium"] == {
        "rollout_length": 1, "reward_penalty": 1.0, "model_termination": "halfcheetah"}  # fmt: skip
    assert "model_termination" not in MOPO_PRESETS["walker2d-medium"]  # learned
    small = algorithm_defaults("mopo", "small")
    assert small["rollout_batch_size"] == 500 and small["model_max_updates"] == 500
