"""``torchrl-offline export``: a checkpoint's policy as an ONNX, TorchScript or pt2 file."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from torchrl_offline.cli.common import CLIError

__all__ = ["FORMATS", "add_parser", "run"]

#: ``--format`` choices and their file suffixes (those of
#: :data:`torchrl_offline.deploy.EXPORT_FORMATS`, spelled here so that ``--help`` imports
#: no torch).
FORMATS = {"onnx": ".onnx", "torchscript": ".pt", "pt2": ".pt2"}
_LOAD_WITH = {
    "onnx": "onnxruntime.InferenceSession({path!r})",
    "torchscript": "torch.jit.load({path!r})",
    "pt2": "torch.export.load({path!r}).module()",
}


def add_parser(subparsers: Any) -> argparse.ArgumentParser:
    parser = subparsers.add_parser(
        "export",
        help="write a checkpoint's policy to an ONNX, TorchScript or pt2 file",
        description="Write the greedy policy of a training checkpoint to a file that maps a "
        "float32 batch of raw observations [batch, obs_dim] to actions (the actions of "
        "predict), with the observation normalisation and the action clipping inside, and "
        "that runs without torchrl or torchrl_offline: onnx (onnxruntime), torchscript "
        "(torch.jit.load; deprecated since torch 2.5) or pt2 (torch.export.load). The file "
        "is checked against the policy before it is put in place.",
    )
    parser.add_argument("checkpoint", help="checkpoint file, or a run directory (newest one)")
    parser.add_argument(
        "--format",
        choices=tuple(FORMATS),
        help="file format (default: from --out's suffix, else onnx)",
    )
    parser.add_argument(
        "--out",
        metavar="FILE",
        help="file to write (default: ALGO-stepN.SUFFIX in the current directory)",
    )
    parser.add_argument("--force", action="store_true", help="replace an existing file")
    parser.add_argument(
        "--seed",
        type=int,
        default=0,
        help="seed of BCQ's and BEAR's fixed candidate codes (other policies ignore it)",
    )
    parser.add_argument("--json", action="store_true", help="print JSON instead of text")
    parser.set_defaults(run=run)
    return parser


def _format(args: argparse.Namespace) -> str:
    if args.format is not None:
        return args.format
    suffix = Path(args.out).suffix.lower() if args.out else ""
    by_suffix = {s: f for f, s in FORMATS.items()}
    return by_suffix.get(suffix, "onnx")


def _refuse_existing(path: Path, force: bool) -> None:
    if path.exists() and not force:
        raise CLIError(f"{str(path)!r} already exists; pass --force to replace it")


def _describe_action(action: dict[str, Any]) -> str:
    if action["type"] == "bounded":
        low, high = action["low"], action["high"]
        bounds = f"[{low[0]:g}, {high[0]:g}]" if len(set(low)) == len(set(high)) == 1 else "bounds"
        return f"float32 [batch, {', '.join(map(str, action['shape']))}] in {bounds}"
    if action["type"] == "categorical":
        return f"int64 [batch] in 0..{action['n'] - 1}"
    if action["type"] == "one_hot":
        return f"one-hot [batch, {action['n']}]"
    return f"float32 [batch, {', '.join(map(str, action['shape']))}]"


def run(args: argparse.Namespace) -> int:
    """Export and say what was written."""
    from torchrl_offline.cli.checkpoints import resolve_checkpoint
    from torchrl_offline.deploy import export_policy, load_policy
    from torchrl_offline.deploy.export import policy_card

    fmt = _format(args)
    if args.out is not None:
        _refuse_existing(Path(args.out), args.force)
    file = resolve_checkpoint(args.checkpoint)
    policy = load_policy(file, seed=args.seed)
    out = Path(args.out or f"{policy.name}-step{policy.step}{FORMATS[fmt]}")
    _refuse_existing(out, args.force)
    result = export_policy(policy, out, format=fmt, force=args.force)
    card = policy_card(policy)
    summary = {
        "checkpoint": str(file),
        "algorithm": policy.name,
        "step": policy.step,
        "format": fmt,
        "path": str(result.path),
        "bytes": result.path.stat().st_size,
        "observation_shape": card["observation_shape"],
        "action": card["action"],
        "candidate_seed": card["candidate_seed"],
        "checked": result.checked,
        "max_difference": result.max_difference,
    }
    if args.json:
        print(json.dumps(summary, indent=2))
    else:
        obs = ", ".join(map(str, policy.observation_shape))
        norm = " (normalised inside)" if card["normalized_observations"] else ""
        print(f"{policy.name} at step {policy.step} ({file})")
        print(f"wrote {result.path} ({fmt}, {summary['bytes'] / 1024:.1f} KiB)")
        print(f"  input  observation: float32 [batch, {obs}], raw observations{norm}")
        print(f"  output action: {_describe_action(card['action'])}, greedy")
        if card["candidate_seed"] is not None:
            print(f"  candidates from fixed codes of seed {card['candidate_seed']} (--seed)")
        print(
            f"checked against predict on {result.checked} observations: largest difference "
            f"{result.max_difference:.2g}"
        )
        print(f"load it with {_LOAD_WITH[fmt].format(path=str(result.path))}")
    if fmt == "torchscript":
        print(
            "note: TorchScript is deprecated since torch 2.5; onnx and pt2 are its successors",
            file=sys.stderr,
        )
    return 0
