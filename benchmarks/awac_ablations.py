"""AWAC against d3rlpy's AWAC, one difference at a time, on a learning-table dataset.

Some of d3rlpy 2.8.1's differences from our ``AWACLoss`` are not options of the loss, so
this script swaps the loss's pieces in its own process only (nothing is changed in the
library) and runs the learning table's rows (``learning_table.py``, default budget) with
``build_algorithm("awac")``'s defaults otherwise. Variants, combinable with ``+``:

* ``scale``: d3rlpy's actor scale range, log-std in ``[-6, 0]`` in units of the action
  half-range (ours ``[-5, 2]`` in the action's units);
* ``normalized``: d3rlpy's batch-normalised weights (``normalize_weights=True``, an option);
* ``in_box``: the sampled actions of the Bellman target and of the advantage's baseline
  kept in the action box, as d3rlpy's tanh-squashed samples are (ours are the Gaussian's);
* ``entropy``: d3rlpy's AWAC Bellman target is SAC's with the temperature fixed at 1,
  ``min Q'(s', a') - log pi(a'|s')``; ours has no entropy term.

Each run appends one row, with its ``variant``, to ``--out``.

Usage::

    python benchmarks/awac_ablations.py --variants scale normalized in_box entropy \\
        --only pendulum/medium-replay --seeds 0 1 2 3 4 \\
        --out benchmarks/results/peer_gap_awac_medium_replay.jsonl
"""

from __future__ import annotations

import argparse
import json
import math
import pathlib
import sys
import tempfile

HERE = pathlib.Path(__file__).resolve().parent
VARIANTS = ("scale", "normalized", "in_box", "entropy")


#: the action box of the actor last built (``low``, ``high``), for ``in_box``
_BOX: dict = {}


def _patch_actor(*, scale: bool) -> None:
    """Records the action box of the Gaussian actor and, with ``scale``, gives it d3rlpy's
    log-std bounds, ``[-6, 0]`` in units of the half-range."""
    from torchrl_offline.objectives import gaussian_actor, networks

    original = gaussian_actor.make_tanh_mean_gaussian_actor

    def actor(obs_dim, action_spec, **kwargs):
        low, high = action_spec.space.low, action_spec.space.high
        _BOX.update(low=low, high=high)
        if scale:
            half = float(((high - low) / 2).mean())
            kwargs["log_std_bounds"] = (-6.0 + math.log(half), math.log(half))
        return original(obs_dim, action_spec, **kwargs)

    networks.make_tanh_mean_gaussian_actor = actor


def _patch_targets(*, in_box: bool, entropy: bool) -> None:
    """The Bellman target's and the baseline's sampled actions (and the target's entropy)."""
    from torchrl_offline.objectives.awac import AWACLoss

    def clamp(action):
        return action.clamp(_BOX["low"], _BOX["high"]) if in_box else action

    def next_value(self, tensordict):
        dist = self._dist(tensordict.get("next"))
        raw = dist.sample()
        value = (
            self._critics(
                self._critic_params("target_qvalue_network_params"),
                self._q_inputs(tensordict, clamp(raw), nxt=True),
            )
            .min(0)
            .values
        )
        if entropy:
            value = value - dist.log_prob(raw).reshape(value.shape)
        return value

    def advantage(self, tensordict, dist, pred):
        data_action = tensordict.get(self.tensor_keys.action)
        params = self._cache_q_detached
        if pred is None:
            q_data = self._critics(params, self._q_inputs(tensordict, data_action, nxt=False))
        else:
            q_data = pred.detach()
        policy_action = clamp(dist.sample())
        q_pi = self._critics(params, self._q_inputs(tensordict, policy_action, nxt=False))
        return q_data.min(0).values - q_pi.min(0).values

    AWACLoss._next_value = next_value
    AWACLoss._advantage = advantage


def run_variant(variant: str, args: argparse.Namespace) -> None:
    """Runs the rows of one variant in this process, appending them to ``args.out``."""
    sys.path.insert(0, str(HERE))
    import learning_table

    parts = set(variant.split("+"))
    if unknown := parts - set(VARIANTS):
        raise SystemExit(f"unknown variants {sorted(unknown)}; choose from {VARIANTS}")
    _patch_actor(scale="scale" in parts)
    if parts & {"in_box", "entropy"}:
        _patch_targets(in_box="in_box" in parts, entropy="entropy" in parts)
    with tempfile.TemporaryDirectory() as tmp:
        rows = pathlib.Path(tmp) / "rows.jsonl"
        argv = ["--algos", "awac", "--seeds", *map(str, args.seeds), "--out", str(rows)]
        argv += ["--only", *args.only] if args.only else []
        argv += ["--root", str(args.root)] if args.root else []
        if "normalized" in parts:
            argv += ["--set", "normalize_weights=true"]
        learning_table.main(argv)
        with args.out.open("a") as out:
            for line in rows.read_text().splitlines():
                out.write(json.dumps({**json.loads(line), "variant": variant}) + "\n")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--variants", nargs="+", required=True)
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    parser.add_argument("--only", nargs="*", default=[], help="learning_table.py's filters")
    parser.add_argument("--root", type=pathlib.Path, default=None, help="datasets root")
    parser.add_argument("--out", type=pathlib.Path, required=True)
    args = parser.parse_args()
    for variant in args.variants:
        # each variant in a fresh process: the patches last for the process
        if len(args.variants) > 1:
            import subprocess

            cmd = [sys.executable, __file__, "--variants", variant, "--out", str(args.out)]
            cmd += ["--seeds", *map(str, args.seeds), "--only", *args.only]
            cmd += ["--root", str(args.root)] if args.root else []
            subprocess.run(cmd, check=True)
        else:
            run_variant(variant, args)


if __name__ == "__main__":
    main()
