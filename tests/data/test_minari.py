"""Tests of torchrl_offline.data.minari.load_minari against Minari's own reader."""

from __future__ import annotations

import dataclasses
import shutil
from pathlib import Path

import gymnasium as gym
import h5py
import minari
import numpy as np
import pytest
import torch
from minari.data_collector import EpisodeBuffer
from minari.serialization import deserialize_space
from torchrl.data.datasets import load_dataset
from torchrl.data.replay_buffers.samplers import SliceSampler

import torchrl_offline.data.minari as minari_module
import torchrl_offline.data.minari_reader as minari_reader
from torchrl_offline.data.errors import DatasetError, DatasetNotFoundError
from torchrl_offline.data.minari import load_minari, minari_content_hash
from torchrl_offline.data.minari_writer import write_minari

FORMATS = ["hdf5", "arrow"]
# Minari asks dataset creators for an author, a description, ...: not the point here.
pytestmark = pytest.mark.filterwarnings("ignore::UserWarning:minari")


@pytest.fixture(autouse=True)
def _isolated_roots(tmp_path, monkeypatch):
    """Minari datasets and conversion caches live in tmp_path, never in the home directory."""
    monkeypatch.setenv("MINARI_DATASETS_PATH", str(tmp_path / "minari"))
    monkeypatch.setenv("TORCHRL_OFFLINE_CACHE", str(tmp_path / "cache"))


def _sample(space: gym.Space, rng: np.random.Generator, n: int):
    """n values of ``space`` in Minari's episode layout (dict / tuple of stacked arrays)."""
    if isinstance(space, gym.spaces.Dict):
        return {k: _sample(s, rng, n) for k, s in space.spaces.items()}
    if isinstance(space, gym.spaces.Tuple):
        return tuple(_sample(s, rng, n) for s in space.spaces)
    space.seed(int(rng.integers(1 << 31)))
    if isinstance(space, gym.spaces.Text):
        return [space.sample() for _ in range(n)]
    return np.stack([space.sample() for _ in range(n)])


def _episodes(obs_space, act_space, lengths, ends, *, seed=0, log_prob=False):
    """EpisodeBuffers of the given lengths; ``ends[i]`` is "term", "trunc" or "none"."""
    rng = np.random.default_rng(seed)
    out = []
    for i, (length, end) in enumerate(zip(lengths, ends)):
        flags = np.zeros(length, dtype=bool)
        terminations, truncations = flags.copy(), flags.copy()
        if end != "none":
            (terminations if end == "term" else truncations)[-1] = True
        infos = None
        if log_prob:
            infos = {"action_log_prob": [float("nan"), *rng.normal(size=length).tolist()]}
        out.append(
            EpisodeBuffer(
                id=i,
                seed=i,
                observations=_sample(obs_space, rng, length + 1),
                actions=_sample(act_space, rng, length),
                rewards=rng.normal(size=length),
                terminations=terminations,
                truncations=truncations,
                infos=infos,
            )
        )
    return out


def _make(dataset_id, episodes, data_format, *, env=None, **spaces_and_scores):
    return minari.create_dataset_from_buffers(
        dataset_id,
        episodes,
        env=env,
        algorithm_name="test",
        data_format=data_format,
        **spaces_and_scores,
    )


def _leaf(value, key):
    for k in key:
        value = value[int(k)] if isinstance(value, tuple) else value[k]
    return value


def _assert_matches_minari(buffer, dataset_id, obs_keys, *, dtype=torch.float32):
    """Every transition of the buffer equals Minari's EpisodeData, in dataset order."""
    storage = buffer.storage
    index = 0
    for ep in minari.load_dataset(dataset_id).iterate_episodes():
        n = len(ep)
        rows = storage[index : index + n]

        def cast(array):
            t = torch.as_tensor(np.array(array))
            return t.to(dtype) if t.is_floating_point() else t

        for key in obs_keys:
            obs = _leaf(ep.observations, key)
            assert torch.equal(rows.get(("observation", *key)), cast(obs[:-1]))
            assert torch.equal(rows.get(("next", "observation", *key)), cast(obs[1:]))
        assert torch.equal(rows["action"], cast(ep.actions))
        assert torch.equal(rows["next", "reward"], cast(ep.rewards).reshape(n, 1))
        assert torch.equal(rows["next", "terminated"], torch.as_tensor(ep.terminations)[:, None])
        assert torch.equal(rows["next", "truncated"], torch.as_tensor(ep.truncations)[:, None])
        done = torch.as_tensor(ep.terminations | ep.truncations)[:, None]
        assert torch.equal(rows["next", "done"], done)
        assert (rows["episode"] == ep.id).all()
        if "action_log_prob" in (ep.infos or {}):
            expected = cast(ep.infos["action_log_prob"][1:])
            assert torch.equal(rows["action_log_prob"], expected)
        index += n
    assert index == len(buffer)


@pytest.mark.parametrize("data_format", FORMATS)
def test_discrete_cartpole_matches_minari(data_format):
    env = gym.make("CartPole-v1")
    lengths, ends = [5, 1, 7, 3], ["term", "trunc", "trunc", "term"]
    episodes = _episodes(env.observation_space, env.action_space, lengths, ends, log_prob=True)
    _make("test/cartpole-v0", episodes, data_format, env=env)
    # a chunk size that splits the dataset across several reads
    buffer = load_minari("test/cartpole-v0", chunk_transitions=4, batch_size=8)
    assert len(buffer) == sum(lengths)
    assert buffer["action"].dtype == torch.int64 and buffer["action"].shape == (16,)
    assert buffer["observation"].dtype == torch.float32
    assert buffer["action_log_prob"].shape == (16,)
    _assert_matches_minari(buffer, "test/cartpole-v0", [()])
    # a one-step episode: observation and next observation are Minari's two observations
    one = buffer.storage[5]
    assert one["episode"] == 1 and one["next", "truncated"].item()
    batch = buffer.sample()
    assert batch["next", "reward"].shape == (8, 1) and batch["next", "done"].dtype == torch.bool


@pytest.mark.parametrize("data_format", FORMATS)
def test_continuous_matches_minari_with_dtype_cast(data_format):
    obs_space = gym.spaces.Box(-5.0, 5.0, (3,), dtype=np.float64)
    act_space = gym.spaces.Box(-2.0, 2.0, (2,), dtype=np.float32)
    episodes = _episodes(obs_space, act_space, [4, 1, 6], ["trunc", "term", "term"], seed=1)
    _make(
        "test/box-v0",
        episodes,
        data_format,
        env="Pendulum-v1",
        observation_space=obs_space,
        action_space=act_space,
        ref_min_score=-1500.0,
        ref_max_score=-150.0,
    )
    buffer = load_minari("test/box-v0", chunk_transitions=2)
    _assert_matches_minari(buffer, "test/box-v0", [()])
    assert "action_log_prob" not in buffer.storage._storage.keys()
    meta = buffer.metadata
    assert meta["dataset_id"] == "test/box-v0"
    assert meta["data_format"] == data_format
    assert (meta["ref_min_score"], meta["ref_max_score"]) == (-1500.0, -150.0)
    assert deserialize_space(meta["observation_space"]) == obs_space
    assert deserialize_space(meta["action_space"]) == act_space
    assert gym.envs.registration.EnvSpec.from_json(meta["env_spec"]).id == "Pendulum-v1"
    assert (
        Path(meta["source_path"]) == Path(minari.load_dataset("test/box-v0").spec.data_path).parent
    )

    exact = load_minari("test/box-v0", dtype=torch.float64)
    assert exact["observation"].dtype == torch.float64
    _assert_matches_minari(exact, "test/box-v0", [()], dtype=torch.float64)


@pytest.mark.parametrize("data_format", FORMATS)
def test_dict_observations_become_nested_keys(data_format):
    obs_space = gym.spaces.Dict(
        {
            "position": gym.spaces.Box(-1.0, 1.0, (2,), dtype=np.float64),
            "pixels": gym.spaces.Box(0, 255, (2, 3), dtype=np.uint8),
            "extra": gym.spaces.Tuple(
                (gym.spaces.Discrete(4), gym.spaces.Box(0.0, 1.0, (1,), dtype=np.float32))
            ),
        }
    )
    act_space = gym.spaces.Discrete(3, start=-1)
    episodes = _episodes(obs_space, act_space, [3, 1, 2], ["term", "trunc", "term"], seed=2)
    _make(
        "test/dict-v0",
        episodes,
        data_format,
        observation_space=obs_space,
        action_space=act_space,
    )
    buffer = load_minari("test/dict-v0")
    keys = [("position",), ("pixels",), ("extra", "0"), ("extra", "1")]
    _assert_matches_minari(buffer, "test/dict-v0", keys)
    assert buffer["observation", "pixels"].dtype == torch.uint8
    assert buffer["observation", "extra", "0"].dtype == torch.int64
    assert buffer["observation", "position"].dtype == torch.float32
    assert buffer["action"].min() >= -1 and buffer["action"].max() <= 1

    one_hot = load_minari("test/dict-v0", one_hot_actions=True)
    assert one_hot["action"].shape == (6, 3) and one_hot["action"].dtype == torch.int64
    assert torch.equal(one_hot["action"].argmax(-1) - 1, buffer["action"])
    assert (one_hot["action"].sum(-1) == 1).all()


def test_path_inputs_and_torchrl_registry(tmp_path):
    env = gym.make("CartPole-v1")
    episodes = _episodes(env.observation_space, env.action_space, [3, 2], ["term", "trunc"])
    _make("test/paths-v0", episodes, "hdf5", env=env)
    folder = tmp_path / "minari" / "test" / "paths-v0"
    by_id = load_minari("test/paths-v0")
    for source in (folder, str(folder), folder / "data"):
        buffer = load_minari(source)
        assert buffer.path == by_id.path
        assert torch.equal(buffer["observation"], by_id["observation"])
    # an explicit root instead of $MINARI_DATASETS_PATH
    moved = tmp_path / "elsewhere"
    shutil.copytree(tmp_path / "minari", moved)
    assert load_minari("test/paths-v0", root=moved).metadata["source_path"] == str(
        moved / "test" / "paths-v0"
    )

    from_torchrl = load_dataset("minari-local:test/paths-v0", batch_size=4)
    assert torch.equal(from_torchrl["next", "reward"], by_id["next", "reward"])
    assert from_torchrl.sample()["observation"].shape == (4, 4)


def test_missing_dataset_says_where_it_looked(tmp_path, monkeypatch):
    def no_network(*args, **kwargs):
        raise AssertionError("download attempted")

    monkeypatch.setattr(minari, "download_dataset", no_network)
    with pytest.raises(DatasetNotFoundError, match="MINARI_DATASETS_PATH") as err:
        load_minari("test/absent-v0")
    assert str(tmp_path / "minari" / "test" / "absent-v0" / "data") in str(err.value)
    assert isinstance(err.value, FileNotFoundError)
    for path in (tmp_path / "nowhere", str(tmp_path / "nowhere")):
        with pytest.raises(DatasetNotFoundError, match="given path") as err:
            load_minari(path)
        assert "download=True" not in str(err.value)


def test_download_only_when_asked(monkeypatch):
    env = gym.make("CartPole-v1")
    calls = []

    def fake_download(dataset_id, force_download=False):
        calls.append(dataset_id)
        episodes = _episodes(env.observation_space, env.action_space, [2], ["term"])
        _make(dataset_id, episodes, "hdf5", env=env)

    monkeypatch.setattr(minari, "download_dataset", fake_download)
    with pytest.raises(DatasetNotFoundError):
        load_minari("test/remote-v0")
    assert calls == []
    buffer = load_minari("test/remote-v0", download=True)
    assert calls == ["test/remote-v0"] and len(buffer) == 2


def test_cache_reused_then_invalidated(monkeypatch):
    env = gym.make("CartPole-v1")
    episodes = _episodes(env.observation_space, env.action_space, [3, 4], ["term", "trunc"])
    dataset = _make("test/cache-v0", episodes, "hdf5", env=env)
    first = load_minari("test/cache-v0")
    data_path = Path(dataset.spec.data_path)
    digest = minari_content_hash(data_path)
    assert first.metadata["content_hash"] == digest

    conversions, hashes = [], []
    real_convert, real_hash = minari_module._convert, minari_module.minari_content_hash
    monkeypatch.setattr(
        minari_module, "_convert", lambda *a, **k: conversions.append(a) or real_convert(*a, **k)
    )
    monkeypatch.setattr(
        minari_module, "minari_content_hash", lambda p: hashes.append(p) or real_hash(p)
    )
    again = load_minari("test/cache-v0")
    assert conversions == [] and again.path == first.path
    assert hashes == []  # files untouched: the memoized content hash is used

    # the same number of bytes, different content: detected, converted again
    size = (data_path / "main_data.hdf5").stat().st_size
    with h5py.File(data_path / "main_data.hdf5", "r+") as f:
        f["episode_1/rewards"][...] = np.arange(4.0)
    assert (data_path / "main_data.hdf5").stat().st_size == size
    edited = load_minari("test/cache-v0")
    assert len(hashes) == 1 and len(conversions) == 1 and edited.path != first.path
    assert edited["next", "reward"][3:, 0].tolist() == [0.0, 1.0, 2.0, 3.0]
    digest = minari_content_hash(data_path)

    # other conversion options get their own entry
    wide = load_minari("test/cache-v0", dtype=torch.float64)
    assert len(conversions) == 2 and wide.path != edited.path

    # a changed dataset (one more episode) is converted again
    more = _episodes(env.observation_space, env.action_space, [2], ["term"], seed=5)
    dataset.update_dataset_from_buffer([dataclasses.replace(more[0], id=None)])
    assert minari_content_hash(data_path) != digest
    changed = load_minari("test/cache-v0")
    assert len(conversions) == 3 and changed.path != edited.path
    assert len(changed) == 9
    _assert_matches_minari(changed, "test/cache-v0", [()])


def test_immutable_buffer_keeps_cache_intact():
    env = gym.make("CartPole-v1")
    _make(
        "test/ro-v0",
        _episodes(env.observation_space, env.action_space, [3], ["term"]),
        "hdf5",
        env=env,
    )
    buffer = load_minari("test/ro-v0")
    with pytest.raises(RuntimeError):
        buffer.extend(buffer.storage[:1].clone())


def _no_valid_entry(cache: Path) -> bool:
    entries = list((cache / "minari").glob("*")) if (cache / "minari").exists() else []
    return all(e.name.startswith(".") or not (e / "torchrl_offline.json").exists() for e in entries)


def test_interrupted_conversion_leaves_nothing_valid(tmp_path, monkeypatch):
    env = gym.make("CartPole-v1")
    episodes = _episodes(env.observation_space, env.action_space, [3, 3, 3], ["term"] * 3)
    _make("test/crash-v0", episodes, "arrow", env=env)
    real_validate = minari_reader.validate_transitions
    calls = []

    def crash_on_second_chunk(td, **kwargs):
        calls.append(kwargs["offset"])
        if len(calls) == 2:
            raise KeyboardInterrupt("simulated interruption")
        return real_validate(td, **kwargs)

    monkeypatch.setattr(minari_reader, "validate_transitions", crash_on_second_chunk)
    threads = torch.get_num_threads()
    with pytest.raises(KeyboardInterrupt):
        load_minari("test/crash-v0", chunk_transitions=3)
    assert calls == [0, 3]
    assert torch.get_num_threads() == threads  # the conversion's single-thread mode is undone
    cache = tmp_path / "cache"
    assert _no_valid_entry(cache)
    assert list((cache / "minari").iterdir()) == []  # the temporary directory is gone too

    # a directory left by a killed process (no completion marker) is never loaded
    monkeypatch.setattr(minari_reader, "validate_transitions", real_validate)
    buffer = load_minari("test/crash-v0")
    abandoned = buffer.path.parent / f".{buffer.path.name}.tmp-{2**22 + 1}-0badc0de"
    shutil.copytree(buffer.path, abandoned)
    shutil.rmtree(buffer.path / "transitions" / "next")
    (buffer.path / "torchrl_offline.json").unlink()
    reloaded = load_minari("test/crash-v0")
    assert reloaded.path == buffer.path and len(reloaded) == 9
    assert not abandoned.exists()  # its process is gone: the leftover was removed
    _assert_matches_minari(reloaded, "test/crash-v0", [()])


def test_invalid_data_names_field_and_global_index():
    act_space = gym.spaces.Box(-1.0, 1.0, (1,), dtype=np.float32)
    obs_space = gym.spaces.Box(-10.0, 10.0, (2,), dtype=np.float32)
    episodes = _episodes(obs_space, act_space, [4, 4], ["term", "term"])
    episodes[1].actions[2] = 3.0  # transition 4 + 2
    _make(
        "test/bad-action-v0", episodes, "hdf5", observation_space=obs_space, action_space=act_space
    )
    with pytest.raises(DatasetError, match="index 6") as err:
        load_minari("test/bad-action-v0", chunk_transitions=4)
    assert (err.value.field, err.value.index) == ("action", 6)

    episodes = _episodes(obs_space, act_space, [4, 3], ["term", "term"], seed=3)
    episodes[1].observations[1, 0] = np.nan  # observation of transition 5, next of transition 4
    _make("test/nan-v0", episodes, "arrow", observation_space=obs_space, action_space=act_space)
    with pytest.raises(DatasetError) as err:
        load_minari("test/nan-v0", chunk_transitions=4)
    assert (err.value.field, err.value.index) == ("observation", 5)

    episodes = _episodes(obs_space, act_space, [2, 3], ["term", "trunc"], seed=4)
    episodes[1].terminations[-1] = True
    _make("test/both-v0", episodes, "hdf5", observation_space=obs_space, action_space=act_space)
    with pytest.raises(DatasetError, match="both set at index 4"):
        load_minari("test/both-v0")
    assert _no_valid_entry(Path(minari_module.default_cache_dir()))


@pytest.mark.parametrize("data_format", FORMATS)
@pytest.mark.parametrize("discrete", [None, 3])
def test_round_trip_with_write_minari(make_transitions, data_format, discrete):
    td = make_transitions([3, 1, 4], discrete=discrete, terminated_episodes=[0, 2])
    td["action_prob"] = td["action_log_prob"].exp()
    td["policy_id"] = td["episode"] % 2  # an extra per-step info field
    act_space = (
        gym.spaces.Discrete(3) if discrete else gym.spaces.Box(-1.0, 1.0, (2,), dtype=np.float32)
    )
    obs_space = gym.spaces.Box(-np.inf, np.inf, (3,), dtype=np.float32)
    write_minari(
        td,
        "test/roundtrip-v0",
        observation_space=obs_space,
        action_space=act_space,
        data_format=data_format,
        extra_info_keys=["policy_id"],
    )
    buffer = load_minari("test/roundtrip-v0", info_keys=["policy_id"])
    stored = buffer.storage[:]
    assert set(stored.keys(True, True)) == set(td.keys(True, True))
    for key in td.keys(True, True):
        assert stored.get(key).dtype == td.get(key).dtype, key
        assert torch.equal(stored.get(key), td.get(key)), key


def test_multi_discrete_actions_and_unsupported_spaces():
    obs_space = gym.spaces.MultiBinary(3)
    act_space = gym.spaces.MultiDiscrete([2, 5])
    episodes = _episodes(obs_space, act_space, [2, 3], ["term", "trunc"], seed=6)
    _make("test/multi-v0", episodes, "arrow", observation_space=obs_space, action_space=act_space)
    buffer = load_minari("test/multi-v0")
    assert buffer["action"].dtype == torch.int64 and buffer["action"].shape == (5, 2)
    assert buffer["observation"].dtype == torch.int8
    _assert_matches_minari(buffer, "test/multi-v0", [()])
    with pytest.raises(ValueError, match="Discrete action space"):
        load_minari("test/multi-v0", one_hot_actions=True)
    with pytest.raises(ValueError, match="floating"):
        load_minari("test/multi-v0", dtype=torch.int32)

    text = gym.spaces.Dict({"note": gym.spaces.Text(4), "x": gym.spaces.Box(0.0, 1.0, (1,))})
    episodes = _episodes(text, gym.spaces.Discrete(2), [2], ["term"], seed=7)
    _make(
        "test/text-v0",
        episodes,
        "hdf5",
        observation_space=text,
        action_space=gym.spaces.Discrete(2),
    )
    with pytest.raises(DatasetError, match="Text space") as err:
        load_minari("test/text-v0")
    assert err.value.field == "observation.note"


def test_info_keys_must_exist_and_not_clash():
    env = gym.make("CartPole-v1")
    episodes = _episodes(env.observation_space, env.action_space, [2], ["term"], log_prob=True)
    _make("test/infos-v0", episodes, "hdf5", env=env)
    with pytest.raises(DatasetError, match="policy_id") as err:
        load_minari("test/infos-v0", info_keys=["policy_id"])
    assert err.value.field == "policy_id"
    with pytest.raises(ValueError, match="reserved"):
        load_minari("test/infos-v0", info_keys=["action"])
    assert "action_log_prob" in load_minari("test/infos-v0").storage[:].keys()


def test_sampled_rows_equal_storage_rows():
    obs_space = gym.spaces.Dict({"a": gym.spaces.Box(-1.0, 1.0, (2,)), "b": gym.spaces.Discrete(5)})
    episodes = _episodes(obs_space, gym.spaces.Discrete(2), [4, 6], ["term", "trunc"], seed=8)
    _make(
        "test/sample-v0",
        episodes,
        "hdf5",
        observation_space=obs_space,
        action_space=gym.spaces.Discrete(2),
    )
    buffer = load_minari("test/sample-v0", batch_size=32)
    everything = buffer.storage[:]
    batch = buffer.sample()
    assert batch.batch_size == (32,)
    rows = batch["index"]
    for key in everything.keys(True, True):
        assert torch.equal(batch.get(key), everything.get(key)[rows]), key
    # other index forms go through TorchRL's own path
    assert torch.equal(buffer.storage[torch.tensor([-1])]["episode"], torch.tensor([1]))
    assert buffer.storage[3]["episode"] == 0

    # TorchRL's trajectory sampler works on the episode key
    slices = load_minari(
        "test/sample-v0",
        batch_size=6,
        sampler=SliceSampler(num_slices=2, traj_key="episode", strict_length=True),
    ).sample()
    episodes_of_slices = slices["episode"].view(2, 3)
    assert (episodes_of_slices == episodes_of_slices[:, :1]).all()
    steps = slices["index"].reshape(2, 3)
    assert (steps.diff(dim=1) == 1).all()


@pytest.mark.parametrize("data_format", FORMATS)
def test_episode_ending_without_flag_is_stored_truncated(data_format):
    """Regression: an episode cut without a flag left its boundary invisible to done flags."""
    env = gym.make("CartPole-v1")
    episodes = _episodes(
        env.observation_space, env.action_space, [3, 2, 1], ["none", "term", "none"]
    )
    _make("test/open-v0", episodes, data_format, env=env)
    buffer = load_minari("test/open-v0")
    truncated = buffer["next", "truncated"].reshape(-1).tolist()
    assert truncated == [False, False, True, False, False, True]
    assert buffer["next", "terminated"].reshape(-1).tolist() == [False] * 4 + [True, False]
    assert torch.equal(
        buffer["next", "done"], buffer["next", "terminated"] | buffer["next", "truncated"]
    )
    assert buffer.metadata["truncated_unflagged_ends"] == 2


def test_arrow_dataset_with_numpy_info_arrays_loads():
    """Regression: Minari 0.5.4 cannot decode 1-D numpy info arrays it wrote in Arrow
    (``invalid literal for int()``), so such a dataset failed to load at all."""
    env = gym.make("CartPole-v1")
    episodes = _episodes(env.observation_space, env.action_space, [3, 2], ["term", "trunc"])
    episodes = [
        dataclasses.replace(
            ep,
            infos={
                "action_log_prob": np.r_[np.nan, -np.arange(len(ep.rewards), dtype=np.float64)],
                "nested": {"speed": np.zeros(len(ep) + 1), "pos": np.ones((len(ep) + 1, 2))},
            },
        )
        for ep in episodes
    ]
    _make("test/arrow-infos-v0", episodes, "arrow", env=env)
    buffer = load_minari("test/arrow-infos-v0")
    assert buffer["action_log_prob"].tolist() == [0.0, -1.0, -2.0, 0.0, -1.0]
    # the patch of Minari's decoder lasts only for the conversion
    with pytest.raises(ValueError, match="invalid literal"):
        list(minari.load_dataset("test/arrow-infos-v0").iterate_episodes())


def test_info_keys_reach_nested_infos():
    """Regression: naming a group of nested infos failed with an obscure numpy TypeError."""
    env = gym.make("CartPole-v1")
    episodes = _episodes(env.observation_space, env.action_space, [2, 1], ["term", "trunc"])
    episodes = [
        dataclasses.replace(
            ep, infos={"stats": {"speed": np.arange(len(ep) + 1, dtype=np.float64) + 10 * ep.id}}
        )
        for ep in episodes
    ]
    _make("test/nested-infos-v0", episodes, "hdf5", env=env)
    buffer = load_minari("test/nested-infos-v0", info_keys=["stats/speed"])
    assert buffer["stats", "speed"].tolist() == [1.0, 2.0, 11.0]
    with pytest.raises(DatasetError, match="'stats/speed'") as err:
        load_minari("test/nested-infos-v0", info_keys=["stats"])
    assert err.value.field == "stats"
