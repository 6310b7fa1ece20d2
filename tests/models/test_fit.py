"""Fitting the ensemble: a known linear system is recovered, members get their own
bootstraps, elites are the best held-out members, bad data are refused by key."""

from __future__ import annotations

import pytest
import torch

from torchrl_offline.models import ModelError, TerminationWarning, fit_dynamics
from torchrl_offline.models import fit as fit_module

from .conftest import NOISE, linear_transitions


def test_fitting_a_linear_system_reaches_the_noise_level(linear_data):
    fitted = fit_dynamics(
        linear_data,
        num_members=3,
        num_elites=2,
        hidden_sizes=(32, 32),
        lr=3e-3,
        max_updates=600,
        batch_size=128,
        seed=0,
    )
    model = fitted.model
    # held-out MSE in units of the targets' variance: noise^2 / var(target) is the floor
    hold = linear_data[fitted.holdout_indices]
    mean, log_var = model(hold["observation"], hold["action"])
    truth = torch.cat(
        [hold["next", "observation"] - hold["observation"], hold["next", "reward"]], -1
    )
    raw_mse = (mean[model.elites] - truth).square().mean()
    assert raw_mse < 2.0 * NOISE**2
    # the predicted std is close to the noise
    std = (0.5 * log_var[model.elites]).exp().mean()
    assert 0.5 * NOISE < std < 2.0 * NOISE
    assert 0 < fitted.updates <= 600 and fitted.seconds > 0
    assert fitted.holdout_indices.numel() == 200


def test_members_train_on_different_bootstraps(monkeypatch):
    seen = []
    original = fit_module.DynamicsLoss.forward

    def spy(self, tensordict):
        seen.append(tensordict["observation"][:, :, 0].clone())
        return original(self, tensordict)

    monkeypatch.setattr(fit_module.DynamicsLoss, "forward", spy)
    fit_dynamics(
        linear_transitions(300),
        num_members=3,
        num_elites=1,
        hidden_sizes=(8,),
        max_updates=1,
        batch_size=1000,
        seed=0,
    )
    rows = seen[0]  # [E, n_train]: each member's bootstrap, in its own order
    assert rows.shape[0] == 3
    firsts = [set(r.tolist()) for r in rows]
    assert firsts[0] != firsts[1] != firsts[2]
    # drawn with replacement: a bootstrap repeats rows
    assert all(len(s) < rows.shape[1] for s in firsts)


def test_elites_are_the_members_with_the_lowest_holdout_mse(linear_data):
    fitted = fit_dynamics(
        linear_data, num_members=5, num_elites=2, hidden_sizes=(16,), max_updates=50, seed=1
    )
    order = fitted.member_holdout_mse.argsort()
    assert sorted(fitted.model.elites.tolist()) == sorted(order[:2].tolist())
    assert fitted.holdout_mse == pytest.approx(float(fitted.member_holdout_mse[order[:2]].mean()))


def test_early_stopping_stops_when_no_member_improves():
    data = linear_transitions(400)
    fitted = fit_dynamics(
        data,
        num_members=2,
        num_elites=1,
        hidden_sizes=(16,),
        patience=2,
        lr=1e-2,
        seed=0,
        max_epochs=2000,
    )
    assert fitted.epochs < 2000
    assert len(fitted.history) == fitted.epochs


def test_a_fit_is_reproducible():
    data = linear_transitions(300)
    a = fit_dynamics(data, num_members=2, num_elites=1, hidden_sizes=(8,), max_updates=20)
    b = fit_dynamics(data, num_members=2, num_elites=1, hidden_sizes=(8,), max_updates=20)
    torch.testing.assert_close(a.member_holdout_mse, b.member_holdout_mse)


def test_learned_termination_classifier_predicts_the_flag():
    data = linear_transitions(1000)
    data["next", "terminated"] = data["next", "observation"][:, :1] > 1.0
    fitted = fit_dynamics(
        data, num_members=2, num_elites=2, hidden_sizes=(32,), lr=3e-3, max_updates=400
    )
    assert fitted.model.learn_termination
    probe = data[:500]
    out = fitted.model.sample(probe["observation"], probe["action"])
    agree = (out["next", "terminated"] == probe["next", "terminated"]).float().mean()
    assert agree > 0.85


def _rare_ends(n: int = 2000):
    """The linear system, terminating on about 3% of its transitions."""
    data = linear_transitions(n)
    data["next", "terminated"] = data["next", "observation"][:, :1] > 1.9
    return data


def test_rare_episode_ends_are_weighted_to_balance_the_classifier():
    data = _rare_ends()
    kwargs = {"num_members": 2, "num_elites": 2, "hidden_sizes": (16,), "lr": 3e-3}
    kwargs.update(max_updates=400, seed=0)
    with pytest.warns(TerminationWarning, match="held-out terminal transitions") as caught:
        unweighted = fit_dynamics(data, termination_weight=None, **kwargs)
    assert caught[0].message.recall == unweighted.termination["termination_recall"] < 0.5
    balanced = fit_dynamics(data, **kwargs)  # "balanced" by default: no warning
    train = torch.ones(2000, dtype=torch.bool)
    train[balanced.holdout_indices] = False
    flags = data["next", "terminated"][train]
    assert balanced.termination["pos_weight"] == pytest.approx((~flags).sum() / flags.sum())
    assert balanced.termination["termination_recall"] > 0.8
    assert balanced.termination["termination_false_alarm"] < 0.2


def test_a_known_termination_function_reports_no_classifier_rates():
    fitted = fit_dynamics(
        _rare_ends(500),
        num_members=2,
        num_elites=2,
        hidden_sizes=(8,),
        max_updates=5,
        termination_fn="pendulum",
    )
    assert fitted.termination == {}


def test_data_without_terminated_and_without_function_is_refused():
    data = linear_transitions(50).exclude(("next", "terminated"))
    with pytest.raises(ModelError, match=r"\('next', 'terminated'\)") as info:
        fit_dynamics(data, num_members=2, num_elites=1, hidden_sizes=(4,), max_updates=1)
    assert info.value.field == "('next', 'terminated')"
    # a known termination function makes the flags unnecessary
    fitted = fit_dynamics(
        data,
        num_members=2,
        num_elites=1,
        hidden_sizes=(4,),
        max_updates=1,
        termination_fn="pendulum",
    )
    assert not fitted.model.learn_termination


def test_data_without_reward_is_refused():
    data = linear_transitions(50).exclude(("next", "reward"))
    with pytest.raises(ModelError, match=r"\('next', 'reward'\)"):
        fit_dynamics(data, termination_fn="pendulum")


def test_non_finite_observation_is_refused_with_its_index():
    data = linear_transitions(50)
    data["observation"][7, 1] = float("nan")
    with pytest.raises(ModelError, match="first at transition 7") as info:
        fit_dynamics(data)
    assert info.value.index == 7


def test_unknown_termination_name_lists_known_ones():
    with pytest.raises(ModelError, match="halfcheetah, hopper, pendulum"):
        fit_dynamics(linear_transitions(50), termination_fn="walker")


def test_the_data_range_covers_every_observation_of_the_dataset(recwarn):
    from torchrl_offline.models import LearnedModelEnv

    data = linear_transitions(500)
    fitted = fit_dynamics(data, num_members=2, num_elites=1, hidden_sizes=(4,), max_updates=2)
    every = torch.cat([data["observation"], data["next", "observation"]])
    torch.testing.assert_close(fitted.model.observation_low, every.amin(0))
    torch.testing.assert_close(fitted.model.observation_high, every.amax(0))
    # so the dataset's own states never count as outside the range
    LearnedModelEnv(fitted.model, data, batch_size=2, range_check="raise")
