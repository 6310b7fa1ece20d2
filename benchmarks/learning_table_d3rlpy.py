"""d3rlpy 2.8.1's rows of the learning table: its ReBRAC, BCQ, BEAR, Cal-QL, IQL, CQL,
AWAC and TD3+BC (and discrete BCQ on discrete tasks) on the table's datasets, with the
table's budget.

Runs in d3rlpy's own virtualenv (it pins another gymnasium) on the arrays
``benchmarks/learning_table.py --export-npz DIR`` writes, and appends records in the
table's format (algorithm ``d3rlpy_<name>``, the budget's key copied from the arrays) to
the same results file, so ``learning_table.py --report --algos ... d3rlpy_bcq`` shows them
next to ours. Same budget as our rows: the table's gradient steps, batch and evaluation
schedule, every network ``--hidden`` wide (2x64: d3rlpy's ``VectorEncoderFactory``, the
imitator VAE included), observations standardised with the dataset's moments, actions
min-max scaled to the environment's bounds, the deterministic policy (``predict``)
evaluated in the environment from reset seeds ``1000 * seed + episode``. Every other
setting is d3rlpy's default for the algorithm (learning rates, BCQ's 100 sampled
actions, BEAR's 40,000 warm-up steps, Cal-QL's and CQL's conservative weight and
Lagrange threshold, ReBRAC's penalties, IQL's expectile and temperature, AWAC's lambda).

Usage::

    python benchmarks/learning_table.py --only pendulum/medium --export-npz /tmp/npz
    /path/to/d3rlpy-venv/bin/python benchmarks/learning_table_d3rlpy.py \\
        --npz /tmp/npz/pendulum__medium.npz --algos bcq bear --seeds 0 1 2 \\
        --out benchmarks/results/table_pendulum.jsonl
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

import d3rlpy
import gymnasium as gym
import numpy as np
import torch

#: Continuous algorithms, and the one d3rlpy has for discrete actions.
CONTINUOUS = ("rebrac", "bcq", "bear", "cal_ql", "iql", "cql", "awac", "td3_bc")
DISCRETE = {"bcq": "discrete_bcq"}


def make_algo(
    name: str, data, env, *, hidden: list[int], batch_size: int, overrides: dict | None = None
):
    """d3rlpy's ``name`` with its defaults, ``hidden``-wide networks and the table's scalers;
    ``overrides`` are more arguments of its config (``--set``)."""
    encoder = d3rlpy.models.VectorEncoderFactory(hidden_units=hidden)
    obs_scaler = d3rlpy.preprocessing.StandardObservationScaler(
        mean=data["observations"].mean(0), std=data["observations"].std(0) + 1e-3
    )
    common = {"batch_size": batch_size, "observation_scaler": obs_scaler, **(overrides or {})}
    if isinstance(env.action_space, gym.spaces.Discrete):
        if name != "bcq":
            raise SystemExit(f"d3rlpy has no discrete {name}")
        return d3rlpy.algos.DiscreteBCQConfig(encoder_factory=encoder, **common).create("cpu")
    common["action_scaler"] = d3rlpy.preprocessing.MinMaxActionScaler(
        minimum=env.action_space.low, maximum=env.action_space.high
    )
    nets = {"actor_encoder_factory": encoder, "critic_encoder_factory": encoder}
    if name == "rebrac":
        config = d3rlpy.algos.ReBRACConfig(**nets, **common)
    elif name == "bcq":
        config = d3rlpy.algos.BCQConfig(**nets, imitator_encoder_factory=encoder, **common)
    elif name == "bear":
        config = d3rlpy.algos.BEARConfig(**nets, imitator_encoder_factory=encoder, **common)
    elif name == "cal_ql":
        config = d3rlpy.algos.CalQLConfig(**nets, **common)
    elif name == "iql":
        config = d3rlpy.algos.IQLConfig(**nets, value_encoder_factory=encoder, **common)
    elif name == "cql":
        config = d3rlpy.algos.CQLConfig(**nets, **common)
    elif name == "awac":
        config = d3rlpy.algos.AWACConfig(**nets, **common)
    elif name == "td3_bc":
        config = d3rlpy.algos.TD3PlusBCConfig(**nets, **common)
    else:
        raise SystemExit(f"unknown algorithm {name!r}; known: {', '.join(CONTINUOUS)}")
    return config.create(device="cpu")


def evaluate(algo, env_id: str, episodes: int, seed: int) -> float:
    """Mean return of ``algo.predict`` over ``episodes`` episodes."""
    env = gym.make(env_id)
    returns = []
    for ep in range(episodes):
        obs, _ = env.reset(seed=1000 * seed + ep)
        total, done = 0.0, False
        while not done:
            action = algo.predict(np.asarray(obs, dtype=np.float32)[None])[0]
            obs, reward, terminated, truncated, _ = env.step(action)
            total += float(reward)
            done = terminated or truncated
        returns.append(total)
    env.close()
    return float(np.mean(returns))


def run_one(name: str, data, meta: dict, seed: int, overrides: dict | None = None) -> dict:
    """One row's run: train with the table's budget, evaluating along the way."""
    budget = meta["budget"]
    d3rlpy.seed(seed)
    torch.manual_seed(seed)
    env = gym.make(meta["env_id"])
    dataset = d3rlpy.dataset.MDPDataset(
        observations=data["observations"],
        actions=data["actions"],
        rewards=data["rewards"],
        terminals=data["terminals"],
        timeouts=data["timeouts"],
        action_space=(
            d3rlpy.ActionSpace.DISCRETE
            if isinstance(env.action_space, gym.spaces.Discrete)
            else d3rlpy.ActionSpace.CONTINUOUS
        ),
    )
    algo = make_algo(
        name,
        data,
        env,
        hidden=list(budget["hidden"]),
        batch_size=budget["batch_size"],
        overrides=overrides,
    )
    env.close()
    lo, hi = meta["ref_min_score"], meta["ref_max_score"]

    def point(step: int) -> list[float]:
        ret = evaluate(algo, meta["env_id"], budget["episodes"], seed)
        return [step, 100.0 * (ret - lo) / (hi - lo), ret]

    start = time.perf_counter()
    algo.build_with_dataset(dataset)
    curve = [point(0)]
    every = budget["eval_every"]
    for done in range(every, budget["steps"] + 1, every):
        algo.fit(
            dataset,
            n_steps=every,
            n_steps_per_epoch=every,
            show_progress=False,
            save_interval=10**9,
            logger_adapter=d3rlpy.logging.NoopAdapterFactory(),
        )
        curve.append(point(done))
    trained = [c for c in curve if c[0] > 0] or curve
    discrete = data["actions"].dtype.kind in "iu"
    return {
        "algo": f"d3rlpy_{name}",
        "loss": f"d3rlpy {DISCRETE.get(name, name) if discrete else name}",
        "task": meta["task"],
        "level": meta["level"],
        "seed": seed,
        "budget": budget,
        "curve": curve,
        "last": curve[-1][1],
        "best": max(c[1] for c in trained),
        "last_return": curve[-1][2],
        "behavior_score": meta["behavior_score"],
        "seconds": round(time.perf_counter() - start, 1),
        "torch_threads": torch.get_num_threads(),
        **({"d3rlpy_config": overrides} if overrides else {}),
    }


def _key(algo: str, meta: dict, seed: int, budget: dict, config: dict | None) -> str:
    return json.dumps(
        [algo, meta["task"], meta["level"], seed, dict(budget), config or {}], sort_keys=True
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--npz", type=Path, nargs="+", required=True, help="--export-npz files")
    parser.add_argument("--algos", nargs="+", default=list(CONTINUOUS))
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    parser.add_argument("--out", type=Path, required=True, help="the table's results file")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument(
        "--set",
        nargs="*",
        default=[],
        metavar="KEY=VALUE",
        help="more arguments of d3rlpy's config (JSON values), recorded as 'd3rlpy_config'",
    )
    args = parser.parse_args()
    overrides = {}
    for item in args.set:
        key, _, value = item.partition("=")
        try:
            overrides[key] = json.loads(value)
        except json.JSONDecodeError:
            overrides[key] = value
    torch.set_num_threads(args.threads)
    done = set()
    if args.out.exists():
        for line in args.out.read_text().splitlines():
            try:
                r = json.loads(line)
            except json.JSONDecodeError:
                continue
            done.add(_key(r["algo"], r, r["seed"], r["budget"], r.get("d3rlpy_config")))
    for seed in args.seeds:
        for path in args.npz:
            data = dict(np.load(path))
            meta = json.loads(str(data.pop("meta")))
            discrete = data["actions"].dtype.kind in "iu"
            for name in args.algos:
                if discrete and name not in DISCRETE:
                    continue
                if _key(f"d3rlpy_{name}", meta, seed, meta["budget"], overrides) in done:
                    continue
                record = run_one(name, data, meta, seed, overrides)
                line = (json.dumps(record) + "\n").encode()
                fd = os.open(args.out, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
                try:  # one write of the whole line
                    os.write(fd, line)
                finally:
                    os.close(fd)
                print(
                    f"d3rlpy_{name} {meta['task']}/{meta['level']} seed {seed}: last "
                    f"{record['last']:.1f} best {record['best']:.1f} ({record['seconds']}s)",
                    flush=True,
                )


if __name__ == "__main__":
    main()
