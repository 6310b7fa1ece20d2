"""ReBRAC (Tarasov et al., 2023) on a mixed-quality Pendulum dataset.

TD3+BC revisited: LayerNorm critics, a behaviour-cloning penalty on the actor
(``beta_actor``) and one on the Bellman target against the dataset's next action
(``beta_critic``), derived once from the dataset's episode order
(``with_derived_keys``). TorchRL networks, our ``ReBRACLoss``, ``SoftUpdate`` targets
and the paper's delayed actor and target updates in a plain loop.
``python examples/rebrac.py --help`` lists the options.
"""

from __future__ import annotations

import torch
from common import evaluate, parser, pendulum_dataset
from tensordict.nn import TensorDictModule, TensorDictSequential
from torchrl.envs import GymEnv
from torchrl.modules import MLP, TanhModule, ValueOperator
from torchrl.objectives import SoftUpdate

from torchrl_offline.data.episodes import with_derived_keys
from torchrl_offline.objectives import ReBRACLoss


def main() -> None:
    args = parser(__doc__.splitlines()[0], steps=20_000, dataset_steps=20_000).parse_args()
    torch.manual_seed(args.seed)
    torch.set_num_threads(1)

    data = pendulum_dataset(args.dataset_steps, seed=args.seed, root=args.root,
                            batch_size=args.batch_size)  # fmt: skip
    data = with_derived_keys(data, [("next", "action")], gamma=0.99)
    env = GymEnv("Pendulum-v1")
    spec = env.action_spec
    n_obs, n_act = env.observation_spec["observation"].shape[-1], spec.shape[-1]
    hidden = [args.hidden] * 3  # the paper's 3x256

    actor = TensorDictSequential(
        TensorDictModule(MLP(in_features=n_obs, out_features=n_act, num_cells=hidden),
                         in_keys=["observation"], out_keys=["param"]),
        TanhModule(in_keys=["param"], out_keys=["action"], spec=spec),
    )  # fmt: skip
    # LayerNorm after every hidden layer of the critic, as in the paper's code.
    qvalue = ValueOperator(MLP(in_features=n_obs + n_act, out_features=1, num_cells=hidden,
                               norm_class=torch.nn.LayerNorm,
                               norm_kwargs=[{"normalized_shape": h} for h in hidden]),
                           in_keys=["observation", "action"])  # fmt: skip

    loss = ReBRACLoss(actor, qvalue, action_spec=spec, beta_actor=0.001, beta_critic=0.01)
    loss.make_value_estimator(gamma=0.99)
    actor_opt = torch.optim.Adam(loss.actor_network_params.values(True, True), lr=1e-3)
    critic_opt = torch.optim.Adam(loss.qvalue_network_params.values(True, True), lr=1e-3)
    target = SoftUpdate(loss, tau=0.005)
    policy_update_delay = 2  # the actor and the targets move every 2nd step

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
