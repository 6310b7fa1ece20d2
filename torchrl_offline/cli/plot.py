"""``torchrl-offline plot``: draw the figure of a run, or overlay several runs."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from torchrl_offline.cli.common import UsageError

__all__ = ["add_parser", "run"]

_EPILOG = """\
examples:
  torchrl-offline plot runs/iql                      # redraw runs/iql/metrics.png
  torchrl-offline plot runs/iql-s0 runs/iql-s1 runs/iql-s2 runs/cql-s0 --out iql_vs_cql.png
  torchrl-offline plot runs/iql-s* --metric return_mean --metric loss_qvalue --band se
"""
_SUFFIXES = (".png", ".pdf", ".svg")


def add_parser(subparsers: Any) -> argparse.ArgumentParser:
    parser = subparsers.add_parser(
        "plot",
        help="draw a run's metrics, or overlay runs (mean and band over seeds)",
        description="Draw the figure of one train/finetune run (evaluation return with its "
        "spread, normalized score, the behaviour data's level, the losses) from its "
        "metrics.csv, or overlay several runs, one panel per --metric: runs that share a "
        "config (algorithm, hyperparameters, dataset; different seeds) are drawn as their "
        "mean with a band, other runs as lines of their own.",
        epilog=_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("runs", nargs="+", metavar="RUN", help="run directory (or its metrics.csv)")
    parser.add_argument(
        "--out",
        metavar="FILE",
        help="figure to write, .png, .pdf or .svg (default: RUN/metrics.png for one run "
        "without --metric, else plot.png)",
    )
    parser.add_argument(
        "--metric",
        dest="metrics",
        action="append",
        metavar="NAME",
        help="column to draw, e.g. eval/return_mean or its last part (return_mean, "
        "loss_actor); repeatable, one panel each (default: eval/return_mean)",
    )
    parser.add_argument(
        "--band",
        choices=("std", "se"),
        default="std",
        help="band of a group of seeds: standard deviation over the seeds or standard error "
        "of their mean (default: std)",
    )
    parser.set_defaults(run=run)
    return parser


def run(args: argparse.Namespace) -> int:
    """Draw the figure and print where it is."""
    if args.out is not None and Path(args.out).suffix.lower() not in _SUFFIXES:
        raise UsageError(f"--out must end in {', '.join(_SUFFIXES)}, got {args.out!r}")
    from torchrl_offline.trainers.plot import plot_run, plot_runs

    if len(args.runs) == 1 and not args.metrics:
        path = plot_run(args.runs[0], args.out)
    else:
        path = plot_runs(args.runs, args.out or "plot.png", metrics=args.metrics, band=args.band)
    print(f"figure: {path}")
    return 0
