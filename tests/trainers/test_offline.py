"""OfflineTrainer and train(): resume equality, interruption, TorchRL hooks, bad input."""

from __future__ import annotations

import json
import warnings

import numpy as np
import pytest
import torch
from PIL import Image
from torchrl.trainers import EarlyStopping, LogScalar

from tests.trainers.conftest import StopAt, make_dataset
from torchrl_offline.objectives import OfflineLossError
from torchrl_offline.trainers.algorithms import AlgorithmError, build_algorithm, specs_from_dataset
from torchrl_offline.trainers.checkpoint import (
    CheckpointError,
    list_checkpoints,
    load_checkpoint,
    save_checkpoint,
)
from torchrl_offline.trainers.metrics import read_metrics
from torchrl_offline.trainers.offline import OfflineSource, OfflineTrainer, load_algorithm, train
from torchrl_offline.trainers.run_dir import RunDirectoryError

TINY = {"hidden_sizes": (16,)}


def _run(name, out_dir, *, total=10, hooks=(), resume=False, discrete=False, overrides=(), **kw):
    kw.setdefault("logger", None)  # the tests of the metrics file and figure ask for them
    return train(
        name,
        make_dataset(discrete=discrete),
        total_steps=total,
        seed=3,
        out_dir=out_dir,
        resume=resume,
        batch_size=16,
        overrides={**TINY, **dict(overrides)},
        checkpoint_interval=4,
        progress=False,
        hooks=hooks,
        **kw,
    )


def _tensors(algo):
    return {k: v for k, v in algo.loss.state_dict().items() if torch.is_tensor(v)}


@pytest.mark.parametrize("name", ["iql", "td3_bc", "cql", "discrete_cql", "edac", "discrete_bcq"])
def test_interrupted_and_resumed_equals_uninterrupted(tmp_path, name):
    discrete = name.startswith("discrete")
    full = _run(name, tmp_path / "full", discrete=discrete)
    part = _run(name, tmp_path / "part", hooks=[StopAt(7)], discrete=discrete)
    assert (part.step, part.stop_reason) == (7, "interrupted")
    assert part.checkpoint.name == "checkpoint_000000007.pt"
    resumed = _run(name, tmp_path / "part", resume=True, discrete=discrete)
    assert resumed.step == 10 and resumed.stop_reason is None
    a, b = _tensors(full.algorithm), _tensors(resumed.algorithm)
    assert a.keys() == b.keys()
    for key in a:
        torch.testing.assert_close(a[key], b[key], rtol=0, atol=0, msg=key)
    # the optimizers' moments match too
    sa = full.algorithm.optimizer.state_dict()["state"]
    sb = resumed.algorithm.optimizer.state_dict()["state"]
    for idx in sa:
        torch.testing.assert_close(sa[idx]["exp_avg"], sb[idx]["exp_avg"], rtol=0, atol=0)


def test_resume_with_evaluation_and_schedule(tmp_path):
    kw = {"eval_env": "Pendulum-v1", "eval_interval": 5, "eval_episodes": 1, "eval_max_steps": 10}
    kw["overrides"] = {"actor_lr_decay_steps": 0}  # IQL's cosine over this run's 10 updates
    full = _run("iql", tmp_path / "full", **kw)
    _run("iql", tmp_path / "part", hooks=[StopAt(6)], **kw)
    resumed = _run("iql", tmp_path / "part", resume=True, **kw)
    for key, value in _tensors(full.algorithm).items():
        assert torch.equal(value, _tensors(resumed.algorithm)[key]), key
    assert [e["step"] for e in full.evaluations] == [0, 5, 10]
    assert [e["step"] for e in resumed.evaluations] == [0, 5, 10]
    assert full.evaluations == resumed.evaluations
    assert full.algorithm.optimizer.param_groups[0]["lr"] == pytest.approx(0.0, abs=1e-12)


def test_resume_without_checkpoint_is_an_error(tmp_path):
    with pytest.raises(RunDirectoryError, match="nothing to resume in .*no checkpoint"):
        _run("bc", tmp_path, total=3, resume=True)
    assert list_checkpoints(tmp_path / "checkpoints") == []


def test_resume_refuses_another_algorithm(tmp_path):
    _run("iql", tmp_path, total=4)
    with pytest.raises(CheckpointError, match="run of iql that this td3_bc run cannot continue"):
        _run("td3_bc", tmp_path, total=8, resume=True)


def test_resume_accepts_a_checkpoint_written_before_a_setting_was_added(tmp_path):
    """A checkpoint whose hyperparameters lack a setting added since (``check_inputs``)
    resumes when the setting is at its default, and is refused when it is not."""
    _run("td3_bc", tmp_path, total=4)
    path = list_checkpoints(tmp_path / "checkpoints")[-1]
    state = load_checkpoint(path)
    meta = json.loads(state["metadata"]["json"])
    del meta["hyperparameters"]["check_inputs"]
    state["metadata"]["json"] = json.dumps(meta)
    save_checkpoint(path, state)
    with pytest.raises(CheckpointError, match="check_inputs=True vs False"):
        train(
            "td3_bc",
            make_dataset(),
            total_steps=8,
            out_dir=tmp_path,
            resume=True,
            batch_size=16,
            overrides={**TINY, "check_inputs": False},
            progress=False,
        )
    assert _run("td3_bc", tmp_path, total=8, resume=True).step == 8


def test_resume_from_a_corrupt_checkpoint_is_an_error_and_keeps_the_previous(tmp_path):
    _run("td3_bc", tmp_path, total=8)
    files = list_checkpoints(tmp_path / "checkpoints")
    assert [p.name for p in files] == ["checkpoint_000000004.pt", "checkpoint_000000008.pt"]
    newest = files[-1]
    newest.write_bytes(newest.read_bytes()[:100])
    with pytest.raises(CheckpointError, match="checkpoint_000000008.pt.*corrupt or truncated"):
        _run("td3_bc", tmp_path, total=12, resume=True)
    algo, step = load_algorithm(files[0])
    assert step == 4 and algo.name == "td3_bc"


def test_old_checkpoints_are_pruned(tmp_path):
    result = _run("bc", tmp_path, total=13)
    names = [p.name for p in list_checkpoints(tmp_path / "checkpoints")]
    assert names == ["checkpoint_000000012.pt", "checkpoint_000000013.pt"]
    assert result.checkpoint.name == "checkpoint_000000013.pt"


def test_load_algorithm_restores_the_policy(tmp_path):
    result = _run("discrete_iql", tmp_path, total=5, discrete=True)
    algo, step = load_algorithm(tmp_path)
    assert step == 5 and algo.name == "discrete_iql"
    obs = make_dataset(discrete=True).storage[:8].select("observation")
    a = result.algorithm.policy(obs.clone())["logits"]
    b = algo.policy(obs.clone())["logits"]
    assert torch.equal(a, b)
    (tmp_path / "checkpoints" / "empty").mkdir()
    with pytest.raises(CheckpointError, match="No checkpoint"):
        load_algorithm(tmp_path / "checkpoints" / "empty")


def test_the_metrics_file_has_a_header_and_one_row_per_logged_step(tmp_path):
    eval_kw = {"eval_env": "Pendulum-v1", "eval_interval": 4, "eval_episodes": 2}
    result = _run(
        "iql", tmp_path, total=6, log_interval=2, logger="csv", eval_max_steps=5, **eval_kw
    )
    assert result.metrics == tmp_path / "metrics.csv" and result.log_dir == tmp_path
    assert not (tmp_path / "logs").exists()  # the metrics file replaces TorchRL's CSV files
    header, *rows = result.metrics.read_text().splitlines()
    columns = header.split(",")
    assert columns[:5] == [
        "step",
        "eval/return_mean",
        "eval/return_std",
        "eval/normalized_score",  # the dataset has reference returns
        "eval/episode_length",
    ]
    for name in ("loss_actor", "loss_qvalue", "loss_value", "lr_actor", "lr_value", "steps_per_s"):
        assert f"train/{name}" in columns
    assert [row.split(",")[0] for row in rows] == ["0", "2", "4", "6"]
    table = read_metrics(tmp_path)
    evaluated = table["eval/return_mean"][~np.isnan(table["eval/return_mean"])]
    assert evaluated.tolist() == [e["return_mean"] for e in result.evaluations]  # steps 0, 4, 6
    assert np.isnan(table["eval/return_mean"][1]) and np.isnan(table["train/loss_actor"][0])
    assert np.all(table["train/lr_actor"][1:] == pytest.approx(3e-4, rel=1e-3))
    figure = Image.open(result.figure)
    assert result.figure == tmp_path / "metrics.png" and figure.format == "PNG"
    assert figure.size[0] == 1000 and 500 < figure.size[1] < 1000


def test_a_resumed_run_continues_the_metrics_file_without_duplicate_rows(tmp_path):
    """The stopped run logged steps 5 and 6 after the checkpoint the resumed run starts
    from (step 4): those rows are dropped and logged again, identically."""
    kw = {"eval_env": "Pendulum-v1", "eval_interval": 3, "eval_episodes": 1, "eval_max_steps": 5}
    kw.update(log_interval=1, logger="csv")
    full = _run("iql", tmp_path / "full", **kw)
    _run("iql", tmp_path / "part", hooks=[StopAt(6)], **kw)
    (tmp_path / "part" / "checkpoints" / "checkpoint_000000006.pt").unlink()
    resumed = _run("iql", tmp_path / "part", resume=True, **kw)
    assert resumed.step == 10
    a, b = read_metrics(full.metrics), read_metrics(resumed.metrics)
    assert b["step"].tolist() == list(range(11)) and a.keys() == b.keys()
    for key in a.keys() - {"train/steps_per_s"}:  # speed is wall clock
        np.testing.assert_array_equal(a[key], b[key], err_msg=key)


def _td3_bc_trainer(data, total_steps, *, targets=False, **kwargs):
    torch.manual_seed(0)
    algo = build_algorithm("td3_bc", *specs_from_dataset(data), **TINY)
    trainer = OfflineTrainer(
        replay_buffer=data,
        loss_module=algo.loss,
        optimizer=algo.optimizer,
        total_steps=total_steps,
        loss_components=algo.loss_keys,
        target_net_updater=algo.target_updater if targets else None,
        **kwargs,
    )
    return algo, trainer


def test_torchrl_hooks_work_in_the_offline_trainer():
    algo, trainer = _td3_bc_trainer(make_dataset(), 50, targets=True)
    LogScalar(("next", "reward"), "batch_reward").register(trainer)
    EarlyStopping(monitor="batch_reward", mode="max", patience=3, wait_for=0).register(trainer)
    target_before = algo.loss.target_qvalue_network_params.clone()
    trainer.train()
    assert 3 < trainer.step < 50
    assert trainer.stop_reason is not None and "did not improve" in trainer.stop_reason
    assert len(trainer._log_dict["batch_reward"]) == trainer.step
    moved = (algo.loss.target_qvalue_network_params - target_before).abs()
    assert any(v.max() > 0 for v in moved.values(True, True))


def test_policy_update_delay_updates_the_actor_on_every_second_step_only():
    """TD3+BC's delayed policy update is the trainer's: the critic alone on odd steps
    (the actor gets no gradient and stays as it is), the whole loss on even steps."""
    algo, trainer = _td3_bc_trainer(make_dataset(), 1, policy_update_delay=2)
    assert algo.policy_update_delay == 2
    losses = []
    trainer.register_op("post_optim_complete_log", lambda steps, td: losses.append(td))
    actor, critic = algo.loss.actor_network_params, algo.loss.qvalue_network_params
    for step in (1, 2, 3, 4):
        actor_before, critic_before = actor.clone(), critic.clone()
        trainer.total_frames = step
        trainer.train()
        actor_moved = any((actor - actor_before).abs().max().values(True, True))
        critic_moved = any((critic - critic_before).abs().max().values(True, True))
        assert critic_moved
        assert actor_moved == (step % 2 == 0), step
        assert ("loss_actor" in losses[-1].keys()) == (step % 2 == 0)


def test_the_targets_can_move_with_the_delayed_actor_only():
    """TD3's Algorithm 1 (and the TD3+BC authors' code): with ``target_update_delay``
    equal to the policy delay the targets move on the full steps, with the actor."""
    algo, trainer = _td3_bc_trainer(
        make_dataset(), 1, policy_update_delay=2, target_update_delay=2, targets=True
    )
    targets = (algo.loss.target_actor_network_params, algo.loss.target_qvalue_network_params)
    for step in (1, 2, 3, 4):
        before = [t.clone() for t in targets]
        trainer.total_frames = step
        trainer.train()
        moved = [any((t - b).abs().max().values(True, True)) for t, b in zip(targets, before)]
        assert moved == [step % 2 == 0] * 2, step


def test_by_default_the_targets_move_on_every_step():
    algo, trainer = _td3_bc_trainer(make_dataset(), 1, policy_update_delay=2, targets=True)
    target = algo.loss.target_qvalue_network_params
    for step in (1, 2):
        before = target.clone()
        trainer.total_frames = step
        trainer.train()
        assert any((target - before).abs().max().values(True, True)), step


def test_a_trainer_built_by_hand_delays_the_td3_bc_actor():
    """Without policy_update_delay, the trainer takes the loss's algorithm's (TD3+BC: 2)."""
    _, trainer = _td3_bc_trainer(make_dataset(), 1)
    assert trainer.policy_update_delay == 2


def test_critic_only_steps_check_the_batch_too():
    data = make_dataset()
    data.storage._storage["observation"][:] = float("nan")
    # the first update is a critic-only one
    _, trainer = _td3_bc_trainer(data, 1, policy_update_delay=2)
    with pytest.raises(OfflineLossError, match="'observation' holds NaN/inf"):
        trainer.train()


def test_policy_update_delay_needs_a_critic_only_loss():
    data = make_dataset()
    algo = build_algorithm("bc", *specs_from_dataset(data), **TINY)
    with pytest.raises(ValueError, match="qvalue_loss"):
        OfflineTrainer(
            replay_buffer=data,
            loss_module=algo.loss,
            optimizer=algo.optimizer,
            total_steps=2,
            policy_update_delay=2,
        )


def test_eval_env_must_match_the_dataset(tmp_path):
    with pytest.raises(AlgorithmError, match="does not match the dataset.*observation shape"):
        _run("iql", None, total=2, eval_env="CartPole-v1")


def test_mujoco_eval_env_gets_float32_observations():
    """MuJoCo envs emit float64 observations; the datasets and networks are float32."""
    data = make_dataset(obs_dim=4, action_bound=3.0)  # InvertedPendulum-v5's spaces
    kw = {"total_steps": 2, "batch_size": 16, "overrides": TINY, "progress": False}
    result = train("td3_bc", data, eval_env="InvertedPendulum-v5", eval_episodes=1, **kw)
    assert [e["step"] for e in result.evaluations] == [0, 2]
    from torchrl.envs import GymEnv

    raw = GymEnv("InvertedPendulum-v5")
    assert raw.observation_spec["observation"].dtype == torch.float64
    with pytest.raises(AlgorithmError, match="observation dtype torch.float64.*DoubleToFloat"):
        train("td3_bc", data, eval_env=raw, **kw)
    raw.close()


def test_source_needs_a_batch_size_and_data():
    data = make_dataset()
    data._batch_size = None
    with pytest.raises(ValueError, match="batch_size"):
        OfflineSource(data)
    assert next(iter(OfflineSource(data, batch_size=4))).batch_size == (4,)


def test_a_batch_size_replacing_the_buffers_own_is_intended_and_not_warned_about():
    data = make_dataset()  # its buffer samples 16 by default
    source = iter(OfflineSource(data, batch_size=4))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert next(source).batch_size == (4,) and next(source).batch_size == (4,)
    assert data.sample().batch_size == (data.batch_size,)  # the buffer itself unchanged
    # other warnings of a run keep their "once" (the sampling resets no registry)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("default")
        for _ in range(3):
            next(source)
            warnings.warn("a step's warning", UserWarning, stacklevel=1)  # same place each step
    assert [str(w.message) for w in caught] == ["a step's warning"]


def test_resume_needs_out_dir():
    with pytest.raises(ValueError, match="out_dir"):
        _run("bc", None, total=2, resume=True)


class _SendSigint:
    def __init__(self, step):
        self.step = step

    def register(self, trainer):
        self.trainer = trainer
        trainer.register_op("post_steps", self)

    def __call__(self):
        if self.trainer.step == self.step:
            import os
            import signal

            os.kill(os.getpid(), signal.SIGINT)


def test_ctrl_c_leaves_a_resumable_checkpoint(tmp_path):
    result = _run("iql", tmp_path, total=10, hooks=[_SendSigint(5)])
    assert (result.step, result.stop_reason) == (5, "interrupted")
    assert result.checkpoint.name == "checkpoint_000000005.pt"
    assert _run("iql", tmp_path, total=10, resume=True).step == 10


def test_discrete_algorithm_evaluates_in_a_discrete_env(tmp_path):
    data = make_dataset(discrete=True, obs_dim=4, n_actions=2)
    result = train(
        "cql",
        data,
        total_steps=4,
        batch_size=16,
        overrides=TINY,
        eval_env="CartPole-v1",
        eval_interval=2,
        eval_episodes=2,
        eval_max_steps=30,
        progress=False,
        logger=None,
    )
    assert result.algorithm.name == "discrete_cql"
    assert [e["step"] for e in result.evaluations] == [0, 2, 4]
    assert all(1 <= e["episode_length"] <= 30 for e in result.evaluations)
    with pytest.raises(AlgorithmError, match="2 actions vs dataset 3"):
        train(
            "cql",
            make_dataset(discrete=True, obs_dim=4),
            total_steps=2,
            eval_env="CartPole-v1",
            overrides=TINY,
            progress=False,
            logger=None,
        )


class _MeanReward:
    """A stand-in OPE estimator: the mean logged reward."""

    def estimate(self, data):
        from torchrl_offline.ope.result import OPEResult

        value = float(data.storage[:]["next", "reward"].mean())
        return OPEResult(value=value, ci_low=value - 1, ci_high=value + 1, diagnostics={})


def test_ope_hook_runs_inside_train_and_resumes(tmp_path):
    from torchrl_offline.ope.hook import OPEHook

    data = make_dataset()
    hook = OPEHook({"mean": _MeanReward()}, data, interval=3)
    _run("iql", tmp_path, total=7, hooks=[hook], logger="csv")
    assert [h["step"] for h in hook.history] == [3, 6]
    values = read_metrics(tmp_path)["ope/mean/value"]
    assert values.tolist() == [h["value"] for h in hook.history]
    again = OPEHook({"mean": _MeanReward()}, data, interval=3)
    _run("iql", tmp_path, total=9, hooks=[again], resume=True, logger="csv")
    assert [h["step"] for h in again.history] == [3, 6, 9]
    assert read_metrics(tmp_path)["step"].tolist() == [3, 6, 9]


def test_resume_restores_a_without_replacement_sampler(tmp_path):
    from torchrl.data.replay_buffers.samplers import SamplerWithoutReplacement

    def data():
        d = make_dataset(n=40)  # 2.5 epochs of 16-batches over 10 steps
        return type(d)(
            storage=d.storage,
            sampler=SamplerWithoutReplacement(),
            batch_size=16,
            metadata=d.metadata,
        )

    kw = dict(
        total_steps=10, seed=2, batch_size=16, overrides=TINY, checkpoint_interval=3, progress=False
    )
    full = train("td3_bc", data(), out_dir=tmp_path / "full", **kw)
    train("td3_bc", data(), out_dir=tmp_path / "part", hooks=[StopAt(4)], **kw)
    resumed = train("td3_bc", data(), out_dir=tmp_path / "part", resume=True, **kw)
    for key, value in _tensors(full.algorithm).items():
        assert torch.equal(value, _tensors(resumed.algorithm)[key]), key


def test_second_ctrl_c_aborts_at_once():
    data = make_dataset()
    algo = build_algorithm("bc", *specs_from_dataset(data), **TINY)
    trainer = OfflineTrainer(
        replay_buffer=data,
        loss_module=algo.loss,
        optimizer=algo.optimizer,
        total_steps=5,
        loss_components=algo.loss_keys,
    )
    trainer._on_sigint(2, None)
    assert trainer.stop_reason == "interrupted"
    with pytest.raises(KeyboardInterrupt):
        trainer._on_sigint(2, None)
