"""Model-based OPE: the value of a policy rolled out in a fitted model, its interval from
members and initial states, terminations, and the diagnostics of rollouts that leave
the data."""

from __future__ import annotations

import pytest
import torch
from tensordict import TensorDict
from tensordict.nn import TensorDictModule

from torchrl_offline.models import DynamicsEnsemble, ModelError
from torchrl_offline.ope import ModelBasedOPE, OPEResult, OPEWarning

FIT = {"num_members": 3, "num_elites": 2, "hidden_sizes": (32, 32), "max_updates": 300, "lr": 3e-3}


def _contracting_data(n: int = 2000, length: int = 4) -> TensorDict:
    """Episodes of ``length`` steps of s' = s + a, r = -s^2, with random actions."""
    g = torch.Generator().manual_seed(0)
    obs = torch.empty(n, 1)
    act = 0.5 * torch.randn(n, 1, generator=g)
    nxt = torch.empty(n, 1)
    for start in range(0, n, length):
        s = torch.randn(1, generator=g)
        for t in range(start, start + length):
            obs[t] = s
            s = s + act[t]
            nxt[t] = s
    last = (torch.arange(n) % length == length - 1).unsqueeze(-1)
    return TensorDict(
        {
            "observation": obs,
            "action": act,
            "episode": torch.arange(n) // length,
            ("next", "observation"): nxt,
            ("next", "reward"): -obs.square(),
            ("next", "terminated"): torch.zeros(n, 1, dtype=torch.bool),
            ("next", "truncated"): last,
            ("next", "done"): last,
        },
        [n],
    )


def _halving_policy() -> TensorDictModule:
    return TensorDictModule(lambda s: -0.5 * s, ["observation"], ["action"])


def test_value_of_a_known_policy_is_recovered_with_an_interval():
    data = _contracting_data()
    gamma = 0.9
    ope = ModelBasedOPE(_halving_policy(), gamma=gamma, termination_fn="pendulum", fit_kwargs=FIT)
    result = ope.estimate(data)
    assert isinstance(result, OPEResult) and result.estimator == "ModelBased"
    # under a = -s/2 the state halves each step: V(s0) = -s0^2 sum_t (gamma / 4)^t, 4 steps
    s0 = data["observation"][::4, 0]
    truth = float((-s0.square() * sum((gamma / 4) ** t for t in range(4))).mean())
    assert result.value == pytest.approx(truth, abs=0.05 * abs(truth) + 0.02)
    assert result.ci_low <= result.value <= result.ci_high
    assert result.diagnostics["horizon"] == 4
    assert result.diagnostics["n_episodes"] == 500
    assert ope.member_returns.shape == (2, 500)
    assert result.policy_mode == "greedy"


def test_interval_widens_with_member_disagreement():
    data = _contracting_data(400)
    ope = ModelBasedOPE(_halving_policy(), termination_fn="pendulum", fit_kwargs=FIT)
    ope.fit(data)
    tight = ope.evaluate(data)
    returns = ope.member_returns
    # the same starts, one member shifted: the interval must cover both members' values
    shifted = torch.stack([returns[0], returns[1] + 5.0])
    low, high = ope._interval(shifted)
    assert low < float(shifted[0].mean()) + 0.5 and high > float(shifted[1].mean()) - 0.5
    assert high - low > tight.ci_high - tight.ci_low


def test_terminations_stop_the_returns():
    data = _contracting_data(400)
    ope = ModelBasedOPE(
        _halving_policy(),
        gamma=1.0,
        termination_fn=lambda o, a, n: torch.ones(*n.shape[:-1], 1, dtype=torch.bool),
        fit_kwargs=FIT,
    )
    result = ope.estimate(data)
    s0 = data["observation"][::4, 0]
    assert result.value == pytest.approx(float(-s0.square().mean()), abs=0.1)
    assert result.diagnostics["terminated_fraction"] == 1.0


def test_rollouts_leaving_the_data_are_flagged():
    data = _contracting_data(400)
    pushing = TensorDictModule(lambda s: torch.full_like(s, 3.0), ["observation"], ["action"])
    ope = ModelBasedOPE(pushing, horizon=10, termination_fn="pendulum", fit_kwargs=FIT)
    with pytest.warns(OPEWarning, match="left the data's range"):
        result = ope.estimate(data)
    assert result.diagnostics["out_of_range_fraction"] > 0.5


def test_given_model_is_used_without_fitting():
    data = _contracting_data(40)
    model = DynamicsEnsemble(1, 1, num_members=2, num_elites=2, hidden_sizes=(4,))
    ope = ModelBasedOPE(_halving_policy(), model=model, horizon=3)
    result = ope.estimate(data)
    assert ope.fitted is None and result.diagnostics["horizon"] == 3


def test_data_without_terminated_needs_a_termination_function():
    data = _contracting_data(40).exclude(("next", "terminated"))
    with pytest.raises(ModelError, match=r"\('next', 'terminated'\)"):
        ModelBasedOPE(_halving_policy(), fit_kwargs=FIT).estimate(data)
