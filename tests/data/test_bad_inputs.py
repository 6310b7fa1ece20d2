"""Bad inputs of the data layer fail as one exception family: a ``DatasetError`` (a
``ValueError``) naming the file, field or index, with the reader's own error as its cause.

Fault cases: truncated and fake Parquet, CSV, HDF5 logs; a corrupt Minari
``metadata.json``; truncated Minari HDF5 and Arrow files; NaN values and both done flags
handed to ``make_replay_buffer``; dataset ids that are paths; ``overwrite`` of an
unrelated directory; terminal steps of a log without next observations.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import gymnasium as gym
import numpy as np
import pandas as pd
import pytest
import torch
from tensordict import TensorDict

from torchrl_offline.data import DatasetError, from_logged, load_minari, make_replay_buffer
from torchrl_offline.data.minari_writer import check_dataset_id, write_minari
from torchrl_offline.integrity import MANIFEST


@pytest.fixture(autouse=True)
def _cache(tmp_path, monkeypatch):
    monkeypatch.setenv("TORCHRL_OFFLINE_CACHE", str(tmp_path / "cache"))


def _frame(n: int = 40) -> pd.DataFrame:
    rng = np.random.default_rng(0)
    return pd.DataFrame(
        {
            "observation_0": rng.normal(size=n),
            "observation_1": rng.normal(size=n),
            "action": rng.uniform(-1, 1, n),
            "reward": rng.normal(size=n),
            "terminated": np.r_[np.zeros(n - 1), 1].astype(bool),
        }
    )


def _write_log(path: Path) -> Path:
    frame = _frame()
    if path.suffix == ".parquet":
        frame.to_parquet(path)
    elif path.suffix == ".csv":
        frame.to_csv(path, index=False)
    else:
        import h5py

        with h5py.File(path, "w") as f:
            f["observations"] = frame[["observation_0", "observation_1"]].to_numpy()
            f["actions"] = frame[["action"]].to_numpy()
            f["rewards"] = frame["reward"].to_numpy()
            f["terminals"] = frame["terminated"].to_numpy()
    return path


@pytest.mark.parametrize("suffix", [".parquet", ".h5"])
@pytest.mark.parametrize("damage", ["truncated", "fake"])
def test_damaged_log_files_raise_dataset_error_naming_the_file(tmp_path, suffix, damage):
    path = _write_log(tmp_path / f"log{suffix}")
    if damage == "truncated":
        path.write_bytes(path.read_bytes()[: path.stat().st_size // 3])
    else:
        path.write_bytes(b"this is not a data file\n" * 20)
    with pytest.raises(DatasetError, match=f"{path.name}.*cannot be read") as info:
        from_logged(path, drop_incomplete=True)
    assert str(path) in str(info.value)
    assert info.value.__cause__ is not None  # the reader's own error, chained


def test_a_csv_with_broken_rows_raises_dataset_error(tmp_path):
    path = _write_log(tmp_path / "log.csv")
    with open(path, "a") as f:
        f.write('1.0,2.0,"unterminated\n3,4\n')
    with pytest.raises(DatasetError, match="CSV file .*log.csv.* cannot be read") as info:
        from_logged(path, drop_incomplete=True)
    assert str(info.value).count("log.csv") == 1 and info.value.source == str(path)


def test_a_missing_log_file_is_dataset_not_found(tmp_path):
    with pytest.raises(FileNotFoundError, match="No log file"):
        from_logged(tmp_path / "none.parquet")


def _minari(tmp_path: Path, data_format: str) -> Path:
    n = 30
    steps = torch.arange(n + 1.0).unsqueeze(-1).expand(-1, 3)
    td = TensorDict(
        {
            "observation": steps[:-1],
            ("next", "observation"): steps[1:],
            "action": torch.zeros(n, 1),
            ("next", "reward"): torch.ones(n, 1),
            ("next", "terminated"): torch.arange(n)[:, None] == n - 1,
            ("next", "truncated"): torch.zeros(n, 1, dtype=torch.bool),
            "episode": torch.zeros(n, dtype=torch.int64),
        },
        [n],
    )
    path = write_minari(
        td,
        f"toy/{data_format}-v0",
        observation_space=gym.spaces.Box(-100, 100, (3,)),
        action_space=gym.spaces.Box(-1, 1, (1,)),
        root=tmp_path / "root",
        data_format=data_format,
    )
    (path / MANIFEST).unlink()  # as a downloaded dataset: Minari's own files only
    return path


@pytest.mark.parametrize("data_format", ["hdf5", "arrow"])
def test_corrupt_minari_metadata_raises_dataset_error(tmp_path, data_format):
    path = _minari(tmp_path, data_format)
    meta = path / "data" / "metadata.json"
    meta.write_text(meta.read_text()[:40])
    with pytest.raises(DatasetError, match="metadata.json.*JSONDecodeError") as info:
        load_minari(path)
    assert type(info.value.__cause__).__name__ == "JSONDecodeError"


@pytest.mark.parametrize("data_format", ["hdf5", "arrow"])
def test_truncated_minari_episode_file_raises_dataset_error(tmp_path, data_format):
    path = _minari(tmp_path, data_format)
    files = [p for p in (path / "data").rglob("*") if p.is_file() and p.suffix != ".json"]
    biggest = max(files, key=lambda p: p.stat().st_size)
    biggest.write_bytes(biggest.read_bytes()[:200])
    with pytest.raises(DatasetError, match="Minari dataset .* cannot be read"):
        load_minari(path)


def _transitions(n: int = 8) -> TensorDict:
    return TensorDict(
        {
            "observation": torch.zeros(n, 3),
            "action": torch.zeros(n, 1),
            ("next", "observation"): torch.zeros(n, 3),
            ("next", "reward"): torch.zeros(n, 1),
            ("next", "terminated"): torch.zeros(n, 1, dtype=torch.bool),
            ("next", "truncated"): torch.zeros(n, 1, dtype=torch.bool),
            ("next", "done"): torch.zeros(n, 1, dtype=torch.bool),
        },
        [n],
    )


def test_make_replay_buffer_refuses_nan_naming_field_and_index():
    td = _transitions()
    td["next", "reward"][5] = float("nan")
    with pytest.raises(DatasetError, match="'next.reward'.*index 5") as info:
        make_replay_buffer(td)
    assert (info.value.field, info.value.index) == ("next.reward", 5)


def test_make_replay_buffer_refuses_both_done_flags_naming_the_index(monkeypatch):
    import torchrl_offline.data.storage as storage

    monkeypatch.setattr(storage, "VALIDATION_CHUNK", 4)  # the index is the dataset's
    td = _transitions()
    td["next", "terminated"][6] = True
    td["next", "truncated"][6] = True
    td["next", "done"][6] = True
    with pytest.raises(DatasetError, match="both set at index 6"):
        make_replay_buffer(td)
    assert len(make_replay_buffer(td, validate=False)) == 8  # an explicit opt-out


@pytest.mark.parametrize("bad", ["/tmp/abs", "../..", "a/../b", "~/x", "a//b", ".hidden", ""])
def test_dataset_ids_are_ids(bad):
    with pytest.raises(DatasetError, match="is not a dataset id"):
        check_dataset_id(bad)
    assert check_dataset_id("pendulum/mixed-v0") == "pendulum/mixed-v0"


def test_collect_refuses_an_id_outside_the_root(tmp_path):
    from torchrl_offline.data import collect_dataset

    outside = tmp_path / "outside"
    with pytest.raises(DatasetError, match="is not a dataset id"):
        collect_dataset("CartPole-v1", None, 10, dataset_id=str(outside), root=tmp_path / "r")
    with pytest.raises(DatasetError, match="is not a dataset id"):
        collect_dataset("CartPole-v1", None, 10, dataset_id="../outside", root=tmp_path / "r")
    assert not outside.exists()


def test_overwrite_replaces_only_a_minari_dataset(tmp_path):
    path = _minari(tmp_path, "hdf5")
    unrelated = tmp_path / "root" / "toy" / "notes-v0"
    unrelated.mkdir()
    (unrelated / "notes.txt").write_text("mine")
    td = load_minari(path).storage[:]
    spaces = dict(
        observation_space=gym.spaces.Box(-100, 100, (3,)),
        action_space=gym.spaces.Box(-1, 1, (1,)),
        root=tmp_path / "root",
    )
    with pytest.raises(DatasetError, match="not a Minari dataset"):
        write_minari(td, "toy/notes-v0", overwrite=True, **spaces)
    assert (unrelated / "notes.txt").read_text() == "mine"
    assert write_minari(td, "toy/hdf5-v0", overwrite=True, **spaces) == path  # ours: replaced


def test_terminal_steps_are_kept_without_next_observations(tmp_path):
    """Practitioner case: every episode of the log ends by termination and there is no
    next-observation column. Nothing is dropped; the terminal steps' next observation is
    a copy of their observation (never bootstrapped)."""
    obs = np.arange(12.0).reshape(6, 2)
    log = {"observation": obs, "action": np.zeros(6), "reward": np.ones(6),
           "terminated": [0, 0, 1, 0, 0, 1]}  # fmt: skip
    rb = from_logged(log, path=tmp_path / "ds", drop_incomplete=True)
    td = rb.storage[:]
    assert len(rb) == 6 and rb.metadata["dropped_transitions"] == 0
    assert rb.metadata["terminal_next_observations_filled"] == 2
    expected = obs[[1, 2, 2, 4, 5, 5]]
    torch.testing.assert_close(td["next", "observation"], torch.as_tensor(expected).float())
    assert td["next", "terminated"].reshape(-1).tolist() == [0, 0, 1, 0, 0, 1]
    # the same log, cut in the middle of its last episode: that step alone is dropped
    cut = {k: v[:5] for k, v in log.items()}
    rb = from_logged(cut, path=tmp_path / "cut", drop_incomplete=True)
    assert len(rb) == 4 and rb.metadata["dropped_transitions"] == 1
    assert rb.metadata["terminal_next_observations_filled"] == 1


def test_damaged_minari_copy_on_another_path_is_not_trusted(tmp_path):
    """A copy of a healthy dataset whose episode file is then truncated is read again
    (its content hash differs), and fails as a DatasetError."""
    path = _minari(tmp_path, "hdf5")
    load_minari(path)
    copy = tmp_path / "copy"
    shutil.copytree(path, copy)
    data = copy / "data" / "main_data.hdf5"
    data.write_bytes(data.read_bytes()[:300])
    with pytest.raises(DatasetError):
        load_minari(copy)
