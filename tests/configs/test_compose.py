"""Compose TorchRL's config groups with ours, instantiate, and train a few steps."""

from __future__ import annotations

import pytest
import torch
from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from hydra.errors import ConfigCompositionException, InstantiationException
from hydra.utils import instantiate
from omegaconf.errors import ValidationError
from tensordict.nn import ProbabilisticTensorDictSequential
from torchrl.objectives import SoftUpdate

from tests.configs.conftest import TINY_NETWORKS, write_log
from torchrl_offline.data.storage import OfflineReplayBuffer
from torchrl_offline.objectives.cql import DiscreteCQLLoss
from torchrl_offline.objectives.iql import IQLLoss
from torchrl_offline.trainers.offline import OfflineTrainer


def _logged(tmp_path, **kwargs) -> list[str]:
    path = write_log(tmp_path / "log.parquet", **kwargs)
    return [
        "dataset=logged",
        f"dataset.source={path}",
        f"dataset.path={tmp_path / 'rb'}",
        "dataset.drop_incomplete=true",
        "dataset.batch_size=16",
    ]


def test_compose_torchrl_networks_with_our_loss_and_train(tmp_path, compose_example):
    cfg = compose_example(
        [*_logged(tmp_path), *TINY_NETWORKS, "trainer.total_steps=4", "loss.expectile=0.9"]
    )
    torch.manual_seed(0)
    trainer = instantiate(cfg.trainer)
    assert isinstance(trainer, OfflineTrainer)
    loss = trainer.loss_module
    assert type(loss) is IQLLoss
    assert loss.expectile == 0.9  # the command-line override reached the loss
    assert loss.temperature == 3.0  # our default, not TorchRL's 1.0
    assert isinstance(loss.actor_network, ProbabilisticTensorDictSequential)  # TorchRL's model
    assert isinstance(trainer.replay_buffer, OfflineReplayBuffer)
    assert len(trainer.replay_buffer) == 64  # 4 episodes of 16, all terminal: all kept
    assert isinstance(trainer.target_net_updater, SoftUpdate)
    assert trainer.optimizer.param_groups[0]["lr"] == pytest.approx(3e-4)  # TorchRL's adam
    before = [p.detach().clone() for p in trainer.optimizer.param_groups[0]["params"]]
    trainer.train()
    assert trainer.step == 4
    after = trainer.optimizer.param_groups[0]["params"]
    assert any(not torch.equal(b, a) for b, a in zip(before, after, strict=True))


def test_trainer_config_evaluates_checkpoints_and_resumes(tmp_path, compose_example):
    common = [
        *_logged(tmp_path),
        *TINY_NETWORKS,
        "trainer.eval_env=Pendulum-v1",
        "trainer.eval_interval=2",
        "trainer.eval_episodes=1",
        "trainer.eval_max_steps=5",
        f"trainer.checkpoint_dir={tmp_path / 'ckpt'}",
        "trainer.checkpoint_interval=2",
        "trainer.hooks=null",
    ]
    torch.manual_seed(0)
    trainer = instantiate(compose_example([*common, "trainer.total_steps=4"]).trainer)
    trainer.train()
    assert [e["step"] for e in trainer._modules["evaluation"].history] == [0, 2, 4]
    assert sorted(p.name for p in (tmp_path / "ckpt").glob("*.pt"))
    params = [p.detach().clone() for p in trainer.loss_module.parameters()]

    torch.manual_seed(0)
    cfg = compose_example([*common, "trainer.total_steps=6", "trainer.resume=true"])
    resumed = instantiate(cfg.trainer)
    assert resumed.step == 4
    loaded = list(resumed.loss_module.parameters())
    assert all(torch.equal(a, b) for a, b in zip(params, loaded, strict=True))
    resumed.train()
    assert resumed.step == 6
    elsewhere = [c for c in common if not c.startswith("trainer.checkpoint_dir=")]
    with pytest.raises(InstantiationException, match="nothing to resume, no checkpoint"):
        instantiate(compose_example([*elsewhere, f"trainer.checkpoint_dir={tmp_path / 'new'}",
                                     "trainer.total_steps=6", "trainer.resume=true"]).trainer)  # fmt: skip


DISCRETE_CONFIG = """
defaults:
  - network@networks.qvalue: mlp
  - model@models.qvalue: qvalue
  - target_net_updater: hard
  - loss: offline_discrete_cql
  - dataset: collect
  - sampler@dataset.sampler: without_replacement  # after the dataset it goes into
  - trainer: offline
  - _self_

dataset:
  env: CartPole-v1
  num_steps: 120
  dataset_id: cartpole/random-v0
  batch_size: 8
networks:
  qvalue: {in_features: 4, out_features: 2, num_cells: [8]}
models:
  qvalue: {network: "${networks.qvalue}", in_keys: [observation], action_space: categorical}
loss:
  value_network: ${models.qvalue}
  action_space: categorical
  alpha: 0.5
target_net_updater:
  value_network_update_interval: 2
trainer:
  loss_module: ${loss}
  replay_buffer: ${dataset}
  target_net_updater: ${target_net_updater}
  total_steps: 3
"""


def test_compose_collected_dataset_and_torchrl_sampler_and_updater(tmp_path, monkeypatch):
    (tmp_path / "conf").mkdir()
    (tmp_path / "conf" / "discrete.yaml").write_text(DISCRETE_CONFIG)
    with initialize_config_dir(config_dir=str(tmp_path / "conf"), version_base="1.3"):
        cfg = compose("discrete", overrides=[f"dataset.root={tmp_path / 'minari'}"])
    torch.manual_seed(0)
    trainer = instantiate(cfg.trainer)
    loss = trainer.loss_module
    assert type(loss) is DiscreteCQLLoss
    assert type(trainer.replay_buffer._sampler).__name__ == "SamplerWithoutReplacement"
    assert len(trainer.replay_buffer) == 120
    updater = trainer.target_net_updater
    assert type(updater).__name__ == "HardUpdate"
    assert trainer.optimizer.param_groups[0]["lr"] == pytest.approx(3e-4)  # our default Adam
    trainer.train()
    assert trainer.step == 3
    # a second run reuses the collected dataset instead of collecting again

    def no_collection(*args, **kwargs):
        raise AssertionError("collected again")

    monkeypatch.setattr("torchrl_offline.data.collect.collect_dataset", no_collection)
    assert len(instantiate(cfg.dataset)) == 120


def test_replay_buffer_group_holds_the_same_datasets(tmp_path, compose_example):
    path = write_log(tmp_path / "log.parquet")
    cfg = compose_example(
        [
            "+replay_buffer=offline_logged",
            f"replay_buffer.source={path}",
            "replay_buffer.drop_incomplete=true",
            "replay_buffer.batch_size=4",
            f"replay_buffer.path={tmp_path / 'rb'}",
        ]
    )
    rb = instantiate(cfg.replay_buffer)
    assert isinstance(rb, OfflineReplayBuffer)
    assert rb.sample().batch_size == torch.Size([4])


@pytest.mark.parametrize(
    "override, match",
    [
        ("loss.expectil=0.9", "expectil"),  # unknown key
        ("loss.expectile=high", "expectile"),  # wrong type
        ("loss=offline_iqll", "offline_iqll"),  # unknown loss name: Hydra lists the options
    ],
)
def test_bad_overrides_are_clear_composition_errors(compose_example, override, match):
    with pytest.raises((ConfigCompositionException, ValidationError), match=match):
        compose_example([override])


def test_bad_values_are_clear_instantiation_errors(tmp_path, compose_example):
    cfg = compose_example([*_logged(tmp_path), *TINY_NETWORKS, "loss.expectile=1.5"])
    with pytest.raises(InstantiationException, match=r"expectile must be in \[0, 1\], got 1.5"):
        instantiate(cfg.trainer)
    cfg = compose_example([*_logged(tmp_path), "dataset.dtype=int32"])
    with pytest.raises(InstantiationException, match="dataset.dtype must name a floating"):
        instantiate(cfg.dataset)
    cfg = compose_example([*_logged(tmp_path), "loss.actor_network=null"])
    with pytest.raises(InstantiationException, match="loss.actor_network is not set"):
        instantiate(cfg.loss)
    cfg = compose_example([*_logged(tmp_path), "trainer.optimizer=3"])
    with pytest.raises(InstantiationException, match="trainer.optimizer must build"):
        instantiate(cfg.trainer)


def test_example_script_runs(tmp_path, monkeypatch, capsys):
    import runpy
    import sys

    from tests.configs.conftest import ROOT

    monkeypatch.setattr(
        sys,
        "argv",
        [
            "hydra_train.py",
            *_logged(tmp_path),
            *TINY_NETWORKS,
            "trainer.total_steps=3",
            "eval_episodes=1",
            f"hydra.run.dir={tmp_path / 'run'}",
        ],
    )
    try:
        runpy.run_path(str(ROOT / "examples" / "hydra_train.py"), run_name="__main__")
    finally:
        GlobalHydra.instance().clear()
    printed = capsys.readouterr().out
    assert "trained IQLLoss for 3 gradient steps" in printed
    assert "policy return: " in printed


def test_an_algorithm_with_derived_entries_trains_from_the_config(tmp_path, compose_example):
    """AWR reads Monte Carlo returns: the trainer config derives them, as train() does."""
    from torchrl.data import Bounded, Unbounded

    from torchrl_offline.trainers.algorithms import build_algorithm

    cfg = compose_example([*_logged(tmp_path), *TINY_NETWORKS, "trainer.total_steps=3"])
    torch.manual_seed(0)
    rb = instantiate(cfg.dataset)
    algo = build_algorithm(
        "awr", Unbounded(shape=(3,)), Bounded(-1.0, 1.0, (1,)), hidden_sizes=(8,)
    )
    trainer = instantiate(cfg.trainer, loss_module=algo.loss, replay_buffer=rb, optimizer=None)
    assert "mc_return" in trainer.replay_buffer.sample(4).keys()
    trainer.train()
    assert trainer.step == 3
