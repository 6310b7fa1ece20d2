"""Fault injection: damaged caches and checkpoints never load as data, kill -9 never leaves
anything that loads, and the next run recovers.

The kill -9 trials fork writers from a trial server (``tests/_fault_worker.py``) and kill
each at a random moment (seeded); ``TORCHRL_OFFLINE_FAULT_TRIALS`` sets how many per case
(2 by default; docs/reliability.md reports a run with more). Each test prints what it saw
(``pytest -s``).
"""

from __future__ import annotations

import json
import logging
import os
import random
import signal
import struct
import subprocess
import sys
import time
import zipfile
from pathlib import Path

import gymnasium as gym
import pytest
import torch
from tensordict import TensorDict

from tests import _fault_worker as worker
from torchrl_offline.data import collect_dataset, from_logged, load_minari, write_minari
from torchrl_offline.data.errors import DatasetError
from torchrl_offline.data.storage import load_transitions, verify_dataset
from torchrl_offline.integrity import MANIFEST, verify_manifest
from torchrl_offline.leftovers import owner_tag
from torchrl_offline.trainers.checkpoint import (
    CheckpointError,
    checkpoint_path,
    latest_checkpoint,
    list_checkpoints,
    load_checkpoint,
    save_checkpoint,
    verify_checkpoint,
)

ROOT = Path(__file__).resolve().parents[1]
TRIALS = int(os.environ.get("TORCHRL_OFFLINE_FAULT_TRIALS", "2"))


def _write_dataset(root: Path, dataset_id: str, n: int = 200) -> TensorDict:
    """A Minari dataset of ``n`` steps (4 episodes) with distinct, nonzero observations."""
    obs = torch.arange(1, n + 2, dtype=torch.float32)[:, None] * torch.tensor([1.0, -1.0, 0.5])
    episode = torch.arange(n) // (n // 4)
    last = torch.zeros(n, 1, dtype=torch.bool)
    last[n // 4 - 1 :: n // 4] = True
    next_obs = obs[1:].clone()
    td = TensorDict(
        {
            "observation": obs[:-1],
            ("next", "observation"): next_obs,
            "action": torch.linspace(-1, 1, n)[:, None],
            ("next", "reward"): torch.ones(n, 1),
            ("next", "terminated"): last,
            ("next", "truncated"): torch.zeros(n, 1, dtype=torch.bool),
            "episode": episode,
        },
        batch_size=[n],
    )
    box = gym.spaces.Box(-1e4, 1e4, (3,))
    write_minari(
        td, dataset_id, observation_space=box, action_space=gym.spaces.Box(-1, 1), root=root
    )
    return td


def _flip(path: Path, offsets) -> None:
    data = bytearray(path.read_bytes())
    for offset in offsets:
        data[offset] ^= 0x01
    path.write_bytes(data)


def _largest_record(path: Path) -> tuple[int, int]:
    """(offset, size) of the data of the largest record of a torch zip file."""
    with zipfile.ZipFile(path) as archive:
        info = max(archive.infolist(), key=lambda i: i.file_size)
    with open(path, "rb") as f:
        f.seek(info.header_offset + 26)
        name_len, extra_len = struct.unpack("<HH", f.read(4))
    return info.header_offset + 30 + name_len + extra_len, info.file_size


# ------------------------------------------------------------------------ caches
def test_truncated_cache_column_is_rebuilt_not_read_as_zeros(tmp_path, caplog):
    """Failure 1 of issue 15: a cached column cut to 1,000 bytes loaded as zeros."""
    expected = _write_dataset(tmp_path / "minari", "fault/trunc-v0")
    cache = tmp_path / "cache"
    path = load_minari("fault/trunc-v0", root=tmp_path / "minari", cache_dir=cache).path
    column = path / "transitions" / "observation.memmap"
    assert column.stat().st_size == 200 * 3 * 4
    os.truncate(column, 1000)
    with pytest.raises(
        DatasetError, match=r"observation\.memmap': size 1000 bytes, the manifest records 2400"
    ):
        load_transitions(path)  # without its source: a clear error
    with caplog.at_level(logging.WARNING, logger="torchrl_offline"):
        buffer = load_minari("fault/trunc-v0", root=tmp_path / "minari", cache_dir=cache)
    assert "cannot be used" in caplog.text and "observation.memmap" in caplog.text
    assert torch.equal(buffer.storage[:]["observation"], expected["observation"])
    verify_dataset(buffer.path, full=True)


def test_bit_flipped_cache_column_fails_full_verification(tmp_path):
    _write_dataset(tmp_path / "minari", "fault/flip-v0")
    path = load_minari("fault/flip-v0", root=tmp_path / "minari", cache_dir=tmp_path / "c").path
    column = path / "transitions" / "next" / "reward.memmap"
    _flip(column, [100])
    with pytest.raises(
        DatasetError, match=r"reward\.memmap': content hash .* the manifest records"
    ):
        verify_dataset(path, full=True)


def test_damaged_logged_conversion_is_converted_again(tmp_path, caplog):
    log = worker.logged_source()
    first = from_logged(log, path=tmp_path / "ds")
    reference = first.storage[:]["observation"].clone()
    del first
    (tmp_path / "ds" / "transitions" / "action.memmap").unlink()
    with caplog.at_level(logging.WARNING, logger="torchrl_offline"):
        again = from_logged(log, path=tmp_path / "ds")
    assert "action.memmap': missing" in caplog.text
    assert torch.equal(again.storage[:]["observation"], reference)
    verify_dataset(tmp_path / "ds", full=True)


def test_damaged_minari_dataset_we_wrote_is_a_clear_error(tmp_path):
    _write_dataset(tmp_path / "minari", "fault/source-v0")
    data_file = tmp_path / "minari" / "fault" / "source-v0" / "data" / "main_data.hdf5"
    size = data_file.stat().st_size
    os.truncate(data_file, size // 2)
    with pytest.raises(
        DatasetError,
        match=rf"main_data\.hdf5': size {size // 2} bytes, the manifest records {size}",
    ):
        load_minari("fault/source-v0", root=tmp_path / "minari", cache_dir=tmp_path / "c")


def test_leftovers_of_dead_processes_in_the_cache_are_removed_on_load(tmp_path):
    from torchrl_offline.leftovers import _host

    _write_dataset(tmp_path / "minari", "fault/left-v0")
    dead = f"{2**22 + 1}-{_host()}"  # above Linux's largest pid
    memos = tmp_path / "cache" / "content-hashes"
    memos.mkdir(parents=True)
    stale_memo = memos / f".{'a' * 32}.json.tmp-{dead}"
    stale_memo.write_text("{")
    builds = tmp_path / "cache" / "minari"
    builds.mkdir()
    stale_build = builds / f".other-v0-0123.tmp-{dead}-0badc0de"
    (stale_build / "transitions").mkdir(parents=True)
    live_build = builds / f".other-v0-0123.tmp-{owner_tag()}-0badc0de"
    live_build.mkdir()
    load_minari("fault/left-v0", root=tmp_path / "minari", cache_dir=tmp_path / "cache")
    assert not stale_memo.exists() and not stale_build.exists()
    assert live_build.exists()  # a running process's build is never touched


# ------------------------------------------------------------------- checkpoints
@pytest.fixture
def run_dir(tmp_path) -> Path:
    """Three checkpoints (steps 1, 2, 3) of ~1 MB."""
    for step in (1, 2, 3):
        save_checkpoint(checkpoint_path(tmp_path, step), worker.checkpoint_state(step))
    return tmp_path


def test_four_bytes_flipped_in_the_largest_record_never_load(run_dir):
    """Failure 2 of issue 15 (first form): a Q weight of 3.6e37 loaded."""
    path = checkpoint_path(run_dir, 3)
    start, size = _largest_record(path)
    assert size > 1_000_000
    rng = random.Random(0)
    for _ in range(20):
        original = path.read_bytes()
        at = start + rng.randrange(size - 4)
        _flip(path, range(at, at + 4))
        with pytest.raises(CheckpointError, match="checkpoint_000000003.pt.*content hash") as err:
            load_checkpoint(path)
        assert "previous good checkpoint of this directory is" in str(err.value)
        assert str(err.value).endswith("checkpoint_000000002.pt'")
        path.write_bytes(original)
    assert load_checkpoint(path)["step"] == 3


def test_a_single_bit_flip_anywhere_never_loads_other_values(run_dir):
    """Any one bit of the file: refused, or (zip padding and headers torch does not read)
    the very same state."""
    path = checkpoint_path(run_dir, 3)
    original = path.read_bytes()
    expected = load_checkpoint(path)
    rng = random.Random(4)
    refused = same = 0
    for _ in range(50 * TRIALS):
        data = bytearray(original)
        data[rng.randrange(len(data))] ^= 1 << rng.randrange(8)
        path.write_bytes(data)
        try:
            state = load_checkpoint(path)
        except CheckpointError:
            refused += 1
            continue
        assert state["step"] == expected["step"]
        assert torch.equal(state["weights"], expected["weights"])
        same += 1
    print(f"single bit flips of a checkpoint: {refused} refused, {same} loaded the same state")


def test_any_bit_flip_of_a_cache_entry_fails_full_verification(tmp_path):
    _write_dataset(tmp_path / "minari", "fault/flips-v0")
    path = load_minari("fault/flips-v0", root=tmp_path / "minari", cache_dir=tmp_path / "c").path
    files = sorted(p for p in path.rglob("*") if p.is_file() and p.stat().st_size)
    rng = random.Random(5)
    for _ in range(25 * TRIALS):
        file = rng.choice(files)
        original = file.read_bytes()
        _flip(file, [rng.randrange(len(original))])
        damage = "(?i)manifest" if file.name == MANIFEST else rf"{file.name}': content hash"
        with pytest.raises(DatasetError, match=damage):
            verify_dataset(path, full=True)
        file.write_bytes(original)
    verify_dataset(path, full=True)


def test_lowest_bit_of_every_16th_byte_never_loads(run_dir):
    """Failure 2 of issue 15 (second form): all tensors changed and resume went on."""
    path = checkpoint_path(run_dir, 3)
    _flip(path, range(0, path.stat().st_size, 16))
    with pytest.raises(CheckpointError, match="checkpoint_000000003.pt.*corrupt"):
        load_checkpoint(path)


@pytest.mark.parametrize("keep", [0.1, 0.5, 0.99])
def test_truncated_checkpoint_never_loads_and_offers_a_verified_older_one(run_dir, keep):
    for step in (3, 2):  # the newest two damaged: step 1 is offered
        path = checkpoint_path(run_dir, step)
        os.truncate(path, int(path.stat().st_size * keep))
    with pytest.raises(CheckpointError) as err:
        load_checkpoint(checkpoint_path(run_dir, 3))
    assert str(err.value).endswith("the previous good checkpoint of this directory is "
                                   f"{str(checkpoint_path(run_dir, 1))!r}")  # fmt: skip


def test_no_good_checkpoint_left_is_said_plainly(run_dir):
    for path in list_checkpoints(run_dir):
        _flip(path, [path.stat().st_size // 2])
    with pytest.raises(CheckpointError) as err:
        load_checkpoint(latest_checkpoint(run_dir))
    assert "previous good" not in str(err.value)


def test_checkpoints_without_a_hash_still_load_with_a_note(tmp_path, caplog):
    path = checkpoint_path(tmp_path, 7)
    torch.save({"format": "torchrl_offline.checkpoint/1", "state": {"step": 7}}, path)
    with caplog.at_level(logging.INFO, logger="torchrl_offline"):
        assert load_checkpoint(path) == {"step": 7}
    assert "predates checkpoint content hashes" in caplog.text
    assert verify_checkpoint(path) is False
    assert verify_checkpoint(save_checkpoint(checkpoint_path(tmp_path, 8), {"step": 8})) is True


# --------------------------------------------------------------------- kill -9
@pytest.fixture(scope="module")
def server():
    """The trial server; ``server(task, directory, delay)`` forks a writer and kills it."""
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen(
        [sys.executable, "-m", "tests._fault_worker"],
        cwd=ROOT,
        env=env,
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )

    def kill_after(task: str, directory: Path, delay: float) -> int:
        proc.stdin.write(json.dumps({"task": task, "dir": str(directory)}) + "\n")
        proc.stdin.flush()
        pid = int(proc.stdout.readline().split()[1])
        time.sleep(delay)
        os.kill(pid, signal.SIGKILL)
        reaped = proc.stdout.readline().split()
        assert reaped == ["reaped", str(int(signal.SIGKILL))], reaped  # it was still writing
        return pid

    yield kill_after
    proc.stdin.close()
    proc.wait(timeout=30)


def _hidden(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if p.name.startswith(".")) if folder.is_dir() else []


def test_kill_during_conversion_leaves_nothing_that_loads(tmp_path, server):
    rng = random.Random(1)
    seen = {"conversions finished": 0, "builds left by the kill": 0}
    for trial in range(TRIALS):
        base = tmp_path / f"trial{trial}"
        expected = _write_dataset(base / "minari", worker.DATASET)
        pid = server("convert", base, rng.uniform(0.3, 1.5))
        caches = sorted(base.glob("cache*"))
        for cache in caches:  # every finished entry is intact; builds are hidden
            for entry in (cache / "minari").iterdir() if (cache / "minari").is_dir() else ():
                if not entry.name.startswith("."):
                    verify_dataset(entry, full=True)
                    seen["conversions finished"] += 1
            left = [p for p in _hidden(cache / "minari") if f".tmp-{pid}-" in p.name]
            seen["builds left by the kill"] += len(left)
        for logged in sorted(base.glob("logged*")):
            verify_dataset(logged, full=True)
            seen["conversions finished"] += 1
        assert all(f".tmp-{pid}-" in p.name for p in _hidden(base))
        seen["builds left by the kill"] += len(_hidden(base))
        # the next run recovers: converts (or reuses) and removes the dead writer's builds
        last = caches[-1]
        buffer = load_minari(worker.DATASET, root=base / "minari", cache_dir=last)
        assert torch.equal(buffer.storage[:]["observation"], expected["observation"])
        assert _hidden(last / "minari") == []
        again = from_logged(worker.logged_source(), path=base / "logged_next")
        assert len(again) == 300 and _hidden(base) == []
    print(f"kill -9 during conversion, {TRIALS} trials: {seen}")


def test_kill_while_saving_checkpoints_leaves_only_whole_ones(tmp_path, server):
    rng = random.Random(2)
    left_tmp = 0
    for trial in range(TRIALS):
        directory = tmp_path / f"trial{trial}"
        pid = server("checkpoint", directory, rng.uniform(0.2, 1.0))
        found = list_checkpoints(directory)
        assert found, "the writer saved nothing before the kill"
        for path in found:
            assert verify_checkpoint(path)
            step = load_checkpoint(path)["step"]
            assert torch.equal(
                load_checkpoint(path)["weights"], worker.checkpoint_state(step)["weights"]
            )
        stale = [p for p in directory.iterdir() if p.name.endswith(".tmp")]
        assert all(f".{pid}-" in p.name for p in stale)
        left_tmp += len(stale)
        # the next save removes the dead writer's temporary files, never ours
        own = directory / f".checkpoint_000000999.pt.{owner_tag()}-{'0' * 32}.tmp"
        own.write_bytes(b"in progress")
        save_checkpoint(checkpoint_path(directory, 10**6), {"step": 10**6})
        assert [p for p in directory.iterdir() if p.name.endswith(".tmp")] == [own]
        own.unlink()
    print(f"kill -9 while saving checkpoints, {TRIALS} trials: {left_tmp} temporary files left")


def test_kill_during_collection_leaves_nothing_that_loads(tmp_path, server, monkeypatch):
    rng = random.Random(3)
    scratch_left = collected = 0
    for trial in range(TRIALS):
        base = tmp_path / f"trial{trial}"
        (base / "tmp").mkdir(parents=True)
        pid = server("collect", base, rng.uniform(0.5, 2.0))
        root = base / "minari" / "fault"
        finished = sorted(p for p in root.iterdir() if p.name[0] != ".") if root.is_dir() else []
        for dataset in finished:
            verify_manifest(dataset, full=True, error=DatasetError)
        scratch = [
            p for p in (base / "tmp").iterdir() if p.name.startswith("torchrl_offline_collect_")
        ]
        assert all(f"_{pid}-" in p.name for p in scratch)
        scratch_left += len(scratch)
        monkeypatch.setattr("tempfile.tempdir", str(base / "tmp"))
        collect_dataset("CartPole-v1", None, 20, dataset_id="fault/next-v0", root=base / "minari")
        assert list((base / "tmp").iterdir()) == []
        assert _hidden(root) == []  # the dead writer's build folder went too
        collected += len(finished)
    print(
        f"kill -9 during collection, {TRIALS} trials: {collected} collections finished, "
        f"{scratch_left} scratch folders left"
    )
