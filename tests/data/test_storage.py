from __future__ import annotations

import pytest
import torch

from torchrl_offline.data.storage import (
    OfflineReplayBuffer,
    allocate_transitions,
    atomic_directory,
    is_complete,
    load_transitions,
    make_replay_buffer,
    step_layout,
    write_complete_marker,
)


def test_atomic_directory_renames_on_success(tmp_path):
    final = tmp_path / "ds"
    with atomic_directory(final) as tmp:
        (tmp / "file").write_text("x")
        assert not final.exists()
    assert (final / "file").read_text() == "x"
    assert [p.name for p in tmp_path.iterdir()] == ["ds"]


def test_atomic_directory_leaves_nothing_on_error(tmp_path):
    final = tmp_path / "ds"
    with pytest.raises(RuntimeError), atomic_directory(final) as tmp:
        (tmp / "file").write_text("x")
        raise RuntimeError("interrupted")
    assert list(tmp_path.iterdir()) == []


def test_atomic_directory_keeps_or_overwrites_existing(tmp_path):
    final = tmp_path / "ds"
    final.mkdir()
    (final / "old").write_text("old")
    with atomic_directory(final) as tmp:
        (tmp / "new").write_text("new")
    assert (final / "old").exists() and not (final / "new").exists()
    with atomic_directory(final, overwrite=True) as tmp:
        (tmp / "new").write_text("new")
    assert (final / "new").exists() and not (final / "old").exists()
    assert [p.name for p in tmp_path.iterdir()] == ["ds"]


def test_step_layout_is_torchrls_per_step_fields():
    spec = step_layout(torch.float64, ["action_log_prob"])
    assert spec == {
        ("next", "reward"): ((1,), torch.float64),
        ("next", "done"): ((1,), torch.bool),
        ("next", "terminated"): ((1,), torch.bool),
        ("next", "truncated"): ((1,), torch.bool),
        ("episode",): ((), torch.int64),
        ("action_log_prob",): ((), torch.float64),
    }


def test_allocate_fill_load_and_buffer(tmp_path):
    spec = {"observation": ((4,), torch.float32), ("next", "reward"): ((1,), torch.float32)}
    with atomic_directory(tmp_path / "ds") as tmp:
        td = allocate_transitions(spec, 10, tmp / "transitions")
        td["observation"][:] = torch.arange(40, dtype=torch.float32).reshape(10, 4)
        td["next", "reward"][:] = 1.0
        write_complete_marker(tmp, {"dataset_id": "x"})
    assert is_complete(tmp_path / "ds")
    loaded, metadata = load_transitions(tmp_path / "ds")
    assert metadata == {"dataset_id": "x"}
    buffer = make_replay_buffer(loaded, batch_size=4, metadata=metadata, path=tmp_path / "ds")
    assert isinstance(buffer, OfflineReplayBuffer)
    assert len(buffer) == 10
    assert torch.equal(buffer.storage[3]["observation"], torch.arange(12, 16, dtype=torch.float32))
    batch = buffer.sample()
    assert batch.shape == (4,)
    assert buffer.metadata["dataset_id"] == "x"


def test_incomplete_directory_is_not_complete(tmp_path):
    (tmp_path / "ds").mkdir()
    assert not is_complete(tmp_path / "ds")
