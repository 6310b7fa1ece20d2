"""Tests for COMBOLoss (torchrl_offline.objectives.combo) and CQLLoss's
``conservative_states`` hook."""

from __future__ import annotations

import math

import pytest
import torch
from torchrl.data import Bounded, Unbounded

from tests.objectives.conftest import assert_gradient_routing
from tests.objectives.test_cql import ACT, HIGH, LOW, OBS, N, _mlp, make_actor, make_batch
from tests.objectives.test_cql import make_critic as make_cql_critic
from torchrl_offline import registry
from torchrl_offline.objectives import COMBO_PRESETS, COMBOLoss, CQLLoss, OfflineLossError
from torchrl_offline.trainers.algorithms import algorithm_defaults, build_algorithm

pytestmark = pytest.mark.filterwarnings("ignore:No target network updater")

B = 8
MODEL_ROWS = torch.tensor([False, False, False, True, True, True, True, True])


def make_loss(**kwargs):
    torch.manual_seed(0)
    loss = COMBOLoss(make_actor(), make_cql_critic(), num_random=N, **kwargs)
    loss.make_value_estimator(gamma=0.9)
    return loss


def mixed_batch():
    data = make_batch(b=B)
    data["model_data"] = MODEL_ROWS.clone()
    return data


def reference_conservative_term(
    loss: COMBOLoss, data, seed: int, *, forward: bool = True
) -> torch.Tensor:
    """COMBO's Eq. 2 in plain torch, drawing CQL's noise in CQL's order: per critic,
    beta * (mean over model rows of log sum_k exp(Q(s, a_k) - log q(a_k)) over uniform,
    pi(s) and pi(s') actions, minus mean over dataset rows of Q(s, a)). ``forward``:
    the noise of ``forward`` (which draws the policy's own actions first), else that of
    ``cql_loss``."""
    n, beta = loss.num_random, loss.min_q_weight
    s, a, s2 = data["observation"], data["action"], data["next", "observation"]
    b = s.shape[0]
    mid, half = (HIGH + LOW) / 2, (HIGH - LOW) / 2
    actor_seq = loss.actor_network.module[0].module

    def q(j, obs, act):
        params = loss.qvalue_network_params[j].flatten_keys(".").to_dict()
        x = torch.cat([obs.expand(*act.shape[:-1], obs.shape[-1]), act], -1)
        return _mlp(loss.qvalue_network.module, params, "module.", x).squeeze(-1)

    def tanh_normal(loc, scale, u):
        t = torch.tanh(u)
        logp = -0.5 * ((u - loc) / scale) ** 2 - scale.log() - 0.5 * math.log(2 * math.pi)
        return mid + half * t, (logp - torch.log1p(-t.pow(2)) - half.log()).sum(-1)

    torch.manual_seed(seed)
    loc, scale = actor_seq(torch.cat([s, s2]))
    if forward:
        torch.randn(2 * b, ACT)  # the policy's action at s and s' (actor and backup)
    eps = torch.randn(n, 2 * b, ACT)
    uniform = LOW + (HIGH - LOW) * torch.rand(n, b, ACT)
    a_smp, logp_smp = (t.detach() for t in tanh_normal(loc, scale, loc + scale * eps))
    log_uniform = -torch.log(HIGH - LOW).sum()
    model, real = data["model_data"], ~data["model_data"]
    total = 0.0
    for j in range(loss.num_qvalue_nets):
        values = torch.cat(
            [
                q(j, s, uniform) - log_uniform,
                q(j, s, a_smp[:, :b]) - logp_smp[:, :b],
                q(j, s, a_smp[:, b:]) - logp_smp[:, b:],
            ]
        )
        push_down = torch.logsumexp(values, 0)[model].mean()
        push_up = q(j, s, a)[real].mean()
        total = total + beta * (push_down - push_up)
    return total


@pytest.mark.parametrize("beta", [1.0, 5.0])
def test_conservative_term_matches_plain_torch_transcription(beta):
    loss = make_loss(min_q_weight=beta)
    torch.manual_seed(123)
    out = loss(mixed_batch())
    expected = reference_conservative_term(loss, mixed_batch(), seed=123)
    torch.testing.assert_close(out["loss_cql"], expected.detach(), rtol=1e-5, atol=1e-5)
    # the critics' gradients of the term agree too
    params = list(loss.qvalue_network_params.values(True, True))
    torch.manual_seed(123)
    ours = torch.autograd.grad(loss(mixed_batch())["loss_cql"], params)
    theirs = torch.autograd.grad(reference_conservative_term(loss, mixed_batch(), 123), params)
    for g_ours, g_ref in zip(ours, theirs):
        torch.testing.assert_close(g_ours, g_ref, rtol=1e-5, atol=1e-5)


def test_other_terms_are_cql_s_and_all_states_is_cql():
    """Only the conservative term differs from CQL's: the Bellman, actor and temperature
    terms are CQL's on the same batch; with conservative_states="all" the loss is CQL."""
    combo = make_loss(deterministic_backup=False)
    torch.manual_seed(0)
    cql = CQLLoss(make_actor(), make_cql_critic(), num_random=N, min_q_weight=1.0,
                  deterministic_backup=False)  # fmt: skip
    cql.make_value_estimator(gamma=0.9)
    torch.manual_seed(5)
    a = combo(mixed_batch())
    torch.manual_seed(5)
    b = cql(mixed_batch())
    for key in ("loss_actor", "loss_qvalue", "loss_alpha", "loss_actor_bc"):
        torch.testing.assert_close(a[key], b[key], msg=key)
    assert not torch.allclose(a["loss_cql"], b["loss_cql"])
    everywhere = make_loss(conservative_states="all", deterministic_backup=False)
    torch.manual_seed(5)
    torch.testing.assert_close(everywhere(mixed_batch())["loss_cql"], b["loss_cql"])


def test_split_terms_match_the_transcription_too():
    """q_loss then cql_loss (TorchRL's split calls) compute the same term."""
    loss = make_loss()
    data = mixed_batch()
    loss.q_loss(data)
    torch.manual_seed(1)
    split, _ = loss.cql_loss(data)
    expected = reference_conservative_term(loss, mixed_batch(), 1, forward=False)
    torch.testing.assert_close(split, expected.detach(), rtol=1e-5, atol=1e-5)


def test_gradient_routing():
    loss = make_loss()
    out = loss(mixed_batch())
    groups = {
        "actor": list(loss.actor_network_params.values(True, True)),
        "critic": list(loss.qvalue_network_params.values(True, True)),
        "alpha": [loss.log_alpha],
    }
    touches = {
        "loss_actor": {"actor"},
        "loss_qvalue": {"critic"},
        "loss_cql": {"critic"},  # the sampled actions are drawn without gradient
        "loss_alpha": {"alpha"},
    }
    assert_gradient_routing(out, groups, touches)


def test_push_down_reads_model_rows_only():
    """Changing a dataset row's state leaves the push-down side alone and changes the
    push-up side; the model rows' logged actions never enter the term."""
    loss = make_loss()
    data = mixed_batch()
    data["action"][MODEL_ROWS] = data["action"][MODEL_ROWS].flip(0)
    torch.manual_seed(2)
    moved = loss(data)["loss_cql"]
    torch.manual_seed(2)
    torch.testing.assert_close(moved, loss(mixed_batch())["loss_cql"])


def test_bad_input_is_named():
    loss = make_loss()
    assert "model_data" in loss.in_keys
    with pytest.raises(OfflineLossError, match="'model_data'"):
        loss(make_batch(b=B))
    only_real = mixed_batch()
    only_real["model_data"] = torch.zeros(B, dtype=torch.bool)
    with pytest.raises(OfflineLossError, match="no model row"):
        loss(only_real)
    with pytest.raises(ValueError, match="conservative_states must be one of"):
        COMBOLoss(make_actor(), make_cql_critic(), conservative_states="dataset")
    assert "model_data" not in CQLLoss(make_actor(), make_cql_critic()).in_keys


def test_declaration_presets_and_builder():
    obs, box = Unbounded(shape=(OBS,)), Bounded(-2.0, 2.0, (1,))
    combo = build_algorithm("combo", obs, box, hidden_sizes=(8,))
    assert type(combo.loss) is COMBOLoss and registry.get("loss", "combo") is COMBOLoss
    assert combo.loss.min_q_weight == 1.0 and not combo.loss.with_lagrange
    assert combo.loss_keys == ("loss_actor", "loss_qvalue", "loss_cql", "loss_alpha")
    d = algorithm_defaults("combo")
    assert (d["real_ratio"], d["rollout_length"], d["reward_penalty"]) == (0.5, 5, 0.0)
    assert (d["actor_lr"], d["critic_lr"], d["hidden_sizes"]) == (1e-4, 3e-4, (256, 256, 256))
    walker = algorithm_defaults("combo", "walker2d-medium")
    assert (walker["min_q_weight"], walker["rollout_length"]) == (5.0, 1)
    assert COMBO_PRESETS["halfcheetah-medium"]["min_q_weight"] == 0.5
    small = algorithm_defaults("combo", "small")
    assert small["model_hidden_sizes"] == (64, 64) and small["rollout_batch_size"] == 500
