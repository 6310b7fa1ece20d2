"""Updates per second of d3rlpy 2.8.1's algorithms, with the matmul peak of the same run.

IQL, TD3+BC, AWAC, CQL, ReBRAC, Cal-QL, BCQ, BEAR and discrete BCQ. Run with a Python that
has d3rlpy (it pins its own gymnasium, so it lives in its own venv; install
``torch==2.13.0`` from the CPU index first). The settings match ``loss_throughput.py``:
batch 256, 2x256 ReLU encoders for every network (ReBRAC: 3x256, LayerNorm after each ReLU
of the critics, as its case there), observation 17, action 6, one torch thread, a fixed
batch, round-robin timing with the same 2048^3 fp32 matmul timed in the same rounds;
discrete BCQ has 6 discrete actions, a Q function and an imitation model each on its own
2x256 encoder (``share_encoder=False``, as ``throughput_cases/discrete_bcq.py``) and the
logit penalty 1e-2. Since d3rlpy and torchrl_offline cannot share a process, compare the
two through their share of that peak, or run both scripts back to back and compare
updates/s when the machine is quiet. Usage::

    /path/to/d3rlpy-venv/bin/python benchmarks/loss_throughput_d3rlpy.py --rounds 3
    /path/to/d3rlpy-venv/bin/python benchmarks/loss_throughput_d3rlpy.py --algos rebrac
"""

from __future__ import annotations

import argparse
import os
import statistics
import time
from collections.abc import Callable

import numpy as np
import torch


def _algos(hidden: int, batch_size: int) -> dict[str, object]:
    import d3rlpy

    enc = d3rlpy.models.VectorEncoderFactory(hidden_units=[hidden, hidden], activation="relu")
    common = dict(batch_size=batch_size, actor_encoder_factory=enc, critic_encoder_factory=enc)
    return {
        "iql": d3rlpy.algos.IQLConfig(
            value_encoder_factory=enc, expectile=0.7, weight_temp=3.0, **common
        ),
        "td3_bc": d3rlpy.algos.TD3PlusBCConfig(alpha=2.5, update_actor_interval=2, **common),
        "awac": d3rlpy.algos.AWACConfig(lam=1.0 / 3.0, **common),
        "cql": d3rlpy.algos.CQLConfig(
            conservative_weight=10.0, n_action_samples=10, alpha_threshold=10.0, **common
        ),
        # BCQ and BEAR as in throughput_cases/bcq.py and bear.py: 10 target samples, BEAR's
        # MMD over 5 samples per state after the warm-up; d3rlpy's imitator is the VAE
        "bcq": d3rlpy.algos.BCQConfig(
            imitator_encoder_factory=enc, n_action_samples=10, action_flexibility=0.05, **common
        ),
        "bear": d3rlpy.algos.BEARConfig(
            imitator_encoder_factory=enc,
            n_target_samples=10,
            n_mmd_action_samples=5,
            mmd_kernel="laplacian",
            mmd_sigma=20.0,
            warmup_steps=0,
            **common,
        ),
        # the paper's networks: 3 hidden layers, Linear -> ReLU -> LayerNorm in the critics
        "rebrac": d3rlpy.algos.ReBRACConfig(
            batch_size=batch_size,
            actor_encoder_factory=d3rlpy.models.VectorEncoderFactory(
                hidden_units=[hidden] * 3, activation="relu"
            ),
            critic_encoder_factory=d3rlpy.models.VectorEncoderFactory(
                hidden_units=[hidden] * 3, activation="relu", use_layer_norm=True
            ),
            actor_learning_rate=1e-3,
            critic_learning_rate=1e-3,
            actor_beta=0.001,
            critic_beta=0.01,
            update_actor_interval=2,
        ),
        "cal_ql": d3rlpy.algos.CalQLConfig(
            conservative_weight=5.0, n_action_samples=10, alpha_threshold=10.0, **common
        ),
        "discrete_bcq": d3rlpy.algos.DiscreteBCQConfig(
            batch_size=batch_size,
            encoder_factory=enc,
            share_encoder=False,
            action_flexibility=0.3,
            beta=1e-2,
            learning_rate=3e-4,
        ),
    }


def cases(
    obs_dim: int, act_dim: int, batch_size: int, hidden: int, algos: list[str] | None = None
) -> dict[str, Callable]:
    import d3rlpy

    rng = np.random.default_rng(0)
    n = 10_000
    timeouts = np.zeros(n)
    timeouts[999::1000] = 1.0
    actions = {  # continuous in [-1, 1]^act_dim, or one of act_dim discrete actions
        False: rng.uniform(-1, 1, (n, act_dim)).astype(np.float32),
        True: rng.integers(act_dim, size=(n, 1)),
    }
    datasets = {
        discrete: d3rlpy.dataset.MDPDataset(
            observations=rng.standard_normal((n, obs_dim)).astype(np.float32),
            actions=action,
            rewards=rng.standard_normal(n).astype(np.float32),
            terminals=np.zeros(n),
            timeouts=timeouts,
            action_space=d3rlpy.ActionSpace.DISCRETE if discrete else None,
        )
        for discrete, action in actions.items()
    }
    out = {}
    for name, config in _algos(hidden, batch_size).items():
        if algos and name not in algos:
            continue
        dataset = datasets[name.startswith("discrete_")]
        batch = dataset.sample_transition_batch(batch_size)
        algo = config.create(device="cpu:0")
        algo.build_with_dataset(dataset)
        out[f"{name}/d3rlpy"] = lambda algo=algo, batch=batch: algo.update(batch)
    return out


def time_case(fn: Callable, seconds: float) -> float:
    n, start = 0, time.perf_counter()
    while True:
        fn()
        n += 1
        elapsed = time.perf_counter() - start
        if elapsed >= seconds:
            return n / elapsed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--algos", nargs="*", default=None, help="algorithms to time")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--seconds", type=float, default=2.0)
    parser.add_argument("--warmup", type=int, default=5)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--peak-size", type=int, default=2048)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    fns = cases(17, 6, 256, 256, args.algos)
    a, b = torch.randn(args.peak_size, args.peak_size), torch.randn(args.peak_size, args.peak_size)
    out = torch.empty_like(a)
    fns["peak/matmul"] = lambda: torch.mm(a, b, out=out)
    for fn in fns.values():
        for _ in range(args.warmup):
            fn()
    load = os.getloadavg()[0]
    results = {k: [] for k in fns}
    for _ in range(args.rounds):
        for k, fn in fns.items():
            results[k].append(time_case(fn, args.seconds))
    peak = 2.0 * args.peak_size**3 * statistics.median(results.pop("peak/matmul"))
    print(
        f"# d3rlpy, torch {torch.__version__}, {torch.get_num_threads()} threads; batch 256, "
        f"2x256 MLPs, obs 17, act 6; {args.rounds} rounds x {args.seconds}s; load average "
        f"{load:.1f} -> {os.getloadavg()[0]:.1f}; peak {peak / 1e9:.1f} GFLOP/s"
    )
    for k, v in results.items():
        med = statistics.median(v)
        print(f"{k:20s} {med:8.1f} updates/s  {med / (peak / 1e9):.3f} updates/s per peak GFLOP/s")


if __name__ == "__main__":
    main()
