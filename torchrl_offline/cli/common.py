"""Helpers shared by the subcommands: the CLI error type, dataset lookup, progress bars."""

from __future__ import annotations

import argparse
import ast
import importlib.util
import os
import re
import sys
from pathlib import Path
from typing import Any

__all__ = [
    "LOGGERS",
    "LOG_SUFFIXES",
    "POLICY_MODE_HELP",
    "CLIError",
    "HelpFormatter",
    "Rewording",
    "RunWarnings",
    "UsageError",
    "add_policy_mode_option",
    "add_resume_option",
    "add_run_options",
    "check_logger_installed",
    "check_run_flags",
    "describe_policy_mode",
    "finish_run",
    "is_log_file",
    "local_datasets",
    "log_interval",
    "nothing_to_do",
    "open_dataset",
    "parse_scalar",
    "print_run_files",
    "progress_bar",
    "require_policy_mode",
    "resumed_step",
    "run_keywords",
    "warn",
    "warn_run_flags",
]

#: ``--logger`` values: :data:`~torchrl_offline.trainers.hooks.LOGGER_KINDS` and ``none``
#: (written out here: the parser imports no torch).
LOGGERS = ("csv", "tensorboard", "wandb", "mlflow", "none")

#: File suffixes read as users' logs (through ``from_logged``) rather than Minari datasets.
LOG_SUFFIXES = (".parquet", ".csv", ".h5", ".hdf5")


class CLIError(Exception):
    """A user error: :func:`torchrl_offline.cli.main` prints its message on one line, exits 1."""


class HelpFormatter(argparse.RawDescriptionHelpFormatter, argparse.ArgumentDefaultsHelpFormatter):
    """``--help`` of every subcommand: descriptions and epilogs as written, and each
    option's default appended as ``(default: X)``, except where there is nothing to say
    (no default, a flag off by default, an empty list) or the help text already says
    what the default is.

    Examples:
        >>> import argparse
        >>> from torchrl_offline.cli.common import HelpFormatter
        >>> parser = argparse.ArgumentParser(prog="demo", formatter_class=HelpFormatter)
        >>> _ = parser.add_argument("--steps", type=int, default=100, help="updates")
        >>> _ = parser.add_argument("--out", help="run directory")
        >>> help_text = " ".join(parser.format_help().split())
        >>> "--steps STEPS updates (default: 100)" in help_text
        True
        >>> "--out OUT run directory" in help_text and "(default: None)" not in help_text
        True
    """

    def _get_help_string(self, action: argparse.Action) -> str | None:
        help_text = action.help or ""
        default = action.default
        if (
            "default" in help_text.lower()
            or default is None
            or default is False
            or default is argparse.SUPPRESS
            or (isinstance(default, (list, tuple)) and not default)
            or (default is True and action.nargs == 0)  # --no-X flags: on by default
        ):
            return help_text
        return super()._get_help_string(action)


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


def is_log_file(path: Path) -> bool:
    """Whether ``path`` is a log file read with ``from_logged`` (a suffix of
    :data:`LOG_SUFFIXES`; not a Minari dataset's ``main_data.hdf5``)."""
    return path.is_file() and path.suffix.lower() in LOG_SUFFIXES and path.name != "main_data.hdf5"


def open_dataset(
    dataset: str,
    *,
    root: str | os.PathLike | None = None,
    batch_size: int | None = 256,
    columns: dict[str, Any] | None = None,
    ignore: list[str] | tuple[str, ...] = (),
    env_id: str | None = None,
    notes: bool = True,
    horizon: int | None = None,
    num_positions: int | None = None,
) -> Any:
    """Open a dataset named on the command line as an offline replay buffer.

    ``dataset`` is a Minari dataset id (looked up under ``root``), the path of a Minari
    dataset folder, or the path of a logged-data file (Parquet, CSV, D4RL-style HDF5),
    read with :func:`~torchrl_offline.data.from_logged` as
    :func:`~torchrl_offline.cli.log_options.open_log` reads it (``columns``, ``ignore``,
    ``env_id``, ``horizon``: the ``--columns``, ``--ignore``, ``--env-id``, ``--horizon``
    options).

    Args:
        notes: print on stderr the transitions of a log that were dropped and whether the
            log of a dataset saved from it changed since
            (:func:`~torchrl_offline.cli.log_options.dataset_notes`).

    Raises:
        CLIError: the dataset does not exist; the message lists the local dataset ids.
        UsageError: ``columns`` or ``ignore`` for a dataset that is not a log file.
    """
    from torchrl_offline.cli.log_options import open_log, print_dataset_notes, set_env_id

    path = Path(dataset).expanduser()
    if is_log_file(path):
        buffer = open_log(
            path,
            batch_size=batch_size,
            columns=columns,
            ignore=ignore,
            env_id=env_id,
            horizon=horizon,
            num_positions=num_positions,
        )
    else:
        if horizon is not None or num_positions is not None:
            option = "--horizon" if horizon is not None else "--num-positions"
            raise UsageError(f"{option} applies to log files; {dataset!r} is not one")
        if columns or ignore:
            raise UsageError(
                f"--columns and --ignore apply to log files ({', '.join(LOG_SUFFIXES)}); "
                f"{dataset!r} is not one"
            )
        buffer = _open_minari(dataset, path, root, batch_size)
        if env_id is not None:
            set_env_id(buffer, env_id, dataset)
    if notes:
        print_dataset_notes(buffer, dataset)
    return buffer


def _open_minari(dataset: str, path: Path, root: Any, batch_size: int | None) -> Any:
    from torchrl_offline.data import DatasetNotFoundError, load_minari
    from torchrl_offline.data.minari_writer import minari_root

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


def add_run_options(
    parser: argparse.ArgumentParser, *, auto_env: str, default_env: str = "no evaluation"
) -> None:
    """Adds the options ``train`` and ``finetune`` share: batch, evaluation, checkpoints, logs.

    Args:
        parser: the subcommand's parser.
        auto_env: what ``--eval-env auto`` means for this subcommand, for ``--help``.
        default_env: what no ``--eval-env`` means, for ``--help``.
    """
    parser.add_argument("--batch-size", type=int, default=256, help="transitions per update")
    parser.add_argument(
        "--overwrite",
        action="store_true",
        help="replace the run already in --out (only a run directory of torchrl-offline); "
        "without it or --resume, an --out holding a run is refused",
    )
    parser.add_argument(
        "--eval-env",
        metavar="ENV",
        help=f"gymnasium id to evaluate in, 'auto' for {auto_env}, or 'none' (default: "
        f"{default_env})",
    )
    parser.add_argument(
        "--eval-every",
        type=int,
        default=5000,
        metavar="N",
        help="steps between evaluations (also before the first update and after the last)",
    )
    parser.add_argument(
        "--eval-episodes", type=int, default=10, metavar="N", help="episodes per evaluation"
    )
    parser.add_argument(
        "--eval-max-steps", type=int, default=1000, metavar="N", help="step cap per episode"
    )
    parser.add_argument(
        "--checkpoint-every",
        type=int,
        default=5000,
        metavar="N",
        help="steps between checkpoints (also one after the last update)",
    )
    parser.add_argument(
        "--keep-checkpoints", type=int, default=2, metavar="N", help="newest checkpoints kept"
    )
    parser.add_argument(
        "--log-every",
        type=int,
        metavar="N",
        help="steps between logged loss means (default: --steps / 20, at most 1000)",
    )
    parser.add_argument(
        "--logger",
        default="csv",
        choices=LOGGERS,
        help="where the logged values go besides DIR/metrics.csv and DIR/metrics.png: csv "
        "(nothing more, the default), a TorchRL logger in DIR/logs, or none (no metrics file "
        "and figure either)",
    )
    parser.add_argument(
        "--root", help="Minari datasets root (default: $MINARI_DATASETS_PATH or ~/.minari/datasets)"
    )


#: What ``--policy-mode`` means, for ``--help`` and the outputs.
POLICY_MODE_HELP = {
    "greedy": "the actor's deterministic action, the mode or mean of its distribution, as deployed",
    "stochastic": "actions sampled from the actor's distribution",
}


class Rewording:
    """The library's messages in the command line's words: ``(pattern, replacement)``
    regular-expression pairs applied in order to a message.

    Examples:
        >>> from torchrl_offline.cli.common import Rewording
        >>> Rewording((r"\\bnum_steps\\b", "--fqe-steps"))("increase num_steps")
        'increase --fqe-steps'
    """

    def __init__(self, *pairs: tuple[str, str]) -> None:
        self.pairs = tuple((re.compile(pattern), replacement) for pattern, replacement in pairs)

    def __call__(self, message: str) -> str:
        for pattern, replacement in self.pairs:
            message = pattern.sub(replacement, message)
        return message


def _sampled_argmax(policy: Any) -> Any:
    """BCQ's or BEAR's ``SampledArgmaxPolicy`` behind ``policy`` (a ``NormalizedPolicy``
    wraps it), or ``None`` for any other policy."""
    from torchrl_offline.objectives._behavior_model import SampledArgmaxPolicy

    inner = getattr(policy, "policy", policy)
    return inner if isinstance(inner, SampledArgmaxPolicy) else None


def describe_policy_mode(policy: Any, mode: str) -> str:
    """``mode`` and what the checkpoint's ``policy`` does in it, for the printed summaries
    (BCQ's and BEAR's policy is the best of sampled candidate actions, not an actor's
    mode)."""
    inner = _sampled_argmax(policy)
    if mode == "greedy" and inner is not None:
        n = inner.num_samples or inner.loss.num_action_samples
        return (
            f"{mode} (the best of {n} candidate actions sampled at each state, under the "
            "first critic, as deployed)"
        )
    return f"{mode} ({POLICY_MODE_HELP[mode]})"


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
        if _sampled_argmax(policy) is not None:
            raise UsageError(
                f"--policy-mode stochastic: the checkpoint's {algorithm} policy has no action "
                "distribution: it takes the best of candidate actions sampled afresh at each "
                "state in every mode; use --policy-mode greedy"
            )
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


def log_interval(args: argparse.Namespace) -> int:
    """Steps between logged loss means: ``--log-every``, or by default ``--steps / 20``
    (at least 1, at most 1000), so a short run logs about 20 points and a long one every
    1000 steps.

    Examples:
        >>> import argparse
        >>> from torchrl_offline.cli.common import log_interval
        >>> [log_interval(argparse.Namespace(log_every=None, steps=n)) for n in (10, 2000, 10**6)]
        [1, 100, 1000]
        >>> log_interval(argparse.Namespace(log_every=7, steps=10**6))
        7
    """
    if args.log_every is not None:
        return args.log_every
    return _default_log_interval(args.steps)


def _default_log_interval(steps: int) -> int:
    return max(1, min(1000, steps // 20))


def run_keywords(args: argparse.Namespace) -> dict[str, Any]:
    """The keyword arguments of ``train``/``finetune`` that :func:`add_run_options` sets
    (evaluation, checkpoint and logging intervals, logger, progress bar).

    Examples:
        >>> import argparse
        >>> from torchrl_offline.cli.common import add_run_options, run_keywords
        >>> parser = argparse.ArgumentParser()
        >>> add_run_options(parser, auto_env="the dataset's env")
        >>> args = parser.parse_args(["--logger", "none", "--eval-every", "100"])
        >>> args.progress, args.steps = False, 1000  # the command's --no-progress, --steps
        >>> kwargs = run_keywords(args)
        >>> kwargs["logger"] is None, kwargs["eval_interval"], kwargs["log_interval"]
        (True, 100, 50)
    """
    return {
        "eval_interval": args.eval_every,
        "eval_episodes": args.eval_episodes,
        "eval_max_steps": args.eval_max_steps,
        "checkpoint_interval": args.checkpoint_every,
        "keep_checkpoints": args.keep_checkpoints,
        "log_interval": log_interval(args),
        "logger": None if args.logger == "none" else args.logger,
        "progress": args.progress,
    }


def warn(args: argparse.Namespace, message: str) -> None:
    """Prints ``torchrl-offline COMMAND: warning: MESSAGE`` on stderr."""
    print(f"torchrl-offline {args.command}: warning: {message}", file=sys.stderr)


def warn_run_flags(args: argparse.Namespace, *, evaluating: bool) -> list[str]:
    """Warns (on stderr) about intervals longer than the run: an ``--eval-every`` above
    ``--steps`` when the run evaluates, a ``--log-every`` above ``--steps``. Returns the
    warnings.

    Examples:
        >>> import argparse
        >>> from torchrl_offline.cli.common import warn_run_flags
        >>> args = argparse.Namespace(command="train", steps=1000, eval_every=5000,
        ...                           log_every=None, resume=False)
        >>> print(warn_run_flags(args, evaluating=True)[0])  # doctest: +NORMALIZE_WHITESPACE
        --eval-every 5000 is more than --steps 1000: the policy is evaluated only before
        the first update and after the last one (no learning curve); give --eval-every
        below 1000, e.g. 100
    """
    warnings = []
    steps = args.steps
    if evaluating and args.eval_every > steps:
        when = (
            "after the last update"
            if args.resume
            else "before the first update and after the last one"
        )
        warnings.append(
            f"--eval-every {args.eval_every} is more than --steps {steps}: the policy is "
            f"evaluated only {when} (no learning curve); give --eval-every below {steps}, "
            f"e.g. {max(1, steps // 10)}"
        )
    if args.log_every is not None and args.log_every > steps:
        warnings.append(
            f"--log-every {args.log_every} is more than --steps {steps}: no loss is logged; "
            f"give --log-every below {steps} (or leave it out: every "
            f"{_default_log_interval(steps)})"
        )
    for message in warnings:
        warn(args, message)
    return warnings


class RunWarnings:
    """A trainer hook (for ``hooks=`` of ``train``/``finetune``) that gives the warnings of
    :func:`warn_run_flags` as training starts, once the command line, the data, the
    algorithm's settings and the run directory have all been accepted: a command that
    fails says only why.

    Args:
        args: the parsed command line.

    Keyword Args:
        evaluating (bool): whether the run evaluates its policy.
    """

    def __init__(self, args: argparse.Namespace, *, evaluating: bool) -> None:
        self.args = args
        self.evaluating = evaluating

    def __call__(self) -> None:
        warn_run_flags(self.args, evaluating=self.evaluating)

    def register(self, trainer: Any, name: str = "run_warnings") -> None:
        trainer.register_op("setup", self)


def check_logger_installed(kind: str) -> None:
    """Refuses ``--logger KIND`` when the package it needs is not installed, with the
    command that installs it (checked before the dataset is opened).

    Raises:
        CLIError: the logger's package is missing.

    Examples:
        >>> from torchrl_offline.cli.common import check_logger_installed
        >>> check_logger_installed("csv")  # needs nothing
    """
    from torchrl_offline.trainers.hooks import LOGGER_PACKAGES

    package = LOGGER_PACKAGES.get(kind)
    if package is not None and importlib.util.find_spec(package) is None:
        raise CLIError(
            f"--logger {kind} needs the {package} package, which is not installed: "
            f"pip install {package} (or use --logger csv)"
        )


def print_run_files(result: Any) -> None:
    """Prints where a run's last checkpoint, metrics file, figure and other logs are."""
    if result.checkpoint is not None:
        print(f"checkpoint: {result.checkpoint}")
    metrics = getattr(result, "metrics", None)
    for name, path in (("metrics", metrics), ("figure", getattr(result, "figure", None))):
        if path is not None:
            print(f"{name}: {path}")
    if result.log_dir is not None and (metrics is None or result.log_dir != metrics.parent):
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


#: Words read as constants whatever their case (YAML's and JSON's spellings too).
_WORDS = {"true": True, "false": False, "none": None, "null": None}


def parse_scalar(text: str) -> Any:
    """A command-line value as the Python value it spells (:func:`ast.literal_eval`:
    numbers, tuples, lists, quoted strings, ``True``), with ``true``/``false``/``none``/
    ``null`` in any case and ``inf``/``nan``; any other text stays the text.

    Examples:
        >>> from torchrl_offline.cli.common import parse_scalar
        >>> parse_scalar("3"), parse_scalar("0.5"), parse_scalar("1e-3"), parse_scalar("true")
        (3, 0.5, 0.001, True)
        >>> parse_scalar("(64, 64)"), parse_scalar("[1,2]"), parse_scalar("none")
        ((64, 64), [1, 2], None)
        >>> parse_scalar("a.pt"), parse_scalar("'3'"), parse_scalar("-inf")
        ('a.pt', '3', -inf)
    """
    stripped = text.strip()
    if stripped.lower() in _WORDS:
        return _WORDS[stripped.lower()]
    try:
        return ast.literal_eval(stripped)
    except (ValueError, TypeError, SyntaxError, MemoryError, RecursionError):
        pass
    try:
        return float(stripped)  # inf, -inf, nan: not Python literals
    except ValueError:
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
