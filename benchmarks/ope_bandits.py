"""Bias, RMSE and interval coverage of the OPE estimators on logs of one-step decisions,
and the time each takes on 1,000,000 logged rows.

Logs come from :class:`~torchrl_offline.ope.BanditSimulator` (a population of users with
Gaussian features, a catalogue of items, Bernoulli clicks from a logistic model; with
slots, the position-based click model), so every policy's value is known exactly.

- ``items``: 1000 users, 5 features, 10 items, one decision per row; the logger is a
  softmax over a noisy scoring model. Evaluation policies: ``near`` (the logger's scores
  at temperature 0.7), ``far`` (epsilon-greedy, epsilon 0.1, over a better model) and
  ``top3`` (uniform over a good model's 3 best items; zero probability elsewhere).
  Estimators: IS, WIS (bootstrap intervals), DM (ridge), DR / SNDR / switch-DR (tau 10) /
  DR-OS (lambda 100) with a 2-fold cross-fitted ridge, DR with a cross-fitted MLP and FQE
  at horizon 1 (on the first ``--subset`` logs; both are slower).
- ``slates``: the same users and items, 3 slots per slate; the evaluation policy is a
  softmax that is sharper in the top slot. Estimators: PBM-IPS, DM and DR summed over the
  slots (a slate's value).

Each of ``--logs`` independent logs holds ``--rows`` rows (``--rows / 3`` slates). The
timing part draws one log of ``--timing-rows`` rows and runs each estimator once on one
thread. Results go to ``benchmarks/results/ope_bandits.json``.

Usage::

    OMP_NUM_THREADS=1 nice -n 10 python benchmarks/ope_bandits.py            # the study
    python benchmarks/ope_bandits.py --logs 20 --timing-rows 100000 --out /tmp/q.json
"""

from __future__ import annotations

import argparse
import json
import math
import platform
import sys
import time
import warnings
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from torchrl_offline.atomic import replace_file
from torchrl_offline.ope import (
    FQE,
    BanditSimulator,
    DirectMethod,
    DoublyRobustShrinkage,
    EpsilonGreedyPolicy,
    ImportanceSampling,
    OneStepDoublyRobust,
    PositionBasedIPS,
    SelfNormalizedDoublyRobust,
    SoftmaxPolicy,
    SwitchDoublyRobust,
    TopKPolicy,
    WeightedImportanceSampling,
)

RESULTS = Path(__file__).resolve().parent / "results" / "ope_bandits.json"
MLP = {"max_epochs": 30, "patience": 3, "hidden": 32}


def items_setting() -> tuple[BanditSimulator, object, dict[str, object]]:
    sim = BanditSimulator(num_contexts=1000, num_features=5, num_actions=10, seed=0)
    logger_scores = sim.scorer(noise=1.0, seed=1)
    logger = SoftmaxPolicy(logger_scores)
    policies = {
        "near": SoftmaxPolicy(logger_scores, temperature=0.7),
        "far": EpsilonGreedyPolicy(sim.scorer(noise=0.3, seed=2), epsilon=0.1),
        "top3": TopKPolicy(sim.scorer(noise=0.3, seed=3), k=3),
    }
    return sim, logger, policies


def slates_setting() -> tuple[BanditSimulator, object, dict[str, object]]:
    sim = BanditSimulator(num_contexts=1000, num_features=5, num_actions=10, num_positions=3)
    logger = SoftmaxPolicy(sim.scorer(noise=1.0, seed=1))
    sharp = torch.tensor([2.0, 1.5, 1.0])
    target = SoftmaxPolicy(sim.scorer(noise=0.3, seed=2, sharpness=sharp), position_key="position")
    return sim, logger, {"sharp-top": target}


def fqe(policy, seed: int) -> FQE:
    return FQE(
        policy,
        n_actions=10,
        gamma=0.99,
        num_steps=500,
        batch_size=256,
        num_cells=(64, 64),
        n_refits=5,
        seed=seed,
    )


def item_estimators(policy, seed: int, subset: bool) -> dict[str, object]:
    out = {
        "IS": ImportanceSampling(policy, n_bootstrap=200, seed=seed),
        "WIS": WeightedImportanceSampling(policy, n_bootstrap=200, seed=seed),
        "DM": DirectMethod(policy, seed=seed),
        "DR": OneStepDoublyRobust(policy, seed=seed),
        "SNDR": SelfNormalizedDoublyRobust(policy, seed=seed),
        "Switch-DR": SwitchDoublyRobust(policy, tau=10.0, seed=seed),
        "DR-OS": DoublyRobustShrinkage(policy, lam=100.0, seed=seed),
    }
    if subset:
        out["DR (mlp)"] = OneStepDoublyRobust(
            policy, reward_model="mlp", model_kwargs=MLP, seed=seed
        )
        out["FQE"] = fqe(policy, seed)
    return out


def slate_estimators(policy, seed: int, subset: bool) -> dict[str, object]:
    return {
        "PBM-IPS": PositionBasedIPS(policy, seed=seed),
        "DM": DirectMethod(policy, sum_positions=True, seed=seed),
        "DR": OneStepDoublyRobust(policy, sum_positions=True, seed=seed),
    }


def summarise(truth: float, results: list) -> dict:
    values = torch.tensor([r.value for r in results], dtype=torch.float64)
    err = values - truth
    covered = [r.ci_low <= truth <= r.ci_high for r in results]
    widths = torch.tensor([r.ci_high - r.ci_low for r in results], dtype=torch.float64)
    ess = [r.diagnostics.get("ess") for r in results if "ess" in r.diagnostics]
    return {
        "logs": len(results),
        "mean": values.mean().item(),
        "bias": err.mean().item(),
        "bias_se": (err.std() / math.sqrt(len(err))).item() if len(err) > 1 else math.nan,
        "rmse": err.pow(2).mean().sqrt().item(),
        "sd": values.std().item() if len(values) > 1 else math.nan,
        "coverage": sum(covered) / len(covered),
        "mean_ci_width": widths.mean().item(),
        "mean_ess": sum(ess) / len(ess) if ess else None,
    }


def study(name: str, setting, make_estimators, args) -> dict:
    sim, logger, policies = setting()
    n = args.rows // (sim.num_positions or 1)
    out = {"truth": {}, "logger_value": sim.value(logger), "rows": args.rows, "estimates": {}}
    collected: dict[tuple[str, str], list] = {}
    start = time.perf_counter()
    for i in range(args.logs):
        log = sim.simulate(n, logger, seed=10_000 + i)
        for pname, policy in policies.items():
            for ename, est in make_estimators(policy, i, i < args.subset).items():
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore")
                    collected.setdefault((pname, ename), []).append(est.estimate(log))
        if (i + 1) % 25 == 0:
            print(f"{name}: {i + 1} logs, {time.perf_counter() - start:.0f}s", flush=True)
    for pname, policy in policies.items():
        out["truth"][pname] = truth = sim.value(policy)
        out["estimates"][pname] = {
            ename: summarise(truth, results)
            for (p, ename), results in collected.items()
            if p == pname
        }
    out["seconds"] = time.perf_counter() - start
    return out


def timings(rows: int) -> tuple[dict, dict]:
    """Wall-clock and CPU seconds to evaluate one log of ``rows`` rows with each
    estimator, one thread."""
    sim, logger, policies = items_setting()
    policy = policies["far"]
    log = sim.simulate(rows, logger, seed=1)
    slate_sim, slate_logger, slate_policies = slates_setting()
    slate_log = slate_sim.simulate(rows // 3, slate_logger, seed=1)
    cases = {
        **{k: (v, log) for k, v in item_estimators(policy, 0, True).items()},
        "IS (1000 bootstrap)": (ImportanceSampling(policy), log),
        "PBM-IPS": (PositionBasedIPS(slate_policies["sharp-top"]), slate_log),
    }
    wall, cpu = {}, {}
    for name, (est, data) in cases.items():
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            t, c = time.perf_counter(), time.process_time()
            est.estimate(data)
            wall[name], cpu[name] = time.perf_counter() - t, time.process_time() - c
        print(f"timing {name}: {wall[name]:.2f}s wall, {cpu[name]:.2f}s CPU", flush=True)
    return wall, cpu


def markdown(report: dict) -> str:
    """The study's tables (bias, RMSE, coverage per policy; the timings) as Markdown."""
    lines = []
    for setting in ("items", "slates"):
        part = report[setting]
        for policy, rows in part["estimates"].items():
            truth = part["truth"][policy]
            lines += [
                f"**{setting}, policy `{policy}`** (truth {truth:.4f}; logging policy "
                f"{part['logger_value']:.4f}; {part['rows']} rows per log)",
                "",
                "| estimator | logs | bias (± s.e.) | sd | RMSE | 95% CI coverage | mean CI width "
                "| mean ESS |",
                "|---|---|---|---|---|---|---|---|",
            ]
            for name, r in rows.items():
                # FQE's "ess" counts its initial states, not importance weights
                weighted = r["mean_ess"] is not None and name != "FQE"
                ess = f"{r['mean_ess']:.0f}" if weighted else "-"
                lines.append(
                    f"| {name} | {r['logs']} | {r['bias']:+.4f} ± {r['bias_se']:.4f} | "
                    f"{r['sd']:.4f} | {r['rmse']:.4f} | {r['coverage']:.0%} | "
                    f"{r['mean_ci_width']:.4f} | {ess} |"
                )
            lines.append("")
    rows = report["timing_seconds"]
    lines += [
        f"**Time to evaluate {report['config']['timing_rows']:,} logged rows** (one thread, "
        "`far` policy; PBM-IPS on a slate log of as many rows)",
        "",
        "| estimator | wall-clock seconds | CPU seconds |",
        "|---|---|---|",
        *(
            f"| {name} | {sec:.1f} | {report.get('timing_cpu_seconds', {}).get(name, math.nan):.1f} |"
            for name, sec in rows.items()
        ),
    ]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--logs", type=int, default=200, help="independent logs per setting")
    parser.add_argument("--rows", type=int, default=3000, help="rows per log")
    parser.add_argument("--subset", type=int, default=10, help="logs also run by DR (mlp), FQE")
    parser.add_argument("--timing-rows", type=int, default=1_000_000)
    parser.add_argument("--out", type=Path, default=RESULTS)
    parser.add_argument(
        "--tables", type=Path, help="print the Markdown tables of a results file and exit"
    )
    parser.add_argument(
        "--timing-only",
        action="store_true",
        help="re-measure the timings only, into the existing results file --out",
    )
    args = parser.parse_args()
    if args.tables is not None:
        print(markdown(json.loads(args.tables.read_text())))
        return
    torch.set_num_threads(1)
    begin = time.perf_counter()
    command = "python benchmarks/ope_bandits.py " + " ".join(sys.argv[1:])
    if args.timing_only:
        report = json.loads(args.out.read_text())
        report["config"]["timing_rows"] = args.timing_rows
        report["timing_command"] = command
    else:
        report = {
            "command": command,
            "config": {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()},
            "machine": {
                "torch": torch.__version__,
                "threads": torch.get_num_threads(),
                "processor": platform.processor() or platform.machine(),
            },
            "items": study("items", items_setting, item_estimators, args),
            "slates": study("slates", slates_setting, slate_estimators, args),
        }
    report["timing_seconds"], report["timing_cpu_seconds"] = timings(args.timing_rows)
    if not args.timing_only:
        report["total_seconds"] = time.perf_counter() - begin
    args.out.parent.mkdir(parents=True, exist_ok=True)
    replace_file(args.out, lambda f: f.write(json.dumps(report, indent=1).encode()))
    print(f"wrote {args.out} ({time.perf_counter() - begin:.0f}s)")


if __name__ == "__main__":
    main()
