"""Offline-to-online fine-tuning with a TorchRL collector and a mixed replay buffer."""

from __future__ import annotations

import pytest
import torch

from tests.trainers.conftest import make_dataset
from torchrl_offline.trainers.algorithms import AlgorithmError, build_algorithm, specs_from_dataset
from torchrl_offline.trainers.finetune import finetune


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
    log = tmp_path / "logs" / "discrete_cql_finetune" / "scalars" / "online" / "episode_return.csv"
    returns = [float(r.split(",")[1]) for r in log.read_text().splitlines()]
    assert returns and all(r >= 1 for r in returns)


def test_bad_settings_and_mismatched_env():
    data = make_dataset()
    algo = _algo("iql", data)
    with pytest.raises(AlgorithmError, match="offline_fraction"):
        finetune(algo, data, "Pendulum-v1", total_steps=2, offline_fraction=1.0, progress=False)
    with pytest.raises(AlgorithmError, match="does not match the dataset"):
        finetune(algo, data, "CartPole-v1", total_steps=2, progress=False)
