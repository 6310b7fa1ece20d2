"""Discrete BCQ (Fujimoto et al., 2019) on a mixed-quality CartPole dataset.

A double DQN whose greedy action is taken only among the actions an imitation model of
the data finds likely enough, ``G(a|s) / max_b G(b|s) > 0.3``, both in the Bellman
target and when acting; the imitation head learns by cross-entropy on the logged
actions. ``DiscreteBCQActor`` is a TorchRL ``QValueActor`` with the two heads and the
filter, so it is the policy too. Our ``DiscreteBCQLoss``, ``SoftUpdate`` and a plain
update loop. ``python examples/discrete_bcq.py --help`` lists the options.
"""

from __future__ import annotations

import torch
from common import cartpole_dataset, evaluate, parser
from torchrl.envs import GymEnv
from torchrl.modules import MLP
from torchrl.objectives import SoftUpdate

from torchrl_offline.objectives import DiscreteBCQActor, DiscreteBCQLoss


def main() -> None:
    args = parser(__doc__.splitlines()[0], steps=10_000, dataset_steps=20_000).parse_args()
    torch.manual_seed(args.seed)
    torch.set_num_threads(1)

    data = cartpole_dataset(args.dataset_steps, seed=args.seed, root=args.root,
                            batch_size=args.batch_size)  # fmt: skip
    env = GymEnv("CartPole-v1", categorical_action_encoding=True)  # integer actions
    spec = env.action_spec
    n_obs, n_act = env.observation_spec["observation"].shape[-1], spec.space.n
    hidden = [args.hidden, args.hidden]

    # Two heads over the observation, as in the reference code's fully connected model.
    actor = DiscreteBCQActor(MLP(in_features=n_obs, out_features=n_act, num_cells=hidden),  # Q
                             MLP(in_features=n_obs, out_features=n_act, num_cells=hidden),  # G
                             spec=spec)  # fmt: skip
    loss = DiscreteBCQLoss(actor, threshold=0.3)  # Huber TD loss; sets the actor's threshold
    loss.make_value_estimator(gamma=0.99)
    # The reference code's non-Atari setting: Adam at 3e-4, soft target updates at 0.005.
    optimizer = torch.optim.Adam(loss.value_network_params.values(True, True), lr=3e-4)
    target = SoftUpdate(loss, tau=0.005)

    untrained = evaluate(env, actor, episodes=1)
    print(f"dataset: {len(data)} transitions; untrained policy return {untrained:.1f}")
    for step in range(1, args.steps + 1):
        out = loss(data.sample())
        optimizer.zero_grad()
        (out["loss_qvalue"] + out["loss_imitation"]).backward()
        optimizer.step()
        target.step()
        if step % args.eval_every == 0 or step == args.steps:
            ret = evaluate(env, actor, episodes=args.eval_episodes)
            print(f"step {step}: loss_qvalue {out['loss_qvalue'].item():.3f}, "
                  f"loss_imitation {out['loss_imitation'].item():.3f}, "
                  f"return {ret:.1f}")  # fmt: skip
    env.close()


if __name__ == "__main__":
    main()
