from __future__ import annotations

import json

import gymnasium as gym
import minari
import numpy as np
import pytest
import torch

from torchrl_offline.data import DatasetError, load_minari, write_minari
from torchrl_offline.data.minari_writer import minari_root, resolve_minari_path

BOX = gym.spaces.Box(-np.inf, np.inf, (3,), np.float32)
ACT = gym.spaces.Box(-1.0, 1.0, (2,), np.float32)


@pytest.mark.parametrize("data_format", ["hdf5", "arrow"])
def test_round_trip_through_minari(tmp_path, make_transitions, data_format):
    td = make_transitions([3, 1, 4], terminated_episodes=[0])
    path = write_minari(
        td,
        "toy/box-v0",
        root=tmp_path,
        observation_space=BOX,
        action_space=ACT,
        data_format=data_format,
        ref_min_score=-1.0,
        ref_max_score=2.0,
    )
    assert path == tmp_path / "toy" / "box-v0"
    dataset = minari.MinariDataset(path / "data")
    assert dataset.total_steps == 8 and dataset.total_episodes == 3
    assert dataset.storage.metadata["ref_max_score"] == 2.0
    start = 0
    for episode in dataset.iterate_episodes():
        n = len(episode.rewards)
        chunk = td[start : start + n]
        np.testing.assert_array_equal(episode.observations[:-1], chunk["observation"].numpy())
        np.testing.assert_array_equal(
            episode.observations[-1], chunk["next", "observation"][-1].numpy()
        )
        np.testing.assert_array_equal(episode.actions, chunk["action"].numpy())
        np.testing.assert_allclose(episode.rewards, chunk["next", "reward"].reshape(-1).numpy())
        np.testing.assert_array_equal(
            episode.terminations, chunk["next", "terminated"].reshape(-1).numpy()
        )
        np.testing.assert_array_equal(
            episode.truncations, chunk["next", "truncated"].reshape(-1).numpy()
        )
        log_prob = np.asarray(episode.infos["action_log_prob"]).reshape(-1)
        assert np.isnan(log_prob[0])
        np.testing.assert_allclose(log_prob[1:], chunk["action_log_prob"].numpy(), rtol=1e-6)
        start += n
    assert start == 8


def test_dict_observations_and_discrete_one_hot(tmp_path, make_transitions):
    td = make_transitions([2, 3], discrete=3)
    obs, nxt = td["observation"], td["next", "observation"]
    td = td.exclude("observation", ("next", "observation"))
    td["observation", "pos"], td["observation", "vel"] = obs[:, :2], obs[:, 2:]
    td["next", "observation", "pos"], td["next", "observation", "vel"] = nxt[:, :2], nxt[:, 2:]
    index = td["action"].clone()
    td["action"] = torch.nn.functional.one_hot(index, 3)
    space = gym.spaces.Dict(
        {
            "pos": gym.spaces.Box(-np.inf, np.inf, (2,), np.float32),
            "vel": gym.spaces.Box(-np.inf, np.inf, (1,), np.float32),
        }
    )
    path = write_minari(
        td, "dict-v0", root=tmp_path, observation_space=space, action_space=gym.spaces.Discrete(3)
    )
    episodes = list(minari.MinariDataset(path / "data").iterate_episodes())
    np.testing.assert_array_equal(episodes[1].observations["vel"][:-1], obs[2:, 2:].numpy())
    np.testing.assert_array_equal(np.concatenate([e.actions for e in episodes]), index.numpy())


def test_refuses_non_contiguous_episodes(tmp_path, make_transitions):
    td = make_transitions([2, 2, 2])
    td["episode"] = torch.tensor([0, 0, 1, 1, 0, 0])
    with pytest.raises(DatasetError, match="episode 0 resumes at index 4"):
        write_minari(td, "x-v0", root=tmp_path, observation_space=BOX, action_space=ACT)
    assert list(tmp_path.iterdir()) == []


def test_refuses_broken_observation_chain(tmp_path, make_transitions):
    td = make_transitions([4])
    td["next", "observation"][1] += 1.0
    with pytest.raises(DatasetError, match="index 1 differs"):
        write_minari(td, "x-v0", root=tmp_path, observation_space=BOX, action_space=ACT)
    assert list(tmp_path.iterdir()) == []


def test_invalid_data_writes_nothing(tmp_path, make_transitions):
    td = make_transitions([4])
    td["action"][3, 0] = 5.0
    with pytest.raises(DatasetError, match="index 3"):
        write_minari(td, "x-v0", root=tmp_path, observation_space=BOX, action_space=ACT)
    assert not (tmp_path / "x-v0").exists()


def test_manifest_covers_the_episode_files_and_not_minari_metadata(tmp_path, make_transitions):
    from minari.dataset.minari_storage import MinariStorage

    from torchrl_offline.data import load_minari
    from torchrl_offline.integrity import MANIFEST, verify_manifest

    path = write_minari(
        make_transitions([3, 4]), "toy/m-v0", root=tmp_path, observation_space=BOX, action_space=ACT
    )
    record = json.loads((path / MANIFEST).read_text())
    assert sorted(record["files"]) == ["data/main_data.hdf5"]
    # Minari's own metadata update (what benchmarks do) keeps the dataset loadable
    MinariStorage.read(path / "data").update_metadata({"note": "added later"})
    verify_manifest(path, full=True)
    assert len(load_minari("toy/m-v0", root=tmp_path, cache_dir=tmp_path / "cache")) == 7


def test_existing_dataset_needs_overwrite(tmp_path, make_transitions):
    td = make_transitions([2])
    write_minari(td, "x-v0", root=tmp_path, observation_space=BOX, action_space=ACT)
    with pytest.raises(FileExistsError):
        write_minari(td, "x-v0", root=tmp_path, observation_space=BOX, action_space=ACT)
    write_minari(td, "x-v0", root=tmp_path, observation_space=BOX, action_space=ACT, overwrite=True)


def test_overwrite_replaces_data_and_manifest_only(tmp_path, make_transitions):
    """Review of issue 15, finding 2: overwrite deleted every file of the dataset folder."""
    write_minari(make_transitions([2]), "x-v0", root=tmp_path, observation_space=BOX,
                 action_space=ACT)  # fmt: skip
    (tmp_path / "x-v0" / "notes.txt").write_text("mine")
    (tmp_path / "x-v0" / "runs").mkdir()
    write_minari(make_transitions([3, 2]), "x-v0", root=tmp_path, observation_space=BOX,
                 action_space=ACT, overwrite=True)  # fmt: skip
    assert sorted(p.name for p in (tmp_path / "x-v0").iterdir()) == [
        "data", "notes.txt", "runs", "torchrl_offline.manifest.json"
    ]  # fmt: skip
    assert len(load_minari("x-v0", root=tmp_path, cache_dir=tmp_path / "cache")) == 5


def test_an_overwrite_killed_halfway_is_rolled_back_by_the_next_one(tmp_path, make_transitions):
    import os

    from torchrl_offline.leftovers import owner_tag

    write_minari(make_transitions([2]), "x-v0", root=tmp_path, observation_space=BOX,
                 action_space=ACT)  # fmt: skip
    pid = os.fork()
    if pid == 0:
        os._exit(0)
    os.waitpid(pid, 0)  # a dead process's replacement: the old data moved aside, no new one
    trash = tmp_path / "x-v0" / f".replaced-{pid}-{owner_tag().split('-')[1]}-0123abcd"
    trash.mkdir()
    os.replace(tmp_path / "x-v0" / "data", trash / "data")
    write_minari(make_transitions([4]), "x-v0", root=tmp_path, observation_space=BOX,
                 action_space=ACT, overwrite=True)  # fmt: skip
    assert sorted(p.name for p in (tmp_path / "x-v0").iterdir()) == [
        "data", "torchrl_offline.manifest.json"
    ]  # fmt: skip
    assert len(load_minari("x-v0", root=tmp_path, cache_dir=tmp_path / "cache")) == 4


def test_one_writer_per_dataset(tmp_path, make_transitions):
    from torchrl_offline.data.minari_writer import dataset_lock

    busy = pytest.raises(DatasetError, match="x-v0' is in use by another process")
    with dataset_lock(tmp_path / "x-v0"), busy:
        write_minari(make_transitions([2]), "x-v0", root=tmp_path, observation_space=BOX,
                     action_space=ACT)  # fmt: skip
    assert sorted(p.name for p in tmp_path.iterdir()) == []


def test_root_resolution(tmp_path, monkeypatch):
    monkeypatch.setenv("MINARI_DATASETS_PATH", str(tmp_path))
    assert minari_root() == tmp_path
    assert resolve_minari_path("a/b-v0") == tmp_path / "a" / "b-v0"
    assert resolve_minari_path(tmp_path / "a" / "b-v0" / "data") == tmp_path / "a" / "b-v0"
    monkeypatch.delenv("MINARI_DATASETS_PATH")
    assert minari_root().name == "datasets"


def test_relative_root_is_made_absolute(tmp_path, monkeypatch, make_transitions):
    monkeypatch.chdir(tmp_path)
    assert minari_root("rel") == tmp_path / "rel"
    path = write_minari(
        make_transitions([2, 3]), "toy/rel-v0", root="rel", observation_space=BOX, action_space=ACT
    )
    assert path == tmp_path / "rel" / "toy" / "rel-v0"
    assert minari.MinariDataset(path / "data").total_steps == 5


@pytest.mark.parametrize("data_format", ["hdf5", "arrow"])
def test_dataset_size_is_measured_once_not_per_episode(
    tmp_path, make_transitions, data_format, monkeypatch
):
    """Regression: Minari's Arrow writer re-measured the whole folder after every episode,
    so writing many short episodes took time quadratic in their number."""
    from minari.dataset.minari_storage import MinariStorage

    calls = []
    real = MinariStorage.get_size

    def counting(self):
        calls.append(1)
        return real(self)

    monkeypatch.setattr(MinariStorage, "get_size", counting)
    td = make_transitions([1] * 12)
    path = write_minari(
        td,
        "toy/many-v0",
        root=tmp_path,
        observation_space=BOX,
        action_space=ACT,
        data_format=data_format,
    )
    assert len(calls) <= 2
    dataset = minari.MinariDataset(path / "data")
    assert dataset.total_episodes == 12
    assert dataset.storage.metadata["dataset_size"] == real(dataset.storage)
