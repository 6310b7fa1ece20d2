"""Policies to evaluate on decision logs, built from what recommender and pricing teams have.

A team evaluating a new recommendation, pricing or ad policy on a log of single decisions
usually holds either a probability table (per context segment and/or slot position) or a
scoring model (one score per item). Each policy here turns one of these into a TorchRL
actor over ``"observation"`` (the context features) and optionally ``"position"``, writing
``"action"`` (an item index) and its ``"action_log_prob"``, with the EXACT probability of
every action, so importance weights of logged actions are exact:

- :class:`TablePolicy`: ``probs[context_id, (position,) action]`` from a table;
- :class:`SoftmaxPolicy`: ``softmax(scores / temperature)``;
- :class:`EpsilonGreedyPolicy`: the best-scored item with probability ``1 - epsilon``
  (split evenly between tied items), uniform otherwise;
- :class:`TopKPolicy`: uniform over the ``k`` best-scored items (probability 0, log-probability
  ``-inf``, outside them; the estimators give such logged actions weight 0).

Each has ``probs`` / ``log_prob`` / ``sample`` / ``greedy_action`` on tensors and
``get_dist(tensordict)`` (a ``Categorical``), so :class:`~torchrl_offline.ope.EvaluationPolicy`
and every estimator take it unchanged. Under ``ExplorationType.DETERMINISTIC`` (or ``MODE``)
the actor returns the most probable action (the first one on ties).

A *scorer* is a ``torch.nn.Module`` or any callable mapping observations ``[B, ...]`` to
scores ``[B, num_actions]`` (called as ``scorer(observation, position)`` when the policy
reads a position key).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import torch
from tensordict import TensorDictBase
from tensordict.nn import TensorDictModuleBase
from torchrl.envs.utils import ExplorationType, exploration_type

from torchrl_offline.data.keys import ACTION, ACTION_LOG_PROB, OBSERVATION
from torchrl_offline.ope.result import OPEError

__all__ = [
    "DecisionPolicy",
    "EpsilonGreedyPolicy",
    "SoftmaxPolicy",
    "TablePolicy",
    "TopKPolicy",
]

#: Largest deviation of a probability table's row sum from 1.
ROW_SUM_TOLERANCE = 1e-6

_GREEDY_EXPLORATION = (ExplorationType.DETERMINISTIC, ExplorationType.MODE, ExplorationType.MEAN)


class DecisionPolicy(TensorDictModuleBase):
    """A discrete policy with exact action probabilities, as a TorchRL actor.

    Subclasses define :meth:`log_probs` (``[B, num_actions]`` float64 log-probabilities);
    everything else (sampling, greedy action, log-probability of given actions, the
    TensorDict interface) is shared.

    Args:
        observation_key: the context features' key.
        position_key: the slot position's key, or ``None`` for policies that ignore it.
        action_key: where the actor writes its action.
        log_prob_key: where the actor writes the action's log-probability.
    """

    def __init__(
        self,
        *,
        observation_key: str = OBSERVATION,
        position_key: str | None = None,
        action_key: str = ACTION,
        log_prob_key: str = ACTION_LOG_PROB,
    ):
        super().__init__()
        self.observation_key = observation_key
        self.position_key = position_key
        self.action_key = action_key
        self.log_prob_key = log_prob_key
        self.in_keys = [observation_key] + ([position_key] if position_key else [])
        self.out_keys = [action_key, log_prob_key]

    # -------------------------------------------------------------- the math
    def log_probs(
        self, observation: torch.Tensor, position: torch.Tensor | None = None
    ) -> torch.Tensor:
        """Log-probabilities of every action, float64 ``[B, num_actions]`` (``-inf``: never)."""
        raise NotImplementedError

    def probs(
        self, observation: torch.Tensor, position: torch.Tensor | None = None
    ) -> torch.Tensor:
        """Probabilities of every action, float64 ``[B, num_actions]``."""
        return self.log_probs(observation, position).exp()

    def log_prob(
        self,
        observation: torch.Tensor,
        action: torch.Tensor,
        position: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Exact log-probability of ``action`` (indices ``[B]``), float64 ``[B]``.

        Raises:
            OPEError: an action outside ``0 .. num_actions - 1``, naming the first such row.
        """
        lp = self.log_probs(observation, position)
        index = torch.as_tensor(action).reshape(lp.shape[0]).long().to(lp.device)
        _check_range(index, lp.shape[-1], "action", "actions of the policy")
        return lp.gather(-1, index[:, None]).squeeze(-1)

    def sample(
        self,
        observation: torch.Tensor,
        position: torch.Tensor | None = None,
        *,
        num_samples: int | None = None,
        generator: torch.Generator | None = None,
    ) -> torch.Tensor:
        """Actions drawn from the policy: ``[B]``, or ``[num_samples, B]``."""
        p = self.probs(observation, position)
        n = 1 if num_samples is None else int(num_samples)
        draws = torch.multinomial(p, n, replacement=True, generator=generator)
        return draws[:, 0] if num_samples is None else draws.T.contiguous()

    def greedy_action(
        self, observation: torch.Tensor, position: torch.Tensor | None = None
    ) -> torch.Tensor:
        """The most probable action ``[B]`` (the lowest index on ties)."""
        return self.log_probs(observation, position).argmax(-1)

    # ---------------------------------------------------- TorchRL interface
    def _read(self, td: TensorDictBase) -> tuple[torch.Tensor, torch.Tensor | None]:
        position = td.get(self.position_key) if self.position_key else None
        return td.get(self.observation_key), position

    def get_dist(self, td: TensorDictBase) -> torch.distributions.Categorical:
        """The policy at the contexts of ``td`` as a ``Categorical`` over action indices."""
        return torch.distributions.Categorical(logits=self.log_probs(*self._read(td)))

    def forward(self, td: TensorDictBase) -> TensorDictBase:
        """Writes an action (sampled, or the greedy one under a deterministic exploration
        type) and its log-probability; any batch shape, including none (one context)."""
        observation, position = self._read(td)
        batch = td.batch_size
        observation = observation.reshape(-1, *observation.shape[len(batch) :])
        if position is not None:
            position = position.reshape(observation.shape[0], -1)
        lp = self.log_probs(observation, position)
        if exploration_type() in _GREEDY_EXPLORATION:
            action = lp.argmax(-1)
        else:
            action = torch.multinomial(lp.exp(), 1).squeeze(-1)
        td.set(self.action_key, action.reshape(batch))
        td.set(self.log_prob_key, lp.gather(-1, action[:, None]).reshape(batch))
        return td


def _check_range(index: torch.Tensor, size: int, field: str, what: str) -> None:
    bad = (index < 0) | (index >= size)
    if bad.any():
        i = int(bad.nonzero()[0])
        raise OPEError(
            f"{field} {int(index[i])} at row {i} is outside the {size} {what} (0 .. {size - 1})",
            field=field,
            index=i,
        )


def _as_index(values: torch.Tensor, field: str) -> torch.Tensor:
    """Integral values (integer or whole floats) ``[B]`` as long indices."""
    if values.dtype.is_floating_point:
        bad = values != values.round()
        if bad.any():
            i = int(bad.nonzero()[0])
            raise OPEError(
                f"{field} at row {i} is {values[i].item()}, not a whole number (an index)",
                field=field,
                index=i,
            )
    return values.long()


def _position_index(position: torch.Tensor | None, key: str | None, rows: int) -> torch.Tensor:
    if position is None:
        raise OPEError(f"The policy reads positions ({key!r}) but none were given", field=key)
    return _as_index(torch.as_tensor(position).reshape(rows), str(key))


# ------------------------------------------------------------------ table
class TablePolicy(DecisionPolicy):
    """A probability table indexed by discrete context features and/or the position.

    ``probs`` has one leading dimension per context feature (in ``context_features``
    order), then one for the position if ``position_key`` is given, then the actions:
    ``probs[context_id, action]``, ``probs[c1, c2, action]``, ``probs[context_id, position,
    action]``, ``probs[position, action]`` (no context feature) or ``probs[action]`` (the
    same distribution everywhere).

    Args:
        probs: the table (tensor or array-like); every row (last dimension) non-negative,
            summing to 1 within :data:`ROW_SUM_TOLERANCE`.

    Keyword Args:
        context_features: which columns of the observation index the table's leading
            dimensions (whole numbers); by default its first ``k`` columns, ``k`` the
            number of context dimensions of the table. A 1-D observation ``[B]`` is column 0.
        position_key: the position key, if the table has a position dimension.
        observation_key: the context features' key.

    Raises:
        OPEError: a negative or NaN entry or a row not summing to 1, naming the row.

    Examples:
        >>> import torch
        >>> from torchrl_offline.ope import TablePolicy
        >>> pi = TablePolicy([[0.7, 0.2, 0.1], [0.0, 0.5, 0.5]])
        >>> obs = torch.tensor([[0.0], [1.0]])
        >>> pi.log_prob(obs, torch.tensor([0, 0])).exp()
        tensor([0.7000, 0.0000], dtype=torch.float64)
        >>> pi.greedy_action(obs)
        tensor([0, 1])
    """

    def __init__(
        self,
        probs: Any,
        *,
        context_features: Sequence[int] | None = None,
        position_key: str | None = None,
        observation_key: str = OBSERVATION,
    ):
        super().__init__(observation_key=observation_key, position_key=position_key)
        table = torch.as_tensor(probs, dtype=torch.float64)
        n_context = table.ndim - 1 - (position_key is not None)
        if n_context < 0:
            raise OPEError(
                f"The table has {table.ndim} dimension(s): it needs one for the actions"
                + (" and one for the position" if position_key else ""),
                field="probs",
            )
        if context_features is None:
            context_features = tuple(range(n_context))
        self.context_features = tuple(int(f) for f in context_features)
        if len(self.context_features) != n_context:
            raise OPEError(
                f"The table has {n_context} context dimension(s) but {len(self.context_features)} "
                "context feature(s) were named",
                field="context_features",
            )
        _check_table(table)
        self.register_buffer("table", table)
        self.table: torch.Tensor
        self.num_actions = int(table.shape[-1])

    def log_probs(
        self, observation: torch.Tensor, position: torch.Tensor | None = None
    ) -> torch.Tensor:
        obs = torch.as_tensor(observation)
        rows = obs.shape[0]
        cols = obs.reshape(rows, -1)
        index: list[torch.Tensor] = []
        for dim, feature in enumerate(self.context_features):
            if feature >= cols.shape[1]:
                raise OPEError(
                    f"Context feature {feature} is not a column of the {cols.shape[1]}-column "
                    f"{self.observation_key!r}",
                    field=self.observation_key,
                )
            ids = _as_index(cols[:, feature], f"{self.observation_key}[:, {feature}]")
            _check_range(
                ids, self.table.shape[dim], f"{self.observation_key}[:, {feature}]", "table rows"
            )
            index.append(ids)
        if self.position_key is not None:
            pos = _position_index(position, self.position_key, rows)
            _check_range(pos, self.table.shape[len(index)], self.position_key, "positions")
            index.append(pos)
        p = self.table[tuple(index)] if index else self.table.expand(rows, -1)
        return p.log()


def _check_table(table: torch.Tensor) -> None:
    """Every entry finite and non-negative, every row summing to 1: else an error naming the row."""
    rows = table.reshape(-1, table.shape[-1])
    sums = rows.sum(-1)
    bad_entry = (~torch.isfinite(rows) | (rows < 0)).any(-1)
    bad_sum = (sums - 1).abs() > ROW_SUM_TOLERANCE
    for bad, what in ((bad_entry, "a negative or non-finite probability"), (bad_sum, None)):
        if bad.any():
            i = int(bad.nonzero()[0])
            row = tuple(int(j) for j in torch.unravel_index(torch.tensor(i), table.shape[:-1]))
            detail = what or f"probabilities summing to {sums[i].item():.9g}, not 1"
            raise OPEError(
                f"Row {list(row)} of the probability table has {detail}: {rows[i].tolist()}",
                field="probs",
                index=i,
            )


# ---------------------------------------------------------------- scorers
class _ScoredPolicy(DecisionPolicy):
    """A policy derived from a scoring model's scores ``[B, num_actions]``."""

    def __init__(
        self,
        scorer: Callable[..., torch.Tensor],
        *,
        num_actions: int | None = None,
        observation_key: str = OBSERVATION,
        position_key: str | None = None,
    ):
        super().__init__(observation_key=observation_key, position_key=position_key)
        if not callable(scorer):
            raise TypeError(f"scorer must be a torch module or a callable, got {type(scorer)}")
        self.scorer = scorer  # an nn.Module is registered as a submodule
        self.num_actions = num_actions

    def scores(
        self, observation: torch.Tensor, position: torch.Tensor | None = None
    ) -> torch.Tensor:
        """The scorer's scores, float64 ``[B, num_actions]``, checked finite and of the right width."""
        obs = torch.as_tensor(observation)
        if self.position_key is None:
            out = self.scorer(obs)
        else:
            pos = _position_index(position, self.position_key, obs.shape[0])
            out = self.scorer(obs, pos)
        out = torch.as_tensor(out).to(torch.float64)
        if out.ndim != 2 or out.shape[0] != obs.shape[0]:
            raise OPEError(
                f"The scorer returned scores of shape {tuple(out.shape)} for {obs.shape[0]} "
                "observations; expected [batch, num_actions]",
                field="scores",
            )
        if self.num_actions is not None and out.shape[-1] != self.num_actions:
            raise OPEError(
                f"The scorer returned {out.shape[-1]} scores per row, not num_actions="
                f"{self.num_actions}",
                field="scores",
            )
        bad = ~torch.isfinite(out).all(-1)
        if bad.any():
            i = int(bad.nonzero()[0])
            raise OPEError(
                f"The scorer's scores at row {i} are not finite", field="scores", index=i
            )
        return out


class SoftmaxPolicy(_ScoredPolicy):
    """``pi(a | x) = softmax(scores(x) / temperature)[a]``.

    Args:
        scorer: a torch module or callable ``observation -> scores [B, num_actions]``.
        temperature: > 0; small is near-greedy, large near-uniform.

    Keyword Args:
        num_actions: checked against the scorer's output width, if given.
        observation_key: the context features' key.
        position_key: a position key passed to the scorer as its second argument.

    Examples:
        >>> import torch
        >>> from torchrl_offline.ope import SoftmaxPolicy
        >>> pi = SoftmaxPolicy(lambda obs: obs, temperature=1.0)
        >>> obs = torch.tensor([[0.0, 0.0, 2.0]])
        >>> pi.probs(obs).round(decimals=4)
        tensor([[0.1065, 0.1065, 0.7870]], dtype=torch.float64)
    """

    def __init__(self, scorer: Callable[..., torch.Tensor], temperature: float = 1.0, **kwargs):
        super().__init__(scorer, **kwargs)
        if not temperature > 0:
            raise ValueError(f"temperature must be > 0, got {temperature}")
        self.temperature = float(temperature)

    def log_probs(
        self, observation: torch.Tensor, position: torch.Tensor | None = None
    ) -> torch.Tensor:
        return torch.log_softmax(self.scores(observation, position) / self.temperature, -1)


class EpsilonGreedyPolicy(_ScoredPolicy):
    """The best-scored action with probability ``1 - epsilon``, uniform with ``epsilon``.

    Tied best scores share the ``1 - epsilon`` evenly: ``pi(a | x) = epsilon / n +
    (1 - epsilon) * [a is a best action] / (number of best actions)``.

    Args:
        scorer: a torch module or callable ``observation -> scores [B, num_actions]``.
        epsilon: in ``[0, 1]``.

    Examples:
        >>> import torch
        >>> from torchrl_offline.ope import EpsilonGreedyPolicy
        >>> pi = EpsilonGreedyPolicy(lambda obs: obs, epsilon=0.2)
        >>> pi.probs(torch.tensor([[1.0, 3.0, 3.0, 0.0]]))
        tensor([[0.0500, 0.4500, 0.4500, 0.0500]], dtype=torch.float64)
    """

    def __init__(self, scorer: Callable[..., torch.Tensor], epsilon: float, **kwargs):
        super().__init__(scorer, **kwargs)
        if not 0 <= epsilon <= 1:
            raise ValueError(f"epsilon must be in [0, 1], got {epsilon}")
        self.epsilon = float(epsilon)

    def log_probs(
        self, observation: torch.Tensor, position: torch.Tensor | None = None
    ) -> torch.Tensor:
        s = self.scores(observation, position)
        best = (s == s.max(-1, keepdim=True).values).to(torch.float64)
        n = s.shape[-1]
        p = self.epsilon / n + (1 - self.epsilon) * best / best.sum(-1, keepdim=True)
        return p.log()


class TopKPolicy(_ScoredPolicy):
    """Uniform over the ``k`` best-scored actions; probability 0 outside them.

    Scores tied at the ``k``-th place share the slots left after the strictly better ones
    (each is in the top ``k`` with that chance under random tie-breaking), so the
    probabilities stay exact: ``1 / k`` for an action above the ``k``-th score, ``(k -
    above) / (k * tied)`` for one of the ``tied`` actions at it, 0 below it.

    Args:
        scorer: a torch module or callable ``observation -> scores [B, num_actions]``.
        k: how many top actions, ``1 <= k``; checked against the number of actions.

    Examples:
        >>> import torch
        >>> from torchrl_offline.ope import TopKPolicy
        >>> pi = TopKPolicy(lambda obs: obs, k=2)
        >>> obs = torch.tensor([[0.1, 0.9, 0.5, 0.3]])
        >>> pi.probs(obs)
        tensor([[0.0000, 0.5000, 0.5000, 0.0000]], dtype=torch.float64)
        >>> pi.log_prob(obs, torch.tensor([0]))
        tensor([-inf], dtype=torch.float64)
    """

    def __init__(self, scorer: Callable[..., torch.Tensor], k: int, **kwargs):
        super().__init__(scorer, **kwargs)
        if int(k) != k or k < 1:
            raise ValueError(f"k must be a positive integer, got {k}")
        self.k = int(k)

    def log_probs(
        self, observation: torch.Tensor, position: torch.Tensor | None = None
    ) -> torch.Tensor:
        s = self.scores(observation, position)
        if self.k > s.shape[-1]:
            raise OPEError(f"k={self.k} is more than the scorer's {s.shape[-1]} actions", field="k")
        kth = s.topk(self.k, -1).values[:, -1:]
        above = (s > kth).to(torch.float64)
        tied = (s == kth).to(torch.float64)
        left = self.k - above.sum(-1, keepdim=True)
        p = above / self.k + tied * left / (self.k * tied.sum(-1, keepdim=True))
        return p.log()
