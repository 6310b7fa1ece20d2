"""The loop a team runs on a log of decisions: log -> learn -> estimate -> compare.

A logging policy with known propensities writes a one-step log; ``bandit_ips`` learns a
policy from it; IS, WIS and FQE estimate that policy's value on a second log of the same
logger (a held-out log: estimates on the log the policy was fitted to are optimistic);
the exact values of the logger, of the learned policy and of behaviour cloning on the
same log come from the known reward model."""

from __future__ import annotations

import warnings

import pytest
import torch
from tensordict.nn import TensorDictModule
from torch import nn

from tests.decision_log import (
    N_FEATURES,
    N_ITEMS,
    decision_log,
    logging_probs,
    policy_probs,
    policy_value,
    reward_model,
)
from torchrl_offline.data.logged import from_logged
from torchrl_offline.ope.fqe import FQE
from torchrl_offline.ope.importance import ImportanceSampling, WeightedImportanceSampling
from torchrl_offline.ope.result import OPEWarning
from torchrl_offline.trainers.offline import train

#: Small settings that learn this 4-item problem in a few hundred updates.
SETTINGS = {"hidden_sizes": (16,), "actor_lr": 1e-2}


@pytest.fixture(scope="module")
def loop(tmp_path_factory):
    root = tmp_path_factory.mktemp("loop")
    train_log, held_log = decision_log(2000, seed=0), decision_log(2000, seed=1)
    logged = from_logged(train_log, path=root / "train", horizon=1)
    held_out = from_logged(held_log, path=root / "held_out", horizon=1)
    policies = {}
    for name in ("bandit_ips", "bc"):  # bc resolves to discrete_bc on these item indices
        torch.manual_seed(0)
        result = train(
            name, logged, total_steps=300, overrides=SETTINGS, progress=False, logger=None
        )
        policies[name] = result.algorithm.policy
    return held_log, held_out, policies


def test_the_learned_policy_beats_the_logger_and_behaviour_cloning(loop):
    held_log, _, policies = loop
    context = held_log["observation"]
    logger = policy_value(logging_probs(context), context)
    learned = policy_value(policy_probs(policies["bandit_ips"], context), context)
    cloned = policy_value(policy_probs(policies["bc"], context), context)
    scores = reward_model(context)
    best = policy_value(scores == scores.max(-1, keepdims=True), context)
    assert learned > logger + 0.25 and learned > cloned + 0.25
    assert learned > best - 0.05  # near the best policy of this reward model
    assert cloned == pytest.approx(logger, abs=0.05)  # imitation gives back the logger


@pytest.mark.parametrize("name", ["bandit_ips", "bc"])
def test_estimates_on_a_held_out_log_cover_the_true_values(loop, name):
    held_log, held_out, policies = loop
    policy = policies[name]
    truth = policy_value(policy_probs(policy, held_log["observation"]), held_log["observation"])
    critic = TensorDictModule(
        nn.Linear(N_FEATURES, N_ITEMS), ["observation"], ["state_action_value"]
    )  # linear in the context as the reward model: the regression can be exact
    estimators = [
        ImportanceSampling(policy, n_bootstrap=200),
        WeightedImportanceSampling(policy, n_bootstrap=200),
        FQE(policy, critic, num_steps=400, batch_size=500, lr=0.05, n_bootstrap=100),
    ]
    for estimator in estimators:
        with warnings.catch_warnings(record=True):
            warnings.simplefilter("always", OPEWarning)
            result = estimator.estimate(held_out)
        assert result.policy_mode == "stochastic"
        assert result.ci_low < truth < result.ci_high, (type(estimator).__name__, result)
        if name == "bandit_ips" and not isinstance(estimator, FQE):
            # near greedy, it gives ~0 probability to the logger's poorer picks: IS says so
            assert any("near-zero probability" in w for w in result.warnings)
