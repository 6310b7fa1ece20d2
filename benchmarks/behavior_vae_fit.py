"""BCQ's and BEAR's behaviour VAE on the learning table's datasets: the papers' ``tanh``
decoder against d3rlpy's clipped one (``decoder_squash``), fitted alone.

For each dataset and decoder, a ``BehaviorVAE`` with the table's 2x64 networks is fitted
to the logged ``(s, a)`` pairs (observations standardised, batch 256, Adam at 1e-3, the
losses' KL weight 0.5) and measured on 5,000 held-out transitions:

* ``reconstruction`` and ``kl``: the two terms of :func:`vae_loss`;
* ``sample_error``: mean absolute difference, per action component, between 10 sampled
  actions and the logged one (the actions BCQ's perturbation model starts from);
* ``edge_fraction``: the share of sampled action components within 1% of the half-range
  of a bound, against the logged actions' share (``data_edge_fraction``).

Usage::

    python benchmarks/behavior_vae_fit.py --only halfcheetah/medium-replay hopper/medium \\
        --out benchmarks/results/behavior_vae_fit.jsonl
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

import torch

HERE = Path(__file__).resolve().parent


def edge_fraction(action: torch.Tensor, low: torch.Tensor, high: torch.Tensor) -> float:
    """Share of the components of ``action`` within 1% of the half-range of a bound."""
    margin = 0.01 * (high - low) / 2
    return float(((action <= low + margin) | (action >= high - margin)).float().mean())


def fit_and_measure(
    observation: torch.Tensor,
    action: torch.Tensor,
    action_spec: Any,
    *,
    decoder_squash: str,
    steps: int = 5000,
    batch_size: int = 256,
    hidden: tuple[int, ...] = (64, 64),
    held_out: int = 5000,
    seed: int = 0,
) -> dict[str, float]:
    """Fits a behaviour VAE on all but ``held_out`` transitions and measures it on those."""
    from torchrl_offline.objectives import make_behavior_vae
    from torchrl_offline.objectives.behavior_vae import vae_loss

    n = observation.shape[0]
    order = torch.randperm(n, generator=torch.Generator().manual_seed(seed))
    test, train = order[: min(held_out, n // 5)], order[min(held_out, n // 5) :]
    mean, std = observation[train].mean(0), observation[train].std(0) + 1e-3
    obs = (observation - mean) / std
    torch.manual_seed(seed)
    vae = make_behavior_vae(
        obs.shape[-1], action_spec, num_cells=hidden, decoder_squash=decoder_squash
    )
    optim = torch.optim.Adam(vae.parameters(), lr=1e-3)
    for _ in range(steps):
        i = train[torch.randint(0, train.numel(), (batch_size,))]
        reconstruction, kl = vae_loss(vae, obs[i], action[i])
        (reconstruction + 0.5 * kl).mean().backward()
        optim.step()
        optim.zero_grad()
    low, high = vae.action_low, vae.action_high
    with torch.no_grad():
        s, a = obs[test], action[test]
        reconstruction, kl = vae_loss(vae, s, a)
        samples, _ = vae.sample(s, 10)
    return {
        "reconstruction": float(reconstruction.mean()),
        "kl": float(kl.mean()),
        "sample_error": float((samples - a).abs().mean()),
        "edge_fraction": edge_fraction(samples, low, high),
        "data_edge_fraction": edge_fraction(a, low, high),
    }


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--only", nargs="+", required=True, help="task/level datasets")
    parser.add_argument("--root", type=Path, default=Path("outputs/datasets"))
    parser.add_argument("--steps", type=int, default=5000)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args(argv)
    sys.path.insert(0, str(HERE))
    import learning_table

    from torchrl_offline.trainers.algorithms import specs_from_dataset

    torch.set_num_threads(1)
    for name in args.only:
        task, level = name.split("/")
        dataset = learning_table.load_dataset(task, level, args.root)
        data = dataset[:]
        _, action_spec = specs_from_dataset(dataset)
        for squash in ("tanh", "clip"):
            result = fit_and_measure(
                data["observation"].float(),
                data["action"].float(),
                action_spec,
                decoder_squash=squash,
                steps=args.steps,
                seed=args.seed,
            )
            row = {"task": task, "level": level, "decoder_squash": squash, "seed": args.seed}
            row |= {"steps": args.steps, **result}
            print(json.dumps(row))
            with args.out.open("a") as out:
                out.write(json.dumps(row) + "\n")


if __name__ == "__main__":
    main()
