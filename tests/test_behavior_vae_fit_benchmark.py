"""The behaviour VAE's fit benchmark (benchmarks/behavior_vae_fit.py)."""

from __future__ import annotations

import pytest
import torch
from torchrl.data import Bounded

from tests.benchmark_scripts import load_benchmark

fit = load_benchmark("behavior_vae_fit")


def test_edge_fraction_counts_components_within_one_percent_of_a_bound():
    low, high = torch.tensor([-2.0, 0.0]), torch.tensor([2.0, 1.0])
    action = torch.tensor([[-1.99, 0.5], [1.5, 0.996], [2.0, 0.004], [0.0, 0.006]])
    # margins: 0.02 on the first component, 0.005 on the second
    assert fit.edge_fraction(action, low, high) == pytest.approx(4 / 8)


@pytest.mark.parametrize("squash", ["tanh", "clip"])
def test_fit_and_measure_reports_held_out_terms_and_edges(squash):
    torch.manual_seed(0)
    obs = torch.randn(500, 3)
    action = torch.where(obs[:, :1] > 0, 1.0, -1.0) * torch.ones(500, 2)
    action[::2, 1] = 0.0  # half of the second component inside the box
    out = fit.fit_and_measure(
        obs, action, Bounded(-1.0, 1.0, (2,)), decoder_squash=squash, steps=20, hidden=(8,)
    )
    assert set(out) == {
        "reconstruction", "kl", "sample_error", "edge_fraction", "data_edge_fraction"
    }  # fmt: skip
    assert out["data_edge_fraction"] == pytest.approx(0.75, abs=0.05)  # 100 held out
    assert 0.0 <= out["edge_fraction"] <= 1.0 and out["reconstruction"] > 0
