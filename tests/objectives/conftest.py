"""Shared fixtures for the loss tests: tiny, seeded, locally made offline datasets.

Fixtures:

* ``pendulum_dataset``: mixed-quality Pendulum-v1 transitions (scripted swing-up
  controller with small and large action noise, plus uniform random episodes),
  2000 transitions, made by ``benchmarks/pendulum_mixed.py``.
* ``cartpole_dataset``: CartPole-v1 transitions from a scripted balancing
  controller mixed with random actions; actions are integer indices shaped ``[N]``.
* ``evaluate_actor``: a function ``evaluate_actor(actor, env_id, episodes=3, seed=0,
  max_steps=200) -> float`` returning a TorchRL actor's mean undiscounted return,
  acting deterministically (``ExplorationType.DETERMINISTIC``).
* ``one_thread``: runs the test on one torch thread (tiny networks are faster so, and do
  not fight other processes).

All datasets are TensorDicts with TorchRL keys (``observation``, ``action``,
``("next", "observation")``, ``("next", "reward")`` shaped ``[N, 1]``,
``("next", "done")``, ``("next", "terminated")``, ``("next", "truncated")``,
``episode``), wrapped in :class:`OfflineData` together with the dataset's average
return and a random policy's return.
"""

from __future__ import annotations

from dataclasses import dataclass

import gymnasium as gym
import numpy as np
import pytest
import torch
from tensordict import TensorDict
from torchrl.envs.utils import ExplorationType, set_exploration_type

from tests.benchmark_scripts import load_benchmark

# The test machine is small and shared: one intra-op thread avoids OpenMP contention,
# which otherwise slows tiny updates down by an order of magnitude.
torch.set_num_threads(1)


@dataclass
class OfflineData:
    """A dataset plus what the tests compare against."""

    data: TensorDict
    #: mean undiscounted episode return in the dataset
    average_return: float
    #: mean return of a uniformly random policy
    random_return: float
    obs_dim: int
    act_dim: int  # number of actions for discrete data


def _episode_returns(data: TensorDict) -> torch.Tensor:
    episode = data["episode"]
    n = int(episode.max()) + 1
    return torch.zeros(n).index_add_(0, episode, data["next", "reward"].squeeze(-1))


@pytest.fixture(scope="session")
def pendulum_dataset() -> OfflineData:
    """2000 Pendulum-v1 transitions: 4 near-expert, 2 noisy and 4 random episodes."""
    module = load_benchmark("pendulum_mixed")
    data = module.make_pendulum_mixed({"expert": 4, "noisy": 2, "random": 4}, seed=0)
    returns = _episode_returns(data)
    return OfflineData(
        data=data,
        average_return=float(returns.mean()),
        random_return=float(returns[-4:].mean()),
        obs_dim=3,
        act_dim=1,
    )


def _cartpole_action(obs: np.ndarray) -> int:
    x, x_dot, theta, theta_dot = obs
    return int(theta + 0.5 * theta_dot + 0.05 * x + 0.1 * x_dot > 0)


def make_cartpole_mixed(
    epsilons=(0.0, 0.1, 0.3, 0.5, 1.0, 1.0), *, seed: int = 0, max_steps: int = 200
) -> TensorDict:
    """CartPole-v1 episodes of an epsilon-greedy scripted controller, one per epsilon."""
    rng = np.random.default_rng(seed)
    env = gym.make("CartPole-v1", max_episode_steps=max_steps)
    rows = {k: [] for k in ("obs", "act", "next", "rew", "term", "trunc", "ep")}
    for episode, eps in enumerate(epsilons):
        obs, _ = env.reset(seed=int(rng.integers(2**31)))
        while True:
            action = int(rng.integers(2)) if rng.random() < eps else _cartpole_action(obs)
            next_obs, reward, terminated, truncated, _ = env.step(action)
            for key, value in zip(
                rows, (obs, action, next_obs, [reward], [terminated], [truncated], episode)
            ):
                rows[key].append(value)
            obs = next_obs
            if terminated or truncated:
                break
    env.close()
    term = torch.tensor(np.array(rows["term"]), dtype=torch.bool)
    trunc = torch.tensor(np.array(rows["trunc"]), dtype=torch.bool)
    return TensorDict(
        {
            "observation": torch.tensor(np.array(rows["obs"]), dtype=torch.float32),
            "action": torch.tensor(rows["act"], dtype=torch.int64),
            "episode": torch.tensor(rows["ep"], dtype=torch.int64),
            "next": {
                "observation": torch.tensor(np.array(rows["next"]), dtype=torch.float32),
                "reward": torch.tensor(np.array(rows["rew"]), dtype=torch.float32),
                "done": term | trunc,
                "terminated": term,
                "truncated": trunc,
            },
        },
        batch_size=[len(rows["ep"])],
    )


@pytest.fixture(scope="session")
def cartpole_dataset() -> OfflineData:
    """CartPole-v1 transitions, epsilon-greedy scripted controller (eps 0 to 1)."""
    data = make_cartpole_mixed()
    returns = _episode_returns(data)
    return OfflineData(
        data=data,
        average_return=float(returns.mean()),
        random_return=float(returns[-2:].mean()),
        obs_dim=4,
        act_dim=2,
    )


def evaluate(
    actor,
    env_id: str,
    episodes: int = 3,
    seed: int = 0,
    max_steps: int = 200,
    action_key="action",
) -> float:
    """Mean undiscounted return of a TorchRL actor acting deterministically in gymnasium.

    Continuous actions are clipped to the env's action box; discrete actions may be
    integer indices or one-hot vectors.
    """
    env = gym.make(env_id, max_episode_steps=max_steps)
    discrete = isinstance(env.action_space, gym.spaces.Discrete)
    returns = []
    with torch.no_grad(), set_exploration_type(ExplorationType.DETERMINISTIC):
        for episode in range(episodes):
            obs, _ = env.reset(seed=seed + episode)
            total = 0.0
            while True:
                td = TensorDict(
                    {"observation": torch.as_tensor(obs, dtype=torch.float32)}, batch_size=[]
                )
                action = actor(td).get(action_key)
                if discrete:
                    act = int(action.argmax(-1)) if action.ndim >= 1 else int(action)
                else:
                    act = np.clip(
                        action.numpy().reshape(env.action_space.shape),
                        env.action_space.low,
                        env.action_space.high,
                    )
                obs, reward, terminated, truncated, _ = env.step(act)
                total += float(reward)
                if terminated or truncated:
                    break
            returns.append(total)
    env.close()
    return float(np.mean(returns))


@pytest.fixture(scope="session")
def evaluate_actor():
    """``evaluate_actor(actor, env_id, episodes=3, seed=0, max_steps=200) -> float``."""
    return evaluate


@pytest.fixture
def one_thread():
    """Tiny networks run faster on one thread, and do not fight other processes."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


class _OfflineSource:
    """A stand-in 'collector' for ``torchrl.trainers.Trainer``: yields ``iterations`` tiny
    batches so that the trainer runs its optimisation loop; the data comes from the
    replay buffer registered with ``process_optim_batch``."""

    init_random_frames = 0

    def __init__(self, iterations: int) -> None:
        self.iterations = iterations

    def __iter__(self):
        for _ in range(self.iterations):
            yield TensorDict({"dummy": torch.zeros(1)}, batch_size=[1])

    def shutdown(self) -> None:
        pass


def train_with_trainer(
    loss_module,
    optimizer,
    target_updater,
    data: TensorDict,
    *,
    iterations=2,
    optim_steps=3,
    batch_size=32,
    loss_components=None,
):
    """Runs ``loss_module`` inside ``torchrl.trainers.Trainer``.

    ``loss_components`` names the ``loss_*`` entries to sum (all of them by default).

    Uses TorchRL's own ``DefaultOptimizationStepper``, ``TargetNetUpdaterHook`` (so the
    given ``SoftUpdate``/``HardUpdate`` is stepped after every optimiser step) and a
    ``TensorDictReplayBuffer`` holding ``data`` sampled through ``ReplayBufferTrainer``.
    Returns the trainer.
    """
    from torchrl.data import LazyTensorStorage, TensorDictReplayBuffer
    from torchrl.trainers import (
        DefaultOptimizationStepper,
        ReplayBufferTrainer,
        TargetNetUpdaterHook,
        Trainer,
    )

    buffer = TensorDictReplayBuffer(storage=LazyTensorStorage(data.numel()), batch_size=batch_size)
    buffer.extend(data)
    trainer = Trainer(
        collector=_OfflineSource(iterations),
        total_frames=iterations,
        frame_skip=1,
        optim_steps_per_batch=optim_steps,
        loss_module=loss_module,
        optimizer=optimizer,
        optimization_stepper=DefaultOptimizationStepper(loss_components),
        target_net_updater=target_updater,
        progress_bar=False,
        log_interval=10**9,
        save_trainer_interval=10**9,
    )
    rb_hook = ReplayBufferTrainer(buffer, batch_size=batch_size)
    trainer.register_op("process_optim_batch", rb_hook.sample)
    trainer.register_op("post_loss", rb_hook.update_priority)
    if target_updater is not None:
        trainer.register_op("post_optim", TargetNetUpdaterHook(target_updater))
    trainer.train()
    return trainer


@pytest.fixture(scope="session")
def run_trainer():
    """``run_trainer(loss, optimizer, target_updater, data, iterations=2, optim_steps=3,
    batch_size=32, loss_components=None) -> Trainer``: trains inside ``torchrl.trainers.Trainer``."""
    return train_with_trainer


def assert_gradient_routing(out, groups: dict, touches: dict) -> None:
    """Each loss term ``touches[term]`` reaches exactly the parameter groups it names:
    a nonzero gradient in those of ``groups`` (name -> parameters), none in the others."""
    for key, allowed in touches.items():
        for name, params in groups.items():
            grads = torch.autograd.grad(out[key], params, retain_graph=True, allow_unused=True)
            nonzero = any(g is not None and g.abs().sum() > 0 for g in grads)
            assert nonzero == (name in allowed), (key, name)
