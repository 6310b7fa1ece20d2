"""EDAC (An et al., 2021) on a mixed-quality Pendulum dataset.

SAC with an ensemble of 10 critics whose minimum is taken in the target and in the
actor's objective, plus a diversity term (weight ``eta`` 1) that decorrelates the
critics' action gradients at the dataset's actions, so that the ensemble is pessimistic
where the data are thin; automatic entropy tuning. The 10 critics are one ``Q(s, a)``
network that the loss copies and evaluates as one batched computation. TorchRL networks,
our ``EDACLoss``, ``SoftUpdate`` targets and a plain update loop.
``python examples/edac.py --help`` lists the options.
"""

from __future__ import annotations

import torch
from common import evaluate, parser, pendulum_dataset
from tensordict.nn import NormalParamExtractor, TensorDictModule
from torch import nn
from torchrl.envs import GymEnv
from torchrl.modules import MLP, ProbabilisticActor, TanhNormal, ValueOperator
from torchrl.objectives import SoftUpdate

from torchrl_offline.objectives import EDACLoss


def main() -> None:
    args = parser(__doc__.splitlines()[0], steps=10_000, dataset_steps=20_000).parse_args()
    torch.manual_seed(args.seed)
    torch.set_num_threads(1)

    data = pendulum_dataset(args.dataset_steps, seed=args.seed, root=args.root,
                            batch_size=args.batch_size)  # fmt: skip
    env = GymEnv("Pendulum-v1")
    spec = env.action_spec
    n_obs, n_act = env.observation_spec["observation"].shape[-1], spec.shape[-1]
    hidden = [args.hidden] * 3  # the paper's and CORL's 3x256

    # A TanhNormal policy over the action box, and one critic Q(s, a) that the loss
    # duplicates into the ensemble (each copy with fresh parameters).
    actor = ProbabilisticActor(
        TensorDictModule(
            nn.Sequential(MLP(in_features=n_obs, out_features=2 * n_act, num_cells=hidden),
                          NormalParamExtractor()),
            in_keys=["observation"], out_keys=["loc", "scale"]),
        in_keys=["loc", "scale"], spec=spec, distribution_class=TanhNormal,
        distribution_kwargs={"low": spec.space.low, "high": spec.space.high},
    )  # fmt: skip
    qvalue = ValueOperator(MLP(in_features=n_obs + n_act, out_features=1, num_cells=hidden),
                           in_keys=["observation", "action"])  # fmt: skip

    loss = EDACLoss(actor, qvalue, num_qvalue_nets=10, eta=1.0, action_spec=spec)
    loss.make_value_estimator(gamma=0.99)
    # Adam at 3e-4 for the actor, the critics and the temperature (CORL's settings).
    actor_opt = torch.optim.Adam(loss.actor_network_params.values(True, True), lr=3e-4)
    critic_opt = torch.optim.Adam(loss.qvalue_network_params.values(True, True), lr=3e-4)
    alpha_opt = torch.optim.Adam([loss.log_alpha], lr=3e-4)
    optimizers = (actor_opt, critic_opt, alpha_opt)
    target = SoftUpdate(loss, tau=0.005)

    untrained = evaluate(env, actor, episodes=1)
    print(f"dataset: {len(data)} transitions; untrained policy return {untrained:.1f}")
    for step in range(1, args.steps + 1):
        out = loss(data.sample())
        total = (out["loss_actor"] + out["loss_qvalue"] + out["loss_diversity"]
                 + out["loss_alpha"])  # fmt: skip
        for opt in optimizers:
            opt.zero_grad()
        total.backward()
        for opt in optimizers:
            opt.step()
        target.step()
        if step % args.eval_every == 0 or step == args.steps:
            ret = evaluate(env, actor, episodes=args.eval_episodes)
            print(f"step {step}: loss_qvalue {out['loss_qvalue'].item():.3f}, "
                  f"q_std {out['q_std'].item():.3f}, return {ret:.1f}")  # fmt: skip
    env.close()


if __name__ == "__main__":
    main()
