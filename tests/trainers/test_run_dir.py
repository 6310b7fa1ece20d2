"""Run directories are owned: one run per directory, one process per run, nothing replaced
unless asked, and only a run of ours; resume continues only the same run."""

from __future__ import annotations

import json
import logging
import os
import socket

import pytest
import torch

from tests.trainers.conftest import make_dataset
from torchrl_offline.trainers.checkpoint import (
    CheckpointError,
    list_checkpoints,
    load_checkpoint,
    save_checkpoint,
)
from torchrl_offline.trainers.offline import train
from torchrl_offline.trainers.run_dir import (
    LOCK_FILE,
    RUN_MARKER,
    RunDirectoryError,
    claim_run_directory,
    describe_run,
    holds_run,
)

TINY = {"hidden_sizes": (16,)}


def _train(name, out, *, total=4, seed=3, batch_size=16, data=None, **kw):
    return train(
        name,
        data if data is not None else make_dataset(),
        total_steps=total,
        seed=seed,
        out_dir=out,
        batch_size=batch_size,
        overrides=TINY,
        checkpoint_interval=2,
        progress=False,
        **kw,
    )


def _dead_pid() -> int:
    """A pid that no process has (a child that has exited and been reaped)."""
    pid = os.fork()
    if pid == 0:
        os._exit(0)
    os.waitpid(pid, 0)
    return pid


def _kill_after_claim(directory) -> None:
    """What ``kill -9`` between the claim and the first checkpoint leaves: ``run.json``
    (the lock file's flock died with the process)."""
    claim = claim_run_directory(directory, kind="train", algorithm="iql")
    marker = (directory / RUN_MARKER).read_bytes()
    claim.release()
    (directory / RUN_MARKER).write_bytes(marker)


def test_a_second_claim_is_refused_naming_the_holder(tmp_path):
    with claim_run_directory(tmp_path, kind="train", algorithm="iql"):
        assert json.loads((tmp_path / LOCK_FILE).read_text())["pid"] == os.getpid()
        with pytest.raises(
            RunDirectoryError, match=f"in use by another process \\(pid {os.getpid()}"
        ):
            claim_run_directory(tmp_path, kind="train", algorithm="iql", resume=True)
    assert not (tmp_path / LOCK_FILE).exists()  # released: the file is gone


def test_a_stale_lock_of_a_dead_process_is_taken_over_with_a_note(tmp_path, caplog):
    dead = _dead_pid()
    record = {"pid": dead, "host": socket.gethostname(), "started": "2026-01-01T00:00:00"}
    (tmp_path / LOCK_FILE).write_text(json.dumps(record))
    with caplog.at_level(logging.WARNING, logger="torchrl_offline"):
        claim = claim_run_directory(tmp_path, kind="train", algorithm="iql")
    assert f"stale lock of {tmp_path / LOCK_FILE}: pid {dead}" in caplog.text
    assert json.loads((tmp_path / LOCK_FILE).read_text())["pid"] == os.getpid()
    claim.release()


def test_without_flock_the_pid_record_decides(tmp_path, monkeypatch):
    import torchrl_offline.locks as locks

    monkeypatch.setattr(locks, "_flock", lambda fd: None)  # e.g. a network file system
    alive = {"pid": os.getppid(), "host": socket.gethostname()}
    (tmp_path / LOCK_FILE).write_text(json.dumps(alive))
    with pytest.raises(RunDirectoryError, match=f"pid {os.getppid()}"):
        claim_run_directory(tmp_path, kind="train", algorithm="iql")
    (tmp_path / LOCK_FILE).write_text(json.dumps({**alive, "pid": _dead_pid()}))
    claim_run_directory(tmp_path, kind="train", algorithm="iql").release()


def test_a_directory_holding_a_run_is_refused_without_resume_or_overwrite(tmp_path):
    """Failure 3 of issue 15: `train --out EXISTING_RUN` used to overwrite it silently and
    keep-newest pruning deleted the new run's checkpoints."""
    first = _train("cql", tmp_path, total=6)
    before = {p.name: p.read_bytes() for p in list_checkpoints(tmp_path / "checkpoints")}
    with pytest.raises(RunDirectoryError, match="already holds a cql train run .*step 6.*iql"):
        _train("iql", tmp_path, total=2)
    after = {p.name: p.read_bytes() for p in list_checkpoints(tmp_path / "checkpoints")}
    assert after == before and first.checkpoint.name in after


def test_resume_of_another_algorithm_names_both(tmp_path):
    _train("cql", tmp_path, total=2)
    with pytest.raises(CheckpointError, match="a run of cql that this iql run cannot continue"):
        _train("iql", tmp_path, total=4, resume=True)


def test_overwrite_replaces_our_run_and_keeps_other_files(tmp_path):
    _train("cql", tmp_path, total=6)
    (tmp_path / "notes.txt").write_text("mine")
    result = _train("iql", tmp_path, total=2, overwrite=True)
    names = [p.name for p in list_checkpoints(tmp_path / "checkpoints")]
    assert names == ["checkpoint_000000002.pt"] and result.checkpoint.exists()
    assert (tmp_path / "notes.txt").read_text() == "mine"
    assert json.loads((tmp_path / RUN_MARKER).read_text())["algorithm"] == "iql"


def test_overwrite_of_a_directory_that_is_not_a_run_is_refused(tmp_path):
    (tmp_path / "notes.txt").write_text("mine")
    with pytest.raises(RunDirectoryError, match="not a run directory of torchrl_offline"):
        claim_run_directory(tmp_path, kind="train", algorithm="iql", overwrite=True)
    assert (tmp_path / "notes.txt").read_text() == "mine"
    assert not holds_run(tmp_path)
    with claim_run_directory(tmp_path, kind="train", algorithm="iql"):  # a new run: fine
        assert describe_run(tmp_path) == "an iql train run (no checkpoint yet)"


def test_resume_and_overwrite_exclude_each_other(tmp_path):
    with pytest.raises(RunDirectoryError, match="exclude each other"):
        _train("iql", tmp_path, resume=True, overwrite=True)


def test_resume_with_nothing_to_resume_says_so(tmp_path):
    with pytest.raises(RunDirectoryError, match="nothing to resume .*does not exist"):
        _train("iql", tmp_path / "new", resume=True)
    assert not (tmp_path / "new").exists()  # nothing made on the way
    (tmp_path / "started").mkdir()
    _kill_after_claim(tmp_path / "started")  # a run killed before its first checkpoint
    with pytest.raises(RunDirectoryError, match="stopped before its first checkpoint"):
        _train("iql", tmp_path / "started", resume=True)


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"seed": 4}, "seed 3 vs 4"),
        ({"batch_size": 8}, "batch size 16 vs 8"),
        ({"data": make_dataset(n=100)}, "dataset of 128 transitions vs 100"),
        ({"data": make_dataset(seed=1)}, "dataset content"),
        ({"data": make_dataset(obs_dim=11)}, "observation size 3 vs 11"),
    ],
)
def test_resume_refuses_another_dataset_batch_size_or_seed_naming_it(tmp_path, change, message):
    _train("iql", tmp_path, total=2)
    with pytest.raises(CheckpointError, match=message) as info:
        _train("iql", tmp_path, total=4, resume=True, **change)
    assert "TensorDict" not in str(info.value) and len(str(info.value)) < 600


def test_a_checkpoint_without_the_run_identity_resumes_with_a_note(tmp_path, caplog):
    _train("iql", tmp_path, total=2)
    path = list_checkpoints(tmp_path / "checkpoints")[-1]
    state = load_checkpoint(path)
    meta = json.loads(state["metadata"]["json"])
    for key in ("dataset", "batch_size", "seed"):
        del meta[key]
    state["metadata"]["json"] = json.dumps(meta)
    save_checkpoint(path, state)
    with caplog.at_level(logging.WARNING, logger="torchrl_offline"):
        result = _train("iql", tmp_path, total=4, resume=True, seed=9)
    assert result.step == 4
    assert "records no dataset, batch_size, seed" in caplog.text


def test_the_fingerprint_ignores_where_the_data_lies(tmp_path):
    from torchrl_offline.data.fingerprint import dataset_fingerprint

    a, b = make_dataset(), make_dataset()
    a.metadata["source_path"], b.metadata["source_path"] = "/data/a", "/elsewhere/b"
    assert dataset_fingerprint(a) == dataset_fingerprint(b)
    b.storage._storage["next", "reward"][0] += 1.0  # the first row is always sampled
    assert dataset_fingerprint(a)["sha256"] != dataset_fingerprint(b)["sha256"]
    assert torch.equal(a.storage[:]["observation"], b.storage[:]["observation"])


def test_what_a_killed_holder_left_half_done_is_removed_by_the_next_claim(tmp_path):
    trash = tmp_path / ".overwritten-0123abcd"
    (trash / "checkpoints").mkdir(parents=True)
    (tmp_path / f".{RUN_MARKER}.0123abcd.tmp").write_text("{")
    (tmp_path / "notes.txt").write_text("mine")
    with claim_run_directory(tmp_path, kind="train", algorithm="iql"):
        assert sorted(p.name for p in tmp_path.iterdir()) == ["notes.txt", RUN_MARKER, LOCK_FILE]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["notes.txt"]


def test_a_failed_run_does_not_block_the_corrected_retry(tmp_path):
    """Review of issue 15, finding 1: `train --set foo=1 --out NEW` failed but left run.json,
    and the corrected retry was refused as "already holds an iql train run"."""
    from torchrl_offline.trainers.algorithms import AlgorithmError

    with pytest.raises(AlgorithmError, match="foo"):
        train("iql", make_dataset(), total_steps=2, out_dir=tmp_path, progress=False,
              overrides={"foo": 1})  # fmt: skip
    assert not (tmp_path / RUN_MARKER).exists() and not holds_run(tmp_path)
    assert _train("iql", tmp_path, total=2).step == 2


def test_a_refused_run_leaves_no_folder_it_made(tmp_path):
    """A run refused for its settings leaves no empty output folder behind; a folder that
    was there before stays, as does one the run wrote into."""
    from torchrl_offline.trainers.algorithms import AlgorithmError

    new = tmp_path / "runs" / "iql"
    with pytest.raises(AlgorithmError, match="foo"):
        train("iql", make_dataset(), total_steps=2, out_dir=new, progress=False,
              overrides={"foo": 1})  # fmt: skip
    assert not new.exists() and (tmp_path / "runs").is_dir()  # only the folder it made
    with claim_run_directory(tmp_path, kind="train", algorithm="iql"):
        pass
    assert tmp_path.is_dir()
    assert _train("iql", new, total=2).step == 2 and holds_run(new)


def test_a_run_killed_before_its_first_checkpoint_is_not_a_run(tmp_path):
    _kill_after_claim(tmp_path)
    assert not holds_run(tmp_path)
    assert _train("cql", tmp_path, total=2).step == 2  # neither refused nor resumed
    assert json.loads((tmp_path / RUN_MARKER).read_text())["algorithm"] == "cql"
    (tmp_path / "other").mkdir()
    _kill_after_claim(tmp_path / "other")
    with claim_run_directory(tmp_path / "other", kind="train", algorithm="iql", overwrite=True):
        pass  # ours to overwrite, though it holds no run


@pytest.mark.parametrize("name", ["summary.json", RUN_MARKER, "metrics.csv"])
def test_a_file_of_the_same_name_that_is_not_ours_is_never_replaced(tmp_path, name):
    """Review of issue 15, finding 3: a user's own summary.json was silently replaced."""
    (tmp_path / name).write_text('{"mine": true}')
    for flags in ({}, {"overwrite": True}):
        with pytest.raises(RunDirectoryError, match=f"holds a {name} that torchrl_offline did not"):
            _train("iql", tmp_path, total=2, **flags)
    assert (tmp_path / name).read_text() == '{"mine": true}'
    assert not (tmp_path / "checkpoints").exists()


@pytest.mark.parametrize("where", [".", "runs/iql"])
def test_a_dataset_folder_is_never_a_run_directory(tmp_path, where):
    """Review of issue 15, finding 2: a run inside a dataset went with `collect --overwrite`."""
    dataset = tmp_path / "pendulum" / "mixed-v0"
    (dataset / "data").mkdir(parents=True)
    (dataset / "data" / "metadata.json").write_text("{}")
    with pytest.raises(RunDirectoryError, match="dataset folder"):
        _train("iql", dataset / where, total=2)
    assert sorted(p.name for p in dataset.iterdir()) == ["data"]


def test_resume_of_a_run_of_the_other_kind_names_both(tmp_path):
    """Review of issue 15, finding 5: `train --resume` of a fine-tuning run said
    "the checkpoint does not fit this trainer's modules: 'sampler'"."""
    _train("iql", tmp_path, total=2)
    marker = json.loads((tmp_path / RUN_MARKER).read_text())
    (tmp_path / RUN_MARKER).write_text(json.dumps({**marker, "kind": "finetune"}))
    with pytest.raises(
        RunDirectoryError, match="holds an iql finetune run .*step 2.*finetune --resume"
    ):
        _train("iql", tmp_path, total=4, resume=True)
    (tmp_path / RUN_MARKER).unlink()  # no marker (older run): the checkpoint itself tells
    path = list_checkpoints(tmp_path / "checkpoints")[-1]
    state = load_checkpoint(path)
    meta = json.loads(state["metadata"]["json"])
    state["metadata"]["json"] = json.dumps({**meta, "finetune": {"batch_size": 16}})
    save_checkpoint(path, state)
    with pytest.raises(CheckpointError, match="is from fine-tuning, not offline training"):
        _train("iql", tmp_path, total=4, resume=True)


def test_resume_from_the_previous_good_checkpoint_by_name(tmp_path, caplog):
    """Review of issue 15, finding 8: the previous good checkpoint was named, not offered."""
    _train("iql", tmp_path, total=6)
    first, *_, newest = list_checkpoints(tmp_path / "checkpoints")
    newest.write_bytes(newest.read_bytes()[:-64])  # damaged
    with pytest.raises(CheckpointError, match="previous good"):
        _train("iql", tmp_path, total=6, resume=True)
    good = list_checkpoints(tmp_path / "checkpoints")[-2]
    with caplog.at_level(logging.WARNING, logger="torchrl_offline"):
        result = _train("iql", tmp_path, total=6, resume=good)
    assert result.step == 6 and load_checkpoint(result.checkpoint)["step"] == 6
    assert (newest.parent / f"{newest.name}.set-aside").exists()
    assert "set aside" in caplog.text
    _train("iql", tmp_path / "elsewhere", total=2)
    with pytest.raises(CheckpointError, match="not a checkpoint of this run"):
        _train("iql", tmp_path / "elsewhere", total=6, resume=first)


def test_a_dataset_whose_content_differs_suggests_verify(tmp_path):
    """Review of issue 15, finding 7: a resume refused because of a damaged cache read as
    "another dataset" only."""
    _train("iql", tmp_path, total=2)
    with pytest.raises(CheckpointError, match="dataset content") as info:
        _train("iql", tmp_path, total=4, resume=True, data=make_dataset(seed=1))
    assert "torchrl-offline verify" in str(info.value)
