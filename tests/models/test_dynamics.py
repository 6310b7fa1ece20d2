"""The dynamics ensemble: one batched computation equal to a loop of plain layers, its
loss equal to an independent transcription of the Gaussian NLL, sampling keys."""

from __future__ import annotations

import math

import pytest
import torch
from torch.nn import functional as F

from torchrl_offline.models import DynamicsEnsemble, DynamicsLoss, ModelError
from torchrl_offline.models.dynamics import soft_bound

from .conftest import linear_transitions, tiny_model


def _model(**kwargs) -> DynamicsEnsemble:
    return tiny_model(num_members=4, hidden_sizes=(8, 8), n=64, **kwargs)


def test_batched_forward_equals_a_loop_over_members_of_plain_linear_layers():
    model = _model()
    obs, act = torch.randn(5, 2), torch.randn(5, 1)
    mean, log_var = model(obs, act)
    x = (torch.cat([obs, act], -1) - model.input_mean) / model.input_std
    for e in range(model.num_members):
        h = x
        for layer in model.layers:
            h = F.silu(F.linear(h, layer.weight[e].T, layer.bias[e, 0]))
        out = F.linear(h, model.head.weight[e].T, model.head.bias[e, 0])
        mu, lv = out[:, :3], soft_bound(out[:, 3:6], model.max_log_var, model.min_log_var)
        torch.testing.assert_close(
            mean[e], mu * model.target_std + model.target_mean, atol=1e-6, rtol=1e-6
        )
        torch.testing.assert_close(
            log_var[e], lv + 2 * model.target_std.log(), atol=1e-6, rtol=1e-6
        )


def test_forward_keeps_any_batch_shape():
    model = _model()
    mean, log_var = model(torch.randn(3, 5, 2), torch.randn(3, 5, 1))
    assert mean.shape == log_var.shape == (4, 3, 5, 3)


def test_nll_equals_torch_normal_log_prob_summed_over_members():
    model = _model()
    data = linear_transitions(32, seed=1)
    out = DynamicsLoss(model, weight_decay=False)(data)
    x = model.normalize_inputs(data["observation"], data["action"])
    y = model.normalize_targets(
        data["observation"], data["next", "observation"], data["next", "reward"]
    )
    mean, log_var, _ = model.normalized_forward(x.expand(4, -1, -1))
    normal = torch.distributions.Normal(mean, (0.5 * log_var).exp())
    expected = -normal.log_prob(y.expand(4, -1, -1)).mean((-2, -1)).sum()
    torch.testing.assert_close(out["loss_dynamics"], expected, atol=1e-5, rtol=1e-6)
    bounds = 0.01 * (model.max_log_var.sum() - model.min_log_var.sum())
    torch.testing.assert_close(out["loss_bounds"], bounds)


def test_terminal_rows_weigh_pos_weight_times_in_the_termination_term():
    model = tiny_model(learn_termination=True)
    data = linear_transitions(32, seed=1)
    data["next", "terminated"] = torch.arange(32).unsqueeze(-1) % 8 == 0
    out = DynamicsLoss(model, termination_pos_weight=7.0)(data)
    x = model.normalize_inputs(data["observation"], data["action"])
    _, _, logit = model.normalized_forward(x.expand(model.num_members, -1, -1))
    p = logit.squeeze(-1).sigmoid()
    flag = data["next", "terminated"].reshape(1, -1).float()
    per_row = -(7.0 * flag * p.log() + (1 - flag) * (1 - p).log())
    torch.testing.assert_close(out["loss_termination"], per_row.mean(-1).sum())
    with pytest.raises(ValueError, match="termination_pos_weight"):
        DynamicsLoss(model, termination_pos_weight=0.0)


def test_per_member_batch_gives_each_member_its_own_rows():
    model = _model()
    data = linear_transitions(40, seed=2)
    rows = torch.stack([torch.arange(10) + 10 * e for e in range(4)])
    loss = DynamicsLoss(model)
    nll_members, _, _ = loss.member_terms(data[rows])
    for e in range(4):
        alone, _, _ = loss.member_terms(data[rows[e]])
        torch.testing.assert_close(nll_members[e], alone[e])


def test_weight_decay_is_mbpo_per_layer_l2():
    model = DynamicsEnsemble(2, 1, num_members=2, num_elites=1)
    assert model.weight_decays == (2.5e-5, 5e-5, 7.5e-5, 7.5e-5, 1e-4)
    layers = [*model.layers, model.head]
    expected = sum(d * 0.5 * (lay.weight**2).sum() for d, lay in zip(model.weight_decays, layers))
    torch.testing.assert_close(model.weight_decay_loss(), expected)


def test_sample_writes_the_contract_keys_and_uncertainty_from_the_elites():
    model = _model()
    model.elites.copy_(torch.tensor([1, 3]))
    obs, act = torch.randn(6, 2), torch.randn(6, 1)
    out = model.sample(obs, act, generator=torch.Generator().manual_seed(0))
    assert out.batch_size == (6,)
    assert out["next", "observation"].shape == (6, 2)
    assert out["next", "reward"].shape == (6, 1)
    assert out["next", "terminated"].dtype == torch.bool
    mean, log_var = model(obs, act)
    std = (0.5 * log_var[[1, 3]]).exp()
    torch.testing.assert_close(
        out["model_uncertainty"], std.norm(dim=-1).amax(0, keepdim=False).unsqueeze(-1)
    )
    disagreement = mean[[1, 3]].std(0, unbiased=False).norm(dim=-1).unsqueeze(-1)
    torch.testing.assert_close(out["model_disagreement"], disagreement)
    # one elite drawn per row: the next observation lies near elite 1's or elite 3's mean
    assert torch.isfinite(out["next", "observation"]).all()


def test_sample_from_one_member_is_that_members_gaussian():
    model = _model()
    model.elites.copy_(torch.tensor([0, 2]))
    with pytest.raises(ModelError, match="members must be elites"):
        model.sample(torch.randn(2, 2), torch.zeros(2, 1), members=torch.tensor(1))
    obs, act = torch.randn(4000, 2), torch.zeros(4000, 1)
    obs[:] = obs[:1]
    out = model.sample(
        obs, act, members=torch.tensor(2), generator=torch.Generator().manual_seed(1)
    )
    mean, log_var = model(obs[:1], act[:1])
    drawn = torch.cat([out["next", "observation"] - obs, out["next", "reward"]], -1)
    torch.testing.assert_close(drawn.mean(0), mean[2, 0], atol=0.1, rtol=0.1)
    torch.testing.assert_close(drawn.std(0), (0.5 * log_var[2, 0]).exp(), atol=0.1, rtol=0.1)


def test_check_range_names_the_dimension_and_distance():
    model = _model()
    far = model.observation_high + 3 * model.observation_std
    probe = torch.stack([model.observation_mean, far.clone()])
    probe[1, 0] = model.observation_mean[0]  # only dimension 1 is outside
    with pytest.warns(
        UserWarning, match=r"by up to 3 standard deviations, dimension 1, first at row 1"
    ):
        mask = model.check_range(probe)
    assert mask.tolist() == [False, True]
    with pytest.raises(ModelError, match="dimension 1"):
        model.check_range(probe, errors="raise")


def test_soft_bound_keeps_log_variance_inside_learned_bounds():
    lv = soft_bound(torch.linspace(-30, 30, 61), torch.tensor(0.5), torch.tensor(-10.0))
    assert lv.max() <= 0.5 + 1e-4 and lv.min() >= -10.0
    assert math.isclose(
        float(soft_bound(torch.tensor(-4.0), torch.tensor(0.5), torch.tensor(-10.0))),
        -4.0,
        abs_tol=0.02,
    )


def test_state_dict_is_self_contained():
    model = _model(termination_fn="hopper")
    clone = DynamicsEnsemble(**model.config())
    clone.load_state_dict(model.state_dict())
    obs, act = torch.randn(3, 2), torch.randn(3, 1)
    torch.testing.assert_close(clone(obs, act)[0], model(obs, act)[0])
    assert clone.termination_name == "hopper"


def test_loss_keys_can_be_renamed_and_missing_keys_are_named():
    model = _model()
    data = linear_transitions(16)
    loss = DynamicsLoss(model)
    loss.set_keys(observation="obs")
    assert "obs" in loss.in_keys
    renamed = data.rename_key_("observation", "obs")
    torch.testing.assert_close(
        loss(renamed)["loss_dynamics"],
        DynamicsLoss(model)(linear_transitions(16))["loss_dynamics"],
    )
    with pytest.raises(ModelError, match="'obs'"):
        loss(linear_transitions(16))
