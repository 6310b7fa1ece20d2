"""Estimators of the contextual-bandit OPE literature on logs of one-step decisions, each
checked against the exact truth of the simulator over many independent logs: unbiased ones
within Monte-Carlo error, biased ones by their known bias."""

from __future__ import annotations

import warnings

import pytest
import torch

from torchrl_offline.ope import (
    BanditSimulator,
    DirectMethod,
    DoublyRobustShrinkage,
    EpsilonGreedyPolicy,
    OneStepDoublyRobust,
    OPEError,
    PositionBasedIPS,
    SelfNormalizedDoublyRobust,
    SoftmaxPolicy,
    SwitchDoublyRobust,
)

N_LOGS, N_ROWS = 60, 800


@pytest.fixture(scope="module")
def setting():
    sim = BanditSimulator(num_contexts=100, num_actions=5, seed=0)
    logger = SoftmaxPolicy(sim.scorer(noise=1.0, seed=1))
    target = EpsilonGreedyPolicy(sim.scorer(noise=0.3, seed=2), epsilon=0.2)
    logs = [sim.simulate(N_ROWS, logger, seed=s) for s in range(N_LOGS)]
    return sim, logger, target, logs


def wrong_model(sim):
    """A reward model that is wrong everywhere (half the truth plus 0.2): DM's bias is visible."""
    return lambda obs, pos=None: 0.5 * sim.expected_reward(obs) + 0.2


def population(sim, logger, target):
    """Exact per-(context, action) quantities over the simulator's population."""
    x = sim.contexts
    pi, mu = target.probs(x), logger.probs(x)
    return pi, mu, pi / mu, sim.expected_reward(x), wrong_model(sim)(x)


def values(estimator, logs):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        results = [estimator.estimate(log) for log in logs]
    return torch.tensor([r.value for r in results], dtype=torch.float64), results


def assert_mean_near(estimates, expected, slack=0.0):
    se = estimates.std() / len(estimates) ** 0.5
    assert abs(estimates.mean().item() - expected) < 4 * se.item() + slack


def test_dr_is_unbiased_with_a_wrong_model_and_dm_carries_its_bias(setting):
    sim, logger, target, logs = setting
    truth = sim.value(target)
    pi, _, _, r, q = population(sim, logger, target)
    dm_bias = ((pi * (q - r)).sum(-1).mean()).item()
    assert abs(dm_bias) > 0.05  # the model is far off
    dr, dr_results = values(OneStepDoublyRobust(target, reward_model=wrong_model(sim)), logs)
    assert_mean_near(dr, truth)
    dm, _ = values(DirectMethod(target, reward_model=wrong_model(sim)), logs)
    assert dm.std() < 1e-2  # the model is fixed: only the sampled contexts vary
    assert_mean_near(dm - truth, dm_bias, slack=1e-3)
    covered = sum(r.ci_low <= truth <= r.ci_high for r in dr_results) / N_LOGS
    assert covered >= 0.85
    assert dr_results[0].diagnostics["reward_model"] == "given: function"
    assert {"ess", "max_weight"} <= set(dr_results[0].diagnostics)


def test_switch_dr_bias_is_the_model_bias_on_the_switched_actions(setting):
    sim, logger, target, logs = setting
    pi, _, w, r, q = population(sim, logger, target)
    tau = 3.0
    switched = (w > tau).double()
    assert 0 < switched.mean() < 1
    bias = (pi * switched * (q - r)).sum(-1).mean().item()
    assert abs(bias) > 0.01
    est, results = values(SwitchDoublyRobust(target, reward_model=wrong_model(sim), tau=tau), logs)
    assert_mean_near(est - sim.value(target), bias)
    assert 0 < results[0].diagnostics["switched_fraction"] < 1


def test_dr_with_optimistic_shrinkage_has_its_known_bias(setting):
    sim, logger, target, logs = setting
    _, mu, w, r, q = population(sim, logger, target)
    lam = 4.0
    shrunk = lam * w / (w.pow(2) + lam)
    bias = (mu * (shrunk - w) * (r - q)).sum(-1).mean().item()
    assert abs(bias) > 0.01
    est, _ = values(DoublyRobustShrinkage(target, reward_model=wrong_model(sim), lam=lam), logs)
    assert_mean_near(est - sim.value(target), bias)
    # lam = inf is DR, row by row
    inf = DoublyRobustShrinkage(target, reward_model=wrong_model(sim), lam=float("inf"))
    dr = OneStepDoublyRobust(target, reward_model=wrong_model(sim))
    assert inf.estimate(logs[0]).value == pytest.approx(dr.estimate(logs[0]).value, rel=1e-12)


def test_sndr_is_consistent_and_cross_fitted_dr_is_unbiased(setting):
    sim, _, target, logs = setting
    truth = sim.value(target)
    sndr, _ = values(SelfNormalizedDoublyRobust(target, reward_model=wrong_model(sim)), logs)
    assert_mean_near(sndr, truth, slack=0.01)  # O(1/n) bias
    fitted, results = values(OneStepDoublyRobust(target, folds=2), logs[:30])
    assert_mean_near(fitted, truth)
    assert results[0].diagnostics["reward_model"] == "ridge, 2-fold cross-fitted"


def test_position_based_ips_is_unbiased_on_slates():
    sim = BanditSimulator(num_contexts=80, num_actions=5, num_positions=3, seed=0)
    logger = SoftmaxPolicy(sim.scorer(noise=1.0, seed=1))
    sharp = torch.tensor([2.0, 1.5, 1.0])  # a sharper choice in the top slot
    target = SoftmaxPolicy(sim.scorer(noise=0.3, seed=2, sharpness=sharp), position_key="position")
    logs = [sim.simulate(300, logger, seed=s) for s in range(N_LOGS)]
    est, results = values(PositionBasedIPS(target), logs)
    truth = sim.value(target)
    assert truth > 1.0 > truth / 3  # a slate's value: the sum over its 3 slots
    assert_mean_near(est, truth)
    assert results[0].diagnostics["positions"] == 3
    # each slot separately is plain IS on that slot's rows
    from torchrl_offline.ope import ImportanceSampling

    log = logs[0]
    per_slot = sum(
        ImportanceSampling(target, n_bootstrap=2).estimate(log[log["position"] == k]).value
        for k in range(3)
    )
    assert results[0].value == pytest.approx(per_slot, rel=1e-9)


def test_one_step_estimators_refuse_what_they_cannot_use(setting):
    _, _, target, logs = setting
    log = logs[0][:10].exclude(("next", "observation")).clone()
    log["episode"] = torch.tensor([0, 0, 1, 1, 2, 2, 3, 3, 4, 4])
    log["next", "done"][::2] = False
    log["next", "terminated"][::2] = False
    with pytest.raises(OPEError, match="one-step decisions"):
        OneStepDoublyRobust(target).estimate(log)
    with pytest.raises(OPEError, match="no 'position' key"):
        PositionBasedIPS(target).estimate(logs[0])
    with pytest.raises(OPEError, match=r"returned \(800, 2\) for 800 rows"):
        DirectMethod(target, reward_model=lambda obs, pos: torch.zeros(len(obs), 2)).estimate(
            logs[0]
        )
    with pytest.raises(ValueError, match="reward_model must be one of"):
        DirectMethod(target, reward_model="forest")


def test_the_estimators_are_registered():
    from torchrl_offline import registry

    names = {"dm": DirectMethod, "sndr": SelfNormalizedDoublyRobust, "pbm_ips": PositionBasedIPS}
    names.update(switch_dr=SwitchDoublyRobust, dr_os=DoublyRobustShrinkage)
    names.update(dr_one_step=OneStepDoublyRobust)
    for name, cls in names.items():
        assert registry.get("ope", name) is cls
