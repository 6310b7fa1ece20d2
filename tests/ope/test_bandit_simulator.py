"""The contextual-bandit simulator: logs in from_logged's one-step layout, exact values."""

from __future__ import annotations

import pytest
import torch

from torchrl_offline.data.logged import from_logged
from torchrl_offline.ope import BanditSimulator, SoftmaxPolicy, TablePolicy


@pytest.mark.parametrize("positions", [None, 3])
def test_a_simulated_log_has_the_layout_of_from_logged_at_horizon_one(tmp_path, positions):
    sim = BanditSimulator(num_contexts=20, num_actions=4, num_positions=positions, seed=0)
    log = sim.simulate(30, SoftmaxPolicy(sim.scorer(noise=1.0)), seed=0)
    stored = from_logged(BanditSimulator.columns(log), path=tmp_path / "d", horizon=1).storage[:]

    def layout(td):
        return {k: (td.get(k).dtype, tuple(td.get(k).shape)) for k in td.keys(True, True)}

    assert layout(log) == layout(stored)
    for key in stored.keys(True, True):
        assert torch.equal(log.get(key), stored.get(key)), key


def test_a_policy_value_is_exact_and_matches_a_long_log():
    sim = BanditSimulator(num_contexts=30, num_actions=3, num_positions=2, seed=1)
    uniform = TablePolicy([1 / 3] * 3, context_features=[])
    truth = sim.value(uniform)
    by_hand = sum(
        sim.expected_reward(sim.contexts, torch.full((30,), k)).mean().item() for k in range(2)
    )
    assert truth == pytest.approx(by_hand, rel=1e-12)
    log = sim.simulate(20_000, uniform, seed=0)
    per_slate = log["next", "reward"].sum().item() / 20_000
    assert per_slate == pytest.approx(truth, abs=0.02)
    assert torch.allclose(log["action_prob"], torch.full((40_000,), 1 / 3))
    assert log["position"][:4].tolist() == [0, 1, 0, 1]  # the slots of a slate follow each other


def test_gaussian_rewards_and_a_seeded_log():
    sim = BanditSimulator(num_contexts=10, num_actions=3, reward_noise=0.5, seed=2)
    policy = SoftmaxPolicy(sim.scorer())
    a, b = sim.simulate(50, policy, seed=4), sim.simulate(50, policy, seed=4)
    assert torch.equal(a["next", "reward"], b["next", "reward"])
    assert not set(a["next", "reward"].unique().tolist()) <= {0.0, 1.0}
