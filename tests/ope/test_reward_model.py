"""Reward regressions for the direct method and the DR family on one-step decision logs."""

from __future__ import annotations

import pytest
import torch

from torchrl_offline.ope.bandit_simulator import BanditSimulator
from torchrl_offline.ope.result import OPEError
from torchrl_offline.ope.reward_model import cross_fit_rewards, fit_reward_model


def _linear_log(n: int = 600, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 3, generator=g)
    a = torch.randint(4, (n,), generator=g)
    k = torch.randint(3, (n,), generator=g)
    # per-action slopes, an action effect and a slot effect: inside the ridge features
    r = x[:, 0] * (a.double() - 1.5) + 0.5 * a.double() - 0.3 * k.double()
    return x, a, k, r


def test_ridge_recovers_a_linear_model_with_actions_and_positions():
    x, a, k, r = _linear_log()
    model = fit_reward_model(x, a, r, num_actions=4, position=k, l2=1e-8)
    q = model.predict(x, k)
    assert q.shape == (600, 4)
    truth = x[:, :1].double() * (torch.arange(4) - 1.5) + 0.5 * torch.arange(4) - 0.3 * k[:, None]
    assert torch.allclose(q, truth, atol=1e-5)
    assert model.describe() == "ridge reward model (4 actions, 3 positions)"


def test_logistic_fits_the_simulator_click_model():
    """The simulator's click probability is logistic in the ridge features: well specified."""
    sim = BanditSimulator(num_contexts=300, num_actions=4, seed=0)
    from torchrl_offline.ope import SoftmaxPolicy

    log = sim.simulate(6000, SoftmaxPolicy(sim.scorer(noise=1.0, seed=1)), seed=0)
    columns = (log["observation"], log["action"], log["next", "reward"])
    model = fit_reward_model(*columns, num_actions=4, kind="logistic")
    ridge = fit_reward_model(*columns, num_actions=4)
    truth = sim.expected_reward(sim.contexts)
    error = (model.predict(sim.contexts) - truth).abs().mean()
    assert error < 0.05
    assert error < 0.6 * (ridge.predict(sim.contexts) - truth).abs().mean()
    assert ((model.predict(sim.contexts) >= 0) & (model.predict(sim.contexts) <= 1)).all()


def test_mlp_beats_ridge_on_a_nonlinear_reward_and_is_seeded():
    g = torch.Generator().manual_seed(1)
    x = torch.rand(1500, 1, generator=g) * 4 - 2
    a = torch.randint(2, (1500,), generator=g)
    r = torch.where(a == 1, x[:, 0].pow(2), -x[:, 0].abs()).double()
    r = r + 0.1 * torch.randn(1500, generator=g, dtype=torch.float64)
    grid = torch.linspace(-2, 2, 41)[:, None]
    truth = torch.stack([-grid[:, 0].abs(), grid[:, 0].pow(2)], -1).double()
    kwargs = {"num_actions": 2, "kind": "mlp", "max_epochs": 40, "patience": 4, "seed": 3}
    mlp = fit_reward_model(x, a, r, **kwargs)
    ridge = fit_reward_model(x, a, r, num_actions=2)
    mlp_error = (mlp.predict(grid) - truth).pow(2).mean()
    assert mlp_error < 0.5 * (ridge.predict(grid) - truth).pow(2).mean()
    assert mlp_error < 0.05
    again = fit_reward_model(x, a, r, **kwargs)
    assert torch.equal(mlp.predict(grid), again.predict(grid))


def test_cross_fitting_never_predicts_a_row_from_its_own_reward():
    x, a, k, r = _linear_log(200)
    q = cross_fit_rewards(x, a, r, num_actions=4, position=k, folds=4)
    poisoned = r.clone()
    poisoned[0] = 1e6
    q_poisoned = cross_fit_rewards(x, a, poisoned, num_actions=4, position=k, folds=4)
    assert torch.allclose(q[0], q_poisoned[0], atol=1e-9)  # predicted by the other folds
    assert not torch.allclose(q[1:], q_poisoned[1:])  # ... which the poisoned row moves
    in_sample = cross_fit_rewards(x, a, poisoned, num_actions=4, position=k, folds=1)
    assert in_sample[0, a[0]] > 1e3  # without cross-fitting the row predicts itself


def test_bad_input_names_the_row():
    x, a, k, r = _linear_log(50)
    bad_action = a.clone()
    bad_action[7] = 4
    with pytest.raises(OPEError, match="action 4 at row 7"):
        fit_reward_model(x, bad_action, r, num_actions=4)
    with pytest.raises(OPEError, match="rewards in \\[0, 1\\]; reward at row 0"):
        fit_reward_model(x, a, r.abs() + 1.5, num_actions=4, kind="logistic")
    nan_obs = x.clone()
    nan_obs[3, 1] = float("nan")
    with pytest.raises(OPEError, match="observation at row 3 is not finite"):
        fit_reward_model(nan_obs, a, r, num_actions=4)
    model = fit_reward_model(x, a, r, num_actions=4, position=k)
    with pytest.raises(OPEError, match="position 5 at row 2"):
        model.predict(x[:3], torch.tensor([0, 1, 5]))
    with pytest.raises(ValueError, match="kind must be one of"):
        fit_reward_model(x, a, r, num_actions=4, kind="forest")
