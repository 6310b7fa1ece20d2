"""Logged transitions (dataset order) as padded episodes ``[E, T_max]`` with a mask."""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from typing import Literal

import torch
from tensordict import TensorDictBase
from torchrl.data import ReplayBuffer

from torchrl_offline.data.keys import (
    DONE,
    EPISODE,
    NEXT_OBSERVATION,
    OBSERVATION,
    REWARD,
    TERMINATED,
    key_name,
)
from torchrl_offline.data.stats import iter_chunks, stored_transitions
from torchrl_offline.ope.result import OPEError, OPEWarning

__all__ = ["IS_INIT", "STEP_COUNT", "Episodes", "is_one_step", "to_episodes"]

#: Key written by TorchRL's ``InitTracker``: True on the first step of an episode.
IS_INIT = "is_init"
#: Key written by TorchRL's ``StepCounter``: 0 on the first step of an episode.
STEP_COUNT = "step_count"


@dataclass
class Episodes:
    """Episodes of an offline dataset, as indices into its (flat) transitions.

    Only scalars are padded; per-transition quantities (observations, log-probabilities)
    stay flat in ``transitions`` and are padded on demand with :meth:`pad`, so memory
    stays proportional to the dataset even when episode lengths vary a lot.

    Attributes:
        transitions: the flat transitions ``[N]`` in dataset order (possibly memory-mapped;
            never written to).
        index: ``[E, T_max]`` int64, flat index of step ``t`` of episode ``e``; padding
            repeats the episode's last index (so gathering never goes out of range).
        mask: ``[E, T_max]`` bool, True on real steps.
        lengths: ``[E]`` int64 episode lengths.
        episode_ids: ``[E]`` the ``episode`` value of each episode.
        terminated: ``[E]`` bool, whether the episode ended by termination (otherwise it was
            truncated or cut by the end of the data).
        rewards: ``[E, T_max]`` float64 rewards, zero on padding.
        dropped: number of episodes dropped because they did not start at an initial state.
    """

    transitions: TensorDictBase
    index: torch.Tensor
    mask: torch.Tensor
    lengths: torch.Tensor
    episode_ids: torch.Tensor
    terminated: torch.Tensor
    rewards: torch.Tensor
    dropped: int = 0

    @property
    def num_episodes(self) -> int:
        return int(self.index.shape[0])

    @property
    def max_length(self) -> int:
        return int(self.index.shape[1])

    @property
    def num_steps(self) -> int:
        """Number of real (unpadded) transitions."""
        return int(self.lengths.sum())

    @property
    def starts(self) -> torch.Tensor:
        """``[E]`` flat index of each episode's first transition."""
        return self.index[:, 0]

    def flat_index(self) -> torch.Tensor:
        """``[num_steps]`` flat indices of the transitions used, episode by episode."""
        return self.index[self.mask]

    def pad(self, flat: torch.Tensor, fill: float = 0.0) -> torch.Tensor:
        """Pad a per-transition tensor ``[N, ...]`` (dataset order) to ``[E, T_max, ...]``.

        Args:
            flat: one entry per stored transition (``N`` = ``len(transitions)``), or one
                entry per used transition (``N`` = :attr:`num_steps`, in the order of
                :meth:`flat_index`).
            fill: value written on padding.
        """
        if flat.shape[0] == self.transitions.shape[0]:
            out = flat[self.index]
        elif flat.shape[0] == self.num_steps:
            out = flat.new_full((*self.index.shape, *flat.shape[1:]), fill)
            out[self.mask] = flat
            return out
        else:
            raise OPEError(
                f"Cannot pad a tensor of {flat.shape[0]} entries: expected one per stored "
                f"transition ({self.transitions.shape[0]}) or per used transition ({self.num_steps})"
            )
        m = self.mask.reshape(*self.mask.shape, *([1] * (flat.ndim - 1)))
        return torch.where(m, out, torch.as_tensor(fill, dtype=out.dtype))

    def discounts(self, gamma: float) -> torch.Tensor:
        """``[E, T_max]`` float64 discount powers ``gamma ** t``, zero on padding."""
        t = torch.arange(self.max_length, dtype=torch.float64)
        return torch.where(self.mask, gamma**t, 0.0)

    def returns(self, gamma: float) -> torch.Tensor:
        """``[E]`` float64 discounted return of each logged episode."""
        return (self.discounts(gamma) * self.rewards).sum(1)

    def initial_states(self) -> TensorDictBase:
        """The first transition of each episode, ``[E]`` (an in-memory copy)."""
        return self.transitions[self.starts].to_tensordict()

    def gather(self, key: str | tuple[str, ...]) -> torch.Tensor:
        """``[E, T_max, ...]`` values of a stored key (padding holds the last step's value)."""
        return self.transitions.get(key)[self.index]


def _read_flat(td: TensorDictBase, key, chunk_size: int) -> torch.Tensor:
    return torch.cat(
        [c.get(key).reshape(c.shape[0], -1) for _, c in iter_chunks(td.select(key), chunk_size)]
    )


def to_episodes(
    data: ReplayBuffer | TensorDictBase,
    *,
    on_missing_initial: Literal["error", "drop"] = "error",
    check_continuity: bool = True,
    chunk_size: int = 65536,
) -> Episodes:
    """Split logged transitions (dataset order) into episodes.

    Episodes are the contiguous blocks of the ``episode`` key (or, without it, the
    stretches ending at ``("next", "done")``). Off-policy estimates need whole episodes,
    from their initial state on, so the data are checked:

    - every ``episode`` id forms one contiguous block;
    - ``("next", "done")`` is True only on the last step of an episode;
    - where an ``is_init`` key (TorchRL's ``InitTracker``) is stored, each episode's first
      step has it set (else, where a ``step_count`` key (``StepCounter``) is stored, it is 0
      there). Without either, a cut first episode cannot be detected: datasets made by
      ``collect_dataset`` or read from Minari always start episodes at a reset;
    - with ``check_continuity``, ``("next", "observation")`` of step ``t`` equals
      ``observation`` of step ``t + 1`` inside an episode (catches spliced episodes).

    Args:
        data: a replay buffer of the data layer or a TensorDict of transitions ``[N]``.

    Keyword Args:
        on_missing_initial: ``"error"`` raises :class:`OPEError` when episodes do not start
            at an initial state (``is_init`` False, or ``step_count`` not 0); ``"drop"``
            drops them with a warning giving their count.
        check_continuity: check observation continuity inside episodes.
        chunk_size: transitions read at a time from (memory-mapped) storage.

    Returns:
        An :class:`Episodes`.

    Raises:
        OPEError: naming the key and the first offending transition index.

    Examples:
        >>> import torch
        >>> from tensordict import TensorDict
        >>> td = TensorDict({
        ...     "observation": torch.arange(5.).unsqueeze(-1),
        ...     "action": torch.zeros(5, dtype=torch.long),
        ...     "episode": torch.tensor([0, 0, 0, 1, 1]),
        ...     ("next", "observation"): torch.tensor([[1.], [2.], [3.], [4.], [5.]]),
        ...     ("next", "reward"): torch.ones(5, 1),
        ...     ("next", "done"): torch.tensor([[False], [False], [True], [False], [True]]),
        ... }, batch_size=[5])
        >>> eps = to_episodes(td)
        >>> eps.lengths.tolist(), eps.returns(0.5).tolist()
        ([3, 2], [1.75, 1.5])
    """
    td = stored_transitions(data)
    n = td.shape[0] if td.batch_dims else 0
    if n == 0:
        raise OPEError("The dataset holds no transitions")
    keys = set(td.keys(True, True))
    if REWARD not in keys:
        raise OPEError(f"Missing field {key_name(REWARD)!r}", field=key_name(REWARD))
    done = _read_flat(td, DONE, chunk_size).any(-1) if DONE in keys else None
    if EPISODE in keys:
        ep = _read_flat(td, EPISODE, chunk_size)[:, 0].long()
    elif done is not None:
        ep = torch.cat([torch.zeros(1, dtype=torch.long), done[:-1].long().cumsum(0)])
    else:
        raise OPEError(
            f"Cannot split the data into episodes: neither {EPISODE!r} nor "
            f"{key_name(DONE)!r} is stored",
            field=EPISODE,
        )

    ids, lengths = torch.unique_consecutive(ep, return_counts=True)
    starts = torch.cat([torch.zeros(1, dtype=torch.long), lengths.cumsum(0)[:-1]])
    if ids.unique().numel() != ids.numel():
        seen: set[int] = set()
        for i, s in zip(ids.tolist(), starts.tolist()):
            if i in seen:
                raise OPEError(
                    f"Episode {i} is not contiguous: it starts again at transition {s} "
                    f"(transitions must be in dataset order)",
                    field=EPISODE,
                    index=s,
                )
            seen.add(i)
    ends = starts + lengths - 1
    if done is not None:
        inner = done.clone()
        inner[ends] = False
        if inner.any():
            bad = int(inner.nonzero()[0])
            raise OPEError(
                f"{key_name(DONE)} is True at transition {bad}, which is not the last step of "
                f"its episode ({int(ep[bad])}): episode ids and done flags disagree",
                field=key_name(DONE),
                index=bad,
            )

    keep = torch.ones(ids.shape[0], dtype=torch.bool)
    marker = None
    if IS_INIT in keys:
        marker = IS_INIT
        init = _read_flat(td, IS_INIT, chunk_size).any(-1)
        not_first = init.clone()
        not_first[starts] = False
        if not_first.any():
            bad = int(not_first.nonzero()[0])
            raise OPEError(
                f"{IS_INIT!r} is True at transition {bad} inside episode {int(ep[bad])}: "
                "an episode boundary is missing",
                field=IS_INIT,
                index=bad,
            )
        keep = init[starts]
    elif STEP_COUNT in keys:
        marker = STEP_COUNT
        keep = _read_flat(td, STEP_COUNT, chunk_size)[:, 0][starts] == 0
    if marker is not None and not keep.all():
        n_bad = int((~keep).sum())
        first = int(starts[~keep][0])
        what = "False" if marker == IS_INIT else "not 0"
        msg = (
            f"{n_bad} episode(s) do not start at an initial state ({marker!r} is {what} on "
            f"their first step; first at transition {first})"
        )
        if on_missing_initial == "error":
            raise OPEError(
                msg + "; pass on_missing_initial='drop' to ignore them",
                field=marker,
                index=first,
            )
        if on_missing_initial != "drop":
            raise ValueError(
                f"on_missing_initial must be 'error' or 'drop', got {on_missing_initial!r}"
            )
        warnings.warn(msg + "; they are dropped", OPEWarning, stacklevel=2)
        if not keep.any():
            raise OPEError("No episode starts at an initial state", field=marker, index=first)

    if check_continuity and OBSERVATION in keys and NEXT_OBSERVATION in keys and n > 1:
        first_bad = None
        carry = None
        for start, chunk in iter_chunks(td.select(OBSERVATION, NEXT_OBSERVATION), chunk_size):
            obs = chunk.get(OBSERVATION).reshape(chunk.shape[0], -1)
            nxt = chunk.get(NEXT_OBSERVATION).reshape(chunk.shape[0], -1)
            if carry is None:
                prev, cur = nxt[:-1], obs[1:]
                idx = torch.arange(start + 1, start + chunk.shape[0])
            else:
                prev, cur = torch.cat([carry, nxt[:-1]]), obs
                idx = torch.arange(start, start + chunk.shape[0])
            same = (prev == cur) | (prev.isnan() & cur.isnan())
            mismatch = (ep[idx] == ep[idx - 1]) & ~same.all(-1)
            if mismatch.any():
                first_bad = int(idx[mismatch][0])
                break
            carry = nxt[-1:]
        if first_bad is not None:
            raise OPEError(
                f"Observation at transition {first_bad} differs from {key_name(NEXT_OBSERVATION)} "
                f"of transition {first_bad - 1} in the same episode ({int(ep[first_bad])}): "
                "the episode is not contiguous (pass check_continuity=False to skip this check)",
                field=OBSERVATION,
                index=first_bad,
            )

    dropped = int((~keep).sum())
    starts, lengths, ids = starts[keep], lengths[keep], ids[keep]
    t_max = int(lengths.max())
    steps = torch.arange(t_max)
    mask = steps < lengths[:, None]
    index = starts[:, None] + torch.minimum(steps, lengths[:, None] - 1)
    reward = _read_flat(td, REWARD, chunk_size)[:, 0].to(torch.float64)
    if not torch.isfinite(reward).all():
        bad = int((~torch.isfinite(reward)).nonzero()[0])
        raise OPEError(f"Non-finite reward at transition {bad}", field=key_name(REWARD), index=bad)
    rewards = torch.where(mask, reward[index], 0.0)
    ends = starts + lengths - 1
    if TERMINATED in keys:
        terminated = _read_flat(td, TERMINATED, chunk_size).any(-1)[ends]
    elif done is not None:
        terminated = done[ends]
    else:
        terminated = torch.zeros(ids.shape[0], dtype=torch.bool)
    return Episodes(
        transitions=td,
        index=index,
        mask=mask,
        lengths=lengths,
        episode_ids=ids,
        terminated=terminated,
        rewards=rewards,
        dropped=dropped,
    )


def is_one_step(data: ReplayBuffer | TensorDictBase) -> bool:
    """Whether every episode of ``data`` is one step (a log of one-step decisions, e.g.
    read with ``from_logged(..., horizon=1)``, whose ``metadata["horizon"]`` says so
    without reading the data).

    Examples:
        >>> import torch
        >>> from tensordict import TensorDict
        >>> from torchrl_offline.ope.episodes import is_one_step
        >>> def log(episode, done):
        ...     n = len(episode)
        ...     return TensorDict({
        ...         "observation": torch.zeros(n, 1), "episode": torch.tensor(episode),
        ...         ("next", "observation"): torch.zeros(n, 1),
        ...         ("next", "reward"): torch.ones(n, 1),
        ...         ("next", "done"): torch.tensor(done).reshape(n, 1),
        ...     }, [n])
        >>> is_one_step(log([0, 1, 2], [True] * 3)), is_one_step(log([0, 0, 1], [False, True, True]))
        (True, False)
    """
    metadata = getattr(data, "metadata", None)
    if isinstance(metadata, dict) and metadata.get("horizon") == 1:
        return True
    try:
        return to_episodes(data, check_continuity=False).max_length == 1
    except OPEError:
        return False
