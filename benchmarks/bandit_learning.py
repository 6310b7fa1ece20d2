"""Policy learning from logs of one-step decisions: what ``bandit_ips`` gains over the
logging policy and over behaviour cloning, and whether IS / WIS intervals on held-out
logs cover the learned policy's exact value.

The logs are :func:`tests.decision_log.decision_log` (4 items, 3 context features, a
softmax logging policy over half the true scores, known propensities, the reward model
known exactly). For each of ``--train-seeds`` training logs of ``--rows`` decisions,
``bandit_ips`` and ``bc`` (``discrete_bc``) are trained for ``--steps`` updates (a 16-unit
network, Adam at 1e-2); each learned policy is then estimated by IS and WIS on
``--held-out`` independent logs of the same logger, and every estimate is set next to
the policy's exact value on that log's contexts.

Usage::

    python benchmarks/bandit_learning.py                         # the documented run
    python benchmarks/bandit_learning.py --train-seeds 2 --held-out 5   # a quick look
    python benchmarks/bandit_learning.py --json benchmarks/results/bandit_learning.json
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import tempfile
import time
import warnings
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from tests.decision_log import (
    decision_log,
    logging_probs,
    policy_probs,
    policy_value,
    reward_model,
)
from torchrl_offline.data.logged import from_logged
from torchrl_offline.ope.importance import ImportanceSampling, WeightedImportanceSampling
from torchrl_offline.ope.result import OPEWarning
from torchrl_offline.trainers.offline import train

SETTINGS = {"hidden_sizes": (16,), "actor_lr": 1e-2}
ESTIMATORS = {"IS": ImportanceSampling, "WIS": WeightedImportanceSampling}


def run(args: argparse.Namespace, root: Path) -> list[dict]:
    records = []
    held = [
        (seed, decision_log(args.rows, seed=seed)) for seed in range(1000, 1000 + args.held_out)
    ]
    buffers = {seed: from_logged(log, path=root / f"held{seed}", horizon=1) for seed, log in held}
    for train_seed in range(args.train_seeds):
        logged = from_logged(
            decision_log(args.rows, seed=train_seed), path=root / f"train{train_seed}", horizon=1
        )
        for algo in ("bandit_ips", "bc"):
            torch.manual_seed(train_seed)
            start = time.perf_counter()
            policy = train(
                algo, logged, total_steps=args.steps, overrides=SETTINGS, progress=False,
                logger=None,
            ).algorithm.policy  # fmt: skip
            seconds = time.perf_counter() - start
            for seed, log in held:
                context = log["observation"]
                scores = reward_model(context)
                record = {
                    "train_seed": train_seed,
                    "algorithm": algo,
                    "held_out_seed": seed,
                    "train_seconds": seconds,
                    "true": policy_value(policy_probs(policy, context), context),
                    "logger": policy_value(logging_probs(context), context),
                    "best": policy_value(scores == scores.max(-1, keepdims=True), context),
                }
                for name, estimator in ESTIMATORS.items():
                    result = estimator(policy, n_bootstrap=200).estimate(buffers[seed])
                    record[name] = [result.value, result.ci_low, result.ci_high]
                records.append(record)
    return records


def summary(records: list[dict]) -> str:
    lines = [
        "| policy | true value | logger | best | IS bias | IS coverage | WIS bias | WIS coverage |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for algo in ("bandit_ips", "bc"):
        rows = [r for r in records if r["algorithm"] == algo]
        n = len(rows)

        def mean_se(values):
            v = np.asarray(values)
            return f"{v.mean():+.4f} ± {v.std(ddof=1) / math.sqrt(len(v)):.4f}"

        cells = [
            algo,
            f"{np.mean([r['true'] for r in rows]):.3f}",
            f"{np.mean([r['logger'] for r in rows]):.3f}",
            f"{np.mean([r['best'] for r in rows]):.3f}",
        ]
        for name in ESTIMATORS:
            cells.append(mean_se([r[name][0] - r["true"] for r in rows]))
            covered = sum(r[name][1] < r["true"] < r[name][2] for r in rows)
            cells.append(f"{covered}/{n}")
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--train-seeds", type=int, default=5)
    parser.add_argument("--held-out", type=int, default=20)
    parser.add_argument("--rows", type=int, default=2000)
    parser.add_argument("--steps", type=int, default=300)
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args()
    torch.set_num_threads(1)
    warnings.simplefilter("ignore", OPEWarning)
    with tempfile.TemporaryDirectory() as tmp:
        records = run(args, Path(tmp))
    print(summary(records))
    if args.json is not None:
        args.json.write_text(json.dumps({"settings": vars(args) | {"json": None},
                                         "records": records}, indent=1))  # fmt: skip


if __name__ == "__main__":
    main()
