"""Policy selection from off-policy estimates, and the DOPE benchmark's metrics.

Given estimates for several candidate policies, :func:`rank_policies` orders them (by
the point estimate, or by the lower confidence bound for a cautious choice). When the
true values are known (e.g. from on-policy rollouts in a simulator), the quality of the
estimates is measured as in the DOPE benchmark (Fu et al., "Benchmarks for Deep
Off-Policy Evaluation", ICLR 2021):

* :func:`absolute_error` and :func:`relative_error` per policy;
* :func:`spearman_correlation` between estimated and true values (rank agreement);
* :func:`regret_at_k`: how much value is lost by deploying the best of the top ``k``
  policies by estimate instead of the best policy overall.

:func:`selection_metrics` computes them all at once.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Mapping, Sequence
from typing import Literal

import torch
from torch import Tensor

from torchrl_offline.ope.result import OPEError, OPEResult

__all__ = [
    "absolute_error",
    "rank_policies",
    "regret_at_k",
    "relative_error",
    "selection_metrics",
    "spearman_correlation",
]

Estimate = float | OPEResult | Tensor
Values = Mapping[str, Estimate] | Sequence[Estimate] | Tensor


def _scalar(value: Estimate, attr: str = "value") -> float:
    if isinstance(value, OPEResult):
        return float(getattr(value, attr))
    return float(value)


def _names_and_values(values: Values, attr: str = "value") -> tuple[list, Tensor]:
    if isinstance(values, Mapping):
        names = list(values.keys())
        vals = [_scalar(values[n], attr) for n in names]
    else:
        if isinstance(values, Tensor):
            values = values.reshape(-1).tolist()
        vals = [_scalar(v, attr) for v in values]
        names = list(range(len(vals)))
    out = torch.tensor(vals, dtype=torch.float64)
    if not torch.isfinite(out).all():
        bad = int((~torch.isfinite(out)).nonzero()[0])
        raise OPEError(f"non-finite {attr} for policy {names[bad]!r}", field=str(names[bad]))
    return names, out


def _paired(estimates: Values, true_values: Values) -> tuple[list, Tensor, Tensor]:
    """Align estimates with true values (by name for mappings, by position otherwise)."""
    names, est = _names_and_values(estimates)
    if isinstance(estimates, Mapping) and isinstance(true_values, Mapping):
        missing = [n for n in names if n not in true_values]
        if missing:
            raise OPEError(f"no true value for policy {missing[0]!r}", field=str(missing[0]))
        extra = [n for n in true_values if n not in estimates]
        if extra:
            raise OPEError(f"no estimate for policy {extra[0]!r}", field=str(extra[0]))
        true = torch.tensor([_scalar(true_values[n]) for n in names], dtype=torch.float64)
        if not torch.isfinite(true).all():
            bad = int((~torch.isfinite(true)).nonzero()[0])
            raise OPEError(
                f"non-finite true value for policy {names[bad]!r}", field=str(names[bad])
            )
    elif isinstance(estimates, Mapping) or isinstance(true_values, Mapping):
        raise TypeError("estimates and true_values must both be mappings or both be sequences")
    else:
        _, true = _names_and_values(true_values)
    if est.shape != true.shape:
        raise OPEError(
            f"got {est.numel()} estimates but {true.numel()} true values", field="true_values"
        )
    if est.numel() == 0:
        raise OPEError("no policies to compare", field="estimates")
    return names, est, true


def rank_policies(
    estimates: Values, *, by: Literal["value", "ci_low", "ci_high"] = "value"
) -> list:
    """Orders candidate policies from best to worst by their estimates.

    Args:
        estimates: one estimate per policy: a mapping ``name -> float or OPEResult``, or
            a sequence (then the ranking holds positions).

    Keyword Args:
        by: ``"value"`` ranks by the point estimate; ``"ci_low"`` by the lower end of the
            confidence interval (a cautious choice: a policy must be good with high
            confidence); ``"ci_high"`` by the upper end (an optimistic one). The interval
            bounds need :class:`~torchrl_offline.ope.result.OPEResult` estimates.

    Returns:
        The names (or positions), best first; ties keep the input order.

    Examples:
        >>> from torchrl_offline.ope.result import OPEResult
        >>> rank_policies({"bc": 10.0, "iql": 12.5, "random": -3.0})
        ['iql', 'bc', 'random']
        >>> risky = OPEResult(value=20.0, ci_low=-5.0, ci_high=45.0)
        >>> safe = OPEResult(value=15.0, ci_low=12.0, ci_high=18.0)
        >>> rank_policies({"risky": risky, "safe": safe}, by="ci_low")
        ['safe', 'risky']
    """
    if by not in ("value", "ci_low", "ci_high"):
        raise ValueError(f"by must be 'value', 'ci_low' or 'ci_high', got {by!r}")
    items = estimates.values() if isinstance(estimates, Mapping) else estimates
    if by != "value" and not all(isinstance(v, OPEResult) for v in items):
        raise TypeError(f"ranking by {by!r} needs OPEResult estimates (with an interval)")
    names, vals = _names_and_values(estimates, by)
    order = torch.sort(vals, descending=True, stable=True).indices.tolist()
    return [names[i] for i in order]


def absolute_error(estimates: Values, true_values: Values) -> Tensor:
    """Per-policy absolute error ``|estimate - true|`` (float64, in input order).

    Examples:
        >>> absolute_error([1.0, 2.0], [1.5, 1.0])
        tensor([0.5000, 1.0000], dtype=torch.float64)
    """
    _, est, true = _paired(estimates, true_values)
    return (est - true).abs()


def relative_error(estimates: Values, true_values: Values) -> Tensor:
    """Per-policy relative error ``|estimate - true| / |true|`` (float64, in input order).

    Raises:
        OPEError: a true value is zero (the relative error is undefined), naming the policy.

    Examples:
        >>> relative_error({"a": 90.0, "b": -110.0}, {"a": 100.0, "b": -100.0})
        tensor([0.1000, 0.1000], dtype=torch.float64)
    """
    names, est, true = _paired(estimates, true_values)
    if (true == 0).any():
        bad = names[int((true == 0).nonzero()[0])]
        raise OPEError(
            f"the true value of policy {bad!r} is 0: relative error is undefined "
            "(use absolute_error)",
            field=str(bad),
        )
    return (est - true).abs() / true.abs()


def _average_ranks(x: Tensor) -> Tensor:
    """Ranks 1..n with ties sharing their average rank."""
    order = torch.argsort(x, stable=True)
    ranks = torch.empty_like(x)
    ranks[order] = torch.arange(1, x.numel() + 1, dtype=x.dtype)
    values, inverse = torch.unique(x, return_inverse=True)
    sums = torch.zeros_like(values).index_add_(0, inverse, ranks)
    counts = torch.zeros_like(values).index_add_(0, inverse, torch.ones_like(ranks))
    return (sums / counts)[inverse]


def spearman_correlation(estimates: Values, true_values: Values) -> float:
    """Spearman rank correlation between estimated and true values, in ``[-1, 1]``.

    The Pearson correlation of the ranks, ties given their average rank. ``1`` means the
    estimates order the policies exactly as their true values do.

    Returns:
        The correlation; ``nan`` (with a warning) when either side is constant, where
        rank correlation is undefined.

    Examples:
        >>> spearman_correlation([1.0, 2.0, 3.0], [10.0, 30.0, 20.0])
        0.5
    """
    _, est, true = _paired(estimates, true_values)
    if est.numel() < 2:
        raise OPEError("rank correlation needs at least 2 policies", field="estimates")
    re, rt = _average_ranks(est), _average_ranks(true)
    re, rt = re - re.mean(), rt - rt.mean()
    denom = (re.square().sum() * rt.square().sum()).sqrt()
    if float(denom) == 0.0:
        warnings.warn(
            "spearman_correlation: the estimates or the true values are all equal; "
            "rank correlation is undefined (nan)",
            stacklevel=2,
        )
        return math.nan
    return round(float((re * rt).sum() / denom), 12)


def regret_at_k(
    estimates: Values, true_values: Values, k: int = 1, *, normalize: bool = False
) -> float:
    """Regret@k: the true value lost by picking among the top ``k`` policies by estimate.

    ``max_i true_i - max_{i in top-k(estimates)} true_i``: zero when the best policy is
    among the ``k`` policies with the highest estimates. When estimates tie at the edge
    of the top ``k`` (e.g. estimators that return 0 for several policies), the shortlist
    is completed at random among the tied policies and the regret is its expectation, so
    the input order never decides the result.

    Args:
        estimates: one estimate per policy (mapping or sequence).
        true_values: the true values, matched by name (mappings) or position.
        k: size of the shortlist, ``1 <= k <= number of policies``.

    Keyword Args:
        normalize: divide by ``max(true) - min(true)`` so that the regret is in ``[0, 1]``
            and comparable across tasks (0 when all true values are equal).

    Examples:
        >>> true = {"a": 100.0, "b": 80.0, "c": 0.0}
        >>> regret_at_k({"a": 5.0, "b": 9.0, "c": 1.0}, true, k=1)
        20.0
        >>> regret_at_k({"a": 5.0, "b": 9.0, "c": 1.0}, true, k=2)
        0.0
        >>> regret_at_k({"a": 5.0, "b": 9.0, "c": 1.0}, true, k=1, normalize=True)
        0.2
        >>> round(regret_at_k({"a": 0.0, "b": 0.0, "c": 0.0}, true, k=1), 6)  # tie: mean
        40.0
    """
    _, est, true = _paired(estimates, true_values)
    if not 1 <= k <= est.numel():
        raise ValueError(f"k must be in [1, {est.numel()}], got {k}")
    edge = torch.sort(est, descending=True).values[k - 1]
    above = true[est > edge]
    tied = torch.sort(true[est == edge], descending=True).values
    m, n = k - above.numel(), tied.numel()
    best_above = float(above.max()) if above.numel() else -math.inf
    # the best tied policy drawn into a random m-subset is the j-th (0-based) with
    # probability C(n - 1 - j, m - 1) / C(n, m)
    expected = 0.0
    for j in range(n - m + 1):
        prob = math.comb(n - 1 - j, m - 1) / math.comb(n, m)
        expected += prob * max(float(tied[j]), best_above)
    regret = float(true.max()) - expected
    if abs(regret) < 1e-12:  # rounding of the expectation
        regret = 0.0
    if normalize:
        span = float(true.max() - true.min())
        return regret / span if span > 0 else 0.0
    return regret


def selection_metrics(
    estimates: Values,
    true_values: Values,
    *,
    ks: Sequence[int] = (1, 3),
    normalize_regret: bool = True,
) -> dict[str, float]:
    """All the DOPE metrics of one estimator over a set of policies.

    Args:
        estimates: one estimate per policy (mapping or sequence).
        true_values: the true values, matched by name (mappings) or position.

    Keyword Args:
        ks: the ``k`` of each ``regret@k`` (values larger than the number of policies
            are skipped).
        normalize_regret: report regrets divided by the range of the true values.

    Returns:
        ``{"absolute_error", "relative_error", "spearman", "regret@k"...}``: mean
        absolute error, mean relative error (``nan`` if a true value is 0), Spearman
        correlation and one regret per ``k``.

    Examples:
        >>> m = selection_metrics([3.0, 2.0, 1.0], [2.0, 4.0, 0.5], ks=(1,))
        >>> m["absolute_error"], m["spearman"], m["regret@1"]
        (1.1666666666666667, 0.5, 0.5714285714285714)
    """
    out = {"absolute_error": float(absolute_error(estimates, true_values).mean())}
    try:
        out["relative_error"] = float(relative_error(estimates, true_values).mean())
    except OPEError:
        out["relative_error"] = math.nan
    n = _paired(estimates, true_values)[1].numel()
    out["spearman"] = spearman_correlation(estimates, true_values) if n > 1 else math.nan
    for k in ks:
        if k <= n:
            out[f"regret@{k}"] = regret_at_k(estimates, true_values, k, normalize=normalize_regret)
    return out
