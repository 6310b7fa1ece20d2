"""d3rlpy 2.8.1 on the same mixed-quality Pendulum dataset, for comparison.

Runs in a separate environment with d3rlpy (it pins another gymnasium), on the arrays
written by ``benchmarks/pendulum_mixed.py --npz``. Same budget as
``benchmarks/learning_pendulum.py`` and ``benchmarks/learning_algos.py``: 128x128 ReLU
encoders, batch 256, 5000 gradient steps, min-max action scaling to the torque range,
deterministic evaluation every 1000 steps over 10 episodes. Every other setting is
d3rlpy's default for the algorithm (``--algo``): IQL with expectile 0.7 and
temperature 3.0; CQL (``CQLConfig``: actor lr 1e-4, critic 3e-4, conservative weight
5 with a Lagrange multiplier on threshold 10, 10 sampled actions); TD3+BC
(``TD3PlusBCConfig``); AWAC (``AWACConfig``, lambda 1.0, batch-softmax weights; its
default batch of 1024 is set to 256); BC (``BCConfig``, deterministic, lr 1e-3; its
default batch of 100 is set to 256).

Usage::

    python benchmarks/pendulum_mixed.py --npz /tmp/pendulum_mixed.npz
    /path/to/d3rlpy-venv/bin/python benchmarks/learning_pendulum_d3rlpy.py \\
        --data /tmp/pendulum_mixed.npz --seeds 0 1 --algo iql
"""

from __future__ import annotations

import argparse
import json
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


def make_algo(args):
    """The d3rlpy algorithm ``args.algo`` with d3rlpy's defaults, 128x128 networks."""
    encoder = d3rlpy.models.VectorEncoderFactory(hidden_units=[args.hidden, args.hidden])
    scaler = d3rlpy.preprocessing.MinMaxActionScaler(
        minimum=np.array([-2.0]), maximum=np.array([2.0])
    )
    common = {"batch_size": args.batch_size, "action_scaler": scaler}
    if args.algo == "iql":
        config = d3rlpy.algos.IQLConfig(
            actor_encoder_factory=encoder,
            critic_encoder_factory=encoder,
            value_encoder_factory=encoder,
            expectile=0.7,
            weight_temp=3.0,
            **common,
        )
    elif args.algo == "cql":
        config = d3rlpy.algos.CQLConfig(
            actor_encoder_factory=encoder, critic_encoder_factory=encoder, **common
        )
    elif args.algo == "td3_bc":
        config = d3rlpy.algos.TD3PlusBCConfig(
            actor_encoder_factory=encoder, critic_encoder_factory=encoder, **common
        )
    elif args.algo == "awac":
        config = d3rlpy.algos.AWACConfig(
            actor_encoder_factory=encoder, critic_encoder_factory=encoder, **common
        )
    elif args.algo == "bc":
        config = d3rlpy.algos.BCConfig(encoder_factory=encoder, **common)
    else:
        raise ValueError(f"unknown algo {args.algo!r}")
    return config.create(device="cpu")


def run(data, seed: int, args) -> list[tuple[int, float]]:
    d3rlpy.seed(seed)
    torch.manual_seed(seed)
    dataset = d3rlpy.dataset.MDPDataset(
        observations=data["observations"],
        actions=data["actions"],
        rewards=data["rewards"],
        terminals=data["terminals"],
        timeouts=data["timeouts"],
    )
    algo = make_algo(args)
    eval_seed = 1000 + 17 * seed if args.eval_seed is None else args.eval_seed
    curve = []
    for done in range(args.eval_every, args.steps + 1, args.eval_every):
        algo.fit(
            dataset,
            n_steps=args.eval_every,
            n_steps_per_epoch=args.eval_every,
            show_progress=False,
            save_interval=10**9,
            logger_adapter=d3rlpy.logging.NoopAdapterFactory(),
        )
        curve.append((done, evaluate(algo, args.episodes, seed=eval_seed)))
    return curve


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--data", required=True, help="npz written by pendulum_mixed.py --npz")
    parser.add_argument("--algo", default="iql", choices=["iql", "cql", "td3_bc", "awac", "bc"])
    parser.add_argument("--seeds", nargs="*", type=int, default=[0, 1, 2])
    parser.add_argument("--steps", type=int, default=5000)
    parser.add_argument("--hidden", type=int, default=128)
    parser.add_argument("--eval-every", type=int, default=1000)
    parser.add_argument("--episodes", type=int, default=10)
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument(
        "--eval-seed",
        type=int,
        default=None,
        help="first evaluation reset seed (default: 1000 + 17 * training seed)",
    )
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--jsonl", action="store_true", help="print one JSON line per seed")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    data = dict(np.load(args.data))
    finals = []
    for seed in args.seeds:
        start = time.perf_counter()
        curve = run(data, seed, args)
        seconds = time.perf_counter() - start
        finals.append(curve[-1][1])
        if args.jsonl:
            row = {"variant": "d3rlpy", "algo": args.algo, "seed": seed, "final": curve[-1][1]}
            row.update({"curve": curve, "seconds": round(seconds, 1)})
            print(json.dumps(row), flush=True)
            continue
        text = " ".join(f"{s}:{r:.0f}" for s, r in curve)
        print(
            f"d3rlpy_{args.algo} seed {seed}: final {curve[-1][1]:8.1f} "
            f"({seconds:.0f}s) curve {text}",
            flush=True,
        )
    if not args.jsonl:
        print(
            f"d3rlpy_{args.algo} mean final {np.mean(finals):.1f} over seeds {args.seeds}: {finals}"
        )


if __name__ == "__main__":
    main()
