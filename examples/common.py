"""What every example shares: a locally collected dataset, and evaluation in the env.

The datasets are mixed-quality, like D4RL's "medium-replay": a scripted controller with
small and large Gaussian noise (or epsilon-greedy for CartPole) and a uniformly random
policy, mixed per episode. They are written as Minari datasets by
:func:`torchrl_offline.data.collect_dataset` and read back as TorchRL replay buffers on
memory-mapped storage by :func:`torchrl_offline.data.load_minari`.
"""

from __future__ import annotations

import argparse
import os
import tempfile
from pathlib import Path

import torch
from torchrl.envs import EnvBase, GymEnv
from torchrl.envs.utils import ExplorationType, set_exploration_type

from torchrl_offline.data import (
    EpsilonGreedyPolicy,
    GaussianNoisePolicy,
    MixturePolicy,
    OfflineReplayBuffer,
    UniformRandomPolicy,
    collect_dataset,
    load_minari,
)
from torchrl_offline.data.scripted import cartpole_controller, pendulum_swing_up


def parser(description: str, *, steps: int, dataset_steps: int) -> argparse.ArgumentParser:
    """The options every example takes (``--steps`` keeps the smoke test tiny)."""
    p = argparse.ArgumentParser(description=description)
    p.add_argument("--steps", type=int, default=steps, help="gradient steps")
    p.add_argument("--dataset-steps", type=int, default=dataset_steps, help="env steps")
    p.add_argument("--batch-size", type=int, default=256)
    p.add_argument("--hidden", type=int, default=256, help="units per hidden layer")
    p.add_argument("--eval-every", type=int, default=2_000, help="gradient steps")
    p.add_argument("--eval-episodes", type=int, default=5)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--root", type=Path, help="Minari datasets root (default: a temp folder)")
    return p


def _root(root: Path | None) -> Path:
    return root or Path(os.environ.get("MINARI_DATASETS_PATH") or tempfile.mkdtemp())


def pendulum_dataset(
    steps: int, *, seed: int = 0, root: Path | None = None, batch_size: int = 256
) -> OfflineReplayBuffer:
    """A mixed-quality ``Pendulum-v1`` dataset of ``steps`` transitions, as a replay buffer."""
    env = GymEnv("Pendulum-v1")
    spec = env.action_spec
    expert = pendulum_swing_up()
    behaviour = MixturePolicy(
        [
            GaussianNoisePolicy(expert, spec, sigma=0.2),
            GaussianNoisePolicy(expert, spec, sigma=1.0),
            UniformRandomPolicy(spec),
        ],
        weights=[0.3, 0.3, 0.4],
        per="episode",
    )
    path = collect_dataset(
        env,
        behaviour,
        steps,
        dataset_id="examples/pendulum-mixed-v0",
        root=_root(root),
        seed=seed,
        ref_min_score=-1200.0,  # about the return of the random policy
        ref_max_score=-150.0,  # about the return of the scripted controller
        overwrite=True,
    )
    env.close()
    return load_minari(path, batch_size=batch_size)


def cartpole_dataset(
    steps: int, *, seed: int = 0, root: Path | None = None, batch_size: int = 256
) -> OfflineReplayBuffer:
    """A mixed-quality ``CartPole-v1`` dataset (integer actions), as a replay buffer."""
    env = GymEnv("CartPole-v1", categorical_action_encoding=True)
    spec = env.action_spec
    expert = cartpole_controller()
    behaviour = MixturePolicy(
        [EpsilonGreedyPolicy(expert, spec, epsilon=0.3), UniformRandomPolicy(spec)],
        weights=[0.5, 0.5],
        per="episode",
    )
    path = collect_dataset(
        env,
        behaviour,
        steps,
        dataset_id="examples/cartpole-mixed-v0",
        root=_root(root),
        seed=seed,
        ref_min_score=22.0,  # about the return of the random policy
        ref_max_score=500.0,
        overwrite=True,
    )
    env.close()
    return load_minari(path, batch_size=batch_size)


@torch.no_grad()
def evaluate(env: EnvBase, policy, *, episodes: int, seed: int = 10_000) -> float:
    """Mean undiscounted return of the deterministic policy over seeded episodes."""
    returns = []
    for i in range(episodes):
        env.set_seed(seed + i)
        with set_exploration_type(ExplorationType.DETERMINISTIC):
            rollout = env.rollout(1000, policy, break_when_any_done=True)
        returns.append(rollout["next", "reward"].sum().item())
    return sum(returns) / len(returns)
