"""Coverage of FQE's confidence intervals on finite MDPs with exactly known values.

For each of ``--datasets`` independent datasets sampled from a finite MDP of
``tests/ope`` (whose policy values solve a linear system exactly), FQE is fitted once with
``--refits`` bootstrap refits on resampled episodes, and the script records whether each
95% interval covers the true value:

- ``initial_states``: the bootstrap over the initial states of one fit (FQE's interval
  before issue 18: it ignores the critic's error);
- ``refit t (B)``: ``value +- t_{B-1} * sd`` of the first ``B`` refits' estimates;
- ``refit percentile (B)``: the 2.5% and 97.5% percentiles of those estimates.

The refits are independent, so the first ``B`` of one run with ``--refits`` refits are
distributed as a run with ``B`` refits. The problems:

- ``mixed``: ``make_problem()`` of ``tests/ope/conftest.py`` (5 states, 3 actions,
  gamma 0.9, episodes of about 3 steps ended by termination); the evaluation policy is
  stochastic and differs from the behaviour policy;
- ``chain``: the MDP of ``tests/ope/test_fqe.py`` (5 states, 3 actions, gamma 0.8,
  termination probability 0.1, episodes cut at 10 steps), uniform behaviour policy.

Critics: ``linear`` (one-hot states in, a linear layer: tabular FQE, the certainty
equivalent of the data) and ``mlp`` (the default MLP critic, 2x32, minibatches of 64).

Usage::

    python benchmarks/ope_fqe_coverage.py                    # every configuration
    python benchmarks/ope_fqe_coverage.py --datasets 20      # a quick look
    python benchmarks/ope_fqe_coverage.py --json cov.json    # keep the raw intervals
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
import warnings
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from tests.ope.conftest import FiniteMDP, make_problem, tabular_actor
from torchrl_offline.ope.fqe import FQE
from torchrl_offline.ope.result import OPEWarning
from torchrl_offline.ope.uncertainty import bootstrap_interval, student_t_ppf


def chain_problem():
    """The MDP of tests/ope/test_fqe.py as a :class:`FiniteMDP` (uniform behaviour)."""
    s, a = 5, 3
    g = torch.Generator().manual_seed(0)
    p = torch.rand(s, a, s, generator=g, dtype=torch.float64) ** 3
    p = p / p.sum(-1, keepdim=True)
    r = torch.rand(s, a, generator=g, dtype=torch.float64) * 2 - 1
    pi = torch.softmax(2 * torch.randn(s, a, generator=g, dtype=torch.float64), -1)
    mdp = FiniteMDP(
        P=p,
        R=r,
        term=torch.full((s, a), 0.1, dtype=torch.float64),
        d0=torch.full((s,), 1.0 / s, dtype=torch.float64),
        reward_noise=0.0,
    )
    return mdp, torch.full((s, a), 1.0 / a, dtype=torch.float64), pi, 0.8, 10


def mixed_problem():
    problem = make_problem()
    return problem.mdp, problem.mu, problem.pi, problem.gamma, 200


PROBLEMS = {"mixed": mixed_problem, "chain": chain_problem}


def fqe_for(critic: str, pi: torch.Tensor, gamma: float, refits: int, seed: int) -> FQE:
    actor = tabular_actor(pi)
    if critic == "linear":
        return FQE(
            actor,
            num_cells=(),  # one linear layer on one-hot states: tabular
            gamma=gamma,
            num_steps=600,
            batch_size=100_000,  # the whole dataset at every update
            lr=0.05,
            target_update_interval=20,
            n_refits=refits,
            seed=seed,
        )
    return FQE(
        actor,
        gamma=gamma,
        num_steps=600,
        batch_size=64,
        lr=3e-3,
        num_cells=(32, 32),
        target_update_interval=10,
        n_refits=refits,
        seed=seed,
    )


def intervals(fqe: FQE, result, refit_counts: list[int], confidence: float) -> dict:
    values = result.per_episode
    out = {"initial_states": bootstrap_interval(values, n_bootstrap=1000, seed=0)}
    refits = fqe.refit_values
    alpha = 1 - confidence
    for b in refit_counts:
        r = refits[:b]
        half = student_t_ppf(1 - alpha / 2, b - 1) * float(r.std())
        out[f"refit t ({b})"] = (result.value - half, result.value + half)
        q = torch.quantile(r, torch.tensor([alpha / 2, 1 - alpha / 2], dtype=torch.float64))
        out[f"refit percentile ({b})"] = tuple(q.tolist())
    return out


def run(problem: str, critic: str, args) -> dict:
    mdp, mu, pi, gamma, horizon = PROBLEMS[problem]()
    truth = mdp.value(pi, gamma)
    refit_counts = [b for b in (5, 10, 20) if b <= args.refits]
    covered: dict[str, int] = {}
    widths: dict[str, list[float]] = {}
    errors = []
    t0 = time.perf_counter()
    for j in range(args.datasets):
        data = mdp.sample(mu, args.episodes, seed=1000 * j + 7, max_steps=horizon)
        fqe = fqe_for(critic, pi, gamma, args.refits, seed=j)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", OPEWarning)
            result = fqe.estimate(data)
        errors.append(result.value - truth)
        for name, (low, high) in intervals(fqe, result, refit_counts, 0.95).items():
            covered[name] = covered.get(name, 0) + int(low <= truth <= high)
            widths.setdefault(name, []).append(high - low)
    n = args.datasets
    err = torch.tensor(errors, dtype=torch.float64)
    summary = {
        "problem": problem,
        "critic": critic,
        "datasets": n,
        "episodes": args.episodes,
        "true_value": truth,
        "bias": float(err.mean()),
        "rmse": float(err.pow(2).mean().sqrt()),
        "coverage": {k: v / n for k, v in covered.items()},
        "mean_width": {k: sum(w) / len(w) for k, w in widths.items()},
        "seconds": time.perf_counter() - t0,
    }
    return summary


def markdown(rows: list[dict]) -> str:
    names = list(rows[0]["coverage"])
    lines = [
        "| problem | critic | episodes | bias | RMSE | " + " | ".join(names) + " |",
        "|---|---|---|---|---|" + "---|" * len(names),
    ]
    for r in rows:
        cells = " | ".join(f"{r['coverage'][k]:.2f} ({r['mean_width'][k]:.3f})" for k in names)
        lines.append(
            f"| {r['problem']} | {r['critic']} | {r['episodes']} | {r['bias']:+.3f} | "
            f"{r['rmse']:.3f} | {cells} |"
        )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--datasets", type=int, default=200)
    parser.add_argument("--episodes", type=int, default=50)
    parser.add_argument("--refits", type=int, default=20)
    parser.add_argument("--problems", default="mixed,chain")
    parser.add_argument("--critics", default="linear,mlp")
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args()
    torch.set_num_threads(1)
    rows = []
    for problem in args.problems.split(","):
        for critic in args.critics.split(","):
            row = run(problem, critic, args)
            print(json.dumps(row), flush=True)
            rows.append(row)
    se = math.sqrt(0.95 * 0.05 / args.datasets)
    print()
    print(
        f"Coverage of 95% intervals over {args.datasets} datasets (binomial standard error "
        f"{se:.3f} at 0.95); mean width in parentheses."
    )
    print(markdown(rows))
    if args.json is not None:
        args.json.write_text(json.dumps(rows, indent=1))


if __name__ == "__main__":
    main()
