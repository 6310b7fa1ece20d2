"""Policy ranking and the DOPE metrics on hand-computed cases."""

from __future__ import annotations

import math

import pytest
import torch

from torchrl_offline.ope.result import OPEError, OPEResult
from torchrl_offline.ope.selection import (
    absolute_error,
    rank_policies,
    regret_at_k,
    relative_error,
    selection_metrics,
    spearman_correlation,
)

TRUE = {"a": 10.0, "b": 8.0, "c": 5.0, "d": -2.0}


def test_rank_by_value_and_by_lower_bound():
    est = {
        "a": OPEResult(value=9.0, ci_low=1.0, ci_high=17.0),
        "b": OPEResult(value=8.5, ci_low=7.0, ci_high=10.0),
        "c": OPEResult(value=4.0, ci_low=3.0, ci_high=5.0),
    }
    assert rank_policies(est) == ["a", "b", "c"]
    assert rank_policies(est, by="ci_low") == ["b", "c", "a"]
    assert rank_policies(est, by="ci_high") == ["a", "b", "c"]
    assert rank_policies([1.0, 3.0, 2.0]) == [1, 2, 0]
    # ties keep the input order
    assert rank_policies({"x": 1.0, "y": 1.0, "z": 2.0}) == ["z", "x", "y"]
    with pytest.raises(TypeError, match="OPEResult"):
        rank_policies({"x": 1.0}, by="ci_low")
    with pytest.raises(ValueError, match="by must be"):
        rank_policies({"x": 1.0}, by="median")


def test_absolute_and_relative_error():
    est = {"a": 12.0, "b": 8.0, "c": 4.0, "d": -3.0}
    torch.testing.assert_close(
        absolute_error(est, TRUE), torch.tensor([2.0, 0.0, 1.0, 1.0], dtype=torch.float64)
    )
    torch.testing.assert_close(
        relative_error(est, TRUE), torch.tensor([0.2, 0.0, 0.2, 0.5], dtype=torch.float64)
    )
    # mappings are matched by name, whatever their order
    reordered = {k: est[k] for k in ("d", "c", "b", "a")}
    torch.testing.assert_close(
        absolute_error(reordered, TRUE), torch.tensor([1.0, 1.0, 0.0, 2.0], dtype=torch.float64)
    )
    with pytest.raises(OPEError, match="'z'"):
        relative_error({"z": 1.0}, {"z": 0.0})


def test_spearman_hand_computed():
    # perfect order, reversed order
    assert spearman_correlation([1.0, 2.0, 3.0, 4.0], [10.0, 20.0, 30.0, 40.0]) == 1.0
    assert spearman_correlation([4.0, 3.0, 2.0, 1.0], [10.0, 20.0, 30.0, 40.0]) == -1.0
    # one swap of 4: d^2 = 2, rho = 1 - 6 * 2 / (4 * 15) = 0.8
    assert spearman_correlation([1.0, 2.0, 4.0, 3.0], [1.0, 2.0, 3.0, 4.0]) == pytest.approx(0.8)
    # ties: estimate ranks (1.5, 1.5, 3), true ranks (1, 2, 3): Pearson of ranks
    rho = spearman_correlation([0.0, 0.0, 5.0], [1.0, 2.0, 3.0])
    assert rho == pytest.approx(math.sqrt(3) / 2)
    # constant side: undefined, nan with a warning
    with pytest.warns(UserWarning, match="undefined"):
        assert math.isnan(spearman_correlation([1.0, 1.0, 1.0], [1.0, 2.0, 3.0]))
    with pytest.raises(OPEError, match="at least 2"):
        spearman_correlation([1.0], [2.0])


def test_regret_at_k_hand_computed():
    est = {"a": 3.0, "b": 9.0, "c": 7.0, "d": 1.0}  # ranks b, c, a, d
    assert regret_at_k(est, TRUE, k=1) == 2.0  # picks b (8) instead of a (10)
    assert regret_at_k(est, TRUE, k=2) == 2.0  # best of b, c is 8
    assert regret_at_k(est, TRUE, k=3) == 0.0
    assert regret_at_k(est, TRUE, k=1, normalize=True) == pytest.approx(2.0 / 12.0)
    assert regret_at_k({"a": 1.0, "b": 2.0}, {"a": 3.0, "b": 3.0}, 1, normalize=True) == 0.0
    with pytest.raises(ValueError, match="k must be"):
        regret_at_k(est, TRUE, k=5)
    # ties are broken at random: the regret is the expectation, whatever the input order
    tied = {"d": 0.0, "a": 0.0, "c": 0.0, "b": -1.0}
    assert regret_at_k(tied, TRUE, k=1) == pytest.approx(10.0 - (10.0 + 5.0 - 2.0) / 3)
    # k=2 among 3 tied: P(a drawn) = 2/3, else the best of {c, d} is c
    assert regret_at_k(tied, TRUE, k=2) == pytest.approx(10.0 - (2 / 3 * 10.0 + 1 / 3 * 5.0))
    assert regret_at_k(tied, TRUE, k=3) == 0.0
    # a strict leader above a tie: the tie only fills the remaining places
    lead = {"b": 5.0, "a": 1.0, "c": 1.0, "d": 0.0}
    assert regret_at_k(lead, TRUE, k=2) == pytest.approx(10.0 - (0.5 * 10.0 + 0.5 * 8.0))
    # results are accepted in place of floats
    results = {n: OPEResult(value=v, ci_low=v, ci_high=v) for n, v in est.items()}
    assert regret_at_k(results, TRUE, k=1) == 2.0


def test_selection_metrics_and_bad_inputs():
    est = {"a": 12.0, "b": 8.0, "c": 4.0, "d": -3.0}
    m = selection_metrics(est, TRUE, ks=(1, 2, 10))
    assert m["absolute_error"] == pytest.approx(1.0)
    assert m["relative_error"] == pytest.approx(0.225)
    assert m["spearman"] == 1.0
    assert m["regret@1"] == 0.0 and m["regret@2"] == 0.0
    assert "regret@10" not in m
    with pytest.raises(OPEError, match="no true value for policy 'e'"):
        selection_metrics({**est, "e": 1.0}, TRUE)
    with pytest.raises(OPEError, match="no estimate for policy 'd'"):
        selection_metrics({k: est[k] for k in "abc"}, TRUE)
    with pytest.raises(OPEError, match="non-finite value for policy 'b'"):
        selection_metrics({**est, "b": float("nan")}, TRUE)
    with pytest.raises(OPEError, match="3 estimates but 2"):
        absolute_error([1.0, 2.0, 3.0], [1.0, 2.0])
    with pytest.raises(TypeError, match="both be mappings"):
        absolute_error(est, [1.0, 2.0, 3.0, 4.0])
