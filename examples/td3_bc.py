"""TD3+BC (Fujimoto & Gu, 2021) on a mixed-quality Pendulum dataset.

TD3 with a behaviour-cloning term: the actor maximises ``lambda * Q(s, pi(s)) -
(pi(s) - a)^2`` with ``lambda = alpha / mean|Q|`` (alpha 2.5); target policy smoothing
noise 0.2 clipped at 0.5 (times the action range); the actor and the targets are
updated every 2 critic updates (the loop schedules them, as in TorchRL). TorchRL networks, our
``TD3BCLoss``, ``SoftUpdate`` and a plain update loop.
``python examples/td3_bc.py --help`` lists the options.
"""

from __future__ import annotations

import torch
from common import evaluate, parser, pendulum_dataset
from tensordict.nn import TensorDictModule, TensorDictSequential
from torchrl.envs import GymEnv
from torchrl.modules import MLP, TanhModule, ValueOperator
from torchrl.objectives import SoftUpdate

from torchrl_offline.objectives import TD3BCLoss


def main() -> None:
    args = parser(__doc__.splitlines()[0], steps=20_000, dataset_steps=20_000).parse_args()
    torch.manual_seed(args.seed)
    torch.set_num_threads(1)

    data = pendulum_dataset(args.dataset_steps, seed=args.seed, root=args.root,
                            batch_size=args.batch_size)  # fmt: skip
    env = GymEnv("Pendulum-v1")
    spec = env.action_spec
    n_obs, n_act = env.observation_spec["observation"].shape[-1], spec.shape[-1]
    hidden = [args.hidden, args.hidden]

    # A deterministic actor squashed into the action box, and a twin critic Q(s, a).
    actor = TensorDictSequential(
        TensorDictModule(MLP(in_features=n_obs, out_features=n_act, num_cells=hidden),
                         in_keys=["observation"], out_keys=["param"]),
        TanhModule(in_keys=["param"], out_keys=["action"], spec=spec),
    )  # fmt: skip
    qvalue = ValueOperator(MLP(in_features=n_obs + n_act, out_features=1, num_cells=hidden),
                           in_keys=["observation", "action"])  # fmt: skip

    loss = TD3BCLoss(actor, qvalue, action_spec=spec, alpha=2.5, policy_noise=0.2,
                     noise_clip=0.5)  # fmt: skip
    loss.make_value_estimator(gamma=0.99)
    actor_opt = torch.optim.Adam(loss.actor_network_params.values(True, True), lr=3e-4)
    critic_opt = torch.optim.Adam(loss.qvalue_network_params.values(True, True), lr=3e-4)
    target = SoftUpdate(loss, tau=0.005)
    policy_update_delay = 2  # the paper's delayed policy update: the actor every 2nd step

    untrained = evaluate(env, actor, episodes=1)
    print(f"dataset: {len(data)} transitions; untrained policy return {untrained:.1f}")
    loss_actor = torch.zeros(())
    for step in range(1, args.steps + 1):
        batch = data.sample()
        loss_qvalue, _ = loss.qvalue_loss(batch)
        critic_opt.zero_grad()
        loss_qvalue.backward()
        critic_opt.step()
        if step % policy_update_delay == 0:
            loss_actor, _ = loss.actor_loss(batch)
            actor_opt.zero_grad()
            loss_actor.backward()
            actor_opt.step()
            target.step()
        if step % args.eval_every == 0 or step == args.steps:
            ret = evaluate(env, actor, episodes=args.eval_episodes)
            print(f"step {step}: loss_actor {loss_actor.item():.3f}, "
                  f"loss_qvalue {loss_qvalue.item():.3f}, return {ret:.1f}")  # fmt: skip
    env.close()


if __name__ == "__main__":
    main()
