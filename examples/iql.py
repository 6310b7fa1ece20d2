"""Implicit Q-Learning (Kostrikov et al., 2021) on a mixed-quality Pendulum dataset.

The whole algorithm in one screen: TorchRL networks, our ``IQLLoss`` (expectile 0.7,
temperature 3.0, the paper's Gaussian actor), one Adam per network, a cosine decay of
the actor's learning rate, ``SoftUpdate`` targets, and a plain loop of updates on
batches from the replay buffer. ``python examples/iql.py --help`` lists the options.
"""

from __future__ import annotations

import torch
from common import evaluate, parser, pendulum_dataset
from torchrl.envs import GymEnv
from torchrl.modules import MLP, ValueOperator
from torchrl.objectives import SoftUpdate

from torchrl_offline.objectives import IQLLoss, make_tanh_mean_gaussian_actor


def main() -> None:
    args = parser(__doc__.splitlines()[0], steps=20_000, dataset_steps=20_000).parse_args()
    torch.manual_seed(args.seed)
    torch.set_num_threads(1)  # small networks: one thread is fastest on a shared CPU

    # 1. Data: a TorchRL replay buffer on memory-mapped storage.
    data = pendulum_dataset(args.dataset_steps, seed=args.seed, root=args.root,
                            batch_size=args.batch_size)  # fmt: skip
    env = GymEnv("Pendulum-v1")
    n_obs, n_act = env.observation_spec["observation"].shape[-1], env.action_spec.shape[-1]
    hidden = [args.hidden, args.hidden]

    # 2. Networks: Gaussian actor pi(a|s), twin critic Q(s, a), state value V(s).
    actor = make_tanh_mean_gaussian_actor(n_obs, env.action_spec, num_cells=hidden)
    qvalue = ValueOperator(MLP(in_features=n_obs + n_act, out_features=1, num_cells=hidden),
                           in_keys=["observation", "action"])  # fmt: skip
    value = ValueOperator(MLP(in_features=n_obs, out_features=1, num_cells=hidden),
                          in_keys=["observation"])  # fmt: skip

    # 3. Loss, optimizers, target network.
    loss = IQLLoss(actor, qvalue, value, expectile=0.7, temperature=3.0)
    loss.make_value_estimator(gamma=0.99)
    actor_opt = torch.optim.Adam(loss.actor_network_params.values(True, True), lr=3e-4)
    critic_opt = torch.optim.Adam(loss.qvalue_network_params.values(True, True), lr=3e-4)
    value_opt = torch.optim.Adam(loss.value_network_params.values(True, True), lr=3e-4)
    actor_schedule = torch.optim.lr_scheduler.CosineAnnealingLR(actor_opt, args.steps)
    target = SoftUpdate(loss, tau=0.005)

    # 4. Training: each update reads one batch; the three losses are independent.
    untrained = evaluate(env, actor, episodes=1)
    print(f"dataset: {len(data)} transitions; untrained policy return {untrained:.1f}")
    for step in range(1, args.steps + 1):
        batch = data.sample()
        out = loss(batch)
        for opt in (actor_opt, critic_opt, value_opt):
            opt.zero_grad()
        (out["loss_actor"] + out["loss_qvalue"] + out["loss_value"]).backward()
        for opt in (actor_opt, critic_opt, value_opt):
            opt.step()
        actor_schedule.step()
        target.step()
        if step % args.eval_every == 0 or step == args.steps:
            ret = evaluate(env, actor, episodes=args.eval_episodes)
            print(f"step {step}: loss_qvalue {out['loss_qvalue'].item():.3f}, "
                  f"loss_value {out['loss_value'].item():.3f}, return {ret:.1f}")  # fmt: skip
    env.close()


if __name__ == "__main__":
    main()
