"""Atomic checkpoint files, safe loading, corrupt files, generator states."""

from __future__ import annotations

import random

import numpy as np
import pytest
import torch

from torchrl_offline.trainers import checkpoint as ckpt
from torchrl_offline.trainers.checkpoint import (
    CheckpointError,
    NotACheckpointError,
    checkpoint_path,
    get_rng_state,
    latest_checkpoint,
    list_checkpoints,
    load_checkpoint,
    save_checkpoint,
    set_rng_state,
)


def test_roundtrip(tmp_path):
    state = {"step": 7, "weights": {"w": torch.arange(3.0)}, "names": ["a", "b"], "x": None}
    path = save_checkpoint(tmp_path / "sub" / "c.pt", state)
    loaded = load_checkpoint(path)
    assert loaded["step"] == 7 and loaded["names"] == ["a", "b"] and loaded["x"] is None
    assert torch.equal(loaded["weights"]["w"], torch.arange(3.0))


def test_failed_write_keeps_the_previous_file(tmp_path, monkeypatch):
    path = tmp_path / "c.pt"
    save_checkpoint(path, {"step": 1})

    def broken_save(obj, f):
        f.write(b"partial bytes")
        raise OSError("disk full")

    monkeypatch.setattr(ckpt.torch, "save", broken_save)
    with pytest.raises(OSError, match="disk full"):
        save_checkpoint(path, {"step": 2})
    monkeypatch.undo()
    assert load_checkpoint(path)["step"] == 1
    assert [p.name for p in tmp_path.iterdir()] == ["c.pt"]  # no temporary file left


@pytest.mark.parametrize("cut", [0.5, 0.9])
def test_truncated_file_is_a_clear_error(tmp_path, cut):
    path = save_checkpoint(tmp_path / "c.pt", {"w": torch.randn(1000)})
    data = path.read_bytes()
    path.write_bytes(data[: int(len(data) * cut)])
    with pytest.raises(CheckpointError, match="c.pt.*corrupt or truncated"):
        load_checkpoint(path)


def test_garbage_and_foreign_files(tmp_path):
    junk = tmp_path / "junk.pt"
    junk.write_bytes(b"not a checkpoint at all")
    with pytest.raises(CheckpointError, match="junk.pt"):
        load_checkpoint(junk)
    foreign = tmp_path / "foreign.pt"
    torch.save({"w": torch.ones(1)}, foreign)
    with pytest.raises(NotACheckpointError, match="not a checkpoint of torchrl_offline"):
        load_checkpoint(foreign)
    with pytest.raises(CheckpointError, match="does not exist"):
        load_checkpoint(tmp_path / "missing.pt")


def test_a_file_that_is_no_checkpoint_says_so_rather_than_corrupt(tmp_path):
    """Review of issue 15, finding 7: a text file was called "corrupt or truncated
    (KeyError: 101)"."""
    for name, data in (("notes.pt", b"e" * 200), ("archive.pt", None)):
        path = tmp_path / name
        if data is None:
            import zipfile

            with zipfile.ZipFile(path, "w") as archive:
                archive.writestr("readme.txt", "hello")
        else:
            path.write_bytes(data)
        with pytest.raises(NotACheckpointError, match=f"{name}' is not a checkpoint of torch") as e:
            load_checkpoint(path)
        assert "corrupt" not in str(e.value) and "KeyError" not in str(e.value)


def test_torch_load_of_a_checkpoint_names_the_function_that_reads_it(tmp_path):
    """Review of issue 15, finding 4: torch.load returns the envelope, not the state."""
    path = save_checkpoint(tmp_path / "c.pt", {"step": 1})
    envelope = torch.load(path, weights_only=True)
    assert "step" not in envelope
    assert envelope["read_with"] == "torchrl_offline.trainers.checkpoint.load_checkpoint(path)"


def test_a_damaged_checkpoint_names_the_previous_good_one_and_how_to_resume_from_it(tmp_path):
    good = save_checkpoint(checkpoint_path(tmp_path, 10), {"step": 10})
    bad = save_checkpoint(checkpoint_path(tmp_path, 20), {"step": 20})
    bad.write_bytes(bad.read_bytes()[:-100])
    with pytest.raises(CheckpointError, match="previous good") as info:
        load_checkpoint(bad)
    assert "--resume CHECKPOINT" in str(info.value) and "resume=CHECKPOINT" in str(info.value)
    assert str(info.value).endswith(
        f"the previous good checkpoint of this directory is {str(good)!r}"
    )


class _Evil:
    def __reduce__(self):
        return (print, ("code ran on load",))


def test_loading_never_unpickles_arbitrary_objects(tmp_path, capsys):
    path = tmp_path / "evil.pt"
    torch.save({"format": ckpt.FORMAT, "state": {"x": _Evil()}}, path)
    with pytest.raises(CheckpointError, match="evil.pt"):
        load_checkpoint(path)
    assert "code ran on load" not in capsys.readouterr().out


def test_listing_and_latest(tmp_path):
    assert latest_checkpoint(tmp_path) is None
    assert list_checkpoints(tmp_path / "absent") == []
    for step in (20, 5, 100):
        save_checkpoint(checkpoint_path(tmp_path, step), {"step": step})
    (tmp_path / ".checkpoint_000000200.pt.abc.tmp").write_bytes(b"")
    assert [p.name for p in list_checkpoints(tmp_path)] == [
        "checkpoint_000000005.pt",
        "checkpoint_000000020.pt",
        "checkpoint_000000100.pt",
    ]
    assert load_checkpoint(latest_checkpoint(tmp_path))["step"] == 100


def test_rng_state_roundtrip_through_a_file(tmp_path):
    torch.manual_seed(1)
    np.random.seed(1)
    random.seed(1)
    save_checkpoint(tmp_path / "rng.pt", {"rng": get_rng_state()})
    expected = (torch.rand(3), np.random.rand(3), random.random())
    torch.manual_seed(99)
    np.random.seed(99)
    random.seed(99)
    set_rng_state(load_checkpoint(tmp_path / "rng.pt")["rng"])
    got = (torch.rand(3), np.random.rand(3), random.random())
    assert torch.equal(expected[0], got[0])
    assert np.array_equal(expected[1], got[1])
    assert expected[2] == got[2]


def _draws() -> tuple:
    return torch.rand(3), np.random.rand(3), random.random()


def _same(a: tuple, b: tuple) -> bool:
    return torch.equal(a[0], b[0]) and np.array_equal(a[1], b[1]) and a[2] == b[2]


def test_rng_state_is_torchrls_global_rng_state():
    """The generators' state is TorchRL's ``GlobalRNGState`` (accelerators included)."""
    from torchrl.checkpoint import GlobalRNGState

    assert set(get_rng_state()) == set(GlobalRNGState().state_dict())


def test_an_rng_state_of_the_layout_before_torchrls_still_restores(tmp_path):
    """Checkpoints written before ``GlobalRNGState`` was used resume as they did."""
    torch.manual_seed(2)
    np.random.seed(2)
    random.seed(2)
    keys = np.random.get_state()
    version, internal, gauss = random.getstate()
    legacy = {
        "torch": torch.get_rng_state(),
        "numpy": {
            "keys": torch.from_numpy(keys[1].astype(np.int64)),
            "pos": int(keys[2]),
            "has_gauss": int(keys[3]),
            "cached_gaussian": float(keys[4]),
        },
        "python": [version, list(internal), gauss],
    }
    save_checkpoint(tmp_path / "old.pt", {"rng": legacy})
    expected = _draws()
    torch.manual_seed(99)
    set_rng_state(load_checkpoint(tmp_path / "old.pt")["rng"])
    assert _same(_draws(), expected)


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")
def test_a_gpu_runs_rng_state_restores_the_host_generators_without_cuda(tmp_path, caplog):
    torch.manual_seed(4)
    state = {**get_rng_state(), "torch_cuda": [torch.zeros(16, dtype=torch.uint8)]}
    save_checkpoint(tmp_path / "gpu.pt", {"rng": state})
    expected = _draws()
    torch.manual_seed(99)
    with caplog.at_level("WARNING", logger="torchrl_offline"):
        set_rng_state(load_checkpoint(tmp_path / "gpu.pt")["rng"])
    assert _same(_draws(), expected)
    assert "accelerators' random generators of the checkpoint were not restored" in caplog.text
