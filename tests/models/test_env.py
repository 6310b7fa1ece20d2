"""The learned model as a TorchRL environment: specs, rollouts, collectors, partial
resets, penalised rewards and out-of-range starts."""

from __future__ import annotations

import warnings

import pytest
import torch
from tensordict.nn import TensorDictModule
from torchrl.collectors import Collector
from torchrl.envs.utils import check_env_specs

from torchrl_offline.models import (
    DynamicsEnsemble,
    LearnedModelEnv,
    ModelError,
    ModelRangeWarning,
)

from .conftest import linear_transitions, tiny_model


def _model(termination_fn=None) -> DynamicsEnsemble:
    return tiny_model(termination_fn=termination_fn)


def _policy() -> TensorDictModule:
    return TensorDictModule(
        lambda obs: obs[..., :1].tanh() * 0.5, in_keys=["observation"], out_keys=["action"]
    )


def test_check_env_specs_passes():
    env = LearnedModelEnv(_model(), linear_transitions(100), batch_size=5, max_steps=4)
    check_env_specs(env)
    assert env.action_spec.shape == (5, 1)


def test_rollout_with_a_policy_writes_uncertainty_and_penalised_rewards():
    model = _model()
    data = linear_transitions(100)
    plain = LearnedModelEnv(model, data, batch_size=6, seed=3)
    penalised = LearnedModelEnv(model, data, batch_size=6, seed=3, reward_penalty=2.0)
    a = plain.rollout(4, _policy(), auto_reset=True)
    b = penalised.rollout(4, _policy(), auto_reset=True)
    assert a.batch_size == (6, 4)
    torch.testing.assert_close(a["next", "observation"], b["next", "observation"])
    torch.testing.assert_close(
        b["next", "reward"], a["next", "reward"] - 2.0 * a["next", "model_uncertainty"]
    )
    assert (a["next", "model_uncertainty"] > 0).all()
    assert (a["next", "model_disagreement"] >= 0).all()
    # starts are dataset observations
    starts = a["observation"][:, 0]
    assert all((data["observation"] == s).all(-1).any() for s in starts)


def test_disagreement_penalty():
    model = _model()
    env = LearnedModelEnv(
        model, torch.zeros(3, 2), batch_size=2, penalty="disagreement", reward_penalty=1.0, seed=0
    )
    plain = LearnedModelEnv(model, torch.zeros(3, 2), batch_size=2, seed=0)
    a, b = env.rollout(2, _policy()), plain.rollout(2, _policy())
    torch.testing.assert_close(
        a["next", "reward"], b["next", "reward"] - b["next", "model_disagreement"]
    )


def test_max_steps_truncates_and_a_collector_resets_the_rows():
    env = LearnedModelEnv(_model(), linear_transitions(100), batch_size=4, max_steps=3)
    collector = Collector(env, _policy(), frames_per_batch=4 * 7, total_frames=4 * 7)
    batch = next(iter(collector))
    collector.shutdown()
    assert batch.numel() == 28
    truncated = batch["next", "truncated"].squeeze(-1)
    assert truncated[:, 2].all() and truncated[:, 5].all() and not truncated[:, 3].any()
    # after a truncation the next row starts from a dataset state (a reset)
    assert not torch.equal(batch["observation"][:, 3], batch["next", "observation"][:, 2])


def test_terminated_rows_are_reset_alone():
    model = _model(termination_fn=lambda o, a, n: n[..., :1] > 0.0)
    env = LearnedModelEnv(model, linear_transitions(100), batch_size=8, seed=1)
    td = env.reset()
    td["action"] = torch.zeros(8, 1)
    out, nxt = env.step_and_maybe_reset(td)
    done = out["next", "done"].squeeze(-1)
    assert done.any() and not done.all()
    kept = ~done
    torch.testing.assert_close(nxt["observation"][kept], out["next", "observation"][kept])
    assert not torch.equal(nxt["observation"][done], out["next", "observation"][done])


def test_seeded_rollouts_repeat():
    model = _model()
    a = LearnedModelEnv(model, linear_transitions(50), batch_size=3, seed=7).rollout(3, _policy())
    b = LearnedModelEnv(model, linear_transitions(50), batch_size=3, seed=7).rollout(3, _policy())
    torch.testing.assert_close(a["next", "observation"], b["next", "observation"])


def test_a_given_generator_drives_the_draws_and_keeps_its_state():
    model = _model()
    generator = torch.Generator().manual_seed(7)
    env = LearnedModelEnv(model, linear_transitions(50), batch_size=3, generator=generator)
    state = generator.get_state()
    first = env.rollout(3, _policy())
    assert not torch.equal(generator.get_state(), state)  # the env drew from it
    generator.set_state(state)  # rewinding the caller's generator replays the rollout
    again = env.rollout(3, _policy())
    torch.testing.assert_close(first["next", "observation"], again["next", "observation"])
    seeded = LearnedModelEnv(model, linear_transitions(50), batch_size=3, seed=7)
    torch.testing.assert_close(
        first["next", "observation"], seeded.rollout(3, _policy())["next", "observation"]
    )


def test_out_of_range_starts_say_how_far_outside():
    model = _model()
    starts = model.observation_mean.expand(4, 2).clone()
    starts[2, 1] = model.observation_high[1] + 5 * model.observation_std[1]
    with pytest.warns(ModelRangeWarning, match="by up to 5 standard deviations, dimension 1") as w:
        LearnedModelEnv(model, starts, batch_size=2)
    assert w[0].message.dimension == 1 and w[0].message.index == 2
    with pytest.raises(ModelError, match="dimension 1"):
        LearnedModelEnv(model, starts, batch_size=2, range_check="raise")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        LearnedModelEnv(model, starts[:2], batch_size=2)


def test_rollout_counts_steps_that_leave_the_data_range():
    env = LearnedModelEnv(_model(), linear_transitions(100), batch_size=4)
    env.rollout(5)
    assert env.model_steps == 20
    assert 0.0 <= env.out_of_range_fraction <= 1.0


def test_memory_mapped_start_states(tmp_path):
    data = linear_transitions(100).memmap_(tmp_path / "data")
    env = LearnedModelEnv(_model(), data, batch_size=3)
    assert env.reset()["observation"].shape == (3, 2)


def test_wrong_start_shape_is_refused():
    with pytest.raises(ModelError, match=r"\[N, 2\]"):
        LearnedModelEnv(_model(), torch.zeros(4, 3), batch_size=2)


def test_states_a_hair_past_the_range_are_within_the_tolerance():
    model = _model()
    edge = model.observation_high + 0.05 * model.observation_std
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        LearnedModelEnv(model, edge.unsqueeze(0), batch_size=1)  # 0.05 < 0.1 std
    with pytest.warns(ModelRangeWarning):
        LearnedModelEnv(model, edge.unsqueeze(0), batch_size=1, range_tolerance=0.0)


def test_one_warning_for_out_of_range_starts_across_chunks():
    model = _model()
    starts = model.observation_mean.expand(10, 2).clone()
    starts[3, 0] = model.observation_low[0] - 2 * model.observation_std[0]
    starts[8, 1] = model.observation_high[1] + 4 * model.observation_std[1]
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        model.check_range(starts, chunk_size=4)
    assert len(caught) == 1
    message = caught[0].message
    assert (message.dimension, message.index) == (1, 3)
    assert message.distance == pytest.approx(4.0, rel=1e-4)
    assert str(message).startswith("2 of 10 start states")
