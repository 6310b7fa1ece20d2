"""``torchrl-offline train``: train an offline RL algorithm on a dataset."""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

from torchrl_offline import registry
from torchrl_offline.cli.common import (
    CLIError,
    HelpFormatter,
    RunWarnings,
    UsageError,
    add_resume_option,
    add_run_options,
    check_logger_installed,
    check_run_flags,
    finish_run,
    nothing_to_do,
    open_dataset,
    parse_scalar,
    print_run_files,
    run_keywords,
)
from torchrl_offline.cli.log_options import add_log_options, log_keywords

__all__ = ["add_parser", "parse_overrides", "run"]

_EPILOG = """\
examples:
  torchrl-offline train --algo iql --dataset pendulum/mixed-v0 --steps 20000 --out runs/iql \\
      --eval-every 5000                         # evaluates in the dataset's env, Pendulum-v1
  torchrl-offline train --algo discrete_iql --dataset log.csv --columns observation=x,v \\
      --columns action=force --ignore note --env-id CartPole-v1 --steps 20000 --out runs/cp
  torchrl-offline train --algo iql --dataset pendulum/mixed-v0 --steps 40000 --out runs/iql \\
      --resume                                  # continue the same run up to 40000 steps
  torchrl-offline train --algo cql --dataset data.parquet --steps 1000 --out runs/cql \\
      --set hidden_sizes=(64,64) --set min_q_weight=5.0
  torchrl-offline train --algo cql --preset small --dataset data.csv --steps 20000 \\
      --out runs/cql-small                      # 2x64 networks: several times faster on a CPU
  torchrl-offline train --algo iql --list-hyperparameters
  torchrl-offline train --algo iql --preset antmaze --dataset DATA --steps 1000000 --out runs/am
  torchrun --nproc-per-node 2 -m torchrl_offline train --algo iql --dataset pendulum/mixed-v0 \\
      --steps 20000 --out runs/iql-ddp          # data-parallel (see docs/distributed.md)
"""


def add_parser(subparsers: Any) -> argparse.ArgumentParser:
    parser = subparsers.add_parser(
        "train",
        help="train an offline RL algorithm on a dataset",
        description="Train an offline RL algorithm on a dataset inside TorchRL's Trainer, with "
        "checkpoints, logs, a progress bar and optional periodic evaluation in an environment. "
        "Ctrl-C writes a checkpoint; --resume continues from it.",
        epilog=_EPILOG,
        formatter_class=HelpFormatter,
    )
    parser.add_argument(
        "--algo",
        required=True,
        metavar="NAME",
        help=f"algorithm: {', '.join(registry.BUILTIN_ALGORITHMS)}, or one another package "
        "registers",
    )
    parser.add_argument("--dataset", metavar="ID_OR_PATH", help="Minari id, folder or log file")
    parser.add_argument("--steps", type=int, help="total gradient steps")
    parser.add_argument("--out", metavar="DIR", help="run directory (checkpoints/, logs/)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the run")
    add_resume_option(parser)
    parser.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="hyperparameter override, a Python literal: lr=1e-3, hidden_sizes=(64,64), "
        "flag=true, mode=sum (repeatable); see --list-hyperparameters",
    )
    parser.add_argument(
        "--preset",
        metavar="NAME",
        help="a published setting of the algorithm (see --list-hyperparameters), or "
        "'small': 2x64 networks, several times faster on a CPU; --set values apply on top",
    )
    parser.add_argument(
        "--list-hyperparameters",
        action="store_true",
        help="print the algorithm's hyperparameters and defaults, then exit",
    )
    add_run_options(
        parser,
        auto_env="the env recorded with the dataset",
        default_env="the env recorded with the dataset, if any",
    )
    add_log_options(parser)
    dist = parser.add_argument_group("data-parallel training (launch with torchrun)")
    dist.add_argument(
        "--distributed",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="train data-parallel over torch.distributed; on by default under torchrun "
        "(--batch-size is then per process)",
    )
    dist.add_argument(
        "--dist-backend",
        choices=("gloo", "nccl"),
        default=None,
        help="process-group backend (default: nccl with CUDA, else gloo)",
    )
    dist.add_argument(
        "--dist-timeout",
        type=float,
        default=600.0,
        metavar="SECONDS",
        help="how long a rank waits for the others (start-up, each collective, rank 0's "
        "evaluations) before failing",
    )
    parser.set_defaults(run=run)
    return parser


def parse_overrides(items: list[str]) -> dict[str, Any]:
    """``["expectile=0.8", "hidden_sizes=(64, 64)"]`` -> ``{"expectile": 0.8, ...}``.

    Values are read by :func:`~torchrl_offline.cli.common.parse_scalar`: Python literals
    (numbers, tuples, ``True``; ``true``/``false``/``none`` too); anything else is kept
    as a string.

    Raises:
        CLIError: an item that is not ``key=value``.

    Examples:
        >>> from torchrl_offline.cli.train import parse_overrides
        >>> parse_overrides(["expectile=0.8", "hidden_sizes=(64,64)", "deterministic=true"])
        {'expectile': 0.8, 'hidden_sizes': (64, 64), 'deterministic': True}
    """
    out: dict[str, Any] = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise UsageError(f"--set expects KEY=VALUE, got {item!r}")
        out[key.strip()] = parse_scalar(value)
    return out


def _check_algorithm(name: str) -> None:
    from torchrl_offline.trainers.algorithms import algorithm_names

    if name not in algorithm_names():
        raise UsageError(f"unknown algorithm {name!r}; valid names: {', '.join(algorithm_names())}")


def _check_preset(name: str, preset: str | None) -> None:
    if preset is None:
        return
    from torchrl_offline.trainers.algorithms import declaration

    presets = declaration(name).presets
    if preset not in presets:
        raise UsageError(
            f"--preset: {name} has no preset {preset!r}; valid presets: "
            f"{', '.join(sorted(presets)) or '(none)'}"
        )


def _list_hyperparameters(name: str) -> int:
    from torchrl_offline.trainers.algorithms import algorithm_defaults, declaration

    for key, value in algorithm_defaults(name).items():
        print(f"{key:<24}{value!r}")
    decl = declaration(name)
    width = max([15, *(len(p) + 1 for p in decl.presets)])  # dataset names are long
    for preset, values in sorted(decl.presets.items()):
        settings = ", ".join(f"{k}={v!r}" for k, v in values.items())
        chain = decl.preset_chain(preset)
        if preset == decl.default_preset:
            settings += " (the default)"
        elif len(chain) > 1:
            settings += f" (on top of {', '.join(chain[:-1])})"
        print(f"--preset {preset:<{width}}{settings}")
    return 0


def _eval_env(args: argparse.Namespace, buffer: Any) -> tuple[Any, str | None]:
    """The evaluation env (checked against the dataset's specs) and its id.

    Without ``--eval-env``, the env recorded with the dataset, if any; one that cannot be
    made or does not fit the data is then skipped with a warning (named with
    ``--eval-env``, it is an error).
    """
    if args.eval_env == "none":
        return None, None
    from torchrl_offline.cli.envs import check_env_matches, dataset_env_id, make_env
    from torchrl_offline.trainers.algorithms import specs_from_dataset

    env_id = args.eval_env
    if env_id in (None, "auto"):
        env_id = dataset_env_id(buffer)
        if env_id is None and args.eval_env == "auto":
            raise CLIError(
                "--eval-env auto: the dataset records no env id; name the env, or record it "
                "with --env-id"
            )
        if env_id is None:
            return None, None
    env = None
    try:
        env = make_env(env_id)
        check_env_matches(*specs_from_dataset(buffer), env, env_id)
    except CLIError as err:
        if env is not None:
            env.close()
        if args.eval_env is not None:
            raise
        print(f"warning: no evaluation in the dataset's env: {err}", file=sys.stderr)
        return None, None
    return env, env_id


def run(args: argparse.Namespace) -> int:
    """Train, then print where the checkpoint and logs are and the last evaluation."""
    _check_algorithm(args.algo)
    if args.list_hyperparameters:
        return _list_hyperparameters(args.algo)
    missing = [f"--{n}" for n in ("dataset", "steps", "out") if getattr(args, n) is None]
    if missing:
        raise UsageError(f"the following arguments are required: {', '.join(missing)}")
    check_run_flags(args)
    if getattr(args, "dist_timeout", 600.0) <= 0:
        raise UsageError("--dist-timeout must be positive")
    _check_preset(args.algo, args.preset)
    overrides = parse_overrides(args.overrides)
    check_logger_installed(args.logger)
    if nothing_to_do(args):
        return 0
    from torchrl_offline.trainers.algorithms import HyperparameterError
    from torchrl_offline.trainers.offline import train
    from torchrl_offline.trainers.speed_hint import LongRunHint

    context = _distributed_context(args)
    env = None
    try:
        # An unknown --set key is refused by build_algorithm (its message lists the valid
        # keys of the resolved algorithm, e.g. discrete_iql for iql on a discrete dataset).
        if context is None:
            buffer = open_dataset(
                args.dataset, root=args.root, batch_size=args.batch_size, **log_keywords(args)
            )
            env, env_id = _eval_env(args, buffer)
        else:  # every rank opens the (memory-mapped) dataset; rank 0 alone evaluates
            buffer = context.call(
                "opening the dataset",
                open_dataset,
                args.dataset,
                root=args.root,
                batch_size=args.batch_size,
                notes=context.is_main,
                **log_keywords(args),
            )
            env, env_id = _main_rank_eval_env(context, args, buffer)
        result = train(
            args.algo,
            buffer,
            total_steps=args.steps,
            seed=args.seed,
            out_dir=args.out,
            resume=args.resume,
            overwrite=args.overwrite,
            batch_size=args.batch_size,
            preset=args.preset,
            overrides=overrides,
            eval_env=env,
            hooks=[
                RunWarnings(args, evaluating=env is not None),
                LongRunHint(advice="--preset small"),
            ],
            distributed=False if context is None else context,
            **run_keywords(args),
        )
    except HyperparameterError as err:  # the --set/--preset values alone are wrong
        raise UsageError(f"{'--preset/' if args.preset else ''}--set: {err}") from None
    finally:
        if env is not None:
            env.close()
        if context is not None:
            context.close()
    if context is not None and not context.is_main:
        return 130 if result.stop_reason == "interrupted" else 0  # rank 0 reports
    print(f"{result.algorithm.name}: {result.step} gradient steps")
    print_run_files(result)
    if result.evaluations:
        last = result.evaluations[-1]
        score = last.get("normalized_score")
        norm = f", normalized score {score:.1f}" if score is not None else ""
        print(
            f"evaluation in {env_id} at step {last['step']}: return "
            f"{last['return_mean']:.2f} +- {last['return_std']:.2f}{norm}"
        )
    _write_summary(args.out, result)
    return finish_run(result)


def _distributed_context(args: argparse.Namespace) -> Any:
    """The data-parallel context (``--distributed``, or auto under torchrun), or ``None``."""
    from torchrl_offline.trainers.distributed import init_distributed, torchrun_environment

    wanted = getattr(args, "distributed", None)
    if wanted is False or (wanted is None and torchrun_environment() is None):
        return None
    return init_distributed(backend=args.dist_backend, timeout=args.dist_timeout)


def _main_rank_eval_env(context: Any, args: argparse.Namespace, buffer: Any) -> tuple[Any, Any]:
    """The evaluation env on rank 0 (``(None, None)`` elsewhere); a failure to make it
    stops every rank."""
    env, env_id, error = None, None, None
    if context.is_main:
        try:
            env, env_id = _eval_env(args, buffer)
        except Exception as err:
            error = err
    context.check("making the evaluation env", error)
    return env, env_id


def _write_summary(out: str, result: Any) -> None:
    """``DIR/summary.json``: the algorithm, steps done, hyperparameters and evaluations."""
    from pathlib import Path

    summary = {
        "algorithm": result.algorithm.name,
        "step": result.step,
        "stop_reason": result.stop_reason,
        "checkpoint": None if result.checkpoint is None else str(result.checkpoint),
        "hyperparameters": result.algorithm.hyperparameters,
        "evaluations": result.evaluations,
    }
    path = Path(out)
    path.mkdir(parents=True, exist_ok=True)
    (path / "summary.json").write_text(json.dumps(summary, indent=2, default=str) + "\n")
