"""Batch-Constrained deep Q-learning (Fujimoto et al., 2019) on a mixed-quality Pendulum dataset.

A conditional VAE learns the dataset's actions; a perturbation model nudges decoded
actions by at most 5% of the action range toward higher Q; the twin critics regress on a
soft-clipped target maximised over 10 perturbed VAE samples at the next state. The policy
(``loss.make_policy()``) acts with the best of 10 perturbed samples under the first critic.
TorchRL networks, our ``BCQLoss``, ``SoftUpdate`` targets and a plain update loop.
``python examples/bcq.py --help`` lists the options.
"""

from __future__ import annotations

import torch
from common import evaluate, parser, pendulum_dataset
from torchrl.envs import GymEnv
from torchrl.modules import MLP, ValueOperator
from torchrl.objectives import SoftUpdate

from torchrl_offline.objectives import BCQLoss, make_behavior_vae
from torchrl_offline.objectives.bcq import make_perturbation_actor


def main() -> None:
    args = parser(__doc__.splitlines()[0], steps=20_000, dataset_steps=20_000).parse_args()
    torch.manual_seed(args.seed)
    torch.set_num_threads(1)

    data = pendulum_dataset(args.dataset_steps, seed=args.seed, root=args.root,
                            batch_size=args.batch_size)  # fmt: skip
    env = GymEnv("Pendulum-v1")
    spec = env.action_spec
    n_obs, n_act = env.observation_spec["observation"].shape[-1], spec.shape[-1]
    hidden = [args.hidden, args.hidden]  # d3rlpy's 2x256 (the authors': 400x300, VAE 750x750)

    # The behaviour VAE (encoder E(s, a), decoder D(s, z) squashed into the action box),
    # the perturbation model xi(s, a) and a twin critic Q(s, a).
    vae = make_behavior_vae(n_obs, spec, num_cells=hidden)
    perturbation = make_perturbation_actor(n_obs, n_act, num_cells=hidden)
    qvalue = ValueOperator(MLP(in_features=n_obs + n_act, out_features=1, num_cells=hidden),
                           in_keys=["observation", "action"])  # fmt: skip

    loss = BCQLoss(perturbation, qvalue, vae, action_spec=spec, perturbation_scale=0.05,
                   lmbda=0.75, num_target_samples=10, num_action_samples=10)  # fmt: skip
    loss.make_value_estimator(gamma=0.99)
    # The authors' Adam at 1e-3 for all three networks.
    actor_opt = torch.optim.Adam(loss.actor_network_params.values(True, True), lr=1e-3)
    critic_opt = torch.optim.Adam(loss.qvalue_network_params.values(True, True), lr=1e-3)
    vae_opt = torch.optim.Adam(loss.behavior_network_params.values(True, True), lr=1e-3)
    optimizers = (actor_opt, critic_opt, vae_opt)
    target = SoftUpdate(loss, tau=0.005)  # target critics and perturbation model
    policy = loss.make_policy()  # the best of 10 perturbed VAE samples under Q1

    untrained = evaluate(env, policy, episodes=1)
    print(f"dataset: {len(data)} transitions; untrained policy return {untrained:.1f}")
    for step in range(1, args.steps + 1):
        out = loss(data.sample())
        # Each term trains its own network: the VAE, the critics, the perturbation model.
        total = out["loss_behavior"] + out["loss_qvalue"] + out["loss_actor"]
        for opt in optimizers:
            opt.zero_grad()
        total.backward()
        for opt in optimizers:
            opt.step()
        target.step()
        if step % args.eval_every == 0 or step == args.steps:
            ret = evaluate(env, policy, episodes=args.eval_episodes)
            print(f"step {step}: loss_behavior {out['loss_behavior'].item():.3f}, "
                  f"loss_qvalue {out['loss_qvalue'].item():.3f}, return {ret:.1f}")  # fmt: skip
    env.close()


if __name__ == "__main__":
    main()
