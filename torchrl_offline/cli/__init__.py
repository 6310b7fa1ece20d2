"""The ``torchrl-offline`` command line: collect, inspect, train, evaluate, OPE and plot.

Each subcommand lives in its own module with an ``add_parser(subparsers)`` that registers
it and a ``run(args) -> int``. :func:`main` parses the arguments, runs the subcommand and
turns every user error into one line on stderr and a non-zero exit status (``--debug``
shows the traceback instead).

Building the parser imports no torch, TorchRL, tensordict or NumPy (``--help`` answers
in a fraction of a second): a subcommand module imports them inside ``run()`` and the
helpers it calls, and takes its choices from cheap sources (the registry's
``BUILTIN_ALGORITHMS``; names other packages register are checked after parsing).
Every subcommand's ``--help`` shows the defaults (:class:`~torchrl_offline.cli.common.HelpFormatter`).

Examples:
    >>> from torchrl_offline.cli import main
    >>> main(["info", "no/such-dataset-v0"])  # prints one error line on stderr
    1
"""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Sequence

from torchrl_offline.cli.common import CLIError, HelpFormatter, UsageError

__all__ = ["CLIError", "UsageError", "build_parser", "main"]

PROG = "torchrl-offline"
#: Subcommand modules, in the order ``--help`` lists them.
SUBCOMMANDS = (
    "collect",
    "info",
    "train",
    "evaluate",
    "ope",
    "finetune",
    "plot",
    "export",
    "verify",
)


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of ``torchrl-offline`` with every available subcommand."""
    parser = argparse.ArgumentParser(
        prog=PROG,
        formatter_class=HelpFormatter,
        description="Offline reinforcement learning with TorchRL: make and inspect datasets, "
        "train offline agents, evaluate them in an environment or from data.",
    )
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for name in SUBCOMMANDS:
        try:
            module = importlib.import_module(f"torchrl_offline.cli.{name}")
        except ModuleNotFoundError as err:
            if err.name != f"torchrl_offline.cli.{name}":
                raise
            continue  # a subcommand not shipped in this build
        module.add_parser(subparsers)
    for sub in subparsers.choices.values():
        if issubclass(HelpFormatter, sub.formatter_class):  # a plainer one: show defaults
            sub.formatter_class = HelpFormatter
        common = sub.add_argument_group("common options")
        common.add_argument(
            "--no-progress", dest="progress", action="store_false", help="hide progress bars"
        )
        common.add_argument(
            "--debug", action="store_true", help="show the full traceback of an error"
        )
    return parser


def _one_line(err: BaseException) -> str:
    text = " ".join(str(err).split()) or type(err).__name__
    if isinstance(err, (CLIError, ValueError, OSError, KeyError)):
        return text
    return f"{type(err).__name__}: {text}"


def main(argv: Sequence[str] | None = None) -> int:
    """Run ``torchrl-offline`` with ``argv`` (default ``sys.argv[1:]``); return the exit status.

    Exit status: 0 on success, 1 on an error in the data, files, checkpoints or
    environments named (one line on stderr), 2 on a usage error (argparse's message, or
    a :class:`UsageError`: an option missing, malformed or out of range), 130 on Ctrl-C,
    141 when stdout's reader has gone.
    """
    try:  # Ctrl-C while the subcommands' modules are imported
        parser = build_parser()
    except KeyboardInterrupt:
        print(f"{PROG}: interrupted", file=sys.stderr)
        return 130
    args = parser.parse_args(list(sys.argv[1:] if argv is None else argv))
    from torchrl_offline.cli.repeated_warnings import merge_repeated_warnings

    try:
        with merge_repeated_warnings(f"{PROG} {args.command}"):  # each once, with a count
            return int(args.run(args) or 0)
    except BrokenPipeError:  # the reader went away (e.g. `| head`): stop quietly
        sys.stderr.close()
        return 141
    except KeyboardInterrupt:
        print(f"{PROG} {args.command}: interrupted", file=sys.stderr)
        return 130
    except Exception as err:
        if args.debug:
            raise
        print(f"{PROG} {args.command}: error: {_one_line(err)}", file=sys.stderr)
        return 2 if isinstance(err, UsageError) else 1
