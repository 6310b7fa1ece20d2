"""Tests of the shared loss helpers in torchrl_offline.objectives.common."""

from __future__ import annotations

import copy

import pytest
import torch
from tensordict import TensorDict
from tensordict.nn import TensorDictModule
from torchrl.data import Bounded, Composite, Unbounded
from torchrl.modules import MLP, Actor, ValueOperator

from torchrl_offline.objectives.common import (
    OfflineLossError,
    action_bounds,
    actor_distribution,
    check_batch,
    check_finite_losses,
    check_output_dim,
    ensemble_apply,
    ensemble_forward,
    find_action_spec,
    from_unit_interval,
    logged_action_value,
    module_apply,
    to_unit_interval,
    uniform_actions,
)


def _batch(n=5):
    return TensorDict(
        {
            "observation": torch.randn(n, 3),
            "action": torch.randn(n, 2),
            "episode": torch.arange(n),
            "next": {"reward": torch.randn(n, 1), "done": torch.zeros(n, 1, dtype=torch.bool)},
        },
        [n],
    )


class TestCheckBatch:
    def test_clean_batch_passes(self):
        check_batch(_batch(), ["observation", "action", ("next", "reward"), "episode"])

    def test_missing_key_is_named(self):
        with pytest.raises(OfflineLossError, match=r"missing the key \('next', 'terminated'\)"):
            check_batch(_batch(), ["observation", ("next", "terminated")])

    def test_nan_names_key_and_first_index(self):
        td = _batch()
        td["next", "reward"][3, 0] = float("nan")
        td["next", "reward"][4, 0] = float("nan")
        with pytest.raises(OfflineLossError, match=r"\('next', 'reward'\).*batch index \(3,\)"):
            check_batch(td, ["observation", ("next", "reward")])

    def test_inf_in_2d_batch(self):
        td = _batch(6).reshape(2, 3)
        td["observation"][1, 2, 0] = float("inf")
        with pytest.raises(OfflineLossError, match=r"'observation'.*\(1, 2\)"):
            check_batch(td, ["observation"])

    def test_error_is_value_error(self):
        assert issubclass(OfflineLossError, ValueError)


def test_check_finite_losses_names_term_and_step():
    check_finite_losses(TensorDict({"loss_a": torch.tensor(1.0), "x": torch.tensor(float("nan"))}))
    bad = TensorDict({"loss_a": torch.tensor(1.0), "loss_b": torch.tensor(float("nan"))})
    with pytest.raises(OfflineLossError, match="'loss_b' at update step 7"):
        check_finite_losses(bad, step=7)


def test_check_output_dim():
    check_output_dim("actor", 2, 2)
    with pytest.raises(OfflineLossError, match="actor produces 3 action dims"):
        check_output_dim("actor", 3, 2)


# ----------------------------------------------------------------------------- ensembles


class _PairCritic(torch.nn.Module):
    """A non-MLP critic (takes two inputs, uses a LayerNorm): forces the vmap path."""

    def __init__(self):
        super().__init__()
        self.lin = torch.nn.Linear(5, 8)
        self.norm = torch.nn.LayerNorm(8)
        self.out = torch.nn.Linear(8, 1)

    def forward(self, obs, act):
        return self.out(self.norm(self.lin(torch.cat([obs, act], -1))).relu())


def _critics():
    torch.manual_seed(0)
    return {
        "mlp": ValueOperator(
            MLP(in_features=5, out_features=1, num_cells=[8, 8]), in_keys=["observation", "action"]
        ),
        "sequential": TensorDictModule(
            torch.nn.Sequential(torch.nn.Linear(3, 8), torch.nn.Tanh(), torch.nn.Linear(8, 4)),
            in_keys=["observation"],
            out_keys=["state_action_value"],
        ),
        "custom": TensorDictModule(
            _PairCritic(), in_keys=["observation", "action"], out_keys=["state_action_value"]
        ),
    }


@pytest.mark.parametrize("kind", ["mlp", "sequential", "custom"])
@pytest.mark.parametrize("batch_shape", [(7,), (4, 3)])
def test_ensemble_matches_loop(kind, batch_shape):
    critic = _critics()[kind]
    members = [critic] + [copy.deepcopy(critic) for _ in range(2)]
    for m in members[1:]:
        for p in m.parameters():
            torch.nn.init.normal_(p.data)
    params = TensorDict.from_modules(*members, as_module=True)
    td = TensorDict(
        {"observation": torch.randn(*batch_shape, 3), "action": torch.randn(*batch_shape, 2)},
        batch_shape,
    )
    expected = torch.stack([m(td.clone())["state_action_value"] for m in members])
    out = ensemble_forward(critic, params, td)
    assert out.batch_size == torch.Size([3, *batch_shape])
    torch.testing.assert_close(out["state_action_value"], expected, atol=1e-5, rtol=1e-5)
    inputs = [td.get(k) for k in critic.in_keys]
    fast = ensemble_apply(critic, params, *inputs)
    torch.testing.assert_close(fast, expected, atol=1e-5, rtol=1e-5)
    loop = ensemble_apply(critic, params, *inputs, vectorize=False)
    torch.testing.assert_close(loop, expected, atol=1e-5, rtol=1e-5)


def test_ensemble_gradients_match_loop():
    critic = _critics()["mlp"]
    members = [critic, copy.deepcopy(critic)]
    for p in members[1].parameters():
        torch.nn.init.normal_(p.data)
    params = TensorDict.from_modules(*members, as_module=True)
    obs, act = torch.randn(6, 3), torch.randn(6, 2)
    ensemble_apply(critic, params, obs, act).square().sum().backward()
    batched = {k: v.grad.clone() for k, v in params.items(True, True)}
    for v in params.values(True, True):
        v.grad = None
    ensemble_apply(critic, params, obs, act, vectorize=False).square().sum().backward()
    for k, v in params.items(True, True):
        torch.testing.assert_close(batched[k], v.grad, atol=1e-5, rtol=1e-5)


def test_ensemble_uses_fast_path_for_mlp():
    from torchrl_offline.objectives import _functional

    critics = _critics()
    assert _functional._mlp_plan(critics["mlp"]) is not None
    assert _functional._mlp_plan(critics["sequential"]) is not None
    assert _functional._mlp_plan(critics["custom"]) is None


@pytest.mark.parametrize("kind", ["mlp", "custom"])
def test_module_apply_uses_given_params(kind):
    critic = _critics()[kind]
    other = copy.deepcopy(critic)
    for p in other.parameters():
        torch.nn.init.normal_(p.data)
    params = TensorDict.from_module(other)
    td = TensorDict({"observation": torch.randn(4, 3), "action": torch.randn(4, 2)}, [4])
    expected = other(td.clone())["state_action_value"]
    got = module_apply(critic, params, *(td.get(k) for k in critic.in_keys))
    torch.testing.assert_close(got, expected, atol=1e-6, rtol=1e-6)


# ----------------------------------------------------------------------------- actions


def test_action_bounds_from_spec_composite_and_actor():
    spec = Bounded(torch.tensor([-2.0, 0.0]), torch.tensor([2.0, 1.0]), (2,))
    low, high = action_bounds(spec)
    torch.testing.assert_close(low, torch.tensor([-2.0, 0.0]))
    torch.testing.assert_close(high, torch.tensor([2.0, 1.0]))
    low2, _ = action_bounds(Composite(action=spec))
    torch.testing.assert_close(low2, low)
    actor = Actor(torch.nn.Linear(3, 2), spec=spec)
    assert find_action_spec(actor) is not None
    torch.testing.assert_close(action_bounds(actor)[1], high)


def test_action_bounds_never_assumes_unit_box():
    with pytest.raises(OfflineLossError, match="not bounded"):
        action_bounds(Unbounded(shape=(2,)))
    with pytest.raises(OfflineLossError, match="no action spec"):
        action_bounds(None)


def test_uniform_actions_and_unit_interval_round_trip():
    low, high = torch.tensor([-2.0, 0.0]), torch.tensor([2.0, 1.0])
    a = uniform_actions(low, high, (100, 3), generator=torch.Generator().manual_seed(0))
    assert a.shape == (100, 3, 2)
    assert bool(((a >= low) & (a <= high)).all())
    # covers the box, not only [-1, 1]
    assert a[..., 0].min() < -1.5 and a[..., 0].max() > 1.5
    u = to_unit_interval(a, low, high)
    assert bool((u.abs() <= 1 + 1e-6).all())
    torch.testing.assert_close(from_unit_interval(u, low, high), a)


def test_actor_distribution_fast_path_matches_get_dist():
    from tensordict.nn import NormalParamExtractor
    from torchrl.modules import ProbabilisticActor, TanhNormal

    from torchrl_offline.objectives import _functional

    torch.manual_seed(0)
    spec = Bounded(-2.0 * torch.ones(2), 2.0 * torch.ones(2), (2,))
    actor = ProbabilisticActor(
        TensorDictModule(
            torch.nn.Sequential(
                MLP(in_features=3, out_features=4, num_cells=[8, 8]), NormalParamExtractor()
            ),
            in_keys=["observation"],
            out_keys=["loc", "scale"],
        ),
        in_keys=["loc", "scale"],
        spec=spec,
        distribution_class=TanhNormal,
        distribution_kwargs={"low": spec.space.low, "high": spec.space.high},
    )
    assert _functional._actor_plan(actor) is not None
    other = copy.deepcopy(actor)
    for p in other.parameters():
        p.data.add_(0.1)
    td = TensorDict({"observation": torch.randn(6, 3)}, [6])
    action = spec.rand((6,)) * 0.9
    expected = other.get_dist(td.clone()).log_prob(action)
    got = actor_distribution(actor, TensorDict.from_module(other), td).log_prob(action)
    torch.testing.assert_close(got, expected)


def test_losses_check_batch_values_with_the_losses_in_one_read():
    """Presence up front; values in the same read as the losses, even when they are finite
    (a NaN in a masked row or behind a saturating activation never reaches a loss)."""
    batch = TensorDict({"obs": torch.zeros(4, 2), "r": torch.zeros(4, 1)}, [4])
    batch["r"][2, 0] = float("inf")
    check_batch(batch, ["obs", "r"], finite=False)  # presence only: passes
    with pytest.raises(OfflineLossError, match="missing the key 'act'"):
        check_batch(batch, ["obs", "act"], finite=False)
    healthy = TensorDict({"loss_a": torch.tensor(1.0)})
    with pytest.raises(
        OfflineLossError, match=r"'r' holds NaN/inf \(first at batch index \(2,\)\)"
    ):
        check_finite_losses(healthy, 7, batch=batch, batch_keys=["obs", "r"])
    check_finite_losses(healthy, 7, batch=batch, batch_keys=["obs"])
    broken = TensorDict({"loss_a": torch.tensor(float("nan"))})
    with pytest.raises(OfflineLossError, match="'loss_a' at update step 7"):
        check_finite_losses(broken, 7, batch=batch, batch_keys=["obs"])


@pytest.mark.parametrize("ensemble_dims", [0, 1])
def test_logged_action_value_reads_indices_and_one_hot_alike(ensemble_dims):
    q = torch.randn(*(2,) * ensemble_dims, 6, 4)
    index = torch.tensor([0, 3, 1, 2, 2, 0])
    expected = q.gather(-1, index.expand(*q.shape[:-1]).unsqueeze(-1)).squeeze(-1)
    for action, one_hot in (
        (index, False),
        (index[:, None], False),
        (torch.nn.functional.one_hot(index, 4), True),
        (torch.nn.functional.one_hot(index, 4).float(), True),
    ):
        value = logged_action_value(q, action, one_hot=one_hot, ensemble_dims=ensemble_dims)
        assert value.shape == q.shape[:-1]
        torch.testing.assert_close(value, expected)


def test_logged_action_value_errors_name_the_key_and_first_bad_index():
    q = torch.randn(2, 6, 4)
    bad = torch.tensor([0, 1, 4, 0, -1, 0])
    with pytest.raises(OfflineLossError, match=r"'act' .*\[0, 4\) \(first at flat batch index 2\)"):
        logged_action_value(q, bad, one_hot=False, action_key="act", ensemble_dims=1)
    with pytest.raises(OfflineLossError, match="'action' has 3 entries .* outputs 4"):
        logged_action_value(q, torch.zeros(6, 3), one_hot=True, ensemble_dims=1)
