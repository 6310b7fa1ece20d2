"""Discrete CQL (Kumar et al., 2020) on a mixed-quality CartPole dataset.

A DQN critic with a target network, plus the conservative term
``alpha * (logsumexp_a' Q(s, a') - Q(s, a))`` that keeps the values of actions absent
from the data low. The policy is greedy in Q (TorchRL's ``QValueActor``). Our
``DiscreteCQLLoss``, ``SoftUpdate`` and a plain update loop.
``python examples/discrete_cql.py --help`` lists the options.
"""

from __future__ import annotations

import torch
from common import cartpole_dataset, evaluate, parser
from torchrl.envs import GymEnv
from torchrl.modules import MLP, QValueActor
from torchrl.objectives import SoftUpdate

from torchrl_offline.objectives import DiscreteCQLLoss


def main() -> None:
    args = parser(__doc__.splitlines()[0], steps=10_000, dataset_steps=20_000).parse_args()
    torch.manual_seed(args.seed)
    torch.set_num_threads(1)

    data = cartpole_dataset(args.dataset_steps, seed=args.seed, root=args.root,
                            batch_size=args.batch_size)  # fmt: skip
    env = GymEnv("CartPole-v1", categorical_action_encoding=True)  # integer actions
    spec = env.action_spec
    n_obs, n_act = env.observation_spec["observation"].shape[-1], spec.space.n

    qnet = QValueActor(MLP(in_features=n_obs, out_features=n_act,
                           num_cells=[args.hidden, args.hidden]),
                       in_keys=["observation"], spec=spec)  # fmt: skip
    loss = DiscreteCQLLoss(qnet, action_space=spec, alpha=1.0)
    loss.make_value_estimator(gamma=0.99)
    optimizer = torch.optim.Adam(loss.value_network_params.values(True, True), lr=3e-4)
    target = SoftUpdate(loss, tau=0.005)

    untrained = evaluate(env, qnet, episodes=1)
    print(f"dataset: {len(data)} transitions; untrained policy return {untrained:.1f}")
    for step in range(1, args.steps + 1):
        out = loss(data.sample())
        optimizer.zero_grad()
        (out["loss_qvalue"] + out["loss_cql"]).backward()
        optimizer.step()
        target.step()
        if step % args.eval_every == 0 or step == args.steps:
            ret = evaluate(env, qnet, episodes=args.eval_episodes)
            print(f"step {step}: loss_qvalue {out['loss_qvalue'].item():.3f}, "
                  f"loss_cql {out['loss_cql'].item():.3f}, return {ret:.1f}")  # fmt: skip
    env.close()


if __name__ == "__main__":
    main()
