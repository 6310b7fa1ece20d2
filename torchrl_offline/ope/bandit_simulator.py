"""A recommender-style contextual-bandit simulator with a known click model, for testing
and studying off-policy estimators on logs of one-step decisions against an exact truth.

A finite population of users (contexts, Gaussian features) meets a catalogue of items
(actions). The probability that a user clicks an item is its attractiveness
:math:`\\sigma(x^\\top W_a + b_a)`; with slots (positions), a slate shows one item per slot
and, as in the position-based click model (Craswell et al., 2008), a click at slot ``k``
also needs the slot to be examined, with probability :math:`\\theta_k = 1 / \\log_2(k + 2)`.
A policy (any :class:`~torchrl_offline.ope.DecisionPolicy`) picks each slot's item
independently from ``pi(. | x, k)`` (a slate may repeat an item).

:meth:`BanditSimulator.simulate` draws a log in the layout ``from_logged(..., horizon=1)``
writes (one row per decision or per slot, every row a terminal one-step episode, the
logging propensity in ``action_prob``), and :meth:`BanditSimulator.value` gives any
policy's exact value (users are drawn uniformly from the finite population, so the
expectation is a finite sum).
"""

from __future__ import annotations

import math
from typing import Any

import torch
from tensordict import TensorDict
from torch import nn

from torchrl_offline.data.keys import (
    ACTION,
    ACTION_PROB,
    DONE,
    EPISODE,
    NEXT_OBSERVATION,
    OBSERVATION,
    POSITION,
    REWARD,
    TERMINATED,
    TRUNCATED,
)

__all__ = ["BanditSimulator", "LinearScorer"]


class LinearScorer(nn.Module):
    """Item scores ``x @ weight + bias`` (optionally scaled per slot by ``sharpness[k]``),
    the scoring model of the simulator's policies.

    Examples:
        >>> import torch
        >>> scorer = LinearScorer(torch.eye(2), torch.zeros(2), sharpness=torch.tensor([2.0, 1.0]))
        >>> scorer(torch.tensor([[1.0, 0.0]]), torch.tensor([0]))
        tensor([[2., 0.]])
    """

    def __init__(
        self, weight: torch.Tensor, bias: torch.Tensor, *, sharpness: torch.Tensor | None = None
    ):
        super().__init__()
        self.register_buffer("weight", torch.as_tensor(weight, dtype=torch.float32))
        self.register_buffer("bias", torch.as_tensor(bias, dtype=torch.float32))
        self.sharpness = None if sharpness is None else torch.as_tensor(sharpness).float()

    def forward(self, observation: torch.Tensor, position: torch.Tensor | None = None):
        scores = observation.float() @ self.weight + self.bias
        if self.sharpness is not None and position is not None:
            scores = scores * self.sharpness[torch.as_tensor(position).long()][:, None]
        return scores


class BanditSimulator:
    """Users, items, optional slots, a known click model; logs and exact policy values.

    Args:
        num_contexts: size of the user population (each decision draws one uniformly).
        num_features: context features per user.
        num_actions: items in the catalogue.
        num_positions: slots per slate (``None``: one decision per context, no position).

    Keyword Args:
        reward_noise: ``"bernoulli"`` (clicks, 0/1) or the standard deviation of Gaussian
            noise around the click probability.
        seed: seed of the population and the click model.

    Examples:
        >>> from torchrl_offline.ope import SoftmaxPolicy
        >>> sim = BanditSimulator(num_contexts=50, num_actions=4, seed=0)
        >>> logger = SoftmaxPolicy(sim.scorer(noise=1.0, seed=1))
        >>> log = sim.simulate(1000, logger, seed=0)
        >>> sorted(log.keys()), log["next", "reward"].shape
        (['action', 'action_prob', 'episode', 'next', 'observation'], torch.Size([1000, 1]))
        >>> abs(log["next", "reward"].mean().item() - sim.value(logger)) < 0.05
        True
    """

    def __init__(
        self,
        num_contexts: int = 500,
        num_features: int = 5,
        num_actions: int = 10,
        num_positions: int | None = None,
        *,
        reward_noise: str | float = "bernoulli",
        seed: int = 0,
    ):
        if num_positions is not None and num_positions < 1:
            raise ValueError(f"num_positions must be >= 1 or None, got {num_positions}")
        g = torch.Generator().manual_seed(int(seed))
        self.num_actions = int(num_actions)
        self.num_positions = num_positions
        self.reward_noise = reward_noise
        self.contexts = torch.randn(num_contexts, num_features, generator=g)
        self.item_weight = torch.randn(num_features, num_actions, generator=g) * (
            1.5 / math.sqrt(num_features)
        )
        self.item_bias = torch.randn(num_actions, generator=g) * 0.5 - 1.0
        slots = torch.arange(num_positions or 1, dtype=torch.float64)
        self.examination = 1.0 / torch.log2(slots + 2) if num_positions else torch.ones(1)

    # ------------------------------------------------------------ the model
    def expected_reward(
        self, observation: torch.Tensor, position: torch.Tensor | None = None
    ) -> torch.Tensor:
        """The true click probability of every item, float64 ``[rows, num_actions]``
        (times the slot's examination probability with positions)."""
        x = torch.as_tensor(observation, dtype=torch.float64).reshape(-1, self.contexts.shape[1])
        attract = torch.sigmoid(x @ self.item_weight.double() + self.item_bias.double())
        if self.num_positions and position is not None:
            attract = attract * self.examination[torch.as_tensor(position).long()][:, None]
        return attract

    def scorer(
        self, noise: float = 0.0, *, seed: int = 0, sharpness: torch.Tensor | None = None
    ) -> LinearScorer:
        """A scoring model: the true click logits plus Gaussian noise of scale ``noise`` on
        its weights and biases (``noise=0``: the true logits; larger: a worse model)."""
        g = torch.Generator().manual_seed(int(seed))
        w = self.item_weight + noise * torch.randn(self.item_weight.shape, generator=g)
        b = self.item_bias + noise * torch.randn(self.item_bias.shape, generator=g)
        return LinearScorer(w, b, sharpness=sharpness)

    def _slots(self) -> torch.Tensor | None:
        return None if self.num_positions is None else torch.arange(self.num_positions)

    @torch.no_grad()
    def value(self, policy: Any) -> float:
        """The exact expected reward of ``policy`` per decision (per slate with positions:
        the sum over slots), over the uniform population of contexts."""
        slots = self._slots()
        if slots is None:
            pi = policy.probs(self.contexts)
            return float((pi * self.expected_reward(self.contexts)).sum(-1).mean())
        total = 0.0
        for k in slots.tolist():
            pos = torch.full((self.contexts.shape[0],), k)
            pi = policy.probs(self.contexts, pos)
            total += float((pi * self.expected_reward(self.contexts, pos)).sum(-1).mean())
        return total

    # ------------------------------------------------------------ logs
    @torch.no_grad()
    def simulate(self, n: int, policy: Any, *, seed: int = 0) -> TensorDict:
        """``n`` decisions (``n`` slates of ``num_positions`` rows with positions) of
        ``policy``, in the layout ``from_logged(..., horizon=1)`` writes.

        Keys: ``observation``, ``action``, ``action_prob`` (the policy's exact probability
        of the logged action, at its slot), ``episode`` (one per row), ``position`` (with
        slots), ``("next", "observation")`` (the context again), ``("next", "reward")``,
        ``("next", "done")`` and ``("next", "terminated")`` (True), ``("next", "truncated")``.
        """
        g = torch.Generator().manual_seed(int(seed))
        ids = torch.randint(self.contexts.shape[0], (int(n),), generator=g)
        slots = self._slots()
        position = None
        if slots is not None:
            ids = ids.repeat_interleave(len(slots))
            position = slots.repeat(int(n))
        obs = self.contexts[ids]
        probs = policy.probs(obs, position)
        action = torch.multinomial(probs, 1, generator=g)[:, 0]
        p_click = self.expected_reward(obs, position).gather(-1, action[:, None])[:, 0]
        if self.reward_noise == "bernoulli":
            reward = torch.bernoulli(p_click, generator=g)
        else:
            reward = p_click + float(self.reward_noise) * torch.randn(
                p_click.shape, generator=g, dtype=torch.float64
            )
        rows = obs.shape[0]
        ones = torch.ones(rows, 1, dtype=torch.bool)
        td = TensorDict(
            {
                OBSERVATION: obs.float(),
                ACTION: action,
                ACTION_PROB: probs.gather(-1, action[:, None])[:, 0].float(),
                EPISODE: torch.arange(rows),
                NEXT_OBSERVATION: obs.float(),
                REWARD: reward.float()[:, None],
                DONE: ones,
                TERMINATED: ones.clone(),
                TRUNCATED: ~ones,
            },
            batch_size=[rows],
        )
        if position is not None:
            td.set(POSITION, position)
        return td

    @staticmethod
    def columns(log: TensorDict) -> dict[str, Any]:
        """A simulated log as the columns a team would export (numpy arrays:
        ``observation``, ``action``, ``action_prob``, ``reward`` and ``position``), for
        ``from_logged(columns, horizon=1)``."""
        out = {
            "observation": log[OBSERVATION].numpy(),
            "action": log[ACTION].numpy(),
            "action_prob": log[ACTION_PROB].numpy(),
            "reward": log[REWARD][:, 0].numpy(),
        }
        if POSITION in log.keys():
            out["position"] = log[POSITION].numpy()
        return out
