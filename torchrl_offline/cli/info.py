"""``torchrl-offline info``: statistics of a dataset."""

from __future__ import annotations

import argparse
import json
from typing import Any

from torchrl_offline.cli.common import UsageError, is_log_file, open_dataset
from torchrl_offline.cli.log_options import add_log_options, dataset_notes, log_keywords

__all__ = ["add_parser", "dataset_info", "run"]


def add_parser(subparsers: Any) -> argparse.ArgumentParser:
    parser = subparsers.add_parser(
        "info",
        help="print a dataset's statistics",
        description="Print the statistics of an offline dataset: transitions, episodes, "
        "returns (and normalized scores when reference returns are known), rewards, "
        "action coverage, observation scale.",
    )
    parser.add_argument(
        "dataset", help="Minari dataset id, dataset folder, or log file (Parquet, CSV, HDF5)"
    )
    parser.add_argument(
        "--root", help="Minari datasets root (default: $MINARI_DATASETS_PATH or ~/.minari/datasets)"
    )
    parser.add_argument("--json", action="store_true", help="print JSON instead of text")
    parser.add_argument(
        "--bins", type=int, default=10, help="bins per action dimension for the coverage measure"
    )
    add_log_options(parser)
    parser.add_argument(
        "--save",
        metavar="ID",
        help="also write the log as the Minari dataset ID (under --root), with its env id: "
        "later commands take --dataset ID without the log's options",
    )
    parser.add_argument(
        "--overwrite", action="store_true", help="with --save: replace a dataset ID of other data"
    )
    parser.set_defaults(run=run)
    return parser


def _space(serialized: Any) -> str | None:
    if not isinstance(serialized, str):
        return None
    from minari.serialization import deserialize_space

    try:
        return str(deserialize_space(serialized))
    except Exception:  # a custom space Minari cannot restore: show the raw text
        return serialized


def _env_id(env_spec: Any) -> str | None:
    if isinstance(env_spec, str):
        try:
            env_spec = json.loads(env_spec)
        except ValueError:
            return None
    return env_spec.get("id") if isinstance(env_spec, dict) else None


def dataset_info(buffer: Any, *, bins: int = 10) -> dict[str, Any]:
    """The facts ``info`` prints, as a JSON-friendly dict.

    Args:
        buffer: an offline replay buffer from the data layer.
        bins: bins per action dimension for the coverage measure.

    Returns:
        ``{"dataset": {...}, "stats": {...}}`` plus ``"normalized_return"`` when the dataset
        has reference returns.

    Examples:
        >>> import torch
        >>> from tensordict import TensorDict
        >>> from torchrl_offline.data import make_replay_buffer
        >>> from torchrl_offline.cli.info import dataset_info
        >>> td = TensorDict({
        ...     "observation": torch.randn(4, 2), "action": torch.tensor([0, 1, 1, 0]),
        ...     "episode": torch.tensor([0, 0, 1, 1]), ("next", "reward"): torch.ones(4, 1),
        ... }, batch_size=[4])
        >>> info = dataset_info(make_replay_buffer(td, metadata={"ref_min_score": 0.0,
        ...                                                      "ref_max_score": 4.0}))
        >>> info["stats"]["episodes"], info["normalized_return"]["mean"]
        (2, 50.0)
    """
    return _info_and_stats(buffer, bins)[0]


def _info_and_stats(buffer: Any, bins: int) -> tuple[dict[str, Any], Any]:
    from torchrl_offline.data import dataset_stats, normalized_score

    meta = dict(getattr(buffer, "metadata", {}) or {})
    stats = dataset_stats(buffer, action_bins=bins)
    info: dict[str, Any] = {
        "dataset": {
            "id": meta.get("dataset_id"),
            "source": meta.get("source"),
            "path": meta.get("source_path") or meta.get("path"),
            "format": meta.get("data_format"),
            "env_id": _env_id(meta.get("env_spec")),
            "observation_space": _space(meta.get("observation_space")),
            "action_space": _space(meta.get("action_space")),
            "ref_min_score": meta.get("ref_min_score"),
            "ref_max_score": meta.get("ref_max_score"),
            "behavior_keys": meta.get("behavior_keys"),
            **_log_counts(meta),
        },
        "stats": stats.as_dict(),
    }
    if meta.get("ref_min_score") is not None and meta.get("ref_max_score") is not None:
        scores = normalized_score(stats.episode_returns, meta)
        scores = scores if hasattr(scores, "mean") else None
        if scores is not None and scores.numel():
            info["normalized_return"] = {
                "mean": scores.mean().item(),
                "min": scores.min().item(),
                "max": scores.max().item(),
            }
    return info, stats


#: Keys of ``info["dataset"]`` that the text output shows as a note instead.
_IN_NOTES = ("dropped_transitions", "terminal_steps_kept")


def _log_counts(meta: dict[str, Any]) -> dict[str, Any]:
    """A log's (or the log of a dataset saved from one) dropped and filled transitions."""
    record = meta.get("source_log") if isinstance(meta.get("source_log"), dict) else meta
    return {
        "log": record.get("path") if record is not meta else None,
        "dropped_transitions": record.get("dropped_transitions"),
        "terminal_steps_kept": record.get("terminal_next_observations_filled"),
    }


def _open(args: argparse.Namespace) -> Any:
    if args.save is None:
        if args.overwrite:
            raise UsageError("--overwrite goes with --save")
        return open_dataset(args.dataset, root=args.root, notes=False, **log_keywords(args))
    from pathlib import Path

    from torchrl_offline.cli.log_options import open_log

    if not is_log_file(Path(args.dataset).expanduser()):
        raise UsageError(
            f"--save writes a log file as a Minari dataset; {args.dataset!r} is not one"
        )
    return open_log(
        Path(args.dataset).expanduser(),
        batch_size=256,
        save=args.save,
        root=args.root,
        overwrite=args.overwrite,
        **log_keywords(args),
    )


def run(args: argparse.Namespace) -> int:
    """Print the dataset's statistics as text or JSON (and write ``--save``)."""
    if args.bins < 1:
        raise UsageError(f"--bins must be positive, got {args.bins}")
    buffer = _open(args)
    info, stats = _info_and_stats(buffer, args.bins)
    notes = dataset_notes(buffer, args.dataset)
    if args.save is not None:
        from torchrl_offline.data.minari_writer import minari_root

        info["saved"] = {"id": args.save, "path": str(minari_root(args.root) / args.save)}
    if args.json:
        print(json.dumps({**info, "notes": [f"{k}: {t}" for k, t in notes]}, indent=2))
        return 0
    shown = {k: v for k, v in info["dataset"].items() if v is not None and k not in _IN_NOTES}
    width = max(map(len, shown), default=0) + 2
    for key, value in shown.items():
        print(f"{key:<{width}}{value}")
    for kind, text in notes:
        print(f"{kind}: {text}")
    print(stats)
    if "normalized_return" in info:
        norm = info["normalized_return"]
        print(
            f"normalized return (0 random, 100 expert) mean={norm['mean']:.4g}  "
            f"min={norm['min']:.4g}  max={norm['max']:.4g}"
        )
    if "saved" in info:
        root = f" --root {args.root}" if args.root else ""
        print(
            f"saved as the Minari dataset {args.save} ({info['saved']['path']}); later "
            f"commands take --dataset {args.save}{root}"
        )
    return 0
