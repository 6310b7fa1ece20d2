"""The learning-quality table: every algorithm on every benchmark dataset, several seeds.

Algorithms (:data:`ALGOS`): ours, as :func:`torchrl_offline.trainers.algorithms.build_algorithm`
builds them (``cql``, ``iql``, ``awac``, ``td3_bc``, ``bc``; on a discrete task they resolve
to ``discrete_*`` and ``td3_bc`` is skipped), and TorchRL 0.14.1's own losses
(``torchrl_cql``, ``torchrl_iql``, ``torchrl_td3_bc``; on a discrete task
``DiscreteCQLLoss`` and ``DiscreteIQLLoss``) given the same networks, the same settings
where TorchRL has them (loss function, expectile, temperature, CQL weight, backups,
learning rates, IQL's cosine actor schedule, TD3+BC's actor update every 2nd step) and the
same budget. Every run goes through :func:`torchrl_offline.trainers.offline.train` with
observation normalisation, batch 256 and the deterministic policy evaluated every
``--eval-every`` steps over ``--episodes`` episodes (reset seeds from the run's seed, the
same episodes for every algorithm).

Datasets are those of ``benchmarks/make_datasets.py`` (``<root>/<task>/<level>-v0``; a
missing one is generated first). Scores are D4RL-normalized with the dataset's reference
returns: ``last`` is the final evaluation, ``best`` the best evaluation after step 0.

Resumable: each finished ``(algo, task, level, seed)`` run appends one JSON line (settings,
learning curve, last and best) to ``--out``; a run whose settings match a line already
there is skipped, so the table fills up over several invocations (``--only`` picks a
subset, e.g. ``--only pendulum`` or ``--only iql,torchrl_iql pendulum/medium``).
``--report`` builds the markdown table (rows: algorithms, columns: datasets,
``last / best (± std)``, plus the behaviour data's normalized return), the checks of
issue 6 and one learning-curve PNG per dataset, from whatever runs are finished.

Default budget (``Budget``; the reasons and measured updates/s are in
``docs/benchmarks.md``): 5,000 gradient steps per run, batch 256, evaluation every 1,000
steps over 5 episodes, seeds 0 1 2, every network 2x64, BCQ's and BEAR's behaviour VAE
included (``--hidden 0`` gives the papers'
2x256 / 3x256, ``--steps 1000000 --eval-every 5000 --episodes 10`` the papers' budget).
Variants are tables of their own, stored and reported apart from the plain one:
``--set awac_lambda=1.0`` passes hyperparameters to our rows (with ``--algos awac``),
``--reward-scale`` scales every row's rewards to a return range of 1000.
d3rlpy's rows (``D3RLPY_ROWS``) come from ``benchmarks/learning_table_d3rlpy.py``, run
in d3rlpy's virtualenv on the arrays ``--export-npz DIR`` writes, with the same budget,
into the same results file.
Usage::

    python benchmarks/learning_table.py --speed --only pendulum/medium   # updates/s
    python benchmarks/learning_table.py --only pendulum                   # run (resumable)
    python benchmarks/learning_table.py --report --only pendulum \\
        --markdown outputs/learning_table.md --plots docs/img
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import math
import os
import statistics
import sys
import time
from collections import defaultdict
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
from torchrl.objectives import TD3BCLoss

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
DEFAULT_ROOT = REPO / "outputs" / "datasets"
DEFAULT_OUT = HERE / "results" / "table_runs.jsonl"

#: Algorithms of the table, in row order.
ALGOS = (
    "cql",
    "iql",
    "awac",
    "td3_bc",
    "bc",
    "rebrac",
    "edac",
    "sac_n",
    "bcq",
    "bear",
    "awr",
    "cal_ql",
    "mopo",
    "combo",
    "torchrl_cql",
    "torchrl_iql",
    "torchrl_td3_bc",
)
#: d3rlpy 2.8.1's implementations, run by ``benchmarks/learning_table_d3rlpy.py`` in its
#: own virtualenv on the arrays ``--export-npz`` writes; reported after our rows.
D3RLPY_ROWS = (
    "d3rlpy_rebrac",
    "d3rlpy_bcq",
    "d3rlpy_bear",
    "d3rlpy_cal_ql",
    "d3rlpy_iql",
    "d3rlpy_cql",
    "d3rlpy_awac",
    "d3rlpy_td3_bc",
)
#: Value-based algorithms (the medium-replay check compares them with BC).
VALUE_BASED = ("cql", "iql", "awac", "td3_bc")
#: Ours -> TorchRL's built-in loss of the same algorithm.
TORCHRL_TWIN = {"cql": "torchrl_cql", "iql": "torchrl_iql", "td3_bc": "torchrl_td3_bc"}
#: Algorithms with no discrete-action variant.
CONTINUOUS_ONLY = (
    "td3_bc",
    "torchrl_td3_bc",
    "rebrac",
    "edac",
    "sac_n",
    "bear",
    "cal_ql",
    "mopo",
    "combo",
    *(row for row in D3RLPY_ROWS if row != "d3rlpy_bcq"),  # d3rlpy's discrete one is BCQ
)
#: ``--set`` keys that choose networks, not loss settings: they apply to TorchRL's rows
#: too, so that ours and TorchRL's losses train the same networks (``actor=tanh_normal``
#: is the actor of TorchRL's offline examples for IQL and AWAC).
NETWORK_SETTINGS = ("actor",)
#: The model-based rows' (MOPO, COMBO) dynamics-fit cap: their ensemble (7 members, 5
#: elites, the table's network sizes) fits until early stopping or this many updates,
#: whichever comes first; the fit's cost is recorded apart from the policy's (``"model"``
#: in each record).
MODEL_FIT_MAX_UPDATES = 5_000


def _load_module(name: str):
    if name in sys.modules:
        return sys.modules[name]
    spec = importlib.util.spec_from_file_location(name, HERE / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


def datasets_module():
    """``benchmarks/make_datasets.py`` as a module (tasks, levels, dataset ids)."""
    return _load_module("make_datasets")


# ----------------------------------------------------------------------------- settings
@dataclass(frozen=True)
class Budget:
    """The settings of one table; a finished run counts only for the same settings.

    Attributes:
        steps: gradient steps per run.
        eval_every: steps between evaluations (also evaluated at step 0 and at the end).
        episodes: evaluation episodes.
        batch_size: transitions per update.
        hidden: hidden sizes of every network, or ``None`` for each algorithm's own
            default (2x256; 3x256 for CQL and AWAC).
        normalize: train on normalised observations.
        overrides: ``(name, value)`` hyperparameters passed to ``build_algorithm`` for
            our rows (a variant such as ``awac_lambda=1.0``); TorchRL's rows take none.
        reward_scale: multiply rewards by 1000 / (max - min episode return) of the
            dataset (the IQL paper's locomotion recipe), for every row.
    """

    steps: int = 5_000
    eval_every: int = 1_000
    episodes: int = 5
    batch_size: int = 256
    hidden: tuple[int, ...] | None = (64, 64)
    normalize: bool = True
    overrides: tuple[tuple[str, Any], ...] = ()
    reward_scale: bool = False

    def key(self) -> dict[str, Any]:
        """The settings as stored with each run; the variant fields only when set, so
        that runs of the plain table keep matching."""
        d = asdict(self)
        d["hidden"] = list(self.hidden) if self.hidden is not None else None
        if self.overrides:
            d["overrides"] = {k: v for k, v in self.overrides}
        else:
            del d["overrides"]
        if not self.reward_scale:
            del d["reward_scale"]
        return d


def is_discrete(task: str) -> bool:
    """Whether the task's behaviour agent (and so its action space) is discrete."""
    return datasets_module().agents.TASKS[task].algo == "dqn"


def algos_for(task: str, algos: Sequence[str] = ALGOS) -> list[str]:
    """The algorithms of ``algos`` that apply to ``task``."""
    return [a for a in algos if not (is_discrete(task) and a in CONTINUOUS_ONLY)]


# ----------------------------------------------------------------------------- TorchRL
def build_torchrl(
    name: str,
    observation_spec,
    action_spec,
    *,
    hidden: tuple[int, ...] | None = None,
    actor: str | None = None,
    observation_norm: tuple[torch.Tensor, torch.Tensor] | None = None,
):
    """TorchRL's own loss for ``name`` (``"torchrl_cql"``, ``"torchrl_iql"``,
    ``"torchrl_td3_bc"``) with the networks, settings and optimizer of ours.

    ``actor`` picks IQL's continuous actor as ``build_algorithm``'s hyperparameter of the
    same name does (``"gaussian"``, the default, or TorchRL's ``"tanh_normal"``).

    Returns a :class:`~torchrl_offline.trainers.algorithms.Algorithm`, so
    :func:`~torchrl_offline.trainers.offline.train` runs it exactly as it runs ours.
    """
    from torchrl.modules import ValueOperator
    from torchrl.objectives import (
        CQLLoss,
        DiscreteCQLLoss,
        DiscreteIQLLoss,
        IQLLoss,
        SoftUpdate,
    )

    # The same network builders build_algorithm uses.
    from torchrl_offline.objectives.declaration import collect_parameters
    from torchrl_offline.objectives.networks import NetworkFactory
    from torchrl_offline.trainers import algorithms as A

    base = name.removeprefix("torchrl_")
    obs_spec = A._leaf(observation_spec, "observation")
    act_spec = A._leaf(action_spec, "action")
    discrete = A._is_discrete(act_spec)
    ours = f"discrete_{base}" if discrete else base
    # TorchRL's CQL row keeps the paper's fixed conservative weight (the "mujoco" preset):
    # TorchRL's Lagrange form is not the paper's (docs/objectives.md, "Drop-in status")
    hp = A.algorithm_defaults(ours, preset="mujoco" if ours == "cql" else None)
    if hidden is not None:
        hp["hidden_sizes"] = tuple(hidden)
    if actor is not None:
        hp["actor"] = actor
    nets = NetworkFactory(A._obs_dim(obs_spec), act_spec, tuple(hp["hidden_sizes"]))
    n_obs, n_act = nets.observation_dim, nets.action_dim
    if base == "iql":
        # TorchRL clips the advantage weights at 100 itself, like ours (max_weight=100).
        iql = {"loss_function": "l2", "temperature": 3.0, "expectile": 0.7}
        hp.update(iql)
        value = nets.value()
        if discrete:
            actor = nets.categorical_actor()
            # TorchRL reads Q(s, .) under "state_action_value" (ours: "state_value")
            qvalue = ValueOperator(
                nets.mlp(n_obs, n_act), in_keys=["observation"], out_keys=["state_action_value"]
            )
            loss = DiscreteIQLLoss(actor, qvalue, value, action_space=act_spec, **iql)
        else:
            actor = nets.stochastic_actor(hp["actor"])
            qvalue = nets.qvalue()
            loss = IQLLoss(actor, qvalue, value, **iql)
        groups = [
            ("actor", loss.actor_network_params, hp["actor_lr"]),
            ("qvalue", loss.qvalue_network_params, hp["critic_lr"]),
            ("value", loss.value_network_params, hp["value_lr"]),
        ]
        keys = ("loss_actor", "loss_qvalue", "loss_value")
        policy = actor
    elif base == "cql" and discrete:
        policy = nets.qvalue_actor()
        loss = DiscreteCQLLoss(policy, loss_function="l2", action_space=act_spec)
        groups = [("qvalue", loss.value_network_params, hp["critic_lr"])]
        keys = ("loss_qvalue", "loss_cql")
    elif base == "cql":
        cql = {
            k: hp[k]
            for k in (
                "loss_function",
                "min_q_weight",
                "deterministic_backup",
                "max_q_backup",
                "num_random",
                "with_lagrange",
                "temperature",
            )
        }
        actor = nets.tanh_normal_actor()
        qvalue = nets.qvalue()
        loss = CQLLoss(actor, qvalue, action_spec=act_spec, **cql)
        groups = [
            ("actor", loss.actor_network_params, hp["actor_lr"]),
            ("qvalue", loss.qvalue_network_params, hp["critic_lr"]),
            ("alpha", [loss.log_alpha], hp["alpha_lr"]),
        ]
        keys = ("loss_actor", "loss_qvalue", "loss_cql", "loss_alpha")
        policy = actor
    elif base == "td3_bc" and not discrete:
        actor = nets.deterministic_actor()
        qvalue = nets.qvalue()
        loss = TD3BCLoss(
            actor,
            qvalue,
            action_spec=act_spec,
            loss_function="l2",
            alpha=hp["alpha"],
            policy_noise=hp["policy_noise"],
            noise_clip=hp["noise_clip"],
        )
        groups = [
            ("actor", loss.actor_network_params, hp["actor_lr"]),
            ("qvalue", loss.qvalue_network_params, hp["critic_lr"]),
        ]
        keys = ("loss_actor", "loss_qvalue")
        policy = actor
    else:
        raise ValueError(f"no TorchRL loss for {name!r} on a {'dis' * discrete}continuous task")

    optimizer = torch.optim.Adam(
        [{"params": collect_parameters(p), "lr": float(lr), "name": g} for g, p, lr in groups]
    )
    loss.make_value_estimator(gamma=float(hp["gamma"]))
    target_updater = SoftUpdate(loss, tau=float(hp["tau"]))
    if observation_norm is not None:
        from torchrl_offline.trainers.normalization import NormalizedPolicy

        policy = NormalizedPolicy(policy, *observation_norm)
    return A.Algorithm(
        name=name,
        loss=loss,
        policy=policy,
        optimizer=optimizer,
        loss_keys=keys,
        target_updater=target_updater,
        # the trainer's delayed policy update (TD3+BC), as in TorchRL's example script
        policy_update_delay=int(hp.get("policy_update_delay", 1)),
        hyperparameters={k: A._jsonable(v) for k, v in hp.items()},
        observation_spec=obs_spec,
        action_spec=act_spec,
        observation_norm=observation_norm,
    )


# ----------------------------------------------------------------------------- runs
def dataset_info(task: str, level: str, root: Path) -> dict[str, Any]:
    """Reference returns and the behaviour data's mean return of a benchmark dataset."""
    from minari.dataset.minari_storage import MinariStorage

    md = datasets_module()
    meta = MinariStorage.read(Path(root) / md.dataset_id(task, level) / "data").metadata
    lo, hi = float(meta["ref_min_score"]), float(meta["ref_max_score"])
    bench = json.loads(meta["benchmark"]) if "benchmark" in meta else {}
    ret = bench.get("dataset_mean_return")
    return {
        "ref_min_score": lo,
        "ref_max_score": hi,
        "behavior_return": ret,
        "behavior_score": None if ret is None else 100.0 * (ret - lo) / (hi - lo),
        "size": bench.get("size"),
    }


def load_dataset(task: str, level: str, root: Path, *, make_missing: bool = True):
    """The dataset as a replay buffer (generated first when missing and allowed)."""
    md = datasets_module()
    return md.load_dataset(task, level, root=Path(root), make_missing=make_missing)


def training_dataset(task: str, level: str, root: Path, budget: Budget):
    """:func:`load_dataset`, with the budget's reward scaling appended as a transform."""
    dataset = load_dataset(task, level, root)
    if budget.reward_scale:
        from torchrl_offline.data import reward_scaling

        dataset.append_transform(reward_scaling(dataset))
    return dataset


def build(algo: str, dataset, budget: Budget):
    """The :class:`~torchrl_offline.trainers.algorithms.Algorithm` of a table row."""
    from torchrl_offline.trainers.algorithms import build_algorithm, specs_from_dataset
    from torchrl_offline.trainers.normalization import observation_moments

    obs_spec, act_spec = specs_from_dataset(dataset)
    norm = observation_moments(dataset) if budget.normalize else None
    if algo.startswith("torchrl_"):
        settings = dict(budget.overrides)
        if set(settings) - set(NETWORK_SETTINGS):
            raise ValueError(
                f"{algo}: TorchRL's rows take only the network settings {NETWORK_SETTINGS} "
                f"of --set, got {sorted(settings)}"
            )
        return build_torchrl(
            algo, obs_spec, act_spec, hidden=budget.hidden, observation_norm=norm, **settings
        )
    overrides = {} if budget.hidden is None else network_sizes(algo, act_spec, budget.hidden)
    overrides.update(budget.overrides)
    return build_algorithm(algo, obs_spec, act_spec, observation_norm=norm, **overrides)


def network_sizes(algo: str, act_spec, hidden: tuple[int, ...]) -> dict[str, Any]:
    """``hidden`` for every network of ``algo``: its actor and critics, and the behaviour
    VAE of BCQ and BEAR (750x750 by default, which would make those rows 6-15x slower
    than the others at a 2x64 budget and the comparison one of network sizes)."""
    from torchrl_offline.trainers.algorithms import algorithm_defaults, declaration, is_discrete

    decl = declaration(algo)
    if decl.discrete_variant is not None and is_discrete(act_spec):
        decl = declaration(decl.discrete_variant)
    sizes: dict[str, Any] = {"hidden_sizes": hidden}
    defaults = algorithm_defaults(decl.name)
    for key in ("vae_hidden_sizes", "model_hidden_sizes"):
        if key in defaults:
            sizes[key] = hidden
    if "model_max_updates" in defaults:
        sizes["model_max_updates"] = MODEL_FIT_MAX_UPDATES
    return sizes


def run_one(
    algo: str,
    task: str,
    level: str,
    seed: int,
    budget: Budget,
    *,
    root: Path = DEFAULT_ROOT,
    dataset=None,
) -> dict[str, Any]:
    """Trains one row's algorithm on one dataset with one seed; returns the result record."""
    from torchrl_offline.trainers.offline import train

    md = datasets_module()
    if dataset is None:
        dataset = training_dataset(task, level, root, budget)
    info = dataset_info(task, level, root)
    torch.manual_seed(seed)  # the networks' initial weights
    algorithm = build(algo, dataset, budget)
    probe = _TrainerProbe()
    t0 = time.perf_counter()
    result = train(
        algorithm,
        dataset,
        total_steps=budget.steps,
        seed=seed,
        batch_size=budget.batch_size,
        eval_env=md.agents.TASKS[task].env_id,
        eval_interval=budget.eval_every,
        eval_episodes=budget.episodes,
        logger=None,
        progress=False,
        hooks=[probe],
    )
    seconds = time.perf_counter() - t0
    curve = [[e["step"], e["normalized_score"], e["return_mean"]] for e in result.evaluations]
    trained = [c for c in curve if c[0] > 0] or curve
    return {
        "algo": algo,
        "loss": algorithm.name,
        "task": task,
        "level": level,
        "seed": seed,
        "budget": budget.key(),
        "curve": curve,
        "last": curve[-1][1],
        "best": max(c[1] for c in trained),
        "last_return": curve[-1][2],
        "behavior_score": info["behavior_score"],
        "seconds": round(seconds, 1),
        "torch_threads": torch.get_num_threads(),
        **model_costs(probe.trainer, algorithm),
    }


class _TrainerProbe:
    """A hook that keeps the trainer it is registered with (to read its source after)."""

    trainer: Any = None

    def register(self, trainer: Any) -> None:
        self.trainer = trainer


def model_costs(trainer: Any, algorithm) -> dict[str, Any]:
    """``{"model": {...}}`` for a model-based row: the dynamics fit (seconds, updates,
    epochs, held-out MSE), the rollout phases (count, seconds) and the model settings;
    ``{}`` for the other rows."""
    from torchrl_offline.trainers.model_rollouts import ModelRolloutSource

    source = getattr(trainer, "collector", None)
    if not isinstance(source, ModelRolloutSource):
        return {}
    hp = algorithm.hyperparameters
    settings = {k: hp[k] for k in hp if k.startswith(("model_", "rollout_"))}
    settings.update(real_ratio=hp["real_ratio"], reward_penalty=hp["reward_penalty"])
    return {
        "model": {
            "fit": dict(source.fit_info),
            "rollouts": len(source.rollouts),
            "rollout_seconds": round(sum(r["seconds"] for r in source.rollouts), 1),
            "settings": settings,
        }
    }


def export_npz(task: str, level: str, root: Path, budget: Budget, out_dir: Path) -> Path:
    """The dataset as arrays for d3rlpy (``<out_dir>/<task>__<level>.npz``): observations,
    actions, rewards, terminals and timeouts (an episode cut by a time limit or by the end
    of the data), in dataset order, plus ``meta``, a JSON string with the evaluation env,
    the reference returns, the behaviour data's score and the budget's key, which
    ``learning_table_d3rlpy.py`` copies into its records so ``--report`` shows them in
    this table."""
    import numpy as np

    from torchrl_offline.data.episodes import episode_ends

    md = datasets_module()
    dataset = load_dataset(task, level, root)
    data = dataset.storage[: len(dataset.storage)]
    ends = episode_ends(data).numpy()
    terminated = data.get(("next", "terminated")).reshape(-1).numpy().astype(bool)
    action = data.get("action")
    if action.is_floating_point():
        action = action.numpy().astype(np.float32)
    elif action.ndim > 1 and action.shape[-1] > 1:  # one-hot
        action = action.argmax(-1).numpy()
    else:
        action = action.reshape(-1).numpy()
    meta = dict(dataset_info(task, level, root), task=task, level=level)
    meta.update(env_id=md.agents.TASKS[task].env_id, budget=budget.key())
    out_dir.mkdir(parents=True, exist_ok=True)
    path = out_dir / f"{task}__{level}.npz"
    tmp = path.with_suffix(".tmp.npz")
    np.savez(
        tmp,
        observations=data.get("observation").numpy().astype(np.float32),
        actions=action,
        rewards=data.get(("next", "reward")).reshape(-1).numpy().astype(np.float32),
        terminals=terminated & ends,
        timeouts=ends & ~terminated,
        meta=np.array(json.dumps(meta)),
    )
    os.replace(tmp, path)
    return path


def read_records(path: Path) -> list[dict[str, Any]]:
    """The records of a results file (a missing file has none; a torn last line is skipped)."""
    path = Path(path)
    if not path.exists():
        return []
    out = []
    for line in path.read_text().splitlines():
        if line.strip():
            try:
                out.append(json.loads(line))
            except json.JSONDecodeError:
                continue
    return out


def _run_key(algo: str, task: str, level: str, seed: int, budget: Mapping[str, Any]) -> str:
    return json.dumps([algo, task, level, seed, dict(budget)], sort_keys=True)


def _append(path: Path, record: Mapping[str, Any]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    line = json.dumps(record) + "\n"
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:  # one write of the whole line: concurrent invocations do not interleave
        os.write(fd, line.encode())
    finally:
        os.close(fd)


def _matches(only: Sequence[str], algo: str, task: str, level: str) -> bool:
    """``--only`` terms: each term is ``a,b`` (algorithms), ``task``, ``task/level`` or
    ``level``; a run is selected when every term matches it."""
    for term in only:
        names = term.split(",")
        ok = any(n in (algo, task, level, f"{task}/{level}") for n in names)
        if not ok:
            return False
    return True


def plan(
    tasks: Iterable[str],
    levels: Iterable[str],
    algos: Sequence[str],
    seeds: Iterable[int],
    only: Sequence[str] = (),
) -> list[tuple[str, str, str, int]]:
    """Every selected ``(algo, task, level, seed)``, seeds outermost so that a partial
    table has every cell at one seed before any cell has two."""
    out = []
    levels, seeds = list(levels), list(seeds)
    for seed in seeds:
        for task in tasks:
            for level in levels:
                for algo in algos_for(task, algos):
                    if _matches(only, algo, task, level):
                        out.append((algo, task, level, seed))
    return out


def run_table(
    runs: Sequence[tuple[str, str, str, int]],
    budget: Budget,
    *,
    out: Path = DEFAULT_OUT,
    root: Path = DEFAULT_ROOT,
    stop_at: float | None = None,
) -> list[dict[str, Any]]:
    """Runs what ``out`` does not hold yet, appending each record as it finishes.

    ``stop_at`` (a ``time.time()`` value): no new run starts after it.
    """
    done = {
        _run_key(r["algo"], r["task"], r["level"], r["seed"], r["budget"])
        for r in read_records(out)
    }
    new = []
    datasets: dict[tuple[str, str], Any] = {}
    for i, (algo, task, level, seed) in enumerate(runs):
        if _run_key(algo, task, level, seed, budget.key()) in done:
            continue
        if stop_at is not None and time.time() > stop_at:
            print("stop time reached: no new run started", flush=True)
            break
        if (task, level) not in datasets:
            datasets.clear()
            datasets[(task, level)] = training_dataset(task, level, root, budget)
        record = run_one(algo, task, level, seed, budget, root=root,
                         dataset=datasets[(task, level)])  # fmt: skip
        _append(out, record)
        new.append(record)
        print(
            f"[{i + 1}/{len(runs)}] {algo} {task}/{level} seed {seed}: last "
            f"{record['last']:.1f} best {record['best']:.1f} ({record['seconds']:.0f}s)",
            flush=True,
        )
    return new


# ----------------------------------------------------------------------------- report
def _mean_std(values: Sequence[float]) -> tuple[float, float]:
    mean = statistics.fmean(values)
    std = statistics.pstdev(values) if len(values) > 1 else 0.0
    return mean, std


def aggregate(records: Iterable[Mapping[str, Any]]) -> dict[tuple[str, str, str], dict]:
    """``(algo, task, level) -> {last, last_std, best, best_std, n, curve, behavior}``;
    ``curve`` is the mean normalized score over seeds at each evaluation step."""
    groups: dict[tuple[str, str, str], list[Mapping[str, Any]]] = defaultdict(list)
    for r in records:
        groups[(r["algo"], r["task"], r["level"])].append(r)
    out = {}
    for key, rs in groups.items():
        last, last_std = _mean_std([r["last"] for r in rs])
        best, best_std = _mean_std([r["best"] for r in rs])
        by_step: dict[int, list[float]] = defaultdict(list)
        for r in rs:
            for step, score, _ in r["curve"]:
                by_step[int(step)].append(float(score))
        out[key] = {
            "last": last,
            "last_std": last_std,
            "best": best,
            "best_std": best_std,
            "n": len(rs),
            "seeds": sorted(r["seed"] for r in rs),
            "curve": [(s, statistics.fmean(v)) for s, v in sorted(by_step.items())],
            "behavior": rs[0].get("behavior_score"),
        }
    return out


def _datasets_of(agg: Mapping[tuple[str, str, str], Any]) -> list[tuple[str, str]]:
    md = datasets_module()
    tasks = list(md.agents.TASKS)
    present = {(t, lv) for _, t, lv in agg}
    return sorted(present, key=lambda d: (tasks.index(d[0]), md.LEVELS.index(d[1])))


def markdown_table(records: Iterable[Mapping[str, Any]]) -> str:
    """Rows: algorithms; columns: datasets; cells ``last / best (± std of last / best)``
    (normalized scores, mean over the seeds; ``n=k`` when fewer than 3 seeds); the last
    row is the behaviour data's own normalized return."""
    agg = aggregate(records)
    columns = _datasets_of(agg)
    algos = [a for a in ALGOS + D3RLPY_ROWS if any(k[0] == a for k in agg)]
    algos += sorted({k[0] for k in agg} - set(algos))
    head = "| algorithm | " + " | ".join(f"{t}/{lv}" for t, lv in columns) + " |"
    lines = [head, "|---|" + "---:|" * len(columns)]
    for algo in algos:
        cells = []
        for t, lv in columns:
            a = agg.get((algo, t, lv))
            if a is None:
                cells.append("")
                continue
            cell = (
                f"{a['last']:.1f} / {a['best']:.1f} (± {a['last_std']:.1f} / {a['best_std']:.1f})"
            )
            if a["n"] < 3:
                cell += f" n={a['n']}"
            cells.append(cell)
        lines.append(f"| {algo} | " + " | ".join(cells) + " |")
    behavior = []
    for t, lv in columns:
        b = next((a["behavior"] for k, a in agg.items() if k[1:] == (t, lv)), None)
        behavior.append("" if b is None else f"{b:.1f}")
    lines.append("| behaviour data | " + " | ".join(behavior) + " |")
    return "\n".join(lines)


def checks(records: Iterable[Mapping[str, Any]]) -> list[str]:
    """The expectations of issue 6, one line each, on the final (``last``) scores.

    * medium-replay: each value-based method vs BC;
    * medium: each method vs the behaviour data's normalized return;
    * ours vs TorchRL's built-in loss of the same algorithm, on every dataset.

    ``ok`` when the expectation holds on the means; ``within noise`` when it fails by less
    than two standard errors of the difference; ``FAILS`` otherwise.
    """
    agg = aggregate(records)

    def verdict(a: Mapping[str, Any], ref: float, ref_se: float = 0.0, ref_n: int = 3) -> str:
        diff = a["last"] - ref
        if diff < 0 and min(a["n"], ref_n) < 2:
            return "lower (one seed: not judged)"
        se = math.sqrt(a["last_std"] ** 2 / max(a["n"], 1) + ref_se**2)
        if diff >= 0:
            return "ok"
        return "within noise" if diff > -2 * se else "FAILS"

    def se(a: Mapping[str, Any]) -> float:
        return a["last_std"] / math.sqrt(max(a["n"], 1))

    lines = []
    for t, lv in _datasets_of(agg):
        if lv == "medium-replay" and (bc := agg.get(("bc", t, lv))):
            for algo in VALUE_BASED:
                a = agg.get((algo, t, lv))
                if a is not None:
                    lines.append(
                        f"{t}/{lv}: {algo} {a['last']:.1f} vs bc {bc['last']:.1f}: "
                        f"{verdict(a, bc['last'], se(bc), bc['n'])}"
                    )
        if lv == "medium":
            for algo in ALGOS:
                a = agg.get((algo, t, lv))
                if a is not None and a["behavior"] is not None:
                    lines.append(
                        f"{t}/{lv}: {algo} {a['last']:.1f} vs behaviour {a['behavior']:.1f}: "
                        f"{verdict(a, a['behavior'])}"
                    )
        for ours, theirs in TORCHRL_TWIN.items():
            a, b = agg.get((ours, t, lv)), agg.get((theirs, t, lv))
            if a is not None and b is not None:
                lines.append(
                    f"{t}/{lv}: {ours} {a['last']:.1f} vs {theirs} {b['last']:.1f}: "
                    f"{verdict(a, b['last'], se(b), b['n'])}"
                )
    return lines


def plot_all(records: Iterable[Mapping[str, Any]], directory: Path) -> list[Path]:
    """One PNG per dataset (``learning_<task>_<level>.png``): the mean normalized score
    over seeds of every algorithm against gradient steps, and the behaviour data's
    normalized return as a dashed line."""
    from torchrl_offline.trainers.plot import plot_learning_curves

    agg = aggregate(records)
    paths = []
    for t, lv in _datasets_of(agg):
        curves = {a: agg[(a, t, lv)]["curve"] for a in ALGOS if (a, t, lv) in agg}
        behavior = next(a["behavior"] for k, a in agg.items() if k[1:] == (t, lv))
        n = max(agg[(a, t, lv)]["n"] for a in curves)
        paths.append(
            plot_learning_curves(
                curves,
                Path(directory) / f"learning_{t}_{lv}.png",
                title=f"{t}/{lv}-v0 (mean of {n} seeds)",
                ylabel="normalized score",
                hlines={} if behavior is None else {"behaviour data": behavior},
            )
        )
    return paths


def report(
    records: Sequence[Mapping[str, Any]],
    budget: Budget | None = None,
    *,
    plots: Path | None = None,
) -> str:
    """The markdown table, then the checks, for the records of ``budget`` (all if ``None``)."""
    if budget is not None:
        records = [r for r in records if r["budget"] == budget.key()]
    if not records:
        return "(no finished runs)"
    if plots is not None:
        plot_all(records, plots)
    text = markdown_table(records) + "\n\nChecks (final scores, mean over seeds):\n\n"
    text += "\n".join(f"- {c}" for c in checks(records)) or "- (nothing to check yet)"
    return text + "\n"


# ----------------------------------------------------------------------------- speed
def measure_speed(
    algos: Sequence[str], task: str, level: str, budget: Budget, *, root: Path, updates: int = 200
) -> dict[str, float]:
    """Gradient updates per second of each algorithm on a dataset (no evaluation)."""
    from torchrl_offline.trainers.offline import train

    dataset = training_dataset(task, level, root, budget)
    out = {}
    for algo in algos_for(task, algos):
        torch.manual_seed(0)
        algorithm = build(algo, dataset, budget)
        train(algorithm, dataset, total_steps=10, batch_size=budget.batch_size, logger=None,
              progress=False)  # fmt: skip
        torch.manual_seed(0)
        algorithm = build(algo, dataset, budget)
        t0 = time.perf_counter()
        train(algorithm, dataset, total_steps=updates, batch_size=budget.batch_size,
              logger=None, progress=False)  # fmt: skip
        out[algo] = updates / (time.perf_counter() - t0)
        print(f"{algo} on {task}/{level}: {out[algo]:.1f} updates/s", flush=True)
    return out


# ----------------------------------------------------------------------------- main
def _parse_setting(text: str) -> tuple[str, Any]:
    """``"key=value"`` with a JSON value (``1.0``, ``true``, ``"x"``), else the string."""
    key, sep, value = text.partition("=")
    if not sep or not key:
        raise SystemExit(f"--set expects KEY=VALUE, got {text!r}")
    try:
        return key, json.loads(value)
    except json.JSONDecodeError:
        return key, value


def main(argv: Sequence[str] | None = None) -> None:
    md = datasets_module()
    d = Budget()
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--tasks", nargs="+", default=list(md.agents.TASKS))
    p.add_argument("--levels", nargs="+", default=list(md.LEVELS))
    p.add_argument("--algos", nargs="+", default=list(ALGOS))
    p.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    p.add_argument("--only", nargs="*", default=[], help="filters: algo[,algo] task task/level")
    p.add_argument("--steps", type=int, default=d.steps, help="gradient steps per run")
    p.add_argument("--eval-every", type=int, default=d.eval_every)
    p.add_argument("--episodes", type=int, default=d.episodes)
    p.add_argument("--batch-size", type=int, default=d.batch_size)
    p.add_argument(
        "--hidden",
        type=int,
        nargs="+",
        default=list(d.hidden),
        help="hidden sizes of all networks; 0 for each algorithm's default (the papers')",
    )
    p.add_argument("--no-normalize", action="store_true")
    p.add_argument(
        "--set",
        nargs="*",
        default=[],
        metavar="KEY=VALUE",
        help="hyperparameters of our rows (JSON values), e.g. awac_lambda=1.0; a variant "
        "table, stored and reported apart from the plain one",
    )
    p.add_argument(
        "--reward-scale",
        action="store_true",
        help="rewards times 1000 / (return range), every row (IQL's locomotion recipe)",
    )
    p.add_argument("--root", type=Path, default=DEFAULT_ROOT, help="Minari datasets root")
    p.add_argument("--out", type=Path, default=DEFAULT_OUT, help="results (JSON lines)")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--stop-at", default=None, help="no new run after this UTC time (HH:MM)")
    p.add_argument("--report", action="store_true", help="print the table, run nothing")
    p.add_argument("--markdown", type=Path, default=None, help="also write the report here")
    p.add_argument("--plots", type=Path, default=None, help="write learning-curve PNGs here")
    p.add_argument("--speed", action="store_true", help="measure updates/s, run nothing")
    p.add_argument("--speed-updates", type=int, default=200)
    p.add_argument(
        "--export-npz",
        type=Path,
        default=None,
        help="write the selected datasets as arrays for learning_table_d3rlpy.py, run nothing",
    )
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    budget = Budget(
        steps=args.steps,
        eval_every=args.eval_every,
        episodes=args.episodes,
        batch_size=args.batch_size,
        hidden=None if args.hidden == [0] else tuple(args.hidden),
        normalize=not args.no_normalize,
        overrides=tuple(_parse_setting(x) for x in args.set),
        reward_scale=args.reward_scale,
    )
    runs = plan(args.tasks, args.levels, args.algos, args.seeds, args.only)
    loss_settings = {k for k, _ in budget.overrides} - set(NETWORK_SETTINGS)
    if loss_settings and any(r[0].startswith("torchrl_") for r in runs):
        raise SystemExit(
            f"--set {sorted(loss_settings)} applies to our rows only: pick them with --algos "
            "(no torchrl_*)"
        )
    if args.export_npz is not None:
        for task, level in dict.fromkeys((t, lv) for _, t, lv, _ in runs):
            print(export_npz(task, level, args.root, budget, args.export_npz), flush=True)
        return
    d3rlpy = sorted({r[0] for r in runs} & set(D3RLPY_ROWS))
    if d3rlpy and not args.report:
        raise SystemExit(
            f"{d3rlpy}: d3rlpy's rows are run by benchmarks/learning_table_d3rlpy.py in "
            "d3rlpy's virtualenv (on --export-npz's arrays); here they can only be reported"
        )
    if args.speed:
        for task, level in dict.fromkeys((t, lv) for _, t, lv, _ in runs):
            algos = [a for a in args.algos if any(r[:3] == (a, task, level) for r in runs)]
            measure_speed(algos, task, level, budget, root=args.root, updates=args.speed_updates)
        return
    if not args.report:
        stop_at = None
        if args.stop_at:
            hh, mm = (int(x) for x in args.stop_at.split(":"))
            now = time.gmtime()
            stop_at = time.time() + ((hh - now.tm_hour) * 60 + mm - now.tm_min) * 60 - now.tm_sec
        run_table(runs, budget, out=args.out, root=args.root, stop_at=stop_at)
    selected = {r[:3] for r in runs}
    records = [r for r in read_records(args.out) if (r["algo"], r["task"], r["level"]) in selected]
    text = report(records, budget, plots=args.plots)
    print(text)
    if args.markdown is not None:
        args.markdown.parent.mkdir(parents=True, exist_ok=True)
        args.markdown.write_text(text)


if __name__ == "__main__":
    main()
