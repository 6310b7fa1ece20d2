"""Advantage-Weighted Regression (Peng et al., 2019) on a mixed-quality Pendulum dataset.

The value function is regressed on the logged episodes' discounted returns; the actor
maximises the dataset actions' log-likelihood weighted by ``exp(advantage / beta)``
(advantages normalised over the batch, beta 1, weights clipped at 20). The returns are
derived once from the dataset's episode order (``with_derived_keys``). TorchRL networks,
our ``AWRLoss`` and a plain update loop (no target networks).
``python examples/awr.py --help`` lists the options.
"""

from __future__ import annotations

import torch
from common import evaluate, parser, pendulum_dataset
from torchrl.envs import GymEnv
from torchrl.modules import MLP, ValueOperator

from torchrl_offline.data.episodes import with_derived_keys
from torchrl_offline.objectives import AWRLoss, make_tanh_mean_gaussian_actor
from torchrl_offline.objectives.awr import AWR_ALGORITHM


def main() -> None:
    args = parser(__doc__.splitlines()[0], steps=20_000, dataset_steps=20_000).parse_args()
    torch.manual_seed(args.seed)
    torch.set_num_threads(1)

    data = pendulum_dataset(args.dataset_steps, seed=args.seed, root=args.root,
                            batch_size=args.batch_size)  # fmt: skip
    data = with_derived_keys(data, AWR_ALGORITHM.derived_keys, gamma=0.99)  # the returns
    env = GymEnv("Pendulum-v1")
    spec = env.action_spec
    n_obs = env.observation_spec["observation"].shape[-1]

    # The AWR/AWAC papers' Gaussian: a tanh-bounded mean and a state-independent std.
    actor = make_tanh_mean_gaussian_actor(n_obs, spec, num_cells=(args.hidden, args.hidden))
    value = ValueOperator(MLP(in_features=n_obs, out_features=1,
                              num_cells=[args.hidden, args.hidden]),
                          in_keys=["observation"])  # fmt: skip

    loss = AWRLoss(actor, value, beta=1.0, max_weight=20.0)
    actor_opt = torch.optim.Adam(loss.actor_network_params.values(True, True), lr=3e-4)
    value_opt = torch.optim.Adam(loss.value_network_params.values(True, True), lr=3e-4)

    untrained = evaluate(env, actor, episodes=1)
    print(f"dataset: {len(data)} transitions; untrained policy return {untrained:.1f}")
    for step in range(1, args.steps + 1):
        out = loss(data.sample())
        actor_opt.zero_grad()
        value_opt.zero_grad()
        (out["loss_actor"] + out["loss_value"]).backward()
        actor_opt.step()
        value_opt.step()
        if step % args.eval_every == 0 or step == args.steps:
            ret = evaluate(env, actor, episodes=args.eval_episodes)
            print(f"step {step}: loss_actor {out['loss_actor'].item():.3f}, "
                  f"loss_value {out['loss_value'].item():.3f}, return {ret:.1f}")  # fmt: skip
    env.close()


if __name__ == "__main__":
    main()
