"""Evaluation, loss logging, progress bar and logger hooks."""

from __future__ import annotations

import io
import re

import pytest
import torch
from torchrl.envs import GymEnv
from torchrl.modules import Actor

from tests.trainers.conftest import make_dataset
from torchrl_offline.trainers.algorithms import build_algorithm, specs_from_dataset
from torchrl_offline.trainers.hooks import (
    EvaluationHook,
    LogLosses,
    ProgressBar,
    evaluate_policy,
    make_logger,
)
from torchrl_offline.trainers.offline import OfflineTrainer


@pytest.fixture
def env():
    return GymEnv("Pendulum-v1")


@pytest.fixture
def policy(env):
    torch.manual_seed(0)
    return Actor(torch.nn.Linear(3, 1), spec=env.action_spec)


def test_evaluate_policy_is_reproducible_and_leaves_rng_alone(env, policy):
    torch.manual_seed(5)
    state = torch.get_rng_state()
    first = evaluate_policy(env, policy, num_episodes=3, seed=1, max_steps=15)
    assert torch.equal(torch.get_rng_state(), state)
    second = evaluate_policy(env, policy, num_episodes=3, seed=1, max_steps=15)
    assert first.returns == second.returns and first.lengths == [15, 15, 15]
    assert len(set(first.returns)) == 3  # three different starts
    mean = sum(first.returns) / 3
    assert first.mean == pytest.approx(mean)
    std = (sum((r - mean) ** 2 for r in first.returns) / 3) ** 0.5
    assert first.std == pytest.approx(std)
    assert first.normalized_score is None
    other = evaluate_policy(env, policy, num_episodes=3, seed=2, max_steps=15)
    assert other.returns != first.returns


def test_normalized_score(env, policy):
    result = evaluate_policy(env, policy, num_episodes=1, max_steps=5, reference=(-100.0, 0.0))
    assert result.normalized_score == pytest.approx(100.0 * (result.mean + 100.0) / 100.0)
    with pytest.raises(ValueError, match="num_episodes"):
        evaluate_policy(env, policy, num_episodes=0)


def _trainer(total, logger=None):
    data = make_dataset()
    algo = build_algorithm("bc", *specs_from_dataset(data), hidden_sizes=(8,))
    trainer = OfflineTrainer(
        replay_buffer=data,
        loss_module=algo.loss,
        optimizer=algo.optimizer,
        total_steps=total,
        loss_components=algo.loss_keys,
        logger=logger,
    )
    return trainer, algo


def test_evaluation_hook_schedule_and_logs(tmp_path, env):
    logger = make_logger("csv", tmp_path, exp_name="run")
    trainer, algo = _trainer(7, logger)
    hook = EvaluationHook(
        env, algo.policy, interval=3, num_episodes=2, max_steps=10, reference=(-1500, -150)
    )
    hook.register(trainer)
    trainer.train()
    assert [h["step"] for h in hook.history] == [0, 3, 6, 7]
    assert all(h["normalized_score"] is not None for h in hook.history)
    rows = (tmp_path / "run" / "scalars" / "eval" / "return_mean.csv").read_text().splitlines()
    assert [r.split(",")[0] for r in rows] == ["0", "3", "6", "7"]
    assert len(trainer._log_dict["eval/return_mean"]) == 4


def test_log_losses_means_over_the_interval(tmp_path):
    trainer, _ = _trainer(6, make_logger("csv", tmp_path, exp_name="run"))
    seen = []
    trainer.register_op(
        "post_optim_complete_log", lambda n, losses: seen.append(float(losses["loss_bc"]))
    )
    LogLosses(interval=3).register(trainer)
    trainer.train()
    rows = (tmp_path / "run" / "scalars" / "train" / "loss_bc.csv").read_text().splitlines()
    steps_values = [(int(r.split(",")[0]), float(r.split(",")[1])) for r in rows]
    assert [s for s, _ in steps_values] == [3, 6]
    assert steps_values[0][1] == pytest.approx(sum(seen[:3]) / 3, rel=1e-5)
    assert steps_values[1][1] == pytest.approx(sum(seen[3:]) / 3, rel=1e-5)


def test_log_losses_sums_on_device_survive_key_changes_and_resume():
    """Sums equal float accumulation in order, across a change of keys and a state_dict."""
    from tensordict import TensorDict

    steps = [
        {"loss_a": 0.1, "loss_b": 1.5},
        {"loss_a": 0.2, "loss_b": 2.5},
        {"loss_a": 0.3},  # a step without loss_b (e.g. no actor update)
        {"loss_a": 0.4, "loss_b": 3.5, "loss_c": 7.0},
    ]
    batches = [TensorDict({k: torch.tensor(v) for k, v in d.items()}) for d in steps]
    expected: dict[str, float] = {}
    for d in steps:
        for k, v in d.items():
            expected[k] = expected.get(k, 0.0) + float(torch.tensor(v))
    whole = LogLosses(interval=100)
    for i, td in enumerate(batches):
        whole(i + 1, td)
    counts = {"loss_a": 4.0, "loss_b": 3.0, "loss_c": 1.0}  # the steps that wrote each
    assert whole.state_dict() == {"sums": expected, "counts": counts, "count": 4}
    part = LogLosses(interval=100)
    part(1, batches[0])
    part(2, batches[1])
    resumed = LogLosses(interval=100)
    resumed.load_state_dict(part.state_dict())
    resumed(3, batches[2])
    resumed(4, batches[3])
    assert resumed.state_dict() == whole.state_dict()


def test_log_losses_means_each_entry_over_the_steps_that_wrote_it():
    """A delayed policy update writes loss_actor on every other step: its logged mean is
    over those steps, and the alternating entries cost no read-back before the log point."""
    data = make_dataset()
    torch.manual_seed(0)
    algo = build_algorithm("td3_bc", *specs_from_dataset(data), hidden_sizes=(8,))
    trainer = OfflineTrainer(
        replay_buffer=data, loss_module=algo.loss, optimizer=algo.optimizer, total_steps=4
    )
    seen = []
    trainer.register_op("post_optim_complete_log", lambda steps, td: seen.append(td))
    hook = LogLosses(interval=4)
    hook.register(trainer)
    reads = []
    real_totals = hook._totals
    hook._totals = lambda: reads.append(trainer.step) or real_totals()
    trainer.train()
    assert reads == [4]  # one read-back, at the logged point
    actor = [float(td["loss_actor"]) for td in seen if "loss_actor" in td.keys()]
    critic = [float(td["loss_qvalue"]) for td in seen]
    assert len(actor) == 2 and len(critic) == 4
    assert trainer._log_dict["train/loss_actor"] == [pytest.approx(sum(actor) / 2)]
    assert trainer._log_dict["train/loss_qvalue"] == [pytest.approx(sum(critic) / 4)]


def test_log_losses_reads_checkpoints_without_per_entry_counts():
    hook = LogLosses(interval=100)
    hook.load_state_dict({"sums": {"loss_a": 3.0}, "count": 2})
    assert hook.state_dict() == {"sums": {"loss_a": 3.0}, "counts": {"loss_a": 2.0}, "count": 2}


def test_progress_bar_shows_steps_per_second_and_losses():
    trainer, _ = _trainer(20)
    out = io.StringIO()
    ProgressBar(interval=5, file=out, mininterval=0).register(trainer)
    trainer.train()
    text = out.getvalue()
    assert "20/20" in text and "steps/s=" in text and "loss_bc=" in text


def test_progress_bar_shows_the_time_left():
    """tqdm's ``[elapsed<remaining, rate]``: the bar knows the total, so it has an ETA."""
    trainer, _ = _trainer(20)
    out = io.StringIO()
    ProgressBar(interval=5, file=out, mininterval=0).register(trainer)
    trainer.train()
    # e.g. " 6/20 [00:00<00:00, 206.71step/s, ...]": elapsed < time left
    assert re.search(r" 6/20 \[\d\d:\d\d<\d\d:\d\d, ", out.getvalue()), out.getvalue()


def test_a_missing_logger_package_gets_an_install_hint(tmp_path, monkeypatch):
    from torchrl.record import loggers

    def missing(*args, **kwargs):
        raise ImportError("torch.utils.tensorboard could not be imported")

    monkeypatch.setattr(loggers, "TensorboardLogger", missing)
    with pytest.raises(
        ImportError, match="needs the tensorboard package .*: pip install tensorboard"
    ):
        make_logger("tensorboard", tmp_path)


def test_make_logger_kinds(tmp_path):
    assert make_logger(None, tmp_path) is None
    with pytest.raises(ValueError, match="Unknown logger 'excel'.*csv.*tensorboard"):
        make_logger("excel", tmp_path)


def test_a_slow_run_refreshes_its_progress_bar_every_second_not_every_50_steps(monkeypatch):
    """At a step every few seconds, waiting for 50 steps would hide the time left for
    minutes: the bar refreshes once ``seconds`` have passed."""
    import torchrl_offline.trainers.hooks as hooks

    clock = iter(range(0, 1000, 2))  # every call to the clock: 2 s later
    monkeypatch.setattr(hooks.time, "perf_counter", lambda: float(next(clock)))
    trainer, _ = _trainer(4)
    out = io.StringIO()
    ProgressBar(interval=50, file=out, mininterval=0).register(trainer)
    trainer.train()
    assert re.search(r" 2/4 \[", out.getvalue()), out.getvalue()
