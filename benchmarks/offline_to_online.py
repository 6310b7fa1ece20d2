"""Offline pre-training, then online fine-tuning: CQL against Cal-QL on the same data.

Cal-QL's point (Nakamoto et al., 2023) is the start of fine-tuning: CQL's values of the
policy's actions can sit below what the data's behaviour earned, and the first online
updates then "unlearn" them, the return dipping before it improves. This script runs the
library's own path for both, ``train`` then ``finetune``, with the same conservative
term (a fixed weight, ``--weight``) so that the calibration is the only difference:

* ``cql``: ``build_algorithm("cql", min_q_weight=W, with_lagrange=False)``;
* ``cal_ql``: ``build_algorithm("cal_ql", preset="kitchen", min_q_weight=W)`` (fixed
  weight), with the Monte Carlo returns of the logged episodes (and of the online
  episodes as they end) added by the trainers;
* ``cal_ql_bootstrap``: the same with ``bootstrap_truncated=True``: Pendulum's episodes
  end at the time limit and its rewards are negative, so a return summed to the cut is
  above the behaviour's value; the target critics' estimate of the tail completes it.

Rewards (``--reward``): ``pendulum``, Pendulum-v1's own (negative, dense); or ``upright``,
1 when the next observation is within ``acos(0.9)`` (26 degrees) of upright and 0
otherwise, on the logged transitions and in the environments alike
(:class:`UprightReward`, a TorchRL transform). Upright rewards are sparse and never
negative, as in the paper's AntMaze, Kitchen and Adroit tasks, so a return summed to the
time limit is a true lower bound of the behaviour's value, which Cal-QL's calibration
assumes; with Pendulum's own rewards it is not.

At the end of the offline phase each run records how the critics' values of the policy's
actions sit against the data's Monte Carlo returns (``q_policy``, ``mc_return`` and their
difference ``q_gap``, means over the logged states; ``bounded_fraction``, for Cal-QL, the
share of the states whose policy value the calibration raised): Cal-QL's premise is that
CQL's ``q_gap`` is negative (over-conservative) and the dip is the online updates
"unlearning" it.

Data: ``benchmarks/pendulum_mixed.py``'s ``--mix`` dataset (seed 0). Both are evaluated
every ``--eval-every`` steps on Pendulum-v1 (``--eval-episodes`` episodes, the trainers'
evaluation hook), offline and online. Each run appends one JSON line (the curves) to
``--out``; ``--summarize`` prints the table: the last offline return, the lowest of the
first ``--dip-evals`` online evaluations (the dip) against the offline policy's return
on the same evaluation episodes (the online curve's first point), and the final one.

Usage::

    python benchmarks/offline_to_online.py --seeds 0 1 2 --out benchmarks/results/offline_to_online.jsonl
    python benchmarks/offline_to_online.py --summarize benchmarks/results/offline_to_online.jsonl
    python benchmarks/offline_to_online.py --reward upright --seeds 0 1 2 \
        --out benchmarks/results/offline_to_online_pendulum_upright.jsonl
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import pathlib
import statistics
import time

HERE = pathlib.Path(__file__).resolve().parent
#: Row -> (algorithm, preset, overrides).
ALGOS = {
    "cql": ("cql", None, {"with_lagrange": False}),
    "cal_ql": ("cal_ql", "kitchen", {}),
    # the returns of episodes cut by the time limit completed by the target critics
    "cal_ql_bootstrap": ("cal_ql", "kitchen", {"bootstrap_truncated": True}),
}


#: ``--reward upright``: reward 1 where the next observation's cos(theta) is above this
UPRIGHT_COS = 0.9


def upright_reward(observation):
    """1 where ``observation`` (Pendulum's ``[cos, sin, velocity]``) is near upright, else 0."""
    return (observation[..., :1] > UPRIGHT_COS).to(observation.dtype)


def _upright_transform():
    from torchrl.data import Bounded, Composite
    from torchrl.envs.transforms import Transform

    class UprightReward(Transform):
        """Replaces the reward by :func:`upright_reward` of the next observation."""

        def __init__(self):
            super().__init__(in_keys=["reward"], out_keys=["reward"])

        def _step(self, tensordict, next_tensordict):
            reward = next_tensordict.get("reward")
            upright = upright_reward(next_tensordict.get("observation")).to(reward.dtype)
            return next_tensordict.set("reward", upright.reshape(reward.shape))

        def transform_reward_spec(self, reward_spec):
            spec = reward_spec["reward"] if isinstance(reward_spec, Composite) else reward_spec
            bounded = Bounded(0.0, 1.0, spec.shape, spec.device, spec.dtype)
            if isinstance(reward_spec, Composite):
                reward_spec["reward"] = bounded
                return reward_spec
            return bounded

    return UprightReward()


def _env(reward: str):
    """Pendulum-v1 as TorchRL's ``GymEnv``, with the benchmark's ``reward``."""
    from torchrl.envs import GymEnv, TransformedEnv

    if reward == "pendulum":
        return "Pendulum-v1"
    return TransformedEnv(GymEnv("Pendulum-v1"), _upright_transform())


def _logged(mix: str, reward: str):
    spec = importlib.util.spec_from_file_location("pendulum_mixed", HERE / "pendulum_mixed.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    data = module.make_pendulum_mixed(module.MIXES[mix], seed=0)
    if reward == "upright":
        next_reward = data["next", "reward"]
        data["next", "reward"] = upright_reward(data["next", "observation"]).to(next_reward.dtype)
    return data


def _dataset(data):
    import torch

    from torchrl_offline.data import make_replay_buffer

    torch.manual_seed(0)
    return make_replay_buffer(data, batch_size=256)


def value_gap(algorithm, data, gamma: float) -> dict:
    """The critics' values of the policy's actions against the Monte Carlo returns.

    Means over the logged states ``s`` of ``min_i Q_i(s, pi(s))`` (the policy's mode) and
    of the discounted return that followed ``s`` in its episode.
    """
    import torch
    from torchrl.envs.utils import ExplorationType, set_exploration_type

    from torchrl_offline.data.episodes import episode_ends, monte_carlo_returns

    loss = algorithm.loss
    states = data.select("observation").clone()
    with torch.no_grad(), set_exploration_type(ExplorationType.DETERMINISTIC):
        actions = algorithm.policy(states.clone())["action"]
        states.set("action", actions)
        values = []
        for params in loss.qvalue_network_params.unbind(0):
            with params.to_module(loss.qvalue_network):
                values.append(loss.qvalue_network(states.clone())["state_action_value"])
        q_policy = torch.stack(values).min(0).values.reshape(-1)
    ends = episode_ends(data)
    returns = monte_carlo_returns(data["next", "reward"].reshape(-1), ends, gamma=gamma)
    return {
        "q_policy": round(q_policy.mean().item(), 3),
        "mc_return": round(returns.mean().item(), 3),
        "q_gap": round((q_policy - returns).mean().item(), 3),
        "q_below_return": round((q_policy < returns).float().mean().item(), 3),
    }


def run(algo: str, seed: int, args) -> dict:
    from torchrl_offline.trainers.finetune import finetune
    from torchrl_offline.trainers.offline import train

    name, preset, extra = ALGOS[algo]
    overrides = {"hidden_sizes": (args.hidden, args.hidden), "min_q_weight": args.weight, **extra}
    logged = _logged(args.mix, args.reward)
    data = _dataset(logged)
    common = dict(
        seed=seed,
        batch_size=256,
        eval_env=_env(args.reward),
        eval_interval=args.eval_every,
        eval_episodes=args.eval_episodes,
        progress=False,
        logger=None,
    )
    start = time.time()
    offline = train(
        name,
        data,
        total_steps=args.offline_steps,
        preset=preset,
        overrides=overrides,
        **common,
    )
    gamma = float(offline.algorithm.hyperparameters.get("gamma", 0.99))
    gap = value_gap(offline.algorithm, logged, gamma)
    online = finetune(
        offline.algorithm,
        data,
        _env(args.reward),
        total_steps=args.online_steps,
        frames_per_batch=args.frames_per_batch,
        utd_ratio=1.0,
        offline_fraction=0.5,
        **common,
    )
    return {
        "algo": algo,
        "seed": seed,
        "mix": args.mix,
        "reward": args.reward,
        "weight": args.weight,
        "offline_end_values": gap,
        "offline": [(e["step"], e["return_mean"]) for e in offline.evaluations],
        "online": [(e["step"], e["return_mean"]) for e in online.evaluations],
        "seconds": round(time.time() - start, 1),
    }


def _mean_se(values: list[float], digits: int = 0) -> str:
    mean = statistics.fmean(values)
    se = statistics.stdev(values) / len(values) ** 0.5 if len(values) > 1 else 0.0
    return f"{mean:.{digits}f} ± {se:.{digits}f}"


def summarize(rows: list[dict], dip_evals: int) -> str:
    gaps = all("offline_end_values" in r for r in rows)
    lines = [
        "| algorithm | seeds | offline end (online start) | lowest of the first "
        f"{dip_evals} online | drop | final online |"
        + (" Q(s, pi(s)) - return, offline end | states below their return |" if gaps else ""),
        "|---|---:|---:|---:|---:|---:|" + ("---:|---:|" if gaps else ""),
    ]
    for algo in ALGOS:
        runs = [r for r in rows if r["algo"] == algo]
        if not runs:
            continue
        # the online curve starts with the offline policy, on the online evaluation seeds
        last = [r["online"][0][1] for r in runs]
        low = [min(v for _, v in r["online"][1 : 1 + dip_evals]) for r in runs]
        drop = [a - b for a, b in zip(last, low)]
        final = [r["online"][-1][1] for r in runs]
        row = (
            f"| {algo} | {len(runs)} | {_mean_se(last)} | {_mean_se(low)} | "
            f"{_mean_se(drop)} | {_mean_se(final)} |"
        )
        if gaps:
            values = [r["offline_end_values"] for r in runs]
            gap = _mean_se([v["q_gap"] for v in values], digits=1)
            below = _mean_se([100 * v["q_below_return"] for v in values])
            row += f" {gap} | {below}% |"
        lines.append(row)
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--algos", nargs="+", default=list(ALGOS), choices=list(ALGOS))
    parser.add_argument("--seeds", nargs="+", type=int, default=[0])
    parser.add_argument("--mix", default="mixed")
    parser.add_argument("--reward", default="pendulum", choices=["pendulum", "upright"])
    parser.add_argument("--weight", type=float, default=5.0)
    parser.add_argument("--hidden", type=int, default=128)
    parser.add_argument("--offline-steps", type=int, default=3000)
    parser.add_argument("--online-steps", type=int, default=3000)
    parser.add_argument("--frames-per-batch", type=int, default=50)
    parser.add_argument("--eval-every", type=int, default=250)
    parser.add_argument("--eval-episodes", type=int, default=5)
    parser.add_argument("--dip-evals", type=int, default=4)
    parser.add_argument("--out", type=pathlib.Path)
    parser.add_argument("--summarize", type=pathlib.Path)
    args = parser.parse_args()
    if args.summarize:
        rows = [json.loads(line) for line in args.summarize.read_text().splitlines() if line]
        print(summarize(rows, args.dip_evals))
        return
    for seed in args.seeds:
        for algo in args.algos:
            row = run(algo, seed, args)
            print(json.dumps(row), flush=True)
            if args.out:
                with args.out.open("a") as f:
                    f.write(json.dumps(row) + "\n")


if __name__ == "__main__":
    main()
