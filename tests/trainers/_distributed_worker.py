"""The body of each rank in tests/trainers/test_distributed.py (run in spawned processes).

Each scenario sets the ``env://`` variables torchrun would set, runs the public API
(``train`` or the CLI) and returns what the test compares; a rank writes its results to
``<work>/rank<r>.pt`` after every scenario, so the parent sees what finished even when a
rank dies in the last one.
"""

from __future__ import annotations

import contextlib
import dataclasses
import io
import os
import sys
import traceback
from pathlib import Path
from typing import Any

import torch

STEPS = 8
BATCH = 8
SEED = 3
HIDDEN = (16,)


def _env(rank: int, world: int, port: int) -> None:
    os.environ.update(
        RANK=str(rank),
        LOCAL_RANK=str(rank),
        WORLD_SIZE=str(world),
        MASTER_ADDR="127.0.0.1",
        MASTER_PORT=str(port),
    )


def _open(path: Path, *, without_replacement: bool, batch_size: int = BATCH):
    from torchrl.data import RandomSampler, SamplerWithoutReplacement

    from torchrl_offline.data.storage import load_transitions, make_replay_buffer

    td, metadata = load_transitions(path)
    sampler = SamplerWithoutReplacement() if without_replacement else RandomSampler()
    return make_replay_buffer(
        td, batch_size=batch_size, sampler=sampler, metadata=metadata, path=path
    )


class CountCalls:
    """A user hook: counts the updates it sees (it must run on rank 0 only)."""

    def __init__(self) -> None:
        self.calls = 0

    def __call__(self, *args: Any) -> None:
        self.calls += 1

    def register(self, trainer: Any) -> None:
        trainer.register_op("post_steps", self)


class StopAt:
    """A user hook asking the trainer to stop after update ``step`` (like EarlyStopping)."""

    def __init__(self, step: int) -> None:
        self.step = step
        self.trainer: Any = None

    def __call__(self, *args: Any) -> None:
        if self.trainer.step == self.step:
            self.trainer.request_stop("stopped by a hook")

    def register(self, trainer: Any) -> None:
        self.trainer = trainer
        trainer.register_op("post_steps", self)


def _state(module: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in module.state_dict().items()}


def _iql(rank: int, data: Path, out: Path, **kwargs: Any):
    from torchrl_offline.trainers.offline import train

    return train(
        "iql",
        _open(data, without_replacement=True),
        seed=SEED,
        batch_size=BATCH,
        out_dir=out,
        progress=False,
        overrides={"hidden_sizes": HIDDEN},
        distributed=True,
        **kwargs,
    )


def equivalence(rank: int, work: Path, data: Path) -> dict[str, Any]:
    """IQL for STEPS updates on disjoint shards, evaluated and checkpointed on rank 0."""
    hook = CountCalls()
    result = _iql(
        rank,
        data,
        work / "run_a",
        total_steps=STEPS,
        checkpoint_interval=4,
        eval_env="Pendulum-v1",
        eval_interval=4,
        eval_episodes=1,
        eval_max_steps=5,
        logger="csv",
        log_interval=4,
        hooks=[hook],
    )
    return {
        "state": _state(result.algorithm.loss),
        "step": result.step,
        "evaluations": result.evaluations,
        "hook_calls": hook.calls,
        "log_dir": None if result.log_dir is None else str(result.log_dir),
    }


def resume_same_world(rank: int, work: Path, data: Path) -> dict[str, Any]:
    """The same run stopped by a hook on rank 0 after update 3 (so every rank stops after
    update 4) and resumed on the same world size."""
    stopped = _iql(
        rank,
        data,
        work / "run_b",
        total_steps=STEPS,
        checkpoint_interval=100,
        logger=None,
        hooks=[StopAt(3)],
    )
    result = _iql(
        rank,
        data,
        work / "run_b",
        total_steps=STEPS,
        checkpoint_interval=100,
        logger=None,
        resume=True,
    )
    return {
        "stopped_at": stopped.step,
        "stop_reason": stopped.stop_reason,
        "state": _state(result.algorithm.loss),
        "step": result.step,
    }


def cql_lagrange(rank: int, work: Path, data: Path) -> dict[str, Any]:
    """CQL with automatic entropy tuning and the Lagrange multiplier (random sampler)."""
    from torchrl_offline.trainers.algorithms import build_algorithm, specs_from_dataset
    from torchrl_offline.trainers.offline import train

    dataset = _open(data, without_replacement=False)
    torch.manual_seed(rank)  # deliberately different builds: rank 0's weights are broadcast
    algo = build_algorithm(
        "cql", *specs_from_dataset(dataset), hidden_sizes=HIDDEN, with_lagrange=True, num_random=2
    )
    algo = dataclasses.replace(algo, loss_keys=(*algo.loss_keys, "loss_alpha_prime"))
    initial = _state(algo.loss)
    result = train(
        algo,
        dataset,
        total_steps=5,
        seed=SEED,
        batch_size=BATCH,
        logger=None,
        progress=False,
        distributed=True,
    )
    return {"initial": initial, "state": _state(result.algorithm.loss)}


def awr_td_lambda(rank: int, work: Path, data: Path) -> dict[str, Any]:
    """AWR with TD(lambda) returns refreshed every 3 updates: every column each rank
    computed, and its parameters."""
    from torchrl_offline.trainers import td_lambda
    from torchrl_offline.trainers.offline import train

    columns: list[tuple[int, torch.Tensor]] = []
    refresh = td_lambda.TDLambdaRefresh.refresh

    def recording(self, step):
        refresh(self, step)
        columns.append((step, self.returns.clone()))

    td_lambda.TDLambdaRefresh.refresh = recording
    try:
        result = train(
            "awr",
            _open(data, without_replacement=False),
            total_steps=STEPS,
            seed=SEED,
            batch_size=BATCH,
            logger=None,
            progress=False,
            distributed=True,
            overrides={
                "hidden_sizes": HIDDEN,
                "value_target": "td_lambda",
                "td_lambda_interval": 3,
            },
        )
    finally:
        td_lambda.TDLambdaRefresh.refresh = refresh
    return {"columns": columns, "state": _state(result.algorithm.loss)}


def mismatch(rank: int, work: Path, data: Path) -> dict[str, Any]:
    """Rank 1 launched with another batch size."""
    from torchrl_offline.trainers.offline import train

    try:
        train(
            "bc",
            _open(data, without_replacement=True),
            total_steps=3,
            seed=SEED,
            batch_size=BATCH + rank,
            logger=None,
            progress=False,
            distributed=True,
            overrides={"hidden_sizes": HIDDEN},
        )
    except Exception as err:
        return {"error": f"{type(err).__name__}: {err}"}
    return {"error": None}


def _cli(argv: list[str]) -> tuple[int, str, str]:
    from torchrl_offline.cli import main

    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = main(argv)
    return code, out.getvalue(), err.getvalue()


def cli(rank: int, work: Path, data: Path, csv: Path) -> dict[str, Any]:
    """``torchrl-offline train`` under a torchrun environment (auto-detected)."""
    args = [
        "train",
        "--algo",
        "td3_bc",
        "--steps",
        "3",
        "--batch-size",
        "8",
        "--no-progress",
        "--set",
        "hidden_sizes=(16,)",
        "--logger",
        "none",
        "--checkpoint-every",
        "3",
    ]
    code, out, err = _cli([*args, "--dataset", str(csv), "--out", str(work / "cli_run")])
    return {"code": code, "stdout": out, "stderr": err}


def cli_missing(rank: int, work: Path, data: Path, csv: Path) -> dict[str, Any]:
    """The dataset file is missing on rank 1 only."""
    path = csv if rank == 0 else work / "nowhere" / "log.csv"
    args = [
        "train",
        "--algo",
        "bc",
        "--steps",
        "3",
        "--no-progress",
        "--distributed",
        "--logger",
        "none",
        "--dataset",
        str(path),
        "--out",
        str(work / "cli_missing"),
    ]
    code, out, err = _cli(args)
    return {"code": code, "stdout": out, "stderr": err}


def dead_rank(rank: int, work: Path, data: Path) -> dict[str, Any]:
    """Rank 1 dies in its third update; rank 0 must fail, not hang."""
    from torchrl_offline.trainers import distributed

    if rank == 1:
        step = distributed.AllReduceStepper.step

        def dying(self, trainer, batch):
            if trainer.collected_frames == 3:
                os._exit(17)
            return step(self, trainer, batch)

        distributed.AllReduceStepper.step = dying
    try:
        _iql(rank, data, None, total_steps=50, logger=None)
    except Exception as err:
        return {"error": f"{type(err).__name__}: {err}"}
    return {"error": None}


SCENARIOS = {
    "equivalence": equivalence,
    "resume_same_world": resume_same_world,
    "cql_lagrange": cql_lagrange,
    "awr_td_lambda": awr_td_lambda,
    "mismatch": mismatch,
    "cli": cli,
    "cli_missing": cli_missing,
    "dead_rank": dead_rank,
}


def main(
    rank: int, world: int, ports: list[int], names: list[str], work: str, data: str, csv: str
) -> None:
    """Runs the named scenarios in order on this rank, saving results after each."""
    torch.set_num_threads(1)
    work_dir, results = Path(work), {}
    os.environ["TORCHRL_OFFLINE_CACHE"] = str(work_dir / "cache")  # the CLI's conversions
    os.environ["MINARI_DATASETS_PATH"] = str(work_dir / "minari")
    for port, name in zip(ports, names):
        _env(rank, world, port)
        fn = SCENARIOS[name]
        extra = (Path(csv),) if name.startswith("cli") else ()
        try:
            results[name] = fn(rank, work_dir, Path(data), *extra)
        except BaseException:
            results[name] = {"crash": traceback.format_exc()}
        torch.save(results, work_dir / f".rank{rank}.tmp")
        os.replace(work_dir / f".rank{rank}.tmp", work_dir / f"rank{rank}.pt")
    sys.stdout.flush()
