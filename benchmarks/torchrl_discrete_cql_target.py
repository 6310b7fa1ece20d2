"""Shows that TorchRL 0.14.1's ``DiscreteCQLLoss`` bootstraps from its online network.

Its ``value_loss`` calls ``value_estimator.value_estimate(td, params=<target params>)``;
the estimator's keyword is ``target_params``, so the target parameters land in
``**kwargs`` and are ignored. This script trains TorchRL's loss and ours with the
learning table's networks on a CartPole benchmark dataset and prints:

* after ``--probe-updates`` updates, the largest gap between TorchRL's Bellman target
  and a target computed by hand with the target network, and with the online network;
* every ``--every`` updates, each loss's Bellman loss and how often its greedy action
  agrees with the logged one on the batch.

Usage::

    python benchmarks/torchrl_discrete_cql_target.py --level expert --updates 3000

Needs the dataset of ``benchmarks/make_datasets.py --task cartpole --level <level>``.
"""

from __future__ import annotations

import argparse
import importlib.util
import sys
from pathlib import Path

import torch

HERE = Path(__file__).resolve().parent


def _learning_table():
    spec = importlib.util.spec_from_file_location("learning_table", HERE / "learning_table.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules["learning_table"] = module
    spec.loader.exec_module(module)
    return module


def _step(algo, batch) -> dict[str, float]:
    out = algo.loss(batch)
    total = sum(out[k] for k in algo.loss_keys)
    algo.optimizer.zero_grad()
    total.backward()
    algo.optimizer.step()
    algo.target_updater.step()
    return {k: float(out[k].detach()) for k in algo.loss_keys}


def target_gaps(algo, batch, gamma: float) -> tuple[float, float]:
    """Largest |TorchRL's target - hand-made target| with the target and the online net."""
    loss = algo.loss
    td = batch.clone(False)
    with loss.value_network_params.to_module(loss.value_network):
        loss.value_network(td)
    theirs = loss.value_estimator.value_estimate(
        td, params=loss._cached_detached_target_value_params
    ).squeeze(-1)  # the call TorchRL's value_loss makes
    nxt = batch["next"].select("observation").clone()
    reward = batch["next", "reward"].squeeze(-1)
    alive = (~batch["next", "terminated"]).squeeze(-1).float()
    gaps = []
    for params in (loss.target_value_network_params, loss.value_network_params):
        with params.to_module(loss.value_network), torch.no_grad():
            q = loss.value_network(nxt.clone())["action_value"]
        gaps.append(float((theirs - (reward + gamma * alive * q.max(-1).values)).abs().max()))
    return gaps[0], gaps[1]


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--level", default="expert")
    p.add_argument("--updates", type=int, default=3000)
    p.add_argument("--every", type=int, default=1000)
    p.add_argument("--probe-updates", type=int, default=200)
    p.add_argument("--root", type=Path, default=None)
    args = p.parse_args(argv)
    torch.set_num_threads(1)
    lt = _learning_table()
    root = args.root or lt.DEFAULT_ROOT
    dataset = lt.load_dataset("cartpole", args.level, root)
    budget = lt.Budget(normalize=False)
    for name in ("torchrl_cql", "cql"):
        torch.manual_seed(0)
        algo = lt.build(name, dataset, budget)
        gamma = float(algo.hyperparameters["gamma"])
        for step in range(1, args.updates + 1):
            batch = dataset.sample(budget.batch_size)
            losses = _step(algo, batch)
            if name == "torchrl_cql" and step == args.probe_updates:
                to_target, to_online = target_gaps(algo, dataset.sample(budget.batch_size), gamma)
                print(
                    f"{name} after {step} updates: |target - target-network target| max "
                    f"{to_target:.3f}, |target - online-network target| max {to_online:.3f}"
                )
            if step % args.every == 0:
                with torch.no_grad():
                    greedy = algo.policy(batch.select("observation").clone())["action"]
                agree = float((greedy.reshape(-1) == batch["action"].reshape(-1)).float().mean())
                shown = ", ".join(f"{k} {v:.3f}" for k, v in losses.items())
                print(f"{name} step {step}: {shown}, greedy = logged action {agree:.0%}")


if __name__ == "__main__":
    main()
