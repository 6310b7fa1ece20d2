"""LongRunHint: one line, measured, when a run will take long; the run itself unchanged."""

from __future__ import annotations

import io
import re

import pytest
import torch

from tests.trainers.conftest import make_dataset
from torchrl_offline.trainers.offline import train
from torchrl_offline.trainers.speed_hint import LongRunHint, format_duration


def _train(hidden_sizes, hooks=(), algo="td3_bc", **kwargs):
    return train(
        algo,
        make_dataset(**kwargs),
        total_steps=12,
        batch_size=16,
        seed=3,
        logger=None,
        progress=False,
        overrides={"hidden_sizes": hidden_sizes},
        hooks=hooks,
    )


def _hint(**kwargs) -> LongRunHint:
    """A hint that decides after the second update and finds any run long."""
    kwargs = {"min_speedup": 0.0, **kwargs}
    return LongRunHint(threshold=0.0, after=0.0, probe_updates=1, file=io.StringIO(), **kwargs)


def test_a_long_run_with_large_networks_gets_a_measured_hint():
    hint = _hint(advice="--preset small")
    _train((256, 256), hooks=[hint])
    pattern = (
        r"^hint: about \d+ (s|min|h) to go at [\d.e+]+ steps/s; --preset small \(2x64 "
        r"networks\) trains (\d+\.\d)x faster here: about \d+ (s|min|h)$"
    )
    match = re.match(pattern, hint.message)
    assert match, hint.message
    assert float(match.group(2)) > 0
    assert hint.file.getvalue().strip() == hint.message  # written once


def test_the_hint_leaves_the_run_exactly_as_it_is():
    """The probe builds and trains copies inside fork_rng: parameters, optimizer state
    and random streams of the run are the same with or without it."""
    plain = _train((128, 128))
    hinted = _train((128, 128), hooks=[_hint()])
    for a, b in zip(plain.algorithm.loss.parameters(), hinted.algorithm.loss.parameters()):
        assert torch.equal(a, b)
    assert torch.equal(
        plain.algorithm.optimizer.state_dict()["state"][0]["exp_avg"],
        hinted.algorithm.optimizer.state_dict()["state"][0]["exp_avg"],
    )


@pytest.mark.parametrize("sizes", [(64, 64), (16,)])
def test_no_hint_when_the_networks_are_already_small(sizes):
    hint = _hint()
    _train(sizes, hooks=[hint])
    assert hint.message is None and hint.file.getvalue() == ""


def test_no_hint_when_the_small_networks_are_not_faster_enough(monkeypatch):
    monkeypatch.setattr(LongRunHint, "_seconds_per_update", lambda self, algo, batch: 0.01)
    hint = _hint(min_speedup=1.5)
    _train((256, 256), hooks=[hint])
    assert hint.message is None


def test_no_hint_for_a_run_that_ends_soon():
    hint = LongRunHint(after=0.0, file=io.StringIO())  # 10 minutes: far more than 12 steps
    _train((256, 256), hooks=[hint])
    assert hint.message is None


def test_a_discrete_algorithm_gets_the_hint_too():
    hint = _hint()
    _train((256, 256), hooks=[hint], algo="cql", discrete=True)
    assert hint.message is not None and "preset='small' (2x64 networks)" in hint.message


def test_format_duration():
    assert [format_duration(s) for s in (5, 89, 600, 5399, 5400)] == [
        "5 s",
        "89 s",
        "10 min",
        "90 min",
        "1.5 h",
    ]
