"""Off-policy evaluation and policy selection on gymnasium's ``Pendulum-v1``.

A DOPE-style benchmark (Fu et al., ICLR 2021) of the estimators of
:mod:`torchrl_offline.ope`:

1. behaviour data: ``collect_dataset`` runs a per-step mixture of a noisy swing-up
   controller (70%, Gaussian noise sigma 0.8) and uniform random torques (30%), which
   logs the exact behaviour log-probability of every action;
2. candidate policies of different quality, all stochastic with known densities:
   the controller with noise 0.2 / 0.5 / 1.0, a damped controller, a controller that
   pushes the wrong way, pure noise around zero torque, uniform random torques, two
   behaviour-cloning checkpoints (``BCLoss``) and an IQL checkpoint (``IQLLoss``),
   both trained on the logged data;
3. ground truth: the discounted return of many on-policy rollouts of every candidate;
4. every estimator (IS, WIS, PDIS, WPDIS, FQE, DR and WDR with the fitted FQE, and the
   model-based estimator, whose dynamics ensemble is fitted once on the logged data and
   serves every candidate) estimates every candidate from the logged data alone; the script reports, per estimator, the
   mean relative error, Spearman rank correlation and regret@1 / regret@3 (normalized
   by the range of the true values), and the fraction of candidates whose 95% interval
   covers the true value, as Markdown tables; FQE's interval is the bootstrap over
   ``--fqe-refits`` refits on resampled episodes, and its former interval (a bootstrap
   over the initial states of one fit) is reported next to it.

The discount is 0.98: Pendulum episodes are cut at 200 steps, and ``0.98 ** 200 < 0.02``,
so the infinite-horizon value that FQE bootstraps and the 200-step return that the
rollouts measure agree to within about 2% of the tail.

Usage::

    python benchmarks/ope_policy_selection.py             # about 16 minutes, one thread
    python benchmarks/ope_policy_selection.py --reduced   # a smaller FQE: about 7 minutes
    python benchmarks/ope_policy_selection.py --quick     # a smoke run of a minute
    python benchmarks/ope_policy_selection.py --json run.json   # keep the raw results
    python benchmarks/ope_policy_selection.py --report run.json # re-print their tables
    # the model-based estimator alone, next to the other estimators of a saved run
    python benchmarks/ope_policy_selection.py --reduced --estimators Model \
        --merge benchmarks/results/ope_policy_selection_reduced.json --json run.json
"""

from __future__ import annotations

import argparse
import copy
import json
import math
import tempfile
import time
import warnings
from pathlib import Path

import gymnasium as gym
import numpy as np
import torch
from tensordict import TensorDict
from tensordict.nn import TensorDictModule
from torch import nn
from torchrl.data import Bounded
from torchrl.modules import MLP, NormalParamExtractor, ProbabilisticActor, TanhNormal
from torchrl.objectives import SoftUpdate

from torchrl_offline.data.behavior import GaussianNoisePolicy, MixturePolicy, UniformRandomPolicy
from torchrl_offline.data.collect import collect_dataset
from torchrl_offline.data.minari import load_minari
from torchrl_offline.objectives.bc import BCLoss
from torchrl_offline.objectives.iql import IQLLoss
from torchrl_offline.ope.doubly_robust import DoublyRobust, WeightedDoublyRobust
from torchrl_offline.ope.fqe import FQE
from torchrl_offline.ope.importance import (
    ImportanceSampling,
    PerDecisionImportanceSampling,
    WeightedImportanceSampling,
    WeightedPerDecisionImportanceSampling,
)
from torchrl_offline.ope.model_based import ModelBasedOPE
from torchrl_offline.ope.policy import EvaluationPolicy
from torchrl_offline.ope.result import OPEError, OPEResult, OPEWarning
from torchrl_offline.ope.selection import rank_policies, relative_error, selection_metrics
from torchrl_offline.ope.uncertainty import bootstrap_interval

ENV_ID = "Pendulum-v1"
MAX_TORQUE = 2.0
ACTION_SPEC = Bounded(-MAX_TORQUE, MAX_TORQUE, shape=(1,))


class SwingUp(nn.Module):
    """Energy-pumping swing-up with a PD balancer near the top, times ``gain``.

    Pendulum-v1 (``theta = 0`` upright) follows ``theta'' = 15 sin(theta) + 3 u``; the energy
    ``E = w^2 / 2 + 15 cos(theta)`` is 15 at rest upright and ``dE/dt = 3 u w``.
    """

    def __init__(self, gain: float = 1.0):
        super().__init__()
        self.gain = gain

    def forward(self, obs: torch.Tensor) -> torch.Tensor:
        cos, sin, w = obs[..., 0], obs[..., 1], obs[..., 2]
        theta = torch.atan2(sin, cos)
        energy = 0.5 * w**2 + 15.0 * cos
        pump = (0.5 * (15.0 - energy) * w).clamp(-MAX_TORQUE, MAX_TORQUE)
        pump = torch.where(w.abs() < 1e-3, torch.full_like(pump, MAX_TORQUE), pump)
        balance = (-(10.0 * theta + 2.0 * w)).clamp(-MAX_TORQUE, MAX_TORQUE)
        u = torch.where(cos > 0.85, balance, pump)
        return (self.gain * u).clamp(-MAX_TORQUE, MAX_TORQUE).unsqueeze(-1)


def controller(gain: float = 1.0) -> TensorDictModule:
    return TensorDictModule(SwingUp(gain), ["observation"], ["action"])


def noisy(gain: float, sigma: float) -> GaussianNoisePolicy:
    return GaussianNoisePolicy(controller(gain), ACTION_SPEC, sigma=sigma)


def tanh_actor(hidden: int) -> ProbabilisticActor:
    net = nn.Sequential(
        MLP(in_features=3, out_features=2, num_cells=[hidden, hidden]), NormalParamExtractor()
    )
    return ProbabilisticActor(
        TensorDictModule(net, ["observation"], ["loc", "scale"]),
        in_keys=["loc", "scale"],
        spec=ACTION_SPEC,
        distribution_class=TanhNormal,
        distribution_kwargs={"low": -MAX_TORQUE, "high": MAX_TORQUE},
    )


# ----------------------------------------------------------------------------- candidates
def train_bc(buffer, steps: int, checkpoints: list[int], hidden: int, seed: int) -> dict:
    torch.manual_seed(seed)
    actor = tanh_actor(hidden)
    loss = BCLoss(actor)
    optim = torch.optim.Adam(loss.parameters(), lr=1e-3)
    out = {}
    for step in range(1, steps + 1):
        batch = buffer.sample()
        value = loss(batch)["loss_bc"]
        optim.zero_grad()
        value.backward()
        optim.step()
        if step in checkpoints:
            out[f"bc-{step}"] = copy.deepcopy(actor)
    return out


def train_iql(buffer, steps: int, hidden: int, seed: int) -> ProbabilisticActor:
    torch.manual_seed(seed)
    actor = tanh_actor(hidden)
    qvalue = TensorDictModule(
        MLP(in_features=4, out_features=1, num_cells=[hidden, hidden]),
        ["observation", "action"],
        ["state_action_value"],
    )
    value = TensorDictModule(
        MLP(in_features=3, out_features=1, num_cells=[hidden, hidden]),
        ["observation"],
        ["state_value"],
    )
    loss = IQLLoss(actor, qvalue, value)
    loss.make_value_estimator(gamma=0.99)
    updater = SoftUpdate(loss, tau=0.005)
    optim = torch.optim.Adam(loss.parameters(), lr=3e-4)
    for _ in range(steps):
        batch = buffer.sample()
        losses = loss(batch)
        total = losses["loss_actor"] + losses["loss_qvalue"] + losses["loss_value"]
        optim.zero_grad()
        total.backward()
        optim.step()
        updater.step()
    return actor


def candidates(buffer, args) -> dict:
    policies = {
        "expert-0.2": noisy(1.0, 0.2),
        "expert-0.5": noisy(1.0, 0.5),
        "expert-1.0": noisy(1.0, 1.0),
        "damped-0.3": noisy(0.3, 0.3),
        "reversed-0.5": noisy(-1.0, 0.5),
        "zero-0.5": noisy(0.0, 0.5),
        "uniform": UniformRandomPolicy(ACTION_SPEC),
    }
    early = max(1, args.train_steps // 10)
    policies.update(train_bc(buffer, args.train_steps, [early, args.train_steps], 64, args.seed))
    policies[f"iql-{args.train_steps}"] = train_iql(buffer, args.train_steps, 64, args.seed)
    return policies


# ----------------------------------------------------------------------------- ground truth
@torch.no_grad()
def true_value(policy, episodes: int, gamma: float, seed: int) -> tuple[float, float]:
    """Mean discounted return of ``episodes`` on-policy rollouts, and its standard error."""
    sampler = EvaluationPolicy(policy)
    env = gym.vector.SyncVectorEnv([lambda: gym.make(ENV_ID) for _ in range(episodes)])
    obs, _ = env.reset(seed=seed)
    returns = np.zeros(episodes)
    alive = np.ones(episodes, dtype=bool)
    discount = 1.0
    torch.manual_seed(seed)
    while alive.any():
        td = TensorDict({"observation": torch.as_tensor(obs, dtype=torch.float32)}, [episodes])
        action = sampler.sample(td).reshape(episodes, 1).clamp(-MAX_TORQUE, MAX_TORQUE)
        obs, reward, terminated, truncated, _ = env.step(action.numpy().astype(np.float32))
        returns += alive * discount * reward
        discount *= gamma
        alive &= ~(terminated | truncated)
    env.close()
    return float(returns.mean()), float(returns.std(ddof=1) / math.sqrt(episodes))


# ----------------------------------------------------------------------------- estimators
def estimate_all(policy, buffer, args) -> dict:
    # Every candidate is stochastic and its truth comes from sampling it.
    common = {
        "gamma": args.gamma,
        "n_bootstrap": args.n_bootstrap,
        "seed": args.seed,
        "policy_mode": "stochastic",
    }
    out = {}
    wanted = args.estimators
    for name, cls in (
        ("IS", ImportanceSampling),
        ("WIS", WeightedImportanceSampling),
        ("PDIS", PerDecisionImportanceSampling),
        ("WPDIS", WeightedPerDecisionImportanceSampling),
    ):
        if name in wanted:
            out[name] = _estimate(cls(policy, **common), buffer)
    if "Model" in wanted:
        out["Model"] = _estimate(ModelBasedOPE(policy, model=args.model, **common), buffer)
    if not {"FQE", "DR", "WDR"} & set(wanted):
        return out
    fqe = FQE(
        policy,
        num_steps=args.fqe_steps,
        batch_size=256,
        lr=args.fqe_lr,
        target_update_interval=args.fqe_target_interval,
        num_cells=(args.fqe_cells, args.fqe_cells),
        num_action_samples=4,
        n_refits=args.fqe_refits,
        **common,
    )
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", OPEWarning)
        out["FQE"] = fqe.estimate(buffer)
    # FQE's former interval, over the initial states of the main fit only
    low, high = bootstrap_interval(
        out["FQE"].per_episode, n_bootstrap=args.n_bootstrap, seed=args.seed
    )
    out["FQE"].diagnostics["initial_states_ci"] = [low, high]
    out["DR"] = _estimate(DoublyRobust(policy, fqe, **common), buffer)
    out["WDR"] = _estimate(WeightedDoublyRobust(policy, fqe, **common), buffer)
    return {name: out[name] for name in ESTIMATORS if name in out and name in wanted}


#: The estimators of the benchmark, in the order of its tables.
ESTIMATORS = ("IS", "WIS", "PDIS", "WPDIS", "FQE", "DR", "WDR", "Model")


def fit_model(buffer, args):
    """The dynamics ensemble of the model-based estimator, fitted once on the logged data
    (Pendulum never terminates); ``(model, seconds, updates, holdout MSE)``."""
    from torchrl_offline.models import fit_dynamics

    fitted = fit_dynamics(
        buffer,
        hidden_sizes=tuple(args.model_hidden),
        max_updates=args.model_updates,
        termination_fn="pendulum",
        seed=args.seed,
    )
    return fitted.model, fitted.seconds, fitted.updates, fitted.holdout_mse


def merge_saved(path: Path, truth: dict, estimates: dict) -> dict:
    """The estimates of a saved run for the estimators not run here, when its ground
    truth is this run's (same seeds: same data, candidates and rollouts)."""
    saved = json.loads(path.read_text())
    for name, (value, _) in truth.items():
        old = saved["truth"].get(name)
        if old is None or not math.isclose(old[0], value, rel_tol=1e-6, abs_tol=1e-6):
            raise SystemExit(f"--merge {path}: its true value of {name} differs ({old} vs {value})")
    merged = {
        est: {n: OPEResult(**r) if r else None for n, r in results.items()}
        for est, results in saved["estimates"].items()
        if est not in estimates
    }
    merged.update(estimates)
    return {est: merged[est] for est in ESTIMATORS if est in merged}


def _estimate(estimator, buffer) -> OPEResult | None:
    """The estimate, or ``None`` when the estimator refuses the data (e.g. all weights 0)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", OPEWarning)
        try:
            return estimator.estimate(buffer)
        except OPEError as err:
            print(f"    {type(estimator).__name__} failed: {str(err)[:100]}")
            return None


def _refits(results: dict) -> str:
    counts = {r.diagnostics.get("n_refits") for r in results.values() if r is not None}
    return ", ".join(str(c) for c in sorted(c for c in counts if c is not None))


def _cell(result: OPEResult | None) -> str:
    if result is None:
        return "failed"
    flag = "*" if result.warnings else ""
    return f"{result.value:.1f}{flag}"


def _covers(result: OPEResult | None, value: float, interval: str = "ci") -> bool:
    if result is None:
        return False
    if interval == "initial_states":
        low, high = result.diagnostics["initial_states_ci"]
    else:
        low, high = result.ci_low, result.ci_high
    return low <= value <= high


def coverage(truth: dict, results: dict, interval: str = "ci") -> float:
    """Fraction of the policies whose interval covers the true value (failed: not covered)."""
    return sum(_covers(results[n], truth[n][0], interval) for n in truth) / len(truth)


def markdown_tables(truth: dict, estimates: dict, metrics: dict, gamma: float) -> str:
    names = list(truth)
    estimators = list(metrics)
    lines = [
        "| estimator | policies estimated | relative error (mean) | relative error (median) "
        "| Spearman | regret@1 | regret@3 | 95% interval covers the truth |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for est in estimators:
        m = metrics[est]
        lines.append(
            f"| {est} | {m['policies']}/{len(names)} | {m['relative_error']:.3f} | "
            f"{m['median_relative_error']:.3f} | "
            f"{m['spearman']:.3f} | {m['regret@1']:.3f} | {m.get('regret@3', math.nan):.3f} | "
            f"{coverage(truth, estimates[est]):.0%} |"
        )
    fqe = estimates.get("FQE", {})
    if any(r is not None and "initial_states_ci" in r.diagnostics for r in fqe.values()):
        lines.append(
            f"| FQE, initial-state interval | | | | | | | "
            f"{coverage(truth, fqe, 'initial_states'):.0%} |"
        )
        lines += ["", "FQE's intervals per policy:", ""]
        lines.append(
            "| policy | true value | FQE | refit interval (t, "
            f"{_refits(fqe)} refits) | initial-state interval |"
        )
        lines.append("|---|---|---|---|---|")
        for name in names:
            r = fqe[name]
            value, se = truth[name]
            low, high = r.diagnostics["initial_states_ci"]
            lines.append(
                f"| {name} | {value:.1f} ± {se:.1f} | {_cell(r)} | "
                f"[{r.ci_low:.1f}, {r.ci_high:.1f}]{'' if _covers(r, value) else ' (misses)'} | "
                f"[{low:.1f}, {high:.1f}]"
                f"{'' if _covers(r, value, 'initial_states') else ' (misses)'} |"
            )
    lines += ["", f"Estimates per policy (discounted return, gamma = {gamma}):", ""]
    lines.append("| policy | true value | " + " | ".join(estimators) + " |")
    lines.append("|---|---|" + "---|" * len(estimators))
    for name in names:
        value, se = truth[name]
        cells = " | ".join(_cell(estimates[est][name]) for est in estimators)
        lines.append(f"| {name} | {value:.1f} ± {se:.1f} | {cells} |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=20000, help="logged transitions")
    parser.add_argument("--gamma", type=float, default=0.98)
    parser.add_argument("--truth-episodes", type=int, default=300)
    parser.add_argument("--train-steps", type=int, default=2000, help="BC / IQL updates")
    parser.add_argument("--fqe-steps", type=int, default=4000)
    parser.add_argument("--fqe-lr", type=float, default=1e-3)
    parser.add_argument("--fqe-target-interval", type=int, default=20)
    parser.add_argument("--fqe-cells", type=int, default=128)
    parser.add_argument("--fqe-refits", type=int, default=10, help="FQE's bootstrap refits")
    parser.add_argument("--n-bootstrap", type=int, default=1000)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--json", type=Path, default=None, help="write the raw results here")
    parser.add_argument("--quick", action="store_true", help="tiny budget (smoke run)")
    parser.add_argument(
        "--reduced",
        action="store_true",
        help="FQE with 2,000 updates of a 2x64 critic (the reduced run of docs/ope.md)",
    )
    parser.add_argument("--report", type=Path, default=None, help="re-print a saved --json run")
    parser.add_argument(
        "--estimators",
        default=",".join(ESTIMATORS),
        help=f"comma-separated, from {','.join(ESTIMATORS)} (default: all)",
    )
    parser.add_argument("--model-updates", type=int, default=5000, help="dynamics fit cap")
    parser.add_argument("--model-hidden", type=int, nargs="+", default=[200, 200, 200, 200])
    parser.add_argument(
        "--merge",
        type=Path,
        default=None,
        help="report next to the other estimators of this saved --json run (same seeds)",
    )
    args = parser.parse_args()
    args.estimators = [e.strip() for e in args.estimators.split(",") if e.strip()]
    if unknown := set(args.estimators) - set(ESTIMATORS):
        parser.error(f"unknown estimators {sorted(unknown)}; choose from {', '.join(ESTIMATORS)}")
    if args.report is not None:
        report_from_json(args.report)
        return
    if args.reduced:
        args.fqe_steps, args.fqe_cells = 2000, 64
        args.model_updates, args.model_hidden = 2000, [200, 200, 200]
    if args.quick:
        args.steps, args.truth_episodes, args.train_steps = 2000, 40, 100
        args.fqe_steps, args.n_bootstrap = 200, 200
        args.model_updates, args.model_hidden = 100, [32, 32]
    torch.set_num_threads(args.threads)
    timings = {}
    with tempfile.TemporaryDirectory(prefix="ope_benchmark_") as tmp:
        t0 = time.perf_counter()
        behaviour = MixturePolicy(
            [noisy(1.0, 0.8), UniformRandomPolicy(ACTION_SPEC)], [0.7, 0.3], per="step"
        )
        collect_dataset(
            ENV_ID,
            behaviour,
            args.steps,
            dataset_id="pendulum/ope-behaviour-v0",
            root=tmp,
            seed=args.seed,
        )
        buffer = load_minari(
            "pendulum/ope-behaviour-v0", root=tmp, cache_dir=Path(tmp) / "cache", batch_size=256
        )
        timings["collect"] = time.perf_counter() - t0

        t0 = time.perf_counter()
        policies = candidates(buffer, args)
        timings["train candidates"] = time.perf_counter() - t0

        t0 = time.perf_counter()
        truth = {
            name: true_value(pol, args.truth_episodes, args.gamma, seed=10_000 + i)
            for i, (name, pol) in enumerate(policies.items())
        }
        truth_behaviour = true_value(behaviour, args.truth_episodes, args.gamma, seed=99_999)
        timings["ground truth"] = time.perf_counter() - t0

        args.model = None
        if "Model" in args.estimators:
            args.model, seconds, updates, mse = fit_model(buffer, args)
            timings["model fit"] = seconds
            print(f"dynamics model: {updates} updates in {seconds:.0f} s, held-out MSE {mse:.4f}")

        t0 = time.perf_counter()
        per_policy = {}
        for name, pol in policies.items():
            t1 = time.perf_counter()
            per_policy[name] = estimate_all(pol, buffer, args)
            print(
                f"{name:>14}: true {truth[name][0]:8.2f}  "
                + "  ".join(f"{k} {_cell(v):>8}" for k, v in per_policy[name].items())
                + f"  ({time.perf_counter() - t1:.0f} s)",
                flush=True,
            )
        timings["estimates"] = time.perf_counter() - t0

    estimators = list(next(iter(per_policy.values())))
    estimates = {est: {n: per_policy[n][est] for n in policies} for est in estimators}
    if args.merge is not None:
        estimates = merge_saved(args.merge, truth, estimates)
        estimators = list(estimates)
    metrics = report(truth, truth_behaviour, estimates, args.steps, args.gamma)
    print()
    print("timings (s): " + ", ".join(f"{k} {v:.0f}" for k, v in timings.items()))
    if args.json is not None:
        args.json.write_text(
            json.dumps(
                {
                    "args": {k: str(v) for k, v in vars(args).items() if k != "model"},
                    "truth": truth,
                    "behaviour_truth": truth_behaviour,
                    "estimates": {
                        est: {n: r.as_dict() if r else None for n, r in estimates[est].items()}
                        for est in estimators
                    },
                    "metrics": metrics,
                    "timings": timings,
                },
                indent=1,
            )
        )


def report(truth: dict, truth_behaviour, estimates: dict, steps: int, gamma: float) -> dict:
    """Prints the Markdown tables; returns the metrics of every estimator.

    Metrics are computed over the policies an estimator could estimate (see the
    ``policies estimated`` column).
    """
    true_values = {n: v[0] for n, v in truth.items()}
    metrics = {}
    for est, results in estimates.items():
        ok = {n: r for n, r in results.items() if r is not None}
        paired = {n: true_values[n] for n in ok}
        metrics[est] = selection_metrics(ok, paired, ks=(1, 3))
        metrics[est]["median_relative_error"] = float(relative_error(ok, paired).median())
        metrics[est]["policies"] = len(ok)
    print(
        f"Pendulum-v1, {steps} logged transitions, {len(truth)} candidate policies, "
        f"gamma {gamma}; behaviour value {truth_behaviour[0]:.1f}; "
        f"true best: {rank_policies(true_values)[0]}"
    )
    print(markdown_tables(truth, estimates, metrics, gamma))
    return metrics


def report_from_json(path: Path) -> None:
    """Re-prints the tables of a saved run (with the current metric definitions)."""
    saved = json.loads(path.read_text())
    estimates = {
        est: {n: OPEResult(**r) if r else None for n, r in results.items()}
        for est, results in saved["estimates"].items()
    }
    report(
        saved["truth"],
        saved["behaviour_truth"],
        estimates,
        int(saved["args"]["steps"]),
        float(saved["args"]["gamma"]),
    )
    print("timings (s): " + ", ".join(f"{k} {v:.0f}" for k, v in saved["timings"].items()))


if __name__ == "__main__":
    main()
