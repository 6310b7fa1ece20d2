"""Offline-to-online: train IQL offline on a mixed Pendulum dataset, then fine-tune it
online and print the policy's return before and after.

Offline, :func:`~torchrl_offline.trainers.offline.train` runs IQL inside TorchRL's
``Trainer``. Online, :func:`~torchrl_offline.trainers.finetune.finetune` keeps the same
loss, runs the policy in the env with a TorchRL ``Collector`` and trains on batches
from TorchRL's ``OfflineToOnlineReplayBuffer``: half offline data, half new online
data at first, the offline share annealed to zero. Both runs write checkpoints, so
either can be interrupted and resumed (``resume=True``).
``python examples/offline_to_online.py --help`` lists the options.

With the defaults (20,000 transitions, 5,000 offline then 5,000 online updates, seed 0;
about 20 minutes on a busy 2-core CPU), one run printed a return of -654.3 (normalized
52.0) after offline training and -120.5 (normalized 102.8) after fine-tuning, over 5
evaluation episodes.
"""

from __future__ import annotations

from pathlib import Path

import torch
from common import parser, pendulum_dataset

from torchrl_offline.trainers.finetune import finetune
from torchrl_offline.trainers.offline import train


def main() -> None:
    p = parser(__doc__.split("\n\n")[0], steps=5_000, dataset_steps=20_000)
    p.add_argument("--online-steps", type=int, default=5_000, help="fine-tuning updates")
    p.add_argument("--frames-per-batch", type=int, default=50, help="env steps per collection")
    p.add_argument("--out", type=Path, default=Path("outputs/offline_to_online"))
    args = p.parse_args()
    torch.manual_seed(args.seed)
    torch.set_num_threads(1)

    data = pendulum_dataset(args.dataset_steps, seed=args.seed, root=args.root,
                            batch_size=args.batch_size)  # fmt: skip
    common = dict(batch_size=args.batch_size, seed=args.seed, eval_env="Pendulum-v1",
                  eval_episodes=args.eval_episodes, progress=False,
                  overwrite=True)  # running the example again replaces its runs  # fmt: skip

    offline = train("iql", data, total_steps=args.steps, out_dir=args.out / "offline",
                    overrides={"hidden_sizes": (args.hidden, args.hidden)},
                    eval_interval=args.steps, checkpoint_interval=args.steps, **common)  # fmt: skip
    online = finetune(
        offline.algorithm, data, "Pendulum-v1",
        total_steps=args.online_steps, out_dir=args.out / "online",
        offline_fraction=0.5, anneal_steps=max(args.online_steps // 2, 1),
        frames_per_batch=args.frames_per_batch, utd_ratio=1.0,
        eval_interval=args.online_steps, checkpoint_interval=args.online_steps, **common,
    )  # fmt: skip

    before, after = online.evaluations[0], online.evaluations[-1]
    print(f"dataset: {len(data)} transitions")
    print(f"after {offline.step} offline IQL updates:  return {before['return_mean']:8.1f}"
          f"  (normalized {before['normalized_score']:.1f})")  # fmt: skip
    print(f"after {online.step} online updates:       return {after['return_mean']:8.1f}"
          f"  (normalized {after['normalized_score']:.1f})")  # fmt: skip
    print(f"checkpoints: {online.checkpoint}")


if __name__ == "__main__":
    main()
