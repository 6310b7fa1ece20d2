"""Bootstrap intervals and lower bounds: coverage over repeated datasets of a finite MDP."""

from __future__ import annotations

import math

import pytest
import torch

from torchrl_offline.ope.doubly_robust import DoublyRobust
from torchrl_offline.ope.importance import PerDecisionImportanceSampling, WeightedImportanceSampling
from torchrl_offline.ope.uncertainty import (
    bootstrap_interval,
    bootstrap_samples,
    hoeffding_interval,
    lower_bound,
    ratio_statistic,
    student_t_ppf,
    t_interval,
)

N_DATASETS, N_EPISODES = 200, 50


@pytest.fixture(scope="module")
def per_episode(problem):
    """Per-episode DR and PDIS terms of 200 independent datasets of 50 episodes."""
    data = problem.mdp.sample(problem.mu, N_DATASETS * N_EPISODES, seed=11)
    actor = problem.actor()
    dr = DoublyRobust(actor, problem.exact_q, gamma=problem.gamma, n_bootstrap=10)
    pdis = PerDecisionImportanceSampling(actor, gamma=problem.gamma, n_bootstrap=10)
    return {
        "data": data,
        "DR": dr.estimate(data).per_episode.reshape(N_DATASETS, N_EPISODES),
        "PDIS": pdis.estimate(data).per_episode.reshape(N_DATASETS, N_EPISODES),
    }


@pytest.mark.parametrize(
    "name,method", [("DR", "percentile"), ("DR", "bca"), ("PDIS", "percentile")]
)
def test_bootstrap_coverage_close_to_nominal(problem, per_episode, name, method):
    # Measured with seed 11: DR percentile 0.965, DR BCa 0.955, PDIS percentile 0.94
    # (1000 resamples); the binomial standard error of a coverage over 200 datasets is 0.015.
    per = per_episode[name]
    truth = problem.true_value
    covered = 0
    for j in range(N_DATASETS):
        low, high = bootstrap_interval(per[j], n_bootstrap=500, method=method, seed=j)
        covered += low <= truth <= high
    assert 0.9 <= covered / N_DATASETS <= 0.99


def test_estimator_interval_is_the_bootstrap_of_its_episodes(problem, per_episode):
    data = per_episode["data"]
    one = data[data["episode"] < N_EPISODES]
    est = DoublyRobust(
        problem.actor(), problem.exact_q, gamma=problem.gamma, n_bootstrap=300, seed=4
    )
    r = est.estimate(one)
    assert (r.ci_low, r.ci_high) == bootstrap_interval(
        per_episode["DR"][0], n_bootstrap=300, seed=4
    )


def test_lower_bound_one_sided_coverage(problem, per_episode):
    per = per_episode["DR"]
    truth = problem.true_value
    for method in ("t", "percentile"):
        ok = sum(
            lower_bound(per[j], method=method, n_bootstrap=300, seed=j) <= truth
            for j in range(N_DATASETS)
        )
        assert 0.9 <= ok / N_DATASETS <= 0.995, method


def test_count_matrix_bootstrap_matches_explicit_resampling():
    g = torch.Generator().manual_seed(0)
    num = torch.rand(30, 4, generator=g, dtype=torch.float64)
    den = torch.rand(30, 4, generator=g, dtype=torch.float64) + 0.1
    got = bootstrap_samples(num, den, n_bootstrap=25, seed=3)
    idx = torch.randint(30, (25, 30), generator=torch.Generator().manual_seed(3))
    want = torch.stack([(num[i].sum(0) / den[i].sum(0)).sum() for i in idx])
    torch.testing.assert_close(got, want)
    mean_got = bootstrap_samples(num[:, 0], n_bootstrap=25, seed=3)
    torch.testing.assert_close(mean_got, torch.stack([num[i, 0].mean() for i in idx]))


def test_ratio_statistic_and_weighted_estimator_agree(problem, per_episode):
    data = per_episode["data"]
    one = data[data["episode"] < 200]
    est = WeightedImportanceSampling(problem.actor(), gamma=problem.gamma, n_bootstrap=50)
    iw = est.importance_weights(one)
    w = iw.trajectory_weights
    g = iw.episodes.returns(problem.gamma)
    r = est.estimate(one)
    assert r.value == pytest.approx(ratio_statistic(w * g, w), rel=1e-12)
    assert r.value == pytest.approx(((w * g).sum() / w.sum()).item(), rel=1e-12)


def test_bca_and_percentile_on_skewed_data():
    gen_x = torch.empty(400).exponential_(generator=torch.Generator().manual_seed(1))
    x = gen_x.to(torch.float64)
    p = bootstrap_interval(x, n_bootstrap=2000, seed=0)
    b = bootstrap_interval(x, n_bootstrap=2000, seed=0, method="bca")
    m = x.mean().item()
    assert p[0] < m < p[1] and b[0] < m < b[1]
    # BCa shifts a right-skewed mean's interval to the right.
    assert b[1] > p[1] and b[0] > p[0]
    assert bootstrap_interval(x, n_bootstrap=200, seed=5) == bootstrap_interval(
        x, n_bootstrap=200, seed=5
    )


def test_student_t_quantiles():
    # Standard table values.
    for p, df, q in [(0.975, 1, 12.706), (0.975, 2, 4.303), (0.95, 5, 2.015), (0.975, 30, 2.042)]:
        assert student_t_ppf(p, df) == pytest.approx(q, abs=1e-3)
    assert student_t_ppf(0.975, 100000) == pytest.approx(1.95996, abs=1e-4)
    lo, hi = t_interval(torch.tensor([1.0, 2.0, 3.0]))
    assert (lo + hi) / 2 == pytest.approx(2.0)
    assert hi - lo == pytest.approx(2 * 4.303 / math.sqrt(3), abs=1e-3)


def test_student_t_quantiles_are_scipy_stats_and_closed_forms():
    from scipy import stats

    for df in (1, 2, 3, 7, 30, 500, 10_000):
        for p in (0.001, 0.05, 0.5, 0.9, 0.975, 0.9999):
            assert student_t_ppf(p, df) == pytest.approx(stats.t.ppf(p, df), rel=1e-12, abs=1e-12)
    for p in (0.6, 0.9, 0.975, 0.995):
        # df = 1 is Cauchy; df = 2 has the closed form (2p - 1) / sqrt(2 p (1 - p))
        assert student_t_ppf(p, 1) == pytest.approx(math.tan(math.pi * (p - 0.5)), rel=1e-10)
        assert student_t_ppf(p, 2) == pytest.approx(
            (2 * p - 1) / math.sqrt(2 * p * (1 - p)), rel=1e-10
        )
    with pytest.raises(ValueError, match="p must be"):
        student_t_ppf(1.0, 3)
    with pytest.raises(ValueError, match="df must be"):
        student_t_ppf(0.9, 0)


def test_hoeffding():
    x = torch.rand(1000, generator=torch.Generator().manual_seed(2), dtype=torch.float64)
    lo, hi = hoeffding_interval(x, value_range=(0.0, 1.0), confidence=0.95)
    assert hi - lo == pytest.approx(2 * math.sqrt(math.log(2 / 0.05) / 2000))
    lb = lower_bound(x, method="hoeffding", value_range=(0.0, 1.0), confidence=0.95)
    assert lb == pytest.approx(x.mean().item() - math.sqrt(math.log(1 / 0.05) / 2000))
    with pytest.raises(ValueError, match="outside value_range"):
        hoeffding_interval(x, value_range=(0.0, 0.5))
    with pytest.raises(ValueError, match="means only"):
        lower_bound(x, x, method="t")


def test_degenerate_inputs():
    assert bootstrap_interval(torch.tensor([2.0])) == (2.0, 2.0)
    with pytest.raises(ValueError, match="confidence"):
        bootstrap_interval(torch.tensor([1.0, 2.0]), confidence=1.5)
    with pytest.raises(ValueError, match="method"):
        bootstrap_interval(torch.tensor([1.0, 2.0, 3.0]), method="basic")
    # 0 / 0 terms of a self-normalised statistic count as 0, never NaN.
    v = ratio_statistic(
        torch.tensor([[1.0, 0.0], [1.0, 0.0]]), torch.tensor([[1.0, 0.0], [1.0, 0.0]])
    )
    assert v == 1.0


def test_bootstrap_leaves_out_resamples_where_a_weighted_estimate_is_undefined():
    # Regression: with one episode of non-zero weight among three, a third of the resamples
    # have all weights 0; they were read as an estimate of 0, so the WIS interval of a value
    # of -700 reached up to 0.
    num = torch.tensor([-700.0, 0.0, 0.0], dtype=torch.float64)
    den = torch.tensor([1.0, 0.0, 0.0], dtype=torch.float64)
    samples = bootstrap_samples(num, den, n_bootstrap=300, seed=0)
    undefined = samples.isnan()
    assert 0.1 < undefined.float().mean() < 0.5  # about (2/3)^3 of them
    assert (samples[~undefined] == -700.0).all()
    for method in ("percentile", "bca"):
        assert bootstrap_interval(num, den, n_bootstrap=300, method=method) == (-700.0, -700.0)
        assert lower_bound(num, den, n_bootstrap=300, method=method) == -700.0
    # BCa's jackknife leaves them out too (leaving out episode 0 used to give 0, not -700).
    from torchrl_offline.ope.uncertainty import _jackknife

    loo = _jackknife(num[:, None], den[:, None])
    assert loo[0].isnan() and (loo[1:] == -700.0).all()
    # Terms whose denominator is 0 on the data as well keep the 0 / 0 = 0 convention.
    num2 = torch.tensor([[1.0, 0.0], [3.0, 0.0]], dtype=torch.float64)
    den2 = torch.tensor([[1.0, 0.0], [1.0, 0.0]], dtype=torch.float64)
    assert not bootstrap_samples(num2, den2, n_bootstrap=50).isnan().any()
