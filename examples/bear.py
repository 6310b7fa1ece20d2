"""BEAR (Kumar et al., 2019) on a mixed-quality Pendulum dataset.

A TanhNormal actor maximises the twin critics' minimum under a support constraint: the
MMD between its actions and those of a behaviour VAE stays below 0.05, enforced by a
Lagrange multiplier trained by dual ascent. The critics regress on a soft-clipped target
maximised over 10 actor samples at the next state; the policy (``loss.make_policy()``)
acts with the best of 10 actor samples under the first critic. TorchRL networks, our
``BEARLoss``, ``SoftUpdate`` targets and a plain update loop.
``python examples/bear.py --help`` lists the options.
"""

from __future__ import annotations

import torch
from common import evaluate, parser, pendulum_dataset
from tensordict.nn import NormalParamExtractor, TensorDictModule
from torch import nn
from torchrl.envs import GymEnv
from torchrl.modules import MLP, ProbabilisticActor, TanhNormal, ValueOperator
from torchrl.objectives import SoftUpdate

from torchrl_offline.objectives import BEARLoss, make_behavior_vae


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

    # A TanhNormal policy over the action box (BEAR's MMD reads its pre-tanh samples),
    # a twin critic Q(s, a) and the behaviour VAE.
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
    vae = make_behavior_vae(n_obs, spec, num_cells=hidden)

    # The authors' warm-up (100,000 actor updates: 20 epochs of 5,000) would outlast the
    # default 20,000-step run, whose actor would then never see the critics and only
    # match the data's support. Warming up for the first tenth of the run (2,000 steps by
    # default) keeps the idea: the actor starts near the behaviour policy, where the
    # critics' values can be trusted, before it maximises them.
    warmup_steps = args.steps // 10
    loss = BEARLoss(actor, qvalue, vae, action_spec=spec, num_mmd_samples=5,
                    mmd_kernel="laplacian", mmd_sigma=20.0, mmd_threshold=0.05,
                    warmup_steps=warmup_steps)  # fmt: skip
    loss.make_value_estimator(gamma=0.99)
    # The authors' Adam at 1e-3 for the networks and the Lagrange multiplier.
    actor_opt = torch.optim.Adam(loss.actor_network_params.values(True, True), lr=1e-3)
    critic_opt = torch.optim.Adam(loss.qvalue_network_params.values(True, True), lr=1e-3)
    vae_opt = torch.optim.Adam(loss.behavior_network_params.values(True, True), lr=1e-3)
    alpha_opt = torch.optim.Adam([loss.log_alpha], lr=1e-3)
    optimizers = (actor_opt, critic_opt, vae_opt, alpha_opt)
    target = SoftUpdate(loss, tau=0.005)  # target critics and actor
    policy = loss.make_policy()  # the best of 10 actor samples under Q1

    untrained = evaluate(env, policy, episodes=1)
    print(f"dataset: {len(data)} transitions; untrained policy return {untrained:.1f}")
    for step in range(1, args.steps + 1):
        out = loss(data.sample())
        total = out["loss_actor"] + out["loss_qvalue"] + out["loss_behavior"] + out["loss_alpha"]
        for opt in optimizers:
            opt.zero_grad()
        total.backward()
        for opt in optimizers:
            opt.step()
        target.step()
        if step % args.eval_every == 0 or step == args.steps:
            ret = evaluate(env, policy, episodes=args.eval_episodes)
            print(f"step {step}: loss_qvalue {out['loss_qvalue'].item():.3f}, "
                  f"mmd {out['mmd'].item():.3f}, alpha {out['alpha'].item():.3f}, "
                  f"return {ret:.1f}")  # fmt: skip
    env.close()


if __name__ == "__main__":
    main()
