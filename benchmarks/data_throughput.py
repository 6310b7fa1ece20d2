"""Conversion and sampling speed of ``load_minari`` against TorchRL's ``MinariExperienceReplay``.

Builds a local Minari dataset (default: 1M transitions, observation 17 float64,
action 6 float32, 1000-step episodes, HDF5), then measures, in the same run:

* conversion time (transitions/s) and peak memory of :func:`load_minari`
  (cold cache), and the time of a second, cached load;
* the same conversion by TorchRL's
  ``MinariExperienceReplay(dataset_id, batch_size=256, load_from_local_minari=True)``,
  and whether the data it returns is all zeros (torchrl 0.14.1 bug);
* sampling throughput (batches of 256 per second) of both buffers, measured in
  one process with the two buffers interleaved so both see the same machine load.

Each conversion runs in a fresh subprocess so its peak RSS is its own. Usage::

    python benchmarks/data_throughput.py                  # 1M transitions
    python benchmarks/data_throughput.py --transitions 50000   # quick run

Prints a Markdown table.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import warnings
from pathlib import Path

DATASET_ID = "bench/throughput-v0"


def _status_kb(field: str) -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    return 0


class _PeakMemory:
    """Sample the process's resident (total and anonymous) memory in a background thread."""

    def __init__(self, period: float = 0.005):
        self.period = period
        self.peak_rss = self.peak_anon = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            self.peak_rss = max(self.peak_rss, _status_kb("VmRSS"))
            self.peak_anon = max(self.peak_anon, _status_kb("RssAnon"))
            time.sleep(self.period)

    def __enter__(self) -> _PeakMemory:
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()
        self.peak_rss = max(self.peak_rss, _status_kb("VmRSS"))
        self.peak_anon = max(self.peak_anon, _status_kb("RssAnon"))


def make_dataset(root: Path, transitions: int, episode_length: int, data_format: str) -> float:
    """Write a random continuous-control Minari dataset; returns the seconds it took."""
    import gymnasium as gym
    import minari
    import numpy as np
    from minari.data_collector import EpisodeBuffer

    os.environ["MINARI_DATASETS_PATH"] = str(root)
    obs_space = gym.spaces.Box(-np.inf, np.inf, (17,), dtype=np.float64)
    act_space = gym.spaces.Box(-1.0, 1.0, (6,), dtype=np.float32)
    rng = np.random.default_rng(0)
    lengths = [episode_length] * (transitions // episode_length)
    if transitions % episode_length:
        lengths.append(transitions % episode_length)

    def episode(i: int, length: int) -> EpisodeBuffer:
        end = np.zeros(length, dtype=bool)
        terminated, truncated = end.copy(), end.copy()
        (terminated if i % 3 == 0 else truncated)[-1] = True
        return EpisodeBuffer(
            id=None,
            observations=rng.standard_normal((length + 1, 17)),
            actions=rng.uniform(-1, 1, (length, 6)).astype(np.float32),
            rewards=rng.standard_normal(length),
            terminations=terminated,
            truncations=truncated,
        )

    start = time.perf_counter()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        dataset = minari.create_dataset_from_buffers(
            DATASET_ID,
            [episode(0, lengths[0])],
            observation_space=obs_space,
            action_space=act_space,
            algorithm_name="random",
            data_format=data_format,
        )
        for first in range(1, len(lengths), 50):
            batch = [episode(i, lengths[i]) for i in range(first, min(first + 50, len(lengths)))]
            dataset.update_dataset_from_buffer(batch)
    return time.perf_counter() - start


def _worker_ours(args: argparse.Namespace) -> dict:
    import torch

    from torchrl_offline.data.minari import load_minari

    baseline, baseline_anon = _status_kb("VmRSS"), _status_kb("RssAnon")
    with _PeakMemory() as mem:
        start = time.perf_counter()
        buffer = load_minari(DATASET_ID, cache_dir=args.cache, batch_size=256)
        convert = time.perf_counter() - start
    start = time.perf_counter()
    again = load_minari(DATASET_ID, cache_dir=args.cache, batch_size=256)
    cached = time.perf_counter() - start
    assert again.path == buffer.path
    size = sum(f.stat().st_size for f in Path(buffer.path).rglob("*") if f.is_file())
    return {
        "transitions": len(buffer),
        "convert_s": convert,
        "cached_load_s": cached,
        "baseline_rss_mb": baseline / 1024,
        "baseline_anon_mb": baseline_anon / 1024,
        "peak_rss_mb": max(mem.peak_rss, resource.getrusage(resource.RUSAGE_SELF).ru_maxrss) / 1024,
        "peak_anon_mb": mem.peak_anon / 1024,
        "stored_mb": size / 2**20,
        "all_zero": bool((buffer["observation"] == 0).all() and (buffer["action"] == 0).all()),
        "done_count": int(buffer["next", "done"].sum()),
        "dtype": str(buffer["observation"].dtype).replace("torch.", ""),
        "path": str(buffer.path),
        "torch_threads": torch.get_num_threads(),
    }


def _worker_torchrl(args: argparse.Namespace) -> dict:
    from torchrl.data.datasets import MinariExperienceReplay

    baseline, baseline_anon = _status_kb("VmRSS"), _status_kb("RssAnon")
    with _PeakMemory() as mem:
        start = time.perf_counter()
        buffer = MinariExperienceReplay(
            DATASET_ID, batch_size=256, root=args.cache, load_from_local_minari=True
        )
        convert = time.perf_counter() - start
    data = buffer[:]
    size = sum(f.stat().st_size for f in (Path(args.cache) / DATASET_ID).rglob("*") if f.is_file())
    leaves = {
        key: value
        for key, value in data.items(include_nested=True, leaves_only=True)
        if key not in ("episode",)
    }
    return {
        "transitions": len(buffer),
        "convert_s": convert,
        "baseline_rss_mb": baseline / 1024,
        "baseline_anon_mb": baseline_anon / 1024,
        "peak_rss_mb": max(mem.peak_rss, resource.getrusage(resource.RUSAGE_SELF).ru_maxrss) / 1024,
        "peak_anon_mb": mem.peak_anon / 1024,
        "stored_mb": size / 2**20,
        "all_zero": all(bool((v == 0).all()) for v in leaves.values()),
        "done_count": int(data["next", "done"].sum()),
        "dtype": str(data["observation"].dtype).replace("torch.", ""),
    }


def _worker_sample(args: argparse.Namespace) -> dict:
    """Sampling throughput of both (already converted) buffers, interleaved in rounds."""
    from torchrl.data.datasets import MinariExperienceReplay

    from torchrl_offline.data.minari import load_minari

    buffers = {"ours": load_minari(DATASET_ID, cache_dir=args.cache, batch_size=256)}
    if args.torchrl_cache:
        buffers["torchrl"] = MinariExperienceReplay(
            DATASET_ID, batch_size=256, root=args.torchrl_cache, download=False
        )
    rates: dict[str, list[float]] = {name: [] for name in buffers}
    for buffer in buffers.values():
        # Map every page of the memory-mapped files once (a long training run does the
        # same early on), so page faults do not count against either loader.
        for leaf in buffer.storage._storage.values(include_nested=True, leaves_only=True):
            leaf.sum()
        for _ in range(50):
            buffer.sample()
    for _ in range(args.rounds):
        for name, buffer in buffers.items():
            start = time.perf_counter()
            for _ in range(args.batches):
                batch = buffer.sample()
            rates[name].append(args.batches / (time.perf_counter() - start))
            assert batch.batch_size[0] == 256
    return {name: {"median": statistics.median(r), "all": r} for name, r in rates.items()}


def _run_worker(kind: str, extra: list[str], env: dict[str, str]) -> dict:
    out = subprocess.run(
        [sys.executable, __file__, "--worker", kind, *extra],
        check=True,
        capture_output=True,
        text=True,
        env=env,
    )
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--transitions", type=int, default=1_000_000)
    parser.add_argument("--episode-length", type=int, default=1000)
    parser.add_argument("--format", choices=["hdf5", "arrow"], default="hdf5")
    parser.add_argument("--batches", type=int, default=2000, help="batches per sampling round")
    parser.add_argument("--rounds", type=int, default=5, help="interleaved sampling rounds")
    parser.add_argument(
        "--threads",
        type=int,
        default=1,
        help="torch threads of every measured process (conversions and sampling). The work "
        "is memory-bound; on a shared, busy machine a second thread mostly adds "
        "synchronisation stalls (an element-wise op on 1M floats measured 5-15x slower with "
        "2 threads than with 1 while other jobs ran)",
    )
    parser.add_argument("--workdir", type=Path, default=None, help="default: a temp directory")
    parser.add_argument("--worker", choices=["ours", "torchrl", "sample"], help=argparse.SUPPRESS)
    parser.add_argument("--cache", help=argparse.SUPPRESS)
    parser.add_argument("--torchrl-cache", help=argparse.SUPPRESS)
    args = parser.parse_args()

    if args.worker:
        import torch

        torch.set_num_threads(args.threads)
        warnings.simplefilter("ignore")
        worker = {"ours": _worker_ours, "torchrl": _worker_torchrl, "sample": _worker_sample}
        print(json.dumps(worker[args.worker](args)))
        return

    with tempfile.TemporaryDirectory(dir=args.workdir) as tmp:
        tmp = Path(tmp)
        env = {**os.environ, "MINARI_DATASETS_PATH": str(tmp / "minari")}
        make_s = make_dataset(tmp / "minari", args.transitions, args.episode_length, args.format)
        source_mb = sum(f.stat().st_size for f in (tmp / "minari").rglob("*") if f.is_file())
        source_mb /= 2**20
        ours_cache, torchrl_cache = str(tmp / "ours"), str(tmp / "torchrl")
        threads = ["--threads", str(args.threads)]
        ours = _run_worker("ours", ["--cache", ours_cache, *threads], env)
        torchrl = None
        if args.format == "hdf5":  # TorchRL's local loader reads main_data.hdf5 only
            torchrl = _run_worker("torchrl", ["--cache", torchrl_cache, *threads], env)
        sample_args = ["--cache", ours_cache, "--batches", str(args.batches)]
        sample_args += ["--rounds", str(args.rounds), *threads]
        if torchrl is not None:
            sample_args += ["--torchrl-cache", torchrl_cache]
        sampling = _run_worker("sample", sample_args, env)

    n = ours["transitions"]
    print(
        f"Dataset: {n:,} transitions, obs 17 float64, action 6 float32, "
        f"{args.episode_length}-step episodes, Minari {args.format} ({source_mb:.0f} MB on disk, "
        f"written in {make_s:.1f} s). Sampling: batches of 256, median of {args.rounds} "
        f"interleaved rounds of {args.batches} batches. torch threads: {ours['torch_threads']}. "
        f"Load average at the end: {os.getloadavg()[0]:.1f} on {os.cpu_count()} CPUs.\n"
    )
    print(
        "| loader | conversion (s) | transitions/s | cached load (s) | peak RSS (MB) "
        "| peak RSS growth (MB) | peak anonymous RSS growth (MB) | stored (MB) "
        "| batches of 256/s | all zeros | done flags |"
    )
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    rows = [("torchrl_offline `load_minari`", ours, sampling["ours"]["median"])]
    if torchrl is not None:
        name = "TorchRL `MinariExperienceReplay(load_from_local_minari=True)`"
        rows.append((name, torchrl, sampling["torchrl"]["median"]))
    for name, r, rate in rows:
        cached = f"{r['cached_load_s']:.3f}" if "cached_load_s" in r else "n/a"
        rss_growth = r["peak_rss_mb"] - r["baseline_rss_mb"]
        anon_growth = r["peak_anon_mb"] - r["baseline_anon_mb"]
        print(
            f"| {name} | {r['convert_s']:.2f} | {r['transitions'] / r['convert_s']:,.0f} "
            f"| {cached} | {r['peak_rss_mb']:.0f} | {rss_growth:.0f} | {anon_growth:.0f} "
            f"| {r['stored_mb']:.0f} | {rate:,.0f} "
            f"| {'yes' if r['all_zero'] else 'no'} | {r['done_count']:,} |"
        )
    print(
        "\nRSS growth is measured from after the imports to the end of the conversion, in a "
        "fresh process per loader; file-backed pages of the memory-mapped output count in "
        "RSS but not in anonymous RSS (they are page cache the kernel can drop)."
    )
    if torchrl is None:
        print("\nTorchRL's local Minari loader reads HDF5 only: no comparison for Arrow.")
    else:
        ratio = sampling["ours"]["median"] / sampling["torchrl"]["median"]
        print(f"\nSampling speed ours / TorchRL: {ratio:.2f}x.")


if __name__ == "__main__":
    main()
