"""Train the behaviour agents of the benchmark datasets online with TorchRL (SAC and DQN).

Continuous tasks (``pendulum``, ``hopper``, ``halfcheetah``) are trained with TorchRL's
``SACLoss`` (twin critics, automatic entropy tuning, ``TanhNormal`` actor), ``CartPole`` with
``DQNLoss`` (epsilon-greedy exploration, hard target updates). Data comes from a TorchRL
``Collector``, goes to a TorchRL replay buffer, and each collected batch of ``F`` frames is
followed by ``F`` gradient updates (update-to-data ratio 1).

Training is cut into *segments* of ``segment_frames`` environment steps. Each segment builds a
fresh collector on an env seeded with ``seed * 1000 + segment`` (so every segment starts with a
reset) and ends with an evaluation and a checkpoint under ``--out`` (default
``outputs/behavior/<task>/``): the full training state (networks, target networks, optimiser,
replay buffer, torch RNG), a snapshot of the actor's weights, and one JSON line in
``log.jsonl`` with the evaluation returns. Re-running the same command resumes from the last
checkpoint and gives the same result as an uninterrupted run (same seed, same segments).

The first segment acts uniformly at random (SAC's random warm-up; DQN's epsilon starts at 1).
The actor snapshot saved after segment ``k`` is the policy that starts segment ``k + 1``;
``make_datasets.py`` re-rolls these snapshots to rebuild ``medium-replay``.

Usage::

    nice -n 5 python benchmarks/behavior_agents.py --task pendulum
    python benchmarks/behavior_agents.py --task hopper --frames 200000   # extend / resume
    python benchmarks/behavior_agents.py --task hopper --report          # print the log
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import os
import sys
import time
from pathlib import Path
from typing import Any

import gymnasium as gym
import torch
from tensordict import TensorDict
from tensordict.nn import NormalParamExtractor, TensorDictModule
from torchrl.collectors import Collector
from torchrl.data import LazyTensorStorage, TensorDictReplayBuffer
from torchrl.envs import DoubleToFloat, EnvBase, TransformedEnv
from torchrl.envs.libs.gym import GymEnv
from torchrl.envs.utils import ExplorationType, set_exploration_type
from torchrl.modules import (
    MLP,
    EGreedyModule,
    ProbabilisticActor,
    QValueActor,
    TanhNormal,
    ValueOperator,
)
from torchrl.objectives import DQNLoss, HardUpdate, SACLoss, SoftUpdate

REPO = Path(__file__).resolve().parent.parent
DEFAULT_OUT = REPO / "outputs" / "behavior"


@dataclasses.dataclass(frozen=True)
class AgentConfig:
    """Everything that defines a behaviour agent's training run.

    Attributes:
        env_id: gymnasium id.
        algo: ``"sac"`` or ``"dqn"``.
        hidden: width of the two hidden layers of the actor and the critic(s).
        total_frames: default environment-step budget (``--frames`` overrides it).
        segment_frames: environment steps between checkpoints (and actor snapshots).
        frames_per_batch: collector batch; each batch is followed by as many updates.
        batch_size: minibatch of each gradient update.
        lr: Adam learning rate.
        gamma: discount.
        eval_episodes: episodes per evaluation mode at each checkpoint.
        eps_start: DQN only: initial exploration epsilon.
        eps_end: DQN only: final exploration epsilon.
        eps_frames: DQN only: frames over which epsilon decays linearly (after segment 0).
        target_update: DQN only: updates between hard target-network copies.
        behavior_epsilon: DQN only: epsilon of the dataset behaviour policies (and of the
            "behaviour" evaluation).
    """

    env_id: str
    algo: str
    hidden: int
    total_frames: int
    segment_frames: int
    frames_per_batch: int
    batch_size: int = 256
    lr: float = 3e-4
    gamma: float = 0.99
    eval_episodes: int = 5
    eps_start: float = 1.0
    eps_end: float = 0.05
    eps_frames: int = 0
    target_update: int = 500
    behavior_epsilon: float = 0.1


TASKS: dict[str, AgentConfig] = {
    "pendulum": AgentConfig(
        "Pendulum-v1", "sac", hidden=64, total_frames=20_000, segment_frames=1_000,
        frames_per_batch=200,
    ),
    "cartpole": AgentConfig(
        "CartPole-v1", "dqn", hidden=64, total_frames=60_000, segment_frames=2_000,
        frames_per_batch=50, batch_size=128, lr=1e-3, eps_frames=20_000,
    ),
    "hopper": AgentConfig(
        "Hopper-v5", "sac", hidden=256, total_frames=150_000, segment_frames=5_000,
        frames_per_batch=1_000, eval_episodes=3,
    ),
    "halfcheetah": AgentConfig(
        "HalfCheetah-v5", "sac", hidden=256, total_frames=150_000, segment_frames=5_000,
        frames_per_batch=1_000, eval_episodes=3,
    ),
}  # fmt: skip


def make_env(config: AgentConfig) -> EnvBase:
    """The TorchRL env of a task (categorical actions for discrete spaces; float64
    observations, as MuJoCo's, cast to float32)."""
    env = GymEnv(config.env_id, categorical_action_encoding=True)
    if env.observation_spec["observation"].dtype == torch.float64:
        return TransformedEnv(env, DoubleToFloat())
    return env


def _to_float32(module: torch.nn.Module, args: tuple) -> tuple:
    """Forward pre-hook: the policy also accepts the float64 observations of a raw MuJoCo env
    (as ``collect_dataset`` runs it, so the dataset keeps the env's own dtype)."""
    return tuple(a.to(torch.float32) if a.is_floating_point() else a for a in args)


def make_actor(config: AgentConfig, env: EnvBase) -> TensorDictModule:
    """The policy network: a ``TanhNormal`` ``ProbabilisticActor`` (SAC) or a ``QValueActor``
    (DQN). Its ``state_dict`` is what an actor snapshot holds."""
    obs_dim = env.observation_spec["observation"].shape[-1]
    spec = env.action_spec_unbatched
    if config.algo == "dqn":
        net = MLP(
            in_features=obs_dim,
            out_features=int(spec.space.n),
            num_cells=[config.hidden] * 2,
            activation_class=torch.nn.ReLU,
        )
        net.register_forward_pre_hook(_to_float32)
        return QValueActor(net, in_keys=["observation"], spec=spec)
    act_dim = spec.shape[-1]
    net = torch.nn.Sequential(
        MLP(
            in_features=obs_dim,
            out_features=2 * act_dim,
            num_cells=[config.hidden] * 2,
            activation_class=torch.nn.ReLU,
        ),
        NormalParamExtractor(scale_mapping="biased_softplus_1.0", scale_lb=1e-4),
    )
    net.register_forward_pre_hook(_to_float32)
    module = TensorDictModule(net, in_keys=["observation"], out_keys=["loc", "scale"])
    return ProbabilisticActor(
        module,
        in_keys=["loc", "scale"],
        spec=spec,
        distribution_class=TanhNormal,
        distribution_kwargs={"low": spec.space.low, "high": spec.space.high},
        default_interaction_type=ExplorationType.RANDOM,
        return_log_prob=False,
    )


def _make_critic(config: AgentConfig, env: EnvBase) -> ValueOperator:
    obs_dim = env.observation_spec["observation"].shape[-1]
    act_dim = env.action_spec_unbatched.shape[-1]
    net = MLP(
        in_features=obs_dim + act_dim,
        out_features=1,
        num_cells=[config.hidden] * 2,
        activation_class=torch.nn.ReLU,
    )
    return ValueOperator(net, in_keys=["observation", "action"])


class Agent:
    """Networks, loss, target updater, optimiser and exploration of one training run."""

    def __init__(self, config: AgentConfig, env: EnvBase):
        self.config = config
        self.actor = make_actor(config, env)
        if config.algo == "sac":
            self.loss = SACLoss(
                self.actor,
                _make_critic(config, env),
                num_qvalue_nets=2,
                loss_function="l2",
                alpha_init=1.0,
                delay_qvalue=True,
                action_spec=env.action_spec_unbatched,
            )
            self.loss.make_value_estimator(gamma=config.gamma)
            self.target = SoftUpdate(self.loss, tau=0.005)
            self.explore = self.actor
        else:
            self.loss = DQNLoss(
                self.actor, action_space=env.action_spec_unbatched, delay_value=True
            )
            self.loss.make_value_estimator(gamma=config.gamma)
            self.target = HardUpdate(self.loss, value_network_update_interval=config.target_update)
            self.egreedy = EGreedyModule(
                env.action_spec_unbatched,
                eps_init=config.eps_start,
                eps_end=config.eps_end,
                annealing_num_steps=config.eps_frames,
            )
            from tensordict.nn import TensorDictSequential

            self.explore = TensorDictSequential(self.actor, self.egreedy)
        self.optim = torch.optim.Adam(self.loss.parameters(), lr=config.lr)

    def update(self, batch: TensorDict) -> dict[str, float]:
        out = self.loss(batch)
        total = sum(v for k, v in out.items() if k.startswith("loss"))
        self.optim.zero_grad(set_to_none=True)
        total.backward()
        self.optim.step()
        self.target.step()
        return {
            k: float(v.detach()) for k, v in out.items() if k.startswith("loss") or k == "alpha"
        }

    def epsilon(self) -> float:
        return float(self.egreedy.eps) if self.config.algo == "dqn" else float("nan")

    def state_dict(self) -> dict[str, Any]:
        state = {"loss": self.loss.state_dict(), "optim": self.optim.state_dict()}
        if self.config.algo == "dqn":
            state["egreedy"] = self.egreedy.state_dict()
            state["target_counter"] = self.target.counter
        return state

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.loss.load_state_dict(state["loss"])
        self.optim.load_state_dict(state["optim"])
        if self.config.algo == "dqn":
            self.egreedy.load_state_dict(state["egreedy"])
            self.target.counter = state["target_counter"]


def evaluate(
    config: AgentConfig, actor: TensorDictModule, *, episodes: int, seed: int, mode: str
) -> list[float]:
    """Undiscounted returns of ``episodes`` full episodes.

    ``mode="greedy"``: the actor's mean / argmax action. ``mode="behavior"``: the dataset
    behaviour (SAC: a sample of the actor's distribution; DQN: epsilon-greedy with
    ``behavior_epsilon``).
    """
    env = make_env(config)
    env.set_seed(seed)
    policy: Any = actor
    exploration = ExplorationType.DETERMINISTIC
    if mode == "behavior":
        exploration = ExplorationType.RANDOM
        if config.algo == "dqn":
            from torchrl_offline.data.behavior import EpsilonGreedyPolicy

            policy = EpsilonGreedyPolicy(
                actor, env.action_spec_unbatched, epsilon=config.behavior_epsilon
            )
    returns = []
    max_steps = gym.spec(config.env_id).max_episode_steps or 1000
    with torch.no_grad(), set_exploration_type(exploration):
        for _ in range(episodes):
            rollout = env.rollout(max_steps, policy, break_when_any_done=True)
            returns.append(float(rollout["next", "reward"].sum()))
    env.close()
    return returns


def _atomic_save(obj: Any, path: Path) -> None:
    tmp = path.with_name(path.name + ".tmp")
    torch.save(obj, tmp)
    os.replace(tmp, path)


def _buffer_state(buffer: TensorDictReplayBuffer) -> dict[str, Any]:
    n = len(buffer)
    return buffer.storage[:n].to_dict() if n else {}


def train(task: str, *, frames: int | None, seed: int, out: Path) -> Path:
    """Train (or resume) the behaviour agent of ``task`` up to ``frames`` environment steps."""
    config = TASKS[task]
    total = frames or config.total_frames
    seg = config.segment_frames
    if total % seg:
        raise ValueError(f"frames ({total}) must be a multiple of segment_frames ({seg})")
    run_dir = out / task / f"seed{seed}"
    (run_dir / "snapshots").mkdir(parents=True, exist_ok=True)
    torch.manual_seed(seed)
    env = make_env(config)
    agent = Agent(config, env)
    env.close()
    buffer = TensorDictReplayBuffer(
        storage=LazyTensorStorage(max(total, seg)), batch_size=config.batch_size
    )
    segment, updates = 0, 0
    state_path = run_dir / "state.pt"
    if state_path.exists():
        state = torch.load(state_path, weights_only=True)
        if state["config"] != dataclasses.asdict(config):
            raise ValueError(f"{state_path} was trained with another config: {state['config']}")
        agent.load_state_dict(state["agent"])
        if state["buffer"]:
            buffer.extend(TensorDict.from_dict(state["buffer"], auto_batch_size=True))
        segment, updates = state["segment"], state["updates"]
        torch.set_rng_state(state["rng"])
        print(f"[{task}] resumed at segment {segment} ({segment * seg} frames)", flush=True)
    else:
        _atomic_save(agent.actor.state_dict(), run_dir / "snapshots" / "actor_0.pt")
    while segment * seg < total:
        t0 = time.perf_counter()
        env = make_env(config)
        env.set_seed(seed * 1000 + segment)
        if segment == 0:
            from torchrl.envs.utils import RandomPolicy

            policy: Any = RandomPolicy(env.action_spec)
        else:
            policy = agent.explore
        collector = Collector(
            env,
            policy,
            frames_per_batch=config.frames_per_batch,
            total_frames=seg,
            exploration_type=ExplorationType.RANDOM,
            auto_register_policy_transforms=False,
        )
        eps_mid = float("nan")
        losses: dict[str, float] = {}
        for i, batch in enumerate(collector):
            if config.algo == "dqn" and segment > 0:
                agent.egreedy.step(batch.numel())
                if i == seg // config.frames_per_batch // 2:
                    eps_mid = agent.epsilon()
            buffer.extend(batch.reshape(-1))
            if segment == 0:
                continue
            for _ in range(batch.numel()):
                losses = agent.update(buffer.sample())
                updates += 1
        collector.shutdown()
        segment += 1
        train_time = time.perf_counter() - t0
        eval_seed = 10**6 + seed * 1000 + segment
        greedy = evaluate(
            config, agent.actor, episodes=config.eval_episodes, seed=eval_seed, mode="greedy"
        )
        behavior = evaluate(
            config, agent.actor, episodes=config.eval_episodes, seed=eval_seed, mode="behavior"
        )
        frames_done = segment * seg
        snapshot = run_dir / "snapshots" / f"actor_{frames_done}.pt"
        _atomic_save(agent.actor.state_dict(), snapshot)
        record = {
            "frames": frames_done,
            "updates": updates,
            "greedy_return": sum(greedy) / len(greedy),
            "behavior_return": sum(behavior) / len(behavior),
            "greedy_returns": greedy,
            "behavior_returns": behavior,
            "epsilon_mid_segment": None if math.isnan(eps_mid) else eps_mid,
            "losses": losses,
            "segment_seconds": round(train_time, 1),
            "eval_seconds": round(time.perf_counter() - t0 - train_time, 1),
        }
        with open(run_dir / "log.jsonl", "a") as f:
            f.write(json.dumps(record) + "\n")
        _atomic_save(
            {
                "config": dataclasses.asdict(config),
                "agent": agent.state_dict(),
                "buffer": _buffer_state(buffer),
                "segment": segment,
                "updates": updates,
                "rng": torch.get_rng_state(),
            },
            state_path,
        )
        print(
            f"[{task}] frames {frames_done} greedy {record['greedy_return']:.1f} "
            f"behavior {record['behavior_return']:.1f} ({train_time:.0f}s)",
            flush=True,
        )
    return run_dir


def read_log(run_dir: Path) -> list[dict[str, Any]]:
    """The evaluation records of a run, one per checkpoint (deduplicated by frames)."""
    records: dict[int, dict[str, Any]] = {}
    path = run_dir / "log.jsonl"
    if path.exists():
        for line in path.read_text().splitlines():
            rec = json.loads(line)
            records[rec["frames"]] = rec
    return [records[k] for k in sorted(records)]


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--task", choices=sorted(TASKS), required=True)
    parser.add_argument("--frames", type=int, default=None, help="env-step budget")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--report", action="store_true", help="print the log and exit")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    if args.report:
        for rec in read_log(args.out / args.task / f"seed{args.seed}"):
            print(
                f"{rec['frames']:>8} greedy {rec['greedy_return']:9.1f} "
                f"behavior {rec['behavior_return']:9.1f}"
            )
        return
    train(args.task, frames=args.frames, seed=args.seed, out=args.out)


if __name__ == "__main__":
    sys.exit(main())
