"""Confidence intervals and high-confidence lower bounds over episodes.

Every estimator of :mod:`torchrl_offline.ope` is a function of per-episode quantities,
either a plain mean over episodes, or (self-normalised estimators) a sum over ``K`` terms
of ratios of sums over episodes:

.. math::

    \\hat V = \\sum_k \\frac{\\sum_i v_{ik}}{\\sum_i d_{ik}}

(a mean is the case ``K = 1``, ``d = 1``). :func:`bootstrap_interval` resamples whole
episodes with replacement and recomputes this statistic, all resamples at once as one
matrix product, so thousands of resamples cost milliseconds; percentile and BCa
(bias-corrected and accelerated, Efron 1987) intervals are available.
:func:`lower_bound` gives a one-sided high-confidence lower bound (bootstrap, Student t or
Hoeffding), as used to decide whether a policy is safe to deploy (Thomas et al., 2015).
"""

from __future__ import annotations

import math
from typing import Literal

import torch

__all__ = [
    "bootstrap_interval",
    "bootstrap_samples",
    "hoeffding_interval",
    "linearized_t_interval",
    "lower_bound",
    "ratio_statistic",
    "student_t_ppf",
    "t_interval",
]

BootstrapMethod = Literal["percentile", "bca"]


def _as_2d(values: torch.Tensor, denominators: torch.Tensor | None):
    v = torch.as_tensor(values, dtype=torch.float64)
    if v.ndim == 1:
        v = v[:, None]
    if v.ndim != 2 or v.shape[0] == 0:
        raise ValueError(
            f"values must be [episodes] or [episodes, K] and non-empty, got {tuple(v.shape)}"
        )
    if denominators is None:
        return v, None
    d = torch.as_tensor(denominators, dtype=torch.float64)
    if d.ndim == 1:
        d = d[:, None]
    if d.shape != v.shape:
        raise ValueError(f"denominators {tuple(d.shape)} must match values {tuple(v.shape)}")
    return v, d


def _ratio(num: torch.Tensor, den: torch.Tensor) -> torch.Tensor:
    """Sum over the last dim of ``num / den``, with ``0 / 0`` read as 0."""
    safe = torch.where(den != 0, den, torch.ones_like(den))
    return torch.where(den != 0, num / safe, torch.zeros_like(num)).sum(-1)


def ratio_statistic(values: torch.Tensor, denominators: torch.Tensor | None = None) -> float:
    """The statistic above: a mean over episodes, or a sum of ratios of sums over episodes.

    Examples:
        >>> import torch
        >>> ratio_statistic(torch.tensor([1.0, 2.0, 3.0]))
        2.0
        >>> ratio_statistic(torch.tensor([2.0, 0.0]), torch.tensor([1.0, 3.0]))
        0.5
    """
    v, d = _as_2d(values, denominators)
    if d is None:
        return v.sum(-1).mean().item()
    return _ratio(v.sum(0), d.sum(0)).item()


def bootstrap_samples(
    values: torch.Tensor,
    denominators: torch.Tensor | None = None,
    *,
    n_bootstrap: int = 1000,
    seed: int = 0,
    max_elements: int = 1 << 22,
) -> torch.Tensor:
    """The statistic recomputed on ``n_bootstrap`` resamples of the episodes, float64 ``[n_bootstrap]``.

    Args:
        values: per-episode values ``[E]`` or ``[E, K]``.
        denominators: per-episode denominators of the same shape, or ``None`` for a mean.

    Keyword Args:
        n_bootstrap: number of resamples.
        seed: seed of the resampling (a private generator; global state is untouched).
        max_elements: bound on the ``[resamples, E]`` count matrix built at a time.

    Returns:
        The resampled statistics; for a self-normalised statistic, NaN on resamples where
        it is undefined (a denominator that is non-zero on the data sums to 0 in the
        resample), which the intervals leave out.
    """
    v, d = _as_2d(values, denominators)
    e = v.shape[0]
    gen = torch.Generator().manual_seed(int(seed))
    per_chunk = max(1, max_elements // e)
    out = []
    vs = v.sum(-1, keepdim=True) if d is None else v
    defined = None if d is None else d.sum(0) != 0
    for start in range(0, n_bootstrap, per_chunk):
        b = min(per_chunk, n_bootstrap - start)
        idx = torch.randint(e, (b, e), generator=gen)
        counts = torch.zeros(b, e, dtype=torch.float64).scatter_add_(
            1, idx, torch.ones(b, e, dtype=torch.float64)
        )
        if d is None:
            out.append((counts @ vs)[:, 0] / e)
        else:
            den = counts @ d
            stat = _ratio(counts @ v, den)
            # A term whose denominator vanishes in the resample but not in the data (every
            # drawn episode has weight 0 there) is undefined: reading it as 0 would drag
            # the interval towards 0.
            undefined = ((den == 0) & defined).any(-1)
            out.append(torch.where(undefined, math.nan, stat))
    return torch.cat(out)


def _defined(samples: torch.Tensor) -> torch.Tensor:
    return samples[~samples.isnan()]


def _jackknife(v: torch.Tensor, d: torch.Tensor | None) -> torch.Tensor:
    e = v.shape[0]
    if d is None:
        total = v.sum(-1)
        return (total.sum() - total) / (e - 1)
    den = d.sum(0) - d
    # Leaving out the only episode with weight at a term makes the statistic undefined.
    undefined = ((den == 0) & (d.sum(0) != 0)).any(-1)
    return torch.where(undefined, math.nan, _ratio(v.sum(0) - v, den))


def _levels(
    samples: torch.Tensor,
    theta: float,
    v: torch.Tensor,
    d: torch.Tensor | None,
    alphas: torch.Tensor,
    method: str,
) -> torch.Tensor:
    """Quantile levels of the bootstrap distribution for nominal levels ``alphas``."""
    if method == "percentile":
        return alphas
    if method != "bca":
        raise ValueError(f"method must be 'percentile' or 'bca', got {method!r}")
    b = samples.numel()
    prop = ((samples < theta).sum() + 0.5 * (samples == theta).sum()).item() / b
    prop = min(max(prop, 1.0 / (b + 1)), b / (b + 1.0))
    z0 = torch.special.ndtri(torch.tensor(prop, dtype=torch.float64))
    if v.shape[0] > 2:
        loo = _jackknife(v, d)
        loo = loo[~loo.isnan()]
        diff = loo.mean() - loo
        denom = 6.0 * diff.pow(2).sum().pow(1.5)
        a = (diff.pow(3).sum() / denom) if denom > 0 else torch.tensor(0.0, dtype=torch.float64)
    else:
        a = torch.tensor(0.0, dtype=torch.float64)
    z = torch.special.ndtri(alphas)
    return torch.special.ndtr(z0 + (z0 + z) / (1 - a * (z0 + z)))


def bootstrap_interval(
    values: torch.Tensor,
    denominators: torch.Tensor | None = None,
    *,
    confidence: float = 0.95,
    n_bootstrap: int = 1000,
    method: BootstrapMethod = "percentile",
    seed: int = 0,
) -> tuple[float, float]:
    """Two-sided bootstrap confidence interval over episodes.

    Args:
        values: per-episode values ``[E]`` (the estimate is their mean) or ``[E, K]``
            numerators of a self-normalised estimate (see the module docstring).
        denominators: per-episode denominators ``[E, K]``, or ``None``.

    Keyword Args:
        confidence: nominal coverage, e.g. 0.95.
        n_bootstrap: number of resamples.
        method: ``"percentile"`` or ``"bca"`` (bias-corrected and accelerated; the
            acceleration comes from the jackknife over episodes).
        seed: seed of the resampling.

    Returns:
        ``(low, high)``. With a single episode the interval is the point estimate itself.

    Examples:
        >>> import torch
        >>> x = torch.randn(200, generator=torch.Generator().manual_seed(0)) + 3.0
        >>> low, high = bootstrap_interval(x, n_bootstrap=2000, seed=0)
        >>> low < 3.0 < high
        True
    """
    if not 0 < confidence < 1:
        raise ValueError(f"confidence must be in (0, 1), got {confidence}")
    v, d = _as_2d(values, denominators)
    theta = ratio_statistic(v, d)
    if v.shape[0] < 2:
        return theta, theta
    samples = _defined(bootstrap_samples(v, d, n_bootstrap=n_bootstrap, seed=seed))
    if samples.numel() == 0:
        return theta, theta
    alpha = 1 - confidence
    levels = _levels(
        samples, theta, v, d, torch.tensor([alpha / 2, 1 - alpha / 2], dtype=torch.float64), method
    )
    q = torch.quantile(samples, levels.clamp(0, 1))
    return q[0].item(), q[1].item()


def student_t_ppf(p: float, df: float) -> float:
    """Quantile of Student's t distribution with ``df`` degrees of freedom.

    Computed by ``scipy.special.stdtrit``, the function behind ``scipy.stats.t.ppf``
    (importing ``scipy.stats`` itself takes seconds).

    Examples:
        >>> round(student_t_ppf(0.975, 10), 3)
        2.228
    """
    from scipy.special import stdtrit

    if not 0 < p < 1:
        raise ValueError(f"p must be in (0, 1), got {p}")
    if not df >= 1:
        raise ValueError(f"df must be >= 1, got {df}")
    return float(stdtrit(df, p))


def t_interval(values: torch.Tensor, *, confidence: float = 0.95) -> tuple[float, float]:
    """Student t interval for the mean of per-episode values ``[E]`` (assumes near-normal means)."""
    v = torch.as_tensor(values, dtype=torch.float64).reshape(-1)
    n = v.numel()
    m = v.mean().item()
    if n < 2:
        return m, m
    half = student_t_ppf(0.5 + confidence / 2, n - 1) * v.std().item() / math.sqrt(n)
    return m - half, m + half


def linearized_t_interval(
    values: torch.Tensor,
    denominators: torch.Tensor | None = None,
    *,
    confidence: float = 0.95,
) -> tuple[float, float]:
    """Student t interval (central limit theorem) for the statistic of the module docstring.

    A mean is the plain t interval over the per-episode values; a sum of ratios
    :math:`\\sum_k \\bar v_k / \\bar d_k` is linearised (delta method): each episode
    contributes :math:`\\sum_k (v_{ik} - \\hat\\theta_k d_{ik}) / \\bar d_k`, and the interval
    is the statistic plus or minus the t quantile times their standard error. No
    resampling: it costs one pass over the episodes, whatever their number.

    Examples:
        >>> import torch
        >>> x = torch.randn(400, generator=torch.Generator().manual_seed(0)) + 3.0
        >>> low, high = linearized_t_interval(x)
        >>> low < 3.0 < high
        True
        >>> low, high = linearized_t_interval(torch.stack([2 * x, x], 1), torch.ones(400, 2))
        >>> low < 9.0 < high
        True
    """
    if not 0 < confidence < 1:
        raise ValueError(f"confidence must be in (0, 1), got {confidence}")
    v, d = _as_2d(values, denominators)
    theta = ratio_statistic(v, d)
    n = v.shape[0]
    if n < 2:
        return theta, theta
    if d is None:
        influence = v.sum(-1)
    else:
        mean_d = d.mean(0)
        safe = torch.where(mean_d != 0, mean_d, torch.ones_like(mean_d))
        ratios = torch.where(mean_d != 0, v.sum(0) / (safe * n), 0.0)
        influence = torch.where(mean_d != 0, (v - ratios * d) / safe, 0.0).sum(-1)
    half = student_t_ppf(0.5 + confidence / 2, n - 1) * influence.std().item() / math.sqrt(n)
    return theta - half, theta + half


def hoeffding_interval(
    values: torch.Tensor, *, value_range: tuple[float, float], confidence: float = 0.95
) -> tuple[float, float]:
    """Hoeffding interval for the mean of per-episode values known to lie in ``value_range``.

    Valid for any distribution, but wide; importance-weighted values are bounded only by
    ``max_weight * max_return``, so clip the weights to use it.
    """
    v = torch.as_tensor(values, dtype=torch.float64).reshape(-1)
    lo, hi = value_range
    if not hi > lo:
        raise ValueError(f"value_range must be (low, high) with high > low, got {value_range}")
    if v.min() < lo or v.max() > hi:
        raise ValueError(f"values fall outside value_range {value_range}: [{v.min()}, {v.max()}]")
    half = (hi - lo) * math.sqrt(math.log(2 / (1 - confidence)) / (2 * v.numel()))
    m = v.mean().item()
    return m - half, m + half


def lower_bound(
    values: torch.Tensor,
    denominators: torch.Tensor | None = None,
    *,
    confidence: float = 0.95,
    method: Literal["bca", "percentile", "t", "hoeffding"] = "bca",
    n_bootstrap: int = 2000,
    seed: int = 0,
    value_range: tuple[float, float] | None = None,
) -> float:
    """One-sided high-confidence lower bound on the policy value.

    The true value is at least this with probability ``confidence`` (exactly for
    ``"hoeffding"`` given bounded values, approximately for the others).

    Keyword Args:
        confidence: e.g. 0.95 for a bound that holds 95% of the time.
        method: ``"bca"`` or ``"percentile"`` bootstrap, ``"t"`` (Student t), or
            ``"hoeffding"`` (needs ``value_range``; means only).

    Examples:
        >>> import torch
        >>> x = torch.rand(500, generator=torch.Generator().manual_seed(0))
        >>> lb = lower_bound(x, method="hoeffding", value_range=(0.0, 1.0))
        >>> lb < x.mean().item()
        True
    """
    if not 0 < confidence < 1:
        raise ValueError(f"confidence must be in (0, 1), got {confidence}")
    v, d = _as_2d(values, denominators)
    if method in ("t", "hoeffding"):
        if d is not None:
            raise ValueError(
                f"method {method!r} applies to means only, not self-normalised estimates"
            )
        per = v.sum(-1)
        n = per.numel()
        m = per.mean().item()
        if method == "t":
            if n < 2:
                return m
            return m - student_t_ppf(confidence, n - 1) * per.std().item() / math.sqrt(n)
        if value_range is None:
            raise ValueError("method 'hoeffding' needs value_range=(low, high)")
        return hoeffding_interval(per, value_range=value_range, confidence=2 * confidence - 1)[0]
    theta = ratio_statistic(v, d)
    if v.shape[0] < 2:
        return theta
    samples = _defined(bootstrap_samples(v, d, n_bootstrap=n_bootstrap, seed=seed))
    if samples.numel() == 0:
        return theta
    level = _levels(
        samples, theta, v, d, torch.tensor([1 - confidence], dtype=torch.float64), method
    )
    return torch.quantile(samples, level.clamp(0, 1))[0].item()
