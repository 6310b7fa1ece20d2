"""``torchrl-offline ope``: estimate a checkpoint's value from logged data."""

from __future__ import annotations

import argparse
import json
import math
import warnings
from typing import Any

from torchrl_offline.cli.common import UsageError, open_dataset, progress_bar
from torchrl_offline.cli.log_options import add_log_options, log_keywords

__all__ = ["ESTIMATORS", "add_parser", "run"]

#: Short names of the estimators and their classes (module path, class name).
ESTIMATORS: dict[str, tuple[str, str]] = {
    "fqe": ("torchrl_offline.ope.fqe", "FQE"),
    "is": ("torchrl_offline.ope.importance", "ImportanceSampling"),
    "wis": ("torchrl_offline.ope.importance", "WeightedImportanceSampling"),
    "pdis": ("torchrl_offline.ope.importance", "PerDecisionImportanceSampling"),
    "wpdis": ("torchrl_offline.ope.importance", "WeightedPerDecisionImportanceSampling"),
    "dr": ("torchrl_offline.ope.doubly_robust", "DoublyRobust"),
    "wdr": ("torchrl_offline.ope.doubly_robust", "WeightedDoublyRobust"),
}
_NEEDS_Q = ("dr", "wdr")


def add_parser(subparsers: Any) -> argparse.ArgumentParser:
    parser = subparsers.add_parser(
        "ope",
        help="estimate a checkpoint's value from logged data (off-policy evaluation)",
        description="Estimate the expected discounted return of a checkpoint's policy from a "
        "dataset, with the estimators of torchrl_offline.ope, and print a table with "
        "confidence intervals and effective sample sizes. The logged behaviour policy's own "
        "discounted return is printed for comparison.",
    )
    parser.add_argument("checkpoint", help="checkpoint file, or a run directory (newest one)")
    parser.add_argument("--dataset", required=True, metavar="ID_OR_PATH", help="logged data")
    parser.add_argument(
        "--estimators",
        default="fqe,wis,wpdis,wdr",
        help=f"comma-separated, from {', '.join(ESTIMATORS)} (default: fqe,wis,wpdis,wdr)",
    )
    parser.add_argument("--gamma", type=float, default=0.99, help="discount")
    parser.add_argument("--confidence", type=float, default=0.95, help="interval level")
    parser.add_argument("--bootstrap", type=int, default=1000, help="bootstrap resamples")
    parser.add_argument("--fqe-steps", type=int, default=2000, help="FQE gradient updates")
    parser.add_argument("--fqe-batch-size", type=int, default=256)
    parser.add_argument(
        "--behavior",
        choices=("logged", "estimate"),
        default="logged",
        help="behaviour probabilities: the logged action_log_prob (estimated from the data "
        "when absent), or always estimated",
    )
    parser.add_argument("--clip-weight", type=float, help="clip importance weights at this")
    parser.add_argument(
        "--kernel-bandwidth",
        type=float,
        help="continuous deterministic policies: Gaussian kernel bandwidth for IS",
    )
    parser.add_argument(
        "--epsilon", type=float, help="discrete deterministic policies: epsilon-greedy smoothing"
    )
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", action="store_true", help="print JSON instead of a table")
    parser.add_argument(
        "--root", help="Minari datasets root (default: $MINARI_DATASETS_PATH or ~/.minari/datasets)"
    )
    add_log_options(parser)
    parser.set_defaults(run=run)
    return parser


def _estimator_names(text: str) -> list[str]:
    names = [n.strip().lower() for n in text.split(",") if n.strip()]
    if not names:
        raise UsageError("--estimators is empty")
    for name in names:
        if name not in ESTIMATORS:
            raise UsageError(f"unknown estimator {name!r}; valid names: {', '.join(ESTIMATORS)}")
    return list(dict.fromkeys(names))


def _class(name: str) -> Any:
    import importlib

    module, attr = ESTIMATORS[name]
    return getattr(importlib.import_module(module), attr)


def _fit_fqe(policy: Any, buffer: Any, args: argparse.Namespace) -> tuple[Any, Any]:
    """Fit FQE (with a progress bar over its updates); return ``(fqe, result)``."""
    from torch.optim.optimizer import register_optimizer_step_post_hook

    fqe = _class("fqe")(
        policy,
        gamma=args.gamma,
        num_steps=args.fqe_steps,
        batch_size=args.fqe_batch_size,
        epsilon=args.epsilon,
        kernel_bandwidth=args.kernel_bandwidth,
        n_bootstrap=args.bootstrap,
        confidence=args.confidence,
        seed=args.seed,
    )
    with progress_bar(args.fqe_steps, "FQE fit", enabled=args.progress) as bar:

        def count_update(*_: Any) -> None:
            bar.update(1)

        handle = register_optimizer_step_post_hook(count_update)
        try:
            result = fqe.estimate(buffer)
        finally:
            handle.remove()
    return fqe, result


def _estimate_all(policy: Any, buffer: Any, names: list[str], args: argparse.Namespace):
    common = {
        "gamma": args.gamma,
        "behavior_policy": "estimate" if args.behavior == "estimate" else None,
        "clip_weight": args.clip_weight,
        "n_bootstrap": args.bootstrap,
        "confidence": args.confidence,
        "seed": args.seed,
        "kernel_bandwidth": args.kernel_bandwidth,
        "epsilon": args.epsilon,
    }
    results: dict[str, Any] = {}
    fqe = None
    if "fqe" in names or any(n in _NEEDS_Q for n in names):
        fqe, fqe_result = _fit_fqe(policy, buffer, args)
        if "fqe" in names:
            results["fqe"] = fqe_result
    for name in names:
        if name == "fqe":
            continue
        cls = _class(name)
        try:
            estimator = cls(policy, fqe, **common) if name in _NEEDS_Q else cls(policy, **common)
        except TypeError as err:  # a policy without action probabilities
            raise UsageError(f"{name}: {err} (options --kernel-bandwidth / --epsilon)") from None
        results[name] = estimator.estimate(buffer)
    return {name: results[name] for name in names}


def _behaviour_value(buffer: Any, gamma: float) -> float:
    from torchrl_offline.ope.episodes import to_episodes

    return to_episodes(buffer, on_missing_initial="drop").returns(gamma).mean().item()


def _fmt(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.4g}" if math.isfinite(value) else str(value)
    return "-" if value is None else str(value)


def _table(results: dict[str, Any], behaviour: float, confidence: float) -> str:
    level = f"{confidence:.0%} CI"
    rows = [("estimator", "value", level, "ESS", "warnings")]
    rows.append(("behaviour (logged)", _fmt(behaviour), "-", "-", ""))
    for name, r in results.items():
        ess = r.diagnostics.get("ess")
        rows.append(
            (
                f"{name} ({r.estimator})",
                _fmt(r.value),
                f"[{_fmt(r.ci_low)}, {_fmt(r.ci_high)}]",
                _fmt(float(ess)) if ess is not None else "-",
                str(len(r.warnings)) if r.warnings else "",
            )
        )
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    lines = ["  ".join(cell.ljust(w) for cell, w in zip(row, widths)).rstrip() for row in rows]
    lines.insert(1, "  ".join("-" * w for w in widths))
    for name, r in results.items():
        lines += [f"{name}: note: {note}" for note in r.notes]
        lines += [f"{name}: WARNING: {w}" for w in r.warnings]
    return "\n".join(lines)


def run(args: argparse.Namespace) -> int:
    """Estimate the checkpoint's value with each estimator and print a table."""
    from torchrl_offline.cli.checkpoints import load_trained
    from torchrl_offline.cli.envs import check_specs_match
    from torchrl_offline.trainers.algorithms import specs_from_dataset

    names = _estimator_names(args.estimators)
    if not 0.0 <= args.gamma <= 1.0:
        raise UsageError(f"--gamma must be in [0, 1], got {args.gamma}")
    if not 0.0 < args.confidence < 1.0:
        raise UsageError(f"--confidence must be in (0, 1), got {args.confidence}")
    for option in ("bootstrap", "fqe_steps", "fqe_batch_size"):
        if getattr(args, option) < 1:
            raise UsageError(f"--{option.replace('_', '-')} must be positive")
    algorithm, step, file = load_trained(args.checkpoint)
    buffer = open_dataset(args.dataset, root=args.root, **log_keywords(args))
    check_specs_match(
        *specs_from_dataset(buffer),
        algorithm.observation_spec,
        algorithm.action_spec,
        ours=f"the dataset {args.dataset!r}",
        theirs=f"the checkpoint's {algorithm.name} policy",
    )
    from torchrl_offline.ope.result import OPEWarning

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", OPEWarning)  # shown in the table instead
        results = _estimate_all(algorithm.policy, buffer, names, args)
    behaviour = _behaviour_value(buffer, args.gamma)
    if args.json:
        out = {
            "checkpoint": str(file),
            "algorithm": algorithm.name,
            "step": step,
            "gamma": args.gamma,
            "behavior_value": behaviour,
            "estimates": {name: r.as_dict() for name, r in results.items()},
        }
        print(json.dumps(out, indent=2, default=float))
        return 0
    print(f"{algorithm.name} at step {step} ({file}); discounted value, gamma {args.gamma}")
    print(_table(results, behaviour, args.confidence))
    return 0
