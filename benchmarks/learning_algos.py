"""IQL, CQL, TD3+BC, AWAC and BC on mixed-quality Pendulum datasets: ours vs TorchRL vs d3rlpy.

Every run gets the same data (``benchmarks/pendulum_mixed.py``, seed 0; ``--mix`` picks
one of its named datasets, ``default``, ``mixed`` or ``hard``), 128x128 ReLU
MLPs, batch 256, discount 0.99, target rate 0.005 and 5000 gradient steps; a training
seed fixes the initial weights and the sequence of sampled batches (the same batches
for every TorchRL-API variant). The deterministic policy is evaluated every
``--eval-every`` steps on the same 10 Pendulum-v1 episodes (reset seeds 10000-10009) for
every variant and seed; the final return is the headline number, with its normalized
score (0 = uniform random torques, 100 = the scripted swing-up controller, both on the
same 10 episodes).

Variants (``--algo`` picks the algorithm, ``--variants`` a subset of its variants):

* ``ours``: what :func:`torchrl_offline.trainers.algorithms.build_algorithm` builds
  (networks, loss with its defaults, learning rates) with ``hidden_sizes=(128, 128)``,
  trained as :class:`~torchrl_offline.trainers.offline.OfflineTrainer` does (sum of
  ``loss_keys``, one Adam step, target update, learning-rate schedule);
  ``ours_<ablation>`` are the same with one override (see :data:`VARIANTS`);
* ``torchrl``: TorchRL 0.14.1's loss built and trained as its
  ``sota-implementations`` offline script builds it, with that script's config
  (CQL: ``offline_config.yaml``, i.e. squared-error Bellman loss, CQL weight 1,
  Lagrange with threshold 5, stochastic backup, all learning rates 3e-4 and the
  behaviour-cloning actor loss for the first 40% of the steps as its
  ``policy_eval_start=40_000`` of 100_000; TD3+BC: ``config.yaml``, i.e. squared error,
  Adam with eps 1e-4, critic every step, actor and target update every 2nd step);
* ``d3rlpy``: d3rlpy 2.8.1 with its defaults for the algorithm (128x128 encoders, batch
  256), run by ``benchmarks/learning_pendulum_d3rlpy.py`` in the venv given by
  ``--d3rlpy-python`` (d3rlpy is not a dependency here).

Results are appended as JSON lines to ``--out``; ``--summarize`` turns such a file
into a markdown table (mean ± std and per-seed finals) and a JSON summary.

Usage::

    python benchmarks/learning_algos.py --algo cql --seeds 0 1 2 \\
        --d3rlpy-python /path/to/d3rlpy-venv/bin/python --out /tmp/learning.jsonl
    python benchmarks/learning_algos.py --summarize /tmp/learning.jsonl \\
        --json benchmarks/results/learning_pendulum.json
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import math
import pathlib
import statistics
import subprocess
import sys
import tempfile
import time
import warnings
from collections.abc import Callable

import numpy as np

HERE = pathlib.Path(__file__).resolve().parent
EVAL_SEED = 10_000
ALGOS = ("iql", "cql", "td3_bc", "awac", "bc")

#: variant name -> (implementation, overrides). ``ours`` overrides go to
#: ``build_algorithm``; ``torchrl`` overrides to the TorchRL-example builder.
VARIANTS: dict[str, dict[str, tuple[str, dict]]] = {
    "iql": {
        "ours": ("ours", {}),
        "d3rlpy": ("d3rlpy", {}),
        # ablations, one difference at a time
        "ours_constant_lr": ("ours", {"actor_lr_schedule": "constant"}),
        "ours_tanh_normal": ("ours", {"actor": "tanh_normal"}),
        "ours_no_eps": ("ours", {"action_eps": 0.0}),
        "ours_smooth_l1": ("ours", {"loss_function": "smooth_l1"}),
    },
    "cql": {
        "ours": ("ours", {}),
        "torchrl": ("torchrl", {}),
        "d3rlpy": ("d3rlpy", {}),
        # ablations
        "ours_w5": ("ours", {"min_q_weight": 5.0}),
        "ours_w1": ("ours", {"min_q_weight": 1.0}),
        "ours_actor_lr3e-4": ("ours", {"actor_lr": 3e-4}),
        # build_algorithm's entropy-temperature rate before it was set to the actor's
        "ours_alpha_lr3e-4": ("ours", {"alpha_lr": 3e-4}),
        "ours_stochastic_backup": ("ours", {"deterministic_backup": False}),
        # d3rlpy's target action: the policy's mean at s', not a draw
        "ours_mean_backup": ("ours", {"backup_action": "mean"}),
        # d3rlpy's conservative term: weight 5 times a Lagrange multiplier on the gap
        # minus 10, i.e. alpha' (5 gap - 50): our threshold is on the weighted gap
        "ours_d3rlpy_conservative": (
            "ours",
            {"min_q_weight": 5.0, "with_lagrange": True, "lagrange_thresh": 50.0},
        ),
        "ours_d3rlpy_conservative_mean_backup": (
            # and d3rlpy's target action
            "ours",
            {
                "min_q_weight": 5.0,
                "with_lagrange": True,
                "lagrange_thresh": 50.0,
                "backup_action": "mean",
            },
        ),
        # d3rlpy's entropy target: -1 per action dimension in units of the half-range
        # (its actions are scaled to [-1, 1]); on Pendulum's [-2, 2] that is -1 + log 2
        "ours_entropy_unit_box": ("ours", {"target_entropy": -1.0 + math.log(2.0)}),
        # d3rlpy's actor scale, exp(clamp(log_std, -20, 2)), for our biased softplus
        "ours_d3rlpy_log_std": ("ours", {"log_std_clamp": (-20.0, 2.0)}),
        "ours_lagrange": (
            # weight 5, Lagrange threshold 10 on the weighted gap (5 times stricter than
            # d3rlpy's, whose threshold is on the unweighted gap)
            "ours",
            {"min_q_weight": 5.0, "with_lagrange": True, "lagrange_thresh": 10.0},
        ),
        "ours_torchrl_settings": (
            # the hyperparameters of TorchRL's offline CQL example (without its BC warm-up)
            "ours",
            {
                "min_q_weight": 1.0,
                "with_lagrange": True,
                "lagrange_thresh": 5.0,
                "deterministic_backup": False,
                "actor_lr": 3e-4,
                "alpha_lr": 3e-4,
            },
        ),
        "ours_lagrange5": (
            # CQL_PRESETS["lagrange"]: weight 1, Lagrange threshold 5, stochastic backup,
            # with build_algorithm's learning rates
            "ours",
            {
                "min_q_weight": 1.0,
                "with_lagrange": True,
                "lagrange_thresh": 5.0,
                "deterministic_backup": False,
            },
        ),
        "torchrl_defaults": (
            # CQLLoss's constructor defaults instead of the example's config
            "torchrl",
            {
                "loss_function": "smooth_l1",
                "deterministic_backup": True,
                "with_lagrange": False,
                "lagrange_thresh": 0.0,
                "bc_fraction": 0.0,
            },
        ),
        "torchrl_no_bc_warmup": ("torchrl", {"bc_fraction": 0.0}),
        "torchrl_no_lagrange": ("torchrl", {"with_lagrange": False}),
        "torchrl_no_lagrange_w10": ("torchrl", {"with_lagrange": False, "min_q_weight": 10.0}),
    },
    "td3_bc": {
        "ours": ("ours", {}),
        "torchrl": ("torchrl", {}),
        "d3rlpy": ("d3rlpy", {}),
        "ours_unscaled_noise": ("ours", {"policy_noise": 0.1, "noise_clip": 0.25}),
        # the paper's (and d3rlpy's) targets, moved with the delayed actor
        "ours_target_delay2": ("ours", {"target_update_delay": 2}),
        "ours_unscaled_noise_target_delay2": (
            "ours",
            {"policy_noise": 0.1, "noise_clip": 0.25, "target_update_delay": 2},
        ),
        # d3rlpy scales actions to [-1, 1] (MinMaxActionScaler), so its BC term is
        # (h = 2 on Pendulum) 1/h^2 of ours next to the same Q term: alpha * h^2 is that
        "ours_alpha10": ("ours", {"alpha": 10.0}),
        "ours_alpha10_target_delay2": ("ours", {"alpha": 10.0, "target_update_delay": 2}),
    },
    "awac": {
        "ours": ("ours", {}),
        "d3rlpy": ("d3rlpy", {}),
        # TorchRL's TanhNormal actor (build_algorithm's AWAC actor before the Gaussian)
        "ours_tanh_normal": ("ours", {"actor": "tanh_normal"}),
        "ours_lambda1": ("ours", {"awac_lambda": 1.0}),
        "ours_lambda1_norm": (
            # d3rlpy's weighting: lambda 1, weights softmax-normalised over the batch
            "ours",
            {"awac_lambda": 1.0, "normalize_weights": True},
        ),
        "ours_tanh_normal_lambda1_norm": (
            "ours",
            {"actor": "tanh_normal", "awac_lambda": 1.0, "normalize_weights": True},
        ),
    },
    "bc": {
        "ours": ("ours", {}),
        "d3rlpy": ("d3rlpy", {}),
        "ours_lr1e-3": ("ours", {"actor_lr": 1e-3}),
    },
}


def _pendulum_mixed():
    spec = importlib.util.spec_from_file_location("pendulum_mixed", HERE / "pendulum_mixed.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def reference_returns(episodes: int, seed: int = EVAL_SEED) -> tuple[float, float]:
    """``(random, controller)`` mean returns on the evaluation episodes: the 0 and 100
    of the normalized score."""
    pm = _pendulum_mixed()
    rng = np.random.default_rng(seed)
    random = evaluate_policy(lambda obs: rng.uniform(-2.0, 2.0), episodes, seed)
    controller = evaluate_policy(pm.swing_up_action, episodes, seed)
    return random, controller


def evaluate_policy(act: Callable, episodes: int, seed: int = EVAL_SEED) -> float:
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


# ----------------------------------------------------------------------------- ours
def _clamp_log_std(built, low: float, high: float) -> None:
    """d3rlpy's actor scale: ``exp(clamp(log_std, low, high))`` of the raw head output, in
    place of ``NormalParamExtractor``'s biased softplus (a benchmark variant, not an option
    of the library's networks)."""
    import torch
    from torchrl.modules import NormalParamExtractor

    class ExpOfClamped(torch.nn.Module):
        def forward(self, x):
            return x.clamp(low, high).exp()

    modules = [*built.loss.actor_network.modules(), *built.policy.modules()]
    found = {id(m): m for m in modules if isinstance(m, NormalParamExtractor)}.values()
    if not found:
        raise SystemExit("log_std_clamp: the actor has no NormalParamExtractor")
    for module in found:
        module.scale_mapping = ExpOfClamped()


def build_ours(algo: str, overrides: dict, *, hidden: int, steps: int):
    """``build_algorithm`` at 128x128; returns (policy, update(batch, step))."""
    from torchrl.data import Bounded, Unbounded

    from torchrl_offline.trainers.algorithms import build_algorithm, make_lr_scheduler

    overrides = dict(overrides)
    log_std_clamp = overrides.pop("log_std_clamp", None)
    built = build_algorithm(
        algo,
        Unbounded(shape=(3,)),
        Bounded(-2.0, 2.0, (1,)),
        hidden_sizes=(hidden, hidden),
        **overrides,
    )
    if log_std_clamp is not None:
        _clamp_log_std(built, *log_std_clamp)
    scheduler = make_lr_scheduler(built, steps)
    delay, target_delay = built.policy_update_delay, built.target_update_delay

    def update(batch, step: int) -> None:
        out = built.loss(batch)
        # the delayed policy update (TD3+BC's 2) and target updates, as OfflineTrainer
        # does them: the critic term alone on the other steps (Adam leaves the actor
        # untouched)
        keys = built.loss_keys if step % delay == 0 else ("loss_qvalue",)
        loss = sum(out[k] for k in keys)
        built.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        built.optimizer.step()
        if built.target_updater is not None and step % target_delay == 0:
            built.target_updater.step()
        if scheduler is not None:
            scheduler.step()
        return out

    return built.policy, update


# ----------------------------------------------------------------------------- TorchRL
def _torchrl_tanh_normal_actor(hidden: int, spec):
    """TorchRL's sota CQL/IQL actor: ReLU MLP, biased softplus scale >= 0.1, TanhNormal."""
    from tensordict.nn import NormalParamExtractor, TensorDictModule
    from torch import nn
    from torchrl.envs.utils import ExplorationType
    from torchrl.modules import MLP, ProbabilisticActor, TanhNormal

    net = nn.Sequential(
        MLP(in_features=3, out_features=2, num_cells=[hidden, hidden], activation_class=nn.ReLU),
        NormalParamExtractor(scale_mapping="biased_softplus_1.0", scale_lb=0.1),
    )
    return ProbabilisticActor(
        TensorDictModule(net, in_keys=["observation"], out_keys=["loc", "scale"]),
        in_keys=["loc", "scale"],
        spec=spec,
        distribution_class=TanhNormal,
        distribution_kwargs={"low": spec.space.low, "high": spec.space.high, "tanh_loc": False},
        default_interaction_type=ExplorationType.RANDOM,
    )


def _torchrl_qvalue(hidden: int, in_keys=("observation", "action")):
    from torch import nn
    from torchrl.modules import MLP, ValueOperator

    return ValueOperator(
        MLP(in_features=4, out_features=1, num_cells=[hidden, hidden], activation_class=nn.ReLU),
        in_keys=list(in_keys),
    )


def build_torchrl_cql(overrides: dict, *, hidden: int, steps: int):
    """TorchRL's ``sota-implementations/cql/cql_offline.py`` with ``offline_config.yaml``."""
    import torch
    from torchrl.data import Bounded
    from torchrl.objectives import CQLLoss, SoftUpdate

    cfg = {
        "loss_function": "l2",
        "temperature": 1.0,
        "min_q_weight": 1.0,
        "max_q_backup": False,
        "deterministic_backup": False,
        "num_random": 10,
        "with_lagrange": True,
        "lagrange_thresh": 5.0,
        "bc_fraction": 0.4,  # policy_eval_start 40_000 of 100_000 gradient steps
    }
    cfg.update(overrides)
    bc_steps = int(cfg.pop("bc_fraction") * steps)
    spec = Bounded(-2.0, 2.0, (1,))
    actor = _torchrl_tanh_normal_actor(hidden, spec)
    qvalue = _torchrl_qvalue(hidden)
    loss = CQLLoss(actor, qvalue, **cfg)
    loss.make_value_estimator(gamma=0.99)
    updater = SoftUpdate(loss, tau=0.005)
    lr = 3e-4  # actor_lr = critic_lr; the alpha optimizer uses actor_lr, alpha' critic_lr
    optims = [
        torch.optim.Adam(list(loss.actor_network_params.flatten_keys().values()), lr=lr),
        torch.optim.Adam(list(loss.qvalue_network_params.flatten_keys().values()), lr=lr),
        torch.optim.Adam([loss.log_alpha], lr=lr),
    ]
    if loss.with_lagrange:
        optims.append(torch.optim.Adam([loss.log_alpha_prime], lr=lr))

    def update(batch, step: int) -> None:
        out = loss(batch)
        actor_loss = out["loss_actor"] if step > bc_steps else out["loss_actor_bc"]
        total = actor_loss + out["loss_qvalue"] + out["loss_cql"] + out["loss_alpha"]
        if loss.with_lagrange:
            total = total + out["loss_alpha_prime"]
        total.backward()
        for opt in optims:
            opt.step()
            opt.zero_grad(set_to_none=True)
        updater.step()
        if loss.with_lagrange:
            out.set("alpha_prime", loss.log_alpha_prime.detach().exp())
        return out

    return actor, update


def build_torchrl_td3_bc(overrides: dict, *, hidden: int, steps: int):
    """TorchRL's ``sota-implementations/td3_bc/td3_bc.py`` with its ``config.yaml``."""
    import torch
    from tensordict.nn import TensorDictModule, TensorDictSequential
    from torch import nn
    from torchrl.data import Bounded
    from torchrl.modules import MLP, TanhModule
    from torchrl.objectives import SoftUpdate, TD3BCLoss

    spec = Bounded(-2.0, 2.0, (1,))
    actor = TensorDictSequential(
        TensorDictModule(
            MLP(
                in_features=3,
                out_features=1,
                num_cells=[hidden, hidden],
                activation_class=nn.ReLU,
            ),
            in_keys=["observation"],
            out_keys=["param"],
        ),
        TanhModule(in_keys=["param"], out_keys=["action"], spec=spec),
    )
    qvalue = _torchrl_qvalue(hidden, in_keys=("action", "observation"))
    cfg = {"policy_noise": 0.2, "noise_clip": 0.5, "alpha": 2.5, "loss_function": "l2"}
    cfg.update(overrides)
    loss = TD3BCLoss(
        actor_network=actor,
        qvalue_network=qvalue,
        num_qvalue_nets=2,
        delay_actor=True,
        delay_qvalue=True,
        action_spec=spec,
        **cfg,
    )
    loss.make_value_estimator(gamma=0.99)
    updater = SoftUpdate(loss, eps=0.995)
    actor_opt = torch.optim.Adam(
        list(loss.actor_network_params.values(True, True)), lr=3e-4, eps=1e-4
    )
    critic_opt = torch.optim.Adam(
        list(loss.qvalue_network_params.values(True, True)), lr=3e-4, eps=1e-4
    )

    def update(batch, step: int) -> None:
        q_loss, metadata = loss.qvalue_loss(batch)
        critic_opt.zero_grad()
        q_loss.backward()
        critic_opt.step()
        if step % 2 == 0:
            actor_loss, _ = loss.actor_loss(batch)
            actor_opt.zero_grad()
            actor_loss.backward()
            actor_opt.step()
            updater.step()
        return metadata

    return actor, update


_TORCHRL_BUILDERS = {"cql": build_torchrl_cql, "td3_bc": build_torchrl_td3_bc}


# ----------------------------------------------------------------------------- runs
def train_torch(algo: str, impl: str, overrides: dict, data, seed: int, args) -> dict:
    """Trains one TorchRL-API variant and evaluates it every ``args.eval_every`` steps."""
    import torch
    from tensordict import TensorDict
    from torchrl.envs.utils import ExplorationType, set_exploration_type

    torch.manual_seed(seed)
    if impl == "ours":
        policy, update = build_ours(algo, overrides, hidden=args.hidden, steps=args.steps)
    else:
        policy, update = _TORCHRL_BUILDERS[algo](overrides, hidden=args.hidden, steps=args.steps)

    def act(obs):
        with torch.no_grad(), set_exploration_type(ExplorationType.DETERMINISTIC):
            td = TensorDict({"observation": torch.as_tensor(obs, dtype=torch.float32)}, [])
            return policy(td)["action"].numpy()

    g = torch.Generator().manual_seed(seed)
    n = data.numel()
    curve = []
    start = time.perf_counter()
    for step in range(1, args.steps + 1):
        out = update(data[torch.randint(n, (args.batch_size,), generator=g)], step)
        if step % args.eval_every == 0 or step == args.steps:
            curve.append((step, evaluate_policy(act, args.episodes)))
    last = {
        k: round(float(v.detach().float().mean()), 4)
        for k, v in out.items()
        if isinstance(v, torch.Tensor) and v.numel() > 0
    }
    seconds = time.perf_counter() - start
    return {"final": curve[-1][1], "curve": curve, "seconds": seconds, "last_losses": last}


def train_d3rlpy(algo: str, data, seed: int, args) -> dict:
    """Runs ``learning_pendulum_d3rlpy.py`` in the d3rlpy venv on the same arrays."""
    with tempfile.TemporaryDirectory() as tmp:
        npz = f"{tmp}/pendulum_mixed.npz"
        np.savez(
            npz,
            observations=data["observation"].numpy(),
            actions=data["action"].numpy(),
            rewards=data["next", "reward"].squeeze(-1).numpy(),
            terminals=data["next", "terminated"].squeeze(-1).numpy().astype(np.float32),
            timeouts=data["next", "truncated"].squeeze(-1).numpy().astype(np.float32),
        )
        cmd = [
            args.d3rlpy_python,
            str(HERE / "learning_pendulum_d3rlpy.py"),
            *("--data", npz, "--algo", algo, "--seeds", str(seed), "--jsonl"),
            *("--steps", str(args.steps), "--hidden", str(args.hidden)),
            *("--batch-size", str(args.batch_size), "--eval-every", str(args.eval_every)),
            *("--episodes", str(args.episodes), "--eval-seed", str(EVAL_SEED)),
            *("--threads", str(args.threads)),
        ]
        proc = subprocess.run(cmd, capture_output=True, text=True, check=True)
    return json.loads(proc.stdout.strip().splitlines()[-1])


# ----------------------------------------------------------------------------- summary
def _mean_se(values: list[float]) -> tuple[float, float]:
    mean = statistics.mean(values)
    se = statistics.stdev(values) / len(values) ** 0.5 if len(values) > 1 else 0.0
    return round(mean, 1), round(se, 1)


def summarize(rows: list[dict]) -> tuple[str, dict]:
    """Markdown table (mean ± standard error of final returns and normalized scores per
    algorithm, dataset and variant) and a JSON summary."""
    summary: dict[str, dict] = {}
    for row in rows:
        mix = row.get("mix", "default")
        entry = (
            summary.setdefault(row["algo"], {}).setdefault(mix, {}).setdefault(row["variant"], {})
        )
        entry.setdefault("finals", {})[str(row["seed"])] = round(row["final"], 1)
        if row.get("normalized") is not None:
            entry.setdefault("normalized", {})[str(row["seed"])] = row["normalized"]
        entry.setdefault("curves", {})[str(row["seed"])] = row["curve"]
    lines = [
        "| algorithm | dataset | variant | seeds | final return | normalized | per seed |",
        "|---|---|---|---:|---:|---:|---|",
    ]
    for algo, mixes in summary.items():
        for mix, variants in mixes.items():
            for variant, entry in variants.items():
                seeds = sorted(entry["finals"], key=int)
                finals = [entry["finals"][s] for s in seeds]
                entry["mean"], entry["se"] = _mean_se(finals)
                norm = ""
                if len(entry.get("normalized", {})) == len(seeds):
                    scores = [entry["normalized"][s] for s in seeds]
                    entry["normalized_mean"], entry["normalized_se"] = _mean_se(scores)
                    norm = f"{entry['normalized_mean']:.0f} ± {entry['normalized_se']:.0f}"
                per_seed = ", ".join(f"{f:.0f}" for f in finals)
                lines.append(
                    f"| {algo} | {mix} | {variant} | {len(seeds)} | "
                    f"{entry['mean']:.0f} ± {entry['se']:.0f} | {norm} | {per_seed} |"
                )
    return "\n".join(lines), summary


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--algo", choices=ALGOS, default="cql")
    parser.add_argument("--variants", nargs="+", default=None, help="default: ours torchrl d3rlpy")
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    parser.add_argument("--steps", type=int, default=5000)
    parser.add_argument("--hidden", type=int, default=128)
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument("--eval-every", type=int, default=1000)
    parser.add_argument("--episodes", type=int, default=10)
    parser.add_argument("--data-seed", type=int, default=0)
    parser.add_argument("--mix", default="default", help="a dataset of pendulum_mixed.MIXES")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--d3rlpy-python", default=None, help="python of a venv with d3rlpy")
    parser.add_argument("--out", default=None, help="append one JSON line per run here")
    parser.add_argument("--summarize", nargs="+", default=None, metavar="JSONL")
    parser.add_argument("--json", default=None, help="with --summarize: write the summary here")
    args = parser.parse_args()

    if args.summarize:
        rows = [
            json.loads(line)
            for path in args.summarize
            for line in pathlib.Path(path).read_text().splitlines()
            if line.startswith("{")  # d3rlpy's own log lines are skipped
        ]
        table, summary = summarize(rows)
        print(table)
        if args.json:
            pathlib.Path(args.json).write_text(json.dumps(summary, indent=1) + "\n")
        return

    import torch

    torch.set_num_threads(args.threads)
    warnings.filterwarnings("ignore", category=UserWarning)
    pm = _pendulum_mixed()
    data = pm.make_pendulum_mixed(pm.MIXES[args.mix], seed=args.data_seed)
    average = float(pm.episode_returns(data).mean())
    low, high = reference_returns(args.episodes)

    def normalized(ret: float) -> float:
        return round(100 * (ret - low) / (high - low), 1)

    print(
        f"dataset {args.mix}: {data.numel()} transitions, average return {average:.1f} "
        f"(normalized {normalized(average)}); random {low:.1f}, controller {high:.1f}",
        flush=True,
    )
    variants = args.variants or [
        v for v in ("ours", "torchrl", "d3rlpy") if v in VARIANTS[args.algo]
    ]
    for name in variants:
        impl, overrides = VARIANTS[args.algo][name]
        for seed in args.seeds:
            if impl == "d3rlpy":
                if args.d3rlpy_python is None:
                    print("skipping d3rlpy: pass --d3rlpy-python", flush=True)
                    break
                res = train_d3rlpy(args.algo, data, seed, args)
            else:
                res = train_torch(args.algo, impl, overrides, data, seed, args)
            row = {
                "algo": args.algo,
                "variant": name,
                "seed": seed,
                "final": res["final"],
                "curve": res["curve"],
                "seconds": round(res["seconds"], 1),
                "steps": args.steps,
                "mix": args.mix,
                "normalized": normalized(res["final"]),
                "dataset_average": average,
                "last_losses": res.get("last_losses"),
            }
            curve = " ".join(f"{s}:{r:.0f}" for s, r in res["curve"])
            print(
                f"{args.algo} {name:28s} seed {seed}: final {res['final']:8.1f} "
                f"(normalized {normalized(res['final'])}, {res['seconds']:.0f}s) curve {curve}",
                flush=True,
            )
            if args.out:
                with open(args.out, "a") as f:
                    f.write(json.dumps(row) + "\n")


if __name__ == "__main__":
    sys.exit(main())
