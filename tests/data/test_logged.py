"""Tests of from_logged: every source type, episode boundaries, next observations, bad input."""

from __future__ import annotations

import gymnasium as gym
import h5py
import minari
import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch
from tensordict import MemoryMappedTensor, TensorDict

from torchrl_offline.data import logged
from torchrl_offline.data.errors import DatasetError
from torchrl_offline.data.logged import from_logged
from torchrl_offline.data.storage import is_complete

LENGTHS = (3, 1, 4)  # episodes; the second is a one-step episode


def d4rl_log(seed: int = 0, lengths=LENGTHS, obs_dim: int = 3, act_dim: int = 2) -> dict:
    """A D4RL-style log with next observations: episode 0 terminates, the others time out."""
    rng = np.random.default_rng(seed)
    obs, nxt, terminals, timeouts = [], [], [], []
    for ep, n in enumerate(lengths):
        seq = rng.normal(size=(n + 1, obs_dim))
        obs.append(seq[:-1])
        nxt.append(seq[1:])
        flags = np.zeros(n, bool)
        flags[-1] = True
        terminals.append(flags if ep == 0 else np.zeros(n, bool))
        timeouts.append(np.zeros(n, bool) if ep == 0 else flags)
    total = sum(lengths)
    return {
        "observations": np.concatenate(obs),
        "next_observations": np.concatenate(nxt),
        "actions": rng.uniform(-1, 1, size=(total, act_dim)),
        "rewards": rng.normal(size=total),
        "terminals": np.concatenate(terminals),
        "timeouts": np.concatenate(timeouts),
        "action_log_probs": -np.abs(rng.normal(size=total)),  # log-probabilities: <= 0
    }


def episode_ids(lengths=LENGTHS) -> np.ndarray:
    return np.concatenate([np.full(n, i) for i, n in enumerate(lengths)])


def check_against(td, log: dict, episodes=None) -> None:
    """The stored transitions equal the D4RL log (up to the float32 cast)."""
    episodes = episode_ids() if episodes is None else episodes
    n = len(log["rewards"])
    assert td.shape == (n,)
    f32 = lambda x: torch.as_tensor(np.asarray(x), dtype=torch.float32)  # noqa: E731
    torch.testing.assert_close(td["observation"], f32(log["observations"]))
    torch.testing.assert_close(td["next", "observation"], f32(log["next_observations"]))
    torch.testing.assert_close(td["action"], f32(log["actions"]))
    torch.testing.assert_close(td["next", "reward"], f32(log["rewards"]).reshape(n, 1))
    term = torch.as_tensor(np.asarray(log["terminals"], bool)).reshape(n, 1)
    trunc = torch.as_tensor(np.asarray(log["timeouts"], bool)).reshape(n, 1)
    assert torch.equal(td["next", "terminated"], term)
    assert torch.equal(td["next", "truncated"], trunc)
    assert torch.equal(td["next", "done"], term | trunc)
    assert torch.equal(td["episode"], torch.as_tensor(episodes, dtype=torch.int64))
    if "action_log_probs" in log:
        torch.testing.assert_close(td["action_log_prob"], f32(log["action_log_probs"]))


@pytest.fixture(autouse=True)
def _isolated(tmp_path, monkeypatch):
    monkeypatch.setenv("TORCHRL_OFFLINE_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv("MINARI_DATASETS_PATH", str(tmp_path / "minari"))


def stored(rb):
    return rb.storage[: len(rb)]


# ------------------------------------------------------------------ sources


def test_mapping_of_numpy_arrays_d4rl_names(tmp_path):
    log = d4rl_log()
    rb = from_logged(log, path=tmp_path / "ds", batch_size=4)
    check_against(stored(rb), log)
    assert rb.path == tmp_path / "ds" and is_complete(rb.path)
    assert rb.metadata["source"] == "logged" and rb.metadata["total_episodes"] == 3
    assert rb.metadata["total_steps"] == 8 and rb.metadata["behavior_keys"] == ["action_log_prob"]
    assert rb.sample()["observation"].shape == (4, 3)
    with pytest.raises(RuntimeError):  # read-only: the stored files are never overwritten
        rb.extend(stored(rb)[:2].clone())
    leaf = rb.storage._storage["observation"]
    assert isinstance(leaf, MemoryMappedTensor) and str(rb.path) in leaf.filename


def test_mapping_of_torch_tensors_torchrl_names_and_nested_observations(tmp_path):
    log = d4rl_log()
    t = lambda x: torch.as_tensor(np.asarray(x))  # noqa: E731
    source = {
        "observation": {"pos": t(log["observations"][:, :2]), "vel": t(log["observations"][:, 2:])},
        "next": {
            "observation": {
                "pos": t(log["next_observations"][:, :2]),
                "vel": t(log["next_observations"][:, 2:]),
            },
            "reward": t(log["rewards"]).reshape(-1, 1),
            "terminated": t(log["terminals"]).reshape(-1, 1),
            "truncated": t(log["timeouts"]).reshape(-1, 1),
        },
        "action": t(log["actions"]),
    }
    td = stored(from_logged(source, path=tmp_path / "ds"))
    assert set(td["observation"].keys()) == {"pos", "vel"}
    torch.testing.assert_close(
        torch.cat([td["next", "observation", "pos"], td["next", "observation", "vel"]], -1),
        torch.as_tensor(log["next_observations"], dtype=torch.float32),
    )
    assert torch.equal(td["episode"], torch.as_tensor(episode_ids()))


def test_tensordict_round_trip(tmp_path, make_transitions):
    source = make_transitions([3, 1, 4], terminated_episodes=[0])
    rb = from_logged(source, path=tmp_path / "ds")
    td = stored(rb)
    assert (td == source).all()
    assert set(td.keys(True, True)) == set(source.keys(True, True))


def test_tensordict_rollout_bookkeeping_is_ignored(tmp_path, make_transitions):
    source = make_transitions([2, 3])
    # A TorchRL rollout also holds root flags (of the previous step) and counters.
    source["done"] = torch.zeros(5, 1, dtype=torch.bool)
    source["step_count"] = torch.arange(5).reshape(5, 1)
    source["collector", "traj_ids"] = source["episode"] + 10
    td = stored(from_logged(source.exclude("episode"), path=tmp_path / "ds"))
    assert torch.equal(td["episode"], source["episode"])
    assert torch.equal(td["next", "done"], source["next", "done"])


def test_dataframe_with_array_cells(tmp_path):
    log = d4rl_log()
    frame = pd.DataFrame(
        {
            "observations": list(log["observations"]),
            "next_observations": list(log["next_observations"]),
            "actions": [list(a) for a in log["actions"]],
            "rewards": log["rewards"],
            "terminals": log["terminals"],
            "timeouts": log["timeouts"].astype(int),
            "action_log_probs": log["action_log_probs"],
        }
    )
    check_against(stored(from_logged(frame, path=tmp_path / "ds", chunk_size=3)), log)


def scalar_columns_frame(log: dict) -> pd.DataFrame:
    columns = {}
    for name, key in (("observation", "observations"), ("next_observation", "next_observations")):
        for i in range(log[key].shape[1]):
            columns[f"{name}_{i}"] = log[key][:, i]
    for i in range(log["actions"].shape[1]):
        columns[f"action_{i}"] = log["actions"][:, i]
    columns["reward"] = log["rewards"]
    columns["terminated"] = log["terminals"]
    columns["truncated"] = log["timeouts"]
    columns["action_log_prob"] = log["action_log_probs"]
    return pd.DataFrame(columns)


def test_dataframe_with_scalar_column_groups(tmp_path):
    log = d4rl_log()
    frame = scalar_columns_frame(log)
    # Columns in shuffled order: the group is ordered by index, not by position.
    frame = frame[list(reversed(frame.columns))]
    check_against(stored(from_logged(frame, path=tmp_path / "ds")), log)


def test_explicit_column_mapping_and_ignore(tmp_path):
    log = d4rl_log()
    frame = pd.DataFrame(
        {
            "x": log["observations"][:, 0],
            "y": log["observations"][:, 1],
            "z": log["observations"][:, 2],
            "nx": log["next_observations"][:, 0],
            "ny": log["next_observations"][:, 1],
            "nz": log["next_observations"][:, 2],
            "steer": log["actions"][:, 0],
            "gas": log["actions"][:, 1],
            "r": log["rewards"],
            "end": log["terminals"],
            "cut": log["timeouts"],
            "logp": log["action_log_probs"],
            "wall_clock": np.arange(8.0),
        }
    )
    rb = from_logged(
        frame,
        path=tmp_path / "ds",
        columns={
            "observation": ["x", "y", "z"],
            "next_observation": ["nx", "ny", "nz"],
            "action": ["steer", "gas"],
            "reward": "r",
            "terminated": "end",
            "truncated": "cut",
            "action_log_prob": "logp",
        },
        ignore=["wall_clock"],
    )
    check_against(stored(rb), log)
    assert rb.metadata["ignored_columns"] == ["wall_clock"]


@pytest.mark.parametrize("layout", ["lists", "scalars"])
def test_parquet_read_in_chunks(tmp_path, layout):
    log = d4rl_log()
    if layout == "scalars":
        table = pa.Table.from_pandas(scalar_columns_frame(log))
    else:
        table = pa.table(
            {
                "observations": pa.array(list(log["observations"]), pa.list_(pa.float64(), 3)),
                "next_observations": pa.array(list(log["next_observations"])),
                "actions": pa.array(list(log["actions"])),
                "rewards": log["rewards"],
                "terminals": log["terminals"],
                "timeouts": log["timeouts"],
                "action_log_probs": log["action_log_probs"],
            }
        )
    pq.write_table(table, tmp_path / "log.parquet", row_group_size=3)
    rb = from_logged(tmp_path / "log.parquet", path=tmp_path / "ds", chunk_size=2)
    check_against(stored(rb), log)
    assert rb.metadata["source_type"] == "parquet"


def test_csv_with_scalar_columns_and_vector_strings(tmp_path):
    log = d4rl_log()
    frame = scalar_columns_frame(log)
    frame.to_csv(tmp_path / "scalars.csv", index=False)
    check_against(stored(from_logged(tmp_path / "scalars.csv", path=tmp_path / "a")), log)
    frame = pd.DataFrame(
        {
            "observations": [str(o.tolist()) for o in log["observations"]],
            "next_observations": [str(o.tolist()) for o in log["next_observations"]],
            "actions": [np.array2string(a, precision=17) for a in log["actions"]],
            "rewards": log["rewards"],
            "terminals": log["terminals"],
            "timeouts": log["timeouts"],
        }
    )
    frame.to_csv(tmp_path / "strings.txt", index=False)
    rb = from_logged(tmp_path / "strings.txt", path=tmp_path / "b", file_format="csv")
    log.pop("action_log_probs")
    check_against(stored(rb), log)


def test_csv_read_in_small_blocks_and_integer_first_block(tmp_path):
    """Many CSV blocks (block size from chunk_size); floats that look integral at first."""
    n = 600
    rng = np.random.default_rng(1)
    obs = np.round(rng.normal(size=(n + 1, 2)) * 4)
    obs[-100:] += 0.5  # only the last block has fractions
    frame = pd.DataFrame(
        {
            "observation_0": obs[:-1, 0],
            "observation_1": obs[:-1, 1],
            "action": rng.integers(0, 3, n),
            "reward": np.zeros(n),
            "episode": np.repeat(np.arange(6), 100),
        }
    )
    frame["observation_0"] = frame["observation_0"].map(lambda v: f"{v:g}")
    frame.to_csv(tmp_path / "log.csv", index=False)
    assert (tmp_path / "log.csv").stat().st_size > 4096 * 2  # several blocks
    rb = from_logged(tmp_path / "log.csv", path=tmp_path / "ds", chunk_size=8, drop_incomplete=True)
    td = stored(rb)
    kept = np.nonzero(np.arange(n) % 100 != 99)[0]
    torch.testing.assert_close(td["observation"], torch.as_tensor(obs[kept], dtype=torch.float32))
    torch.testing.assert_close(
        td["next", "observation"], torch.as_tensor(obs[kept + 1], dtype=torch.float32)
    )
    assert torch.equal(td["action"], torch.as_tensor(frame["action"].to_numpy()[kept]))
    assert rb.metadata["action_space"] == minari.serialization.serialize_space(
        gym.spaces.Discrete(3)
    )


def write_d4rl_hdf5(path, log, *, next_observations=True):
    with h5py.File(path, "w") as f:
        for key in ("observations", "actions", "rewards", "terminals", "timeouts"):
            f[key] = log[key]
        if next_observations:
            f["next_observations"] = log["next_observations"]
        f["infos/action_log_probs"] = log["action_log_probs"]
        f["infos/qpos"] = np.zeros((len(log["rewards"]), 5))
        f["metadata/algorithm"] = "SAC"


def test_hdf5_d4rl_layout(tmp_path):
    log = d4rl_log()
    write_d4rl_hdf5(tmp_path / "log.hdf5", log)
    rb = from_logged(tmp_path / "log.hdf5", path=tmp_path / "ds", chunk_size=3)
    check_against(stored(rb), log)
    assert rb.metadata["ignored_columns"] == ["infos.qpos"]


def test_hdf5_without_next_observations(tmp_path):
    log = d4rl_log()
    # Observations that follow on across episodes except at episode ends.
    write_d4rl_hdf5(tmp_path / "log.h5", log, next_observations=False)
    # Row 2 ends episode 0 by termination: it needs no next observation. Row 3 (a one-step
    # episode that times out) is the first step without one.
    with pytest.raises(DatasetError, match="index 3") as info:
        from_logged(tmp_path / "log.h5", path=tmp_path / "ds")
    assert info.value.field == "next_observation" and info.value.index == 3
    rb = from_logged(tmp_path / "log.h5", path=tmp_path / "ds", drop_incomplete=True)
    td = stored(rb)
    keep = [0, 1, 2, 4, 5, 6]  # the truncated last steps are dropped, the terminal one kept
    torch.testing.assert_close(
        td["observation"], torch.as_tensor(log["observations"][keep], dtype=torch.float32)
    )
    torch.testing.assert_close(  # the terminal step's next observation: its observation
        td["next", "observation"],
        torch.as_tensor(log["observations"][[1, 2, 2, 5, 6, 7]], dtype=torch.float32),
    )
    assert td["episode"].tolist() == [0, 0, 0, 1, 1, 1]  # the one-step episode vanished
    assert td["next", "terminated"].reshape(-1).tolist() == [0, 0, 1, 0, 0, 0]
    assert td["next", "truncated"].reshape(-1).tolist() == [0, 0, 0, 0, 0, 1]
    assert rb.metadata["terminal_next_observations_filled"] == 1
    assert rb.metadata["dropped_transitions"] == 2


# ------------------------------------------------------------------ boundaries, next obs


def test_episode_ids_and_done_flags_give_the_same_boundaries(tmp_path):
    log = d4rl_log()
    by_flags = stored(from_logged(log, path=tmp_path / "a"))
    with_ids = dict(log, episode_id=np.array(["a"] * 3 + ["b"] + ["c"] * 4))
    with_ids.pop("timeouts")  # episode ends without a flag are truncations
    by_ids = stored(from_logged(with_ids, path=tmp_path / "b"))
    assert (by_flags == by_ids).all()


def test_episode_ids_without_flags_and_derived_next_observations(tmp_path):
    rng = np.random.default_rng(0)
    obs = rng.normal(size=(7, 2))
    log = {
        "obs": obs,
        "action": np.array([0, 1, 2, 1, 0, 2, 1]),
        "reward": np.arange(7.0),
        "episode": [5, 5, 5, 9, 9, 9, 9],
    }
    for chunk_size in (1, 2, 3, 100):
        td = stored(
            from_logged(
                log, path=tmp_path / f"c{chunk_size}", chunk_size=chunk_size, drop_incomplete=True
            )
        )
        assert td["episode"].tolist() == [0, 0, 1, 1, 1]
        torch.testing.assert_close(
            td["next", "observation"], torch.as_tensor(obs[[1, 2, 4, 5, 6]], dtype=torch.float32)
        )
        assert td["next", "truncated"].reshape(-1).tolist() == [False, True, False, False, True]
        assert td["next", "reward"].reshape(-1).tolist() == [0, 1, 3, 4, 5]
        assert td["action"].dtype == torch.int64


def test_derived_next_observation_with_done_flags_and_next_column_kept(tmp_path):
    log = d4rl_log()
    derived = {k: v for k, v in log.items() if k != "next_observations"}
    td = stored(from_logged(derived, path=tmp_path / "a", drop_incomplete=True, chunk_size=2))
    expected = log["next_observations"][[0, 1, 2, 4, 5, 6]].copy()
    expected[2] = log["observations"][2]  # terminal: a copy of its observation
    torch.testing.assert_close(td["next", "observation"], torch.as_tensor(expected).float())


def test_last_row_without_next_observation(tmp_path):
    log = {"observations": np.ones((3, 2)), "actions": np.zeros((3, 1)), "rewards": np.zeros(3)}
    with pytest.raises(DatasetError, match="drop_incomplete") as info:
        from_logged(log, path=tmp_path / "ds")
    assert info.value.index == 2 and info.value.field == "next_observation"
    td = stored(from_logged(log, path=tmp_path / "ds", drop_incomplete=True))
    assert len(td) == 2 and td["next", "truncated"].reshape(-1).tolist() == [False, True]


def test_done_only_counts_as_terminated(tmp_path):
    log = d4rl_log()
    done = log.pop("terminals") | log.pop("timeouts")
    td = stored(from_logged(dict(log, dones=done), path=tmp_path / "ds"))
    assert torch.equal(td["next", "terminated"].reshape(-1), torch.as_tensor(done))
    assert not td["next", "truncated"].any()


def test_behaviour_probabilities(tmp_path):
    log = d4rl_log()
    log["action_prob"] = np.exp(log["action_log_probs"]) / 10
    td = stored(from_logged(log, path=tmp_path / "ds"))
    torch.testing.assert_close(td["action_prob"], torch.as_tensor(log["action_prob"]).float())
    assert td["action_prob"].shape == (8,)


# ------------------------------------------------------------------ spaces


def test_inferred_spaces():
    log = d4rl_log()
    log["actions"] = np.array([0, 3, 1, 2, 0, 1, 1, 2])
    rb = from_logged(log)
    space = minari.serialization.deserialize_space(rb.metadata["action_space"])
    assert space == gym.spaces.Discrete(4)
    obs_space = minari.serialization.deserialize_space(rb.metadata["observation_space"])
    assert obs_space == gym.spaces.Box(-np.inf, np.inf, (3,), np.float32)
    box = minari.serialization.deserialize_space(from_logged(d4rl_log()).metadata["action_space"])
    actions = d4rl_log()["actions"].astype(np.float32)
    np.testing.assert_array_equal(box.low, actions.min(0))
    np.testing.assert_array_equal(box.high, actions.max(0))


def test_integer_observations_keep_their_dtype(tmp_path):
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, size=(5, 4, 4, 3), dtype=np.uint8)
    log = {
        "observation": images,
        "action": [1, 0, 2, 1, 0],
        "reward": np.ones(5),
        "terminated": [0, 0, 0, 0, 1],
        "next_observation": np.roll(images, -1, 0),
        "cell": [3, 1, 4, 1, 5],
    }
    rb = from_logged(
        log,
        path=tmp_path / "ds",
        columns={
            "observation": {"pixels": "observation", "cell": "cell"},
            "next_observation": {"pixels": "next_observation", "cell": "cell"},
        },
    )
    td = stored(rb)
    assert td["observation", "pixels"].dtype == torch.uint8
    assert torch.equal(td["observation", "pixels"], torch.as_tensor(images))
    assert td["observation", "cell"].dtype == torch.int64 and td["observation", "cell"].shape == (
        5,
    )
    space = minari.serialization.deserialize_space(rb.metadata["observation_space"])
    assert space["pixels"].dtype == np.uint8 and space["cell"] == gym.spaces.Discrete(6)


def test_given_spaces_one_hot_and_float_coded_discrete_actions(tmp_path):
    log = d4rl_log()
    log["actions"] = np.array([0.0, 3.0, 1.0, 2.0, 0.0, 1.0, 1.0, 2.0]).reshape(8, 1)
    rb = from_logged(
        log,
        path=tmp_path / "ds",
        action_space=gym.spaces.Discrete(5),
        observation_space=gym.spaces.Box(-10, 10, (3,), np.float64),
        one_hot_actions=True,
    )
    td = stored(rb)
    assert td["action"].dtype == torch.int64 and td["action"].shape == (8, 5)
    assert td["action"].argmax(-1).tolist() == [0, 3, 1, 2, 0, 1, 1, 2]
    assert td["observation"].dtype == torch.float32


def test_dtype_float64(tmp_path):
    log = d4rl_log()
    td = stored(from_logged(log, path=tmp_path / "ds", dtype=torch.float64))
    assert td["observation"].dtype == torch.float64
    assert torch.equal(td["observation"], torch.as_tensor(log["observations"]))


# ------------------------------------------------------------------ bad input


def bad(log, match, field, index, **kwargs):
    with pytest.raises(DatasetError, match=match) as info:
        from_logged(log, **kwargs)
    assert info.value.field == field
    assert info.value.index == index
    return info.value


@pytest.mark.parametrize("value", [np.nan, np.inf, -np.inf])
def test_non_finite_values(value):
    log = d4rl_log()
    log["observations"][5, 1] = value
    bad(log, "index 5", "observations", 5)
    log = d4rl_log()
    log["rewards"][6] = value
    bad(log, "index 6", "rewards", 6)


def test_non_finite_value_index_is_the_source_row_after_drops():
    log = d4rl_log()
    log.pop("next_observations")
    log["actions"][6, 0] = np.nan  # rows 2 and 3 are dropped before it
    bad(log, "index 6", "actions", 6, drop_incomplete=True)


def test_errors_about_a_file_name_it_first(tmp_path):
    log = d4rl_log()
    log["rewards"][6] = np.nan
    scalar_columns_frame(log).to_csv(tmp_path / "log.csv", index=False)
    error = bad(tmp_path / "log.csv", "index 6", "reward", 6, path=tmp_path / "ds")
    assert str(error).startswith(f"{tmp_path / 'log.csv'}: Field 'reward': non-finite")
    assert error.source == str(tmp_path / "log.csv")
    assert not (tmp_path / "ds").exists()
    # data in memory have no file to name
    assert bad(log, "^Field 'rewards'", "rewards", 6).source is None


def test_a_non_finite_value_in_stacked_columns_names_its_column(tmp_path):
    log = d4rl_log()
    log["observations"][5, 2] = np.inf
    frame = scalar_columns_frame(log).rename(
        columns={"observation_0": "cos", "observation_1": "sin", "observation_2": "vel"}
    )
    frame.to_parquet(tmp_path / "log.parquet")
    columns = {"observation": ["cos", "sin", "vel"]}
    error = bad(tmp_path / "log.parquet", r"Field 'observation' \(column 'vel'\): non-finite "
                r"value \(inf\) at index 5", "vel", 5, columns=columns)  # fmt: skip
    assert error.source == str(tmp_path / "log.parquet")
    # the scalar groups read without a mapping (observation_0, observation_1, ...) too
    frame = scalar_columns_frame(log)
    bad(frame, r"'observation' \(column 'observation_2'\)", "observation_2", 5)


def test_mismatched_lengths():
    log = d4rl_log()
    log["rewards"] = log["rewards"][:-1]
    bad(log, "rewards", "rewards", 7)


def test_action_outside_the_space():
    log = d4rl_log()
    log["actions"][4] = [0.5, 1.5]
    bad(log, "index 4", "actions", 4, action_space=gym.spaces.Box(-1, 1, (2,)))
    log["actions"] = np.array([0, 1, 2, 1, 7, 2, 1, 0])
    bad(log, "index 4", "actions", 4, action_space=gym.spaces.Discrete(3))
    log["actions"] = np.array([0, 1, 2, 1, 1.5, 2, 1, 0])
    bad(log, "not an integer", "actions", 4, action_space=gym.spaces.Discrete(3))
    log["actions"] = np.array([0, 1, 2, 1, -1, 2, 1, 0])
    bad(log, "negative", "actions", 4)


def test_terminated_and_truncated_both_set():
    log = d4rl_log()
    log["timeouts"][2] = True
    bad(log, "both set at index 2", "terminals", 2)


def test_done_disagreeing_with_terminated():
    log = d4rl_log()
    log["done"] = log["terminals"] | log["timeouts"]
    log["done"][5] = True
    bad(log, "index 5", "done", 5)


def test_flags_that_are_not_flags():
    log = d4rl_log()
    log["terminals"] = log["terminals"].astype(float)
    log["terminals"][1] = 0.5
    bad(log, "index 1", "terminals", 1)


def test_unknown_column_lists_accepted_names():
    log = d4rl_log()
    log["temperature"] = np.zeros(8)
    error = bad(log, "Unknown column 'temperature'", "temperature", None)
    for name in ("observations", "next_observations", "terminals", "timeouts", "episode_id"):
        assert name in str(error)


def test_missing_field_and_bad_mapping():
    log = d4rl_log()
    log.pop("rewards")
    bad(log, "Missing field 'reward'", "reward", None)
    bad(d4rl_log(), "not in the source", "rwd", None, columns={"reward": "rwd"})
    bad(d4rl_log(), "Unknown field", "score", None, columns={"score": "rewards"})


def test_episode_resumes_after_another_episode():
    log = d4rl_log()
    log["episode"] = [0, 0, 0, 1, 0, 0, 0, 0]
    bad(log, "resumes at index 4", "episode", 4)


def test_done_flag_inside_an_episode_id():
    log = d4rl_log()
    log["episode"] = [0, 0, 0, 0, 2, 2, 2, 2]  # but a flag ends an episode at index 2
    bad(log, "index 2", "episode", 2)


def test_pandas_nullable_columns():
    log = d4rl_log()
    frame = pd.DataFrame(
        {
            "observations": list(log["observations"]),
            "next_observations": list(log["next_observations"]),
            "actions": pd.array([0, 1, 2, 1, 0, 2, 1, 0], dtype="Int64"),
            "rewards": log["rewards"],
            "terminals": pd.array(log["terminals"], dtype="boolean"),
            "timeouts": log["timeouts"],
        }
    )
    td = stored(from_logged(frame))
    assert td["action"].dtype == torch.int64 and td["action"].tolist() == [0, 1, 2, 1, 0, 2, 1, 0]
    frame.loc[5, "actions"] = pd.NA
    bad(frame, "index 5", "actions", 5)
    frame.loc[5, "actions"] = 1
    frame.loc[6, "terminals"] = pd.NA
    bad(frame, "index 6", "terminals", 6)


def test_ragged_array_cells():
    log = d4rl_log()
    frame = pd.DataFrame(
        {
            "observations": list(log["observations"]),
            "actions": log["actions"][:, 0],
            "rewards": log["rewards"],
            "terminals": log["terminals"],
            "timeouts": log["timeouts"],
        }
    )
    frame.at[3, "observations"] = np.zeros(2)
    bad(frame, "index 3", "observations", 3, drop_incomplete=True)


def test_nested_observation_columns_mapping(tmp_path):
    log = d4rl_log()
    frame = scalar_columns_frame(log)
    rb = from_logged(
        frame,
        path=tmp_path / "ds",
        columns={
            "observation": {"pos": ["observation_0", "observation_1"], "vel": "observation_2"},
            "next_observation": {
                "pos": ["next_observation_0", "next_observation_1"],
                "vel": "next_observation_2",
            },
        },
    )
    td = stored(rb)
    torch.testing.assert_close(
        td["observation", "pos"], torch.as_tensor(log["observations"][:, :2]).float()
    )
    torch.testing.assert_close(
        td["next", "observation", "vel"], torch.as_tensor(log["next_observations"][:, 2]).float()
    )
    space = minari.serialization.deserialize_space(rb.metadata["observation_space"])
    assert isinstance(space, gym.spaces.Dict) and space["pos"].shape == (2,)


def test_unsupported_sources(tmp_path):
    with pytest.raises(DatasetError, match="reshape"):
        from_logged(TensorDict({"observation": torch.zeros(2, 3, 1)}, batch_size=[2, 3]))
    (tmp_path / "log.bin").write_bytes(b"")
    with pytest.raises(ValueError, match="file_format"):
        from_logged(tmp_path / "log.bin")
    with pytest.raises(FileNotFoundError):
        from_logged(tmp_path / "absent.parquet")
    with pytest.raises(TypeError):
        from_logged(42)


# ------------------------------------------------------------------ atomicity, reuse


def leftovers(folder):
    return sorted(p.name for p in folder.iterdir()) if folder.exists() else []


def test_bad_input_writes_nothing(tmp_path):
    log = d4rl_log()
    log["rewards"][7] = np.nan
    with pytest.raises(DatasetError):
        from_logged(log, path=tmp_path / "out" / "ds")
    assert leftovers(tmp_path / "out") == []
    assert leftovers(tmp_path / "cache") == []


def test_failure_while_writing_leaves_nothing(tmp_path, monkeypatch):
    out = tmp_path / "out"
    writes = []
    real = logged.to_tensordict

    def interrupted(*args, **kwargs):
        if ("action",) in kwargs["spaces"]:  # the write pass (spaces are known by then)
            writes.append(leftovers(out))
            if len(writes) == 3:
                raise KeyboardInterrupt
        return real(*args, **kwargs)

    monkeypatch.setattr(logged, "to_tensordict", interrupted)
    with pytest.raises(KeyboardInterrupt):
        from_logged(d4rl_log(), path=out / "ds", chunk_size=1)
    assert len(writes) == 3 and writes[-1][0].startswith(".ds.tmp-")  # it was mid-write
    assert leftovers(out) == []
    monkeypatch.setattr(logged, "to_tensordict", real)
    check_against(stored(from_logged(d4rl_log(), path=out / "ds")), d4rl_log())


def test_failed_minari_write_leaves_neither_dataset(tmp_path):
    log = d4rl_log()
    log["next_observations"][0] += 1.0  # not the following observation: Minari cannot store it
    with pytest.raises(DatasetError, match="next.observation"):
        from_logged(log, path=tmp_path / "out" / "ds", minari_id="logs/bad-v0")
    assert leftovers(tmp_path / "out") == []
    assert not (tmp_path / "minari" / "logs" / "bad-v0").exists()


def test_reuse_overwrite_and_default_cache(tmp_path):
    log = d4rl_log()
    first = from_logged(log)
    assert first.path.parent == tmp_path / "cache" / "logged"
    marker = first.path / "torchrl_offline.json"
    stamp = marker.stat().st_mtime_ns
    again = from_logged(log)
    assert again.path == first.path and marker.stat().st_mtime_ns == stamp  # reused
    other = d4rl_log(seed=1)
    assert from_logged(other).path != first.path
    with pytest.raises(FileExistsError):
        from_logged(other, path=first.path)
    rb = from_logged(other, path=first.path, overwrite=True)
    check_against(stored(rb), other)
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "notes.txt").write_text("not a dataset")
    with pytest.raises(FileExistsError, match="not a torchrl_offline dataset"):
        from_logged(other, path=tmp_path / "mine", overwrite=True)
    assert (tmp_path / "mine" / "notes.txt").exists()
    (tmp_path / "empty").mkdir()
    assert from_logged(other, path=tmp_path / "empty").path == tmp_path / "empty"


# ------------------------------------------------------------------ Minari


@pytest.mark.parametrize("data_format", ["hdf5", "arrow"])
def test_written_minari_dataset_reloads_with_equal_values(tmp_path, data_format):
    log = d4rl_log()
    options = dict(
        path=tmp_path / "ds",
        minari_id="logs/toy-v0",
        minari_kwargs={"data_format": data_format, "author": "tests"},
        ref_min_score=-1.0,
        ref_max_score=1.0,
    )
    rb = from_logged(log, **options)
    assert rb.metadata["minari_id"] == "logs/toy-v0"
    dataset = minari.load_dataset("logs/toy-v0")
    assert dataset.total_episodes == 3 and dataset.total_steps == 8
    assert dataset.storage.metadata["ref_max_score"] == 1.0
    start = 0
    for episode in dataset.iterate_episodes():
        n = len(episode.rewards)
        rows = slice(start, start + n)
        np.testing.assert_allclose(episode.observations[:-1], log["observations"][rows], rtol=1e-6)
        np.testing.assert_allclose(
            episode.observations[-1], log["next_observations"][start + n - 1], rtol=1e-6
        )
        np.testing.assert_allclose(episode.actions, log["actions"][rows], rtol=1e-6)
        np.testing.assert_allclose(episode.rewards, log["rewards"][rows], rtol=1e-6)
        np.testing.assert_array_equal(episode.terminations, log["terminals"][rows])
        np.testing.assert_array_equal(episode.truncations, log["timeouts"][rows])
        logp = np.asarray(episode.infos["action_log_prob"], dtype=np.float64).reshape(-1)
        np.testing.assert_allclose(logp[1:], log["action_log_probs"][rows], rtol=1e-6)
        start += n
    assert start == 8
    # Loading the same log again reuses both datasets instead of failing.
    # load_minari reads it back into exactly the transitions from_logged stored.
    from torchrl_offline.data.minari import load_minari

    reloaded = stored(load_minari("logs/toy-v0"))
    assert set(reloaded.keys(True, True)) == set(stored(rb).keys(True, True))
    assert (reloaded == stored(rb)).all()
    assert from_logged(log, **options).path == rb.path
    # Other data under the same Minari id is refused.
    with pytest.raises(FileExistsError):
        from_logged(d4rl_log(seed=3), minari_id="logs/toy-v0")
    assert leftovers(tmp_path / "cache" / "logged") == []  # nothing half-written either


# ------------------------------------------------------------------ env id, terminal steps


def swing_log(actions=(0, 1, 0, 1, 1, 0), terminals=(0, 0, 1, 0, 0, 1)) -> dict:
    """Two terminating episodes of six-number observations, without next observations."""
    rng = np.random.default_rng(0)
    n = len(actions)
    return {
        "observations": rng.normal(size=(n, 6)),
        "actions": np.asarray(actions),
        "rewards": -np.ones(n),
        "terminals": np.asarray(terminals, bool),
    }


def test_terminal_steps_are_kept_and_never_bootstrapped(tmp_path):
    from torchrl.objectives.value import TD0Estimator

    from torchrl_offline.objectives.common import bootstrap_target

    log = swing_log()
    rb = from_logged(log, path=tmp_path / "ds")  # no next observations, nothing to drop
    td = stored(rb)
    assert len(td) == 6 and rb.metadata["dropped_transitions"] == 0
    assert rb.metadata["terminal_next_observations_filled"] == 2
    ends = torch.as_tensor(log["terminals"])
    assert torch.equal(td["next", "observation"][ends], td["observation"][ends])
    # Whatever a critic says of that copied next observation, the target is the reward.
    target = bootstrap_target(
        TD0Estimator(gamma=0.99, value_network=None), td, torch.full((6,), 1e6)
    )
    assert target[ends].tolist() == [-1.0, -1.0]


def test_env_id_is_recorded_and_gives_the_env_action_space(tmp_path):
    import json

    from minari.serialization import deserialize_space

    log = swing_log()  # actions 0 and 1 only: Discrete(2) when inferred
    plain = from_logged(log)
    assert deserialize_space(plain.metadata["action_space"]) == gym.spaces.Discrete(2)
    assert "env_spec" not in plain.metadata
    rb = from_logged(log, env_id="Acrobot-v1")
    assert deserialize_space(rb.metadata["action_space"]) == gym.spaces.Discrete(3)
    assert json.loads(rb.metadata["env_spec"])["id"] == "Acrobot-v1"
    assert rb.path != plain.path  # another conversion, not the one without env id
    with pytest.raises(DatasetError, match=r"have shape \[6\] but CartPole-v1's have \[4\]"):
        from_logged(log, env_id="CartPole-v1")
    with pytest.raises(DatasetError, match="Unknown environment 'Nope-v0'"):
        from_logged(log, env_id="Nope-v0")
    bad = swing_log(actions=(0, 1, 3, 0, 1, 1))
    with pytest.raises(DatasetError, match="index 2"):  # outside Acrobot's three actions
        from_logged(bad, env_id="Acrobot-v1")


def test_minari_copy_records_its_log_and_env(tmp_path):
    import json

    from torchrl_offline.data.minari import load_minari
    from torchrl_offline.integrity import file_digest

    log = swing_log(terminals=(0, 0, 1, 0, 0, 0))  # the second episode is cut off
    path = tmp_path / "log.csv"
    pd.DataFrame({**{f"observation_{i}": log["observations"][:, i] for i in range(6)},
                  "action": log["actions"], "reward": log["rewards"],
                  "terminated": log["terminals"]}).to_csv(path, index=False)  # fmt: skip
    options = dict(drop_incomplete=True, env_id="Acrobot-v1", minari_id="logs/swing-v0")
    from_logged(path, **options)
    copy = load_minari("logs/swing-v0")
    assert json.loads(copy.metadata["env_spec"])["id"] == "Acrobot-v1"
    record = copy.metadata["source_log"]
    assert record["path"] == str(path.resolve()) and record["size"] == path.stat().st_size
    assert record["mtime_ns"] == path.stat().st_mtime_ns
    assert record["hash"] == file_digest(path)
    assert record["dropped_transitions"] == 1 and record["terminal_next_observations_filled"] == 1
