"""The result of an off-policy estimate, and the exception raised on bad OPE input."""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass, field
from typing import Any

import torch

__all__ = ["OPEError", "OPEResult", "OPEWarning"]


class OPEError(ValueError):
    """Input that off-policy evaluation cannot use.

    The message names the offending key (or argument) and, where it applies, the first
    offending transition (or episode) index.

    Attributes:
        field: the key or argument at fault, if known.
        index: the first offending transition (or episode) index, if known.
    """

    def __init__(self, message: str, *, field: str | None = None, index: int | None = None):
        super().__init__(message)
        self.field = field
        self.index = index


class OPEWarning(UserWarning):
    """An estimate was computed but should not be trusted blindly (low ESS, unsupported actions)."""


@dataclass
class OPEResult:
    """An off-policy estimate of a policy's expected discounted return.

    Attributes:
        value: the point estimate.
        ci_low: lower end of the confidence interval.
        ci_high: upper end of the confidence interval.
        diagnostics: estimator-specific figures; importance-weighted estimators give at
            least ``ess`` (effective sample size, in episodes: Kish's ``(sum w)^2 / sum w^2``
            of the trajectory weights for IS/WIS, its discount-weighted mean over steps for
            the per-decision estimators), ``ess_trajectory``, ``max_weight`` and
            ``mean_weight`` (trajectory weights), ``fraction_clipped`` and
            ``fraction_near_zero`` (of the logged actions).
        warnings: reasons to distrust the estimate (also emitted as :class:`OPEWarning`).
        estimator: the estimator's name, e.g. ``"WeightedImportanceSampling"``.
        per_episode: per-episode contributions (their mean is ``value``), or ``None``.
        confidence: the interval's nominal coverage, e.g. ``0.95``.
        notes: facts about how the estimate was made, e.g. that the behaviour policy was
            estimated from the data rather than logged.
        policy_mode: which policy the estimate scores: ``"greedy"`` (the actor's
            deterministic action, possibly smoothed by an epsilon or a kernel) or
            ``"stochastic"`` (sampling its distribution); ``None`` if unknown.
        policy: a description of the evaluation policy as scored.

    Examples:
        >>> r = OPEResult(value=1.5, ci_low=1.2, ci_high=1.8, diagnostics={"ess": 40.0},
        ...               estimator="ImportanceSampling")
        >>> print(r)
        ImportanceSampling: 1.5 (95% CI [1.2, 1.8])
          ess: 40
    """

    value: float
    ci_low: float
    ci_high: float
    diagnostics: dict[str, Any] = field(default_factory=dict)
    warnings: list[str] = field(default_factory=list)
    estimator: str = ""
    per_episode: torch.Tensor | None = field(default=None, repr=False)
    confidence: float = 0.95
    notes: list[str] = field(default_factory=list)
    policy_mode: str | None = None
    policy: str = ""

    def warn(self, message: str, *, stacklevel: int = 4) -> None:
        """Record ``message`` on the result and emit it as an :class:`OPEWarning`."""
        self.warnings.append(message)
        warnings.warn(f"{self.estimator}: {message}", OPEWarning, stacklevel=stacklevel)

    def as_dict(self) -> dict[str, Any]:
        """JSON-friendly view (no tensors)."""
        return {
            "estimator": self.estimator,
            "value": self.value,
            "ci_low": self.ci_low,
            "ci_high": self.ci_high,
            "confidence": self.confidence,
            "diagnostics": dict(self.diagnostics),
            "warnings": list(self.warnings),
            "notes": list(self.notes),
            "policy_mode": self.policy_mode,
            "policy": self.policy,
        }

    def __str__(self) -> str:
        head = (
            f"{self.estimator or 'estimate'}: {_fmt(self.value)} "
            f"({self.confidence:.0%} CI [{_fmt(self.ci_low)}, {_fmt(self.ci_high)}])"
        )
        lines = [head]
        if self.policy or self.policy_mode:
            lines.append(f"  policy: {self.policy or self.policy_mode}")
        lines += [f"  {k}: {_fmt(v)}" for k, v in self.diagnostics.items()]
        lines += [f"  note: {n}" for n in self.notes]
        lines += [f"  WARNING: {w}" for w in self.warnings]
        return "\n".join(lines)


def _fmt(v: Any) -> str:
    if isinstance(v, float):
        return f"{v:.4g}" if math.isfinite(v) else str(v)
    return str(v)
