"""Model quality measures: a perfect model has zero error and a calibrated band; open-loop
errors grow with the horizon for an imperfect one."""

from __future__ import annotations

import torch

from torchrl_offline.models.quality import elite_prediction, one_step_quality, open_loop_errors

from .conftest import linear_transitions, tiny_model


def _model():
    return tiny_model()


def test_mixture_moments_of_the_elites():
    model = _model()
    obs, act = torch.randn(5, 2), torch.randn(5, 1)
    mean, var = elite_prediction(model, obs, act)
    means, log_vars = model(obs, act)
    e = model.elites
    torch.testing.assert_close(mean, means[e].mean(0))
    torch.testing.assert_close(var, log_vars[e].exp().mean(0) + means[e].var(0, unbiased=False))


def test_one_step_quality_of_targets_drawn_from_the_model_itself():
    model = _model()
    data = linear_transitions(4000, seed=3)
    mean, var = elite_prediction(model, data["observation"], data["action"])
    # targets drawn from the predicted Gaussian: coverage is the nominal 95%
    draw = mean + var.sqrt() * torch.randn(mean.shape, generator=torch.Generator().manual_seed(0))
    data["next", "observation"] = data["observation"] + draw[:, :2]
    data["next", "reward"] = draw[:, 2:]
    quality = one_step_quality(model, data)
    assert abs(quality["coverage"] - 0.95) < 0.02
    # the error is the predicted variance in units of the data's target variance
    expected = float((var[:, :2] / model.target_std[:2].square()).mean())
    assert abs(quality["mse_delta"] - expected) < 0.1 * expected


def test_member_coverage_is_each_elites_own_band():
    model = tiny_model(num_members=3, num_elites=2)
    data = linear_transitions(4000, seed=4)
    means, log_vars = model(data["observation"], data["action"])
    # every row drawn from the first elite's Gaussian: its band holds 95% of them, the
    # other elite's (another mean) fewer, and the wider mixture band more
    first = model.elites[0]
    noise = torch.randn(means.shape[1:], generator=torch.Generator().manual_seed(1))
    draw = means[first] + (0.5 * log_vars[first]).exp() * noise
    data["next", "observation"] = data["observation"] + draw[:, :2]
    data["next", "reward"] = draw[:, 2:]
    quality = one_step_quality(model, data)
    z = 1.959964
    second = model.elites[1]
    inside_second = (means[second] - draw).abs() <= z * (0.5 * log_vars[second]).exp()
    expected = (0.95 + inside_second.float().mean().item()) / 2
    assert abs(quality["coverage_member"] - expected) < 0.015


def test_open_loop_error_grows_with_the_horizon_and_skips_short_episodes():
    model = _model()
    data = linear_transitions(300)
    episodes = [data[i : i + 30] for i in range(0, 300, 30)]
    # make each episode continuous: s_{t+1} = next observation of t
    for ep in episodes:
        ep["observation"][1:] = ep["next", "observation"][:-1]
    errors = open_loop_errors(model, episodes, (1, 5, 25))
    assert set(errors) == {1, 5, 25}
    assert errors[1] < errors[25]
    assert open_loop_errors(model, [data[:10]], (1, 25)) == {}
