"""TorchRL's own tests for the losses we share a name with, run on our classes.

Runs ``TestIQL``, ``TestDiscreteIQL``, ``TestCQL``, ``TestDiscreteCQL``, ``TestTD3BC``
and ``TestBCLoss`` of a pytorch/rl checkout's ``test/objectives`` (commit ae9719f17 is
the closest to the released 0.14.1) with our classes swapped into
``torchrl.objectives`` by the pytest plugin ``benchmarks/dropin_swap.py``, and prints
one row per class: tests, passed, failed, skipped. Nothing of TorchRL's is copied
here: point ``--rl`` at a checkout (``git clone https://github.com/pytorch/rl`` and
``git checkout ae9719f17``).

Usage::

    python benchmarks/dropin_suite.py --rl ~/src/rl                 # ours, as they are
    python benchmarks/dropin_suite.py --rl ~/src/rl --defaults torchrl
    python benchmarks/dropin_suite.py --rl ~/src/rl --defaults none  # TorchRL's classes
    python benchmarks/dropin_suite.py --rl ~/src/rl --markdown       # for docs/objectives.md
"""

from __future__ import annotations

import argparse
import os
import pathlib
import subprocess
import sys
import tempfile
import xml.etree.ElementTree as ET
from collections import Counter

HERE = pathlib.Path(__file__).resolve().parent

#: (file in test/objectives, test class, our class)
SUITES = (
    ("test_iql.py", "TestIQL", "IQLLoss"),
    ("test_iql.py", "TestDiscreteIQL", "DiscreteIQLLoss"),
    ("test_cql.py", "TestCQL", "CQLLoss"),
    ("test_cql.py", "TestDiscreteCQL", "DiscreteCQLLoss"),
    ("test_ddpg.py", "TestTD3BC", "TD3BCLoss"),
    ("test_bc.py", "TestBCLoss", "BCLoss"),
)


def run(rl: pathlib.Path, defaults: str, workers: int, extra: list[str]) -> dict[str, Counter]:
    """Runs the suites in one pytest process; returns outcome counts per test class."""
    tests = rl / "test" / "objectives"
    if not (tests / "_objectives_common.py").exists():
        raise SystemExit(f"{tests} does not look like pytorch/rl's test/objectives")
    with tempfile.TemporaryDirectory() as tmp:
        report = pathlib.Path(tmp) / "report.xml"
        env = dict(os.environ, DROPIN_DEFAULTS=defaults)
        env["PYTHONPATH"] = os.pathsep.join([str(HERE), str(tests), env.get("PYTHONPATH", "")])
        cmd = [sys.executable, "-m", "pytest", "-p", "dropin_swap", "-p", "no:cacheprovider"]
        cmd += ["-q", "--tb=line", f"--junitxml={report}"]
        if workers > 1:
            cmd += ["-n", str(workers)]
        cmd += [f"{file}::{cls}" for file, cls, _ in SUITES] + extra
        proc = subprocess.run(cmd, cwd=tests, env=env, capture_output=True, text=True)
        if not report.exists():
            sys.stderr.write(proc.stdout[-5000:] + proc.stderr[-5000:])
            raise SystemExit(f"pytest wrote no report (exit code {proc.returncode})")
        counts: dict[str, Counter] = {cls: Counter() for _, cls, _ in SUITES}
        for case in ET.parse(report).getroot().iter("testcase"):
            cls = case.get("classname", "").rsplit(".", 1)[-1]
            if cls not in counts:
                continue
            outcome = "passed"
            for child in case:
                if child.tag in ("failure", "error"):
                    outcome = "failed"
                elif child.tag == "skipped":
                    outcome = "skipped"
            counts[cls][outcome] += 1
        if proc.returncode not in (0, 1):
            sys.stderr.write(proc.stdout[-3000:])
        failed_lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("FAILED")]
        for line in failed_lines[:20]:
            print(line)
    return counts


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rl", type=pathlib.Path, required=True, help="a pytorch/rl checkout")
    parser.add_argument("--defaults", choices=("ours", "torchrl", "none"), default="ours")
    parser.add_argument("--workers", type=int, default=2, help="pytest-xdist workers (1: none)")
    parser.add_argument("--markdown", action="store_true")
    args, extra = parser.parse_known_args()
    if args.workers > 1:
        try:
            import xdist  # noqa: F401
        except ImportError:
            args.workers = 1
    counts = run(args.rl.expanduser(), args.defaults, args.workers, extra)
    label = {"ours": "ours", "torchrl": "ours, TorchRL's defaults", "none": "TorchRL's"}
    rows = []
    for _, cls, name in SUITES:
        c = counts[cls]
        rows.append((name, cls, sum(c.values()), c["passed"], c["failed"], c["skipped"]))
    if args.markdown:
        print(f"| class ({label[args.defaults]}) | TorchRL test class | tests | passed | failed "
              "| skipped |")  # fmt: skip
        print("|---|---|---:|---:|---:|---:|")
        for row in rows:
            print("| `{}` | `{}` | {} | {} | {} | {} |".format(*row))
        return
    print(f"classes: {label[args.defaults]}")
    print(f"{'class':<18}{'suite':<18}{'tests':>7}{'passed':>8}{'failed':>8}{'skipped':>9}")
    for row in rows:
        print("{:<18}{:<18}{:>7}{:>8}{:>8}{:>9}".format(*row))


if __name__ == "__main__":
    main()
