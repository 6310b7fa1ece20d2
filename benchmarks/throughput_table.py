"""The whole throughput table in one command: losses, data, memory.

Runs, one after the other and each in its own process, with the same torch thread
count:

1. ``loss_throughput.py --markdown``: updates/s of every loss, ours vs TorchRL's
   built-in vs plain torch (interleaved rounds, same-run ratios), work per update
   (analytic and counted GFLOP) and achieved GFLOP/s against a large matmul timed in
   the same rounds;
2. ``data_throughput.py``: Minari conversion (transitions/s) and sampling (batches
   of 256/s), ours vs TorchRL's ``MinariExperienceReplay``;
3. ``memory_rss.py``: peak RSS of IQL training on a 1M-transition memory-mapped
   dataset against the dataset's size on disk.

It prints the machine (CPU model, cores, memory, load before and after every part,
library versions) and the three Markdown tables. Usage::

    python benchmarks/throughput_table.py                 # about 10 minutes on 2 busy cores
    python benchmarks/throughput_table.py --quick         # a smoke run, about 2 minutes
"""

from __future__ import annotations

import argparse
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent


def machine() -> str:
    """One line describing the CPU, memory and software."""
    import tensordict
    import torch
    import torchrl

    model = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    model = line.split(":", 1)[1].strip()
                    break
        with open("/proc/meminfo") as f:
            mem_gib = int(f.readline().split()[1]) / 2**20
    except OSError:
        mem_gib = float("nan")
    return (
        f"{model}, {os.cpu_count()} CPUs, {mem_gib:.0f} GiB RAM; Python "
        f"{platform.python_version()}, torch {torch.__version__}, torchrl {torchrl.__version__}, "
        f"tensordict {tensordict.__version__}"
    )


def run(title: str, script: str, args: list[str]) -> None:
    load = os.getloadavg()[0]
    start = time.perf_counter()
    print(f"\n## {title}\n", flush=True)
    out = subprocess.run(
        [sys.executable, str(HERE / script), *args], capture_output=True, text=True, check=False
    )
    print(out.stdout.rstrip())
    if out.returncode:
        print(f"\n(failed with exit code {out.returncode})\n```\n{out.stderr[-2000:]}\n```")
    print(
        f"\n({script} {' '.join(args)}: {time.perf_counter() - start:.0f} s, load average "
        f"{load:.1f} -> {os.getloadavg()[0]:.1f})",
        flush=True,
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--rounds", type=int, default=3, help="loss timing rounds")
    parser.add_argument("--seconds", type=float, default=2.0, help="per loss case per round")
    parser.add_argument("--transitions", type=int, default=1_000_000, help="data and memory")
    parser.add_argument("--quick", action="store_true", help="1 round, 100k transitions")
    args = parser.parse_args()
    if args.quick:
        args.rounds, args.seconds, args.transitions = 1, 0.5, 100_000
    threads = ["--threads", str(args.threads)]
    print(f"# Throughput table\n\nMachine: {machine()}. torch threads: {args.threads}.")
    run(
        "Loss updates per second",
        "loss_throughput.py",
        [*threads, "--rounds", str(args.rounds), "--seconds", str(args.seconds), "--markdown"],
    )
    run(
        "Data: Minari conversion and sampling",
        "data_throughput.py",
        [*threads, "--transitions", str(args.transitions)],
    )
    steps = "300" if not args.quick else "50"
    run(
        "Memory: peak RSS while training on a memory-mapped dataset",
        "memory_rss.py",
        ["--transitions", str(args.transitions), "--steps", steps],
    )


if __name__ == "__main__":
    main()
