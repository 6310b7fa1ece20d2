"""The training-loop need "model rollouts" (torchrl_offline.trainers.model_rollouts):
mixed batches, the rollout schedule, the FIFO model buffer, checkpoints and resume, with
the analytic stand-in model of tests/trainers/model_stand_in.py."""

from __future__ import annotations

import pytest
import torch

from tests.trainers.conftest import StopAt, make_dataset
from tests.trainers.model_stand_in import CountingRecipe
from torchrl_offline.trainers import model_rollouts
from torchrl_offline.trainers.algorithms import AlgorithmError, build_algorithm
from torchrl_offline.trainers.checkpoint import load_checkpoint
from torchrl_offline.trainers.metrics import read_metrics
from torchrl_offline.trainers.model_rollouts import (
    MODEL_DATA_KEY,
    ModelRolloutSource,
    needs_model_rollouts,
)
from torchrl_offline.trainers.offline import train

FAST = {"rollout_interval": 4, "rollout_batch_size": 6, "rollout_length": 3,
        "rollout_retain_epochs": 2, "hidden_sizes": (16,)}  # fmt: skip


@pytest.fixture
def stand_in(monkeypatch):
    """Every model-based run in the test uses the stand-in model (its fits counted)."""
    counting = CountingRecipe(3, 1, reward_penalty=1.0)
    monkeypatch.setattr(model_rollouts, "default_recipe", lambda *a, **k: counting.recipe())
    return counting


def _source(recipe, **settings):
    algo = build_algorithm("mopo", dataset=make_dataset(), preset="small", **FAST)
    hp = {**algo.hyperparameters, **settings}
    return ModelRolloutSource(
        make_dataset(), algo.policy, recipe, batch_size=20, settings=hp, seed=0
    )


def test_batches_mix_dataset_and_model_rows(stand_in):
    source = _source(stand_in.recipe(), real_ratio=0.25)
    batches = iter(source)
    batch = next(batches)
    assert batch.batch_size == torch.Size([20])
    marks = batch[MODEL_DATA_KEY]
    assert marks.tolist() == [False] * 5 + [True] * 15  # round(0.25 * 20) dataset rows
    assert stand_in.fits == 1 and source.fit_info["holdout_mse"] == 0.25
    # the model rows are rollout transitions: s' = s + 0.5 a, penalised reward
    model_rows = batch[marks]
    step = model_rows["next", "observation"] - model_rows["observation"]
    torch.testing.assert_close(step, 0.5 * model_rows["action"].expand(-1, 3))
    assert set(batch.keys(True, True)) == {
        "observation", "action", ("next", "observation"), ("next", "reward"),
        ("next", "done"), ("next", "terminated"), MODEL_DATA_KEY,
    }  # fmt: skip


def test_rollouts_every_interval_into_a_fifo_buffer(stand_in):
    source = _source(stand_in.recipe())
    batches = iter(source)
    capacity = 6 * 3 * 2  # rollout_batch_size * rollout_length * retain_epochs
    sizes = []
    for _ in range(13):
        next(batches)
        sizes.append(len(source.model_buffer))
    assert [r["step"] for r in source.rollouts] == [0, 4, 8, 12]
    assert sizes == [18] * 4 + [36] * 9  # full after two rollouts, then the oldest go
    assert source.model_buffer._storage.max_size == capacity
    assert all(r["transitions"] == 18 for r in source.rollouts)
    assert stand_in.fits == 1


def test_rows_that_terminate_restart_from_dataset_states(stand_in):
    source = _source(stand_in.recipe(), rollout_batch_size=50, rollout_length=5)
    with torch.no_grad():
        source.fit()
        source.model.weight.fill_(3.0)  # large steps: most rows leave the box at once
    steps = source.rollout()
    terminated = steps["next", "terminated"].reshape(50, 5)
    assert terminated.any()
    obs = steps["observation"].reshape(50, 5, 3)
    # a row after a termination starts again from a dataset observation
    data_obs = make_dataset().storage[:128]["observation"]
    row, t = (terminated[:, :-1]).nonzero()[0].tolist()
    assert (obs[row, t + 1] == data_obs).all(-1).any()


def test_trains_resumes_without_refitting_and_keeps_the_model(stand_in, tmp_path):
    def run(out, **kw):
        return train("mopo", make_dataset(), total_steps=10, seed=3, out_dir=out,
                     batch_size=16, preset="small", overrides=FAST, checkpoint_interval=4,
                     progress=False, logger=None, **kw)  # fmt: skip

    full = run(tmp_path / "full")
    assert stand_in.fits == 1
    part = run(tmp_path / "part", hooks=[StopAt(7)])
    assert part.step == 7 and stand_in.fits == 2
    state = load_checkpoint(part.checkpoint)
    source_state = state["source"]
    torch.testing.assert_close(source_state["model"]["weight"], torch.full((1, 3), 0.5))
    assert source_state["buffer"]["size"] == 36 and source_state["iterations"] == 7
    resumed = run(tmp_path / "part", resume=True)
    assert resumed.step == 10 and stand_in.fits == 2  # the model came from the checkpoint
    a, b = full.algorithm.loss.state_dict(), resumed.algorithm.loss.state_dict()
    for key in a:
        torch.testing.assert_close(a[key], b[key], rtol=0, atol=0, msg=key)


def test_model_costs_are_logged(stand_in, tmp_path):
    train("combo", make_dataset(), total_steps=6, batch_size=16, preset="small", overrides=FAST,
          out_dir=tmp_path, log_interval=2, progress=False, logger="csv")  # fmt: skip
    metrics = read_metrics(tmp_path)
    assert metrics["model/holdout_mse"][0] == 0.25  # the fit, logged once
    assert (metrics["model/rollout_seconds"] >= 0).sum() >= 1


def test_the_need_is_read_from_the_declaration():
    data = make_dataset()
    assert needs_model_rollouts(build_algorithm("combo", dataset=data, preset="small"))
    assert not needs_model_rollouts(build_algorithm("cql", dataset=data, hidden_sizes=(8,)))


@pytest.mark.parametrize(
    "override, message",
    [
        ({"real_ratio": 1.5}, "real_ratio must be in"),
        ({"rollout_length": 0}, "rollout_length must be >= 1"),
        ({"reward_penalty": -1.0}, "reward_penalty must be >= 0"),
        ({"rollout_penalty": "epistemic"}, "rollout_penalty must be"),
    ],
)
def test_bad_settings_are_named(stand_in, override, message):
    with pytest.raises(AlgorithmError, match=message):
        train("mopo", make_dataset(), total_steps=2, batch_size=16, preset="small",
              overrides={**FAST, **override}, progress=False, logger=None)  # fmt: skip


def test_hydra_trainer_config_trains_on_model_rollouts(stand_in):
    from hydra.errors import InstantiationException
    from hydra.utils import instantiate

    from torchrl_offline.configs import OfflineTrainerConfig

    data = make_dataset()
    algo = build_algorithm("mopo", dataset=data, preset="small", hidden_sizes=(16,))
    cfg = OfflineTrainerConfig(total_steps=5, batch_size=16, seed=0,
                               model_rollouts={"rollout_length": 2, "rollout_batch_size": 4,
                                               "rollout_interval": 3})  # fmt: skip
    trainer = instantiate(cfg, loss_module=algo.loss, replay_buffer=data)
    trainer.train()
    source = trainer.collector
    assert isinstance(source, ModelRolloutSource) and trainer.step == 5
    assert source.rollout_length == 2 and [r["step"] for r in source.rollouts] == [0, 3]
    assert source.real_batch_size == 1  # MOPO's declared 5% of 16
    with pytest.raises(InstantiationException, match="unknown setting 'horizon'"):
        instantiate(OfflineTrainerConfig(total_steps=1, model_rollouts={"horizon": 1}),
                    loss_module=algo.loss, replay_buffer=data)  # fmt: skip
    cql = build_algorithm("cql", dataset=data, hidden_sizes=(8,))
    with pytest.raises(InstantiationException, match="does not train on model rollouts"):
        instantiate(OfflineTrainerConfig(total_steps=1, model_rollouts={"rollout_length": 1}),
                    loss_module=cql.loss, replay_buffer=data)  # fmt: skip


@pytest.mark.parametrize("name", ["mopo", "combo"])
def test_trains_through_the_command_line(name, stand_in, tmp_path, capsys):
    from torchrl_offline.cli import main
    from torchrl_offline.trainers.metadata import load_algorithm

    root, run = str(tmp_path / "minari"), tmp_path / "run"
    collect = ["collect", "Pendulum-v1", "--dataset-id", "pendulum/tiny-v0", "--steps", "100",
               "--policy", "random", "--root", root, "--no-progress"]  # fmt: skip
    assert main(collect) == 0
    train_cmd = ["train", "--algo", name, "--steps", "6", "--out", str(run), "--preset", "small",
                 "--set", "rollout_batch_size=8", "--set", "rollout_interval=3",
                 "--dataset", "pendulum/tiny-v0", "--root", root, "--batch-size", "16",
                 "--checkpoint-every", "3", "--eval-env", "none", "--no-progress"]  # fmt: skip
    assert main(train_cmd) == 0
    algo, step = load_algorithm(run)
    assert step == 6 and algo.name == name
    assert algo.hyperparameters["rollout_batch_size"] == 8
    assert stand_in.fits == 1


@pytest.mark.parametrize("name", ["mopo", "combo"])
def test_learned_model_run_resumes_exactly_without_refitting(name, tmp_path, monkeypatch):
    """With the ensemble of torchrl_offline.models: the fitted model is in the
    checkpoint, a resumed run does not fit again and gives the uninterrupted run's
    parameters bitwise."""
    from torchrl_offline.models import fit

    fits = []
    real_fit = fit.fit_dynamics
    monkeypatch.setattr(fit, "fit_dynamics", lambda *a, **k: fits.append(1) or real_fit(*a, **k))
    tiny = {**FAST, "model_hidden_sizes": (16,), "model_max_updates": 20}

    def run(out, **kw):
        return train(name, make_dataset(), total_steps=10, seed=3, out_dir=out, batch_size=16,
                     preset="small", overrides=tiny, checkpoint_interval=4, progress=False,
                     logger=None, **kw)  # fmt: skip

    full = run(tmp_path / "full")
    run(tmp_path / "part", hooks=[StopAt(7)])
    assert len(fits) == 2
    resumed = run(tmp_path / "part", resume=True)
    assert len(fits) == 2 and resumed.step == 10
    state = load_checkpoint(resumed.checkpoint)["source"]
    assert "elites" in state["model"] and state["model_config"]["hidden_sizes"] == (16,)
    a, b = full.algorithm.loss.state_dict(), resumed.algorithm.loss.state_dict()
    for key in a:
        torch.testing.assert_close(a[key], b[key], rtol=0, atol=0, msg=key)


def test_finetune_takes_mopo_as_sac_and_refuses_combo_s_model_term(stand_in):
    from torchrl_offline.trainers.finetune import finetune

    kw = {"total_steps": 4, "batch_size": 16, "progress": False, "logger": None}
    for name in ("mopo", "combo"):
        offline = train(name, make_dataset(), preset="small", overrides=FAST, **kw)
        online = lambda algo: finetune(algo, make_dataset(), "Pendulum-v1",  # noqa: E731
                                       frames_per_batch=3, **kw)  # fmt: skip
        if name == "mopo":  # SAC on offline and online data, no model rollouts
            assert online(offline.algorithm).step == 4
            continue
        with pytest.raises(AlgorithmError, match="conservative_states = 'all'"):
            online(offline.algorithm)
        offline.algorithm.loss.conservative_states = "all"
        assert online(offline.algorithm).step == 4
