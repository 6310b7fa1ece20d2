"""IQL on a mixed-quality Pendulum dataset: ours vs TorchRL's IQLLoss, at equal budget.

Every variant gets the same data (``benchmarks/pendulum_mixed.py``), 128x128 ReLU
MLPs, optimiser (Adam, lr 3e-4), batch size (256), discount (0.99), target rate
(0.005) and number of gradient steps (5000), the budget of
``benchmarks/learning_pendulum_d3rlpy.py``. The policy is evaluated deterministically
(the distribution's mean, or ``tanh`` of it for ``TanhNormal``) every ``--eval-every``
steps.

What decides the result is the actor, not the loss. The default actor below is the one
of TorchRL's ``sota-implementations/iql`` (``TanhNormal`` over the action spec,
``tanh_loc=False``, state-dependent biased-softplus scale with lower bound 0.1); with
it both IQL losses end below the dataset's average return. With the IQL paper's
Gaussian (mean ``tanh(MLP(s))`` in the action box, one state-independent log-std, as
d3rlpy's ``IQL`` uses; :mod:`torchrl_offline.objectives.gaussian_actor`) our
``IQLLoss`` makes the same updates as d3rlpy (from the same initial weights on the
same batches, critics and value net agree to 1e-6 over the first 50 updates, after
which float rounding differences grow slowly) and reaches the same returns.

Variants (``--variants``):

* ``ours``: ``torchrl_offline.objectives.IQLLoss()`` with its defaults (paper values);
* ``torchrl``: ``torchrl.objectives.IQLLoss(expectile=0.7, temperature=3.0)``, its
  other defaults (critic loss ``smooth_l1``);
* ``torchrl_l2``: the same with the paper's squared-error critic loss;
* ``ours_smooth_l1``: ours with TorchRL's ``smooth_l1`` critic loss;
* ``ours_no_eps``: ours without the clamp of logged actions inside the tanh support;
* ``<variant>_sgaussian``: any of the above with the IQL paper's Gaussian actor,
  log-std bounded as d3rlpy does, ``-5 + 7 sigmoid(p)`` (starts at -1.5);
* ``<variant>_gaussian``: the same with the log-std clamped to [-5, 2] (starts at 0);
* ``<variant>_tanh``: with ``torchrl.modules.MLP``'s default ``Tanh`` hidden
  activations instead of ReLU (what this script used before; d3rlpy and TorchRL's
  example use ReLU). Suffixes combine, e.g. ``ours_sgaussian_tanh``.

Usage::

    python benchmarks/learning_pendulum.py --seeds 0 1 2 --steps 5000
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import pathlib
import statistics
import time
import warnings

import gymnasium as gym
import numpy as np
import torch
from tensordict import TensorDict
from tensordict.nn import NormalParamExtractor, TensorDictModule
from torchrl.data import Bounded
from torchrl.envs.utils import ExplorationType, set_exploration_type
from torchrl.modules import (
    MLP,
    ProbabilisticActor,
    TanhNormal,
    ValueOperator,
)
from torchrl.objectives import SoftUpdate

from torchrl_offline.objectives.gaussian_actor import make_tanh_mean_gaussian_actor

_HERE = pathlib.Path(__file__).resolve().parent


def _pendulum_mixed():
    spec = importlib.util.spec_from_file_location("pendulum_mixed", _HERE / "pendulum_mixed.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def make_networks(
    hidden: int = 128,
    obs_dim: int = 3,
    act_dim: int = 1,
    actor_kind: str = "tanh_normal",
    activation: type[torch.nn.Module] = torch.nn.ReLU,
):
    """Networks as in TorchRL's sota-implementations/iql/utils.py (state-based).

    TorchRL's example passes ``activation_class=nn.ReLU`` (its config's ``relu``);
    ``torchrl.modules.MLP`` alone defaults to ``nn.Tanh``, so the activation is given
    explicitly here. ``actor_kind="gaussian"`` swaps the actor for the IQL paper's
    tanh-mean Gaussian.
    """
    mlp_kwargs = {"num_cells": [hidden, hidden], "activation_class": activation}
    spec = Bounded(-2.0 * torch.ones(act_dim), 2.0 * torch.ones(act_dim), (act_dim,))
    if actor_kind in ("gaussian", "sgaussian"):
        gaussian = make_tanh_mean_gaussian_actor(
            obs_dim,
            spec,
            num_cells=[hidden, hidden],
            activation_class=activation,
            log_std_mapping="sigmoid" if actor_kind == "sgaussian" else "clamp",
        )
    actor_net = torch.nn.Sequential(
        MLP(in_features=obs_dim, out_features=2 * act_dim, **mlp_kwargs),
        NormalParamExtractor(scale_mapping="biased_softplus_1.0", scale_lb=0.1),
    )
    actor = ProbabilisticActor(
        TensorDictModule(actor_net, in_keys=["observation"], out_keys=["loc", "scale"]),
        in_keys=["loc", "scale"],
        spec=spec,
        distribution_class=TanhNormal,
        distribution_kwargs={"low": spec.space.low, "high": spec.space.high, "tanh_loc": False},
        default_interaction_type=ExplorationType.RANDOM,
    )
    qvalue = ValueOperator(
        MLP(in_features=obs_dim + act_dim, out_features=1, **mlp_kwargs),
        in_keys=["observation", "action"],
    )
    value = ValueOperator(
        MLP(in_features=obs_dim, out_features=1, **mlp_kwargs),
        in_keys=["observation"],
    )
    if actor_kind in ("gaussian", "sgaussian"):
        return gaussian, qvalue, value
    return actor, qvalue, value


_SUFFIXES = ("_tanh", "_sgaussian", "_gaussian")


def parse_variant(variant: str) -> tuple[str, str, type[torch.nn.Module]]:
    """Splits ``variant`` into (loss variant, actor kind, hidden activation)."""
    kind, activation = "tanh_normal", torch.nn.ReLU
    stripped = True
    while stripped:
        stripped = False
        for suffix in _SUFFIXES:
            if variant.endswith(suffix):
                variant = variant.removesuffix(suffix)
                if suffix == "_tanh":
                    activation = torch.nn.Tanh
                else:
                    kind = suffix[1:]
                stripped = True
    return variant, kind, activation


def make_loss(variant: str, actor, qvalue, value):
    from torchrl.objectives import IQLLoss as TorchRLIQLLoss

    from torchrl_offline.objectives.iql import IQLLoss

    variant = parse_variant(variant)[0]
    if variant == "torchrl":
        return TorchRLIQLLoss(actor, qvalue, value, expectile=0.7, temperature=3.0)
    if variant == "torchrl_l2":
        return TorchRLIQLLoss(
            actor, qvalue, value, expectile=0.7, temperature=3.0, loss_function="l2"
        )
    if variant == "ours":
        return IQLLoss(actor, qvalue, value)
    if variant == "ours_smooth_l1":
        return IQLLoss(actor, qvalue, value, loss_function="smooth_l1")
    if variant == "ours_no_eps":
        return IQLLoss(actor, qvalue, value, action_eps=0.0)
    raise ValueError(f"unknown variant {variant!r}")


def evaluate(actor, episodes: int, seed: int) -> float:
    env = gym.make("Pendulum-v1")
    returns = []
    with torch.no_grad(), set_exploration_type(ExplorationType.DETERMINISTIC):
        for ep in range(episodes):
            obs, _ = env.reset(seed=seed + ep)
            total, done = 0.0, False
            while not done:
                td = TensorDict({"observation": torch.as_tensor(obs, dtype=torch.float32)}, [])
                action = actor(td)["action"].numpy()
                obs, reward, terminated, truncated, _ = env.step(np.clip(action, -2.0, 2.0))
                total += float(reward)
                done = terminated or truncated
            returns.append(total)
    env.close()
    return float(np.mean(returns))


def train(variant: str, data: TensorDict, args, seed: int) -> dict:
    torch.manual_seed(seed)
    _, kind, activation = parse_variant(variant)
    actor, qvalue, value = make_networks(args.hidden, actor_kind=kind, activation=activation)
    loss = make_loss(variant, actor, qvalue, value)
    loss.make_value_estimator(gamma=0.99)
    updater = SoftUpdate(loss, tau=0.005)
    optimizers = [
        torch.optim.Adam(list(p.values(True, True)), lr=args.lr)
        for p in (loss.actor_network_params, loss.qvalue_network_params, loss.value_network_params)
    ]
    g = torch.Generator().manual_seed(seed)
    curve = []
    start = time.perf_counter()
    for step in range(1, args.steps + 1):
        batch = data[torch.randint(data.numel(), (args.batch_size,), generator=g)]
        out = loss(batch)
        total = out["loss_actor"] + out["loss_qvalue"] + out["loss_value"]
        for opt in optimizers:
            opt.zero_grad(set_to_none=True)
        total.backward()
        for opt in optimizers:
            opt.step()
        updater.step()
        if step % args.eval_every == 0 or step == args.steps:
            curve.append((step, evaluate(actor, args.episodes, seed=1000 + 17 * seed)))
    return {
        "variant": variant,
        "seed": seed,
        "final": curve[-1][1],
        "curve": curve,
        "seconds": time.perf_counter() - start,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument(
        "--variants",
        nargs="*",
        default=["ours_sgaussian", "torchrl_sgaussian", "ours", "torchrl"],
    )
    parser.add_argument("--seeds", nargs="*", type=int, default=[0, 1, 2])
    parser.add_argument("--steps", type=int, default=5000)
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument("--hidden", type=int, default=128)
    parser.add_argument("--lr", type=float, default=3e-4)
    parser.add_argument("--eval-every", type=int, default=1000)
    parser.add_argument("--episodes", type=int, default=10)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--data-seed", type=int, default=0)
    parser.add_argument("--json", default=None, help="write all results here")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    warnings.filterwarnings("ignore", category=UserWarning)

    pm = _pendulum_mixed()
    data = pm.make_pendulum_mixed(seed=args.data_seed)
    average = float(pm.episode_returns(data).mean())
    print(f"dataset: {data.numel()} transitions, average return {average:.1f}", flush=True)
    results = []
    for seed in args.seeds:
        for variant in args.variants:
            res = train(variant, data, args, seed)
            results.append(res)
            curve = " ".join(f"{s}:{r:.0f}" for s, r in res["curve"])
            print(
                f"{variant:15s} seed {seed}: final {res['final']:8.1f}  "
                f"({res['seconds']:.0f}s)  curve {curve}",
                flush=True,
            )
    print(f"\nsummary (dataset average {average:.1f}); mean +- sd over seeds of the final return")
    for variant in args.variants:
        finals = [r["final"] for r in results if r["variant"] == variant]
        sd = statistics.stdev(finals) if len(finals) > 1 else 0.0
        print(f"{variant:15s} {statistics.mean(finals):8.1f} +- {sd:6.1f}   {finals}")
    if args.json:
        pathlib.Path(args.json).write_text(
            json.dumps({"dataset_average": average, "results": results}, indent=1)
        )


if __name__ == "__main__":
    main()
