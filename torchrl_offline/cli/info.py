"""``torchrl-offline info``: statistics of a dataset."""

from __future__ import annotations

import argparse
import json
from typing import Any

from torchrl_offline.cli.common import UsageError, open_dataset

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


def run(args: argparse.Namespace) -> int:
    """Print the dataset's statistics as text or JSON."""
    if args.bins < 1:
        raise UsageError(f"--bins must be positive, got {args.bins}")
    buffer = open_dataset(args.dataset, root=args.root)
    info, stats = _info_and_stats(buffer, args.bins)
    if args.json:
        print(json.dumps(info, indent=2))
        return 0
    for key, value in info["dataset"].items():
        if value is not None:
            print(f"{key:<19}{value}")
    print(stats)
    if "normalized_return" in info:
        norm = info["normalized_return"]
        print(
            f"normalized return mean={norm['mean']:.4g}  min={norm['min']:.4g}  "
            f"max={norm['max']:.4g}"
        )
    return 0
