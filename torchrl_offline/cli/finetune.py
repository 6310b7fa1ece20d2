"""``torchrl-offline finetune``: fine-tune a trained checkpoint online in an environment."""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from torchrl_offline.cli.common import (
    CLIError,
    RunWarnings,
    UsageError,
    add_resume_option,
    add_run_options,
    check_logger_installed,
    check_run_flags,
    finish_run,
    nothing_to_do,
    open_dataset,
    print_run_files,
    run_keywords,
)
from torchrl_offline.cli.log_options import add_log_options, log_keywords

__all__ = ["add_parser", "run"]

_EPILOG = """\
examples:
  torchrl-offline finetune runs/iql --dataset pendulum/mixed-v0 --steps 20000 \\
      --out runs/iql-online --eval-env auto --eval-every 5000
  torchrl-offline finetune runs/iql --dataset pendulum/mixed-v0 --steps 20000 \\
      --out runs/iql-online --offline-fraction 0.75 --anneal-steps 10000
  torchrl-offline finetune runs/iql --dataset pendulum/mixed-v0 --steps 40000 \\
      --out runs/iql-online --resume         # continue the same run up to 40000 steps
"""


def add_parser(subparsers: Any) -> argparse.ArgumentParser:
    parser = subparsers.add_parser(
        "finetune",
        help="fine-tune a trained checkpoint online in an environment",
        description="Fine-tune the algorithm of a `train` checkpoint online: a TorchRL "
        "collector runs its policy in the environment (with exploration noise) and every "
        "update trains the same loss on a batch mixing offline data and the new online "
        "data, at a ratio that can be annealed to all-online. Checkpoints hold the online "
        "replay buffer, the collector's and the env's state: Ctrl-C writes one and "
        "--resume continues the same run.",
        epilog=_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        "checkpoint", help="checkpoint of `train`, or its run directory (newest checkpoint)"
    )
    parser.add_argument(
        "--dataset", metavar="ID_OR_PATH", required=True, help="the offline dataset to mix in"
    )
    parser.add_argument(
        "--env", help="gymnasium id to fine-tune in (default: the env recorded with --dataset)"
    )
    parser.add_argument("--steps", type=int, required=True, help="total gradient steps")
    parser.add_argument("--out", metavar="DIR", required=True, help="run directory of this run")
    parser.add_argument("--seed", type=int, default=0, help="seed of the run")
    add_resume_option(parser)
    parser.add_argument(
        "--algo", metavar="NAME", help="refuse a checkpoint of another algorithm than NAME"
    )
    mixing = parser.add_argument_group("online data")
    mixing.add_argument(
        "--offline-fraction",
        type=float,
        default=0.5,
        metavar="F",
        help="share of each batch drawn from the offline data, in (0, 1)",
    )
    mixing.add_argument(
        "--anneal-steps",
        type=int,
        metavar="N",
        help="decay the offline share linearly to 0 over N updates (default: constant)",
    )
    mixing.add_argument(
        "--online-capacity",
        type=int,
        default=1_000_000,
        metavar="N",
        help="transitions kept in the online buffer",
    )
    mixing.add_argument(
        "--frames-per-batch", type=int, default=100, metavar="N", help="env steps per collection"
    )
    mixing.add_argument(
        "--utd-ratio", type=float, default=1.0, metavar="R", help="updates per env step"
    )
    mixing.add_argument(
        "--exploration-noise",
        type=float,
        default=0.1,
        metavar="X",
        help="Gaussian noise (share of the action half-range) of deterministic actors, "
        "epsilon of discrete greedy ones",
    )
    add_run_options(parser, auto_env="the fine-tuning env")
    add_log_options(parser)
    parser.set_defaults(run=run)
    return parser


def _check_options(args: argparse.Namespace) -> None:
    check_run_flags(args, counts=("online_capacity", "frames_per_batch"))
    check_logger_installed(args.logger)
    if not 0.0 < args.offline_fraction < 1.0:
        raise UsageError(f"--offline-fraction must be in (0, 1), got {args.offline_fraction}")
    if args.anneal_steps is not None and args.anneal_steps < 1:
        raise UsageError("--anneal-steps must be positive")
    if args.utd_ratio <= 0:
        raise UsageError("--utd-ratio must be positive")
    if args.exploration_noise < 0:
        raise UsageError("--exploration-noise must be >= 0")


def _check_out(out: Path, checkpoint: Path) -> None:
    """Refuse an --out that holds the offline checkpoint being fine-tuned."""
    folder = checkpoint.resolve().parent
    if folder in (out.resolve(), (out / "checkpoints").resolve()):
        raise CLIError(
            f"--out {str(out)!r} holds the checkpoint being fine-tuned; give the online run "
            "its own directory"
        )


def _env_id(args: argparse.Namespace, buffer: Any) -> str:
    from torchrl_offline.cli.envs import dataset_env_id

    if args.env is not None:
        return args.env
    env_id = dataset_env_id(buffer)
    if env_id is None:
        raise CLIError(f"the dataset {args.dataset!r} records no env id; pass --env")
    return env_id


def run(args: argparse.Namespace) -> int:
    """Fine-tune, then print the checkpoint, logs, online returns and evaluations."""
    from torchrl_offline.cli.checkpoints import load_trained
    from torchrl_offline.cli.envs import check_env_matches, check_specs_match, make_env
    from torchrl_offline.trainers.algorithms import specs_from_dataset
    from torchrl_offline.trainers.finetune import finetune

    _check_options(args)
    if nothing_to_do(args):
        return 0
    algorithm, step, file = load_trained(args.checkpoint)
    if args.algo is not None and args.algo not in (
        algorithm.name,
        algorithm.name.removeprefix("discrete_"),
    ):
        raise CLIError(f"the checkpoint {str(file)!r} is a {algorithm.name} run, not {args.algo}")
    out = Path(args.out)
    _check_out(out, file)
    buffer = open_dataset(
        args.dataset, root=args.root, batch_size=args.batch_size, **log_keywords(args)
    )
    check_specs_match(
        algorithm.observation_spec,
        algorithm.action_spec,
        *specs_from_dataset(buffer),
        ours="the checkpoint",
        theirs=f"the dataset {args.dataset!r}",
    )
    env_id = _env_id(args, buffer)
    eval_id = {"auto": env_id, "none": None}.get(args.eval_env, args.eval_env)
    envs = []
    run_state = _RunState()
    try:
        for name in (env_id, eval_id):
            if name is not None:
                envs.append(make_env(name))
                check_env_matches(algorithm.observation_spec, algorithm.action_spec, envs[-1], name)
        result = finetune(
            algorithm,
            buffer,
            envs[0],
            total_steps=args.steps,
            seed=args.seed,
            out_dir=out,
            resume=args.resume,
            overwrite=args.overwrite,
            batch_size=args.batch_size,
            offline_fraction=args.offline_fraction,
            anneal_steps=args.anneal_steps,
            online_capacity=args.online_capacity,
            frames_per_batch=args.frames_per_batch,
            utd_ratio=args.utd_ratio,
            exploration_noise=args.exploration_noise,
            eval_env=envs[1] if eval_id is not None else None,
            hooks=[run_state, RunWarnings(args, evaluating=eval_id is not None)],
            **run_keywords(args),
        )
    finally:
        for env in envs:
            env.close()
    online = run_state.online_returns()
    print(f"{result.algorithm.name}: {result.step} fine-tuning steps in {env_id} from {file}")
    if online:
        last = online[-10:]
        print(
            f"online episodes: {len(online)}, mean return of the last {len(last)}: "
            f"{sum(last) / len(last):.2f}"
        )
    print_run_files(result)
    for label, entry in _first_and_last(result.evaluations):
        score = entry.get("normalized_score")
        norm = f", normalized score {score:.1f}" if score is not None else ""
        print(
            f"evaluation in {eval_id} {label} (step {entry['step']}): return "
            f"{entry['return_mean']:.2f} +- {entry['return_std']:.2f}{norm}"
        )
    _write_summary(out, result, file, step, online)
    return finish_run(result)


class _RunState:
    """A hook keeping a handle on the trainer, to read the online episode returns after."""

    def __init__(self) -> None:
        self.trainer: Any = None

    def register(self, trainer: Any) -> None:
        self.trainer = trainer

    def online_returns(self) -> list[float]:
        source = getattr(self.trainer, "collector", None)
        return [float(r) for r in getattr(source, "episode_returns", [])]


def _first_and_last(evaluations: list[dict[str, Any]]) -> list[tuple[str, dict[str, Any]]]:
    if not evaluations:
        return []
    if len(evaluations) == 1:
        return [("", evaluations[0])]
    return [("before", evaluations[0]), ("after", evaluations[-1])]


def _write_summary(
    out: Path, result: Any, checkpoint: Path, offline_step: int, online: list[float]
) -> None:
    """``DIR/summary.json``: the starting checkpoint, steps, online returns, evaluations."""
    summary = {
        "algorithm": result.algorithm.name,
        "from_checkpoint": str(checkpoint),
        "offline_step": offline_step,
        "step": result.step,
        "stop_reason": result.stop_reason,
        "checkpoint": None if result.checkpoint is None else str(result.checkpoint),
        "online_episode_returns": online,
        "evaluations": result.evaluations,
    }
    out.mkdir(parents=True, exist_ok=True)
    (out / "summary.json").write_text(json.dumps(summary, indent=2, default=str) + "\n")
