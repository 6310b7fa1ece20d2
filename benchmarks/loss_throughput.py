"""Updates per second of each offline loss, ours vs TorchRL's built-in vs plain torch.

Every module in ``benchmarks/throughput_cases/`` exposes
``cases(obs_dim, act_dim, batch_size, hidden) -> dict[str, Callable[[], None]]``
mapping names such as ``"iql/ours"``, ``"iql/torchrl"`` and ``"iql/plain_torch"`` to a
zero-argument function doing one full update (forward, backward, optimizer step,
target update) on a fixed random batch. This runner builds all cases, warms them up,
then times them interleaved (round-robin, several rounds) so that every comparison
is made in the same process and the same conditions, and prints updates/s (median
over rounds) and, per algorithm, the ratio of ``ours`` to every other case.

Usage::

    python benchmarks/loss_throughput.py                      # all algorithms
    python benchmarks/loss_throughput.py --algos iql bc --rounds 5 --seconds 2
    python benchmarks/loss_throughput.py --markdown            # table for docs/benchmarks.md
"""

from __future__ import annotations

import argparse
import importlib.util
import pathlib
import platform
import statistics
import time
from collections.abc import Callable

import torch

CASES_DIR = pathlib.Path(__file__).resolve().parent / "throughput_cases"


def load_cases(
    algos: list[str] | None, obs_dim: int, act_dim: int, batch_size: int, hidden: int
) -> dict[str, Callable[[], None]]:
    """Imports every ``throughput_cases/<algo>.py`` (or those in ``algos``) and builds its cases."""
    cases: dict[str, Callable[[], None]] = {}
    for path in sorted(CASES_DIR.glob("*.py")):
        if path.stem.startswith("_") or (algos and path.stem not in algos):
            continue
        spec = importlib.util.spec_from_file_location(f"throughput_case_{path.stem}", path)
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        cases.update(module.cases(obs_dim, act_dim, batch_size, hidden))
    return cases


def time_case(fn: Callable[[], None], seconds: float) -> float:
    """Runs ``fn`` repeatedly for about ``seconds`` and returns updates per second."""
    n, start = 0, time.perf_counter()
    while True:
        fn()
        n += 1
        elapsed = time.perf_counter() - start
        if elapsed >= seconds:
            return n / elapsed


def run(
    cases: dict[str, Callable[[], None]], rounds: int, seconds: float, warmup: int
) -> dict[str, list[float]]:
    """Warms up every case, then times them round-robin; returns updates/s per round."""
    for fn in cases.values():
        for _ in range(warmup):
            fn()
    results: dict[str, list[float]] = {name: [] for name in cases}
    for _ in range(rounds):
        for name, fn in cases.items():
            results[name].append(time_case(fn, seconds))
    return results


def summarize(results: dict[str, list[float]]) -> list[tuple[str, float, dict[str, float]]]:
    """``(case, median updates/s, {other case of the same algo: ratio ours/other})``."""
    medians = {name: statistics.median(v) for name, v in results.items()}
    rows = []
    for name, med in medians.items():
        algo, _, impl = name.partition("/")
        ratios = {}
        if impl == "ours":
            for other, other_med in medians.items():
                o_algo, _, o_impl = other.partition("/")
                if o_algo == algo and o_impl != "ours":
                    ratios[o_impl] = med / other_med
        rows.append((name, med, ratios))
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--algos", nargs="*", default=None, help="case modules to run")
    parser.add_argument("--obs-dim", type=int, default=17)
    parser.add_argument("--act-dim", type=int, default=6)
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument("--hidden", type=int, default=256)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--seconds", type=float, default=2.0, help="per case per round")
    parser.add_argument("--warmup", type=int, default=20)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--markdown", action="store_true", help="print a Markdown table")
    args = parser.parse_args()

    torch.manual_seed(0)
    torch.set_num_threads(args.threads)
    cases = load_cases(args.algos, args.obs_dim, args.act_dim, args.batch_size, args.hidden)
    if not cases:
        raise SystemExit(f"no cases found in {CASES_DIR} for {args.algos}")
    print(
        f"# {platform.processor() or platform.machine()}, torch {torch.__version__}, "
        f"{torch.get_num_threads()} threads; batch {args.batch_size}, "
        f"2x{args.hidden} MLPs, obs {args.obs_dim}, act {args.act_dim}; "
        f"{args.rounds} rounds x {args.seconds}s per case, median"
    )
    rows = summarize(run(cases, args.rounds, args.seconds, args.warmup))
    if args.markdown:
        print("| case | updates/s | ours vs |")
        print("|---|---:|---|")
    for name, med, ratios in rows:
        ratio_txt = ", ".join(f"{r:.2f}x {k}" for k, r in ratios.items())
        if args.markdown:
            print(f"| {name} | {med:.1f} | {ratio_txt} |")
        else:
            print(f"{name:28s} {med:8.1f} updates/s  {ratio_txt}")


if __name__ == "__main__":
    main()
