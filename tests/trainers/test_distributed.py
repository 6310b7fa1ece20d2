"""Data-parallel training: two gloo ranks on loopback against one process on the union batch.

The two ranks are started once for the module (forkserver, so torch is imported once)
and run the scenarios of ``_distributed_worker.py`` one after the other, each on a fresh
port; the tests below check what each scenario returned. World-size-1 runs (resume on
another world size, bad resumes, rendezvous timeout) run in this process.
"""

from __future__ import annotations

import multiprocessing
import shutil
import socket
import warnings
from pathlib import Path
from typing import Any

import gymnasium as gym
import numpy as np
import pandas as pd
import pytest
import torch
from torchrl.data.replay_buffers.samplers import Sampler

from tests.trainers import _distributed_worker as worker
from tests.trainers.conftest import make_dataset
from torchrl_offline.data.logged import from_logged
from torchrl_offline.data.sharding import ShardedSampler
from torchrl_offline.data.storage import load_transitions, make_replay_buffer
from torchrl_offline.trainers.algorithms import build_algorithm, specs_from_dataset
from torchrl_offline.trainers.checkpoint import (
    CheckpointError,
    latest_checkpoint,
    list_checkpoints,
    load_checkpoint,
    save_checkpoint,
)
from torchrl_offline.trainers.distributed import DistributedError, init_distributed
from torchrl_offline.trainers.offline import train

N = 128
WORLD = 2
SCENARIOS = list(worker.SCENARIOS)  # dead_rank last: rank 1 exits there
DEADLINE = 180.0  # seconds for all scenarios; far above what they need


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _write_data(work: Path) -> tuple[Path, Path]:
    """The same 128 transitions as a memory-mapped dataset and as a CSV log."""
    td = make_dataset(n=N).storage[:]
    from_logged(
        td,
        path=work / "data",
        observation_space=gym.spaces.Box(-np.inf, np.inf, (3,), np.float32),
        action_space=gym.spaces.Box(-2.0, 2.0, (1,), np.float32),
    )
    columns: dict[str, Any] = {}
    for i in range(3):
        columns[f"observation_{i}"] = td["observation"][:, i].numpy()
        columns[f"next_observation_{i}"] = td["next", "observation"][:, i].numpy()
    columns["action_0"] = td["action"][:, 0].numpy()
    columns["reward"] = td["next", "reward"][:, 0].numpy()
    columns["terminated"] = td["next", "terminated"][:, 0].numpy()
    columns["truncated"] = td["next", "truncated"][:, 0].numpy()
    pd.DataFrame(columns).to_csv(work / "log.csv", index=False)
    return work / "data", work / "log.csv"


@pytest.fixture(scope="module")
def two_ranks(tmp_path_factory) -> dict[str, Any]:
    """Runs every scenario on 2 ranks; returns ``{"work", "data", "results": [r0, r1],
    "exitcodes"}``."""
    work = tmp_path_factory.mktemp("distributed")
    data, csv = _write_data(work)
    ctx = multiprocessing.get_context("forkserver")
    ctx.set_forkserver_preload([worker.__name__, "torchrl_offline.trainers.offline"])
    ports = [_free_port() for _ in SCENARIOS]
    procs = [
        ctx.Process(
            target=worker.main,
            args=(rank, WORLD, ports, SCENARIOS, str(work), str(data), str(csv)),
        )
        for rank in range(WORLD)
    ]
    try:
        for p in procs:
            p.start()
        for p in procs:
            p.join(DEADLINE)
    finally:
        for p in procs:  # never leave a rank behind
            if p.is_alive():
                p.kill()
                p.join(10)
    results = []
    for rank in range(WORLD):
        path = work / f"rank{rank}.pt"
        results.append(torch.load(path, weights_only=False) if path.exists() else {})
    return {
        "work": work,
        "data": data,
        "results": results,
        "exitcodes": [p.exitcode for p in procs],
    }


def _result(two_ranks: dict[str, Any], name: str) -> list[dict[str, Any]]:
    out = [r.get(name) for r in two_ranks["results"]]
    for rank, r in enumerate(out):
        assert r is not None, f"rank {rank} did not finish {name}: {two_ranks['exitcodes']}"
        assert "crash" not in r, f"rank {rank} crashed in {name}:\n{r['crash']}"
    return out


# ----------------------------------------------------------------------------- correctness
def test_ranks_hold_identical_parameters(two_ranks):
    r0, r1 = _result(two_ranks, "equivalence")
    assert r0["step"] == r1["step"] == worker.STEPS
    assert r0["state"].keys() == r1["state"].keys()
    for key in r0["state"]:  # networks and target networks, bitwise
        assert torch.equal(r0["state"][key], r1["state"][key]), key


class _FixedOrder(Sampler):
    """Returns given index batches in order (the union of the ranks' batches)."""

    def __init__(self, batches: list[torch.Tensor]) -> None:
        self.batches = list(batches)

    def sample(self, storage, batch_size):
        return self.batches.pop(0), {}

    def _empty(self):
        pass

    def dumps(self, path):
        pass

    def loads(self, path):
        pass

    def state_dict(self):
        return {}

    def load_state_dict(self, state_dict):
        pass


def test_equals_one_process_on_the_union_of_batches(two_ranks):
    r0, _ = _result(two_ranks, "equivalence")
    # the shards each rank read (seeded by the run's seed, identical on every rank)
    samplers = [ShardedSampler(rank=r, world_size=WORLD, seed=worker.SEED) for r in range(WORLD)]
    batches = [
        torch.cat([s.sample(range(N), worker.BATCH)[0] for s in samplers])
        for _ in range(worker.STEPS)
    ]
    assert len(set(torch.cat(batches[:4]).tolist())) == 4 * WORLD * worker.BATCH  # disjoint
    td, metadata = load_transitions(two_ranks["data"])
    union = make_replay_buffer(
        td, batch_size=WORLD * worker.BATCH, sampler=_FixedOrder(batches), metadata=metadata
    )
    single = train(
        "iql",
        union,
        total_steps=worker.STEPS,
        seed=worker.SEED,
        batch_size=WORLD * worker.BATCH,
        overrides={"hidden_sizes": worker.HIDDEN},
        logger=None,
        progress=False,
        distributed=False,
    )
    reference = single.algorithm.loss.state_dict()
    torch.manual_seed(worker.SEED)
    initial = build_algorithm("iql", *specs_from_dataset(union), hidden_sizes=worker.HIDDEN)
    initial_state = initial.loss.state_dict()
    for key, value in r0["state"].items():
        assert torch.allclose(value, reference[key], atol=1e-5, rtol=0), key
    assert any(not torch.equal(v, initial_state[k]) for k, v in r0["state"].items())


def test_temperature_and_lagrange_multiplier_identical_across_ranks(two_ranks):
    r0, r1 = _result(two_ranks, "cql_lagrange")
    assert not torch.equal(r0["initial"]["log_alpha"], r0["state"]["log_alpha"])
    assert not torch.equal(r0["initial"]["log_alpha_prime"], r0["state"]["log_alpha_prime"])
    targets = [k for k in r0["state"] if k.startswith("target_")]
    assert targets
    for key in r0["state"]:  # alpha, alpha', networks and targets, bitwise
        assert torch.equal(r0["state"][key], r1["state"][key]), key
    # the ranks built different weights; rank 0's were broadcast before the first update
    assert any(not torch.equal(r0["initial"][k], r1["initial"][k]) for k in r0["initial"])


def test_awr_td_lambda_returns_are_the_same_on_every_rank(two_ranks):
    """Every rank refreshes the whole column with the same value network: the ranks'
    columns are equal, bitwise, at every refresh (before updates 0, 3 and 6)."""
    r0, r1 = _result(two_ranks, "awr_td_lambda")
    assert [step for step, _ in r0["columns"]] == [step for step, _ in r1["columns"]] == [0, 3, 6]
    for (_, a), (_, b) in zip(r0["columns"], r1["columns"]):
        assert a.shape == (N, 1) and torch.equal(a, b)
    assert not torch.equal(r0["columns"][0][1], r0["columns"][-1][1])  # V moved
    for key in r0["state"]:
        assert torch.equal(r0["state"][key], r1["state"][key]), key


def test_resume_on_the_same_world_size_is_exact(two_ranks):
    (straight, _), (resumed, _) = (
        _result(two_ranks, "equivalence"),
        _result(two_ranks, "resume_same_world"),
    )
    assert resumed["step"] == worker.STEPS
    for r in _result(two_ranks, "resume_same_world"):  # the stop reached both ranks
        assert (r["stopped_at"], r["stop_reason"]) == (4, "stopped by a hook")
    for key in straight["state"]:
        assert torch.equal(straight["state"][key], resumed["state"][key]), key


# ----------------------------------------------------------------------------- rank 0 only
def test_evaluation_hooks_logs_and_checkpoints_on_rank_0_only(two_ranks):
    r0, r1 = _result(two_ranks, "equivalence")
    assert [e["step"] for e in r0["evaluations"]] == [0, 4, 8]
    assert r1["evaluations"] == []
    assert r0["hook_calls"] == worker.STEPS and r1["hook_calls"] == 0
    assert r0["log_dir"] is not None and r1["log_dir"] is None
    run = two_ranks["work"] / "run_a"
    files = list_checkpoints(run / "checkpoints")
    assert [p.name for p in files] == ["checkpoint_000000004.pt", "checkpoint_000000008.pt"]
    state = load_checkpoint(files[-1])
    info = state["distributed"]
    assert info["world_size"] == WORLD and info["num_items"] == N
    samplers = [s["sampler"] for s in info["sources"]]
    assert [s["rank"] for s in samplers] == [0, 1]
    # 8 updates of 8 read each rank's 64-transition shard of epoch 0 to its end
    assert {(s["epoch"], s["position"]) for s in samplers} == {(0, 64)}


def test_cli_auto_detects_torchrun_and_reports_on_rank_0(two_ranks):
    r0, r1 = _result(two_ranks, "cli")
    assert r0["code"] == 0 and r1["code"] == 0, (r0["stderr"], r1["stderr"])
    assert "td3_bc: 3 gradient steps" in r0["stdout"]
    assert r1["stdout"] == ""
    assert latest_checkpoint(two_ranks["work"] / "cli_run" / "checkpoints").name.endswith(
        "000000003.pt"
    )


# ----------------------------------------------------------------------------- bad input
def test_mismatched_settings_are_a_clear_error_on_every_rank(two_ranks):
    for r in _result(two_ranks, "mismatch"):
        assert r["error"].startswith("DistributedError")
        assert "batch_size is 8 on rank 0 and 9 on rank 1" in r["error"]


def test_dataset_missing_on_one_rank(two_ranks):
    for r in _result(two_ranks, "cli_missing"):
        assert r["code"] == 1
        assert "opening the dataset failed on 1 rank(s): rank 1" in r["stderr"]
        assert "nowhere" in r["stderr"]


def test_dead_rank_fails_the_others_instead_of_hanging(two_ranks):
    assert two_ranks["exitcodes"] == [0, 17]
    (r0,) = [r["dead_rank"] for r in two_ranks["results"][:1]]
    assert r0["error"].startswith("DistributedError: rank 0 of 2: the gradient all-reduce failed")
    assert "died" in r0["error"]


# ----------------------------------------------------------------------------- world size 1
@pytest.fixture
def one_rank(monkeypatch):
    """The environment torchrun gives a single process."""
    monkeypatch.setenv("RANK", "0")
    monkeypatch.setenv("LOCAL_RANK", "0")
    monkeypatch.setenv("WORLD_SIZE", "1")
    monkeypatch.setenv("MASTER_ADDR", "127.0.0.1")
    monkeypatch.setenv("MASTER_PORT", str(_free_port()))


def _copy_run(two_ranks: dict[str, Any], tmp_path: Path) -> Path:
    run = tmp_path / "run"
    shutil.copytree(two_ranks["work"] / "run_a" / "checkpoints", run / "checkpoints")
    return run


def _resume_iql(data: Path, run: Path, steps: int, **kwargs: Any):
    return train(
        "iql",
        worker._open(data, without_replacement=True),
        total_steps=steps,
        seed=worker.SEED,
        batch_size=worker.BATCH,
        overrides={"hidden_sizes": worker.HIDDEN},
        out_dir=run,
        resume=True,
        logger=None,
        progress=False,
        checkpoint_interval=4,
        **kwargs,
    )


def test_resume_a_two_rank_checkpoint_on_one_rank(two_ranks, tmp_path, one_rank):
    r0, _ = _result(two_ranks, "equivalence")
    run = _copy_run(two_ranks, tmp_path)
    with pytest.warns(UserWarning, match="resuming a 2-process checkpoint"):
        same = _resume_iql(two_ranks["data"], run, worker.STEPS, distributed=True)
    for key, value in r0["state"].items():  # loaded exactly
        assert torch.equal(value, same.algorithm.loss.state_dict()[key]), key
    with pytest.warns(UserWarning, match="data order restarts"):
        longer = _resume_iql(two_ranks["data"], run, 12, distributed=True)
    assert longer.step == 12
    info = load_checkpoint(longer.checkpoint)["distributed"]
    assert info["world_size"] == 1
    assert info["sources"][0]["sampler"]["epoch"] == 1  # restarted after the saved epoch 0


def test_resume_a_two_rank_checkpoint_without_torch_distributed(two_ranks, tmp_path):
    run = _copy_run(two_ranks, tmp_path)
    with pytest.warns(UserWarning, match="in one process"):
        result = _resume_iql(two_ranks["data"], run, 10, distributed=False)
    assert result.step == 10


def test_resume_on_another_dataset_is_an_error(two_ranks, tmp_path, one_rank):
    run = _copy_run(two_ranks, tmp_path)
    small = tmp_path / "small"
    from_logged(
        make_dataset(n=96).storage[:],
        path=small,
        observation_space=gym.spaces.Box(-np.inf, np.inf, (3,), np.float32),
        action_space=gym.spaces.Box(-2.0, 2.0, (1,), np.float32),
    )
    with pytest.raises(CheckpointError, match="dataset of 128 transitions vs 96"):
        _resume_iql(small, run, 12, distributed=True)


def test_inconsistent_checkpoint_is_an_error(two_ranks, tmp_path, one_rank):
    run = _copy_run(two_ranks, tmp_path)
    path = latest_checkpoint(run / "checkpoints")
    state = load_checkpoint(path)
    state["distributed"]["sources"] = state["distributed"]["sources"][:1]
    save_checkpoint(path, state)
    with pytest.raises(CheckpointError, match="inconsistent: world size 2 with 1 sampler"):
        _resume_iql(two_ranks["data"], run, 12, distributed=True)


def test_rendezvous_times_out_when_a_rank_never_comes(monkeypatch):
    monkeypatch.setenv("RANK", "0")
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("MASTER_ADDR", "127.0.0.1")
    monkeypatch.setenv("MASTER_PORT", str(_free_port()))
    with pytest.raises(DistributedError, match="rank 0 of 2 could not join the process group"):
        init_distributed(backend="gloo", timeout=1.0)


def test_distributed_without_a_launcher_is_an_error(monkeypatch):
    for key in ("RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT"):
        monkeypatch.delenv(key, raising=False)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        with pytest.raises(DistributedError, match="needs a launcher"):
            train("bc", make_dataset(), total_steps=1, logger=None, progress=False,
                  distributed=True)  # fmt: skip


class _CtrlC:
    """Calls the trainer's SIGINT handler after update ``step``, as Ctrl-C would."""

    def __init__(self, step: int) -> None:
        self.step = step
        self.trainer: Any = None

    def register(self, trainer) -> None:
        self.trainer = trainer
        trainer.register_op("post_steps", self)

    def __call__(self) -> None:
        if self.trainer.step == self.step:
            self.trainer._on_sigint(2, None)


def test_ctrl_c_stops_every_rank_one_update_later(one_rank, tmp_path):
    with pytest.warns(UserWarning, match="not memory-mapped: every rank holds its own copy"):
        result = train(
            "bc",
            make_dataset(),  # in RAM
            total_steps=10,
            batch_size=16,
            out_dir=tmp_path / "run",
            logger=None,
            progress=False,
            hooks=[_CtrlC(3)],
            overrides={"hidden_sizes": worker.HIDDEN},
            distributed=True,
        )
    assert (result.step, result.stop_reason) == (4, "interrupted")
    assert result.checkpoint.name == "checkpoint_000000004.pt"


@pytest.mark.filterwarnings("ignore:the dataset is not memory-mapped")
def test_an_error_on_every_rank_keeps_its_type(one_rank):
    from torchrl_offline.trainers.algorithms import AlgorithmError

    with pytest.raises(AlgorithmError, match="Unknown hyperparameter 'no_such_key'"):
        train(
            "iql",
            make_dataset(),
            total_steps=1,
            logger=None,
            progress=False,
            overrides={"no_such_key": 1},
            distributed=True,
        )
