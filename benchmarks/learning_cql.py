"""CQL learning comparison on the locally made mixed-quality Pendulum dataset.

Trains, at equal budget (same dataset, gradient steps, batch size, 128x128 networks,
learning rates), and evaluates the final deterministic policy on Pendulum-v1:

* ``torchrl_defaults``: TorchRL 0.14.1's ``CQLLoss`` with its default arguments;
* ``torchrl_l2``, ``torchrl_l2_w5``, ``torchrl_l2_w10``: the same with the Bellman
  loss changed to MSE and the CQL weight raised (the ablation that explains the gap);
* ``ours``: ``torchrl_offline.objectives.cql.CQLLoss`` with its (paper) defaults;
* ``ours_torchrl_args``: ours with TorchRL's defaults (smooth L1, weight 1);
* ``ours_lagrange``: ours with d3rlpy's conservative settings (weight 5, Lagrange on
  the unweighted gap with threshold 10, i.e. ``lagrange_thresh=50``);
* ``d3rlpy``: d3rlpy 2.8.1's ``CQLConfig`` defaults (networks set to 128x128, a
  min-max action scaler for the [-2, 2] torque range), run in a separate venv
  given by ``--d3rlpy-python`` because d3rlpy is not a dependency here.

The TorchRL-API runs build their networks as TorchRL's ``sota-implementations/cql``
scripts do (ReLU MLP, ``NormalParamExtractor(biased_softplus_1.0, scale_lb=0.1)``,
``TanhNormal`` on the action box, ``ValueOperator``), sum ``loss_actor``,
``loss_qvalue``, ``loss_cql``, ``loss_alpha`` (and ``loss_alpha_prime``), and use
Adam with the paper's learning rates (actor 1e-4, critics 3e-4, temperature 1e-4).

Usage::

    python benchmarks/learning_cql.py --seeds 0 1 --steps 5000 \
        --d3rlpy-python /tmp/d3venv/bin/python --out /tmp/learning_cql.jsonl
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import pathlib
import subprocess
import sys
import tempfile
import time

import numpy as np

HERE = pathlib.Path(__file__).resolve().parent
EVAL_EPISODES = 10
EVAL_SEED = 10_000

VARIANTS = {
    "torchrl_defaults": ("torchrl", {}),
    "torchrl_l2": ("torchrl", {"loss_function": "l2"}),
    "torchrl_l2_w5": ("torchrl", {"loss_function": "l2", "min_q_weight": 5.0}),
    "torchrl_l2_w10": ("torchrl", {"loss_function": "l2", "min_q_weight": 10.0}),
    "ours": ("ours", {}),
    "ours_torchrl_args": ("ours", {"loss_function": "smooth_l1", "min_q_weight": 1.0}),
    # d3rlpy's defaults in our parametrisation: weight 5, Lagrange on the unweighted gap < 10
    "ours_lagrange": (
        "ours",
        {"min_q_weight": 5.0, "with_lagrange": True, "lagrange_thresh": 50.0},
    ),
    "d3rlpy": ("d3rlpy", {}),
}


def evaluate_policy(act, episodes: int = EVAL_EPISODES, seed: int = EVAL_SEED) -> float:
    """Mean undiscounted Pendulum-v1 return of ``act(obs: np.ndarray) -> np.ndarray``."""
    import gymnasium as gym

    env = gym.make("Pendulum-v1", max_episode_steps=200)
    returns = []
    for episode in range(episodes):
        obs, _ = env.reset(seed=seed + episode)
        total, done = 0.0, False
        while not done:
            action = np.clip(np.asarray(act(obs), dtype=np.float32).reshape(1), -2.0, 2.0)
            obs, reward, terminated, truncated, _ = env.step(action)
            total += float(reward)
            done = terminated or truncated
        returns.append(total)
    env.close()
    return float(np.mean(returns))


# ----------------------------------------------------------------------------- TorchRL API
def _load_dataset(seed: int):
    spec = importlib.util.spec_from_file_location("pendulum_mixed", HERE / "pendulum_mixed.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    data = module.make_pendulum_mixed(seed=seed)
    return data, module.episode_returns(data)


def _build_model(hidden: int):
    import torch
    from tensordict.nn import NormalParamExtractor, TensorDictModule
    from torch import nn
    from torchrl.data import Bounded
    from torchrl.envs.utils import ExplorationType
    from torchrl.modules import MLP, ProbabilisticActor, TanhNormal, ValueOperator

    spec = Bounded(-2.0, 2.0, (1,))
    actor_net = nn.Sequential(
        MLP(in_features=3, out_features=2, num_cells=[hidden, hidden], activation_class=nn.ReLU),
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
        MLP(in_features=4, out_features=1, num_cells=[hidden, hidden], activation_class=nn.ReLU),
        in_keys=["observation", "action"],
    )
    return actor, qvalue, torch


def train_torchrl_api(
    impl: str, kwargs: dict, data, *, steps: int, seed: int, hidden: int, batch_size: int
) -> tuple[float, dict]:
    """Trains one TorchRL-API CQL loss; returns (final return, last diagnostics)."""
    import torch
    from tensordict import TensorDict
    from torchrl.envs.utils import ExplorationType, set_exploration_type
    from torchrl.objectives import SoftUpdate

    if impl == "torchrl":
        from torchrl.objectives import CQLLoss
    else:
        from torchrl_offline.objectives.cql import CQLLoss

    torch.manual_seed(seed)
    actor, qvalue, _ = _build_model(hidden)
    loss = CQLLoss(actor, qvalue, **kwargs)
    loss.make_value_estimator(gamma=0.99)
    updater = SoftUpdate(loss, tau=0.005)
    optims = [
        torch.optim.Adam(list(loss.actor_network_params.values(True, True)), lr=1e-4),
        torch.optim.Adam(list(loss.qvalue_network_params.values(True, True)), lr=3e-4),
        torch.optim.Adam([loss.log_alpha], lr=1e-4),
    ]
    if getattr(loss, "with_lagrange", False):
        optims.append(torch.optim.Adam([loss.log_alpha_prime], lr=3e-4))
    keys = ["loss_actor", "loss_qvalue", "loss_cql", "loss_alpha"]
    if getattr(loss, "with_lagrange", False):
        keys.append("loss_alpha_prime")
    g = torch.Generator().manual_seed(seed)
    n = data.numel()
    for _ in range(steps):
        out = loss(data[torch.randint(n, (batch_size,), generator=g)])
        sum(out[k] for k in keys).backward()
        for opt in optims:
            opt.step()
            opt.zero_grad(set_to_none=True)
        updater.step()
    diag = {k: float(v.detach().mean()) for k, v in out.items() if v.numel()}

    def act(obs):
        with torch.no_grad(), set_exploration_type(ExplorationType.DETERMINISTIC):
            td = TensorDict({"observation": torch.as_tensor(obs, dtype=torch.float32)}, [])
            return actor(td)["action"].numpy()

    return evaluate_policy(act), diag


# ----------------------------------------------------------------------------- d3rlpy
def train_d3rlpy(npz: str, *, steps: int, seed: int, hidden: int, batch_size: int) -> float:
    """Runs inside a venv with d3rlpy 2.8.1 (no torchrl needed)."""
    import d3rlpy
    import torch

    arrays = np.load(npz)
    dataset = d3rlpy.dataset.MDPDataset(
        observations=arrays["observations"],
        actions=arrays["actions"],
        rewards=arrays["rewards"],
        terminals=arrays["terminals"],
        timeouts=arrays["timeouts"],
    )
    d3rlpy.seed(seed)
    torch.manual_seed(seed)
    encoder = d3rlpy.models.VectorEncoderFactory(hidden_units=[hidden, hidden])
    cql = d3rlpy.algos.CQLConfig(
        batch_size=batch_size,
        actor_encoder_factory=encoder,
        critic_encoder_factory=encoder,
        action_scaler=d3rlpy.preprocessing.MinMaxActionScaler(
            minimum=np.array([-2.0]), maximum=np.array([2.0])
        ),
    ).create(device="cpu:0")
    cql.fit(
        dataset,
        n_steps=steps,
        n_steps_per_epoch=steps,
        show_progress=False,
        logger_adapter=d3rlpy.logging.NoopAdapterFactory(),
    )
    return evaluate_policy(lambda obs: cql.predict(obs[None].astype(np.float32))[0])


def _save_npz(data, path: str) -> None:
    done = data["next", "done"].squeeze(-1).numpy()
    np.savez(
        path,
        observations=data["observation"].numpy(),
        actions=data["action"].numpy(),
        rewards=data["next", "reward"].numpy(),
        terminals=data["next", "terminated"].squeeze(-1).numpy().astype(np.float32),
        timeouts=(done & ~data["next", "terminated"].squeeze(-1).numpy()).astype(np.float32),
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--variants", nargs="+", default=list(VARIANTS))
    parser.add_argument("--seeds", nargs="+", type=int, default=[0])
    parser.add_argument("--steps", type=int, default=5000)
    parser.add_argument("--hidden", type=int, default=128)
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument("--dataset-seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--d3rlpy-python", default=None, help="python of a venv with d3rlpy")
    parser.add_argument("--d3rlpy-npz", default=None, help=argparse.SUPPRESS)
    parser.add_argument("--out", default=None, help="append JSON lines here")
    args = parser.parse_args()

    import torch

    torch.set_num_threads(args.threads)
    if args.d3rlpy_npz:  # child process inside the d3rlpy venv
        for seed in args.seeds:
            score = train_d3rlpy(
                args.d3rlpy_npz,
                steps=args.steps,
                seed=seed,
                hidden=args.hidden,
                batch_size=args.batch_size,
            )
            print(json.dumps({"variant": "d3rlpy", "seed": seed, "return": score}), flush=True)
        return

    data, returns = _load_dataset(args.dataset_seed)
    print(
        f"dataset: {data.numel()} transitions, average return {returns.mean():.1f}, "
        f"best episode {returns.max():.1f}, worst {returns.min():.1f}",
        flush=True,
    )
    for name in args.variants:
        impl, kwargs = VARIANTS[name]
        for seed in args.seeds:
            start = time.perf_counter()
            diag = {}
            if impl == "d3rlpy":
                if args.d3rlpy_python is None:
                    print("skipping d3rlpy: pass --d3rlpy-python", flush=True)
                    break
                with tempfile.TemporaryDirectory() as tmp:
                    npz = f"{tmp}/pendulum.npz"
                    _save_npz(data, npz)
                    cmd = [
                        args.d3rlpy_python,
                        __file__,
                        "--d3rlpy-npz",
                        npz,
                        "--seeds",
                        str(seed),
                        "--steps",
                        str(args.steps),
                        "--hidden",
                        str(args.hidden),
                        "--batch-size",
                        str(args.batch_size),
                        "--threads",
                        str(args.threads),
                    ]
                    proc = subprocess.run(cmd, capture_output=True, text=True, check=True)
                    score = json.loads(proc.stdout.strip().splitlines()[-1])["return"]
            else:
                score, diag = train_torchrl_api(
                    impl,
                    kwargs,
                    data,
                    steps=args.steps,
                    seed=seed,
                    hidden=args.hidden,
                    batch_size=args.batch_size,
                )
            row = {
                "variant": name,
                "seed": seed,
                "return": score,
                "steps": args.steps,
                "seconds": round(time.perf_counter() - start, 1),
                "dataset_average": float(returns.mean()),
                "pred_value": diag.get("pred_value"),
                "cql_gap": diag.get("cql_gap"),
            }
            print(json.dumps(row), flush=True)
            if args.out:
                with open(args.out, "a") as f:
                    f.write(json.dumps(row) + "\n")


if __name__ == "__main__":
    sys.exit(main())
