"""Regenerate the benchmark datasets (D4RL-style levels) from the committed behaviour policies.

Tasks: ``pendulum`` (Pendulum-v1), ``cartpole`` (CartPole-v1), ``hopper`` (Hopper-v5),
``halfcheetah`` (HalfCheetah-v5). Levels, as in D4RL:

* ``random``: uniformly random actions;
* ``medium``: the SAC (DQN) checkpoint whose behaviour return is about 40% of the way from
  random to expert (normalized score in [33, 50]);
* ``expert``: the best checkpoint of the training run;
* ``medium-replay``: the online data up to the medium checkpoint, re-rolled: training is cut
  into segments, each starting with a fresh env reset, and segment ``k`` is regenerated with
  the actor snapshot that started it (segment 0: uniformly random, SAC's warm-up / DQN's
  epsilon 1). DQN snapshots act epsilon-greedily with the epsilon of the middle of their
  segment. Re-rolling needs only the few committed snapshots (not a buffer) and takes
  seconds, where replaying training deterministically would take as long as training;
  the difference is that inside a segment the policy is frozen, where training updated it
  after every collector batch;
* ``medium-expert``: the ``medium`` dataset followed by the ``expert`` dataset (same size
  and seeds, so it is exactly their concatenation, as in D4RL).

Behaviour policies record exact log-probabilities: SAC actors act by sampling their
``TanhNormal`` (``ProbabilisticActorPolicy``), DQN actors are epsilon-greedy with epsilon
``behavior_epsilon`` (``EpsilonGreedyPolicy``). Composite levels store ``policy_id`` (medium-replay:
the segment; medium-expert: 0 medium, 1 expert). Every dataset's metadata has
``ref_min_score`` (mean return of uniform random actions) and ``ref_max_score`` (mean
return of the expert behaviour policy), so ``normalized_score`` works, plus a
``benchmark`` entry (task, level, seed, size, behaviour returns, dataset mean return).

Same task, level, size and seed give identical files. Usage::

    python benchmarks/make_datasets.py --task hopper --level medium --root DIR
    python benchmarks/make_datasets.py --task all --level all --root DIR
    python benchmarks/make_datasets.py --promote --task hopper   # pick levels from training

``--promote`` reads the training log of ``behavior_agents.py`` (``outputs/behavior``), chooses
the medium and expert checkpoints, measures the reference returns and copies the weights
to ``benchmarks/policies/<task>/`` with a ``levels.json``.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import gymnasium as gym
import numpy as np
import torch
from tensordict import TensorDictBase

from torchrl_offline.data.behavior import (
    BehaviorPolicy,
    EpsilonGreedyPolicy,
    ProbabilisticActorPolicy,
    UniformRandomPolicy,
)
from torchrl_offline.data.collect import collect_dataset
from torchrl_offline.data.minari import load_minari
from torchrl_offline.data.minari_writer import minari_root, write_minari
from torchrl_offline.data.stats import stored_transitions

HERE = Path(__file__).resolve().parent
POLICIES = HERE / "policies"
LEVELS = ("random", "medium", "medium-replay", "expert", "medium-expert")
#: Default transitions per dataset (D4RL has 1M); medium-expert holds twice as many and
#: medium-replay, by default, as many as training collected up to the medium checkpoint.
DEFAULT_SIZE = {"pendulum": 50_000, "cartpole": 50_000, "hopper": 100_000, "halfcheetah": 100_000}
#: Seed offset of each level (the dataset seed is ``1000 * seed + offset``).
_LEVEL_SEED = {"random": 1, "medium": 2, "expert": 3, "medium-replay": 4}
#: Target normalized score of the medium level, and the accepted range.
MEDIUM_TARGET, MEDIUM_RANGE = 40.0, (100 / 3, 50.0)


def _agents():
    spec = importlib.util.spec_from_file_location("behavior_agents", HERE / "behavior_agents.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules.setdefault("behavior_agents", module)
    spec.loader.exec_module(module)
    return module


agents = _agents()


def dataset_id(task: str, level: str) -> str:
    """The Minari id of a benchmark dataset, e.g. ``"hopper/medium-v0"``."""
    return f"{task}/{level}-v0"


def read_levels(task: str, policies: Path = POLICIES) -> dict[str, Any]:
    """The ``levels.json`` of a task (checkpoints, returns, reference scores)."""
    path = policies / task / "levels.json"
    if not path.exists():
        raise FileNotFoundError(
            f"No behaviour policies for {task!r} at {path}: train them with "
            f"benchmarks/behavior_agents.py --task {task}, then run make_datasets.py --promote"
        )
    return json.loads(path.read_text())


def load_actor(task: str, weights: str | Path, policies: Path = POLICIES) -> torch.nn.Module:
    """The actor of ``task`` (as built by ``behavior_agents.make_actor``) with saved weights."""
    config = agents.TASKS[task]
    env = agents.make_env(config)
    actor = agents.make_actor(config, env)
    env.close()
    path = Path(weights)
    if not path.is_absolute():
        path = policies / task / path
    actor.load_state_dict(torch.load(path, weights_only=True))
    return actor.eval()


def behavior_policy(
    task: str, weights: str | Path | None, *, epsilon: float | None = None, policies=POLICIES
) -> BehaviorPolicy:
    """The behaviour policy of a snapshot: ``None`` weights give uniformly random actions."""
    config = agents.TASKS[task]
    spec = agents.make_env(config).action_spec_unbatched
    if weights is None:
        return UniformRandomPolicy(spec)
    actor = load_actor(task, weights, policies)
    if config.algo == "dqn":
        eps = config.behavior_epsilon if epsilon is None else epsilon
        return EpsilonGreedyPolicy(actor, spec, epsilon=eps)
    return ProbabilisticActorPolicy(actor)


def _episode_returns(td: TensorDictBase, max_steps: int | None) -> list[float]:
    """Returns of the dataset's episodes, leaving out the last one if the step budget cut it
    (neither terminated nor at the env's time limit)."""
    reward = td.get(("next", "reward")).reshape(-1).to(torch.float64)
    episode = td.get("episode").reshape(-1)
    count = int(episode.max()) + 1
    sums = torch.zeros(count, dtype=torch.float64).index_add_(0, episode, reward).tolist()
    last_len = int((episode == count - 1).sum())
    cut = not bool(td.get(("next", "terminated"))[-1].all()) and last_len != max_steps
    return sums[:-1] if cut and count > 1 else sums


def _parts_dataset(
    task: str,
    level: str,
    parts: list[tuple[BehaviorPolicy, int, int] | Path],
    *,
    root: Path,
    meta: dict[str, Any],
    data_format: str,
    overwrite: bool,
) -> Path:
    """Collect each ``(policy, steps, seed)`` part as its own dataset (a part given as a path is
    an existing dataset, used as is), then write their concatenation (episodes renumbered,
    ``policy_id`` = part index)."""
    config = agents.TASKS[task]
    with tempfile.TemporaryDirectory(prefix="benchmark_parts_") as tmp:
        pieces = []
        offset = 0
        for k, part in enumerate(parts):
            if isinstance(part, Path):
                source = part
            else:
                policy, steps, seed = part
                source = collect_dataset(
                    config.env_id, policy, steps, dataset_id=f"part/{k}-v0", root=tmp, seed=seed
                )
            buffer = load_minari(source, cache_dir=Path(tmp) / "cache", dtype=torch.float64)
            td = stored_transitions(buffer).clone()
            td.set("episode", td.get("episode") + offset)
            td.set("policy_id", torch.full((td.shape[0],), k, dtype=torch.long))
            offset = int(td.get("episode").max()) + 1
            for key in ("action_log_prob", "action_prob"):
                if key in td.keys():
                    td.set(key, td.get(key).to(torch.float32))
            pieces.append(td)
            del buffer
        transitions = torch.cat(pieces, 0)
        env = gym.make(config.env_id)
        path = write_minari(
            transitions,
            dataset_id(task, level),
            observation_space=env.observation_space,
            action_space=env.action_space,
            root=root,
            env_spec=env.spec,
            data_format=data_format,
            ref_min_score=meta["ref_min_score"],
            ref_max_score=meta["ref_max_score"],
            algorithm_name=meta["algorithm_name"],
            extra_info_keys=["policy_id"],
            overwrite=overwrite,
        )
        env.close()
    return path


def _part_levels(level: str, count: int) -> list[str | None]:
    """The plain level each part of a composite level equals (None: no such level)."""
    return ["medium", "expert"] if level == "medium-expert" else [None] * count


def _existing(root: Path, task: str, level: str | None, size: int, seed: int) -> Path | None:
    """An existing plain dataset identical to the part ``(level, size, seed)``, if any: the
    medium-expert level then reuses the medium and expert datasets instead of collecting
    them again (the result is the same, since collection is deterministic)."""
    if level is None:
        return None
    path = root / dataset_id(task, level)
    if not (path / "data" / "metadata.json").exists():
        return None
    from minari.dataset.minari_storage import MinariStorage

    info = json.loads(MinariStorage.read(path / "data").metadata.get("benchmark", "{}"))
    parts = info.get("parts", [])
    if len(parts) == 1 and parts[0]["steps"] == size and parts[0]["seed"] == seed:
        return path
    return None


def _describe(task: str, weights: str | None, epsilon: float | None) -> str:
    if weights is None:
        return "uniform random"
    if agents.TASKS[task].algo == "dqn":
        eps = agents.TASKS[task].behavior_epsilon if epsilon is None else epsilon
        return f"epsilon-greedy({weights}, epsilon={eps:.3g})"
    return f"TanhNormal SAC actor {weights}"


def make_dataset(
    task: str,
    level: str,
    *,
    root: str | Path | None = None,
    size: int | None = None,
    seed: int = 0,
    data_format: str = "hdf5",
    overwrite: bool = False,
    policies: Path = POLICIES,
) -> Path:
    """Regenerate one benchmark dataset and return its directory (``<root>/<task>/<level>-v0``).

    Args:
        task: ``"pendulum"``, ``"cartpole"``, ``"hopper"`` or ``"halfcheetah"``.
        level: one of :data:`LEVELS`.

    Keyword Args:
        root: Minari datasets root (default ``$MINARI_DATASETS_PATH`` or ``~/.minari/datasets``).
        size: transitions (medium-expert: per half; medium-replay: in total, split over the
            snapshots in proportion to the training segments). Defaults: :data:`DEFAULT_SIZE`,
            and for medium-replay the training frames up to the medium checkpoint.
        seed: base seed; each level derives its own from it.
        data_format: ``"hdf5"`` or ``"arrow"``.
        overwrite: replace an existing dataset.
        policies: folder of the committed behaviour policies.
    """
    if level not in LEVELS:
        raise ValueError(f"level must be one of {LEVELS}, got {level!r}")
    levels = read_levels(task, policies)
    config = agents.TASKS[task]
    refs = {"ref_min_score": levels["ref_min_score"], "ref_max_score": levels["ref_max_score"]}
    # Absolute: Minari 0.5.4 measures a dataset's size with paths that break on a relative root.
    root = minari_root(root).resolve()
    t0 = time.perf_counter()
    n = size or DEFAULT_SIZE[task]
    if level in ("random", "medium", "expert"):
        weights = None if level == "random" else levels[level]["weights"]
        policy = behavior_policy(task, weights, policies=policies)
        level_seed = 1000 * seed + _LEVEL_SEED[level]
        path = collect_dataset(
            config.env_id,
            policy,
            n,
            dataset_id=dataset_id(task, level),
            root=root,
            seed=level_seed,
            data_format=data_format,
            algorithm_name=f"{level}: {policy.describe()}",
            overwrite=overwrite,
            **refs,
        )
        parts_info: list[dict[str, Any]] = [{"weights": weights, "steps": n, "seed": level_seed}]
    else:
        if level == "medium-expert":
            specs = [
                (levels["medium"]["weights"], None, n, 1000 * seed + _LEVEL_SEED["medium"]),
                (levels["expert"]["weights"], None, n, 1000 * seed + _LEVEL_SEED["expert"]),
            ]
        else:
            schedule = levels["replay"]
            total = size or sum(s["steps"] for s in schedule)
            full = sum(s["steps"] for s in schedule)
            steps = [total * s["steps"] // full for s in schedule]
            steps[-1] += total - sum(steps)
            base = 1000 * (1000 * seed + _LEVEL_SEED["medium-replay"])
            specs = [
                (s["weights"], s.get("epsilon"), m, base + k)
                for k, (s, m) in enumerate(zip(schedule, steps, strict=True))
                if m > 0
            ]
        part_levels = _part_levels(level, len(specs))
        parts = [
            _existing(root, task, part_level, m, s)
            or (behavior_policy(task, w, epsilon=eps, policies=policies), m, s)
            for (w, eps, m, s), part_level in zip(specs, part_levels, strict=True)
        ]
        path = _parts_dataset(
            task,
            level,
            parts,
            root=root,
            meta={**refs, "algorithm_name": f"{level}: " + " + ".join(
                f"{m} steps of {_describe(task, w, e)}" for w, e, m, _ in specs)},
            data_format=data_format,
            overwrite=overwrite,
        )  # fmt: skip
        parts_info = [{"weights": w, "epsilon": e, "steps": m, "seed": s} for w, e, m, s in specs]
    # Summary entries for readers of the dataset (computed from the data itself).
    from minari.dataset.minari_storage import MinariStorage

    with tempfile.TemporaryDirectory(prefix="benchmark_meta_") as tmp:
        buffer = load_minari(path, cache_dir=tmp)
        td = stored_transitions(buffer)
        returns = _episode_returns(td, gym.spec(config.env_id).max_episode_steps)
        summary = {
            "task": task,
            "env_id": config.env_id,
            "level": level,
            "seed": seed,
            "size": int(td.shape[0]),
            "episodes": int(td.get("episode").max()) + 1,
            "dataset_mean_return": float(np.mean(returns)),
            "dataset_return_std": float(np.std(returns)),
            "parts": parts_info,
            "training_frames": {k: levels[k]["frames"] for k in ("medium", "expert")},
        }
        del td, buffer
    MinariStorage.read(path / "data").update_metadata({"benchmark": json.dumps(summary)})
    print(
        f"{dataset_id(task, level)}: {summary['size']} transitions, {summary['episodes']} "
        f"episodes, mean return {summary['dataset_mean_return']:.1f} "
        f"({time.perf_counter() - t0:.1f}s)",
        flush=True,
    )
    return path


def load_dataset(
    task: str,
    level: str,
    *,
    root: str | Path | None = None,
    make_missing: bool = True,
    size: int | None = None,
    seed: int = 0,
    **load_kwargs: Any,
):
    """Load a benchmark dataset as an offline replay buffer, regenerating it if missing.

    ``load_kwargs`` go to :func:`torchrl_offline.data.load_minari`; the buffer's
    ``metadata`` holds the reference scores, so ``normalized_score(returns, buffer)`` works.
    """
    path = minari_root(root) / dataset_id(task, level)
    if not path.exists():
        if not make_missing:
            raise FileNotFoundError(f"No dataset at {path}")
        make_dataset(task, level, root=root, size=size, seed=seed)
    return load_minari(path, **load_kwargs)


def summary_table(root: str | Path | None = None) -> str:
    """A Markdown table of the benchmark datasets found under ``root`` (from their metadata)."""
    from minari.dataset.minari_storage import MinariStorage

    rows = [
        "| dataset | transitions | episodes | mean return | normalized | random | expert |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    base = minari_root(root)
    for task in agents.TASKS:
        for level in LEVELS:
            data = base / dataset_id(task, level) / "data"
            if not data.exists():
                continue
            meta = MinariStorage.read(data).metadata
            info = json.loads(meta["benchmark"])
            lo, hi = meta["ref_min_score"], meta["ref_max_score"]
            ret = info["dataset_mean_return"]
            rows.append(
                f"| `{dataset_id(task, level)}` | {info['size']:,} | {info['episodes']:,} "
                f"| {ret:.1f} ± {info['dataset_return_std']:.1f} "
                f"| {100 * (ret - lo) / (hi - lo):.1f} | {lo:.1f} | {hi:.1f} |"
            )
    return "\n".join(rows)


# ------------------------------------------------------------------------- level selection


def random_return(env_id: str, *, episodes: int = 100, seed: int = 0) -> float:
    """Mean return of uniformly random actions (the ``ref_min_score``)."""
    env = gym.make(env_id)
    env.action_space.seed(seed)
    total = []
    for i in range(episodes):
        env.reset(seed=seed + i)
        ret, done = 0.0, False
        while not done:
            _, r, term, trunc, _ = env.step(env.action_space.sample())
            ret += float(r)
            done = term or trunc
        total.append(ret)
    env.close()
    return float(np.mean(total))


def _evaluate(task: str, actor: torch.nn.Module, *, episodes: int, seed: int, mode: str):
    """``behavior_agents.evaluate`` with torch's generator seeded (and restored after)."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return agents.evaluate(agents.TASKS[task], actor, episodes=episodes, seed=seed, mode=mode)


def promote(
    task: str,
    *,
    seed: int = 0,
    runs: Path = agents.DEFAULT_OUT,
    policies: Path = POLICIES,
    medium_frames: int | None = None,
    expert_frames: int | None = None,
    select_episodes: int = 10,
    episodes: int = 20,
) -> dict[str, Any]:
    """Choose the medium and expert checkpoints of a training run and commit their weights.

    Every checkpoint's behaviour policy is evaluated over ``select_episodes`` episodes (the
    same starts for all). Expert: the best one (or ``expert_frames``). Medium: among earlier
    checkpoints, the one whose normalized score is closest to :data:`MEDIUM_TARGET` (or
    ``medium_frames``). Both are then evaluated again over ``episodes`` other episodes (so
    the best-of-many choice does not inflate the figures); ``ref_max_score`` is the expert
    behaviour's mean return there and ``ref_min_score`` the random policy's (100 episodes).
    """
    config = agents.TASKS[task]
    run_dir = runs / task / f"seed{seed}"
    records = agents.read_log(run_dir)
    if not records:
        raise FileNotFoundError(f"No training log at {run_dir}")
    r_rand = random_return(config.env_id, seed=12345)
    # The training log's returns average few episodes: every checkpoint is evaluated again
    # over `select_episodes` episodes with the same starts before choosing.
    cache_path = run_dir / f"selection_{select_episodes}.json"
    cache = json.loads(cache_path.read_text()) if cache_path.exists() else {}
    for rec in records:
        key = str(rec["frames"])
        if key not in cache:
            actor = load_actor(task, run_dir / "snapshots" / f"actor_{key}.pt")
            returns = _evaluate(
                task, actor, episodes=select_episodes, seed=3 * 10**6, mode="behavior"
            )
            cache[key] = float(np.mean(returns))
            cache_path.write_text(json.dumps(cache))
        rec["selection_return"] = cache[key]
        print(f"{task} @{key}: behaviour return {cache[key]:.1f}", flush=True)
    if expert_frames is None:
        expert = max(records, key=lambda r: r["selection_return"])
    else:
        expert = next(r for r in records if r["frames"] == expert_frames)

    def score(r):
        return 100 * (r["selection_return"] - r_rand) / (expert["selection_return"] - r_rand)

    if medium_frames is None:
        earlier = [r for r in records if r["frames"] < expert["frames"]]
        in_range = [r for r in earlier if MEDIUM_RANGE[0] <= score(r) <= MEDIUM_RANGE[1]]
        medium = min(in_range or earlier, key=lambda r: abs(score(r) - MEDIUM_TARGET))
    else:
        medium = next(r for r in records if r["frames"] == medium_frames)
    out = policies / task
    if out.exists():
        shutil.rmtree(out)
    (out / "replay").mkdir(parents=True)
    seg = config.segment_frames
    eval_seed = 2 * 10**6 + seed

    def commit(frames: int, name: str) -> str:
        shutil.copyfile(run_dir / "snapshots" / f"actor_{frames}.pt", out / name)
        return name

    levels: dict[str, Any] = {
        "task": task,
        "env_id": config.env_id,
        "algo": config.algo,
        "config": agents.dataclasses.asdict(config),
        "training_seed": seed,
        "ref_min_score": r_rand,
    }
    for name, rec in (("expert", expert), ("medium", medium)):
        weights = commit(rec["frames"], f"{name}.pt")
        actor = load_actor(task, weights, policies)
        behavior = _evaluate(task, actor, episodes=episodes, seed=eval_seed, mode="behavior")
        greedy = _evaluate(task, actor, episodes=episodes, seed=eval_seed, mode="greedy")
        levels[name] = {
            "weights": weights,
            "frames": rec["frames"],
            "behavior_return": float(np.mean(behavior)),
            "behavior_return_std": float(np.std(behavior)),
            "greedy_return": float(np.mean(greedy)),
            "greedy_return_std": float(np.std(greedy)),
            "logged_behavior_return": rec["behavior_return"],
            "selection_return": rec["selection_return"],
        }
    levels["ref_max_score"] = levels["expert"]["behavior_return"]
    replay = [{"weights": None, "steps": seg, "epsilon": None}]
    by_frames = {r["frames"]: r for r in records}
    for k in range(1, medium["frames"] // seg):
        eps = by_frames[(k + 1) * seg].get("epsilon_mid_segment") if config.algo == "dqn" else None
        weights = commit(k * seg, f"replay/actor_{k * seg}.pt")
        replay.append({"weights": weights, "steps": seg, "epsilon": eps})
    levels["replay"] = replay
    levels["training_log"] = [
        {k: r[k] for k in ("frames", "greedy_return", "behavior_return", "selection_return")}
        for r in records
    ]
    (out / "levels.json").write_text(json.dumps(levels, indent=1) + "\n")
    print(
        f"{task}: random {r_rand:.1f}, medium @{medium['frames']} "
        f"{levels['medium']['behavior_return']:.1f}, expert @{expert['frames']} "
        f"{levels['expert']['behavior_return']:.1f} (greedy {levels['expert']['greedy_return']:.1f})"
    )
    return levels


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--task", default="all", help="a task or 'all'")
    parser.add_argument("--level", default="all", help="a level or 'all'")
    parser.add_argument("--root", type=Path, default=None, help="Minari datasets root")
    parser.add_argument("--size", type=int, default=None)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--format", default="hdf5", choices=["hdf5", "arrow"])
    parser.add_argument("--overwrite", action="store_true")
    parser.add_argument("--promote", action="store_true", help="choose levels from training")
    parser.add_argument("--medium-frames", type=int, default=None)
    parser.add_argument("--expert-frames", type=int, default=None)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--summary", action="store_true", help="print a table of --root")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    if args.summary:
        print(summary_table(args.root))
        return
    tasks = list(agents.TASKS) if args.task == "all" else [args.task]
    if args.promote:
        for task in tasks:
            promote(
                task,
                seed=args.seed,
                medium_frames=args.medium_frames,
                expert_frames=args.expert_frames,
            )
        return
    levels = LEVELS if args.level == "all" else [args.level]
    for task in tasks:
        if not (POLICIES / task / "levels.json").exists() and args.task == "all":
            print(f"{task}: no committed behaviour policies yet, skipped", flush=True)
            continue
        for level in levels:
            make_dataset(
                task,
                level,
                root=args.root,
                size=args.size,
                seed=args.seed,
                data_format=args.format,
                overwrite=args.overwrite,
            )


if __name__ == "__main__":
    main()
