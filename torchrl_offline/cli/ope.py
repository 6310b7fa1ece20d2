"""``torchrl-offline ope``: estimate a checkpoint's value from logged data."""

from __future__ import annotations

import argparse
import json
import math
import warnings
from typing import Any

from torchrl_offline.cli.common import (
    Rewording,
    UsageError,
    add_policy_mode_option,
    describe_policy_mode,
    open_dataset,
    progress_bar,
    require_policy_mode,
)
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
    "dm": ("torchrl_offline.ope.bandit_estimators", "DirectMethod"),
    "sndr": ("torchrl_offline.ope.bandit_estimators", "SelfNormalizedDoublyRobust"),
    "switch-dr": ("torchrl_offline.ope.bandit_estimators", "SwitchDoublyRobust"),
    "dr-os": ("torchrl_offline.ope.bandit_estimators", "DoublyRobustShrinkage"),
    "pbm-ips": ("torchrl_offline.ope.bandit_estimators", "PositionBasedIPS"),
    "model": ("torchrl_offline.ope.model_based", "ModelBasedOPE"),
}
_NEEDS_Q = ("dr", "wdr")
#: Estimators that query the policy's actions, not its probability of the logged ones.
_DIRECT = ("fqe", "model")
#: ``dr`` on a log of one-step decisions: DR with the cross-fitted reward regression.
_ONE_STEP_DR = ("torchrl_offline.ope.bandit_estimators", "OneStepDoublyRobust")
#: Estimators of logs of one-step decisions (a reward regression instead of FQE); on such
#: logs ``dr`` is one of them too (DR with the cross-fitted reward regression).
ONE_STEP_ONLY = ("dm", "sndr", "switch-dr", "dr-os", "pbm-ips")
#: The estimators run when --estimators is not given.
DEFAULT_ESTIMATORS = ("fqe", "wis", "wpdis", "wdr")
#: ... and on a log of one-step decisions (every episode one step).
DEFAULT_ONE_STEP_ESTIMATORS = ("is", "wis", "dm", "dr", "sndr", "switch-dr", "dr-os")


def add_parser(subparsers: Any) -> argparse.ArgumentParser:
    parser = subparsers.add_parser(
        "ope",
        help="estimate a checkpoint's value from logged data (off-policy evaluation)",
        description="Estimate the expected discounted return of a checkpoint's policy from a "
        "dataset, with the estimators of torchrl_offline.ope, and print a table with "
        "confidence intervals and effective sample sizes. The policy scored is the greedy one "
        "(deterministic actions, as evaluate runs it) unless --policy-mode stochastic. The "
        "logged behaviour policy's own discounted return is printed for comparison.",
    )
    parser.add_argument("checkpoint", help="checkpoint file, or a run directory (newest one)")
    parser.add_argument("--dataset", required=True, metavar="ID_OR_PATH", help="logged data")
    parser.add_argument(
        "--estimators",
        help=f"comma-separated, from {', '.join(ESTIMATORS)} (default: "
        f"{','.join(DEFAULT_ESTIMATORS)}; on a log of one-step decisions "
        f"{','.join(DEFAULT_ONE_STEP_ESTIMATORS)}; FQE alone for the greedy policy of "
        f"continuous actions without --kernel-bandwidth). {', '.join(ONE_STEP_ONLY)} need a "
        "log of one-step decisions (--horizon 1), where dr uses the reward regression too; "
        "pbm-ips sums over the log's positions (a slate's value)",
    )
    add_policy_mode_option(parser)
    parser.add_argument("--gamma", type=float, default=0.99, help="discount")
    parser.add_argument("--confidence", type=float, default=0.95, help="interval level")
    parser.add_argument("--bootstrap", type=int, default=1000, help="bootstrap resamples")
    parser.add_argument("--fqe-steps", type=int, default=2000, help="FQE gradient updates")
    parser.add_argument("--fqe-batch-size", type=int, default=256)
    parser.add_argument(
        "--fqe-refits",
        type=int,
        default=10,
        help="FQE's interval: refits of the critic on resampled episodes, trained together "
        "with the main fit (the fit costs about 1 + N critics; default 10)",
    )
    parser.add_argument(
        "--fqe-interval",
        choices=("refit", "initial-states"),
        default="refit",
        help="refit: bootstrap over refits (default); initial-states: bootstrap over the "
        "initial states of one fit, cheaper but blind to the critic's error (too narrow)",
    )
    add_model_options(parser)
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
    parser.add_argument(
        "--reward-model",
        choices=("ridge", "logistic", "mlp"),
        default="ridge",
        help="one-step logs: the reward regression of dm and the DR family (default ridge)",
    )
    parser.add_argument(
        "--folds", type=int, default=2, help="one-step logs: cross-fitting folds of the DR family"
    )
    parser.add_argument(
        "--switch-tau", type=float, default=10.0, help="switch-dr: the weight threshold tau"
    )
    parser.add_argument(
        "--shrinkage-lambda",
        type=float,
        default=100.0,
        help="dr-os: the shrinkage lambda (weights w*lambda/(w^2+lambda))",
    )
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", action="store_true", help="print JSON instead of a table")
    parser.add_argument(
        "--root", help="Minari datasets root (default: $MINARI_DATASETS_PATH or ~/.minari/datasets)"
    )
    add_log_options(parser)
    parser.set_defaults(run=run)
    return parser


def _estimator_names(text: str | None, one_step: bool = False) -> list[str]:
    if text is None:
        return list(DEFAULT_ONE_STEP_ESTIMATORS if one_step else DEFAULT_ESTIMATORS)
    names = [n.strip().lower() for n in text.split(",") if n.strip()]
    if not names:
        raise UsageError("--estimators is empty")
    for name in names:
        if name not in ESTIMATORS:
            raise UsageError(f"unknown estimator {name!r}; valid names: {', '.join(ESTIMATORS)}")
    return list(dict.fromkeys(names))


def _weighted_estimators(
    names: list[str], args: argparse.Namespace, continuous: bool
) -> tuple[list[str], str | None]:
    """The estimators that can run, and a note on those left out: importance weights need
    the policy's probability of the logged actions, which the greedy policy of continuous
    actions (a point mass) does not have without --kernel-bandwidth."""
    if not (continuous and args.policy_mode == "greedy" and args.kernel_bandwidth is None):
        return names, None
    weighted = [n for n in names if n not in _DIRECT]
    if not weighted:
        return names, None
    why = (
        "the greedy policy of continuous actions is deterministic: its density at the logged "
        "actions is 0, so importance weights are undefined; give --kernel-bandwidth H to "
        "smooth it, or --policy-mode stochastic"
    )
    if args.estimators is not None:
        raise UsageError(f"--estimators {','.join(weighted)}: {why}")
    return [n for n in names if n in _DIRECT], f"{', '.join(weighted)} not run: {why}"


def _one_step_estimators(names: list[str], one_step: bool) -> tuple[list[str], str | None]:
    """On data whose every episode is one step, the per-decision estimators equal their
    trajectory-wise twins (PDIS is IS, WPDIS is WIS): each runs once, under the latter's
    name, with a note saying why. Elsewhere the estimators of one-step logs are refused."""
    from torchrl_offline.ope.importance import ONE_STEP_TWINS, one_step_estimators

    if not one_step:
        refused = [name for name in names if name in ONE_STEP_ONLY]
        if refused:
            raise UsageError(
                f"--estimators {','.join(refused)}: these need a log of one-step decisions "
                "(every episode one step, e.g. read with --horizon 1); this dataset has longer "
                "episodes (use dr/wdr, which model values with FQE)"
            )
        return names, None
    if not any(name in ONE_STEP_TWINS for name in names):
        return names, None
    return one_step_estimators(names)


def _one_step_kwargs(name: str, args: argparse.Namespace) -> dict[str, Any]:
    """Keyword arguments of an estimator of one-step logs, from the options."""
    if name == "pbm-ips":
        return {}
    kwargs: dict[str, Any] = {"reward_model": args.reward_model}
    if name != "dm":
        kwargs["folds"] = args.folds
    if name == "switch-dr":
        kwargs["tau"] = args.switch_tau
    if name == "dr-os":
        kwargs["lam"] = args.shrinkage_lambda
    return kwargs


def _class(name: str, one_step: bool = False) -> Any:
    import importlib

    module, attr = _ONE_STEP_DR if one_step and name == "dr" else ESTIMATORS[name]
    return getattr(importlib.import_module(module), attr)


def _fit_fqe(
    policy: Any, buffer: Any, args: argparse.Namespace, *, interval: bool = True
) -> tuple[Any, Any]:
    """Fit FQE (with a progress bar over its updates); return ``(fqe, result)``; without
    ``interval``, one critic (its refits would only serve FQE's own interval)."""
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
        policy_mode=args.policy_mode,
        # as the Q model of DR alone, FQE needs no interval: no refits
        interval=args.fqe_interval.replace("-", "_") if interval else "initial_states",
        n_refits=args.fqe_refits,
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


def add_model_options(parser: argparse.ArgumentParser) -> None:
    """The options of the model-based estimator (``--estimators model``)."""
    parser.add_argument(
        "--model-updates",
        type=int,
        default=5000,
        help="model-based OPE: most gradient updates of the dynamics ensemble (default 5000)",
    )
    parser.add_argument(
        "--model-hidden",
        type=int,
        nargs="+",
        default=[200, 200, 200, 200],
        metavar="N",
        help="model-based OPE: hidden sizes of each member (default MOPO's 4x200)",
    )
    parser.add_argument(
        "--model-termination",
        metavar="TASK",
        help="model-based OPE: a known termination function (pendulum, hopper, halfcheetah); "
        "default: a classifier learned from ('next', 'terminated')",
    )
    parser.add_argument(
        "--model-horizon",
        type=int,
        help="model-based OPE: rollout steps (default: the longest logged episode)",
    )


def _model_based(policy: Any, buffer: Any, args: argparse.Namespace) -> Any:
    """The model-based estimate (a dynamics ensemble fitted on the data)."""
    from torchrl_offline.models.errors import ModelError

    estimator = _class("model")(
        policy,
        gamma=args.gamma,
        horizon=args.model_horizon,
        termination_fn=args.model_termination,
        fit_kwargs={"max_updates": args.model_updates, "hidden_sizes": tuple(args.model_hidden)},
        n_bootstrap=args.bootstrap,
        confidence=args.confidence,
        seed=args.seed,
        policy_mode=args.policy_mode,
        kernel_bandwidth=args.kernel_bandwidth,
    )
    try:
        return estimator.estimate(buffer)
    except ModelError as err:
        raise UsageError(f"model: {err}") from None


def _estimate_all(
    policy: Any, buffer: Any, names: list[str], args: argparse.Namespace, one_step: bool = False
):
    """``name -> OPEResult`` of each estimator, or the ``OPEError`` it raised (all raising:
    the first error is raised). On a log of one-step decisions ``dr`` is DR with the
    cross-fitted reward regression, not with FQE."""
    from torchrl_offline.ope.result import OPEError

    common = {
        "gamma": args.gamma,
        "behavior_policy": "estimate" if args.behavior == "estimate" else None,
        "clip_weight": args.clip_weight,
        "n_bootstrap": args.bootstrap,
        "confidence": args.confidence,
        "seed": args.seed,
        "kernel_bandwidth": args.kernel_bandwidth,
        "epsilon": args.epsilon,
        "policy_mode": args.policy_mode,
    }
    results: dict[str, Any] = {}
    fqe = None
    needs_q = [n for n in names if n in _NEEDS_Q and not (one_step and n == "dr")]
    if "fqe" in names or needs_q:
        fqe, fqe_result = _fit_fqe(policy, buffer, args, interval="fqe" in names)
        if "fqe" in names:
            results["fqe"] = fqe_result
    for name in names:
        if name == "fqe":
            continue
        if name == "model":
            results[name] = _model_based(policy, buffer, args)
            continue
        cls = _class(name, one_step)
        try:
            if name in needs_q:
                estimator = cls(policy, fqe, **common)
            elif name in ONE_STEP_ONLY or (one_step and name == "dr"):
                estimator = cls(policy, **common, **_one_step_kwargs(name, args))
            else:
                estimator = cls(policy, **common)
        except TypeError as err:  # a policy without action probabilities
            raise UsageError(f"{name}: {err} (options --kernel-bandwidth / --epsilon)") from None
        try:
            results[name] = estimator.estimate(buffer)
        except OPEError as err:  # e.g. every weight 0: this estimate is undefined, not the rest
            results[name] = err
    if all(isinstance(r, OPEError) for r in results.values()):
        raise next(iter(results.values()))
    return {name: results[name] for name in names}


def _behaviour_value(buffer: Any, gamma: float) -> float:
    from torchrl_offline.ope.episodes import to_episodes

    return to_episodes(buffer, on_missing_initial="drop").returns(gamma).mean().item()


def _fmt(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.4g}" if math.isfinite(value) else str(value)
    return "-" if value is None else str(value)


def _table(results: dict[str, Any], behaviour: float, confidence: float) -> Any:
    """The estimates as a ``rich`` table."""
    from rich import box
    from rich.table import Table
    from rich.text import Text

    table = Table(box=box.SIMPLE_HEAD, pad_edge=False, show_edge=False)
    for column, justify in (
        ("estimator", "left"),
        ("value", "right"),
        (f"{confidence:.0%} CI", "center"),
        ("ESS", "right"),
        ("warnings", "right"),
    ):
        table.add_column(column, justify=justify, no_wrap=True)
    table.add_row(*map(Text, ("behaviour (logged)", _fmt(behaviour), "-", "-", "")))
    for name, r in results.items():
        if isinstance(r, Exception):
            table.add_row(*map(Text, (name, "failed", "-", "-", "")))
            continue
        ess = r.diagnostics.get("ess")
        cells = (
            f"{name} ({r.estimator})",
            _fmt(r.value),
            f"[{_fmt(r.ci_low)}, {_fmt(r.ci_high)}]",
            _fmt(float(ess)) if ess is not None else "-",
            str(len(r.warnings)) if r.warnings else "",
        )
        table.add_row(*map(Text, cells))
    return table


#: The estimators' advice in the command line's words: their messages name the Python
#: arguments (``num_steps``, ``kernel_bandwidth``...), some of which are options here.
_WORDING = Rewording(
    (r"increase num_steps or lower target_update_interval", "increase --fqe-steps"),
    (
        r"lower lr, raise target_update_interval, or (check [^)]*)",
        r"\1; in Python, FQE takes a lower lr or a larger target_update_interval",
    ),
    (r"\bkernel_bandwidth\b", "--kernel-bandwidth"),
    (r"\bepsilon=?\)", "--epsilon)"),
    (r"\bclip_weight\b", "--clip-weight"),
)


def cli_worded(message: str) -> str:
    """An estimator's message with the command line's option names.

    Examples:
        >>> from torchrl_offline.cli.ope import cli_worded
        >>> cli_worded("only 3 target refreshes ...; increase num_steps or lower target_update_interval")
        'only 3 target refreshes ...; increase --fqe-steps'
    """
    return _WORDING(message)


def _reworded(results: dict[str, Any]) -> dict[str, Any]:
    """``results`` with every note, warning and error message :func:`cli_worded`."""
    for r in results.values():
        if isinstance(r, Exception):
            if r.args and isinstance(r.args[0], str):
                r.args = (cli_worded(r.args[0]), *r.args[1:])
        else:
            r.warnings[:] = [cli_worded(m) for m in r.warnings]
            r.notes[:] = [cli_worded(m) for m in r.notes]
    return results


def _messages(results: dict[str, Any]) -> list[str]:
    """The results' notes and warnings, each message once with the estimators giving it."""
    grouped: dict[tuple[str, str], list[str]] = {}
    for name, r in results.items():
        if isinstance(r, Exception):
            grouped.setdefault(("ERROR", " ".join(str(r).split())), []).append(name)
            continue
        for kind, messages in (("note", r.notes), ("WARNING", r.warnings)):
            for message in messages:
                grouped.setdefault((kind, message), []).append(name)
    return [f"{', '.join(names)}: {kind}: {msg}" for (kind, msg), names in grouped.items()]


def _print(*renderables: Any) -> None:
    """Prints with ``rich``: styled on a terminal; plain, never wrapped, when piped."""
    import sys

    from rich.console import Console

    terminal = sys.stdout.isatty()
    console = Console(
        file=sys.stdout, width=None if terminal else 10_000, highlight=False, markup=False
    )
    for renderable in renderables:
        console.print(renderable, soft_wrap=isinstance(renderable, str), overflow="ignore")


def run(args: argparse.Namespace) -> int:
    """Estimate the checkpoint's value with each estimator and print a table."""
    from torchrl_offline.cli.checkpoints import load_trained
    from torchrl_offline.cli.envs import check_specs_match
    from torchrl_offline.trainers.algorithms import specs_from_dataset

    _estimator_names(args.estimators)  # unknown names fail before any loading
    if args.policy_mode == "stochastic" and (
        args.epsilon is not None or args.kernel_bandwidth is not None
    ):
        raise UsageError(
            "--epsilon and --kernel-bandwidth smooth the greedy policy; they do not apply to "
            "--policy-mode stochastic"
        )
    if not 0.0 <= args.gamma <= 1.0:
        raise UsageError(f"--gamma must be in [0, 1], got {args.gamma}")
    if not 0.0 < args.confidence < 1.0:
        raise UsageError(f"--confidence must be in (0, 1), got {args.confidence}")
    for option in ("bootstrap", "fqe_steps", "fqe_batch_size", "folds", "model_updates"):
        if getattr(args, option) < 1:
            raise UsageError(f"--{option.replace('_', '-')} must be positive")
    if args.fqe_interval == "refit" and args.fqe_refits < 2:
        raise UsageError("--fqe-refits must be at least 2 (or --fqe-interval initial-states)")
    algorithm, step, file = load_trained(args.checkpoint)
    require_policy_mode(algorithm.policy, args.policy_mode, algorithm.name)
    buffer = open_dataset(args.dataset, root=args.root, **log_keywords(args))
    check_specs_match(
        *specs_from_dataset(buffer),
        algorithm.observation_spec,
        algorithm.action_spec,
        ours=f"the dataset {args.dataset!r}",
        theirs=f"the checkpoint's {algorithm.name} policy",
    )
    continuous = algorithm.action_spec.dtype.is_floating_point
    from torchrl_offline.ope.episodes import is_one_step

    one_step = is_one_step(buffer)
    names = _estimator_names(args.estimators, one_step)
    names, twins = _one_step_estimators(names, one_step)
    names, left_out = _weighted_estimators(names, args, continuous)
    notes = [note for note in (twins, left_out) if note]
    from torchrl_offline.ope.result import OPEWarning

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", OPEWarning)  # shown in the table instead
        results = _reworded(_estimate_all(algorithm.policy, buffer, names, args, one_step))
    behaviour = _behaviour_value(buffer, args.gamma)
    if args.json:
        out = {
            "checkpoint": str(file),
            "algorithm": algorithm.name,
            "step": step,
            "gamma": args.gamma,
            "policy_mode": args.policy_mode,
            "behavior_value": behaviour,
            "estimates": {
                name: {"error": str(r)} if isinstance(r, Exception) else r.as_dict()
                for name, r in results.items()
            },
        }
        if notes:
            out["notes"] = notes
        print(json.dumps(out, indent=2, default=float))
        return 0
    _print(
        f"{algorithm.name} at step {step} ({file}); discounted value, gamma {args.gamma}",
        f"policy: {describe_policy_mode(algorithm.policy, args.policy_mode)}",
        _table(results, behaviour, args.confidence),
        *_messages(results),
        *(f"note: {note}" for note in notes),
    )
    return 0
