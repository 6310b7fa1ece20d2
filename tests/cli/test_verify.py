"""``torchrl-offline verify``: a table of what was checked, exit 1 when anything is damaged."""

from __future__ import annotations

import json
import shutil

import gymnasium as gym
import pytest
import torch
from tensordict import TensorDict

from torchrl_offline.cli import main
from torchrl_offline.data import load_minari, write_minari
from torchrl_offline.trainers.checkpoint import FORMAT, checkpoint_path, save_checkpoint


def _flip(path, offset=None):
    data = bytearray(path.read_bytes())
    data[len(data) // 2 if offset is None else offset] ^= 0x01
    path.write_bytes(data)


@pytest.fixture
def written(tmp_path, monkeypatch):
    """A Minari dataset we wrote, its cache entry and a run with two checkpoints."""
    monkeypatch.setenv("MINARI_DATASETS_PATH", str(tmp_path / "minari"))
    monkeypatch.setenv("TORCHRL_OFFLINE_CACHE", str(tmp_path / "cache"))
    n = 20
    obs = torch.arange(n + 1, dtype=torch.float32)[:, None].expand(n + 1, 2)
    td = TensorDict(
        {
            "observation": obs[:-1],
            ("next", "observation"): obs[1:],
            "action": torch.zeros(n, 1),
            ("next", "reward"): torch.ones(n, 1),
            ("next", "terminated"): torch.arange(n)[:, None] == n - 1,
            ("next", "truncated"): torch.zeros(n, 1, dtype=torch.bool),
            "episode": torch.zeros(n, dtype=torch.int64),
        },
        batch_size=[n],
    )
    box = gym.spaces.Box(-100, 100, (2,))
    write_minari(td, "toy/verify-v0", observation_space=box, action_space=gym.spaces.Box(-1, 1))
    cache_entry = load_minari("toy/verify-v0").path
    for step in (10, 20):
        save_checkpoint(checkpoint_path(tmp_path / "run" / "checkpoints", step), {"step": step})
    return {"base": tmp_path, "cache_entry": cache_entry, "run": tmp_path / "run"}


def test_everything_intact_exits_0_with_one_row_per_item(written, capsys):
    assert main(["verify", str(written["base"])]) == 0
    out = capsys.readouterr().out
    for row in ("dataset", "minari dataset", "checkpoint_000000010.pt", "checkpoint_000000020.pt"):
        assert row in out
    assert "4 checked: 0 damaged, 0 without hashes" in out


def test_a_dataset_id_is_resolved_under_the_minari_root(written, capsys):
    assert main(["verify", "toy/verify-v0", "--json"]) == 0
    (check,) = json.loads(capsys.readouterr().out)
    assert check["kind"] == "minari dataset" and check["result"] == "ok"


def test_a_bit_flip_anywhere_is_reported_and_exits_1(written, capsys):
    _flip(written["cache_entry"] / "transitions" / "observation.memmap", offset=3)
    _flip(checkpoint_path(written["run"] / "checkpoints", 20))
    assert main(["verify", str(written["base"]), "--json"]) == 1
    results = {c["path"]: c for c in json.loads(capsys.readouterr().out)}
    damaged = sorted(p for p, c in results.items() if c["result"] == "damaged")
    assert damaged == [
        str(written["cache_entry"]),
        str(checkpoint_path(written["run"] / "checkpoints", 20)),
    ]
    assert "observation.memmap': content hash" in results[str(written["cache_entry"])]["detail"]
    # a single checkpoint file is checked on its own
    assert main(["verify", str(checkpoint_path(written["run"] / "checkpoints", 10))]) == 0


def test_old_checkpoints_are_unchecked_not_damaged(tmp_path, capsys):
    torch.save({"format": "torchrl_offline.checkpoint/1", "state": {"w": torch.ones(2)}},
               checkpoint_path(tmp_path, 5))  # fmt: skip
    assert FORMAT != "torchrl_offline.checkpoint/1"
    assert main(["verify", str(tmp_path)]) == 0
    assert "1 checked: 0 damaged, 1 without hashes" in capsys.readouterr().out


def test_nothing_to_verify_is_an_error(tmp_path, capsys):
    (tmp_path / "notes.txt").write_text("hello")
    assert main(["verify", str(tmp_path)]) == 1
    assert "nothing written by torchrl_offline" in capsys.readouterr().err
    assert main(["verify", str(tmp_path / "absent")]) == 1


def test_evaluate_refuses_a_bit_flipped_checkpoint_naming_the_previous_good_one(
    trained_run, tmp_path, capsys
):
    """Failure 2 of issue 15: ``evaluate`` exited 0 on a bit-flipped checkpoint."""
    run = tmp_path / "run"
    shutil.copytree(trained_run["run"], run)
    newest, previous = (
        checkpoint_path(run / "checkpoints", 20),
        checkpoint_path(run / "checkpoints", 10),
    )
    _flip(newest)
    argv = ["evaluate", str(run), "--env", "Pendulum-v1", "--episodes", "1", "--max-steps", "5",
            "--no-progress"]  # fmt: skip
    assert main(argv) == 1
    err = capsys.readouterr().err
    assert "checkpoint_000000020.pt' is corrupt" in err and "content hash" in err
    assert f"the previous good checkpoint of this directory is {str(previous)!r}" in err
    assert main(["verify", str(run)]) == 1


def test_any_pt_file_is_checked_and_one_not_ours_says_so(written, capsys):
    """Review of issue 15, finding 10: `verify DIR` skipped `.pt` files not named
    checkpoint_*; finding 7: a file that is no checkpoint read as "corrupt (KeyError: 101)"."""
    run = written["run"]
    shutil.copy(checkpoint_path(run / "checkpoints", 20), run / "best.pt")
    _flip(run / "best.pt")
    (run / "notes.pt").write_text("e" * 300)
    assert main(["verify", str(run), "--json"]) == 1
    rows = {row["path"].rsplit("/", 1)[1]: row for row in json.loads(capsys.readouterr().out)}
    assert rows["best.pt"]["result"] == "damaged"
    assert rows["notes.pt"]["result"] == "not ours"
    assert "not a checkpoint of torchrl_offline" in rows["notes.pt"]["detail"]
    assert main(["verify", str(run / "notes.pt")]) == 1
    err = capsys.readouterr().err
    assert "notes.pt' is not a checkpoint of torchrl_offline" in err and "corrupt" not in err
