"""The benchmark datasets regenerate bit-identically from the committed behaviour policies."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest
import torch

from tests.benchmark_scripts import load_benchmark
from torchrl_offline.data.normalize import normalized_score
from torchrl_offline.data.stats import stored_transitions

md = load_benchmark("make_datasets")


def _digests(path: Path) -> dict[str, str]:
    return {
        str(f.relative_to(path)): hashlib.sha256(f.read_bytes()).hexdigest()
        for f in sorted(path.rglob("*"))
        if f.is_file()
    }


@pytest.fixture(autouse=True)
def _one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.mark.parametrize("task", ["cartpole", "pendulum"])
def test_committed_levels_describe_every_level(task):
    levels = md.read_levels(task)
    assert levels["ref_min_score"] < levels["medium"]["behavior_return"]
    assert levels["medium"]["behavior_return"] < levels["ref_max_score"]
    for entry in [levels["medium"], levels["expert"], *levels["replay"][1:]]:
        assert (md.POLICIES / task / entry["weights"]).is_file()
    assert levels["replay"][0]["weights"] is None  # the random warm-up segment


def test_same_seed_is_bit_identical_and_another_seed_differs(tmp_path):
    kwargs = dict(size=100, overwrite=True)
    first = md.make_dataset("pendulum", "medium-replay", root=tmp_path / "a", seed=0, **kwargs)
    again = md.make_dataset("pendulum", "medium-replay", root=tmp_path / "b", seed=0, **kwargs)
    other = md.make_dataset("pendulum", "medium-replay", root=tmp_path / "c", seed=1, **kwargs)
    assert _digests(first) == _digests(again)
    data = "data/main_data.hdf5"
    assert _digests(first)[data] != _digests(other)[data]


def test_medium_expert_is_medium_then_expert_with_reference_scores(tmp_path):
    for level in ("medium", "expert", "medium-expert"):
        md.make_dataset("pendulum", level, root=tmp_path, size=250)
    cache = tmp_path / "cache"
    loaded = {
        level: md.load_dataset(
            "pendulum", level, root=tmp_path, make_missing=False, cache_dir=cache
        )
        for level in ("medium", "expert", "medium-expert")
    }
    both = stored_transitions(loaded["medium-expert"])
    parts = [stored_transitions(loaded[k]) for k in ("medium", "expert")]
    assert both.shape[0] == 500
    for key in ("observation", "action", ("next", "reward"), "action_log_prob"):
        assert torch.equal(both.get(key), torch.cat([p.get(key) for p in parts]))
    log_prob = both.get("action_log_prob")
    assert torch.isfinite(log_prob).all()
    action = both.get("action")
    assert bool((action.abs() <= 2.0).all())  # Pendulum's torque box
    levels = md.read_levels("pendulum")
    meta = loaded["medium-expert"].metadata
    assert meta["ref_min_score"] == levels["ref_min_score"]
    assert meta["ref_max_score"] == levels["ref_max_score"]
    assert normalized_score(levels["ref_max_score"], loaded["medium"]) == pytest.approx(100.0)


def test_unknown_level_is_refused(tmp_path):
    with pytest.raises(ValueError, match="level must be one of"):
        md.make_dataset("cartpole", "best", root=tmp_path)
