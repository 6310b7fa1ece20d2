"""Per-transition entries that come from the episode order: returns to go, next actions.

Some algorithms need more than the transition itself. AWR and Cal-QL regress on the
discounted return of the rest of the logged episode (a Monte Carlo return, ``"mc_return"``);
ReBRAC penalises the target action's distance to the action the data took next
(``("next", "action")``). Both come from the order of the transitions within their
episodes, which an offline replay buffer keeps (``buffer.storage[i]`` is transition ``i``
of the dataset). :func:`derive_keys` finds the episodes, checks that the data really is in
episode order and adds the entries; :func:`with_derived_keys` does it for a replay buffer
(the trainers call it for the algorithms that declare ``derived_keys``).

Episodes: one ends at a done flag, where the ``"episode"`` id changes, or at the end of
the data (then it was cut: truncated). Inside an episode, step ``t + 1`` must start where
step ``t`` ended (``observation[t + 1] == ("next", "observation")[t]``): data that was
shuffled, or rows that do not follow each other, fail with the first index.

Examples:
    >>> import torch
    >>> from tensordict import TensorDict
    >>> from torchrl_offline.data.episodes import derive_keys
    >>> obs = torch.arange(5.0).unsqueeze(-1)  # two episodes: steps 0-2 and 3-4
    >>> data = TensorDict({
    ...     "observation": obs, "action": torch.arange(5.0).unsqueeze(-1) * 10,
    ...     ("next", "observation"): obs + 1, ("next", "reward"): torch.ones(5, 1),
    ...     ("next", "done"): torch.tensor([[False], [False], [True], [False], [True]])}, [5])
    >>> out = derive_keys(data, ["mc_return", ("next", "action")], gamma=0.5)
    >>> out["mc_return"].squeeze(-1).tolist()
    [1.75, 1.5, 1.0, 1.5, 1.0]
    >>> out["next", "action"].squeeze(-1).tolist()
    [10.0, 20.0, 20.0, 40.0, 40.0]
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

import numpy as np
import torch
from tensordict import TensorDictBase
from tensordict.utils import NestedKey, unravel_key
from torch import Tensor
from torchrl.data import ReplayBuffer

from torchrl_offline.data.errors import DatasetError
from torchrl_offline.data.keys import (
    ACTION,
    DONE,
    EPISODE,
    NEXT_OBSERVATION,
    OBSERVATION,
    REWARD,
    TERMINATED,
    key_name,
)

__all__ = [
    "DERIVED_KEYS",
    "MC_RETURN",
    "MC_TAIL_DISCOUNT",
    "MC_TAIL_OBSERVATION",
    "NEXT_ACTION",
    "TD_LAMBDA_RETURN",
    "EpisodeOrderError",
    "check_derived_keys",
    "derive_keys",
    "episode_ends",
    "monte_carlo_returns",
    "next_actions",
    "td_lambda_returns",
    "with_derived_keys",
]

#: The discounted return of the rest of the logged episode, shaped like the reward.
MC_RETURN = "mc_return"
#: The action the data took at the next step of the same episode.
NEXT_ACTION = ("next", "action")
#: ``gamma^(T - t + 1)`` for a step ``t`` of an episode cut after step ``T`` (a time limit,
#: or the end of the data), 0 for one that terminated: with :data:`MC_TAIL_OBSERVATION`,
#: ``mc_return + mc_tail_discount * V(mc_tail_observation)`` is the episode's return
#: bootstrapped where it was cut, as AWR's reference code computes it.
MC_TAIL_DISCOUNT = "mc_tail_discount"
#: The observation after the last step of the step's episode.
MC_TAIL_OBSERVATION = "mc_tail_observation"
#: The TD(lambda) return of the step (:func:`td_lambda_returns`), which needs the current
#: value function: derived as the Monte Carlo return (TD(1) with ``V = 0``), a column the
#: trainers then recompute with the value network during training
#: (:mod:`~torchrl_offline.trainers.td_lambda`).
TD_LAMBDA_RETURN = "td_lambda_return"

# Rows compared at a time when checking that consecutive steps follow each other.
_CHUNK = 65_536
# Episodes up to this length are discounted together, one vectorised step per position.
_SHORT = 256


class EpisodeOrderError(DatasetError):
    """The data has no episode boundaries, or its rows are not in episode order."""


def _flag(data: TensorDictBase, key: NestedKey) -> Tensor | None:
    if key not in data.keys(True):
        return None
    return data.get(key).reshape(data.shape[0], -1).any(-1)


def episode_ends(
    data: TensorDictBase, *, needed_for: str = "this", check_order: bool = True
) -> Tensor:
    """Where each episode of ``data`` (in dataset order) ends.

    An episode ends at ``("next", "done")``, where ``"episode"`` changes, and at the last
    row. Where ``("next", "observation")`` is stored, every step that does not end an
    episode must be followed by the step starting from its next observation.

    Args:
        data: transitions in dataset order, batch size ``[N]``.
        needed_for: what needs the episodes, for the error message (e.g.
            ``"'mc_return' (Monte Carlo returns)"``).
        check_order: check the order against the next observations.

    Returns:
        A boolean tensor of shape ``[N]``, ``True`` at the last step of each episode.

    Raises:
        EpisodeOrderError: ``data`` has neither done flags nor episode ids set (no
            boundaries to find and no next observations to check the order against), or
            a step is not followed by its continuation (naming the first such index).
    """
    n = data.shape[0]
    done = _flag(data, DONE)
    ids = data.get(EPISODE) if EPISODE in data.keys() else None
    has_next_obs = NEXT_OBSERVATION in data.keys(True) and OBSERVATION in data.keys()
    has_next_obs = has_next_obs and check_order
    ends = torch.zeros(n, dtype=torch.bool) if done is None else done.clone()
    if ids is not None and n > 1:
        ids = ids.reshape(n, -1)
        ends[:-1] |= (ids[1:] != ids[:-1]).any(-1)
    if n:
        ends[-1] = True
    if not has_next_obs and (done is None or not bool(done.any())) and ids is None:
        raise EpisodeOrderError(
            f"{needed_for} needs the data's episodes, but it has no episode boundaries: no "
            f"{key_name(DONE)} flag is set, there is no {EPISODE!r} id and no "
            f"{key_name(NEXT_OBSERVATION)} to check the order of the rows against. Store "
            "the episodes' done flags (or an 'episode' column) with the transitions, in "
            "time order.",
            field=key_name(DONE),
        )
    if has_next_obs:
        obs, nxt = data.get(OBSERVATION), data.get(NEXT_OBSERVATION)
        for start in range(0, n - 1, _CHUNK):
            stop = min(start + _CHUNK, n - 1)
            follows = (obs[start + 1 : stop + 1] == nxt[start:stop]).reshape(stop - start, -1)
            broken = ~follows.all(-1) & ~ends[start:stop]
            if bool(broken.any()):
                i = start + int(broken.nonzero()[0, 0])
                raise EpisodeOrderError(
                    f"{needed_for} needs the data in episode order, but step {i} does not "
                    f"end its episode and step {i + 1} does not start from its "
                    f"{key_name(NEXT_OBSERVATION)}: the rows are shuffled or an episode "
                    f"boundary is missing (set {key_name(DONE)} at index {i} if the episode "
                    "ends there).",
                    field=key_name(OBSERVATION),
                    index=i,
                )
    return ends


def monte_carlo_returns(reward: Tensor, ends: Tensor, *, gamma: float) -> Tensor:
    """The discounted return to go of every step: ``G_t = r_t + gamma * G_{t+1}`` inside
    an episode, ``G_t = r_t`` at its last step (a truncated episode's return is the
    return of what was logged).

    Args:
        reward: rewards in dataset order, ``[N]`` or ``[N, 1]``.
        ends: :func:`episode_ends` of the data.
        gamma: the discount.

    Returns:
        A float32 tensor shaped like ``reward``.

    Examples:
        >>> import torch
        >>> from torchrl_offline.data.episodes import monte_carlo_returns
        >>> monte_carlo_returns(torch.ones(3), torch.tensor([False, False, True]), gamma=0.5)
        tensor([1.7500, 1.5000, 1.0000])
    """
    out = _discounted_returns(reward.reshape(-1).double().numpy(), ends.reshape(-1).numpy(), gamma)
    return torch.from_numpy(out).to(torch.float32).reshape(reward.shape)


def td_lambda_returns(
    reward: Tensor,
    ends: Tensor,
    next_value: Tensor,
    *,
    terminated: Tensor | None,
    gamma: float,
    lmbda: float,
) -> Tensor:
    r"""The TD(:math:`\lambda`) return of every step, bootstrapped with ``next_value``.

    Inside an episode ``G_t = r_t + gamma (1 - term_t) [(1 - lmbda) V(s_{t+1}) + lmbda
    G_{t+1}]``; at an episode's last step (cut or terminated) ``G_T = r_T + gamma (1 -
    term_T) V(s_{T+1})``. ``lmbda=1`` gives the Monte Carlo return bootstrapped with
    ``V`` where the episode was cut, ``lmbda=0`` the one-step TD target. It is the
    recurrence of :func:`monte_carlo_returns` on the rewards ``r_t + gamma (1 - term_t)
    (1 - lmbda) V(s_{t+1})`` (``r_T + gamma (1 - term_T) V(s_{T+1})`` at the last step)
    with discount ``gamma * lmbda``: one vectorised pass over the data.

    Args:
        reward: rewards in dataset order, ``[N]`` or ``[N, 1]``.
        ends: :func:`episode_ends` of the data (``[N]``).
        next_value: ``V(s_{t+1})`` of every step (``[N]`` or ``[N, 1]``).

    Keyword Args:
        terminated (Tensor or None): ``("next", "terminated")`` of every step; a
            terminated step ends its episode and is not bootstrapped. ``None``: no step
            terminated (every episode was cut).
        gamma (float): the discount.
        lmbda (float): :math:`\lambda`, in ``[0, 1]``.

    Returns:
        A float32 tensor shaped like ``reward``.

    Examples:
        >>> import torch
        >>> from torchrl_offline.data.episodes import td_lambda_returns
        >>> ends = torch.tensor([False, False, True])  # one episode, cut after step 2
        >>> td_lambda_returns(torch.ones(3), ends, torch.full((3,), 10.0), terminated=None,
        ...                   gamma=0.5, lmbda=0.5)
        tensor([4.7500, 5.0000, 6.0000])
        >>> td_lambda_returns(torch.ones(3), ends, torch.full((3,), 10.0),
        ...                   terminated=ends, gamma=0.5, lmbda=1.0)  # terminated: plain return
        tensor([1.7500, 1.5000, 1.0000])
    """
    if not 0.0 <= lmbda <= 1.0:
        raise ValueError(f"lmbda must be in [0, 1], got {lmbda}")
    n = reward.numel()
    if next_value.numel() != n or ends.numel() != n:
        raise ValueError(
            f"reward, ends and next_value must have one entry per step, got {n}, "
            f"{ends.numel()} and {next_value.numel()}"
        )
    end = ends.reshape(-1).numpy().copy()
    cont = np.full(n, float(gamma))  # gamma (1 - term_t)
    if terminated is not None:
        term = terminated.reshape(-1).numpy().astype(bool)
        end |= term
        cont[term] = 0.0
    value = next_value.reshape(-1).double().numpy()
    weight = np.where(end, 1.0, 1.0 - lmbda)  # the share of V(s_{t+1}) in the target
    r = reward.reshape(-1).double().numpy() + cont * weight * value
    out = _discounted_returns(r, end, gamma * lmbda)
    return torch.from_numpy(out).to(torch.float32).reshape(reward.shape)


def _discounted_returns(r: np.ndarray, end: np.ndarray, discount: float) -> np.ndarray:
    """``G_t = r_t + discount * G_{t+1}`` inside an episode, ``G_t = r_t`` at its last
    step (``end``), for float64 ``r`` in dataset order."""
    if r.size and not end[-1]:
        raise ValueError("the data's last step must end an episode (see episode_ends)")
    out = np.empty_like(r)
    last = np.flatnonzero(end)
    first = np.concatenate(([0], last[:-1] + 1))
    lengths = last - first + 1
    short = lengths <= _SHORT
    # Short episodes together: position k from the end of every episode at once.
    if short.any():
        s_last, s_len = last[short], lengths[short]
        out[s_last] = r[s_last]
        for k in range(1, int(s_len.max())):
            live = s_len > k
            idx = s_last[live] - k
            out[idx] = r[idx] + discount * out[idx + 1]
    # Long episodes together too, a block of _SHORT steps at a time from their ends.
    if (~short).any():
        _long_returns(r, first[~short], last[~short], discount, out)
    return out


def _long_returns(
    r: np.ndarray, first: np.ndarray, last: np.ndarray, discount: float, out: np.ndarray
) -> None:
    """``G_t = sum_k discount^k r_{t+k}`` over whole episodes (``first[e]`` to
    ``last[e]``) into ``out``: block ``j`` from the end of every episode at once, as a
    triangular matrix of discounts within the block plus the return carried from the
    block after it; an episode's earliest block is padded with zero rewards before its
    first step."""
    k = np.arange(_SHORT)
    within = np.triu(discount ** np.clip(k[None, :] - k[:, None], 0, None))  # d^(j - i), j >= i
    to_carry = discount ** (_SHORT - k)  # the carried return's discount at each position
    carry = np.zeros(len(last))
    for j in range(int(np.ceil((last - first + 1).max() / _SHORT))):
        live = last - first + 1 > j * _SHORT
        idx = (last[live] - (j + 1) * _SHORT + 1)[:, None] + k[None, :]  # [E, _SHORT]
        inside = idx >= first[live][:, None]
        block = np.where(inside, r[np.maximum(idx, 0)], 0.0) @ within.T
        block += to_carry[None, :] * carry[live][:, None]
        out[idx[inside]] = block[inside]
        carry[live] = block[:, 0]


def next_actions(action: Tensor, ends: Tensor) -> Tensor:
    """The action taken at the next step of the same episode. At an episode's last step
    there is none in the data: the step's own action stands in (a terminal step's target
    does not use it; after a truncation, it is the closest the data has).

    Examples:
        >>> import torch
        >>> from torchrl_offline.data.episodes import next_actions
        >>> next_actions(torch.tensor([1, 2, 3]), torch.tensor([False, True, True])).tolist()
        [2, 2, 3]
    """
    out = action.clone()
    if action.shape[0] > 1:
        keep = ~ends[:-1]
        out[:-1][keep] = action[1:][keep]
    return out


def _mc_return(data: TensorDictBase, ends: Tensor, gamma: float) -> Tensor:
    return monte_carlo_returns(data.get(REWARD), ends, gamma=gamma)


def _episode_last(ends: Tensor) -> Tensor:
    """For every step, the index of its episode's last step."""
    last = ends.nonzero().squeeze(-1)
    episode = torch.cumsum(ends.long(), 0) - ends.long()  # the episode number of each step
    return last[episode]


def _tail_discount(data: TensorDictBase, ends: Tensor, gamma: float) -> Tensor:
    """``gamma^(T - t + 1)`` where the episode was cut (truncated, or the end of the data),
    0 where it terminated: what multiplies the value of the state after the last step."""
    last = _episode_last(ends)
    steps = (last - torch.arange(ends.shape[0]) + 1).double()
    terminated = _flag(data, TERMINATED)
    cut = torch.ones_like(ends) if terminated is None else ~terminated[last]
    out = torch.pow(float(gamma), steps) * cut
    return out.to(torch.float32).unsqueeze(-1)


def _tail_observation(data: TensorDictBase, ends: Tensor, gamma: float) -> Tensor:
    """The observation after the last step of each step's episode."""
    return data.get(NEXT_OBSERVATION)[_episode_last(ends)]


def _next_action(data: TensorDictBase, ends: Tensor, gamma: float) -> Tensor:
    return next_actions(data.get(ACTION), ends)


#: The keys :func:`derive_keys` can add, with what each is made from.
DERIVED_KEYS: dict[NestedKey, tuple[str, tuple[NestedKey, ...], Callable[..., Tensor]]] = {
    MC_RETURN: ("Monte Carlo returns", (REWARD,), _mc_return),
    NEXT_ACTION: ("the next actions", (ACTION,), _next_action),
    MC_TAIL_DISCOUNT: ("the discount to a cut episode's end", (REWARD,), _tail_discount),
    MC_TAIL_OBSERVATION: (
        "the observation after a cut episode's end",
        (NEXT_OBSERVATION,),
        _tail_observation,
    ),
    TD_LAMBDA_RETURN: ("TD(lambda) returns", (REWARD,), _mc_return),
}


def check_derived_keys(keys: Iterable[NestedKey]) -> tuple[NestedKey, ...]:
    """``keys`` as a tuple of known derived keys (:data:`DERIVED_KEYS`).

    Raises:
        ValueError: a key this module cannot derive.
    """
    out = tuple(unravel_key(k) for k in keys)
    for k in out:
        if k not in DERIVED_KEYS:
            known = ", ".join(repr(key_name(d)) for d in DERIVED_KEYS)
            raise ValueError(f"cannot derive {key_name(k)!r} from the data; known: {known}")
    return out


def derive_keys(
    data: TensorDictBase,
    keys: Iterable[NestedKey],
    *,
    gamma: float = 0.99,
    check_order: bool = True,
) -> TensorDictBase:
    """``data`` with the derived entries ``keys`` added (a shallow copy: the stored
    entries, memory-mapped or not, are shared, not copied).

    Args:
        data: transitions in dataset order, batch size ``[N]``.
        keys: entries of :data:`DERIVED_KEYS`: ``"mc_return"``, ``("next", "action")``.
        gamma: the discount of the Monte Carlo returns.
        check_order: check that consecutive steps of an episode follow each other
            (:func:`episode_ends`); ``False`` for steps known to be in order (a
            collector's, one env).

    Raises:
        EpisodeOrderError: no episode boundaries, or rows not in episode order.
        DatasetError: an entry the derivation needs is missing.
        ValueError: an unknown key.
    """
    keys = check_derived_keys(keys)
    out = data.copy()
    if not keys:
        return out
    if out.is_locked:
        out = out.clone(recurse=False)
        out.unlock_()
    wanted = " and ".join(f"{key_name(k)!r} ({DERIVED_KEYS[k][0]})" for k in keys)
    for k in keys:
        for source in DERIVED_KEYS[k][1]:
            if source not in data.keys(True):
                raise DatasetError(
                    f"{wanted} cannot be derived: the data has no {key_name(source)!r} entry",
                    field=key_name(source),
                )
    ends = episode_ends(data, needed_for=wanted, check_order=check_order)
    for k in keys:
        out.set(k, DERIVED_KEYS[k][2](data, ends, float(gamma)))
    return out


def with_derived_keys(buffer: ReplayBuffer, keys: Iterable[NestedKey], *, gamma: float) -> Any:
    """A replay buffer like ``buffer`` whose samples also hold the derived ``keys``.

    ``buffer`` must be an offline buffer over its whole dataset in dataset order (what
    :func:`~torchrl_offline.data.load_minari`, :func:`~torchrl_offline.data.from_logged`
    and :func:`~torchrl_offline.data.make_replay_buffer` return, or a data-parallel shard
    of one). The new buffer shares ``buffer``'s stored entries, sampler, batch size,
    transform, metadata and path; the derived entries are held in memory. With no
    ``keys``, ``buffer`` itself is returned.

    Raises:
        EpisodeOrderError: as :func:`derive_keys`.
    """
    from torchrl_offline.data.storage import OfflineReplayBuffer, OfflineTensorStorage

    keys = check_derived_keys(keys)
    if not keys:
        return buffer
    stored = buffer.storage._storage
    if not isinstance(stored, TensorDictBase) or len(buffer.storage) != stored.shape[0]:
        raise DatasetError(
            "derived entries need a replay buffer whose storage holds the whole dataset in "
            "order (load_minari, from_logged or make_replay_buffer)"
        )
    data = derive_keys(stored, keys, gamma=gamma)
    transform = buffer.transform
    if transform is not None and len(getattr(transform, "transforms", [transform])) == 0:
        transform = None
    return OfflineReplayBuffer(
        storage=OfflineTensorStorage(data, max_size=data.shape[0]),
        sampler=buffer.sampler,
        batch_size=buffer.batch_size,
        transform=transform,
        metadata=getattr(buffer, "metadata", None),
        path=getattr(buffer, "path", None),
    )
