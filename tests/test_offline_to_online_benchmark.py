"""The offline-to-online benchmark's upright-reward task (benchmarks/offline_to_online.py)."""

from __future__ import annotations

import torch
from torchrl.envs.utils import check_env_specs

from tests.benchmark_scripts import load_benchmark

o2o = load_benchmark("offline_to_online")


def test_upright_reward_is_one_within_the_band_and_zero_elsewhere():
    angles = torch.tensor([0.0, 0.4, 0.5, 3.0, -0.4])
    observation = torch.stack([angles.cos(), angles.sin(), torch.zeros(5)], -1)
    # cos(0.45) = 0.9: inside below 0.451 rad, outside beyond
    assert o2o.upright_reward(observation).squeeze(-1).tolist() == [1.0, 1.0, 0.0, 0.0, 1.0]


def test_upright_env_rewards_its_next_observation():
    env = o2o._env("upright")
    check_env_specs(env)
    env.set_seed(0)
    rollout = env.rollout(60)
    reward = rollout["next", "reward"]
    assert reward.shape == (60, 1)
    assert torch.equal(reward, o2o.upright_reward(rollout["next", "observation"]))
    assert env.full_reward_spec["reward"].space.low.item() == 0.0
    assert o2o._env("pendulum") == "Pendulum-v1"


def test_upright_logged_data_is_relabelled_like_the_env():
    data = o2o._logged("mixed", "upright")
    reward = data["next", "reward"]
    assert torch.equal(reward, o2o.upright_reward(data["next", "observation"]))
    assert 0 < reward.mean().item() < 1  # the noisy controller reaches the top sometimes
    native = o2o._logged("mixed", "pendulum")["next", "reward"]
    assert (native <= 0).all()


def test_summary_reports_the_value_gap():
    rows = [
        {
            "algo": algo,
            "online": [(0, 10.0), (250, 8.0), (500, 12.0)],
            "offline_end_values": {"q_gap": gap, "q_below_return": below},
        }
        for algo, gap, below in [("cql", -20.0, 0.98), ("cal_ql", -1.5, 0.37)]
    ]
    table = o2o.summarize(rows, dip_evals=2)
    assert "| cql | 1 | 10 ± 0 | 8 ± 0 | 2 ± 0 | 12 ± 0 | -20.0 ± 0.0 | 98 ± 0% |" in table
    assert "| cal_ql | 1 |" in table and "-1.5 ± 0.0 | 37 ± 0% |" in table


def test_value_gap_compares_the_policys_values_with_the_returns():
    from torchrl.data import Bounded, Unbounded

    from torchrl_offline.data.episodes import episode_ends, monte_carlo_returns
    from torchrl_offline.trainers.algorithms import build_algorithm

    data = o2o._logged("mixed", "upright")[:400]
    algorithm = build_algorithm(
        "cql", Unbounded((3,)), Bounded(-2.0, 2.0, (1,)), hidden_sizes=(8, 8)
    )
    gap = o2o.value_gap(algorithm, data, gamma=0.9)
    returns = monte_carlo_returns(data["next", "reward"].reshape(-1), episode_ends(data), gamma=0.9)
    assert gap["mc_return"] == round(returns.mean().item(), 3)
    assert abs(gap["q_gap"] - (gap["q_policy"] - gap["mc_return"])) < 2e-3
    assert 0.0 <= gap["q_below_return"] <= 1.0
