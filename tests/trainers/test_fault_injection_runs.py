"""Fault injection on training runs, in real processes: two writers on one run directory,
``kill -9`` of a training process at a chosen and at random points, then resume.

Training processes are forked from a ``forkserver`` that has imported this module (and so
torch and the package) once, so a trial costs a fork, not seconds of imports. Set
``TORCHRL_OFFLINE_FAULT_TRIALS`` to run more random-kill trials (docs/reliability.md
reports 50).
"""

from __future__ import annotations

import contextlib
import json
import logging
import multiprocessing
import os
import random
import signal
import time
from pathlib import Path

import pandas as pd
import pytest
import torch

from tests.trainers.conftest import make_dataset
from tests.trainers.test_offline import _run, _tensors
from torchrl_offline.cli import main
from torchrl_offline.trainers.checkpoint import list_checkpoints, load_checkpoint
from torchrl_offline.trainers.run_dir import LOCK_FILE

STEPS = 12
RANDOM_STEPS = 40
TRIALS = int(os.environ.get("TORCHRL_OFFLINE_FAULT_TRIALS", "3"))


def _train(out: Path, total: int, *, hooks=(), **kw):
    """test_offline's run (IQL, seed 3, checkpoints every 4 updates), without logs."""
    return _run("iql", out, total=total, hooks=hooks, logger=None, **kw)


class _Block:
    """Writes ``flags/at_<step>`` after update ``step`` and waits for ``flags/go``."""

    def __init__(self, step: int, flags: Path) -> None:
        self.step, self.flags, self.trainer = step, flags, None

    def register(self, trainer) -> None:
        self.trainer = trainer
        trainer.register_op("post_steps", self)

    def __call__(self) -> None:
        if self.trainer.step == self.step:
            (self.flags / f"at_{self.step}").touch()
            while not (self.flags / "go").exists():
                time.sleep(0.02)


def _child(out: str, total: int, block_at: int | None, flags: str, result: str) -> None:
    """A training process: the result (or the error) goes to the JSON file ``result``."""
    torch.set_num_threads(1)
    hooks = [_Block(block_at, Path(flags))] if block_at else []
    try:
        run = _train(Path(out), total, hooks=hooks)
        outcome = {"ok": True, "step": run.step, "checkpoint": str(run.checkpoint)}
    except Exception as err:
        outcome = {"ok": False, "error": f"{type(err).__name__}: {err}"}
    Path(result).write_text(json.dumps(outcome))


@pytest.fixture(scope="module")
def processes():
    context = multiprocessing.get_context("forkserver")
    context.set_forkserver_preload([__name__])
    return context


def _start(processes, out: Path, total: int, block_at: int | None, tmp: Path, name: str):
    flags = tmp / "flags"
    flags.mkdir(parents=True, exist_ok=True)
    result = tmp / f"{name}.json"
    proc = processes.Process(
        target=_child, args=(str(out), total, block_at, str(flags), str(result)), daemon=True
    )
    proc.start()
    return proc, flags, result


def _wait(path: Path, proc, timeout: float = 120.0) -> None:
    end = time.monotonic() + timeout
    while not path.exists():
        assert proc.is_alive(), f"the training process died (exit code {proc.exitcode})"
        assert time.monotonic() < end, f"{path.name} never appeared"
        time.sleep(0.02)


def _log_file(tmp: Path) -> Path:
    """The training data of make_dataset() as a Parquet log, for the command line."""
    td = make_dataset().storage[:]
    columns = {f"observation_{i}": td["observation"][:, i] for i in range(3)}
    columns.update({f"next_observation_{i}": td["next", "observation"][:, i] for i in range(3)})
    for name, key in (("reward", "reward"), ("terminated", "terminated")):
        columns[name] = td["next", key][:, 0]
    columns["truncated"] = td["next", "truncated"][:, 0]
    columns["action"] = td["action"][:, 0]
    path = tmp / "log.parquet"
    pd.DataFrame({k: v.numpy() for k, v in columns.items()}).to_parquet(path)
    return path


def test_a_second_writer_is_refused_and_the_first_run_is_intact(
    processes, tmp_path, monkeypatch, capsys
):
    monkeypatch.setenv("TORCHRL_OFFLINE_CACHE", str(tmp_path / "cache"))
    out = tmp_path / "run"
    first, flags, first_result = _start(processes, out, STEPS, 6, tmp_path, "first")
    _wait(flags / "at_6", first)  # the first process trains in `out` (checkpoint 4 written)
    second, _, second_result = _start(processes, out, STEPS, None, tmp_path, "second")
    second.join(120)
    refused = json.loads(second_result.read_text())
    assert not refused["ok"]
    assert f"in use by another process (pid {first.pid} on " in refused["error"]
    argv = ["train", "--algo", "iql", "--dataset", str(_log_file(tmp_path)), "--steps", "4",
            "--out", str(out), "--batch-size", "16", "--logger", "none", "--no-progress"]  # fmt: skip
    capsys.readouterr()
    assert main(argv) == 1  # the command line, a third process in the same directory
    assert f"in use by another process (pid {first.pid}" in capsys.readouterr().err
    (flags / "go").touch()
    first.join(120)
    done = json.loads(first_result.read_text())
    assert done == {
        "ok": True,
        "step": STEPS,
        "checkpoint": str(out / "checkpoints" / "checkpoint_000000012.pt"),
    }
    steps = [load_checkpoint(p)["step"] for p in list_checkpoints(out / "checkpoints")]
    assert steps == [8, 12] and not (out / LOCK_FILE).exists()
    assert main(argv) == 1  # done, but still its run: refused without --resume/--overwrite
    assert "already holds an iql train run (newest checkpoint: step 12)" in capsys.readouterr().err


def test_kill_9_while_training_then_resume_is_bit_identical(processes, tmp_path, caplog):
    full = _train(tmp_path / "full", STEPS)
    out = tmp_path / "part"
    proc, flags, _ = _start(processes, out, STEPS, 6, tmp_path, "killed")
    _wait(flags / "at_6", proc)
    os.kill(proc.pid, signal.SIGKILL)
    proc.join(60)
    assert proc.exitcode == -signal.SIGKILL and (out / LOCK_FILE).exists()  # left behind
    with caplog.at_level(logging.WARNING, logger="torchrl_offline"):
        resumed = _train(out, STEPS, resume=True)
    assert f"taking over the stale lock of {out / 'run.lock'}: pid {proc.pid}" in caplog.text
    assert resumed.step == STEPS
    a, b = _tensors(full.algorithm), _tensors(resumed.algorithm)
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def kill_and_resume_trial(processes, tmp: Path, delay: float, full) -> str:
    """One trial: train, ``kill -9`` after ``delay`` seconds, resume (or start again with
    overwrite when no checkpoint was written); returns the outcome. The result must be
    bitwise the uninterrupted run's ``full``."""
    out = tmp / "run"
    proc, _, result = _start(processes, out, RANDOM_STEPS, None, tmp, "trial")
    time.sleep(delay)
    with contextlib.suppress(ProcessLookupError):  # it may have finished (and been reaped)
        os.kill(proc.pid, signal.SIGKILL)
    proc.join(60)
    if result.exists():
        outcome = "finished before the kill"
    elif list_checkpoints(out / "checkpoints"):
        newest = load_checkpoint(list_checkpoints(out / "checkpoints")[-1])["step"]
        outcome = f"killed after checkpoint {newest}"
    else:
        outcome = "killed before the first checkpoint"
    if outcome.startswith("killed before"):
        from torchrl_offline.trainers.run_dir import RunDirectoryError

        with pytest.raises(RunDirectoryError, match="nothing to resume"):
            _train(out, RANDOM_STEPS, resume=True)
        run = _train(out, RANDOM_STEPS, overwrite=True)
    else:
        run = _train(out, RANDOM_STEPS, resume=True)
    a, b = _tensors(full.algorithm), _tensors(run.algorithm)
    assert run.step == RANDOM_STEPS
    assert all(torch.equal(a[k], b[k]) for k in a), outcome
    return outcome


def test_kill_9_at_random_points_then_resume_is_bit_identical(processes, tmp_path):
    full = _train(tmp_path / "full", RANDOM_STEPS)
    start = time.perf_counter()
    _train(tmp_path / "timed", RANDOM_STEPS)
    seconds = time.perf_counter() - start
    rng = random.Random(0)
    outcomes = []
    for trial in range(TRIALS):
        delay = rng.uniform(0.0, 1.5 * seconds + 0.3)  # fork and set-up, then training
        outcomes.append(kill_and_resume_trial(processes, tmp_path / f"t{trial}", delay, full))
    print("outcomes:", outcomes)
