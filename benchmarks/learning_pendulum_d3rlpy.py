"""d3rlpy 2.8.1's IQL on the same mixed-quality Pendulum dataset, for comparison.

Runs in a separate environment with d3rlpy (it pins another gymnasium), on the arrays
written by ``benchmarks/pendulum_mixed.py --npz``. Same budget as
``benchmarks/learning_pendulum.py``: 128x128 ReLU encoders, batch 256, Adam 3e-4,
expectile 0.7, temperature 3.0, 5000 gradient steps, min-max action scaling to the
torque range, deterministic evaluation every 1000 steps over 10 episodes.

Usage::

    python benchmarks/pendulum_mixed.py --npz /tmp/pendulum_mixed.npz
    /path/to/d3rlpy-venv/bin/python benchmarks/learning_pendulum_d3rlpy.py \\
        --data /tmp/pendulum_mixed.npz --seeds 0 1
"""

from __future__ import annotations

import argparse
import time

import d3rlpy
import gymnasium as gym
import numpy as np
import torch


def evaluate(algo, episodes: int, seed: int) -> float:
    env = gym.make("Pendulum-v1")
    returns = []
    for ep in range(episodes):
        obs, _ = env.reset(seed=seed + ep)
        total, done = 0.0, False
        while not done:
            action = algo.predict(obs[None].astype(np.float32))[0]
            obs, reward, terminated, truncated, _ = env.step(np.clip(action, -2.0, 2.0))
            total += float(reward)
            done = terminated or truncated
        returns.append(total)
    env.close()
    return float(np.mean(returns))


def run(data, seed: int, args) -> list[tuple[int, float]]:
    d3rlpy.seed(seed)
    dataset = d3rlpy.dataset.MDPDataset(
        observations=data["observations"],
        actions=data["actions"],
        rewards=data["rewards"],
        terminals=data["terminals"],
        timeouts=data["timeouts"],
    )
    encoder = d3rlpy.models.VectorEncoderFactory(hidden_units=[args.hidden, args.hidden])
    iql = d3rlpy.algos.IQLConfig(
        actor_encoder_factory=encoder,
        critic_encoder_factory=encoder,
        value_encoder_factory=encoder,
        expectile=0.7,
        weight_temp=3.0,
        action_scaler=d3rlpy.preprocessing.MinMaxActionScaler(
            minimum=np.array([-2.0]), maximum=np.array([2.0])
        ),
    ).create(device="cpu")
    curve = []
    for done in range(args.eval_every, args.steps + 1, args.eval_every):
        iql.fit(
            dataset,
            n_steps=args.eval_every,
            n_steps_per_epoch=args.eval_every,
            show_progress=False,
            save_interval=10**9,
            logger_adapter=d3rlpy.logging.NoopAdapterFactory(),
        )
        curve.append((done, evaluate(iql, args.episodes, seed=1000 + 17 * seed)))
    return curve


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--data", required=True, help="npz written by pendulum_mixed.py --npz")
    parser.add_argument("--seeds", nargs="*", type=int, default=[0, 1, 2])
    parser.add_argument("--steps", type=int, default=5000)
    parser.add_argument("--hidden", type=int, default=128)
    parser.add_argument("--eval-every", type=int, default=1000)
    parser.add_argument("--episodes", type=int, default=10)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    data = dict(np.load(args.data))
    finals = []
    for seed in args.seeds:
        start = time.perf_counter()
        curve = run(data, seed, args)
        finals.append(curve[-1][1])
        text = " ".join(f"{s}:{r:.0f}" for s, r in curve)
        print(
            f"d3rlpy_iql seed {seed}: final {curve[-1][1]:8.1f} "
            f"({time.perf_counter() - start:.0f}s) curve {text}",
            flush=True,
        )
    print(f"d3rlpy_iql mean final {np.mean(finals):.1f} over seeds {args.seeds}: {finals}")


if __name__ == "__main__":
    main()
