"""Run TorchRL's own offline training scripts unchanged, with TorchRL's losses and with ours.

TorchRL's ``sota-implementations`` scripts (IQL, discrete IQL, CQL, discrete CQL, TD3+BC)
are run from a ``pytorch/rl`` checkout (``--rl``), each in its own subprocess with its own
Hydra config, once with TorchRL's loss class (``--impl torchrl``) and once with
``torchrl_offline``'s class of the same name put in its place (``--impl ours``). Nothing
in the script or its ``utils.py`` is edited; a small bootstrap (this file, re-invoked
with ``--child``) installs these patches before the script is imported, then runs it
with :func:`runpy.run_path` as ``__main__``:

* **loss** (``--impl ours`` only): ``torchrl.objectives.<Class>`` and
  ``torchrl.objectives.<iql|cql|td3_bc>.<Class>`` become ``torchrl_offline``'s class;
* **data**: the script's dataset class (``D4RLExperienceReplay`` /
  ``MinariExperienceReplay``) becomes a function that returns a local Minari dataset
  (made here with ``benchmarks/make_datasets.py``) loaded by
  :func:`torchrl_offline.data.load_minari` as a ``TensorDictReplayBuffer`` with TorchRL's
  keys, honouring the script's ``batch_size`` and ``sampler``, and its ``prefetch`` only
  with ``--prefetch``: background sampling makes the batch order depend on thread timing,
  so two runs with the same seed would no longer see the same batches. The dataset
  named by the script's ``replay_buffer.dataset`` (overridden on the command line to the
  local id) is looked up in the local root. ``discrete_cql_offline.py`` builds its dataset
  itself (random CartPole episodes recorded with Minari's ``DataCollector``, which needs
  ``jax``, then loaded with ``MinariExperienceReplay``): its
  ``utils.make_offline_discrete_replay_buffer`` is replaced by one returning the local
  CartPole dataset with the builder's settings (``batch_size`` from the config,
  ``SamplerWithoutReplacement(drop_last=True)``, ``prefetch=4``, ``DoubleToFloat``).
  ``discrete_iql.py`` is an *online* script
  (TorchRL has no offline discrete IQL script): its ``utils.make_replay_buffer`` returns
  the local CartPole dataset instead of an empty buffer, and the frames its collector
  adds are dropped (counted in the run record), so both implementations train on the
  same fixed data;
* **compatibility**: ``discrete_cql_offline.py`` builds its ``QValueActor`` with a
  batched action spec, which TorchRL 0.14.1 rejects whatever the loss; the harness makes
  ``strict_shape=False`` that class's default (see ``_qvalue_actor_shape``);
* **recording**: the loss class's ``forward``, ``actor_loss``, ``qvalue_loss`` and
  ``value_loss`` (those it has) are wrapped, identically for both implementations, to
  log every ``loss_*`` value of the outermost call (a method called from inside another
  is not logged twice); a step is one ``replay_buffer.sample()`` call.

Everything else goes through Hydra command-line overrides: environment and dataset
names, seed, number of steps, CPU device, logger off, evaluation once (TorchRL's scripts
evaluate at step 0 whatever the interval; discrete IQL at the end), one evaluation env,
no video. CQL's ``optim.policy_eval_start`` (40,000 steps of behaviour-cloning actor loss)
is scaled to ``--policy-eval-start`` of the run (default 20%), so the SAC actor loss is
trained in a short run too. Discrete IQL gets ``init_random_frames=0`` (its buffer is
full from the start) and ``frames_per_batch`` x ``total_frames`` giving ``--steps``
updates.

Outputs under ``--out``: ``datasets/`` and ``cache/`` (local data, reused across
invocations), one folder per run ``runs/<script>-<impl>-s<seed>/`` with ``losses.csv``
(one row per step, one column per ``loss_*`` term), ``run.json`` (status, steps, loss
class, error traceback) and ``output.log`` (the script's stdout and stderr), and
``summary.json`` / ``summary.md``: per script and loss term, the mean over the last 100
steps for each implementation (averaged over seeds), their difference, and the
seed-to-seed spread (max - min over seeds) of each implementation; and, for each seed, how
far apart the two implementations are at step 0 and the first step where their curves
part. With the same seed both start from the same weights and see the same batches for as
long as both losses draw the same random numbers, so equal equations give equal curves
(up to float rounding, which grows over training); a gap at step 0 or an early split
points at a difference in the loss itself, or in its use of randomness.

Usage::

    python benchmarks/dropin_scripts.py --rl /path/to/pytorch/rl --out outputs/dropin
    python benchmarks/dropin_scripts.py --rl ../rl --which iql cql --impl ours --steps 200
    python benchmarks/dropin_scripts.py --rl ../rl --seeds --out outputs/dropin  # seeds 0 1
    python benchmarks/dropin_scripts.py --summarize outputs/dropin   # table from runs/
"""

from __future__ import annotations

import argparse
import inspect
import json
import math
import os
import subprocess
import sys
import time
import traceback
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
IMPLS = ("torchrl", "ours")
#: Steps at the end of a run averaged in the summary.
TAIL = 100
#: Relative gap above which same-seed curves count as split (see same_seed_split).
SPLIT_RTOL = 1e-3
#: Lines of a failing run's traceback kept in the summary.
TRACEBACK_LINES = 12


@dataclass(frozen=True)
class ScriptSpec:
    """One TorchRL training script and how the harness feeds it."""

    path: str  # relative to the pytorch/rl checkout
    loss: str  # class name in torchrl.objectives (and torchrl_offline.objectives)
    module: str  # the torchrl.objectives submodule that defines it
    #: "d4rl" / "minari": the dataset class is patched; "offline_builder": discrete CQL's
    #: utils.make_offline_discrete_replay_buffer; "online": discrete IQL's utils.make_replay_buffer
    data: str
    discrete: bool
    #: compatibility patches the script needs with the installed TorchRL (see _COMPAT)
    compat: tuple[str, ...] = ()


SCRIPTS: dict[str, ScriptSpec] = {
    "iql": ScriptSpec("sota-implementations/iql/iql_offline.py", "IQLLoss", "iql", "d4rl", False),
    "discrete_iql": ScriptSpec(
        "sota-implementations/iql/discrete_iql.py", "DiscreteIQLLoss", "iql", "online", True
    ),
    "cql": ScriptSpec("sota-implementations/cql/cql_offline.py", "CQLLoss", "cql", "minari", False),
    "discrete_cql": ScriptSpec(
        "sota-implementations/cql/discrete_cql_offline.py",
        "DiscreteCQLLoss",
        "cql",
        "offline_builder",
        True,
        compat=("qvalue_actor_shape",),
    ),
    "td3_bc": ScriptSpec(
        "sota-implementations/td3_bc/td3_bc.py", "TD3BCLoss", "td3_bc", "d4rl", False
    ),
}

#: Loss-module methods whose outputs are recorded, with the key a bare tensor or a
#: ``(loss, metadata)`` tuple is recorded under (``forward`` returns ``loss_*`` entries).
RECORDED_METHODS = {
    "forward": None,
    "actor_loss": "loss_actor",
    "qvalue_loss": "loss_qvalue",
    "value_loss": "loss_value",
}


# ---------------------------------------------------------------------------------------
# Hydra overrides
# ---------------------------------------------------------------------------------------


def hydra_overrides(
    name: str,
    *,
    steps: int,
    seed: int,
    env_id: str,
    dataset_id: str,
    run_dir: Path,
    eval_steps: int,
    batch_size: int | None,
    policy_eval_start: float,
    frames_per_batch: int,
) -> list[str]:
    """The command-line overrides of one run (the scripts' configs are used otherwise)."""
    out = [
        f"hydra.run.dir={run_dir}",
        f"env.name={env_id}",
        f"env.seed={seed}",
        "logger.backend=null",
        "logger.video=False",
    ]
    if name == "discrete_iql":
        fpb = min(frames_per_batch, steps)
        total = fpb * math.ceil(steps / fpb)  # utd_ratio 1: one update per collected frame
        out += [
            "optim.device=cpu",
            "optim.utd_ratio=1",
            "collector.device=cpu",
            f"collector.frames_per_batch={fpb}",
            f"collector.total_frames={total}",
            "collector.init_random_frames=0",
            f"logger.eval_iter={total}",  # evaluates once, after the last batch
        ]
        if batch_size:
            out.append(f"optim.batch_size={batch_size}")
        return out
    out += [
        f"optim.gradient_steps={steps}",
        f"logger.eval_iter={steps}",  # the scripts evaluate at step 0 only
        f"logger.eval_steps={eval_steps}",
        "logger.eval_envs=1",
        f"replay_buffer.dataset={dataset_id}",
    ]
    out.append("network.device=cpu" if name == "td3_bc" else "optim.device=cpu")
    if name == "cql":
        out.append(f"optim.policy_eval_start={round(policy_eval_start * steps)}")
    if name == "discrete_cql":
        out.append(f"replay_buffer.env={env_id}")
    if batch_size:
        out.append(f"replay_buffer.batch_size={batch_size}")
    return out


# ---------------------------------------------------------------------------------------
# Child: patches installed before the script is imported, then the script itself
# ---------------------------------------------------------------------------------------


class _Recorder:
    """Loss values per step; a step starts at each ``replay_buffer.sample()``."""

    def __init__(self) -> None:
        self.steps: list[dict[str, float]] = []
        self.before_first_sample: dict[str, float] = {}
        self.repeated = 0  # a loss term logged twice in one step (the last value is kept)
        self.unrecognized: set[str] = set()
        self.depth = 0

    def new_step(self) -> None:
        self.steps.append({})

    def log(self, key: str, value: Any) -> None:
        import torch

        if not isinstance(value, torch.Tensor):
            return
        row = self.steps[-1] if self.steps else self.before_first_sample
        if key in row:
            self.repeated += 1
        row[key] = float(value.detach().float().mean())

    def record(self, method: str, out: Any, key: str | None) -> None:
        from tensordict import TensorDictBase

        if isinstance(out, (TensorDictBase, Mapping)):
            for k in list(out.keys()):
                if isinstance(k, str) and k.startswith("loss_"):
                    self.log(k, out.get(k))
        elif isinstance(out, (tuple, list)) and out and key is not None:
            self.log(key, out[0])
        elif key is not None:
            self.log(key, out)
        else:
            self.unrecognized.add(f"{method} -> {type(out).__name__}")


def _instrument(cls: type, recorder: _Recorder) -> list[str]:
    """Wrap the loss methods of ``cls`` in place to record their outputs."""
    wrapped = []
    for method, key in RECORDED_METHODS.items():
        raw = next((k.__dict__[method] for k in cls.__mro__ if method in k.__dict__), None)
        if raw is None:
            continue

        def wrapper(self, *args, _raw=raw, _method=method, _key=key, **kwargs):
            recorder.depth += 1
            try:
                out = _raw.__get__(self, type(self))(*args, **kwargs)
            finally:
                recorder.depth -= 1
            if recorder.depth == 0:
                recorder.record(_method, out, _key)
            return out

        wrapper.__name__ = method
        wrapper.__doc__ = getattr(raw, "__doc__", None)
        setattr(cls, method, wrapper)
        wrapped.append(method)
    return wrapped


def _local_buffer(cfg: dict[str, Any], recorder: _Recorder, info: dict[str, Any], **kwargs: Any):
    """The local dataset as a replay buffer whose ``sample()`` starts a recorded step."""
    from torchrl_offline.data import load_minari

    info["prefetch_asked"] = kwargs.get("prefetch")
    if not cfg["prefetch"]:
        kwargs["prefetch"] = None
    buffer = load_minari(
        cfg["dataset_id"], root=cfg["dataset_root"], cache_dir=cfg["cache_dir"], **kwargs
    )
    info["dataset_len"] = len(buffer)
    sample = buffer.sample

    def counted_sample(*args: Any, **kw: Any):
        recorder.new_step()
        return sample(*args, **kw)

    buffer.sample = counted_sample
    return buffer


def _patch_data(
    cfg: dict[str, Any], spec: ScriptSpec, recorder: _Recorder, info: dict[str, Any]
) -> None:
    """Replace the script's dataset class (or online buffer builder) by the local dataset."""

    def dataset_class(dataset_id=None, *, batch_size=None, sampler=None, prefetch=None, split_trajs=False, transform=None, **ignored):  # fmt: skip
        if split_trajs:
            raise NotImplementedError("the harness serves transitions (split_trajs=False)")
        if dataset_id != cfg["dataset_id"]:
            raise ValueError(f"script asked for {dataset_id!r}, harness has {cfg['dataset_id']!r}")
        info["dataset_kwargs_ignored"] = sorted(ignored)
        return _local_buffer(cfg, recorder, info, batch_size=batch_size, sampler=sampler, prefetch=prefetch, transform=transform)  # fmt: skip

    if spec.data == "d4rl":
        import torchrl.data.datasets.d4rl as d4rl

        d4rl.D4RLExperienceReplay = dataset_class
    elif spec.data == "minari":
        import torchrl.data.datasets.minari_data as minari_data

        minari_data.MinariExperienceReplay = dataset_class
    elif spec.data == "offline_builder":  # discrete CQL: utils.make_offline_discrete_replay_buffer
        import utils  # the script's utils.py (its folder is first on sys.path)
        from torchrl.data.replay_buffers import SamplerWithoutReplacement
        from torchrl.envs import DoubleToFloat

        def make_offline_discrete_replay_buffer(rb_cfg):
            # What the builder returns, minus its Minari DataCollector recording (which
            # needs jax): the dataset named rb_cfg.dataset, batch_size from rb_cfg,
            # SamplerWithoutReplacement(drop_last=True), prefetch 4, DoubleToFloat.
            if rb_cfg.dataset != cfg["dataset_id"]:
                raise ValueError(f"script asked for {rb_cfg.dataset!r}, harness has {cfg['dataset_id']!r}")  # fmt: skip
            buffer = _local_buffer(cfg, recorder, info, batch_size=rb_cfg.batch_size, sampler=SamplerWithoutReplacement(drop_last=True), prefetch=4)  # fmt: skip
            buffer.append_transform(DoubleToFloat())
            return buffer

        utils.make_offline_discrete_replay_buffer = make_offline_discrete_replay_buffer
    else:  # the online discrete IQL script: utils.make_replay_buffer
        import utils

        info["frames_dropped"] = 0

        def make_replay_buffer(batch_size, prb=False, buffer_size=None, scratch_dir=None, device="cpu", prefetch=3):  # fmt: skip
            if prb:
                raise NotImplementedError("the harness serves a uniform buffer (prb=0)")
            buffer = _local_buffer(cfg, recorder, info, batch_size=batch_size, prefetch=prefetch)

            def extend(data, *args: Any, **kwargs: Any):  # offline: collected frames dropped
                info["frames_dropped"] += data.numel()

            buffer.extend = extend
            return buffer

        utils.make_replay_buffer = make_replay_buffer


def _qvalue_actor_shape() -> None:
    """``QValueActor(strict_shape=False)`` by default.

    ``make_discretecql_model`` gives ``QValueActor`` the batched action spec of its
    one-env ``SerialEnv`` (shape ``[1, 2]``). TorchRL after 0.14.1 (``strict_shape=None``
    by default) only warns about the resulting action-shape mismatch and keeps the
    action as it is; TorchRL 0.14.1 (``strict_shape=True``) raises at model construction
    for either loss. ``False`` keeps the action unchanged, without the warning.
    """
    import torchrl.modules

    base = torchrl.modules.QValueActor
    if "strict_shape" not in inspect.signature(base.__init__).parameters:
        return

    class QValueActor(base):
        def __init__(self, *args: Any, strict_shape: Any = False, **kwargs: Any):
            super().__init__(*args, strict_shape=strict_shape, **kwargs)

    QValueActor.__qualname__ = QValueActor.__name__ = base.__name__
    torchrl.modules.QValueActor = QValueActor


_COMPAT = {"qvalue_actor_shape": _qvalue_actor_shape}


def child_main(config_path: str) -> int:
    """Bootstrap of one run: patch, then run the TorchRL script unchanged."""
    import runpy

    cfg = json.loads(Path(config_path).read_text())
    spec = ScriptSpec(**cfg["spec"])
    recorder = _Recorder()
    info: dict[str, Any] = {k: cfg[k] for k in ("script", "impl", "seed", "steps", "overrides")}
    status, error = "ok", None
    t0 = time.perf_counter()
    try:
        import torch

        if cfg.get("threads"):
            torch.set_num_threads(cfg["threads"])
        import importlib

        import torchrl.objectives as objectives

        submodule = importlib.import_module(f"torchrl.objectives.{spec.module}")
        if cfg["impl"] == "ours":
            import torchrl_offline.objectives as ours

            cls = getattr(ours, spec.loss)
            setattr(objectives, spec.loss, cls)
            setattr(submodule, spec.loss, cls)
        else:
            cls = getattr(submodule, spec.loss)
        info["loss_class"] = f"{cls.__module__}.{cls.__qualname__}"
        info["recorded_methods"] = _instrument(cls, recorder)
        for name in spec.compat:
            _COMPAT[name]()
        info["compat_patches"] = list(spec.compat)
        script = Path(cfg["script_path"])
        sys.path.insert(0, str(script.parent))
        _patch_data(cfg, spec, recorder, info)
        sys.argv = [str(script), *cfg["overrides"]]
        runpy.run_path(str(script), run_name="__main__")
    except SystemExit as exc:  # hydra exits only on its own errors (HYDRA_FULL_ERROR re-raises)
        if exc.code not in (0, None):
            status, error = "error", traceback.format_exc()
    except BaseException:
        status, error = "error", traceback.format_exc()
    info.update(
        status=status,
        error=error,
        wall_s=round(time.perf_counter() - t0, 1),
        steps_sampled=len(recorder.steps),
        steps_with_loss=sum(bool(row) for row in recorder.steps),
        repeated_terms=recorder.repeated,
        unrecognized_outputs=sorted(recorder.unrecognized),
        before_first_sample=recorder.before_first_sample,
        losses=recorder.steps,
    )
    Path(cfg["record_path"]).write_text(json.dumps(info))
    if error:
        sys.stderr.write(error)
    return 0 if status == "ok" else 1


# ---------------------------------------------------------------------------------------
# Parent: datasets, runs, summary
# ---------------------------------------------------------------------------------------


def prepare_dataset(task: str, level: str, size: int, root: Path, cache: Path) -> tuple[str, str]:
    """Make (once) a local benchmark dataset and its cached conversion; (dataset id, env id)."""
    sys.path.insert(0, str(HERE))
    import make_datasets

    from torchrl_offline.data import load_minari

    dataset_id = make_datasets.dataset_id(task, level)
    path = root / task / f"{level}-v0"
    if not (path / "data").exists():
        make_datasets.make_dataset(task, level, root=root, size=size)
    else:
        print(f"{dataset_id}: reusing {path}", flush=True)
    buffer = load_minari(dataset_id, root=root, cache_dir=cache)  # convert once, here
    print(f"{dataset_id}: {len(buffer)} transitions", flush=True)
    return dataset_id, make_datasets.agents.TASKS[task].env_id


def run_one(
    name: str,
    impl: str,
    seed: int,
    *,
    args: argparse.Namespace,
    dataset: tuple[str, str],
    out: Path,
) -> dict[str, Any]:
    """One script, one implementation, one seed, in a subprocess; returns its record."""
    spec = SCRIPTS[name]
    run_dir = (out / "runs" / f"{name}-{impl}-s{seed}").resolve()
    run_dir.mkdir(parents=True, exist_ok=True)
    record_path = run_dir / "run.json"
    record_path.unlink(missing_ok=True)
    dataset_id, env_id = dataset
    overrides = hydra_overrides(
        name,
        steps=args.steps,
        seed=seed,
        env_id=env_id,
        dataset_id=dataset_id,
        run_dir=run_dir / "hydra",
        eval_steps=args.eval_steps,
        batch_size=args.batch_size,
        policy_eval_start=args.policy_eval_start,
        frames_per_batch=args.frames_per_batch,
    ) + list(args.override.get(name, []))
    cfg = {
        "script": name,
        "impl": impl,
        "seed": seed,
        "steps": args.steps,
        "spec": spec.__dict__,
        "script_path": str((Path(args.rl) / spec.path).resolve()),
        "overrides": overrides,
        "dataset_id": dataset_id,
        "dataset_root": str((out / "datasets").resolve()),
        "cache_dir": str((out / "cache").resolve()),
        "record_path": str(record_path),
        "threads": args.threads,
        "prefetch": args.prefetch,
    }
    config_path = run_dir / "child.json"
    config_path.write_text(json.dumps(cfg, indent=1))
    env = {
        **os.environ,
        "HYDRA_FULL_ERROR": "1",
        "WANDB_MODE": "disabled",
        "TQDM_DISABLE": "1",
        "MINARI_DATASETS_PATH": str(run_dir / "minari_scratch"),
        "OMP_NUM_THREADS": str(args.threads),
        "MKL_NUM_THREADS": str(args.threads),
    }
    source = source_state() if impl == "ours" else None
    t0 = time.perf_counter()
    with open(run_dir / "output.log", "w") as log:
        try:
            proc = subprocess.run(
                [sys.executable, str(Path(__file__).resolve()), "--child", str(config_path)],
                stdout=log,
                stderr=subprocess.STDOUT,
                env=env,
                cwd=run_dir,
                timeout=args.timeout,
            )
            rc: int | str = proc.returncode
        except subprocess.TimeoutExpired:
            rc = "timeout"
    if record_path.exists():
        record = json.loads(record_path.read_text())
    else:  # killed before writing its record
        tail = (run_dir / "output.log").read_text(errors="replace").splitlines()[-40:]
        record = {k: cfg[k] for k in ("script", "impl", "seed", "steps", "overrides")}
        record.update(status=f"no record (exit {rc})", error="\n".join(tail), losses=[])
        record_path.write_text(json.dumps(record))
    if source:
        record["torchrl_offline_at_start"] = source
        record_path.write_text(json.dumps(record))
    write_csv(record, run_dir / "losses.csv")
    done = completed(record)
    print(
        f"{name:13s} {impl:8s} seed {seed}: {record['status']}, "
        f"{record.get('steps_with_loss', 0)}/{args.steps} steps"
        f"{' (complete)' if done else ''}, {time.perf_counter() - t0:.0f}s",
        flush=True,
    )
    if record.get("error"):
        print("    " + "\n    ".join(error_tail(record["error"])), flush=True)
    return record


def write_csv(record: Mapping[str, Any], path: Path) -> None:
    rows = record.get("losses", [])
    keys = sorted({k for row in rows for k in row})
    lines = [",".join(["step", *keys])]
    lines += [",".join([str(i)] + [repr(row[k]) if k in row else "" for k in keys]) for i, row in enumerate(rows)]  # fmt: skip
    path.write_text("\n".join(lines) + "\n")


def completed(record: Mapping[str, Any]) -> bool:
    return record.get("status") == "ok" and record.get("steps_with_loss") == record.get("steps")


def error_tail(error: str, n: int = TRACEBACK_LINES) -> list[str]:
    return [line for line in error.rstrip().splitlines() if line.strip()][-n:]


def tail_mean(record: Mapping[str, Any], key: str, tail: int = TAIL) -> float | None:
    rows = record.get("losses", [])[-tail:]
    values = [row[key] for row in rows if key in row]
    return sum(values) / len(values) if values else None


def same_seed_split(
    runs: list[dict[str, Any]], key: str, rtol: float = SPLIT_RTOL
) -> dict[str, Any]:
    """Ours vs TorchRL with the same seed: relative gap at the first step, and the first
    step where the two curves differ by more than ``rtol`` (relative), per seed.

    With the same seed both runs start from the same weights and, as long as both losses
    draw the same random numbers, see the same batches: equal equations give equal curves
    (up to float rounding) until rounding or a different random draw makes them drift.
    """
    by = {(r["impl"], r["seed"]): r.get("losses", []) for r in runs}
    first_gap, split_at = {}, {}
    for seed in sorted({s for (impl, s) in by if impl == "torchrl"}):
        if ("ours", seed) not in by:
            continue
        pairs = [
            (i, a[key], b[key])
            for i, (a, b) in enumerate(zip(by["torchrl", seed], by["ours", seed]))
            if key in a and key in b
        ]
        if not pairs:
            continue
        gaps = [(i, abs(a - b) / max(abs(a), abs(b), 1e-8)) for i, a, b in pairs]
        first_gap[seed] = gaps[0][1]
        split_at[seed] = next((i for i, g in gaps if not g <= rtol), None)
    if not first_gap:
        return {}
    return {"first_step_rel_gap": first_gap, "split_step": split_at, "rtol": rtol}


def summarize(records: list[dict[str, Any]], tail: int = TAIL) -> dict[str, Any]:
    """Per script and loss term: last-``tail``-step means per impl and seed, spread, diff."""
    summary: dict[str, Any] = {}
    for name in SCRIPTS:
        runs = [r for r in records if r["script"] == name]
        if not runs:
            continue
        entry: dict[str, Any] = {"runs": {}, "terms": {}}
        for r in runs:
            entry["runs"][f"{r['impl']}/s{r['seed']}"] = {
                "status": r["status"],
                "completed": completed(r),
                "steps_with_loss": r.get("steps_with_loss", 0),
                "steps": r["steps"],
                "loss_class": r.get("loss_class"),
                "wall_s": r.get("wall_s"),
                "frames_dropped": r.get("frames_dropped"),
                "error_tail": error_tail(r["error"]) if r.get("error") else None,
            }
        keys = sorted({k for r in runs for row in r.get("losses", []) for k in row})
        for key in keys:
            term: dict[str, Any] = {}
            for impl in IMPLS:
                per_seed = {r["seed"]: tail_mean(r, key, tail) for r in runs if r["impl"] == impl}
                per_seed = {s: v for s, v in per_seed.items() if v is not None}
                if not per_seed:
                    continue
                vals = list(per_seed.values())
                term[impl] = {
                    "per_seed": per_seed,
                    "mean": sum(vals) / len(vals),
                    "seed_spread": max(vals) - min(vals) if len(vals) > 1 else None,
                }
            split = same_seed_split(runs, key)
            if split:
                term["same_seed"] = split
            if all(impl in term for impl in IMPLS):
                diff = term["ours"]["mean"] - term["torchrl"]["mean"]
                spreads = [
                    term[i]["seed_spread"] for i in IMPLS if term[i]["seed_spread"] is not None
                ]
                term["diff"] = diff
                term["diff_over_spread"] = (
                    abs(diff) / max(spreads) if spreads and max(spreads) > 0 else None
                )
            entry["terms"][key] = term
        summary[name] = entry
    return summary


def _fmt(x: float | None) -> str:
    if x is None:
        return "-"
    if x != x:
        return "nan"
    return f"{x:.4g}"


def summary_markdown(summary: Mapping[str, Any], tail: int = TAIL) -> str:
    lines = [
        f"Mean of each loss term over the last {tail} steps (averaged over seeds); "
        "spread = max - min over seeds; ratio = |ours - torchrl| / max spread. "
        "Same seed: relative gap between the two implementations at step 0, and the first "
        f"step where their curves differ by more than {SPLIT_RTOL:g} (relative; '-': never), "
        "per seed.",
        "",
        "| script | term | torchrl | ours | ours - torchrl | spread torchrl | spread ours | ratio | same seed: step-0 gap | split at step |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for name, entry in summary.items():
        for key, term in entry["terms"].items():
            t, o = term.get("torchrl", {}), term.get("ours", {})
            same = term.get("same_seed", {})
            gap0 = ", ".join(_fmt(v) for v in same.get("first_step_rel_gap", {}).values()) or "-"
            split = ", ".join("-" if v is None else str(v) for v in same.get("split_step", {}).values()) or "-"  # fmt: skip
            lines.append(
                f"| {name} | {key} | {_fmt(t.get('mean'))} | {_fmt(o.get('mean'))} | "
                f"{_fmt(term.get('diff'))} | {_fmt(t.get('seed_spread'))} | "
                f"{_fmt(o.get('seed_spread'))} | {_fmt(term.get('diff_over_spread'))} | "
                f"{gap0} | {split} |"
            )
    lines += [
        "",
        "| script | run | completed | steps | wall s | loss class |",
        "|---|---|---|---|---|---|",
    ]
    failures = []
    for name, entry in summary.items():
        for run, r in entry["runs"].items():
            lines.append(
                f"| {name} | {run} | {'yes' if r['completed'] else 'NO: ' + r['status']} | "
                f"{r['steps_with_loss']}/{r['steps']} | {_fmt(r['wall_s'])} | {r['loss_class']} |"
            )
            if r["error_tail"]:
                failures.append((name, run, r["error_tail"]))
    for name, run, tail_lines in failures:
        lines += ["", f"{name} {run} failed:", "```", *tail_lines, "```"]
    return "\n".join(lines) + "\n"


def source_state() -> dict[str, Any]:
    """The torchrl_offline commit and its uncommitted changes (the losses under test)."""
    repo = HERE.parent

    def git(*cmd: str) -> str:
        try:
            return subprocess.run(["git", "-C", str(repo), *cmd], capture_output=True, text=True, timeout=30).stdout.strip()  # fmt: skip
        except (OSError, subprocess.SubprocessError):
            return ""

    return {
        "commit": git("rev-parse", "--short", "HEAD"),
        "uncommitted": git("status", "--porcelain", "--", "torchrl_offline").splitlines(),
        "time": time.strftime("%Y-%m-%d %H:%M:%S"),
    }


def write_summary(out: Path, records: list[dict[str, Any]], sources: list[dict[str, Any]] | None = None) -> str:  # fmt: skip
    summary = summarize(records)
    payload = {"sources": sources, **summary} if sources else summary
    (out / "summary.json").write_text(json.dumps(payload, indent=1))
    text = summary_markdown(summary)
    for label, src in zip(("start", "end"), sources or []):
        dirty = ", ".join(src["uncommitted"]) or "none"
        text += (
            f"\ntorchrl_offline at {label} ({src['time']}): {src['commit']}, uncommitted: {dirty}\n"
        )
    (out / "summary.md").write_text(text)
    return text


def _parse_overrides(items: list[str]) -> dict[str, list[str]]:
    out: dict[str, list[str]] = {}
    for item in items:
        name, sep, override = item.partition(":")
        if not sep or name not in SCRIPTS or "=" not in override:
            raise SystemExit(f"--override wants SCRIPT:KEY=VALUE with SCRIPT in {list(SCRIPTS)}")
        out.setdefault(name, []).append(override)
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rl", help="a pytorch/rl checkout (holding sota-implementations/)")
    parser.add_argument("--steps", type=int, default=500, help="gradient steps per run")
    parser.add_argument("--which", nargs="+", choices=list(SCRIPTS), default=list(SCRIPTS))
    parser.add_argument("--impl", choices=[*IMPLS, "both"], default="both")
    parser.add_argument(
        "--seeds",
        type=int,
        nargs="*",
        default=[0],
        help="seeds (env.seed) per implementation; bare --seeds means 0 1",
    )
    parser.add_argument("--out", default="outputs/dropin_scripts", help="output folder")
    parser.add_argument("--task", default="pendulum", choices=["pendulum", "hopper", "halfcheetah"], help="continuous-control dataset task (discrete scripts use cartpole)")  # fmt: skip
    parser.add_argument("--level", default="medium", help="dataset level (make_datasets.py)")
    parser.add_argument("--size", type=int, default=10_000, help="transitions per dataset")
    parser.add_argument("--eval-steps", type=int, default=50, help="steps of the one evaluation rollout")  # fmt: skip
    parser.add_argument("--batch-size", type=int, default=None, help="override the scripts' batch size")  # fmt: skip
    parser.add_argument("--policy-eval-start", type=float, default=0.2, help="CQL: fraction of steps with the behaviour-cloning actor loss")  # fmt: skip
    parser.add_argument("--frames-per-batch", type=int, default=100, help="discrete IQL: collector frames (= updates) per batch")  # fmt: skip
    parser.add_argument("--override", action="append", default=[], metavar="SCRIPT:KEY=VALUE", help="extra Hydra override for one script")  # fmt: skip
    parser.add_argument("--prefetch", action="store_true", help="sample in background threads as the scripts ask (prefetch); the batch order then depends on thread timing, so equal seeds no longer give equal curves")  # fmt: skip
    parser.add_argument("--jobs", type=int, default=1, help="runs in parallel")
    parser.add_argument("--threads", type=int, default=1, help="torch threads per run (more than one is much slower on a busy machine)")  # fmt: skip
    parser.add_argument("--timeout", type=float, default=1800, help="seconds per run")
    parser.add_argument("--summarize", metavar="OUT", help="only rebuild the summary of OUT/runs")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        return child_main(args.child)
    if args.summarize:
        out = Path(args.summarize)
        records = [json.loads(p.read_text()) for p in sorted(out.glob("runs/*/run.json"))]
        print(write_summary(out, records))
        return 0
    if not args.rl:
        parser.error("--rl is required")
    missing = [n for n in args.which if not (Path(args.rl) / SCRIPTS[n].path).exists()]
    if missing:
        parser.error(f"not in {args.rl}: {[SCRIPTS[n].path for n in missing]}")
    if args.seeds == []:
        args.seeds = [0, 1]
    args.override = _parse_overrides(args.override)
    impls = IMPLS if args.impl == "both" else (args.impl,)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    sources = [source_state()]
    datasets: dict[bool, tuple[str, str]] = {}
    for discrete in sorted({SCRIPTS[n].discrete for n in args.which}):
        task = "cartpole" if discrete else args.task
        datasets[discrete] = prepare_dataset(task, args.level, args.size, out / "datasets", out / "cache")  # fmt: skip
    jobs = [(n, impl, seed) for n in args.which for seed in args.seeds for impl in impls]
    t0 = time.perf_counter()
    run = lambda job: run_one(*job, args=args, dataset=datasets[SCRIPTS[job[0]].discrete], out=out)  # noqa: E731
    if args.jobs > 1:
        from concurrent.futures import ThreadPoolExecutor

        with ThreadPoolExecutor(args.jobs) as pool:
            list(pool.map(run, jobs))
    else:
        for job in jobs:
            run(job)
    print(f"{len(jobs)} runs in {time.perf_counter() - t0:.0f}s", flush=True)
    # Summarize every run on disk for these scripts (earlier invocations' other impls too).
    records = [json.loads(p.read_text()) for p in sorted(out.glob("runs/*/run.json"))]
    print(write_summary(out, records, [*sources, source_state()]))
    return 0


if __name__ == "__main__":
    sys.exit(main())
