"""Behaviour-policy estimation by maximum likelihood, and estimators that rely on it."""

from __future__ import annotations

import math

import pytest
import torch
from tensordict import TensorDict

from torchrl_offline.ope.behavior import estimate_behavior_policy
from torchrl_offline.ope.importance import (
    PerDecisionImportanceSampling,
    WeightedPerDecisionImportanceSampling,
)
from torchrl_offline.ope.result import OPEError


@pytest.fixture(scope="module")
def data(problem) -> TensorDict:
    return problem.mdp.sample(problem.mu, 4000, seed=21)


def test_categorical_fit_recovers_the_behaviour_table(problem, data):
    model = estimate_behavior_policy(
        data, hidden_sizes=(), steps=200, lr=0.1, batch_size=100_000, validation_fraction=0
    )
    assert model.kind == "categorical" and model.num_actions == 3
    probs = model.get_dist(TensorDict({"observation": torch.eye(5)}, [5])).probs.detach()
    # Maximum likelihood on tabular features = empirical action frequencies per state.
    s, a = data["state"], data["action"]
    counts = torch.zeros(5, 3).index_put_((s, a), torch.ones(s.shape[0]), accumulate=True)
    empirical = counts / counts.sum(1, keepdim=True)
    torch.testing.assert_close(probs, empirical, atol=2e-3, rtol=0)
    assert (probs - problem.mu.float()).abs().max() < 0.06
    assert "categorical over 3 actions" in model.describe()


def test_integer_state_observations_are_one_hot_encoded(data):
    td = data.select("state", "action").rename_key_("state", "observation")
    model = estimate_behavior_policy(td, hidden_sizes=(), steps=300, lr=0.1)
    assert model.num_states == 5
    assert torch.isfinite(model.log_prob(td[:10])).all()


def test_estimators_estimate_the_behaviour_when_not_logged(problem, data):
    unlogged = data.exclude("action_log_prob")
    kw = {"gamma": problem.gamma, "n_bootstrap": 100}
    fit = {"hidden_sizes": (), "steps": 200, "lr": 0.1, "batch_size": 100_000}
    est = WeightedPerDecisionImportanceSampling(problem.actor(), behavior_kwargs=fit, **kw)
    r = est.estimate(unlogged)
    assert r.diagnostics["behavior_policy"].startswith("estimated: categorical")
    assert any("behaviour policy was estimated" in n for n in r.notes)
    assert "note: the behaviour policy was estimated" in str(r)
    logged = WeightedPerDecisionImportanceSampling(problem.actor(), **kw).estimate(data)
    se = (
        PerDecisionImportanceSampling(problem.actor(), **kw).estimate(data).per_episode.std()
        / math.sqrt(4000)
    ).item()
    assert abs(r.value - problem.true_value) < 4 * se
    assert abs(r.value - logged.value) < 2 * se
    forced = WeightedPerDecisionImportanceSampling(
        problem.actor(), behavior_policy="estimate", behavior_kwargs=fit, **kw
    ).estimate(data)
    assert forced.value == pytest.approx(r.value, rel=1e-9)


def _continuous(n: int, seed: int, bimodal: bool = False) -> TensorDict:
    g = torch.Generator().manual_seed(seed)
    s = torch.randn(n, 2, generator=g)
    centre = 0.8 * s[:, :1] - 0.3
    if bimodal:
        centre = centre + torch.where(torch.rand(n, 1, generator=g) < 0.5, -2.0, 2.0)
    a = centre + 0.3 * torch.randn(n, 1, generator=g)
    return TensorDict({"observation": s, "action": a}, batch_size=[n])


def test_gaussian_fit():
    td = _continuous(3000, 0)
    model = estimate_behavior_policy(td, hidden_sizes=(32,), steps=800, lr=1e-2)
    probe = TensorDict({"observation": torch.tensor([[0.0, 0.0], [1.0, -1.0]])}, [2])
    dist = model.get_dist(probe)
    torch.testing.assert_close(dist.mean[:, 0], torch.tensor([-0.3, 0.5]), atol=0.06, rtol=0)
    torch.testing.assert_close(dist.stddev[:, 0], torch.tensor([0.3, 0.3]), atol=0.05, rtol=0)
    # The true model's NLL: 0.5 log(2 pi 0.09) + 0.5 = 0.2148.
    assert model.nll == pytest.approx(0.2148, abs=0.05)


def test_mixture_fits_bimodal_actions_better():
    td = _continuous(3000, 1, bimodal=True)
    fit = {"hidden_sizes": (32,), "steps": 800, "lr": 1e-2}
    gauss = estimate_behavior_policy(td, kind="gaussian", **fit)
    mix = estimate_behavior_policy(td, kind="mixture", num_components=2, **fit)
    # True NLL: 0.2148 + log 2 = 0.908; a single Gaussian (std ~2) is far above it.
    assert mix.nll < 1.0 < gauss.nll
    assert "mixture of 2" in mix.describe()


def test_bad_requests():
    td = _continuous(50, 2)
    with pytest.raises(OPEError, match="Mismatched action spaces"):
        estimate_behavior_policy(td, kind="categorical", steps=1)
    with pytest.raises(OPEError, match="missing field 'action'"):
        estimate_behavior_policy(td.exclude("action"), steps=1)
    with pytest.raises(ValueError, match="kind must be"):
        estimate_behavior_policy(td, kind="flow", steps=1)


def test_passing_an_estimated_model_is_reported_as_estimated(problem, data):
    fit = {"hidden_sizes": (), "steps": 100, "lr": 0.1, "batch_size": 100_000}
    mu_hat = estimate_behavior_policy(data, **fit)
    est = PerDecisionImportanceSampling(
        problem.actor(), gamma=problem.gamma, behavior_policy=mu_hat, n_bootstrap=20
    )
    r = est.estimate(data)
    assert r.diagnostics["behavior_policy"].startswith("estimated: categorical")
    assert r.notes and "estimated" in r.notes[0]


def test_one_hot_logged_actions(problem, data):
    one_hot = data.clone()
    one_hot["action"] = torch.nn.functional.one_hot(data["action"], 3)
    fit = {"hidden_sizes": (), "steps": 100, "lr": 0.1, "batch_size": 100_000}
    model = estimate_behavior_policy(one_hot, **fit)
    assert model.num_actions == 3
    torch.testing.assert_close(model.log_prob(one_hot[:50]), model.log_prob(data[:50]))
    kw = {"gamma": problem.gamma, "n_bootstrap": 20}
    r_idx = PerDecisionImportanceSampling(problem.actor(), **kw).estimate(data)
    r_hot = PerDecisionImportanceSampling(problem.actor(), **kw).estimate(one_hot)
    assert r_hot.value == pytest.approx(r_idx.value, rel=1e-9)


def test_thread_setting_is_restored():
    torch.set_num_threads(2)  # the autouse fixture restores the session's value afterwards
    estimate_behavior_policy(_continuous(50, 3), hidden_sizes=(), steps=5)
    assert torch.get_num_threads() == 2


def test_early_stopping_keeps_a_small_dataset_from_being_memorised():
    # Regression: on 300 uniformly random CartPole-like actions the default MLP reached a
    # mean NLL of 0.018 (mu(a|s) ~ 1 for every logged action, truth 0.5), which halved the
    # importance-weighted estimates; the held-out split now stops the fit near log 2.
    g = torch.Generator().manual_seed(0)
    td = TensorDict(
        {
            "observation": torch.randn(300, 4, generator=g),
            "action": torch.randint(2, (300,), generator=g),
        },
        [300],
    )
    memorised = estimate_behavior_policy(td, steps=1000, validation_fraction=0)
    stopped = estimate_behavior_policy(td, steps=1000)
    assert memorised.nll < 0.3 and memorised.validation_nll is None
    assert stopped.nll > 0.55 and stopped.validation_nll is not None
    probs = stopped.log_prob(td).exp()
    assert (probs - 0.5).abs().mean() < 0.15
    assert "held-out" in stopped.describe()
    with pytest.raises(ValueError, match="validation_fraction"):
        estimate_behavior_policy(td, steps=1, validation_fraction=1.0)
