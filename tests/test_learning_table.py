"""Smoke test of the learning-quality table runner (benchmarks/learning_table.py)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from tensordict import TensorDict
from torchrl.data import Categorical, Unbounded
from torchrl.modules import TanhNormal

from tests.benchmark_scripts import load_benchmark
from torchrl_offline.data.storage import make_replay_buffer
from torchrl_offline.trainers.offline import train

lt = load_benchmark("learning_table")
BUDGET = lt.Budget(steps=6, eval_every=3, episodes=1, batch_size=16, hidden=(8,))


@pytest.fixture(scope="module")
def root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny Pendulum random dataset made by benchmarks/make_datasets.py."""
    path = tmp_path_factory.mktemp("table_datasets")
    lt.datasets_module().make_dataset("pendulum", "random", size=300, root=path)
    return path


def test_runs_table_and_resume(root: Path, tmp_path: Path) -> None:
    out = tmp_path / "runs.jsonl"
    runs = lt.plan(["pendulum"], ["random"], ["bc", "td3_bc"], [0])
    assert runs == [("bc", "pendulum", "random", 0), ("td3_bc", "pendulum", "random", 0)]
    new = lt.run_table(runs, BUDGET, out=out, root=root)
    assert [r["algo"] for r in new] == ["bc", "td3_bc"]

    lines = [json.loads(line) for line in out.read_text().splitlines()]
    assert lines == new
    info = lt.dataset_info("pendulum", "random", root)
    for rec in lines:
        assert (rec["task"], rec["level"], rec["seed"]) == ("pendulum", "random", 0)
        assert rec["budget"] == BUDGET.key()
        assert [c[0] for c in rec["curve"]] == [0, 3, 6]
        assert rec["last"] == rec["curve"][-1][1]
        assert rec["best"] == max(c[1] for c in rec["curve"][1:])
        lo, hi = info["ref_min_score"], info["ref_max_score"]
        for _, score, ret in rec["curve"]:
            assert score == pytest.approx(100 * (ret - lo) / (hi - lo))
        assert rec["behavior_score"] == pytest.approx(info["behavior_score"])

    # Re-running skips the finished runs; other settings are new runs.
    assert lt.run_table(runs, BUDGET, out=out, root=root) == []
    assert len(out.read_text().splitlines()) == 2
    other = lt.Budget(steps=3, eval_every=3, episodes=1, batch_size=16, hidden=(8,))
    assert len(lt.run_table(runs[:1], other, out=out, root=root)) == 1

    text = lt.report(lt.read_records(out), BUDGET, plots=tmp_path / "img")
    table = text.split("\n\n")[0].splitlines()
    assert table[0] == "| algorithm | pendulum/random |"
    assert [row.split(" | ")[0] for row in table[2:]] == ["| td3_bc", "| bc", "| behaviour data"]
    bc = next(r for r in lines if r["algo"] == "bc")
    assert f"| bc | {bc['last']:.1f} / {bc['best']:.1f} (± 0.0 / 0.0) n=1 |" in table
    assert table[-1] == f"| behaviour data | {info['behavior_score']:.1f} |"
    assert (tmp_path / "img" / "learning_pendulum_random.png").read_bytes()[:4] == b"\x89PNG"


def test_variants_are_tables_of_their_own(root: Path, tmp_path: Path) -> None:
    """--set reaches our loss and --reward-scale the sampled rewards; both are part of
    the settings, while the plain table's key is unchanged by their existence."""
    assert "overrides" not in BUDGET.key() and "reward_scale" not in BUDGET.key()
    variant = lt.Budget(**{**vars(BUDGET), "overrides": (("awac_lambda", 1.0),)})
    assert variant.key()["overrides"] == {"awac_lambda": 1.0}
    assert lt._parse_setting("awac_lambda=1.0") == ("awac_lambda", 1.0)
    assert lt._parse_setting("actor=tanh_normal") == ("actor", "tanh_normal")
    with pytest.raises(SystemExit, match="KEY=VALUE"):
        lt._parse_setting("awac_lambda")
    with pytest.raises(SystemExit, match="our rows only"):  # before any run starts
        lt.main(["--tasks", "pendulum", "--set", "awac_lambda=1.0", "--root", str(root)])

    dataset = lt.training_dataset("pendulum", "random", root, variant)
    assert lt.build("awac", dataset, variant).loss.awac_lambda == 1.0
    with pytest.raises(ValueError, match="network settings"):
        lt.build("torchrl_iql", dataset, variant)
    # network settings reach TorchRL's rows too: both losses train the same actor
    tanh = lt.Budget(**{**vars(BUDGET), "overrides": (("actor", "tanh_normal"),)})
    ours, theirs = lt.build("iql", dataset, tanh), lt.build("torchrl_iql", dataset, tanh)
    assert type(ours.loss.actor_network) is type(theirs.loss.actor_network)
    assert ours.loss.actor_network[-1].distribution_class is TanhNormal
    assert theirs.loss.actor_network[-1].distribution_class is TanhNormal

    scaled = lt.Budget(**{**vars(BUDGET), "reward_scale": True})
    assert scaled.key()["reward_scale"] is True
    plain_rewards = lt.training_dataset("pendulum", "random", root, BUDGET)
    scaled_rewards = lt.training_dataset("pendulum", "random", root, scaled)
    index = torch.arange(8)
    plain = plain_rewards[index]["next", "reward"]
    factor = scaled_rewards[index]["next", "reward"] / plain
    torch.testing.assert_close(factor, torch.full_like(factor, factor[0].item()))
    assert factor[0].item() != pytest.approx(1.0)

    out = tmp_path / "runs.jsonl"
    runs = lt.plan(["pendulum"], ["random"], ["awac"], [0])
    assert len(lt.run_table(runs, BUDGET, out=out, root=root)) == 1
    assert len(lt.run_table(runs, variant, out=out, root=root)) == 1  # not the same run
    assert "awac" in lt.report(lt.read_records(out), variant)


def test_only_filters() -> None:
    runs = lt.plan(["pendulum", "cartpole"], ["medium", "expert"], lt.ALGOS, [0, 1],
                   only=["iql,torchrl_td3_bc", "medium"])  # fmt: skip
    assert runs == [
        ("iql", "pendulum", "medium", 0),
        ("torchrl_td3_bc", "pendulum", "medium", 0),
        ("iql", "cartpole", "medium", 0),  # no TD3+BC on the discrete task
        ("iql", "pendulum", "medium", 1),
        ("torchrl_td3_bc", "pendulum", "medium", 1),
        ("iql", "cartpole", "medium", 1),
    ]
    assert lt.plan(["cartpole"], ["expert"], lt.ALGOS, [0], only=["pendulum"]) == []


def _record(algo: str, level: str, seed: int, last: float, behavior: float = 30.0) -> dict:
    return {
        "algo": algo,
        "task": "pendulum",
        "level": level,
        "seed": seed,
        "budget": BUDGET.key(),
        "curve": [[0, 0.0, 0.0], [6, last, 0.0]],
        "last": last,
        "best": last,
        "behavior_score": behavior,
    }


def test_checks() -> None:
    records = []
    for seed, noise in enumerate((-1.0, 0.0, 1.0)):
        records += [
            _record("bc", "medium-replay", seed, 20.0 + noise),
            _record("iql", "medium-replay", seed, 50.0 + noise),
            _record("cql", "medium-replay", seed, 19.5 + noise),
            _record("td3_bc", "medium-replay", seed, 5.0 + noise),
            _record("td3_bc", "medium", seed, 40.0 + noise),
            _record("bc", "medium", seed, 10.0 + noise),
            _record("torchrl_td3_bc", "medium", seed, 38.0 + noise),
        ]
    lines = lt.checks(records)
    assert "pendulum/medium-replay: iql 50.0 vs bc 20.0: ok" in lines
    assert "pendulum/medium-replay: cql 19.5 vs bc 20.0: within noise" in lines
    assert "pendulum/medium-replay: td3_bc 5.0 vs bc 20.0: FAILS" in lines
    assert "pendulum/medium: td3_bc 40.0 vs behaviour 30.0: ok" in lines
    assert "pendulum/medium: bc 10.0 vs behaviour 30.0: FAILS" in lines
    assert "pendulum/medium: torchrl_td3_bc 38.0 vs behaviour 30.0: ok" in lines
    assert "pendulum/medium: td3_bc 40.0 vs torchrl_td3_bc 38.0: ok" in lines
    assert len(lines) == 7


@pytest.mark.parametrize("name", ["torchrl_cql", "torchrl_iql"])
def test_torchrl_discrete(name: str) -> None:
    """On a discrete task the TorchRL rows are DiscreteCQLLoss / DiscreteIQLLoss."""
    n = 32
    g = torch.Generator().manual_seed(0)
    data = TensorDict(
        {
            "observation": torch.randn(n, 4, generator=g),
            "action": torch.randint(0, 2, (n,), generator=g),
            ("next", "observation"): torch.randn(n, 4, generator=g),
            ("next", "reward"): torch.randn(n, 1, generator=g),
            ("next", "done"): torch.zeros(n, 1, dtype=torch.bool),
            ("next", "terminated"): torch.zeros(n, 1, dtype=torch.bool),
        },
        [n],
    )
    algo = lt.build_torchrl(name, Unbounded(shape=(4,)), Categorical(2), hidden=(8,))
    assert type(algo.loss).__module__.startswith("torchrl.objectives")
    before = [p.detach().clone() for p in algo.loss.parameters()]
    result = train(algo, make_replay_buffer(data), total_steps=3, batch_size=8, logger=None,
                   progress=False)  # fmt: skip
    assert result.step == 3
    assert any(not torch.equal(a, b) for a, b in zip(before, algo.loss.parameters(), strict=True))


def test_model_based_rows_record_the_model_s_cost(root: Path, tmp_path: Path, monkeypatch) -> None:
    """MOPO's and COMBO's rows train at the table's budget and network sizes (the
    dynamics ensemble's too) and record the model's fit and rollouts apart."""
    monkeypatch.setattr(lt, "MODEL_FIT_MAX_UPDATES", 30)
    out = tmp_path / "runs.jsonl"
    runs = lt.plan(["pendulum"], ["random"], ["mopo", "combo"], [0])
    budget = lt.Budget(steps=6, eval_every=3, episodes=1, batch_size=16, hidden=(8,),
                       overrides=(("rollout_batch_size", 64),))  # fmt: skip
    new = lt.run_table(runs, budget, out=out, root=root)
    assert [r["algo"] for r in new] == ["mopo", "combo"]
    for rec in new:
        model = rec["model"]
        assert model["settings"]["model_hidden_sizes"] == [8]
        assert model["settings"]["model_max_updates"] == 30
        assert model["settings"]["rollout_batch_size"] == 64
        assert 0 < model["fit"]["updates"] <= 30 and model["fit"]["seconds"] > 0
        assert model["rollouts"] == 1 and model["rollout_seconds"] >= 0
    assert new[0]["model"]["settings"]["real_ratio"] == 0.05
    assert new[1]["model"]["settings"]["real_ratio"] == 0.5
    assert "model" not in lt.run_table(lt.plan(["pendulum"], ["random"], ["bc"], [0]), BUDGET,
                                       out=out, root=root)[0]  # fmt: skip
