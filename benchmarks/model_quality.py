"""Quality of the learned dynamics ensemble on the local benchmark datasets (issue 20).

For each dataset (Pendulum, Hopper, HalfCheetah; medium and medium-replay), a tenth of
the episodes (at least 2) are held out; :func:`~torchrl_offline.models.fit_dynamics`
fits the ensemble on the rest with the task's known termination function and a capped
number of updates, and the script reports on the held-out episodes:

* one-step error (MSE of the next observation, of its change and of the reward, each
  in units of the data's variance) and calibration (fraction of true targets inside
  the predicted 95% band of the elites' mixture, averaged over dimensions);
* open-loop error growth at h = 1, 5, 10, 25 steps along the held-out episodes with
  the logged actions;
* the fit's cost: updates, epochs, seconds (one thread).

Usage::

    OMP_NUM_THREADS=1 nice -n 10 python benchmarks/model_quality.py \
        --root outputs/datasets --json benchmarks/results/model_quality.json
    python benchmarks/model_quality.py --report benchmarks/results/model_quality.json
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

TASKS = ("pendulum", "hopper", "halfcheetah")
LEVELS = ("medium", "medium-replay")
HORIZONS = (1, 5, 10, 25)


def split_episodes(td, fraction: float, seed: int):
    """``(train, held-out episodes)``: whole episodes held out, chosen at random."""
    episode = td.get("episode")
    ids = torch.unique(episode)
    n_hold = max(2, round(fraction * ids.numel()))
    g = torch.Generator().manual_seed(seed)
    held = ids[torch.randperm(ids.numel(), generator=g)[:n_hold]]
    mask = torch.isin(episode, held)
    return td[~mask], [td[episode == e] for e in held.tolist()]


def run_one(task: str, level: str, args) -> dict:
    import learning_table as lt

    from torchrl_offline.data.stats import stored_transitions
    from torchrl_offline.models import fit_dynamics
    from torchrl_offline.models.quality import one_step_quality, open_loop_errors

    dataset = lt.load_dataset(task, level, Path(args.root), make_missing=False)
    td = stored_transitions(dataset).to_tensordict()
    train, held = split_episodes(td, args.holdout_episodes, args.seed)
    fitted = fit_dynamics(
        train,
        num_members=args.members,
        num_elites=args.elites,
        hidden_sizes=tuple(args.hidden),
        max_updates=args.updates,
        termination_fn=task,
        seed=args.seed,
    )
    held_td = torch.cat(held)
    one_step = one_step_quality(fitted.model, held_td)
    multi = open_loop_errors(fitted.model, held, HORIZONS)
    return {
        "task": task,
        "level": level,
        "transitions": int(td.shape[0]),
        "train_transitions": int(train.shape[0]),
        "heldout_episodes": len(held),
        "heldout_transitions": int(held_td.shape[0]),
        "fit": {
            "updates": fitted.updates,
            "epochs": fitted.epochs,
            "seconds": fitted.seconds,
            "holdout_mse_delta": fitted.holdout_mse,
            "early_stopped": fitted.updates < args.updates,
        },
        "one_step": one_step,
        "open_loop": {str(h): v for h, v in multi.items()},
    }


def markdown(records: list[dict]) -> str:
    head = (
        "| dataset | one-step MSE s' | MSE Δs | MSE r | 95% band coverage (mixture / member) | "
        + " | ".join(f"h={h}" for h in HORIZONS)
        + " | updates | fit (s) |\n|---|"
        + "---:|" * (6 + len(HORIZONS))
    )
    rows = [head]
    for r in records:
        o = r["one_step"]
        ol = [r["open_loop"].get(str(h)) for h in HORIZONS]
        member = f"{o['coverage_member']:.3f}" if "coverage_member" in o else "—"
        rows.append(
            f"| {r['task']} {r['level']} | {o['mse_next_observation']:.3g} | {o['mse_delta']:.3g} "
            f"| {o['mse_reward']:.3g} | {o['coverage']:.3f} / {member} | "
            + " | ".join("—" if v is None else f"{v:.3g}" for v in ol)
            + f" | {r['fit']['updates']} | {r['fit']['seconds']:.0f} |"
        )
    return "\n".join(rows)


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--root", default="outputs/datasets")
    parser.add_argument("--only", nargs="*", default=None, help="task/level entries")
    parser.add_argument("--members", type=int, default=7)
    parser.add_argument("--elites", type=int, default=5)
    parser.add_argument("--hidden", type=int, nargs="+", default=[200, 200, 200])
    parser.add_argument("--updates", type=int, default=2000)
    parser.add_argument("--holdout-episodes", type=float, default=0.1)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", type=Path, default=None)
    parser.add_argument("--report", type=Path, default=None)
    args = parser.parse_args(argv)
    if args.report is not None:
        print(markdown(json.loads(args.report.read_text())["records"]))
        return
    torch.set_num_threads(1)
    records = []
    start = time.perf_counter()
    for task in TASKS:
        for level in LEVELS:
            if args.only and f"{task}/{level}" not in args.only:
                continue
            rec = run_one(task, level, args)
            records.append(rec)
            print(json.dumps(rec), flush=True)
            if args.json is not None:
                from torchrl_offline.atomic import replace_file

                text = json.dumps(
                    {"args": {k: str(v) for k, v in vars(args).items()}, "records": records},
                    indent=1,
                )
                replace_file(args.json, lambda f, t=text: f.write(t.encode()))
    print(markdown(records))
    print(f"total {time.perf_counter() - start:.0f} s")


if __name__ == "__main__":
    main()
