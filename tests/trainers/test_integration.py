"""End to end on real data-layer output: collect a Minari dataset, load it, train, evaluate."""

from __future__ import annotations

import pytest
import torch
from torchrl.envs import GymEnv

from torchrl_offline.data import UniformRandomPolicy, collect_dataset, load_minari
from torchrl_offline.trainers.algorithms import specs_from_dataset
from torchrl_offline.trainers.hooks import evaluate_policy
from torchrl_offline.trainers.offline import load_algorithm, train


@pytest.mark.parametrize(
    ("env_id", "algo", "expected"),
    [("Pendulum-v1", "iql", "iql"), ("CartPole-v1", "iql", "discrete_iql")],
)
def test_collected_dataset_trains_and_evaluates(tmp_path, env_id, algo, expected):
    env = GymEnv(env_id, categorical_action_encoding=True)
    path = collect_dataset(
        env,
        UniformRandomPolicy(env.action_spec),
        300,
        dataset_id=f"test/{env_id.lower()}-v0",
        root=tmp_path / "minari",
        seed=0,
        ref_min_score=-1200.0 if env_id == "Pendulum-v1" else 0.0,
        ref_max_score=-150.0 if env_id == "Pendulum-v1" else 500.0,
    )
    buffer = load_minari(path, batch_size=32)
    obs_spec, act_spec = specs_from_dataset(buffer)
    assert obs_spec.shape == env.observation_spec["observation"].shape
    assert type(act_spec) is type(env.action_spec)
    result = train(
        algo,
        buffer,
        total_steps=6,
        seed=1,
        out_dir=tmp_path / "run",
        batch_size=32,
        overrides={"hidden_sizes": (16,)},
        eval_env=env_id,
        eval_interval=3,
        eval_episodes=1,
        eval_max_steps=25,
        checkpoint_interval=3,
        progress=False,
    )
    assert result.algorithm.name == expected
    assert [e["step"] for e in result.evaluations] == [0, 3, 6]
    assert all(e["normalized_score"] is not None for e in result.evaluations)
    algo_back, step = load_algorithm(tmp_path / "run")
    assert step == 6
    with torch.no_grad():
        again = evaluate_policy(
            GymEnv(env_id, categorical_action_encoding=True),
            algo_back.policy,
            num_episodes=1,
            seed=1,
            max_steps=25,
        )
    assert again.mean == pytest.approx(result.evaluations[-1]["return_mean"])
