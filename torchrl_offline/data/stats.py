"""Summary statistics of an offline dataset, computed chunk by chunk over its storage."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import torch
from tensordict import TensorDictBase
from torchrl.data import ReplayBuffer

from torchrl_offline.data.errors import DatasetError
from torchrl_offline.data.keys import ACTION, EPISODE, OBSERVATION, REWARD, key_name

__all__ = ["DatasetStats", "dataset_stats", "iter_chunks", "stored_transitions"]

_QUANTILES = (0.05, 0.25, 0.5, 0.75, 0.95)


def stored_transitions(data: ReplayBuffer | TensorDictBase) -> TensorDictBase:
    """The stored transitions (batch size ``[N]``, dataset order) of a replay buffer or tensordict."""
    if isinstance(data, TensorDictBase):
        return data
    if isinstance(data, ReplayBuffer):
        storage = data.storage
        td = getattr(storage, "_storage", None)
        if isinstance(td, TensorDictBase):
            return td[: len(storage)]
        return storage[: len(storage)]
    raise TypeError(f"Expected a TorchRL replay buffer or a TensorDict, got {type(data).__name__}")


def iter_chunks(
    td: TensorDictBase, chunk_size: int = 65536
) -> Iterator[tuple[int, TensorDictBase]]:
    """Yield ``(start, td[start:start + chunk_size])`` so large memmaps are never read at once."""
    for start in range(0, td.shape[0], chunk_size):
        yield start, td[start : start + chunk_size]


@dataclass
class DatasetStats:
    """Statistics of an offline dataset (see :func:`dataset_stats`)."""

    transitions: int
    episodes: int
    episode_length: dict[str, float]
    returns: dict[str, float]
    reward: dict[str, float]
    terminated: int
    truncated: int
    action: dict[str, Any]
    observation_mean: dict[str, torch.Tensor] = field(repr=False)
    observation_std: dict[str, torch.Tensor] = field(repr=False)
    episode_returns: torch.Tensor = field(repr=False)

    def as_dict(self) -> dict[str, Any]:
        """JSON-friendly view (tensors as lists)."""
        return {
            "transitions": self.transitions,
            "episodes": self.episodes,
            "episode_length": self.episode_length,
            "returns": self.returns,
            "reward": self.reward,
            "terminated": self.terminated,
            "truncated": self.truncated,
            "action": _json_action(self.action),
            "observation_mean": {k: v.tolist() for k, v in self.observation_mean.items()},
            "observation_std": {k: v.tolist() for k, v in self.observation_std.items()},
        }

    def __str__(self) -> str:
        def fmt(d: dict[str, float]) -> str:
            return "  ".join(f"{k}={v:.4g}" for k, v in d.items())

        lines = [
            f"transitions      {self.transitions}",
            f"episodes         {self.episodes}  (terminated {self.terminated}, truncated {self.truncated})",
            f"episode length   {fmt(self.episode_length)}",
            f"return           {fmt(self.returns)}",
            f"reward           {fmt(self.reward)}",
        ]
        if self.action.get("kind") == "discrete":
            counts = ", ".join(f"{a}: {c}" for a, c in self.action["counts"].items())
            lines.append(f"actions          discrete, counts {{{counts}}}")
        elif self.action.get("kind") == "composite":
            lines.append(f"actions          composite, keys {self.action['keys']}")
        else:
            lines.append(
                f"actions          continuous, dim {self.action['dim']}, "
                f"coverage {self.action['coverage']:.3f} of the {self.action['coverage_of']} "
                f"({self.action['bins']} bins per dim)"
            )
        for key, mean in self.observation_mean.items():
            std = self.observation_std[key]
            lines.append(
                f"{key:<16} mean |{mean.abs().mean():.4g}| (avg over dims), std in "
                f"[{std.min():.4g}, {std.max():.4g}]"
            )
        return "\n".join(lines)


def _json_action(action: dict[str, Any]) -> dict[str, Any]:
    """The action summary with tuple count keys (MultiDiscrete actions) as strings."""
    counts = action.get("counts")
    if not counts or not any(isinstance(k, tuple) for k in counts):
        return action
    return {**action, "counts": {str(list(k)): c for k, c in counts.items()}}


def _summary(x: torch.Tensor) -> dict[str, float]:
    x = x.to(torch.float64)
    if x.numel() == 0:
        return {}
    out = {"mean": x.mean().item(), "std": x.std(unbiased=False).item(), "min": x.min().item()}
    qs = torch.quantile(x, torch.tensor(_QUANTILES, dtype=torch.float64))
    out.update({f"q{int(q * 100):02d}": v.item() for q, v in zip(_QUANTILES, qs)})
    out["max"] = x.max().item()
    return out


def _action_counts(counts: dict[tuple[int, ...], int], *, vector_space: bool) -> dict[Any, int]:
    """Counts keyed by action: an int for index (or one-hot) actions, else a tuple (MultiDiscrete,
    MultiBinary). Rows are read as one-hot encodings of indices only when every row is one-hot
    (one 1, zeros elsewhere) and the action space is not known to be a vector space."""
    width = len(next(iter(counts)))
    one_hot = (
        not vector_space and width > 1 and all(set(v) <= {0, 1} and sum(v) == 1 for v in counts)
    )
    if width == 1:
        out: dict[Any, int] = {v[0]: c for v, c in counts.items()}
    elif one_hot:
        out = {v.index(1): c for v, c in counts.items()}
    else:
        out = dict(counts)
    return dict(sorted(out.items()))


def _action_space(data: Any) -> Any:
    """The dataset's gymnasium action space, from ``data.metadata``, if known."""
    serialized = getattr(data, "metadata", {}).get("action_space")
    if not isinstance(serialized, str):
        return None
    from minari.serialization import deserialize_space

    try:
        return deserialize_space(serialized)
    except Exception:  # unknown or custom space
        return None


def _box_bounds(data: Any, dim: int) -> tuple[torch.Tensor, torch.Tensor] | None:
    """Finite bounds of the dataset's Box action space, from ``data.metadata``, if known."""
    import gymnasium as gym

    space = _action_space(data)
    if not isinstance(space, gym.spaces.Box) or space.low.size != dim:
        return None
    low = torch.as_tensor(space.low.reshape(-1), dtype=torch.float64)
    high = torch.as_tensor(space.high.reshape(-1), dtype=torch.float64)
    if not bool(torch.isfinite(low).all() and torch.isfinite(high).all()):
        return None
    return low, high


def dataset_stats(
    data: ReplayBuffer | TensorDictBase,
    *,
    action_bins: int = 10,
    discrete_actions: bool | None = None,
    chunk_size: int = 65536,
) -> DatasetStats:
    """Compute transition/episode counts, the return distribution, action coverage and
    observation mean/std of an offline dataset.

    The storage is read chunk by chunk, so a memory-mapped dataset larger than RAM works.
    Episodes are the contiguous blocks of the ``episode`` key (an unfinished last episode
    counts as an episode).

    Args:
        data: a replay buffer from the data layer, or transitions in TorchRL layout.
        action_bins: bins per action dimension for the continuous coverage measure:
            the fraction of occupied cells of a per-dimension histogram over the action
            space's bounds when the dataset's metadata gives a bounded Box, else over the
            observed action range (1.0 = every bin of every dimension visited).
        discrete_actions: force the action kind; inferred from the dtype by default.
            Discrete actions are counted by value: index (or one-hot) actions by index,
            vector actions (MultiDiscrete, MultiBinary) by their tuple of values. Nested
            (Tuple / Dict) actions get no coverage measure (kind ``"composite"``).
        chunk_size: transitions read at a time.

    Returns:
        A :class:`DatasetStats`; ``print(stats)`` gives a readable summary.

    Examples:
        >>> import torch
        >>> from tensordict import TensorDict
        >>> from torchrl_offline.data import dataset_stats
        >>> td = TensorDict({
        ...     "observation": torch.randn(6, 3), "action": torch.tensor([0, 1, 1, 0, 2, 2]),
        ...     "episode": torch.tensor([0, 0, 0, 1, 1, 1]),
        ...     ("next", "reward"): torch.ones(6, 1),
        ... }, batch_size=[6])
        >>> stats = dataset_stats(td)
        >>> stats.episodes, stats.returns["mean"]
        (2, 3.0)
    """
    td = stored_transitions(data)
    n = td.shape[0]
    if n == 0:
        raise DatasetError("The dataset holds no transitions")
    keys = set(td.keys(True, True))
    for required in (ACTION, EPISODE, REWARD):
        if required not in keys and required not in td.keys(True):
            raise DatasetError(f"Missing field {key_name(required)!r}", field=key_name(required))
    # Tuple / Dict action spaces store a nested action: no single coverage measure applies.
    composite = isinstance(td.get(ACTION), TensorDictBase)

    obs_keys = [
        k
        for k in td.keys(True, True)
        if (k == OBSERVATION or (isinstance(k, tuple) and k[0] == OBSERVATION))
        and td.get(k).is_floating_point()
    ]
    action_dtype = None if composite else td.get(ACTION).dtype
    discrete = not composite and (
        discrete_actions
        if discrete_actions is not None
        else not (action_dtype.is_floating_point or action_dtype.is_complex)
    )

    # Pass 1: sums for means, per-episode returns, action range / counts.
    sums = {k: torch.zeros(td.get(k).shape[1:], dtype=torch.float64) for k in obs_keys}
    sq = {k: torch.zeros_like(v) for k, v in sums.items()}
    ep_returns: list[torch.Tensor] = []
    ep_lengths: list[torch.Tensor] = []
    last_id = None
    reward_sum = reward_sq = 0.0
    r_min, r_max = float("inf"), float("-inf")
    term = trunc = 0
    a_min = a_max = None
    counts: dict[tuple[int, ...], int] = {}
    for _, chunk in iter_chunks(td, chunk_size):
        for k in obs_keys:
            x = chunk.get(k).to(torch.float64)
            sums[k] += x.sum(0)
            sq[k] += (x * x).sum(0)
        reward = chunk.get(REWARD).reshape(-1).to(torch.float64)
        reward_sum += reward.sum().item()
        reward_sq += (reward * reward).sum().item()
        r_min, r_max = min(r_min, reward.min().item()), max(r_max, reward.max().item())
        ids, inverse, lens = torch.unique_consecutive(
            chunk.get(EPISODE).reshape(-1), return_inverse=True, return_counts=True
        )
        rets = torch.zeros(ids.shape[0], dtype=torch.float64).index_add_(0, inverse, reward)
        if last_id is not None and ids[0].item() == last_id:  # episode spans two chunks
            ep_returns[-1][-1] += rets[0]
            ep_lengths[-1][-1] += lens[0]
            rets, lens = rets[1:], lens[1:]
        ep_returns.append(rets)
        ep_lengths.append(lens.clone())
        last_id = ids[-1].item()
        if ("next", "terminated") in keys:
            term += int(chunk.get(("next", "terminated")).sum())
        if ("next", "truncated") in keys:
            trunc += int(chunk.get(("next", "truncated")).sum())
        if composite:
            continue
        action = chunk.get(ACTION)
        if discrete:
            # Distinct action vectors (one entry for index actions); one-hot rows are turned
            # into indices at the end, once every row is known to be one-hot.
            rows = action.reshape(action.shape[0], -1).long()
            vals, cnt = torch.unique(rows, dim=0, return_counts=True)
            for v, c in zip(vals.tolist(), cnt.tolist()):
                counts[tuple(v)] = counts.get(tuple(v), 0) + c
        else:
            flat = action.reshape(action.shape[0], -1).to(torch.float64)
            lo, hi = flat.min(0).values, flat.max(0).values
            a_min = lo if a_min is None else torch.minimum(a_min, lo)
            a_max = hi if a_max is None else torch.maximum(a_max, hi)

    returns = torch.cat(ep_returns)
    lengths = torch.cat(ep_lengths)
    mean = {k: (sums[k] / n) for k in obs_keys}
    std = {k: (sq[k] / n - mean[k] ** 2).clamp_min(0).sqrt() for k in obs_keys}

    if composite:
        action_info: dict[str, Any] = {
            "kind": "composite",
            "keys": [key_name(k) for k in td.get(ACTION).keys(True, True)],
        }
    elif discrete:
        import gymnasium as gym

        vector_space = isinstance(
            _action_space(data), (gym.spaces.MultiBinary, gym.spaces.MultiDiscrete)
        )
        action_info = {
            "kind": "discrete",
            "counts": _action_counts(counts, vector_space=vector_space),
        }
    else:
        # Pass 2 over actions only: histogram occupancy per dimension.
        assert a_min is not None and a_max is not None
        dim = a_min.shape[0]
        bounds = _box_bounds(data, dim)
        lo, hi = bounds if bounds is not None else (a_min, a_max)
        width = (hi - lo).clamp_min(1e-12)
        occupied = torch.zeros(dim, action_bins, dtype=torch.bool)
        for _, chunk in iter_chunks(td.select(ACTION), chunk_size):
            flat = chunk.get(ACTION).reshape(chunk.shape[0], -1).to(torch.float64)
            bins = ((flat - lo) / width * action_bins).long().clamp(0, action_bins - 1)
            occupied.scatter_(1, bins.T, True)
        action_info = {
            "kind": "continuous",
            "dim": dim,
            "min": a_min.tolist(),
            "max": a_max.tolist(),
            "bins": action_bins,
            "coverage_of": "action space" if bounds is not None else "observed range",
            "coverage": occupied.float().mean().item(),
        }
    reward_mean = reward_sum / n
    return DatasetStats(
        transitions=n,
        episodes=int(returns.shape[0]),
        episode_length=_summary(lengths.to(torch.float64)),
        returns=_summary(returns),
        reward={
            "mean": reward_mean,
            "std": max(reward_sq / n - reward_mean**2, 0.0) ** 0.5,
            "min": r_min,
            "max": r_max,
        },
        terminated=term,
        truncated=trunc,
        action=action_info,
        observation_mean={key_name(k): v.float() for k, v in mean.items()},
        observation_std={key_name(k): v.float() for k, v in std.items()},
        episode_returns=returns,
    )
