"""Data-parallel training throughput and per-rank memory on a 1M-transition dataset.

Builds a memory-mapped dataset of random transitions with ``from_logged`` (default 1M
transitions, observation 17, action 6, 1000-step episodes: MuJoCo-sized) in a temporary
directory, then trains the same algorithm with ``torchrun`` on 1 and on 2 processes
(plus the plain, non-distributed ``train`` as a baseline; one thread per process) and
reports, per setting:

* updates (steps) per second and transitions (samples) per second, measured on rank 0
  over the updates after a warm-up, and rank 0's CPU time per update (all its threads,
  gloo's included): on shared cores the wall-clock rates depend on the other jobs, the
  CPU time per update much less, so transitions per CPU-second compare the settings'
  efficiency (communication, duplicated work);
* each rank's peak resident memory (``VmHWM``), its peak private (anonymous) memory
  and that right after opening the dataset, and the peak resident pages of the
  memory-mapped dataset files (file-backed, shared by the ranks through the page
  cache: one copy per machine, whatever the number of ranks);
* the machine's load average before and after, since the cores are shared.

The dataset is deleted at the end. Usage::

    python benchmarks/distributed_throughput.py                 # 1M transitions, IQL
    python benchmarks/distributed_throughput.py --transitions 100000 --steps 100
    python benchmarks/distributed_throughput.py --repeats 3 --two-threads

Prints a Markdown table and writes ``--json`` if given.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path


def _status_kb(field: str) -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    return 0


def _mapped_kb(prefix: str) -> int:
    """Resident kB of the memory mappings of files under ``prefix`` (the dataset)."""
    total, inside = 0, False
    with open("/proc/self/smaps") as f:
        for line in f:
            head = line.split()
            if head and "-" in head[0] and len(head) >= 5 and ":" not in head[0]:
                inside = len(head) >= 6 and head[5].startswith(prefix)
            elif inside and line.startswith("Rss:"):
                total += int(head[1])
    return total


class _Memory:
    """Peaks of private (anonymous) resident memory, sampled every 20 ms, and of the
    dataset's resident mapped pages, sampled every 0.5 s."""

    def __init__(self, dataset_dir: str) -> None:
        self.prefix = str(Path(dataset_dir).resolve())
        self.peak_anon = self.peak_dataset = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        tick = 0
        while not self._stop.is_set():
            self.peak_anon = max(self.peak_anon, _status_kb("RssAnon"))
            if tick % 25 == 0:
                self.peak_dataset = max(self.peak_dataset, _mapped_kb(self.prefix))
            tick += 1
            time.sleep(0.02)

    def __enter__(self) -> _Memory:
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()
        self.peak_dataset = max(self.peak_dataset, _mapped_kb(self.prefix))


class _StepTimer:
    """A trainer hook noting the wall and CPU time after each update."""

    def __init__(self) -> None:
        self.times: list[float] = []
        self.cpu: list[float] = []

    def __call__(self, *args) -> None:
        self.times.append(time.perf_counter())
        self.cpu.append(time.process_time())

    def register(self, trainer) -> None:
        trainer.register_op("post_steps", self)


# ----------------------------------------------------------------------------- dataset
def build_dataset(path: Path, transitions: int, obs_dim: int, act_dim: int) -> float:
    """Random transitions in 1000-step episodes, written with from_logged; returns seconds."""
    import numpy as np

    from torchrl_offline.data.logged import from_logged

    rng = np.random.default_rng(0)
    terminals = np.zeros(transitions, dtype=bool)
    terminals[999::1000] = True
    log = {
        "observations": rng.standard_normal((transitions, obs_dim), dtype=np.float32),
        "next_observations": rng.standard_normal((transitions, obs_dim), dtype=np.float32),
        "actions": rng.uniform(-1, 1, (transitions, act_dim)).astype(np.float32),
        "rewards": rng.standard_normal(transitions, dtype=np.float32),
        "terminals": terminals,
    }
    start = time.perf_counter()
    from_logged(log, path=path)
    return time.perf_counter() - start


# ----------------------------------------------------------------------------- worker
def worker(args: argparse.Namespace) -> None:
    """One rank (or the plain baseline): open the dataset, train, write a JSON report."""
    import torch

    torch.set_num_threads(args.threads)
    from torchrl.data import RandomSampler

    from torchrl_offline.data.storage import load_transitions, make_replay_buffer
    from torchrl_offline.trainers.offline import train

    rank = int(os.environ.get("RANK", 0))
    before_open = _status_kb("RssAnon")
    td, metadata = load_transitions(args.data)
    dataset = make_replay_buffer(
        td, batch_size=args.batch_size, sampler=RandomSampler(), metadata=metadata
    )
    after_open = _status_kb("RssAnon")
    timer = _StepTimer()
    with _Memory(args.data) as memory:
        result = train(
            args.algo,
            dataset,
            total_steps=args.steps,
            batch_size=args.batch_size,
            seed=0,
            logger=None,
            progress=False,
            hooks=[timer],
            distributed=None if args.mode == "torchrun" else False,
        )
    if not timer.times:  # ranks > 0 do not run hooks: time the whole run instead
        timer.cpu = [0.0, time.process_time()]
        timer.times = [0.0, 1.0]
    del result
    report = {
        "rank": rank,
        "world_size": int(os.environ.get("WORLD_SIZE", 1)),
        "anon_kb_before_open": before_open,
        "anon_kb_after_open": after_open,
        "peak_anon_kb": memory.peak_anon,
        "peak_dataset_kb": memory.peak_dataset,
        "vm_hwm_kb": _status_kb("VmHWM"),
    }
    if rank == 0:
        wall, cpu = timer.times[args.warmup :], timer.cpu[args.warmup :]
        report["steps_per_s"] = (len(wall) - 1) / (wall[-1] - wall[0])
        report["cpu_ms_per_step"] = 1000 * (cpu[-1] - cpu[0]) / (len(cpu) - 1)
    Path(args.report_dir, f"rank{rank}.json").write_text(json.dumps(report))


# ----------------------------------------------------------------------------- driver
def run_setting(args: argparse.Namespace, data: Path, mode: str, procs: int, threads: int):
    report_dir = Path(tempfile.mkdtemp(prefix="dist_report_"))
    common = [
        __file__, "--worker", "--mode", mode, "--data", str(data), "--algo", args.algo,
        "--steps", str(args.steps), "--warmup", str(args.warmup), "--threads", str(threads),
        "--batch-size", str(args.batch_size), "--report-dir", str(report_dir),
    ]  # fmt: skip
    if mode == "torchrun":
        cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone",
               f"--nproc-per-node={procs}", *common]  # fmt: skip
    else:
        cmd = [sys.executable, *common]
    env = {**os.environ, "OMP_NUM_THREADS": str(threads)}
    load_before = os.getloadavg()[0]
    start = time.perf_counter()
    subprocess.run(cmd, check=True, env=env, timeout=args.timeout)
    wall = time.perf_counter() - start
    reports = [json.loads(p.read_text()) for p in sorted(report_dir.glob("rank*.json"))]
    shutil.rmtree(report_dir, ignore_errors=True)
    steps_per_s = reports[0]["steps_per_s"]
    cpu_ms = reports[0]["cpu_ms_per_step"]
    return {
        "cpu_ms_per_step_rank0": cpu_ms,
        "samples_per_cpu_s": 1000 * args.batch_size / cpu_ms,
        "setting": f"{mode}, {procs} process(es) x {threads} thread(s)",
        "processes": procs,
        "threads": threads,
        "steps_per_s": steps_per_s,
        "samples_per_s": steps_per_s * args.batch_size * procs,
        "wall_s": wall,
        "load_before": load_before,
        "load_after": os.getloadavg()[0],
        "ranks": reports,
    }


def _mb(kb: int) -> str:
    return f"{kb / 1024:.0f}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--mode", default="torchrun", help=argparse.SUPPRESS)
    parser.add_argument("--data", help=argparse.SUPPRESS)
    parser.add_argument("--report-dir", help=argparse.SUPPRESS)
    parser.add_argument("--threads", type=int, default=1, help=argparse.SUPPRESS)
    parser.add_argument("--transitions", type=int, default=1_000_000)
    parser.add_argument("--obs-dim", type=int, default=17)
    parser.add_argument("--act-dim", type=int, default=6)
    parser.add_argument("--algo", default="iql")
    parser.add_argument("--steps", type=int, default=400, help="updates per setting")
    parser.add_argument("--warmup", type=int, default=50, help="updates not timed")
    parser.add_argument("--batch-size", type=int, default=256, help="per process")
    parser.add_argument("--timeout", type=float, default=1800.0)
    parser.add_argument(
        "--repeats", type=int, default=1, help="run the settings this many times, interleaved"
    )
    parser.add_argument(
        "--two-threads",
        action="store_true",
        help="also time one plain process with 2 threads (slow when the cores are busy)",
    )
    parser.add_argument("--json", help="write the results here")
    args = parser.parse_args()
    if args.worker:
        worker(args)
        return

    base = Path(tempfile.mkdtemp(prefix="dist_bench_"))
    try:
        data = base / "data"
        seconds = build_dataset(data, args.transitions, args.obs_dim, args.act_dim)
        size_mb = sum(f.stat().st_size for f in data.rglob("*") if f.is_file()) / 2**20
        print(
            f"dataset: {args.transitions} transitions, {size_mb:.0f} MB memory-mapped, "
            f"built in {seconds:.1f} s; {args.algo}, batch {args.batch_size} per process, "
            f"{args.steps} updates ({args.warmup} warm-up); {os.cpu_count()} CPUs"
        )
        settings = [("plain", 1, 1), ("torchrun", 1, 1), ("torchrun", 2, 1)]
        if args.two_threads:
            settings.append(("plain", 1, 2))
        results = [
            run_setting(args, data, *setting) for _ in range(args.repeats) for setting in settings
        ]
    finally:
        shutil.rmtree(base, ignore_errors=True)
    print()
    print(
        "| setting | updates/s | samples/s | rank 0 CPU ms per update | samples per "
        "CPU-second | per-rank peak RSS (VmHWM) MB | per-rank peak private MB (after opening "
        "the dataset) | per-rank resident dataset pages MB (shared) | load avg before/after |"
    )
    print("|---|---|---|---|---|---|---|---|---|")
    for r in results:
        ranks = r["ranks"]
        hwm = ", ".join(_mb(x["vm_hwm_kb"]) for x in ranks)
        private = ", ".join(
            f"{_mb(x['peak_anon_kb'])} ({_mb(x['anon_kb_after_open'])})" for x in ranks
        )
        pages = ", ".join(_mb(x["peak_dataset_kb"]) for x in ranks)
        print(
            f"| {r['setting']} | {r['steps_per_s']:.1f} | {r['samples_per_s']:.0f} "
            f"| {r['cpu_ms_per_step_rank0']:.1f} | {r['samples_per_cpu_s']:.0f} | {hwm} "
            f"| {private} | {pages} | {r['load_before']:.1f} / {r['load_after']:.1f} |"
        )
    if args.json:
        Path(args.json).write_text(json.dumps({"args": vars(args), "results": results}, indent=1))


if __name__ == "__main__":
    main()
