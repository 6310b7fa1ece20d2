"""A mixed-quality offline dataset for gymnasium's ``Pendulum-v1``, made here.

Episodes come from three behaviour policies:

* ``expert``: an energy-pumping swing-up controller with a PD balancer near the top,
  plus small Gaussian action noise (return about -130 to -170);
* ``noisy``: the same controller with large action noise (return about -450);
* ``random``: uniform random torques (return about -1150);
* ``spin``: a biased policy that keeps pushing one way (mean torque 1.5, noise 1.0), so
  the pendulum spins instead of balancing.

:data:`MIXES` names the datasets the learning benchmarks use: ``"default"``,
``"mixed"`` (half noisy-controller, half random episodes) and ``"hard"`` (one
controller episode in four, the rest spinning).

Actions are clipped to the torque range ``[-2, 2]``, so many logged actions sit exactly
on the bounds, as they do for real saturating controllers.

The result is a :class:`~tensordict.TensorDict` with TorchRL's keys: ``observation``,
``action``, ``("next", "observation")``, ``("next", "reward")`` shaped ``[N, 1]``,
``("next", "done")``, ``("next", "terminated")``, ``("next", "truncated")`` and
``episode``; :func:`episode_returns` gives the return of every episode.

Usage::

    python benchmarks/pendulum_mixed.py --out /tmp/pendulum_mixed.pt --npz /tmp/pendulum_mixed.npz
"""

from __future__ import annotations

import argparse

import gymnasium as gym
import numpy as np
import torch
from tensordict import TensorDict

MAX_TORQUE = 2.0

#: default mix (episodes per behaviour policy) for the learning benchmark
DEFAULT_MIX = {"expert": 6, "noisy": 6, "random": 8}
#: action-noise standard deviation (in units of the torque range) of each policy
NOISE = {"expert": 0.15, "noisy": 0.5, "random": None, "spin": 0.25}
#: the spinning policy's mean torque
SPIN_TORQUE = 0.75 * MAX_TORQUE
#: named datasets (episodes per behaviour policy)
MIXES = {
    "default": DEFAULT_MIX,
    "mixed": {"noisy": 10, "random": 10},
    "hard": {"expert": 5, "spin": 15},
}


def swing_up_action(obs: np.ndarray, max_torque: float = MAX_TORQUE) -> np.ndarray:
    """Energy-based swing-up with a PD balancer near the upright position.

    For Pendulum-v1 (``theta = 0`` upright), the dynamics are
    ``theta_dd = 15 sin(theta) + 3 u``; the energy ``E = w^2 / 2 + 15 cos(theta)``
    equals 15 at rest upright and ``dE/dt = 3 u w``, so pumping with ``u ~ (15 - E) w``
    swings the pendulum up, and a PD law keeps it there.
    """
    cos, sin, w = obs[..., 0], obs[..., 1], obs[..., 2]
    theta = np.arctan2(sin, cos)
    energy = 0.5 * w**2 + 15.0 * cos
    pump = np.clip(0.5 * (15.0 - energy) * w, -max_torque, max_torque)
    pump = np.where(np.abs(w) < 1e-3, max_torque, pump)
    balance = np.clip(-(10.0 * theta + 2.0 * w), -max_torque, max_torque)
    return np.where(cos > 0.85, balance, pump)


def make_pendulum_mixed(
    mix: dict[str, int] | None = None,
    *,
    seed: int = 0,
    max_steps: int = 200,
) -> TensorDict:
    """Collects a mixed-quality Pendulum-v1 dataset.

    Args:
        mix (dict, optional): number of episodes per behaviour policy, keys among
            ``"expert"``, ``"noisy"``, ``"random"`` and ``"spin"``. Defaults to
            :data:`DEFAULT_MIX`.

    Keyword Args:
        seed (int, optional): seeds the environment resets and the action noise.
        max_steps (int, optional): episode length (truncation). Defaults to 200.

    Returns:
        TensorDict: flat transitions with TorchRL keys and an ``episode`` index.

    Examples:
        >>> data = make_pendulum_mixed({"expert": 1, "random": 1}, max_steps=20)
        >>> data.batch_size, data["next", "reward"].shape
        (torch.Size([40]), torch.Size([40, 1]))
    """
    mix = DEFAULT_MIX if mix is None else mix
    rng = np.random.default_rng(seed)
    env = gym.make("Pendulum-v1", max_episode_steps=max_steps)
    obs_l, act_l, next_l, rew_l, term_l, trunc_l, ep_l = [], [], [], [], [], [], []
    episode = 0
    for kind, count in mix.items():
        if kind not in NOISE:
            raise ValueError(f"unknown behaviour policy {kind!r}; use one of {sorted(NOISE)}")
        for _ in range(count):
            obs, _ = env.reset(seed=int(rng.integers(2**31)))
            for _ in range(max_steps):
                if NOISE[kind] is None:
                    action = rng.uniform(-MAX_TORQUE, MAX_TORQUE)
                elif kind == "spin":
                    action = SPIN_TORQUE + NOISE[kind] * 2 * MAX_TORQUE * rng.standard_normal()
                else:
                    action = swing_up_action(obs) + NOISE[kind] * 2 * MAX_TORQUE * (
                        rng.standard_normal()
                    )
                action = np.clip(np.float32(action), -MAX_TORQUE, MAX_TORQUE)
                next_obs, reward, terminated, truncated, _ = env.step(np.array([action]))
                obs_l.append(obs)
                act_l.append([action])
                next_l.append(next_obs)
                rew_l.append([reward])
                term_l.append([terminated])
                trunc_l.append([truncated])
                ep_l.append(episode)
                obs = next_obs
                if terminated or truncated:
                    break
            episode += 1
    env.close()
    terminated = torch.tensor(np.array(term_l), dtype=torch.bool)
    truncated = torch.tensor(np.array(trunc_l), dtype=torch.bool)
    n = len(obs_l)
    return TensorDict(
        {
            "observation": torch.tensor(np.array(obs_l), dtype=torch.float32),
            "action": torch.tensor(np.array(act_l), dtype=torch.float32),
            "episode": torch.tensor(ep_l, dtype=torch.int64),
            "next": {
                "observation": torch.tensor(np.array(next_l), dtype=torch.float32),
                "reward": torch.tensor(np.array(rew_l), dtype=torch.float32),
                "done": terminated | truncated,
                "terminated": terminated,
                "truncated": truncated,
            },
        },
        batch_size=[n],
    )


def episode_returns(data: TensorDict) -> torch.Tensor:
    """Undiscounted return of every episode in ``data`` (ordered by episode index).

    Examples:
        >>> data = make_pendulum_mixed({"expert": 2}, max_steps=10)
        >>> episode_returns(data).shape
        torch.Size([2])
    """
    episode = data["episode"]
    n_ep = int(episode.max()) + 1
    return torch.zeros(n_ep).index_add_(0, episode, data["next", "reward"].squeeze(-1))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", default=None, help="save the TensorDict here (torch.save)")
    parser.add_argument("--npz", default=None, help="also save flat numpy arrays here (for d3rlpy)")
    parser.add_argument("--seed", type=int, default=0)
    for kind, count in DEFAULT_MIX.items():
        parser.add_argument(f"--{kind}", type=int, default=count, help=f"{kind} episodes")
    args = parser.parse_args()
    mix = {kind: getattr(args, kind) for kind in DEFAULT_MIX}
    data = make_pendulum_mixed(mix, seed=args.seed)
    returns = episode_returns(data)
    start = 0
    for kind, count in mix.items():
        part = returns[start : start + count]
        start += count
        if count:
            print(f"{kind:>7}: {count:3d} episodes, mean return {part.mean():8.1f}")
    print(f"dataset: {data.numel()} transitions, average return {returns.mean():.1f}")
    if args.out:
        torch.save(data.to_dict(), args.out)
        print(f"saved to {args.out}")
    if args.npz:
        np.savez(
            args.npz,
            observations=data["observation"].numpy(),
            actions=data["action"].numpy(),
            rewards=data["next", "reward"].squeeze(-1).numpy(),
            terminals=data["next", "terminated"].squeeze(-1).numpy().astype(np.float32),
            timeouts=data["next", "truncated"].squeeze(-1).numpy().astype(np.float32),
        )
        print(f"saved arrays to {args.npz}")


if __name__ == "__main__":
    main()
