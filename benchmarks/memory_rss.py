"""Peak resident memory of IQL training on a 1M-transition memory-mapped dataset.

Builds a dataset locally with :func:`~torchrl_offline.data.from_logged` from random
arrays (observation 17, action 6, float32, 1000-step episodes, next observations
stored), then trains IQL (2x256 ReLU MLPs, batch 256, fused Adam, fused soft target
update) for ``--steps`` updates on batches sampled from the memory-mapped buffer, in a
fresh process whose resident memory is sampled every 5 ms:

* ``baseline``: RSS after importing torch/torchrl, building the loss and optimizer and
  running 5 warm-up updates on an in-memory batch, before the dataset is opened (the
  "small constant": libraries, networks, Adam state, autograd buffers);
* ``peak``: the largest RSS while opening the dataset and training;
* ``anonymous``: the growth of the process's own (non file-backed) memory, i.e. what
  would stay if the kernel dropped every page of the memory-mapped files.

The dataset's pages are file-backed: random batches touch most of its pages, so the
file-backed part of RSS can grow up to the dataset's size on disk, never beyond it, and
the kernel can drop it under memory pressure. The check is
``peak <= baseline + dataset size on disk + margin`` (``--margin-mb``, default 16 MB, for
the sampler's index buffers and allocator noise). Usage::

    python benchmarks/memory_rss.py                        # 1M transitions, 300 updates
    python benchmarks/memory_rss.py --transitions 100000 --steps 100
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

OBS_DIM, ACT_DIM, EPISODE = 17, 6, 1000


def _status_kb() -> dict[str, int]:
    out = {}
    with open("/proc/self/status") as f:
        for line in f:
            key = line.split(":")[0]
            if key in ("VmRSS", "RssAnon", "RssFile", "VmHWM"):
                out[key] = int(line.split()[1])
    return out


class _Peak:
    """Samples RSS (total, anonymous, file-backed) in a background thread."""

    def __init__(self, period: float = 0.005) -> None:
        self.period = period
        self.peak = {"VmRSS": 0, "RssAnon": 0, "RssFile": 0}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            status = _status_kb()
            for key in self.peak:
                self.peak[key] = max(self.peak[key], status.get(key, 0))
            time.sleep(self.period)

    def __enter__(self) -> _Peak:
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()


def dir_size(path: Path) -> int:
    """Bytes of all regular files under ``path`` (the dataset's size on disk)."""
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


def build(path: Path, transitions: int) -> dict:
    """Writes ``transitions`` random transitions to ``path`` with ``from_logged``."""
    import numpy as np

    from torchrl_offline.data.logged import from_logged

    rng = np.random.default_rng(0)
    timeouts = np.zeros(transitions, dtype=bool)
    timeouts[EPISODE - 1 :: EPISODE] = True
    timeouts[-1] = True
    log = {
        "observations": rng.standard_normal((transitions, OBS_DIM), dtype=np.float32),
        "actions": rng.uniform(-1, 1, (transitions, ACT_DIM)).astype(np.float32),
        "rewards": rng.standard_normal(transitions, dtype=np.float32),
        "terminals": np.zeros(transitions, dtype=bool),
        "timeouts": timeouts,
        "next_observations": rng.standard_normal((transitions, OBS_DIM), dtype=np.float32),
    }
    start = time.perf_counter()
    from_logged(log, path=path, overwrite=True)
    return {"seconds": time.perf_counter() - start, "bytes": dir_size(path)}


def train(path: Path, steps: int) -> dict:
    """Opens the memory-mapped dataset and runs ``steps`` IQL updates; returns RSS figures."""
    import torch
    from torchrl.modules import MLP, ProbabilisticActor, TanhNormal, ValueOperator

    from torchrl_offline.data.storage import load_transitions, make_replay_buffer
    from torchrl_offline.objectives.iql import IQLLoss
    from torchrl_offline.objectives.target_update import FusedSoftUpdate

    torch.set_num_threads(1)
    torch.manual_seed(0)
    from tensordict import TensorDict
    from tensordict.nn import NormalParamExtractor, TensorDictModule
    from torchrl.data import Bounded

    def mlp(i: int, o: int) -> MLP:
        return MLP(
            in_features=i, out_features=o, num_cells=[256, 256], activation_class=torch.nn.ReLU
        )

    spec = Bounded(-torch.ones(ACT_DIM), torch.ones(ACT_DIM), (ACT_DIM,))
    actor = ProbabilisticActor(
        TensorDictModule(
            torch.nn.Sequential(mlp(OBS_DIM, 2 * ACT_DIM), NormalParamExtractor()),
            in_keys=["observation"],
            out_keys=["loc", "scale"],
        ),
        in_keys=["loc", "scale"],
        spec=spec,
        distribution_class=TanhNormal,
    )
    qvalue = ValueOperator(mlp(OBS_DIM + ACT_DIM, 1), in_keys=["observation", "action"])
    value = ValueOperator(mlp(OBS_DIM, 1), in_keys=["observation"])
    loss = IQLLoss(actor, qvalue, value)
    loss.make_value_estimator(gamma=0.99)
    updater = FusedSoftUpdate(loss, tau=0.005)
    optim = torch.optim.Adam(loss.parameters(), lr=3e-4, fused=True)

    def update(batch) -> None:
        out = loss(batch)
        (out["loss_actor"] + out["loss_qvalue"] + out["loss_value"]).backward()
        optim.step()
        optim.zero_grad(set_to_none=True)
        updater.step()

    # Warm up on an in-memory batch: Adam state, allocator pools and the code pages of
    # the backward kernels are part of the constant, not of the data.
    warm = TensorDict(
        {
            "observation": torch.randn(256, OBS_DIM),
            "action": torch.rand(256, ACT_DIM) * 2 - 1,
            ("next", "observation"): torch.randn(256, OBS_DIM),
            ("next", "reward"): torch.randn(256, 1),
            ("next", "done"): torch.zeros(256, 1, dtype=torch.bool),
            ("next", "terminated"): torch.zeros(256, 1, dtype=torch.bool),
            ("next", "truncated"): torch.zeros(256, 1, dtype=torch.bool),
        },
        [256],
    )
    for _ in range(5):
        update(warm.clone())
    baseline = _status_kb()
    with _Peak() as peak:
        transitions, metadata = load_transitions(path)
        buffer = make_replay_buffer(transitions, batch_size=256, metadata=metadata, path=path)
        start = time.perf_counter()
        for _ in range(steps):
            update(buffer.sample())
        seconds = time.perf_counter() - start
    end = _status_kb()
    return {
        "transitions": len(buffer),
        "steps": steps,
        "seconds": seconds,
        "baseline_kb": baseline["VmRSS"],
        "baseline_anon_kb": baseline["RssAnon"],
        "peak_kb": max(peak.peak["VmRSS"], end["VmHWM"]),
        "peak_anon_kb": peak.peak["RssAnon"],
        "peak_file_kb": peak.peak["RssFile"],
    }


def _child(mode: str, args: argparse.Namespace) -> dict:
    cmd = [sys.executable, __file__, "--worker", mode, "--path", str(args.path)]
    cmd += ["--transitions", str(args.transitions), "--steps", str(args.steps)]
    out = subprocess.run(cmd, check=True, capture_output=True, text=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--transitions", type=int, default=1_000_000)
    parser.add_argument("--steps", type=int, default=300)
    parser.add_argument("--path", type=Path, default=None, help="default: a temp directory")
    parser.add_argument("--margin-mb", type=float, default=16.0)
    parser.add_argument("--worker", choices=["build", "train"], help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker == "build":
        print(json.dumps(build(args.path, args.transitions)))
        return
    if args.worker == "train":
        print(json.dumps(train(args.path, args.steps)))
        return

    with tempfile.TemporaryDirectory(prefix="memory_rss_") as tmp:
        if args.path is None:
            args.path = Path(tmp) / "dataset"
        built = _child("build", args)
        trained = _child("train", args)
    mb = 1024.0
    size_mb = built["bytes"] / 2**20
    baseline, peak = trained["baseline_kb"] / mb, trained["peak_kb"] / mb
    anon_growth = (trained["peak_anon_kb"] - trained["baseline_anon_kb"]) / mb
    ok = peak <= baseline + size_mb + args.margin_mb
    print(
        f"# {trained['transitions']:,} transitions (obs {OBS_DIM}, act {ACT_DIM}, float32), "
        f"built by from_logged in {built['seconds']:.1f} s; {trained['steps']} IQL updates "
        f"(batch 256, 2x256 MLPs) in {trained['seconds']:.1f} s, one torch thread"
    )
    print(
        "| dataset on disk | RSS before data | peak RSS | peak - before | anonymous growth "
        f"| peak file-backed | peak <= before + dataset + {args.margin_mb:.0f} MB |"
    )
    print("|---:|---:|---:|---:|---:|---:|---|")
    print(
        f"| {size_mb:.0f} MB | {baseline:.0f} MB | {peak:.0f} MB | {peak - baseline:.0f} MB "
        f"| {anon_growth:+.0f} MB | {trained['peak_file_kb'] / mb:.0f} MB | "
        f"{'yes' if ok else 'NO'} |"
    )
    if not ok:
        raise SystemExit(1)


if __name__ == "__main__":
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    main()
