"""Cal-QL (Nakamoto et al., 2023) on a mixed-quality Pendulum dataset.

CQL whose conservative term stops pushing the policy's values down below the logged
episodes' Monte Carlo returns (derived once from the dataset's episode order,
``with_derived_keys``): the calibration that spares fine-tuning its initial dip (weight
5, 10 sampled actions per state, automatic entropy tuning). TorchRL networks, our
``CalQLLoss``, ``SoftUpdate`` targets and a plain update loop; continue online with
``examples/offline_to_online.py``. ``python examples/cal_ql.py --help`` lists the options.
"""

from __future__ import annotations

import torch
from common import evaluate, parser, pendulum_dataset
from tensordict.nn import NormalParamExtractor, TensorDictModule
from torch import nn
from torchrl.envs import GymEnv
from torchrl.modules import MLP, ProbabilisticActor, TanhNormal, ValueOperator
from torchrl.objectives import SoftUpdate

from torchrl_offline.data.episodes import with_derived_keys
from torchrl_offline.objectives import CalQLLoss


def main() -> None:
    args = parser(__doc__.splitlines()[0], steps=10_000, dataset_steps=20_000).parse_args()
    torch.manual_seed(args.seed)
    torch.set_num_threads(1)

    data = pendulum_dataset(args.dataset_steps, seed=args.seed, root=args.root,
                            batch_size=args.batch_size)  # fmt: skip
    data = with_derived_keys(data, ["mc_return"], gamma=0.99)  # the calibration's bound
    env = GymEnv("Pendulum-v1")
    spec = env.action_spec
    n_obs, n_act = env.observation_spec["observation"].shape[-1], spec.shape[-1]
    hidden = [args.hidden] * 3  # CORL's 3x256 critics and actor

    # A TanhNormal policy over the action box, and a twin critic Q(s, a).
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

    loss = CalQLLoss(actor, qvalue, action_spec=spec, min_q_weight=5.0, with_lagrange=False,
                     num_random=10)  # fmt: skip
    loss.make_value_estimator(gamma=0.99)
    actor_opt = torch.optim.Adam(loss.actor_network_params.values(True, True), lr=1e-4)
    critic_opt = torch.optim.Adam(loss.qvalue_network_params.values(True, True), lr=3e-4)
    alpha_opt = torch.optim.Adam([loss.log_alpha], lr=3e-4)
    optimizers = (actor_opt, critic_opt, alpha_opt)
    target = SoftUpdate(loss, tau=0.005)

    untrained = evaluate(env, actor, episodes=1)
    print(f"dataset: {len(data)} transitions; untrained policy return {untrained:.1f}")
    for step in range(1, args.steps + 1):
        out = loss(data.sample())
        total = out["loss_actor"] + out["loss_qvalue"] + out["loss_cql"] + out["loss_alpha"]
        for opt in optimizers:
            opt.zero_grad()
        total.backward()
        for opt in optimizers:
            opt.step()
        target.step()
        if step % args.eval_every == 0 or step == args.steps:
            ret = evaluate(env, actor, episodes=args.eval_episodes)
            print(f"step {step}: loss_qvalue {out['loss_qvalue'].item():.3f}, "
                  f"loss_cql {out['loss_cql'].item():.3f}, "
                  f"bounded {out['bounded_fraction'].item():.2f}, return {ret:.1f}")  # fmt: skip
    env.close()


if __name__ == "__main__":
    main()
