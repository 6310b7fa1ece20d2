"""The main job, end to end on a laptop CPU with no network.

1. Build a mixed-quality offline dataset for ``Pendulum-v1`` locally: a scripted
   swing-up controller with small and large Gaussian noise, and a uniform random
   policy, mixed per episode; every action's behaviour log-probability is recorded.
2. Store it as a Minari dataset (with random and expert reference returns), load it
   back into a TorchRL replay buffer on memory-mapped storage, and print its statistics.
3. Train IQL on it inside TorchRL's ``Trainer`` (checkpoints, ``metrics.csv`` and the
   run's figure ``metrics.png`` under ``--out``), evaluating the policy in the
   environment as it learns.
4. Print a table (behaviour policy, learned policy, normalized scores) and where the
   figure is: the evaluation return with its spread over episodes, the normalized score,
   the behaviour data's level and the losses.

Run with ``make demo`` (or ``python examples/demo.py --help``).
"""

from __future__ import annotations

import argparse
import os
import tempfile
from pathlib import Path

import torch
from torchrl.envs import GymEnv
from torchrl.envs.utils import ExplorationType, set_exploration_type

from torchrl_offline.data import (
    GaussianNoisePolicy,
    MixturePolicy,
    UniformRandomPolicy,
    collect_dataset,
    dataset_stats,
    load_minari,
    normalized_score,
)
from torchrl_offline.data.scripted import pendulum_swing_up
from torchrl_offline.trainers.offline import train

ENV = "Pendulum-v1"


def mean_return(env: GymEnv, policy, episodes: int, seed: int) -> float:
    """Average undiscounted return of ``policy`` over ``episodes`` seeded episodes."""
    returns = []
    for i in range(episodes):
        env.set_seed(seed + i)
        with torch.no_grad(), set_exploration_type(ExplorationType.DETERMINISTIC):
            rollout = env.rollout(1000, policy, break_when_any_done=True)
        returns.append(rollout["next", "reward"].sum().item())
    return sum(returns) / len(returns)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--steps", type=int, default=20_000, help="transitions to collect")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--algo", default="iql", help="algorithm to train (a registered loss)")
    parser.add_argument("--train-steps", type=int, default=10_000, help="gradient steps")
    parser.add_argument("--eval-every", type=int, default=2_000)
    parser.add_argument("--eval-episodes", type=int, default=10)
    parser.add_argument("--out", type=Path, default=Path("outputs/demo"), help="run directory")
    parser.add_argument(
        "--root",
        type=Path,
        default=None,
        help="Minari datasets root (default: $MINARI_DATASETS_PATH, else a temporary folder)",
    )
    args = parser.parse_args()
    root = args.root or Path(os.environ.get("MINARI_DATASETS_PATH") or tempfile.mkdtemp())
    torch.manual_seed(args.seed)

    env = GymEnv(ENV)
    spec = env.action_spec
    expert = pendulum_swing_up()
    random_policy = UniformRandomPolicy(spec)
    ref_max = mean_return(env, expert, 5, seed=10_000)
    ref_min = mean_return(env, random_policy, 5, seed=10_000)
    print(f"reference returns over 5 episodes: random {ref_min:.1f}, scripted expert {ref_max:.1f}")

    behaviour = MixturePolicy(
        [
            GaussianNoisePolicy(expert, spec, sigma=0.2),
            GaussianNoisePolicy(expert, spec, sigma=1.0),
            random_policy,
        ],
        weights=[0.3, 0.3, 0.4],
        per="episode",
    )
    path = collect_dataset(
        env,
        behaviour,
        args.steps,
        dataset_id="pendulum/mixed-v0",
        root=root,
        seed=args.seed,
        ref_min_score=ref_min,
        ref_max_score=ref_max,
        algorithm_name="scripted swing-up with noise (sigma 0.2 / 1.0) + uniform random",
        overwrite=True,
    )
    buffer = load_minari(path, batch_size=256)
    stats = dataset_stats(buffer)
    print(f"\ndataset: {path}\n")
    print(stats)
    scores = normalized_score(stats.episode_returns, buffer)
    print(
        f"\nnormalized score of the behaviour episodes: mean {scores.mean():.1f}, "
        f"min {scores.min():.1f}, max {scores.max():.1f}"
    )

    torch.set_num_threads(1)  # small networks: one thread is fastest on a shared 2-core CPU
    print(f"\ntraining {args.algo} for {args.train_steps} gradient steps (run dir {args.out})")
    result = train(
        args.algo,
        buffer,
        total_steps=args.train_steps,
        seed=args.seed,
        out_dir=args.out,
        overwrite=True,  # running the demo again replaces its previous run
        normalize_observations=True,
        eval_env=ENV,
        eval_interval=args.eval_every,
        eval_episodes=args.eval_episodes,
        checkpoint_interval=args.eval_every,
    )
    final = result.evaluations[-1]
    best = max(result.evaluations, key=lambda e: e["return_mean"])
    behaviour = stats.returns["mean"]
    rows = [
        ("random policy (reference)", ref_min, normalized_score(ref_min, buffer)),
        ("scripted expert (reference)", ref_max, normalized_score(ref_max, buffer)),
        ("behaviour policy (dataset mean)", behaviour, normalized_score(behaviour, buffer)),
        (
            f"{args.algo}, final (step {final['step']})",
            final["return_mean"],
            final["normalized_score"],
        ),
        (f"{args.algo}, best (step {best['step']})", best["return_mean"], best["normalized_score"]),
    ]
    print("\n| policy | return | normalized score |\n|---|---:|---:|")
    for name, ret, score in rows:
        print(f"| {name} | {ret:.1f} | {score:.1f} |")
    print(f"\nfigure: {result.figure}\nmetrics: {result.metrics}\ncheckpoint: {result.checkpoint}")


if __name__ == "__main__":
    main()
