"""Helpers shared by the subcommands: the CLI error type, dataset lookup, progress bars."""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path
from typing import Any

__all__ = [
    "LOG_SUFFIXES",
    "POLICY_MODE_HELP",
    "CLIError",
    "UsageError",
    "add_policy_mode_option",
    "add_resume_option",
    "add_run_options",
    "check_run_flags",
    "finish_run",
    "local_datasets",
    "nothing_to_do",
    "open_dataset",
    "parse_scalar",
    "print_run_files",
    "progress_bar",
    "require_policy_mode",
    "resumed_step",
    "run_keywords",
]

#: File suffixes read as users' logs (through ``from_logged``) rather than Minari datasets.
LOG_SUFFIXES = (".parquet", ".csv", ".h5", ".hdf5")


class CLIError(Exception):
    """A user error: :func:`torchrl_offline.cli.main` prints its message on one line, exits 1."""


class UsageError(CLIError):
    """A command line that is wrong by itself (an option missing, malformed or out of range,
    an unknown name from a fixed list): printed like :class:`CLIError`, exit status 2 as
    argparse's own usage errors. Errors found in the data, files or environments named
    by a valid command line are :class:`CLIError` (or the library's ``ValueError``
    subclasses) and exit with 1."""


def local_datasets(root: str | os.PathLike | None = None, *, limit: int = 50) -> list[str]:
    """Ids of the Minari datasets stored under a Minari root, sorted (at most ``limit``).

    A dataset is a folder holding ``data/metadata.json``; its id is its path relative to the
    root (``"pendulum/mixed-v0"``).
    """
    from torchrl_offline.data.minari_writer import minari_root

    base = minari_root(root)
    if not base.is_dir():
        return []
    found = []
    for meta in base.glob("**/data/metadata.json"):
        folder = meta.parent.parent
        rel = folder.relative_to(base).as_posix()
        if not any(part.startswith(".") for part in rel.split("/")):  # skip temporary builds
            found.append(rel)
    return sorted(found)[:limit]


def _is_log_file(path: Path) -> bool:
    return path.is_file() and path.suffix.lower() in LOG_SUFFIXES and path.name != "main_data.hdf5"


def open_dataset(
    dataset: str,
    *,
    root: str | os.PathLike | None = None,
    batch_size: int | None = 256,
) -> Any:
    """Open a dataset named on the command line as an offline replay buffer.

    ``dataset`` is a Minari dataset id (looked up under ``root``), the path of a Minari
    dataset folder, or the path of a logged-data file (Parquet, CSV, D4RL-style HDF5),
    read with :func:`~torchrl_offline.data.from_logged`.

    Raises:
        CLIError: the dataset does not exist; the message lists the local dataset ids.
    """
    from torchrl_offline.data import DatasetNotFoundError, from_logged, load_minari
    from torchrl_offline.data.minari_writer import minari_root

    path = Path(dataset).expanduser()
    if _is_log_file(path):
        return from_logged(path, batch_size=batch_size)
    if path.is_file() and path.name == "main_data.hdf5":
        path = path.parent.parent
        dataset = str(path)
    try:
        return load_minari(dataset, root=root, batch_size=batch_size)
    except DatasetNotFoundError:
        ids = local_datasets(root)
        listing = ", ".join(ids) if ids else "(none)"
        raise CLIError(
            f"unknown dataset {dataset!r}: not a local Minari dataset id, dataset folder or "
            f"log file ({', '.join(LOG_SUFFIXES)}); datasets under {minari_root(root)}: "
            f"{listing}"
        ) from None


def add_run_options(parser: argparse.ArgumentParser, *, auto_env: str) -> None:
    """Adds the options ``train`` and ``finetune`` share: batch, evaluation, checkpoints, logs.

    Args:
        parser: the subcommand's parser.
        auto_env: what ``--eval-env auto`` means for this subcommand, for ``--help``.
    """
    parser.add_argument("--batch-size", type=int, default=256, help="transitions per update")
    parser.add_argument(
        "--overwrite",
        action="store_true",
        help="replace the run already in --out (only a run directory of torchrl-offline); "
        "without it or --resume, an --out holding a run is refused",
    )
    parser.add_argument(
        "--eval-env", metavar="ENV", help=f"gymnasium id to evaluate in, or 'auto' for {auto_env}"
    )
    parser.add_argument("--eval-every", type=int, default=5000, metavar="N", help="steps")
    parser.add_argument("--eval-episodes", type=int, default=10, metavar="N")
    parser.add_argument(
        "--eval-max-steps", type=int, default=1000, metavar="N", help="step cap per episode"
    )
    parser.add_argument("--checkpoint-every", type=int, default=5000, metavar="N", help="steps")
    parser.add_argument(
        "--keep-checkpoints", type=int, default=2, metavar="N", help="newest checkpoints kept"
    )
    parser.add_argument("--log-every", type=int, default=1000, metavar="N", help="steps")
    parser.add_argument(
        "--logger",
        default="csv",
        choices=("csv", "tensorboard", "wandb", "mlflow", "none"),
        help="TorchRL logger (default csv, in DIR/logs)",
    )
    parser.add_argument(
        "--root", help="Minari datasets root (default: $MINARI_DATASETS_PATH or ~/.minari/datasets)"
    )


#: What ``--policy-mode`` means, for ``--help`` and the outputs.
POLICY_MODE_HELP = {
    "greedy": "the actor's deterministic action, the mode or mean of its distribution, as deployed",
    "stochastic": "actions sampled from the actor's distribution",
}


def add_policy_mode_option(parser: argparse.ArgumentParser) -> None:
    """Adds ``--policy-mode greedy|stochastic`` (default greedy): which policy of a
    checkpoint ``evaluate`` runs and ``ope`` scores, the same default for both."""
    parser.add_argument(
        "--policy-mode",
        choices=tuple(POLICY_MODE_HELP),
        default="greedy",
        help="which policy to score: greedy (the actor's deterministic action, the one you "
        "deploy; default) or stochastic (actions sampled from its distribution)",
    )


def require_policy_mode(policy: Any, mode: str, algorithm: str) -> None:
    """Refuses ``--policy-mode stochastic`` for a checkpoint whose policy has no action
    distribution (a deterministic actor or a Q-value actor): a :class:`UsageError`."""
    if mode == "stochastic" and not hasattr(policy, "get_dist"):
        raise UsageError(
            f"--policy-mode stochastic: the checkpoint's {algorithm} policy is deterministic "
            "(no action distribution to sample); use --policy-mode greedy"
        )


def add_resume_option(parser: argparse.ArgumentParser) -> None:
    """Adds ``--resume [CHECKPOINT]``: ``True`` alone, the checkpoint's path when named."""
    parser.add_argument(
        "--resume",
        nargs="?",
        const=True,
        default=False,
        metavar="CHECKPOINT",
        help="continue from the newest checkpoint in --out, or from CHECKPOINT (one of "
        "--out's, e.g. the previous good one when the newest is damaged; the newer ones are "
        "renamed *.set-aside)",
    )


def resumed_step(args: argparse.Namespace) -> int | None:
    """The step of the checkpoint that ``--resume`` continues from, read from its name
    (``None`` without ``--resume`` or checkpoint)."""
    from torchrl_offline.trainers.checkpoint import checkpoint_step, latest_checkpoint

    if not args.resume:
        return None
    if args.resume is True:
        path = latest_checkpoint(Path(args.out) / "checkpoints")
    else:
        path = Path(args.resume)
    try:
        return None if path is None else checkpoint_step(path)
    except ValueError:
        return None  # not a checkpoint's name: the run itself says what is wrong


def nothing_to_do(args: argparse.Namespace) -> bool:
    """Says so on stderr and returns ``True`` when ``--resume`` continues a run that is
    already at ``--steps`` or beyond."""
    done = resumed_step(args)
    if done is None or done < args.steps:
        return False
    print(
        f"nothing to do: the run in {args.out} is at step {done} (--steps {args.steps}); "
        "give a larger --steps to continue it",
        file=sys.stderr,
    )
    return True


#: The counts of a training run that must be at least 1 (``--steps``, ``--batch-size`` and
#: those of :func:`add_run_options`).
_RUN_COUNTS = (
    "steps",
    "batch_size",
    "eval_every",
    "eval_episodes",
    "eval_max_steps",
    "checkpoint_every",
    "keep_checkpoints",
    "log_every",
)


def run_keywords(args: argparse.Namespace) -> dict[str, Any]:
    """The keyword arguments of ``train``/``finetune`` that :func:`add_run_options` sets
    (evaluation, checkpoint and logging intervals, logger, progress bar).

    Examples:
        >>> import argparse
        >>> from torchrl_offline.cli.common import add_run_options, run_keywords
        >>> parser = argparse.ArgumentParser()
        >>> add_run_options(parser, auto_env="the dataset's env")
        >>> args = parser.parse_args(["--logger", "none", "--eval-every", "100"])
        >>> args.progress = False  # the command's --no-progress
        >>> kwargs = run_keywords(args)
        >>> kwargs["logger"] is None, kwargs["eval_interval"]
        (True, 100)
    """
    return {
        "eval_interval": args.eval_every,
        "eval_episodes": args.eval_episodes,
        "eval_max_steps": args.eval_max_steps,
        "checkpoint_interval": args.checkpoint_every,
        "keep_checkpoints": args.keep_checkpoints,
        "log_interval": args.log_every,
        "logger": None if args.logger == "none" else args.logger,
        "progress": args.progress,
    }


def print_run_files(result: Any) -> None:
    """Prints where a run's last checkpoint and its logs are."""
    if result.checkpoint is not None:
        print(f"checkpoint: {result.checkpoint}")
    if result.log_dir is not None:
        print(f"logs: {result.log_dir}")


def finish_run(result: Any) -> int:
    """Says why a run stopped early, if it did; its exit status (130 when interrupted,
    with how to resume)."""
    if result.stop_reason == "interrupted":
        print("interrupted: resume with the same command plus --resume", file=sys.stderr)
        return 130
    if result.stop_reason:
        print(f"stopped early: {result.stop_reason}")
    return 0


def check_run_flags(args: argparse.Namespace, *, counts: tuple[str, ...] = ()) -> None:
    """Refuses ``--resume`` together with ``--overwrite``, and a run's count option
    (``--steps``, ``--batch-size``, the intervals, then ``counts``) below 1: usage errors.

    Examples:
        >>> import argparse
        >>> from torchrl_offline.cli.common import UsageError, check_run_flags
        >>> try:
        ...     check_run_flags(argparse.Namespace(steps=0))
        ... except UsageError as err:
        ...     print(err)
        --steps must be positive
    """
    if getattr(args, "resume", False) and getattr(args, "overwrite", False):
        raise UsageError("--resume and --overwrite exclude each other: pick one")
    for option in (*_RUN_COUNTS, *counts):
        value = getattr(args, option, None)
        if value is not None and value < 1:
            raise UsageError(f"--{option.replace('_', '-')} must be positive")


def parse_scalar(text: str) -> Any:
    """``"3"`` -> 3, ``"0.5"`` -> 0.5, ``"true"`` -> True, ``"none"`` -> None, else the text.

    Examples:
        >>> from torchrl_offline.cli.common import parse_scalar
        >>> parse_scalar("3"), parse_scalar("0.5"), parse_scalar("True"), parse_scalar("a.pt")
        (3, 0.5, True, 'a.pt')
    """
    lowered = text.strip().lower()
    if lowered in ("true", "false"):
        return lowered == "true"
    if lowered in ("none", "null"):
        return None
    for kind in (int, float):
        try:
            return kind(text)
        except ValueError:
            pass
    return text


def progress_bar(total: int | None, desc: str, *, enabled: bool = True, unit: str = "step"):
    """A tqdm progress bar on stderr (a no-op bar when ``enabled`` is False)."""
    from tqdm import tqdm

    return tqdm(
        total=total,
        desc=desc,
        unit=unit,
        disable=not enabled,
        file=sys.stderr,
        dynamic_ncols=True,
        mininterval=0.5,
    )
