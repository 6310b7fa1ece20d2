"""Updates per second of each offline loss, ours vs TorchRL's built-in vs plain torch.

Every module in ``benchmarks/throughput_cases/`` exposes
``cases(obs_dim, act_dim, batch_size, hidden) -> dict[str, Callable[[], None]]``
mapping names such as ``"iql/ours"``, ``"iql/torchrl"`` and ``"iql/plain_torch"`` to a
zero-argument function doing one full update (forward, backward, optimizer step,
target update) on a fixed random batch. This runner builds all cases, warms them up,
then times them interleaved (round-robin, several rounds) so that every comparison
is made in the same process and the same conditions, and prints updates/s (median
over rounds) and, per algorithm, the ratio of ``ours`` to every other case.

Work per update: :func:`analytic_flops` counts the matmul FLOPs of one update from the
layer shapes (forward and backward of every network pass the algorithm needs), and
the runner checks it against ``torch.utils.flop_counter.FlopCounterMode`` on one
update of ``ours``. A large fp32 matmul (``peak/matmul``) is timed in the same
round-robin as the losses, so the achieved GFLOP/s of each case is compared with
the machine's peak under the same load.

Every case uses the same optimizer (``--adam``, default ``fused``) and the ``ours``
cases the fused target update (``--ours-updater``, default ``fused``; ``torchrl``
uses TorchRL's ``SoftUpdate`` for ours as well).

Usage::

    python benchmarks/loss_throughput.py                      # all algorithms
    python benchmarks/loss_throughput.py --algos iql bc --rounds 5 --seconds 2
    python benchmarks/loss_throughput.py --markdown            # table for docs/benchmarks.md
    python benchmarks/loss_throughput.py --adam default --ours-updater torchrl
    python benchmarks/loss_throughput.py --algos iql --compile  # eager vs torch.compile
"""

from __future__ import annotations

import argparse
import importlib.util
import itertools
import os
import pathlib
import platform
import statistics
import sys
import time
from collections.abc import Callable

import torch

CASES_DIR = pathlib.Path(__file__).resolve().parent / "throughput_cases"
PEAK_CASE = "peak/matmul"
ADAM_CHOICES = {"fused": {"fused": True}, "foreach": {"foreach": True}, "default": {}}

# SAC-N with 10 critics: actor at s and s' ; target critics at (s', a') ; critics at
# (s, a_pi) for the actor (frozen) ; critics at the data actions
_SAC_N = [
    ("pi", 1, "params"),
    ("pi", 1, None),
    ("q", 10, None),
    ("q", 10, "input"),
    ("q", 10, "params"),
]

#: Network passes of one update, per algorithm, for :func:`analytic_flops`: tuples
#: ``(network, rows, backward)`` where ``network`` is ``"q"`` (input obs + act, one
#: output), ``"v"`` (obs -> 1), ``"pi"`` (obs -> 2 act, Gaussian), ``"pi_det"`` (obs ->
#: act), ``"q_disc"`` (obs -> one value per action, ``act`` actions), ``"xi"`` (obs + act
#: -> act, BCQ's perturbation model) or the behaviour VAE's ``"vae_enc"`` (obs + act -> 2
#: latent, latent = 2 act) and ``"vae_dec"`` (obs + latent -> act), with ``":3"`` appended for 3 hidden layers instead of 2, ``rows`` the
#: number of input rows in units of the batch size (twin critics count twice) and
#: ``backward`` one of ``None`` (no gradient), ``"params"`` (weight and hidden-input
#: gradients), ``"input"`` (input gradients only, down to the action input, as when the
#: actor's loss goes through a frozen critic) or ``"all"`` (both, as for the VAE's
#: decoder, whose latent input carries the encoder's gradient).
PASSES: dict[str, list[tuple[str, float, str | None]]] = {
    # V(s) and V(s') ; target twin Q(s, a) ; twin Q(s, a) ; actor log-likelihood
    "iql": [
        ("v", 1, "params"),
        ("v", 1, None),
        ("q", 2, None),
        ("q", 2, "params"),
        ("pi", 1, "params"),
    ],
    # critic step every update: target actor at s', target twin Q, twin Q;
    # actor step every second update (halved): actor at s, Q1 with input gradients
    "td3_bc": [
        ("pi_det", 1, None),
        ("q", 2, None),
        ("q", 2, "params"),
        ("pi_det", 0.5, "params"),
        ("q", 0.5, "input"),
    ],
    # actor at s' ; target twin Q(s', a') ; twin Q(s, a) ; actor at s ; twin Q(s, a_pi)
    "awac": [
        ("pi", 1, None),
        ("q", 2, None),
        ("q", 2, "params"),
        ("pi", 1, "params"),
        ("q", 2, None),
    ],
    # actor at s and s' (one call) ; target twin Q(s', a') ; twin Q(s, a_pi) for the actor
    # (frozen critic) ; twin Q on the data action plus 3 x 10 sampled actions per state
    "cql": [("pi", 2, "params"), ("q", 2, None), ("q", 2, "input"), ("q", 2 * 31, "params")],
    # VAE ; target: 10 decoded, perturbed (target xi) actions per s' and target twin Q ;
    # twin Q(s, a) ; actor: one decoded action, xi, Q1 with input gradients
    "bcq": [
        ("vae_enc", 1, "params"),
        ("vae_dec", 1, "all"),
        ("vae_dec", 10, None),
        ("xi", 10, None),
        ("q", 20, None),
        ("q", 2, "params"),
        ("vae_dec", 1, None),
        ("xi", 1, "params"),
        ("q", 1, "input"),
    ],
    # VAE ; target actor at s' (10 samples of one pass) and target twin Q on them ; twin
    # Q(s, a) ; actor at s (5 samples), 5 VAE samples for the MMD, twin Q on the 5 samples
    "bear": [
        ("vae_enc", 1, "params"),
        ("vae_dec", 1, "all"),
        ("pi", 1, None),
        ("q", 20, None),
        ("q", 2, "params"),
        ("pi", 1, "params"),
        ("vae_dec", 5, None),
        ("q", 10, "input"),
    ],
    # TD3+BC's passes on 3-hidden-layer networks (LayerNorm has no matmul), the actor's
    # term through both critics (the minimum)
    "rebrac": [
        ("pi_det:3", 1, None),
        ("q:3", 2, None),
        ("q:3", 2, "params"),
        ("pi_det:3", 0.5, "params"),
        ("q:3", 1, "input"),
    ],
    # V at the cut episodes' ends (the bootstrap) ; V(s) ; actor log-likelihood
    "awr": [("v", 1, None), ("v", 1, "params"), ("pi", 1, "params")],
    "cal_ql": [("pi", 2, "params"), ("q", 2, None), ("q", 2, "input"), ("q", 2 * 31, "params")],
    # discrete BCQ: Q and imitation heads at s (trained) and at s' (filter, argmax) ;
    # target Q head at s'
    "discrete_bcq": [("q_disc", 2, "params"), ("q_disc", 2, None), ("q_disc", 1, None)],
    "sac_n": _SAC_N,
    # MOPO's policy update: SAC-N at N = 2 (SAC's twin critics), on a mixed batch
    "mopo": [
        ("pi", 1, "params"),
        ("pi", 1, None),
        ("q", 2, None),
        ("q", 2, "input"),
        ("q", 2, "params"),
    ],
    # EDAC adds each critic's action gradient at the data actions (kept in the graph) and
    # the backward through it: about one more forward and parameter backward of the critics
    "edac": [*_SAC_N, ("q", 10, "params")],
    "bc_det": [("pi_det", 1, "params")],
    "bc_stoch": [("pi", 1, "params")],
}


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


def _layer_sizes(network: str, obs_dim: int, act_dim: int, hidden: int) -> list[int]:
    network, _, depth = network.partition(":")  # "q:3": 3 hidden layers (default 2)
    first = obs_dim + act_dim if network in ("q", "xi", "vae_enc") else obs_dim
    if network == "vae_dec":
        first = obs_dim + 2 * act_dim
    last = {"q": 1, "v": 1, "pi": 2 * act_dim, "pi_det": act_dim, "xi": act_dim, "q_disc": act_dim}
    last.update(vae_enc=4 * act_dim, vae_dec=act_dim)
    return [first, *[hidden] * int(depth or 2), last[network]]


def mlp_flops(sizes: list[int], rows: float, backward: str | None) -> float:
    """Matmul FLOPs of one pass of an MLP with layer ``sizes`` over ``rows`` inputs.

    A ``Linear(i, o)`` costs ``2 * rows * i * o`` forward; backward the weight gradient
    costs as much again and so does the gradient of its input (skipped for the first
    layer when only weights need gradients, since the input is data).
    """
    total = 0.0
    for layer, (i, o) in enumerate(itertools.pairwise(sizes)):
        mac = 2.0 * rows * i * o
        total += mac
        if backward == "params":
            total += mac + (mac if layer > 0 else 0.0)
        elif backward == "input":
            total += mac
        elif backward == "all":
            total += 2 * mac
    return total


def analytic_flops(algo: str, obs_dim: int, act_dim: int, batch_size: int, hidden: int) -> float:
    """Matmul FLOPs of one update of ``algo`` (forward + backward), from :data:`PASSES`."""
    return sum(
        mlp_flops(_layer_sizes(net, obs_dim, act_dim, hidden), rows * batch_size, backward)
        for net, rows, backward in PASSES[algo]
    )


def counted_flops(fn: Callable[[], None], calls: int = 2) -> float:
    """Matmul FLOPs of ``fn`` per call, counted with ``torch.utils.flop_counter``'s formulas.

    ``FlopCounterMode`` itself cannot run these updates (its module tracker tests
    modules for truth, which ``TensorDictParams`` refuses), so this applies the same
    per-op formulas (``flop_registry``) from a minimal dispatch mode.
    """
    from torch.utils._python_dispatch import TorchDispatchMode
    from torch.utils.flop_counter import flop_registry

    class _Counter(TorchDispatchMode):
        total = 0

        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            kwargs = kwargs or {}
            out = func(*args, **kwargs)
            formula = flop_registry.get(func._overloadpacket)
            if formula is not None:
                self.total += formula(*args, **kwargs, out_val=out)
            return out

    counter = _Counter()
    with counter:
        for _ in range(calls):
            fn()
    return counter.total / calls


def matmul_case(size: int) -> Callable[[], None]:
    """One ``size x size`` fp32 matmul (``2 size^3`` FLOPs), the machine's practical peak."""
    g = torch.Generator().manual_seed(0)
    a, b = torch.randn(size, size, generator=g), torch.randn(size, size, generator=g)
    out = torch.empty(size, size)

    def step() -> None:
        torch.mm(a, b, out=out)

    return step


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
    """``(case, median updates/s, {other case of the same algo: ratio ours/other})``.

    The ratios are medians of the per-round ratios (each round times every case once,
    back to back), which cancels most of a shared machine's slow drifts in load.
    """
    medians = {name: statistics.median(v) for name, v in results.items()}
    rows = []
    for name, med in medians.items():
        algo, _, impl = name.partition("/")
        ratios = {}
        if impl == "ours":
            for other in medians:
                o_algo, _, o_impl = other.partition("/")
                if o_algo == algo and o_impl != "ours":
                    per_round = [a / b for a, b in zip(results[name], results[other])]
                    ratios[o_impl] = statistics.median(per_round)
        rows.append((name, med, ratios))
    return rows


def configure_cases(adam: str, ours_updater: str) -> None:
    """Sets the optimizer of every case and the target updater of the ``ours`` cases."""
    sys.path.insert(0, str(CASES_DIR))
    import _nets

    _nets.ADAM_KWARGS = dict(ADAM_CHOICES[adam])
    _nets.OURS_UPDATER = ours_updater


def work_table(
    cases: dict[str, Callable[[], None]], obs_dim: int, act_dim: int, batch_size: int, hidden: int
) -> dict[str, tuple[float, float]]:
    """``{case: (analytic FLOPs of its algorithm, FLOPs counted on two of its updates)}``.

    The counting runs the case twice, so it doubles as part of the warm-up.
    """
    table = {}
    for name, fn in cases.items():
        algo = name.partition("/")[0]
        analytic = (
            analytic_flops(algo, obs_dim, act_dim, batch_size, hidden)
            if algo in PASSES
            else float("nan")
        )
        table[name] = (analytic, counted_flops(fn, calls=2))
    return table


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
    parser.add_argument("--adam", choices=sorted(ADAM_CHOICES), default="fused")
    parser.add_argument("--ours-updater", choices=["fused", "torchrl"], default="fused")
    parser.add_argument("--peak-size", type=int, default=2048, help="matmul size for the peak")
    parser.add_argument(
        "--compile",
        action="store_true",
        help="also time every case wrapped whole in torch.compile (compiled during the warm-up)",
    )
    parser.add_argument("--markdown", action="store_true", help="print a Markdown table")
    args = parser.parse_args()

    torch.manual_seed(0)
    torch.set_num_threads(args.threads)
    configure_cases(args.adam, args.ours_updater)
    dims = (args.obs_dim, args.act_dim, args.batch_size, args.hidden)
    cases = load_cases(args.algos, *dims)
    if not cases:
        raise SystemExit(f"no cases found in {CASES_DIR} for {args.algos}")
    work = work_table(cases, *dims)
    if args.compile:
        # every case has its own optimizers and modules: allow one compiled graph each
        torch._dynamo.config.recompile_limit = max(64, 4 * len(cases))
        for name in list(cases):
            cases[f"{name}+compile"] = torch.compile(cases[name])
            work[f"{name}+compile"] = work[name]
    cases[PEAK_CASE] = matmul_case(args.peak_size)
    load_before = os.getloadavg()[0]
    results = run(cases, args.rounds, args.seconds, args.warmup)
    load_after = os.getloadavg()[0]
    peak_flops = 2.0 * args.peak_size**3 * statistics.median(results.pop(PEAK_CASE))
    print(
        f"# {platform.processor() or platform.machine()}, torch {torch.__version__}, "
        f"{torch.get_num_threads()} threads; batch {args.batch_size}, "
        f"2x{args.hidden} MLPs, obs {args.obs_dim}, act {args.act_dim}; Adam {args.adam}, "
        f"ours' target update {args.ours_updater}; {args.rounds} rounds x {args.seconds}s "
        f"per case, median; load average {load_before:.1f} -> {load_after:.1f}; "
        f"peak ({args.peak_size}^3 fp32 matmul, same rounds) {peak_flops / 1e9:.1f} GFLOP/s"
    )
    rows = summarize(results)
    if args.markdown:
        print(
            "| case | updates/s | ours vs (median of same-round ratios) | GFLOP/update "
            "(analytic / counted) | GFLOP/s | % of peak |"
        )
        print("|---|---:|---|---:|---:|---:|")
    for name, med, ratios in rows:
        ratio_txt = ", ".join(f"{r:.2f}x {k}" for k, r in ratios.items())
        analytic, counted = work[name]
        gflops = counted * med / 1e9
        share = 100 * counted * med / peak_flops
        if args.markdown:
            print(
                f"| {name} | {med:.1f} | {ratio_txt} | {analytic / 1e9:.3f} / "
                f"{counted / 1e9:.3f} | {gflops:.1f} | {share:.0f}% |"
            )
        else:
            print(
                f"{name:30s} {med:8.1f} updates/s  {analytic / 1e9:6.3f} / {counted / 1e9:6.3f} "
                f"GFLOP/update  {gflops:6.1f} GFLOP/s ({share:3.0f}% of peak)  {ratio_txt}"
            )


if __name__ == "__main__":
    main()
