"""A trial server for tests/test_fault_injection.py: forks writers for the test to kill -9.

Started once per test module (``python -m tests._fault_worker``), it imports torch and the
package, then reads one JSON command per line on stdin: ``{"task": ..., "dir": ...}``.
For each it forks a writer that repeats the task forever (conversions, checkpoint saves,
collections, each into a fresh target under ``dir``), prints ``pid <writer pid>``, reaps
the writer once the test has killed it and prints ``reaped <signal>``. Forking skips the
seconds of importing torch per trial; the server itself never runs a torch computation, so
the fork is safe.
"""

from __future__ import annotations

import itertools
import json
import os
import sys
import tempfile
from pathlib import Path

import numpy as np
import torch

from torchrl_offline.data import collect_dataset, from_logged, load_minari
from torchrl_offline.trainers.checkpoint import (
    checkpoint_path,
    list_checkpoints,
    save_checkpoint,
)

#: Minari dataset id the conversion task reads (written by the test before the trials).
DATASET = "fault/convert-v0"


def logged_source(n: int = 300) -> dict[str, np.ndarray]:
    """A small logged dataset (episodes of 50 steps) for ``from_logged``."""
    rng = np.random.default_rng(0)
    states = rng.normal(size=(n // 50, 51, 4)).astype(np.float32)
    episode = np.repeat(np.arange(n // 50), 50)
    terminal = np.zeros(n, dtype=bool)
    terminal[49::50] = True
    return {
        "observations": states[:, :-1].reshape(n, 4),
        "next_observations": states[:, 1:].reshape(n, 4),
        "actions": rng.uniform(-1, 1, size=(n, 2)).astype(np.float32),
        "rewards": rng.normal(size=n).astype(np.float32),
        "terminals": terminal,
        "episode_id": episode,
    }


def checkpoint_state(step: int) -> dict:
    """A checkpoint of about 1 MB whose every value is derived from ``step``."""
    return {"step": step, "weights": torch.full((256, 1024), float(step))}


def _convert(directory: Path) -> None:
    log = logged_source()
    for i in itertools.count():
        load_minari(DATASET, root=directory / "minari", cache_dir=directory / f"cache{i}")
        from_logged(log, path=directory / f"logged{i}")


def _checkpoint(directory: Path) -> None:
    for step in itertools.count(1):
        save_checkpoint(checkpoint_path(directory, step), checkpoint_state(step))
        for old in list_checkpoints(directory)[:-2]:  # as CheckpointHook(keep=2)
            old.unlink()


def _collect(directory: Path) -> None:
    tempfile.tempdir = str(directory / "tmp")
    for i in itertools.count():
        collect_dataset(
            "CartPole-v1", None, 200, dataset_id=f"fault/c{i}-v0", root=directory / "minari", seed=i
        )


TASKS = {"convert": _convert, "checkpoint": _checkpoint, "collect": _collect}


def _writer(command: dict) -> None:
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, 1)  # stdout is the server's protocol
    os.dup2(devnull, 2)
    torch.set_num_threads(1)
    TASKS[command["task"]](Path(command["dir"]))


def main() -> None:
    torch.set_num_threads(1)
    for line in sys.stdin:
        command = json.loads(line)
        pid = os.fork()
        if pid == 0:
            try:
                _writer(command)
            finally:
                os._exit(0)
        print(f"pid {pid}", flush=True)
        _, status = os.waitpid(pid, 0)
        print(f"reaped {os.WTERMSIG(status) if os.WIFSIGNALED(status) else 0}", flush=True)


if __name__ == "__main__":
    main()
