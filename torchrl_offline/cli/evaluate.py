"""``torchrl-offline evaluate``: run a checkpoint's policy in an environment."""

from __future__ import annotations

import argparse
import json
from typing import Any

from torchrl_offline.cli.common import (
    CLIError,
    UsageError,
    add_policy_mode_option,
    describe_policy_mode,
    open_dataset,
    progress_bar,
    require_policy_mode,
)
from torchrl_offline.cli.log_options import add_log_options, log_keywords

__all__ = ["add_parser", "run"]


def add_parser(subparsers: Any) -> argparse.ArgumentParser:
    parser = subparsers.add_parser(
        "evaluate",
        help="run a checkpoint's policy in an environment",
        description="Run the policy of a training checkpoint (its greedy, deterministic "
        "actions unless --policy-mode stochastic) for a number of episodes and print the mean "
        "and std of the returns, and the normalized score when reference returns are known "
        "(from --dataset or --ref-min/--ref-max). Without --env and --dataset, the env and "
        "reference returns the run recorded in its run.json are used.",
    )
    parser.add_argument("checkpoint", help="checkpoint file, or a run directory (newest one)")
    parser.add_argument(
        "--env",
        help="gymnasium id (default: the env recorded with --dataset, else the one the run "
        "evaluated in, from its run.json)",
    )
    parser.add_argument(
        "--dataset",
        metavar="ID_OR_PATH",
        help="the training dataset: its env id and reference returns are used",
    )
    parser.add_argument("--episodes", type=int, default=10, help="evaluation episodes")
    parser.add_argument("--seed", type=int, default=0, help="seed of the env")
    parser.add_argument("--max-steps", type=int, default=1000, help="step cap per episode")
    parser.add_argument("--ref-min", type=float, help="reference return of a random policy")
    parser.add_argument("--ref-max", type=float, help="reference return of an expert policy")
    add_policy_mode_option(parser)
    parser.add_argument("--json", action="store_true", help="print JSON instead of text")
    parser.add_argument(
        "--root", help="Minari datasets root (default: $MINARI_DATASETS_PATH or ~/.minari/datasets)"
    )
    add_log_options(parser)
    parser.set_defaults(run=run)
    return parser


def _recorded_run(checkpoint: str) -> dict[str, Any] | None:
    """The ``info`` of the run the checkpoint belongs to (its ``run.json``), or ``None``
    for a checkpoint outside a run directory of ours."""
    from torchrl_offline.cli.checkpoints import resolve_checkpoint
    from torchrl_offline.trainers.run_dir import read_marker

    file = resolve_checkpoint(checkpoint)
    run_dir = file.parent.parent if file.parent.name == "checkpoints" else file.parent
    marker = read_marker(run_dir)
    if marker is None:
        return None
    info = marker.get("info")
    return info if isinstance(info, dict) else {}


def _env_and_reference(args: argparse.Namespace) -> tuple[str, tuple[float, float] | None]:
    from torchrl_offline.cli.envs import dataset_env_id

    env_id, ref = args.env, None
    log_options = log_keywords(args)
    if args.dataset is None and any(log_options.values()):
        raise UsageError(
            "--columns, --ignore, --env-id, --horizon and --num-positions describe the log "
            "given as --dataset; name the env to evaluate in with --env"
        )
    if args.dataset is not None:
        buffer = open_dataset(args.dataset, root=args.root, **log_options)
        meta = buffer.metadata or {}
        if meta.get("ref_min_score") is not None and meta.get("ref_max_score") is not None:
            ref = (float(meta["ref_min_score"]), float(meta["ref_max_score"]))
        if env_id is None:
            env_id = dataset_env_id(buffer)
            if env_id is None:
                raise CLIError(f"the dataset {args.dataset!r} records no env id; pass --env")
    info = None
    if args.dataset is None:  # what the run itself recorded, for its own env only
        info = _recorded_run(args.checkpoint)
        recorded = (info or {}).get("eval_env")
        if env_id is None and isinstance(recorded, str):
            env_id = recorded
        reference = (info or {}).get("reference")
        if env_id == recorded and isinstance(reference, list) and len(reference) == 2:
            ref = (float(reference[0]), float(reference[1]))
    if env_id is None:
        why = (
            "the checkpoint is not in a run directory with a run.json"
            if info is None
            else "its run recorded none (it was trained without evaluation)"
        )
        raise UsageError(f"name the environment with --env (or --dataset to use its env): {why}")
    if (args.ref_min is None) != (args.ref_max is None):
        raise UsageError("give both --ref-min and --ref-max")
    if args.ref_min is not None:
        ref = (args.ref_min, args.ref_max)
    return env_id, ref


def run(args: argparse.Namespace) -> int:
    """Evaluate and print the returns."""
    from torchrl_offline.cli.checkpoints import load_trained
    from torchrl_offline.cli.envs import check_env_matches, make_env
    from torchrl_offline.trainers.hooks import evaluate_policy

    if args.episodes < 1 or args.max_steps < 1:
        raise UsageError("--episodes and --max-steps must be positive")
    env_id, reference = _env_and_reference(args)
    algorithm, step, file = load_trained(args.checkpoint)
    require_policy_mode(algorithm.policy, args.policy_mode, algorithm.name)
    env = make_env(env_id)
    try:
        check_env_matches(algorithm.observation_spec, algorithm.action_spec, env, env_id)
        with progress_bar(None, f"evaluate {algorithm.name}", enabled=args.progress) as bar:

            def count_step(*_: Any) -> None:  # a forward hook must return None
                bar.update(1)

            handle = algorithm.policy.register_forward_hook(count_step)
            try:
                result = evaluate_policy(
                    env,
                    algorithm.policy,
                    num_episodes=args.episodes,
                    seed=args.seed,
                    max_steps=args.max_steps,
                    reference=reference,
                    policy_mode=args.policy_mode,
                )
            finally:
                handle.remove()
    finally:
        env.close()
    summary = {
        "checkpoint": str(file),
        "algorithm": algorithm.name,
        "step": step,
        "env": env_id,
        "episodes": args.episodes,
        "policy_mode": args.policy_mode,
        **result.as_dict(),
        "returns": result.returns,
    }
    if args.json:
        print(json.dumps(summary, indent=2))
        return 0
    print(f"{algorithm.name} at step {step} ({file})")
    print(f"policy: {describe_policy_mode(algorithm.policy, args.policy_mode)}")
    print(f"{env_id}, {args.episodes} episodes: return {result.mean:.2f} +- {result.std:.2f}")
    if result.normalized_score is not None:
        print(f"normalized score {result.normalized_score:.1f}")
    return 0
