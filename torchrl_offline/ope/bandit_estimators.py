"""Estimators of the contextual-bandit OPE literature, for logs of one-step decisions.

On a log of ``n`` decisions :math:`(x_i, a_i, r_i)` (optionally a slot :math:`k_i`) made by
a logging policy :math:`\\mu` with known propensities, with the importance weight
:math:`w_i = \\pi(a_i|x_i) / \\mu(a_i|x_i)`, a reward model :math:`\\hat r(x, a)` (see
:mod:`~torchrl_offline.ope.reward_model`) and its value under the evaluation policy
:math:`\\hat v_i = \\sum_a \\pi(a|x_i) \\hat r(x_i, a)` (an exact sum over the actions):

- DM, the direct method: :math:`\\frac1n \\sum_i \\hat v_i` (biased where the model is wrong;
  its interval covers the model's noise, not its bias);
- DR, doubly robust (Dudík, Langford & Li, 2011): :math:`\\frac1n \\sum_i [\\hat v_i +
  w_i (r_i - \\hat r(x_i, a_i))]`, unbiased whatever the model;
- SNDR, self-normalised DR (Kallus & Uehara, 2019; as in Saito et al.'s Open Bandit
  Pipeline): the correction divided by :math:`\\frac1n\\sum_i w_i` instead of 1 (biased
  for small ``n``, consistent, bounded correction);
- Switch-DR (Wang, Agarwal & Dudík, 2017): the DR correction only on rows with
  :math:`w_i \\le \\tau`, the model alone elsewhere; its bias is the model's bias on the
  switched actions, :math:`E_x \\sum_a \\pi(a|x) 1[w(x,a) > \\tau] (\\hat r - r)(x, a)`;
- DR-OS, DR with optimistic shrinkage (Su, Dimakopoulou, Krishnamurthy & Dudík, 2020): the
  weights shrunk to :math:`\\hat w = \\lambda w / (w^2 + \\lambda)`; bias
  :math:`E_x \\sum_a \\mu(a|x) (\\hat w - w)(r - \\hat r)(x, a)`;
- PBM-IPS, position-based IPS for slate logs (Li, Kim, Kveton, ... & Zhu, 2018, "Offline
  evaluation of ranking policies with click models"): under the position-based click
  model a slate's value is the sum over slots of each slot's expected reward; each row
  (one slot of a slate) is weighted by :math:`\\pi(a \\text{ at } k|x) / \\mu(a \\text{ at }
  k|x)` and the slot means are summed.

The reward model is fitted on the log with K-fold cross-fitting (each row's
:math:`\\hat r` from a model fitted on the other folds; Chernozhukov et al., 2018), or
given (any callable ``(observation, position) -> [rows, num_actions]``, e.g. a model fitted
on other data). Every estimator returns an :class:`~torchrl_offline.ope.OPEResult` with the
importance-weight diagnostics of the IS family (``ess``, ``max_weight``, ...) and, by
default, a t interval over the per-row terms (linearised for the self-normalised ones);
``interval="bootstrap"`` resamples rows instead.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Literal

import torch
from tensordict import TensorDictBase
from torchrl.data import ReplayBuffer

from torchrl_offline.data.keys import ACTION, OBSERVATION, POSITION
from torchrl_offline.data.stats import iter_chunks
from torchrl_offline.ope.importance import ImportanceWeights, _OPEEstimator
from torchrl_offline.ope.policy import discrete_action_start
from torchrl_offline.ope.result import OPEError, OPEResult
from torchrl_offline.ope.reward_model import REWARD_MODELS, cross_fit_rewards
from torchrl_offline.ope.uncertainty import linearized_t_interval

__all__ = [
    "BANDIT_ESTIMATORS",
    "DirectMethod",
    "DoublyRobustShrinkage",
    "OneStepDoublyRobust",
    "PositionBasedIPS",
    "SelfNormalizedDoublyRobust",
    "SwitchDoublyRobust",
]

RewardModelSpec = Literal["ridge", "logistic", "mlp"] | Callable[..., torch.Tensor] | Any


class _OneStepEstimator(_OPEEstimator):
    """Shared machinery: one-step rows, all-action policy probabilities, a reward model,
    per-row terms, the per-slot sum, the interval."""

    #: Whether the estimator needs the reward model (all but PBM-IPS).
    uses_model = True

    def __init__(
        self,
        policy: Any,
        *,
        reward_model: RewardModelSpec = "ridge",
        folds: int = 2,
        model_kwargs: dict[str, Any] | None = None,
        interval: Literal["t", "bootstrap"] = "t",
        sum_positions: bool = False,
        position_key: str = POSITION,
        observation_key: str = OBSERVATION,
        **kwargs: Any,
    ):
        kwargs.setdefault("n_bootstrap", 200)
        super().__init__(policy, **kwargs)
        if isinstance(reward_model, str) and reward_model not in REWARD_MODELS:
            raise ValueError(
                f"reward_model must be one of {REWARD_MODELS} or a model, got {reward_model!r}"
            )
        if not isinstance(reward_model, str) and not (
            callable(reward_model) or hasattr(reward_model, "predict")
        ):
            raise TypeError(
                "reward_model must be 'ridge', 'logistic', 'mlp', a fitted RewardRegression "
                f"or a callable (observation, position) -> [rows, num_actions]; got {type(reward_model).__name__}"
            )
        if int(folds) != folds or folds < 1:
            raise ValueError(f"folds must be a positive integer, got {folds}")
        if interval not in ("t", "bootstrap"):
            raise ValueError(f"interval must be 't' or 'bootstrap', got {interval!r}")
        self.reward_model = reward_model
        self.folds = int(folds)
        self.model_kwargs = dict(model_kwargs or {})
        self.interval = interval
        self.sum_positions = bool(sum_positions)
        self.position_key = position_key
        self.observation_key = observation_key
        self._diagnostics: dict[str, Any] = {}

    # ------------------------------------------------------------ inputs
    def _rows(self, data: Any, iw: ImportanceWeights) -> dict[str, Any]:
        eps = iw.episodes
        if eps.max_length != 1:
            raise OPEError(
                f"{self.name} needs a log of one-step decisions (every episode one step; "
                f"from_logged(..., horizon=1)), but episodes here have up to {eps.max_length} "
                "steps: use DR / WDR with an FQE model for sequential data",
                field="episode",
            )
        td = eps.transitions
        rows = eps.index[:, 0]
        action = td.get(ACTION)[rows]
        if action.ndim > 1 and action.shape[-1] > 1:  # one-hot actions
            action = action.argmax(-1)
        action = action.reshape(-1).long() - discrete_action_start(data)
        keys = set(td.keys(True, True))
        position = (
            td.get(self.position_key)[rows].reshape(-1).long()
            if self.position_key in keys
            else None
        )
        return {
            "td": td,
            "rows": rows,
            "action": action,
            "position": position,
            "reward": eps.rewards[:, 0],
            "weight": iw.weights[:, 0],
        }

    def _policy_probs(self, td: TensorDictBase, rows: torch.Tensor) -> torch.Tensor:
        """``[n, num_actions]`` evaluation-policy probabilities of every action."""
        probs = torch.cat(
            [
                self.policy.action_probs(chunk.to_tensordict())
                for _, chunk in iter_chunks(td, self.chunk_size)
            ]
        )
        return probs[rows]

    def _reward_predictions(self, inputs: dict[str, Any], num_actions: int) -> torch.Tensor:
        td, rows = inputs["td"], inputs["rows"]
        observation = td.get(self.observation_key)[rows]
        observation = observation.reshape(rows.shape[0], -1)
        position = inputs["position"]
        model = self.reward_model
        if isinstance(model, str):
            q = cross_fit_rewards(
                observation,
                inputs["action"],
                inputs["reward"],
                num_actions=num_actions,
                position=position,
                folds=self.folds,
                seed=self.seed,
                kind=model,
                **self.model_kwargs,
            )
            self._diagnostics["reward_model"] = f"{model}, {self.folds}-fold cross-fitted"
        else:
            predict = model.predict if hasattr(model, "predict") else model
            with torch.no_grad():
                q = torch.as_tensor(predict(observation, position)).to(torch.float64)
            self._diagnostics["reward_model"] = f"given: {type(model).__name__}"
        if q.shape != (rows.shape[0], num_actions):
            raise OPEError(
                f"The reward model returned {tuple(q.shape)} for {rows.shape[0]} rows; expected "
                f"[rows, num_actions] = [{rows.shape[0]}, {num_actions}]",
                field="reward_model",
            )
        bad = ~torch.isfinite(q).all(-1)
        if bad.any():
            i = int(bad.nonzero()[0])
            raise OPEError(
                f"The reward model is not finite at row {i}", field="reward_model", index=i
            )
        return q

    # ------------------------------------------------------------ terms
    def _row_terms(self, inputs: dict[str, Any]) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Per-row numerators ``[n, J]`` and denominators (``None`` for a mean)."""
        raise NotImplementedError

    def _model_terms(self, inputs: dict[str, Any]) -> None:
        """Adds ``v`` (the model's value under the policy) and ``q`` (its logged-action value)."""
        pi = self._policy_probs(inputs["td"], inputs["rows"])
        q_all = self._reward_predictions(inputs, pi.shape[-1])
        inputs["pi"], inputs["q_all"] = pi, q_all
        inputs["v"] = (pi * q_all).sum(-1)
        inputs["q"] = q_all.gather(-1, inputs["action"].clamp(0, pi.shape[-1] - 1)[:, None])[:, 0]

    def _spread_positions(
        self, num: torch.Tensor, den: torch.Tensor | None, position: torch.Tensor | None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Sum over slots: each term becomes one column per slot, normalised by the slot's rows."""
        if position is None:
            raise OPEError(
                f"{self.name} sums over positions but the log has no {self.position_key!r} key "
                "(read it with from_logged(..., horizon=1) and a position column)",
                field=self.position_key,
            )
        bad = position < 0
        if bad.any():
            i = int(bad.nonzero()[0])
            raise OPEError(
                f"{self.position_key} at row {i} is negative", field=self.position_key, index=i
            )
        n_pos = int(position.max()) + 1
        onehot = torch.nn.functional.one_hot(position, n_pos).to(torch.float64)  # [n, K]
        den = torch.ones_like(num) if den is None else den
        num = (num[:, :, None] * onehot[:, None, :]).reshape(num.shape[0], -1)
        den = (den[:, :, None] * onehot[:, None, :]).reshape(den.shape[0], -1)
        self._diagnostics["positions"] = n_pos
        return num, den

    def estimate(self, data: ReplayBuffer | TensorDictBase) -> OPEResult:
        """Estimate the evaluation policy's expected reward per decision (per slate when
        positions are summed) from a log of one-step decisions.

        Raises:
            OPEError: data that are not one-step decisions, bad propensities, a bad reward
                model output, naming the field and first row.
        """
        self._diagnostics = {}
        iw = self.importance_weights(data)
        inputs = self._rows(data, iw)
        if self.uses_model:
            self._model_terms(inputs)
        num, den = self._row_terms(inputs)
        if self.sum_positions:
            num, den = self._spread_positions(num, den, inputs["position"])
        return self._result(iw, num, den)

    def _interval(self, num: torch.Tensor, den: torch.Tensor | None) -> tuple[float, float]:
        if self.interval == "bootstrap":
            return super()._interval(num, den)
        return linearized_t_interval(num, den, confidence=self.confidence)

    def _extra_diagnostics(self) -> dict[str, Any]:
        return dict(self._diagnostics)


class DirectMethod(_OneStepEstimator):
    """The direct method: the reward model's value under the evaluation policy.

    ``mean_i sum_a pi(a|x_i) r_hat(x_i, a)``, an exact sum over the discrete actions (and
    per slot with positions). Low variance, biased wherever the model is wrong; the
    interval covers the spread of the model's values over contexts, not its bias. The
    model is fitted on the whole log (``folds=1``) unless ``folds`` says otherwise.

    Args:
        policy: the evaluation policy (a :class:`~torchrl_offline.ope.DecisionPolicy`, a
            ``ProbabilisticActor`` over discrete actions, ...).

    Keyword Args:
        reward_model: ``"ridge"`` (default), ``"logistic"``, ``"mlp"`` (fitted on the log,
            see :func:`~torchrl_offline.ope.reward_model.fit_reward_model`), or a given
            model: a ``RewardRegression`` or a callable ``(observation, position) ->
            [rows, num_actions]``.
        folds: cross-fitting folds for a fitted model.
        model_kwargs: keyword arguments of ``fit_reward_model`` (``l2``, ``hidden``, ...).
        interval: ``"t"`` (default; a t interval over the rows, linearised for the
            self-normalised estimators) or ``"bootstrap"`` (``n_bootstrap`` row resamples).
        sum_positions: value per slate: the sum over slots of each slot's mean term (needs
            a ``position`` key); otherwise the mean over rows.
        position_key: the slot key (read by the reward model when present).
        observation_key: the context features the reward model reads.
        **kwargs: as :class:`~torchrl_offline.ope.ImportanceSampling` (``behavior_policy``,
            ``confidence``, ``seed``, ...).

    Examples:
        >>> import torch
        >>> from tensordict import TensorDict
        >>> from torchrl_offline.ope import TablePolicy
        >>> obs = torch.zeros(6, 1)
        >>> td = TensorDict({
        ...     "observation": obs, "action": torch.tensor([0, 1, 0, 1, 0, 1]),
        ...     "episode": torch.arange(6), "action_prob": torch.full((6,), 0.5),
        ...     ("next", "reward"): torch.tensor([[1.0], [0.0]] * 3),
        ... }, batch_size=[6])
        >>> dm = DirectMethod(TablePolicy([0.25, 0.75], context_features=[]), model_kwargs={"l2": 1e-9})
        >>> round(dm.estimate(td).value, 4)
        0.25
    """

    name = "DM"
    weighted = False
    per_decision = False

    def __init__(self, policy: Any, *, folds: int = 1, **kwargs: Any):
        super().__init__(policy, folds=folds, **kwargs)

    def _row_terms(self, inputs: dict[str, Any]) -> tuple[torch.Tensor, torch.Tensor | None]:
        return inputs["v"][:, None], None


class OneStepDoublyRobust(_OneStepEstimator):
    """Doubly robust estimator with a cross-fitted reward regression (Dudík et al., 2011).

    ``mean_i [v_i + w_i (r_i - r_hat(x_i, a_i))]``: unbiased when the propensities are
    exact, whatever the model; the better the model, the lower the variance. Same arguments
    as :class:`DirectMethod` (``folds`` defaults to 2: each row's model is fitted on the
    other half).
    """

    name = "DR"
    weighted = False
    per_decision = False

    def _correction_weights(self, inputs: dict[str, Any]) -> torch.Tensor:
        return inputs["weight"]

    def _row_terms(self, inputs: dict[str, Any]) -> tuple[torch.Tensor, torch.Tensor | None]:
        w = self._correction_weights(inputs)
        return (inputs["v"] + w * (inputs["reward"] - inputs["q"]))[:, None], None


class SelfNormalizedDoublyRobust(OneStepDoublyRobust):
    """Self-normalised DR: the correction ``sum_i w_i (r_i - r_hat_i) / sum_i w_i`` plus DM.

    Biased for small logs, consistent; the correction stays within the range of the
    residuals however large the weights (Kallus & Uehara, 2019, "Intrinsically efficient,
    stable, and bounded off-policy evaluation for reinforcement learning"; the form of
    Saito et al.'s Open Bandit Pipeline). Same arguments as :class:`DirectMethod`.
    """

    name = "SNDR"
    weighted = True

    def _row_terms(self, inputs: dict[str, Any]) -> tuple[torch.Tensor, torch.Tensor | None]:
        w = inputs["weight"]
        num = torch.stack([w * (inputs["reward"] - inputs["q"]), inputs["v"]], -1)
        return num, torch.stack([w, torch.ones_like(w)], -1)


class SwitchDoublyRobust(OneStepDoublyRobust):
    """Switch-DR (Wang, Agarwal & Dudík, 2017, "Optimal and adaptive off-policy evaluation
    in contextual bandits"): the DR correction only where ``w_i <= tau``.

    Rows whose weight exceeds ``tau`` keep the model's value alone; the bias is the
    model's error on those actions, ``E_x sum_a pi(a|x) 1[w(x,a) > tau] (r_hat - r)(x,a)``,
    and ``tau = inf`` is DR. ``switched_fraction`` reports the share of rows switched.

    Keyword Args:
        tau: the weight threshold (> 0); tune it to the log (e.g. the MSE bound of the paper).
        **kwargs: as :class:`DirectMethod`.
    """

    name = "Switch-DR"

    def __init__(self, policy: Any, *, tau: float = 10.0, **kwargs: Any):
        super().__init__(policy, **kwargs)
        if not tau > 0:
            raise ValueError(f"tau must be > 0, got {tau}")
        self.tau = float(tau)

    def _correction_weights(self, inputs: dict[str, Any]) -> torch.Tensor:
        w = inputs["weight"]
        keep = w <= self.tau
        self._diagnostics["tau"] = self.tau
        self._diagnostics["switched_fraction"] = 1.0 - keep.double().mean().item()
        return torch.where(keep, w, 0.0)


class DoublyRobustShrinkage(OneStepDoublyRobust):
    """DR with optimistic shrinkage (Su, Dimakopoulou, Krishnamurthy & Dudík, 2020, "Doubly
    robust off-policy evaluation with shrinkage"): weights ``w * lam / (w^2 + lam)``.

    Small weights are nearly kept, large ones shrunk towards 0 (the largest shrunk weight
    is ``sqrt(lam) / 2``, at ``w = sqrt(lam)``); ``lam = inf`` is DR, ``lam = 0`` is DM.
    The bias is ``E_x sum_a mu(a|x) (w_hat - w)(r - r_hat)(x, a)``.

    Keyword Args:
        lam: the shrinkage parameter ``lambda`` (>= 0).
        **kwargs: as :class:`DirectMethod`.
    """

    name = "DR-OS"

    def __init__(self, policy: Any, *, lam: float = 100.0, **kwargs: Any):
        super().__init__(policy, **kwargs)
        if not lam >= 0:
            raise ValueError(f"lam must be >= 0, got {lam}")
        self.lam = float(lam)

    def _correction_weights(self, inputs: dict[str, Any]) -> torch.Tensor:
        w = inputs["weight"]
        self._diagnostics["lambda"] = self.lam
        if self.lam == float("inf"):
            return w
        return w * self.lam / (w.pow(2) + self.lam)


class PositionBasedIPS(_OneStepEstimator):
    """Position-based-model IPS for slate logs with positions (Li et al., 2018).

    Each row is one slot of a slate: its context, the item shown in slot ``k``, the logging
    policy's probability of that item *at that slot* (``action_prob``), its reward (e.g. a
    click). The policy's probability of the item at that slot is read from the policy with
    the row's position (a :class:`~torchrl_offline.ope.DecisionPolicy` with
    ``position_key``, or one that ignores it). Under the position-based click model, where
    a click at slot ``k`` depends only on the item there and the slot, the estimate
    ``sum_k mean_{rows at k} w_i r_i`` is unbiased for the slate's expected total reward.
    Same keyword arguments as :class:`DirectMethod` (the reward model is not used).
    """

    name = "PBM-IPS"
    weighted = False
    per_decision = False
    uses_model = False

    def __init__(self, policy: Any, **kwargs: Any):
        kwargs.setdefault("sum_positions", True)
        super().__init__(policy, **kwargs)

    def _row_terms(self, inputs: dict[str, Any]) -> tuple[torch.Tensor, torch.Tensor | None]:
        return (inputs["weight"] * inputs["reward"])[:, None], None


#: Short names (as ``torchrl-offline ope --estimators`` takes them) -> class.
BANDIT_ESTIMATORS: dict[str, type[_OneStepEstimator]] = {
    "dm": DirectMethod,
    "dr": OneStepDoublyRobust,
    "sndr": SelfNormalizedDoublyRobust,
    "switch-dr": SwitchDoublyRobust,
    "dr-os": DoublyRobustShrinkage,
    "pbm-ips": PositionBasedIPS,
}
