"""Offline-to-online fine-tuning with a TorchRL collector and a mixed replay buffer."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from torchrl.envs import GymEnv, StepCounter, TransformedEnv

from tests.trainers.conftest import StopAt, make_dataset
from torchrl_offline.trainers.algorithms import AlgorithmError, build_algorithm, specs_from_dataset
from torchrl_offline.trainers.checkpoint import CheckpointError, list_checkpoints
from torchrl_offline.trainers.finetune import _env_state, _set_env_state, finetune
from torchrl_offline.trainers.metrics import read_metrics
from torchrl_offline.trainers.offline import train
from torchrl_offline.trainers.run_dir import RunDirectoryError


class _Record:
    """Records the mixed buffer's offline fraction and online size after each update."""

    def __init__(self):
        self.fractions, self.online = [], []

    def register(self, trainer):
        self.trainer = trainer
        trainer.register_op("post_steps", self)

    def __call__(self):
        rb = self.trainer.replay_buffer
        self.fractions.append(rb.offline_fraction)
        self.online.append(len(rb.online_buffer))


def _algo(name, data):
    torch.manual_seed(0)
    return build_algorithm(name, *specs_from_dataset(data), hidden_sizes=(16,))


def test_td3_bc_finetunes_with_collection_and_annealing(tmp_path):
    data = make_dataset()
    algo = _algo("td3_bc", data)
    before = {k: v.clone() for k, v in algo.loss.state_dict().items() if torch.is_tensor(v)}
    record = _Record()
    result = finetune(
        algo,
        data,
        "Pendulum-v1",
        total_steps=20,
        batch_size=16,
        frames_per_batch=5,
        utd_ratio=1.0,
        offline_fraction=0.5,
        anneal_steps=10,
        out_dir=tmp_path,
        progress=False,
        hooks=[record],
    )
    assert result.step == 20
    # a collection of 5 env steps every 5 updates
    assert record.online[0] == 5 and record.online[4] == 5 and record.online[5] == 10
    assert record.online[-1] == 20
    assert record.fractions[0] == pytest.approx(0.5)
    assert record.fractions[9] == pytest.approx(0.05)
    assert record.fractions[-1] == 0.0
    after = algo.loss.state_dict()
    assert any(not torch.equal(v, after[k]) for k, v in before.items())
    assert result.checkpoint is not None and result.checkpoint.exists()


def test_discrete_q_learning_collects_full_episodes(tmp_path):
    data = make_dataset(discrete=True, obs_dim=4, n_actions=2)
    algo = _algo("cql", data)
    result = finetune(
        algo,
        data,
        "CartPole-v1",
        total_steps=60,
        batch_size=16,
        frames_per_batch=30,
        utd_ratio=0.5,  # one collection of 30 env steps every 60 updates
        out_dir=tmp_path,
        log_interval=20,
        eval_env="CartPole-v1",
        eval_interval=30,
        eval_episodes=1,
        eval_max_steps=20,
        progress=False,
    )
    assert result.algorithm.name == "discrete_cql"
    assert [e["step"] for e in result.evaluations] == [0, 30, 60]
    returns = read_metrics(result.metrics)["online/episode_return"]
    returns = returns[~np.isnan(returns)]
    assert returns.size and all(returns >= 1)
    assert json.loads((tmp_path / "run.json").read_text())["info"]["config"]["kind"] == "finetune"


def test_bad_settings_and_mismatched_env():
    data = make_dataset()
    algo = _algo("iql", data)
    with pytest.raises(AlgorithmError, match="offline_fraction"):
        finetune(algo, data, "Pendulum-v1", total_steps=2, offline_fraction=1.0, progress=False)
    with pytest.raises(AlgorithmError, match="does not match the dataset"):
        finetune(algo, data, "CartPole-v1", total_steps=2, progress=False)


def _finetune(name, data, out_dir, *, env="Pendulum-v1", total=12, hooks=(), resume=False, **kw):
    return finetune(
        _algo(name, data),
        data,
        env,
        total_steps=total,
        seed=5,
        out_dir=out_dir,
        resume=resume,
        batch_size=16,
        frames_per_batch=3,
        checkpoint_interval=4,
        progress=False,
        hooks=hooks,
        **kw,
    )


def _tensors(algo):
    return {k: v for k, v in algo.loss.state_dict().items() if torch.is_tensor(v)}


@pytest.mark.parametrize(
    ("name", "env", "kw"),
    [
        ("iql", "Pendulum-v1", {"anneal_steps": 10}),
        ("td3_bc", "Pendulum-v1", {"online_capacity": 5}),  # the ring buffer wraps
        ("cql", "CartPole-v1", {}),
        ("awac", "Pendulum-v1 with a StepCounter", {}),  # a TorchRL TransformedEnv
        ("awr", "CartPole-v1", {}),  # online steps wait for their episode's end
    ],
)
def test_interrupted_and_resumed_finetuning_equals_uninterrupted(tmp_path, name, env, kw):
    discrete = env == "CartPole-v1"
    shape = {"discrete": True, "obs_dim": 4, "n_actions": 2} if discrete else {}
    data = make_dataset(**shape)

    def make_env():
        if env.endswith("StepCounter"):
            return TransformedEnv(GymEnv("Pendulum-v1"), StepCounter())
        return env

    full = _finetune(name, data, tmp_path / "full", env=make_env(), **kw)
    part = _finetune(name, data, tmp_path / "part", env=make_env(), hooks=[StopAt(7)], **kw)
    assert (part.step, part.stop_reason) == (7, "interrupted")
    record = _Record()
    resumed = _finetune(
        name, data, tmp_path / "part", env=make_env(), resume=True, hooks=[record], **kw
    )
    assert resumed.step == 12 and resumed.stop_reason is None
    assert len(record.online) == 5  # steps 8 to 12 only: the run continued from step 7
    a, b = _tensors(full.algorithm), _tensors(resumed.algorithm)
    assert a.keys() == b.keys()
    for key in a:
        torch.testing.assert_close(a[key], b[key], rtol=0, atol=0, msg=key)


def test_online_buffer_is_saved_in_chunks_and_pruned(tmp_path):
    data = make_dataset()
    # 3 env steps every 3 updates; a checkpoint every 4 updates; room for 5 transitions
    _finetune("td3_bc", data, tmp_path, total=20, online_capacity=5)
    checkpoints = tmp_path / "checkpoints"
    assert [p.name for p in list_checkpoints(checkpoints)] == [
        "checkpoint_000000016.pt",
        "checkpoint_000000020.pt",
    ]
    store = checkpoints / "online_buffer"
    index = json.loads((store / "index.json").read_text())
    chunks = sorted(p.name for p in store.iterdir() if p.is_dir())
    # each checkpoint wrote only the transitions collected since the previous one (from
    # the 5 newest at most): steps 4, 8, 12, 16, 20 wrote transitions 1-5, 6-8, 9-11,
    # 13-17, 18-20; the first chunk, needed by no checkpoint still on disk, is deleted
    spans = [[int(x) for x in c.split("_")[1:3]] for c in chunks]
    assert spans == [[6, 9], [9, 12], [13, 18], [18, 21]]
    assert sorted(index["20"]) == chunks[2:]
    assert sorted(index["16"]) == chunks[2:3]


def test_a_damaged_online_buffer_chunk_is_refused_on_resume(tmp_path):
    data = make_dataset()
    _finetune("td3_bc", data, tmp_path, total=8, hooks=[StopAt(6)])
    store = tmp_path / "checkpoints" / "online_buffer"
    chunk = sorted(p for p in store.iterdir() if p.is_dir())[-1]
    column = chunk / "observation.memmap"
    raw = bytearray(column.read_bytes())
    raw[0] ^= 0x01
    column.write_bytes(raw)
    with pytest.raises(CheckpointError, match=r"chunk .* is damaged: .*observation\.memmap'"):
        _finetune("td3_bc", data, tmp_path, total=8, resume=True)


def test_resume_refuses_offline_checkpoints_and_other_settings(tmp_path):
    data = make_dataset()
    train("iql", data, total_steps=2, batch_size=16, out_dir=tmp_path / "offline",
          overrides={"hidden_sizes": (16,)}, progress=False, logger=None)  # fmt: skip
    with pytest.raises(RunDirectoryError, match="holds an iql train run .*finetune run resumes"):
        _finetune("iql", data, tmp_path / "offline", total=4, resume=True)
    (tmp_path / "offline" / "run.json").unlink()  # an older run: the checkpoint itself tells
    with pytest.raises(CheckpointError, match="from offline training, not fine-tuning"):
        _finetune("iql", data, tmp_path / "offline", total=4, resume=True)
    _finetune("iql", data, tmp_path / "online", total=4)
    with pytest.raises(CheckpointError, match="finetune offline_fraction=0.5 vs 0.3"):
        _finetune("iql", data, tmp_path / "online", total=8, resume=True, offline_fraction=0.3)
    with pytest.raises(CheckpointError, match="fine-tuning run of iql that this td3_bc"):
        _finetune("td3_bc", data, tmp_path / "online", total=8, resume=True)


def test_mujoco_env_state_round_trip(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # MuJoCo writes its warnings to ./MUJOCO_LOG.TXT
    env = GymEnv("Hopper-v5")
    env.set_seed(0)
    td = env.reset()
    actions = [env.action_spec.rand() for _ in range(8)]
    for action in actions[:3]:
        td = env.step(td.set("action", action))["next"]
    state = _env_state(env)
    assert state is not None
    expected = []
    for action in actions[3:]:
        td = env.step(td.set("action", action))["next"]
        expected.append(td["observation"].clone())
    other = GymEnv("Hopper-v5")
    other.set_seed(123)
    td = other.reset()
    _set_env_state(other, state)
    for action, obs in zip(actions[3:], expected):
        td = other.step(td.set("action", action))["next"]
        assert torch.equal(td["observation"], obs)
    env.close()
    other.close()


def test_env_without_readable_state_resumes_with_a_new_episode(tmp_path, monkeypatch):
    import sys

    module = sys.modules["torchrl_offline.trainers.finetune"]
    monkeypatch.setattr(module, "_env_state", lambda env: None)  # e.g. a Box2D env
    data = make_dataset()
    _finetune("td3_bc", data, tmp_path, hooks=[StopAt(7)])
    record = _Record()
    with pytest.warns(UserWarning, match="starts a new online episode"):
        resumed = _finetune("td3_bc", data, tmp_path, resume=True, hooks=[record])
    assert resumed.step == 12 and len(record.online) == 5
    assert record.online[0] == 9  # the online buffer (3 collections of 3) was restored


def test_finetuning_owns_its_directory_and_resumes_only_the_same_run(tmp_path):
    from torchrl_offline.trainers.run_dir import RunDirectoryError

    data = make_dataset()
    with pytest.raises(RunDirectoryError, match="nothing to resume"):
        _finetune("iql", data, tmp_path / "online", total=4, resume=True)
    _finetune("iql", data, tmp_path / "online", total=4)
    with pytest.raises(RunDirectoryError, match="already holds an iql finetune run .*step 4"):
        _finetune("iql", data, tmp_path / "online", total=8)
    with pytest.raises(CheckpointError, match="seed 5 vs 6"):
        finetune(_algo("iql", data), data, "Pendulum-v1", total_steps=8, seed=6,
                 out_dir=tmp_path / "online", resume=True, batch_size=16, frames_per_batch=3,
                 checkpoint_interval=4, progress=False)  # fmt: skip
    assert _finetune("iql", data, tmp_path / "online", total=2, overwrite=True).step == 2


def test_online_episodes_enter_with_their_returns_to_go_when_they_end(tmp_path):
    """AWR needs Monte Carlo returns: online steps enter the buffer when their episode
    ends, with the returns of the whole episode; the unfinished one waits."""
    data = make_dataset(discrete=True, obs_dim=4, n_actions=2)
    record = _Record()
    result = finetune(
        _algo("awr", data),
        data,
        "CartPole-v1",
        total_steps=40,
        batch_size=16,
        frames_per_batch=8,
        utd_ratio=1.0,
        seed=3,
        progress=False,
        hooks=[record],
    )
    assert result.step == 40
    online = record.trainer.replay_buffer.online_buffer
    assert 0 < len(online) == record.online[-1] < 40  # the unfinished episode waits
    stored = online.storage[: len(online)]
    done = stored["next", "done"].squeeze(-1)
    assert bool(done[-1])  # whole episodes only
    reward = stored["next", "reward"].squeeze(-1)
    expected, running = [], 0.0
    for r, d in zip(reversed(reward.tolist()), reversed(done.tolist())):
        running = r + (0.0 if d else 0.99 * running)
        expected.append(running)
    torch.testing.assert_close(
        stored["mc_return"].squeeze(-1), torch.tensor(expected[::-1]), rtol=1e-5, atol=1e-5
    )
