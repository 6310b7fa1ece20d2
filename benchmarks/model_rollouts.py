"""Speed of rollouts in the learned model: steps per second for 10,000 parallel starts.

The start distribution is a memory-mapped benchmark dataset (its observations stay on
disk; a reset reads the drawn rows). The model is a :class:`DynamicsEnsemble` of MOPO's
size (7 members, 5 elites, 4x200 SiLU), normalised on the dataset (its weights do not
change the cost); the policy is a 2x256 ReLU actor. The script times
``LearnedModelEnv.rollout(h, policy)`` (TorchRL's rollout loop: policy, model step,
``step_mdp``) and the bare ``DynamicsEnsemble.sample`` on the same batch, and prints
transitions per second.

Usage::

    OMP_NUM_THREADS=1 python benchmarks/model_rollouts.py --root outputs/datasets
    python benchmarks/model_rollouts.py --threads 2 --batch 10000 --horizon 5
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--root", default="outputs/datasets")
    parser.add_argument("--task", default="hopper")
    parser.add_argument("--level", default="medium")
    parser.add_argument("--batch", type=int, default=10_000)
    parser.add_argument("--horizon", type=int, default=5)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--hidden", type=int, nargs="+", default=[200, 200, 200, 200])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)

    import learning_table as lt
    from tensordict.nn import TensorDictModule
    from torchrl.modules import MLP

    from torchrl_offline.data.stats import stored_transitions
    from torchrl_offline.models import DynamicsEnsemble, LearnedModelEnv

    dataset = lt.load_dataset(args.task, args.level, Path(args.root), make_missing=False)
    td = stored_transitions(dataset)
    obs_dim, act_dim = td.get("observation").shape[-1], td.get("action").shape[-1]
    sample = td.to_tensordict()  # the normaliser and the data range: all transitions
    torch.manual_seed(0)
    model = DynamicsEnsemble(
        obs_dim, act_dim, hidden_sizes=tuple(args.hidden), termination_fn=args.task
    )
    model.set_normalization(
        sample["observation"],
        sample["action"],
        sample["next", "observation"],
        sample["next", "reward"],
    )
    model = model.to(args.device)
    env = LearnedModelEnv(model, dataset, batch_size=args.batch, reward_penalty=1.0, seed=0)
    policy = TensorDictModule(
        torch.nn.Sequential(
            MLP(in_features=obs_dim, out_features=act_dim, num_cells=[256, 256],
                activation_class=torch.nn.ReLU),
            torch.nn.Tanh(),
        ).to(args.device),
        in_keys=["observation"],
        out_keys=["action"],
    )  # fmt: skip
    with torch.no_grad():
        env.rollout(1, policy, break_when_any_done=False)  # warm-up
        times = []
        for _ in range(args.repeats):
            t0 = time.perf_counter()
            # terminated rows (an untrained model falls often) are reset, not stopped on
            rollout = env.rollout(args.horizon, policy, auto_reset=True, break_when_any_done=False)
            times.append(time.perf_counter() - t0)
            assert rollout.numel() == args.batch * args.horizon
        obs = env.reset()["observation"]
        action = policy(env.reset())["action"]
        bare = []
        for _ in range(args.repeats):
            t0 = time.perf_counter()
            for _ in range(args.horizon):
                model.sample(obs, action)
            bare.append(time.perf_counter() - t0)
        reset = []
        for _ in range(args.repeats):
            t0 = time.perf_counter()
            env.reset()
            reset.append(time.perf_counter() - t0)
    steps = args.batch * args.horizon
    out = {
        "dataset": f"{args.task}/{args.level}",
        "start_states": "load_minari's memory-mapped storage",
        "transitions": int(td.shape[0]),
        "batch": args.batch,
        "horizon": args.horizon,
        "threads": args.threads,
        "device": args.device,
        "hidden": args.hidden,
        "members": model.num_members,
        "rollout_steps_per_s": steps / min(times),
        "model_sample_steps_per_s": steps / min(bare),
        "reset_seconds": min(reset),
    }
    print(json.dumps(out, indent=1))
    if args.json is not None:
        args.json.write_text(json.dumps(out, indent=1) + "\n")


if __name__ == "__main__":
    main()
