"""Throughput cases for MOPO: one update on a mixed batch against the same SAC-N update
on dataset batches alone; and, run as a script, the cost of one rollout phase.

``mopo/ours`` samples MOPO's batch as the trainer does
(:class:`~torchrl_offline.trainers.model_rollouts.ModelRolloutSource`: 5% of the rows
from the dataset's replay buffer, 95% from the FIFO model buffer, concatenated and
marked) and does one :class:`~torchrl_offline.objectives.mopo.MOPOLoss` update (SAC-N at
``N = 2``); ``mopo/sac_n`` samples the whole batch from the dataset's buffer and does the
same update. Both sample every update (the other cases reuse one fixed batch), so the
ratio is the cost of the model data in an update. The buffers hold random transitions:
what the rows hold does not change the cost.

``python benchmarks/throughput_cases/mopo.py`` times one rollout phase at MOPO's
settings: ``h = 5`` steps of 50,000 rollouts in a 7-member 4x200 ensemble
(:class:`~torchrl_offline.models.env.LearnedModelEnv`) with a 2x256 SAC actor.
"""

from __future__ import annotations

import argparse
import pathlib
import sys
import time
from collections.abc import Callable

import torch
from tensordict import TensorDict
from torchrl.data import LazyTensorStorage, RandomSampler, ReplayBuffer

from torchrl_offline.data.storage import make_replay_buffer
from torchrl_offline.objectives.mopo import MOPOLoss
from torchrl_offline.trainers.model_rollouts import ModelRolloutSource

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))
import _nets

LR = 3e-4
TAU = 0.005
DATASET_ROWS = 100_000
MODEL_ROWS = 250_000  # one rollout phase: 50,000 starts x 5 steps


def _transitions(obs_dim: int, act_dim: int, n: int, seed: int) -> TensorDict:
    batch = _nets.random_batch(obs_dim, act_dim, n, seed=seed)
    return batch.exclude(("next", "truncated"))


def _update(loss_module: MOPOLoss, sample: Callable[[], TensorDict]) -> Callable[[], None]:
    loss_module.make_value_estimator(gamma=0.99)
    optim = _nets.adam(loss_module.parameters(), lr=LR)
    updater = _nets.ours_soft_update(loss_module, TAU)

    def step() -> None:
        out = loss_module(sample())
        total = sum(v for k, v in out.items() if k.startswith("loss_"))
        optim.zero_grad(set_to_none=True)
        total.backward()
        optim.step()
        updater.step()

    return step


def _loss(obs_dim: int, act_dim: int, hidden: int) -> MOPOLoss:
    torch.manual_seed(0)
    return MOPOLoss(
        _nets.tanh_normal_actor(obs_dim, act_dim, hidden), _nets.qvalue(obs_dim, act_dim, hidden)
    )


def cases(
    obs_dim: int, act_dim: int, batch_size: int, hidden: int
) -> dict[str, Callable[[], None]]:
    """``mopo/ours`` (the mixed batch) and ``mopo/sac_n`` (dataset batches alone)."""
    dataset = make_replay_buffer(_transitions(obs_dim, act_dim, DATASET_ROWS, seed=0))
    settings = {
        "rollout_length": 5,
        "rollout_interval": 1000,
        "rollout_batch_size": 50_000,
        "rollout_retain_epochs": 5,
        "real_ratio": 0.05,
        "reward_penalty": 1.0,
        "rollout_penalty": "aleatoric",
        "model_hidden_sizes": (200, 200, 200, 200),
    }
    source = ModelRolloutSource(
        dataset, None, recipe=None, batch_size=batch_size, settings=settings, seed=0
    )
    source.model_buffer.extend(_transitions(obs_dim, act_dim, MODEL_ROWS, seed=1))
    plain = ReplayBuffer(storage=LazyTensorStorage(DATASET_ROWS), sampler=RandomSampler())
    plain.extend(_transitions(obs_dim, act_dim, DATASET_ROWS, seed=0))
    return {
        "mopo/ours": _update(_loss(obs_dim, act_dim, hidden), source.sample),
        "mopo/sac_n": _update(_loss(obs_dim, act_dim, hidden), lambda: plain.sample(batch_size)),
    }


def rollout_phase_seconds(
    obs_dim: int, act_dim: int, *, starts: int, length: int, hidden: int, repeats: int
) -> list[float]:
    """Seconds of one rollout phase (``length`` policy steps of ``starts`` rollouts in a
    7-member 4x200 ensemble), ``repeats`` times."""
    from torchrl.envs.utils import ExplorationType, set_exploration_type

    from torchrl_offline.models.dynamics import DynamicsEnsemble
    from torchrl_offline.models.env import LearnedModelEnv

    torch.manual_seed(0)
    model = DynamicsEnsemble(obs_dim, act_dim)
    env = LearnedModelEnv(model, torch.randn(DATASET_ROWS, obs_dim), batch_size=starts,
                          reward_penalty=1.0, range_check="ignore")  # fmt: skip
    actor = _nets.tanh_normal_actor(obs_dim, act_dim, hidden)
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        with torch.no_grad(), set_exploration_type(ExplorationType.RANDOM):
            env.rollout(length, actor, auto_reset=True, break_when_any_done=False)
        times.append(time.perf_counter() - start)
    return times


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description="one MOPO rollout phase, timed")
    parser.add_argument("--obs-dim", type=int, default=17)
    parser.add_argument("--act-dim", type=int, default=6)
    parser.add_argument("--starts", type=int, default=50_000)
    parser.add_argument("--length", type=int, default=5)
    parser.add_argument("--hidden", type=int, default=256)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    seconds = rollout_phase_seconds(args.obs_dim, args.act_dim, starts=args.starts,
                                    length=args.length, hidden=args.hidden,
                                    repeats=args.repeats)  # fmt: skip
    steps = args.starts * args.length
    best = min(seconds)
    print(f"rollout phase: {args.starts} starts x {args.length} steps in {best:.2f} s "
          f"(best of {args.repeats}; {steps / best:,.0f} model steps/s, "
          f"{args.threads} threads)")  # fmt: skip
