"""OPE on logs of one-step decisions (every episode one terminal step): FQE is a reward
regression, and the IS family collapses to IS and WIS."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch
from tensordict.nn import TensorDictModule
from torch import nn
from torchrl.data import Categorical
from torchrl.modules import ProbabilisticActor

from tests.decision_log import N_FEATURES, N_ITEMS, decision_log, reward_model, softmax
from torchrl_offline.data.logged import from_logged
from torchrl_offline.ope.fqe import FQE

#: The evaluation policy's scores: a softmax over ``context @ EVAL_WEIGHTS``.
EVAL_WEIGHTS = np.array(
    [[1.0, -0.5, 0.0, 0.5], [-1.0, 0.5, 1.0, 0.0], [0.0, 1.0, -1.0, 0.5]], np.float32
)


def evaluation_policy() -> ProbabilisticActor:
    scores = nn.Linear(N_FEATURES, N_ITEMS, bias=False)
    with torch.no_grad():
        scores.weight.copy_(torch.as_tensor(EVAL_WEIGHTS.T))
    return ProbabilisticActor(
        TensorDictModule(scores, ["observation"], ["logits"]),
        in_keys=["logits"],
        spec=Categorical(N_ITEMS),
        distribution_class=torch.distributions.Categorical,
    )


def expected_reward(context: np.ndarray) -> float:
    """The evaluation policy's mean expected reward over ``context`` under the known
    reward model: what any estimator should find on these contexts."""
    pi = softmax(context @ EVAL_WEIGHTS)
    return float((pi * reward_model(context)).sum(-1).mean())


@pytest.fixture(scope="module")
def bandit(tmp_path_factory):
    log = decision_log(200)
    return log, from_logged(log, path=tmp_path_factory.mktemp("log") / "d", horizon=1)


def test_fqe_at_horizon_one_is_a_reward_regression(bandit):
    log, buffer = bandit
    critic = TensorDictModule(
        nn.Linear(N_FEATURES, N_ITEMS), ["observation"], ["state_action_value"]
    )  # the reward model is linear in the context: the regression can be exact
    fqe = FQE(
        evaluation_policy(),
        critic,
        gamma=0.99,
        num_steps=400,
        batch_size=200,
        lr=0.05,
        interval="initial_states",
        n_bootstrap=100,
    )
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no divergence / target-refresh warning applies
        result = fqe.estimate(buffer)
    assert result.warnings == []
    assert any("nothing is bootstrapped" in note for note in result.notes)
    truth = expected_reward(log["observation"])
    assert result.value == pytest.approx(truth, abs=0.03)
    assert result.diagnostics["n_episodes"] == 200


def test_per_decision_estimators_equal_their_twins_at_horizon_one(bandit):
    from torchrl_offline.ope.importance import (
        ImportanceSampling,
        PerDecisionImportanceSampling,
        WeightedImportanceSampling,
        WeightedPerDecisionImportanceSampling,
    )

    log, buffer = bandit
    policy = evaluation_policy()
    for twin, estimator in (
        (ImportanceSampling, PerDecisionImportanceSampling),
        (WeightedImportanceSampling, WeightedPerDecisionImportanceSampling),
    ):
        a, b = (
            twin(policy, n_bootstrap=50).estimate(buffer),
            estimator(policy, n_bootstrap=50).estimate(buffer),
        )
        assert a.value == pytest.approx(b.value, rel=1e-9)
        assert (a.ci_low, a.ci_high) == pytest.approx((b.ci_low, b.ci_high), rel=1e-9)
    # the logged propensities are exact: IS is unbiased, near the truth on 200 decisions
    result = ImportanceSampling(policy, n_bootstrap=200).estimate(buffer)
    assert result.ci_low < expected_reward(log["observation"]) < result.ci_high


def test_one_step_data_are_recognised(bandit, tmp_path):
    from torchrl_offline.ope.episodes import is_one_step

    _, buffer = bandit
    assert is_one_step(buffer) and is_one_step(buffer.storage[:])
    log = decision_log(6)
    log["terminated"] = [0, 0, 1, 0, 0, 1]
    assert not is_one_step(from_logged(log, path=tmp_path / "d"))


def test_one_step_estimators_report_each_twin_once():
    from torchrl_offline.ope.importance import one_step_estimators

    names, note = one_step_estimators(["is", "pdis", "wis", "wpdis", "dr"])
    assert names == ["is", "wis", "dr"]
    assert note == (
        "pdis, wpdis not run: every episode is one step, where PDIS equals IS, WPDIS equals WIS"
    )
    assert one_step_estimators(["fqe", "wdr"]) == (["fqe", "wdr"], None)


def test_fqe_does_not_query_the_policy_on_next_states_of_terminal_steps(bandit):
    """The target of a terminal step is its reward: the fit never evaluates the policy."""
    _, buffer = bandit
    policy, calls = evaluation_policy(), []
    scores = next(m for m in policy.modules() if isinstance(m, nn.Linear))
    scores.register_forward_hook(lambda *_: calls.append(1))
    fqe = FQE(policy, num_steps=20, batch_size=64, num_cells=(8,), n_refits=2)
    fqe.fit(buffer)
    assert calls == []
    assert fqe.evaluate(buffer).warnings == []  # evaluating the fit does query it
    assert calls
