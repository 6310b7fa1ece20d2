"""Behaviour cloning on a mixed-quality Pendulum dataset: the baseline of offline RL.

A deterministic actor regressed on the dataset's actions (mean squared error) with our
``BCLoss``. On mixed data it imitates the average behaviour, which the value-based
examples (iql.py, cql.py, awac.py, td3_bc.py) should beat.
``python examples/bc.py --help`` lists the options.
"""

from __future__ import annotations

import torch
from common import evaluate, parser, pendulum_dataset
from tensordict.nn import TensorDictModule, TensorDictSequential
from torchrl.envs import GymEnv
from torchrl.modules import MLP, TanhModule

from torchrl_offline.objectives import BCLoss


def main() -> None:
    args = parser(__doc__.splitlines()[0], steps=10_000, dataset_steps=20_000).parse_args()
    torch.manual_seed(args.seed)
    torch.set_num_threads(1)

    data = pendulum_dataset(args.dataset_steps, seed=args.seed, root=args.root,
                            batch_size=args.batch_size)  # fmt: skip
    env = GymEnv("Pendulum-v1")
    spec = env.action_spec
    n_obs, n_act = env.observation_spec["observation"].shape[-1], spec.shape[-1]
    actor = TensorDictSequential(
        TensorDictModule(MLP(in_features=n_obs, out_features=n_act,
                             num_cells=[args.hidden, args.hidden]),
                         in_keys=["observation"], out_keys=["param"]),
        TanhModule(in_keys=["param"], out_keys=["action"], spec=spec),
    )  # fmt: skip
    loss = BCLoss(actor)
    optimizer = torch.optim.Adam(loss.parameters(), lr=3e-4)

    untrained = evaluate(env, actor, episodes=1)
    print(f"dataset: {len(data)} transitions; untrained policy return {untrained:.1f}")
    for step in range(1, args.steps + 1):
        out = loss(data.sample())
        optimizer.zero_grad()
        out["loss_bc"].backward()
        optimizer.step()
        if step % args.eval_every == 0 or step == args.steps:
            ret = evaluate(env, actor, episodes=args.eval_episodes)
            print(f"step {step}: loss_bc {out['loss_bc'].item():.4f}, return {ret:.1f}")
    env.close()


if __name__ == "__main__":
    main()
