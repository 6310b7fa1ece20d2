"""Importance-sampling estimators: trajectory-wise (IS), weighted (WIS), per-decision (PDIS)
and weighted per-decision (WPDIS).

For logged episodes :math:`(s_t, a_t, r_t)_{t < T_i}` drawn by a behaviour policy
:math:`\\mu` and an evaluation policy :math:`\\pi`, the per-step ratios are
:math:`\\rho_t = \\pi(a_t|s_t) / \\mu(a_t|s_t)` and the cumulative weights
:math:`w_t = \\prod_{t' \\le t} \\rho_{t'}`. With :math:`n` episodes:

- IS: :math:`\\frac1n \\sum_i w_{i,T_i-1} G_i`, :math:`G_i = \\sum_t \\gamma^t r_{it}`
  (unbiased, high variance);
- WIS: :math:`\\sum_i w_{i,T_i-1} G_i / \\sum_i w_{i,T_i-1}` (biased but consistent,
  much lower variance);
- PDIS: :math:`\\frac1n \\sum_i \\sum_t \\gamma^t w_{it} r_{it}` (unbiased; a reward is
  weighted only by the decisions before it);
- WPDIS: :math:`\\sum_t \\gamma^t \\sum_i w_{it} r_{it} / \\sum_i w_{it}`.

Episodes of different lengths are padded with an absorbing state (reward 0, ratio 1), so
an ended episode keeps its last weight in the per-step normalisers. The estimated value is
the expected discounted return over the logged horizon (episodes end where the data end
them, by termination or truncation).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Literal

import torch
from tensordict import TensorDictBase
from torchrl.data import ReplayBuffer

from torchrl_offline.data.keys import ACTION, ACTION_LOG_PROB, ACTION_PROB
from torchrl_offline.data.stats import iter_chunks
from torchrl_offline.ope.episodes import Episodes, to_episodes
from torchrl_offline.ope.policy import as_evaluation_policy, discrete_action_start
from torchrl_offline.ope.result import OPEError, OPEResult
from torchrl_offline.ope.uncertainty import bootstrap_interval, ratio_statistic

__all__ = [
    "ONE_STEP_TWINS",
    "ImportanceSampling",
    "ImportanceWeights",
    "PerDecisionImportanceSampling",
    "WeightedImportanceSampling",
    "WeightedPerDecisionImportanceSampling",
    "one_step_estimators",
]

#: Short names of the per-decision estimators -> the trajectory-wise estimator they equal
#: when every episode is one step (the one reward is weighted by the one ratio either way).
ONE_STEP_TWINS = {"pdis": "is", "wpdis": "wis"}

# exp(700) is close to float64's limit; larger cumulative log-weights are capped there.
_MAX_LOG_WEIGHT = 700.0
# exp(x) is 0 or subnormal in float64 below this: such weights have lost their value.
_MIN_LOG_WEIGHT = math.log(torch.finfo(torch.float64).tiny)


@dataclass
class ImportanceWeights:
    """Importance weights of logged episodes, as computed by the estimators.

    Attributes:
        episodes: the episodes.
        log_ratio: ``[E, T]`` float64 per-step log-ratios ``log pi - log mu`` (0 on padding).
        weights: ``[E, T]`` float64 cumulative weights ``w_t``, clipped if asked; padding
            carries the episode's last weight.
        clipped: ``[E, T]`` bool, where clipping changed a weight.
        near_zero: ``[E, T]`` bool, logged actions with near-zero evaluation probability.
        behavior: how the behaviour policy was obtained (``"logged (action_log_prob)"``,
            ``"estimated: ..."``, ``"given: ..."``).
        behavior_estimated: whether the behaviour policy was estimated from the data.
        log_scale: ``[T]`` float64 log of the factor each step's weights were divided by
            (self-normalised estimators rescale them so that they cannot underflow; zeros
            otherwise): the true weights are ``weights * exp(log_scale)``.
        underflow: ``[E, T]`` bool, supported steps whose weight underflowed float64 (to 0
            or a subnormal number).
    """

    episodes: Episodes
    log_ratio: torch.Tensor
    weights: torch.Tensor
    clipped: torch.Tensor
    near_zero: torch.Tensor
    behavior: str
    behavior_estimated: bool
    log_scale: torch.Tensor | None = None
    underflow: torch.Tensor | None = None

    @property
    def trajectory_weights(self) -> torch.Tensor:
        """``[E]`` weight of each whole episode (up to the factor ``exp(log_scale[-1])``)."""
        return self.weights[:, -1]

    @property
    def unscaled_trajectory_weights(self) -> torch.Tensor:
        """``[E]`` weight of each whole episode, without the rescaling (may underflow)."""
        if self.log_scale is None:
            return self.trajectory_weights
        scale = self.log_scale[-1].item()
        return (self.trajectory_weights.log() + scale).clamp(max=_MAX_LOG_WEIGHT).exp()


def _check_behavior_log_prob(lp: torch.Tensor, key: str) -> None:
    bad = ~torch.isfinite(lp)
    if bad.any():
        i = int(bad.nonzero()[0])
        what = "NaN" if lp[i].isnan() else str(lp[i].item())
        n_bad = int(bad.sum())
        raise OPEError(
            f"Behaviour log-probability {key!r} is {what} at transition {i} ({n_bad} bad "
            f"value(s) in all): a logged action must have positive probability under the "
            "policy that chose it; fix the data or pass behavior_policy=",
            field=key,
            index=i,
        )


#: Slack above 0 allowed for a discrete action's log-probability (float rounding of log 1).
_LOG_PROB_SLACK = 1e-6


def _check_discrete_log_prob(lp: torch.Tensor, key: str) -> None:
    """A discrete action's probability is at most 1: its log-probability is at most 0."""
    bad = lp > _LOG_PROB_SLACK
    if bad.any():
        i = int(bad.nonzero()[0])
        raise OPEError(
            f"Behaviour log-probability {key!r} is {lp[i].item():.6g} at transition {i} "
            f"(probability {lp[i].exp().item():.6g} > 1; {int(bad.sum())} value(s) above 0 in "
            "all): a discrete action's probability lies in (0, 1]; fix the data or pass "
            "behavior_policy=",
            field=key,
            index=i,
        )


def _kish(w: torch.Tensor) -> torch.Tensor:
    """Kish effective sample size over the first dim: ``(sum w)^2 / sum w^2`` (0 if all 0)."""
    sq = w.pow(2).sum(0)
    return torch.where(sq > 0, w.sum(0).pow(2) / torch.where(sq > 0, sq, 1.0), 0.0)


class _OPEEstimator:
    """Shared machinery of the importance-weighted estimators (IS family and DR family)."""

    #: Name written on results.
    name: str = ""
    weighted: bool = False
    per_decision: bool = True

    def __init__(
        self,
        policy: Any,
        *,
        gamma: float = 0.99,
        behavior_policy: Any | Literal["estimate"] | None = None,
        clip_weight: float | None = None,
        n_bootstrap: int = 1000,
        confidence: float = 0.95,
        ci_method: Literal["percentile", "bca"] = "percentile",
        seed: int = 0,
        min_ess: float = 10.0,
        support_threshold: float = 1e-6,
        kernel_bandwidth: float | None = None,
        epsilon: float | None = None,
        num_actions: int | None = None,
        on_missing_initial: Literal["error", "drop"] = "error",
        behavior_kwargs: dict[str, Any] | None = None,
        chunk_size: int = 65536,
        policy_mode: Literal["greedy", "stochastic"] | None = None,
    ):
        if not 0 <= gamma <= 1:
            raise ValueError(f"gamma must be in [0, 1], got {gamma}")
        if clip_weight is not None and not clip_weight > 0:
            raise ValueError(f"clip_weight must be > 0, got {clip_weight}")
        if n_bootstrap < 1:
            raise ValueError(f"n_bootstrap must be >= 1, got {n_bootstrap}")
        self.policy = as_evaluation_policy(
            policy,
            kernel_bandwidth=kernel_bandwidth,
            epsilon=epsilon,
            num_actions=num_actions,
            mode=policy_mode,
        )
        self.gamma = float(gamma)
        self.behavior_policy = behavior_policy
        self.clip_weight = clip_weight
        self.n_bootstrap = int(n_bootstrap)
        self.confidence = float(confidence)
        self.ci_method = ci_method
        self.seed = int(seed)
        self.min_ess = float(min_ess)
        self.support_threshold = float(support_threshold)
        self.on_missing_initial = on_missing_initial
        self.behavior_kwargs = dict(behavior_kwargs or {})
        self.chunk_size = int(chunk_size)

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}(policy={self.policy.describe()!r}, gamma={self.gamma}, "
            f"clip_weight={self.clip_weight}, n_bootstrap={self.n_bootstrap}, seed={self.seed})"
        )

    # ------------------------------------------------------------ behaviour
    def _behavior_log_prob(self, td: TensorDictBase) -> tuple[torch.Tensor, str, bool]:
        keys = set(td.keys(True, True))
        bp = self.behavior_policy
        if bp is None and ACTION_LOG_PROB in keys:
            lp = torch.cat(
                [
                    c.get(ACTION_LOG_PROB).reshape(-1)
                    for _, c in iter_chunks(td.select(ACTION_LOG_PROB), self.chunk_size)
                ]
            ).to(torch.float64)
            _check_behavior_log_prob(lp, ACTION_LOG_PROB)
            if ACTION in keys and not td.get(ACTION).dtype.is_floating_point:
                _check_discrete_log_prob(lp, ACTION_LOG_PROB)
            return lp, f"logged ({ACTION_LOG_PROB})", False
        if bp is None and ACTION_PROB in keys:
            p = torch.cat(
                [
                    c.get(ACTION_PROB).reshape(-1)
                    for _, c in iter_chunks(td.select(ACTION_PROB), self.chunk_size)
                ]
            ).to(torch.float64)
            bad = ~(p > 0) | ~(p <= 1)
            if bad.any():
                i = int(bad.nonzero()[0])
                raise OPEError(
                    f"Behaviour probability {ACTION_PROB!r} is {p[i].item()} at transition {i} "
                    f"({int(bad.sum())} value(s) outside (0, 1] in all)",
                    field=ACTION_PROB,
                    index=i,
                )
            return p.log(), f"logged ({ACTION_PROB})", False
        if bp is None or (isinstance(bp, str) and bp == "estimate"):
            from torchrl_offline.ope.behavior import estimate_behavior_policy

            kwargs = {"seed": self.seed, **self.behavior_kwargs}
            model = estimate_behavior_policy(td, **kwargs)
            lp = as_evaluation_policy(model).log_prob_dataset(td, chunk_size=self.chunk_size)
            _check_behavior_log_prob(lp, "estimated behaviour log_prob")
            return lp, f"estimated: {model.describe()}", True
        if isinstance(bp, str):
            raise ValueError(f"behavior_policy must be None, 'estimate' or a policy, got {bp!r}")
        from torchrl_offline.ope.behavior import EstimatedBehaviorPolicy

        if isinstance(bp, EstimatedBehaviorPolicy):
            lp = as_evaluation_policy(bp).log_prob_dataset(td, chunk_size=self.chunk_size)
            _check_behavior_log_prob(lp, "estimated behaviour log_prob")
            return lp, f"estimated: {bp.describe()}", True
        lp = as_evaluation_policy(bp).log_prob_dataset(td, chunk_size=self.chunk_size)
        _check_behavior_log_prob(lp, "behaviour policy log_prob")
        return lp, f"given: {as_evaluation_policy(bp).describe()}", False

    def importance_weights(
        self, data: ReplayBuffer | TensorDictBase | Episodes
    ) -> ImportanceWeights:
        """Per-step ratios and cumulative weights of the logged episodes.

        Raises:
            OPEError: bad behaviour probabilities, mismatched action spaces, bad episodes.
        """
        eps = (
            data
            if isinstance(data, Episodes)
            else to_episodes(
                data, on_missing_initial=self.on_missing_initial, chunk_size=self.chunk_size
            )
        )
        td = eps.transitions
        lp_mu, behavior, estimated = self._behavior_log_prob(td)
        lp_pi = self.policy.log_prob_dataset(
            td, chunk_size=self.chunk_size, action_start=discrete_action_start(data)
        )
        log_ratio_flat = lp_pi - lp_mu
        discrete = not td.get(ACTION).dtype.is_floating_point
        if discrete:
            near_zero_flat = lp_pi < math.log(self.support_threshold)
        else:
            near_zero_flat = log_ratio_flat < math.log(self.support_threshold)
        # Unsupported actions get weight exactly 0 (their ratio is below the threshold).
        log_ratio_flat = log_ratio_flat.masked_fill(near_zero_flat, -math.inf)
        near_zero = eps.pad(near_zero_flat, False) & eps.mask
        log_ratio = torch.where(eps.mask, eps.pad(log_ratio_flat, 0.0), 0.0)
        cum = log_ratio.cumsum(1)
        if not self.per_decision:
            # Only the whole-trajectory weight is used: broadcast it over the steps.
            cum = cum[:, -1:].expand_as(cum)
        log_scale = torch.zeros(cum.shape[1], dtype=torch.float64)
        if self.weighted and self.clip_weight is None:
            # Self-normalised estimates are unchanged by a common factor on the weights of a
            # step: dividing each step's weights by their largest keeps long episodes' weights
            # inside float64's range (they would otherwise all underflow to 0).
            top = cum.max(0).values
            log_scale = torch.where(torch.isfinite(top), top, 0.0)
        shifted = cum - log_scale
        # Weights that underflow to 0 although their action is supported. After rescaling,
        # a weight that small is negligible next to its step's largest (the low effective
        # sample size reports it), so only unscaled weights count.
        underflow = torch.isfinite(shifted) & (shifted < _MIN_LOG_WEIGHT) & eps.mask
        if self.weighted and self.clip_weight is None:
            underflow = torch.zeros_like(underflow)
        weights = shifted.clamp(max=_MAX_LOG_WEIGHT).exp()
        clipped = torch.zeros_like(eps.mask)
        if self.clip_weight is not None:
            clipped = weights > self.clip_weight
            weights = weights.clamp(max=self.clip_weight)
        return ImportanceWeights(
            eps, log_ratio, weights, clipped, near_zero, behavior, estimated, log_scale, underflow
        )

    # ------------------------------------------------------------ estimate
    def _terms(self, iw: ImportanceWeights) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Per-episode numerators ``[E, K]`` and denominators (``None`` for a mean)."""
        raise NotImplementedError

    def estimate(self, data: ReplayBuffer | TensorDictBase) -> OPEResult:
        """Estimate the evaluation policy's expected discounted return from logged data.

        Args:
            data: a replay buffer of the data layer or a TensorDict of transitions in
                dataset order, with ``episode`` and, where logged, ``action_log_prob`` (or
                ``action_prob``); without them the behaviour policy is estimated.

        Returns:
            An :class:`OPEResult` with value, bootstrap interval and diagnostics.
        """
        iw = self.importance_weights(data)
        num, den = self._terms(iw)
        return self._result(iw, num, den)

    def _extra_diagnostics(self) -> dict[str, Any]:
        return {}

    def _interval(self, num: torch.Tensor, den: torch.Tensor | None) -> tuple[float, float]:
        """The confidence interval of the statistic of ``num`` / ``den`` (bootstrap over episodes)."""
        return bootstrap_interval(
            num,
            den,
            confidence=self.confidence,
            n_bootstrap=self.n_bootstrap,
            method=self.ci_method,
            seed=self.seed,
        )

    def _result(
        self, iw: ImportanceWeights, num: torch.Tensor, den: torch.Tensor | None
    ) -> OPEResult:
        eps = iw.episodes
        n_ep = eps.num_episodes
        traj = iw.unscaled_trajectory_weights
        if self.weighted:
            assert den is not None
            if not (den.sum(0) > 0).any():
                if not iw.near_zero.any():
                    raise OPEError(
                        f"Every importance weight of the {n_ep} episodes underflows float64 "
                        "(long episodes; clip_weight disables the rescaling that avoids this): "
                        "a self-normalised estimate is undefined",
                        field="action",
                    )
                raise OPEError(
                    f"Every importance weight is zero: the evaluation policy gives (near-)zero "
                    f"probability to {int(iw.near_zero.sum())} logged action(s), in all {n_ep} "
                    "episodes, so a self-normalised estimate is undefined. Its actions are not "
                    "covered by the data (for a deterministic actor, give or widen "
                    "kernel_bandwidth or epsilon)",
                    field="action",
                )
        value = ratio_statistic(num, den)
        if den is None:
            per_episode = num.sum(-1)
        else:
            tot = den.sum(0)
            safe = torch.where(tot != 0, tot, torch.ones_like(tot))
            per_episode = (torch.where(tot != 0, num / safe, 0.0) * n_ep).sum(-1)
        low, high = self._interval(num, den)
        ess_traj = _kish(iw.trajectory_weights).item()
        if self.per_decision:
            # Discount-weighted mean over steps of the per-step ESS (ended episodes keep
            # their last weight): the weights each reward of the estimate actually uses.
            disc = self.gamma ** torch.arange(eps.max_length, dtype=torch.float64)
            ess = ((_kish(iw.weights) * disc).sum() / disc.sum()).item()
        else:
            ess = ess_traj
        valid = eps.mask
        if self.per_decision:
            frac_clipped = (iw.clipped & valid).sum().item() / max(eps.num_steps, 1)
        else:
            frac_clipped = iw.clipped[:, -1].float().mean().item()
        n_near = int(iw.near_zero.sum())
        diagnostics: dict[str, Any] = {
            "ess": ess,
            "ess_trajectory": ess_traj,
            "episodes": n_ep,
            "max_weight": traj.max().item(),
            "mean_weight": traj.mean().item(),
            "max_step_ratio": iw.log_ratio[valid].max().exp().item(),
            "fraction_clipped": frac_clipped,
            "fraction_near_zero": n_near / max(eps.num_steps, 1),
            "behavior_policy": iw.behavior,
        }
        result = OPEResult(
            value=value,
            ci_low=low,
            ci_high=high,
            diagnostics=diagnostics,
            estimator=self.name or type(self).__name__,
            per_episode=per_episode,
            confidence=self.confidence,
            policy_mode=self.policy.mode,
            policy=self.policy.describe(),
        )
        if iw.behavior_estimated:
            result.notes.append(
                "the behaviour policy was estimated from the data (no action_log_prob/action_prob "
                f"logged): {iw.behavior.removeprefix('estimated: ')}; its fitting error biases "
                "the weights"
            )
        result.diagnostics.update(self._extra_diagnostics())
        if eps.dropped:
            result.notes.append(f"{eps.dropped} episode(s) without an initial state were dropped")
        if n_near:
            n_ep_near = int(iw.near_zero.any(1).sum())
            result.warn(
                f"{n_near} of {eps.num_steps} logged actions ({n_near / eps.num_steps:.2%}), in "
                f"{n_ep_near} of {n_ep} episodes, have near-zero probability under the evaluation "
                "policy: the data do not cover its actions there and those episodes get ~0 weight"
            )
        if iw.underflow is not None and iw.underflow.any():
            n_uf = int(iw.underflow.any(1).sum())
            result.warn(
                f"importance weights underflow float64 (below {math.exp(_MIN_LOG_WEIGHT):.0e}) "
                f"in {n_uf} of {n_ep} episodes: the product of many per-step ratios vanishes in "
                "long episodes and counts as 0, so the estimate rests on the other episodes; "
                "prefer a self-normalised estimator (WIS, WPDIS, WDR), gamma < 1 or shorter "
                "episodes"
            )
        # Under the behaviour policy every per-step ratio pi/mu has mean 1 (less the mass pi
        # puts on actions mu never takes). Unlike the trajectory weight, a product of many
        # ratios whose sample mean is usually far below 1 even when all is right, the
        # per-step ratio is light-tailed, so its mean is a reliable check of the data.
        step_ratio = torch.where(eps.mask, iw.log_ratio.clamp(max=_MAX_LOG_WEIGHT).exp(), 0.0)
        sums, lengths = step_ratio.sum(1), eps.lengths.to(torch.float64)
        mean_r = (sums.sum() / lengths.sum()).item()
        result.diagnostics["mean_step_ratio"] = mean_r
        if n_ep >= 10:
            resid = sums - mean_r * lengths
            se_r = (resid.pow(2).sum() * n_ep / (n_ep - 1)).sqrt().item() / lengths.sum().item()
            if abs(mean_r - 1) > max(4 * se_r, 0.05):
                why = (
                    "wrong behaviour probabilities"
                    if mean_r > 1
                    else "actions of the evaluation policy that the data never take, or wrong "
                    "behaviour probabilities"
                )
                result.warn(
                    f"the mean per-step importance ratio pi/mu is {mean_r:.3g} (standard error "
                    f"{se_r:.2g}); it should be 1: this points to {why}"
                )
        threshold = max(self.min_ess, 0.01 * n_ep)
        if ess < threshold:
            result.warn(
                f"low effective sample size: {ess:.3g} of {n_ep} episodes (below {threshold:.3g}); "
                "the estimate rests on few episodes"
            )
        if n_ep < 2:
            result.warn("a single episode: the confidence interval is degenerate")
        return result


class ImportanceSampling(_OPEEstimator):
    """Trajectory-wise importance sampling: the mean of ``w_i * G_i`` over episodes.

    Unbiased when the behaviour probabilities are exact and the evaluation policy's support
    is covered, but its variance grows exponentially with the horizon; prefer
    :class:`PerDecisionImportanceSampling` or a doubly robust estimator.

    Args:
        policy: the evaluation policy: a ``ProbabilisticActor``, any module with
            ``get_dist(td)``, an object with ``log_prob(td)``, or a deterministic actor with
            ``kernel_bandwidth`` / ``epsilon``.

    Keyword Args:
        gamma: discount.
        behavior_policy: ``None`` (use the logged ``action_log_prob`` / ``action_prob``, or
            estimate the behaviour policy from the data when neither is logged),
            ``"estimate"`` (always estimate, see :func:`~torchrl_offline.ope.behavior.estimate_behavior_policy`),
            or a policy object (same kinds as ``policy``).
        clip_weight: cap on the importance weights (trades variance for bias); the fraction
            capped is reported as ``fraction_clipped``.
        n_bootstrap: bootstrap resamples of the episodes for the interval.
        confidence: nominal coverage of the interval.
        ci_method: ``"percentile"`` or ``"bca"``.
        seed: seed of the bootstrap (and of the behaviour-policy fit).
        min_ess: warn when the effective sample size falls below
            ``max(min_ess, 1% of the episodes)``.
        support_threshold: a logged action counts as unsupported when its evaluation
            probability (discrete) or its ratio ``pi / mu`` (continuous) is below this; its
            ratio is then taken as exactly 0, and the count is reported.
        kernel_bandwidth: Gaussian kernel width around the greedy action (continuous).
        epsilon: exploration rate around the greedy action (discrete).
        num_actions: number of discrete actions (for a deterministic actor writing indices).
        policy_mode: which policy to score: ``"stochastic"`` (sampling the actor's
            distribution), ``"greedy"`` (its deterministic action: with continuous actions
            this needs ``kernel_bandwidth``, otherwise the estimate raises an
            :class:`OPEError`), or ``None`` (as given: the distribution if the policy has
            one, else its action). The result's ``policy_mode`` says which was scored.
        on_missing_initial: ``"error"`` or ``"drop"`` episodes without an initial state.
        behavior_kwargs: keyword arguments of ``estimate_behavior_policy`` when estimating.
        chunk_size: transitions read at a time.

    Examples:
        >>> import torch
        >>> from tensordict import TensorDict
        >>> from torchrl_offline.data.behavior import UniformRandomPolicy
        >>> from torchrl.data import Categorical
        >>> uniform = UniformRandomPolicy(Categorical(2))
        >>> td = TensorDict({
        ...     "observation": torch.zeros(4, 1), "action": torch.tensor([0, 1, 1, 0]),
        ...     "episode": torch.tensor([0, 0, 1, 1]),
        ...     "action_log_prob": torch.full((4,), 0.5).log(),
        ...     ("next", "reward"): torch.tensor([[1.0], [0.0], [0.0], [1.0]]),
        ... }, batch_size=[4])
        >>> result = ImportanceSampling(uniform, gamma=1.0, n_bootstrap=100).estimate(td)
        >>> round(result.value, 4), result.diagnostics["ess"]
        (1.0, 2.0)
    """

    name = "IS"
    weighted = False
    per_decision = False

    def _terms(self, iw: ImportanceWeights) -> tuple[torch.Tensor, torch.Tensor | None]:
        g = iw.episodes.returns(self.gamma)
        return (iw.trajectory_weights * g)[:, None], None


class WeightedImportanceSampling(ImportanceSampling):
    """Self-normalised (weighted) trajectory-wise importance sampling.

    ``sum_i w_i G_i / sum_i w_i``: biased for few episodes but consistent, and far less
    variable than :class:`ImportanceSampling`; its value always lies within the range of
    the logged returns. Same arguments as :class:`ImportanceSampling`.
    """

    name = "WIS"
    weighted = True

    def _terms(self, iw: ImportanceWeights) -> tuple[torch.Tensor, torch.Tensor | None]:
        w = iw.trajectory_weights[:, None]
        return w * iw.episodes.returns(self.gamma)[:, None], w


class PerDecisionImportanceSampling(ImportanceSampling):
    """Per-decision importance sampling: each reward weighted by the ratios before it.

    ``mean_i sum_t gamma^t w_it r_it``: unbiased, lower variance than trajectory-wise IS.
    Same arguments as :class:`ImportanceSampling`.
    """

    name = "PDIS"
    weighted = False
    per_decision = True

    def _terms(self, iw: ImportanceWeights) -> tuple[torch.Tensor, torch.Tensor | None]:
        eps = iw.episodes
        return (eps.discounts(self.gamma) * iw.weights * eps.rewards).sum(1, keepdim=True), None


class WeightedPerDecisionImportanceSampling(PerDecisionImportanceSampling):
    """Weighted per-decision importance sampling: per-step self-normalised weights.

    ``sum_t gamma^t sum_i w_it r_it / sum_i w_it``. Same arguments as
    :class:`ImportanceSampling`.
    """

    name = "WPDIS"
    weighted = True

    def _terms(self, iw: ImportanceWeights) -> tuple[torch.Tensor, torch.Tensor | None]:
        eps = iw.episodes
        return eps.discounts(self.gamma) * iw.weights * eps.rewards, iw.weights


def one_step_estimators(names: Sequence[str]) -> tuple[list[str], str | None]:
    """The estimators to run on data whose every episode is one step: ``names`` (short
    names, as ``torchrl-offline ope --estimators`` takes them) with each per-decision
    estimator replaced by its twin of :data:`ONE_STEP_TWINS` (once), and a note saying
    why, or ``None`` when ``names`` has none.

    Examples:
        >>> from torchrl_offline.ope.importance import one_step_estimators
        >>> names, note = one_step_estimators(["fqe", "wis", "wpdis", "wdr"])
        >>> names
        ['fqe', 'wis', 'wdr']
        >>> print(note)
        wpdis not run: every episode is one step, where WPDIS equals WIS
    """
    replaced = [name for name in names if name in ONE_STEP_TWINS]
    if not replaced:
        return list(names), None
    kept = list(dict.fromkeys(ONE_STEP_TWINS.get(name, name) for name in names))
    pairs = ", ".join(f"{n.upper()} equals {ONE_STEP_TWINS[n].upper()}" for n in replaced)
    return kept, f"{', '.join(replaced)} not run: every episode is one step, where {pairs}"
