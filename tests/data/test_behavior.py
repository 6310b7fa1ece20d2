"""Behaviour policies: samples follow the stated law and recorded log-probs are exact."""

from __future__ import annotations

import math

import gymnasium as gym
import numpy as np
import pytest
import torch
from tensordict import TensorDict
from tensordict.nn import TensorDictModule
from torchrl.data import Bounded, Categorical, OneHot, Unbounded
from torchrl.modules import NormalParamExtractor, ProbabilisticActor, TanhNormal

from torchrl_offline.data.behavior import (
    EpsilonGreedyPolicy,
    GaussianNoisePolicy,
    MixturePolicy,
    ProbabilisticActorPolicy,
    UniformRandomPolicy,
    as_behavior_policy,
)

LOW, HIGH = -2.0, 1.0  # an asymmetric box, so a wrong centring or range shows


def _phi(x: float) -> float:
    return 0.5 * (1.0 + math.erf(x / math.sqrt(2.0)))


def _truncnorm_logpdf(x: float, mu: float, sigma: float, low: float, high: float) -> float:
    """Independent (stdlib math) truncated-normal log-density."""
    mass = _phi((high - mu) / sigma) - _phi((low - mu) / sigma)
    z = (x - mu) / sigma
    return -0.5 * z * z - math.log(sigma * math.sqrt(2 * math.pi)) - math.log(mass)


def _truncnorm_cdf(x: float, mu: float, sigma: float, low: float, high: float) -> float:
    a, b = _phi((low - mu) / sigma), _phi((high - mu) / sigma)
    return (_phi((x - mu) / sigma) - a) / (b - a)


def _obs(n: int, dim: int = 3, seed: int = 0) -> TensorDict:
    g = torch.Generator().manual_seed(seed)
    return TensorDict({"observation": torch.randn(n, dim, generator=g)}, batch_size=[n])


def _linear_actor(out_dim: int, bias: float = 0.0) -> TensorDictModule:
    torch.manual_seed(0)
    net = torch.nn.Linear(3, out_dim)
    with torch.no_grad():
        net.bias.fill_(bias)
    return TensorDictModule(net, ["observation"], ["action"])


def _ks_distance(samples: torch.Tensor, cdf) -> float:
    x = np.sort(samples.double().numpy())
    n = len(x)
    theoretical = np.array([cdf(v) for v in x])
    upper = np.arange(1, n + 1) / n - theoretical
    lower = theoretical - np.arange(0, n) / n
    return float(max(upper.max(), lower.max()))


# ---------------------------------------------------------------- uniform


def test_uniform_box_log_prob_and_support():
    spec = Bounded(torch.tensor([LOW, -0.5]), torch.tensor([HIGH, 0.5]), shape=(2,))
    torch.manual_seed(0)
    td = UniformRandomPolicy(spec)(_obs(2000))
    action = td["action"]
    assert action.shape == (2000, 2) and action.dtype == torch.float32
    assert bool((action[:, 0] >= LOW).all() and (action[:, 0] <= HIGH).all())
    assert bool((action[:, 1].abs() <= 0.5).all())
    expected = -math.log((HIGH - LOW) * 1.0)
    torch.testing.assert_close(td["action_log_prob"], torch.full((2000,), expected))
    assert "action_prob" not in td.keys()
    assert _ks_distance(action[:, 0], lambda v: (v - LOW) / (HIGH - LOW)) < 0.04


@pytest.mark.parametrize("spec", [Categorical(5), OneHot(5)], ids=["categorical", "onehot"])
def test_uniform_discrete(spec):
    torch.manual_seed(0)
    policy = UniformRandomPolicy(spec)
    td = policy(_obs(5000))
    index = td["action"].long().argmax(-1) if isinstance(spec, OneHot) else td["action"]
    assert td["action"].shape == ((5000, 5) if isinstance(spec, OneHot) else (5000,))
    counts = torch.bincount(index, minlength=5).double() / 5000
    assert bool(((counts - 0.2).abs() < 0.03).all())
    torch.testing.assert_close(td["action_prob"], torch.full((5000,), 0.2))
    torch.testing.assert_close(td["action_log_prob"], torch.full((5000,), -math.log(5)))


def test_uniform_accepts_gym_space_and_rejects_unbounded_box():
    policy = UniformRandomPolicy(gym.spaces.Discrete(3))
    assert policy.discrete and policy(_obs(4))["action"].dtype == torch.int64
    with pytest.raises(ValueError, match="bounded action box"):
        UniformRandomPolicy(Unbounded(shape=(2,)))


# ---------------------------------------------------------------- Gaussian


def test_gaussian_noise_log_prob_matches_independent_formula():
    spec = Bounded(LOW, HIGH, shape=(1,))
    actor = _linear_actor(1, bias=0.7)
    policy = GaussianNoisePolicy(actor, spec, sigma=0.6)
    obs = _obs(200)
    torch.manual_seed(1)
    td = policy(obs.clone())
    mu = actor(obs.clone())["action"].detach().clamp(LOW, HIGH).reshape(-1).double()
    for i in range(200):
        x = float(td["action"][i, 0])
        assert LOW <= x <= HIGH
        expected = _truncnorm_logpdf(x, float(mu[i]), 0.6, LOW, HIGH)
        assert abs(float(td["action_log_prob"][i]) - expected) < 1e-5
    # log_prob() evaluates the same density at given actions
    torch.testing.assert_close(policy.log_prob(td).float(), td["action_log_prob"])


def test_gaussian_noise_samples_follow_the_truncated_normal():
    spec = Bounded(LOW, HIGH, shape=(1,))
    actor = TensorDictModule(
        lambda obs: torch.full((*obs.shape[:-1], 1), 0.8), ["observation"], ["action"]
    )
    policy = GaussianNoisePolicy(actor, spec, sigma=0.9)
    torch.manual_seed(2)
    action = policy(_obs(4000))["action"].reshape(-1)
    assert _ks_distance(action, lambda v: _truncnorm_cdf(v, 0.8, 0.9, LOW, HIGH)) < 0.03
    # the density integrates to one over the box
    grid = torch.linspace(LOW, HIGH, 20001).reshape(-1, 1)
    td = TensorDict({"observation": torch.zeros(20001, 3), "action": grid}, batch_size=[20001])
    density = policy.log_prob(td).exp()
    assert abs(float(torch.trapezoid(density, grid.reshape(-1).double())) - 1.0) < 1e-4


def test_gaussian_noise_centre_outside_box_is_projected():
    spec = Bounded(LOW, HIGH, shape=(1,))
    actor = TensorDictModule(
        lambda obs: torch.full((*obs.shape[:-1], 1), 50.0), ["observation"], ["action"]
    )
    policy = GaussianNoisePolicy(actor, spec, sigma=0.3)
    torch.manual_seed(0)
    td = policy(_obs(100))
    for i in range(100):
        x = float(td["action"][i, 0])
        expected = _truncnorm_logpdf(x, HIGH, 0.3, LOW, HIGH)
        assert abs(float(td["action_log_prob"][i]) - expected) < 1e-5


def test_gaussian_noise_multidim_sums_dims_and_checks_arguments():
    spec = Bounded(torch.tensor([-1.0, -3.0]), torch.tensor([1.0, 3.0]), shape=(2,))
    actor = _linear_actor(2)
    policy = GaussianNoisePolicy(actor, spec, sigma=[0.2, 1.5])
    obs = _obs(50)
    td = policy(obs.clone())
    mu = (
        actor(obs.clone())["action"]
        .detach()
        .clamp(torch.tensor([-1.0, -3.0]), torch.tensor([1.0, 3.0]))
    )
    for i in range(50):
        expected = sum(
            _truncnorm_logpdf(float(td["action"][i, j]), float(mu[i, j]), s, lo, hi)
            for j, (s, lo, hi) in enumerate([(0.2, -1.0, 1.0), (1.5, -3.0, 3.0)])
        )
        assert abs(float(td["action_log_prob"][i]) - expected) < 1e-4
    with pytest.raises(ValueError, match="continuous"):
        GaussianNoisePolicy(actor, Categorical(3), sigma=0.1)
    with pytest.raises(ValueError, match="sigma"):
        GaussianNoisePolicy(actor, spec, sigma=0.0)


# ---------------------------------------------------------------- epsilon


@pytest.mark.parametrize("onehot", [False, True])
def test_epsilon_greedy_discrete(onehot):
    n, eps = 4, 0.2
    spec = OneHot(n) if onehot else Categorical(n)

    def greedy_fn(obs):
        index = (obs[..., 0] > 0).long() + 2 * (obs[..., 1] > 0).long()
        return torch.nn.functional.one_hot(index, n) if onehot else index

    greedy = TensorDictModule(greedy_fn, ["observation"], ["action"])
    policy = EpsilonGreedyPolicy(greedy, spec, epsilon=eps)
    obs = _obs(6000)
    torch.manual_seed(3)
    td = policy(obs.clone())
    g = (obs["observation"][:, 0] > 0).long() + 2 * (obs["observation"][:, 1] > 0).long()
    a = td["action"].long().argmax(-1) if onehot else td["action"]
    expected = (a == g).double() * (1 - eps) + eps / n
    torch.testing.assert_close(td["action_prob"].double(), expected, atol=1e-7, rtol=0)
    torch.testing.assert_close(td["action_log_prob"].double(), expected.log(), atol=1e-6, rtol=0)
    freq_greedy = float((a == g).double().mean())
    assert abs(freq_greedy - (1 - eps + eps / n)) < 0.02


def test_epsilon_continuous_mixture_density():
    spec = Bounded(LOW, HIGH, shape=(1,))
    actor = TensorDictModule(
        lambda obs: torch.full((*obs.shape[:-1], 1), -1.2), ["observation"], ["action"]
    )
    eps, sigma = 0.3, 0.25
    policy = EpsilonGreedyPolicy(actor, spec, epsilon=eps, sigma=sigma)
    torch.manual_seed(4)
    td = policy(_obs(4000))
    for i in range(0, 4000, 37):
        x = float(td["action"][i, 0])
        expected = math.log(
            eps / (HIGH - LOW) + (1 - eps) * math.exp(_truncnorm_logpdf(x, -1.2, sigma, LOW, HIGH))
        )
        assert abs(float(td["action_log_prob"][i]) - expected) < 1e-5

    def cdf(v):
        return eps * (v - LOW) / (HIGH - LOW) + (1 - eps) * _truncnorm_cdf(
            v, -1.2, sigma, LOW, HIGH
        )

    assert _ks_distance(td["action"].reshape(-1), cdf) < 0.03
    with pytest.raises(ValueError, match="sigma"):
        EpsilonGreedyPolicy(actor, spec, epsilon=0.1)
    with pytest.raises(ValueError, match="epsilon"):
        EpsilonGreedyPolicy(actor, spec, epsilon=1.5, sigma=0.1)


def test_epsilon_extremes_reduce_to_gaussian_and_uniform():
    spec = Bounded(LOW, HIGH, shape=(1,))
    actor = _linear_actor(1)
    td = _obs(64)
    td["action"] = torch.linspace(LOW, HIGH, 64).reshape(-1, 1)
    gaussian = GaussianNoisePolicy(actor, spec, sigma=0.4).log_prob(td)
    zero = EpsilonGreedyPolicy(actor, spec, epsilon=0.0, sigma=0.4).log_prob(td)
    one = EpsilonGreedyPolicy(actor, spec, epsilon=1.0, sigma=0.4).log_prob(td)
    torch.testing.assert_close(zero, gaussian)
    torch.testing.assert_close(one, torch.full((64,), -math.log(HIGH - LOW), dtype=torch.float64))


# ---------------------------------------------------------------- ProbabilisticActor


def test_probabilistic_actor_normal_matches_formula():
    net = torch.nn.Sequential(torch.nn.Linear(3, 4), NormalParamExtractor())
    module = TensorDictModule(net, ["observation"], ["loc", "scale"])
    actor = ProbabilisticActor(
        module,
        in_keys=["loc", "scale"],
        distribution_class=torch.distributions.Normal,
        return_log_prob=True,
    )
    policy = as_behavior_policy(actor)
    assert isinstance(policy, ProbabilisticActorPolicy) and not policy.discrete
    obs = _obs(100)
    torch.manual_seed(5)
    td = policy(obs.clone())
    params = module(obs.clone()).detach()
    loc, scale, a = params["loc"].double(), params["scale"].double(), td["action"].double()
    expected = (-0.5 * ((a - loc) / scale) ** 2 - scale.log() - 0.5 * math.log(2 * math.pi)).sum(-1)
    torch.testing.assert_close(td["action_log_prob"].double(), expected, atol=1e-5, rtol=1e-6)


def test_probabilistic_actor_tanh_normal_density_is_normalised():
    net = torch.nn.Sequential(torch.nn.Linear(3, 2), NormalParamExtractor())
    module = TensorDictModule(net, ["observation"], ["loc", "scale"])
    actor = ProbabilisticActor(
        module,
        in_keys=["loc", "scale"],
        distribution_class=TanhNormal,
        distribution_kwargs={"low": LOW, "high": HIGH},
    )
    policy = ProbabilisticActorPolicy(actor)
    torch.manual_seed(6)
    td = policy(_obs(50))
    assert bool(((td["action"] >= LOW) & (td["action"] <= HIGH)).all())
    own = actor.get_dist(_obs(50)).log_prob(td["action"]).reshape(50)
    torch.testing.assert_close(td["action_log_prob"], own.float(), atol=1e-5, rtol=1e-5)
    # the density of one state integrates to one over the box
    grid = torch.linspace(LOW + 1e-4, HIGH - 1e-4, 20001).reshape(-1, 1)
    probe = TensorDict(
        {"observation": _obs(1)["observation"].expand(20001, 3), "action": grid},
        batch_size=[20001],
    )
    density = policy.log_prob(probe).exp()
    assert abs(float(torch.trapezoid(density, grid.reshape(-1).double())) - 1.0) < 2e-3


def test_probabilistic_actor_categorical():
    module = TensorDictModule(torch.nn.Linear(3, 4), ["observation"], ["logits"])
    actor = ProbabilisticActor(
        module, in_keys=["logits"], distribution_class=torch.distributions.Categorical
    )
    policy = ProbabilisticActorPolicy(actor)
    assert policy.discrete
    obs = _obs(300)
    torch.manual_seed(7)
    td = policy(obs.clone())
    probs = torch.softmax(module(obs.clone())["logits"].detach().double(), -1)
    expected = probs.gather(-1, td["action"].unsqueeze(-1)).squeeze(-1)
    torch.testing.assert_close(td["action_prob"].double(), expected, atol=1e-6, rtol=1e-5)
    with pytest.raises(TypeError, match="ProbabilisticActor"):
        ProbabilisticActorPolicy(module)
    with pytest.raises(TypeError, match="behaviour policy"):
        as_behavior_policy(module)


# ---------------------------------------------------------------- mixtures


def _continuous_components():
    spec = Bounded(LOW, HIGH, shape=(1,))
    return spec, [
        UniformRandomPolicy(spec),
        GaussianNoisePolicy(_linear_actor(1, bias=0.5), spec, sigma=0.3),
    ]


def test_mixture_per_step_density_is_the_mixture():
    _, (uniform, gaussian) = _continuous_components()
    weights = [0.25, 0.75]
    policy = MixturePolicy([uniform, gaussian], weights, per="step")
    obs = _obs(3000)
    torch.manual_seed(8)
    td = policy(obs.clone())
    mu = gaussian.actor(obs.clone())["action"].detach().clamp(LOW, HIGH).reshape(-1)
    for i in range(0, 3000, 29):
        x = float(td["action"][i, 0])
        expected = math.log(
            0.25 / (HIGH - LOW)
            + 0.75 * math.exp(_truncnorm_logpdf(x, float(mu[i]), 0.3, LOW, HIGH))
        )
        assert abs(float(td["action_log_prob"][i]) - expected) < 1e-5
    share = float((td["policy_id"] == 1).double().mean())
    assert abs(share - 0.75) < 0.03
    torch.testing.assert_close(policy.log_prob(td).float(), td["action_log_prob"])


def test_mixture_per_episode_keeps_its_component_until_is_init():
    spec = Categorical(3)
    always = [
        EpsilonGreedyPolicy(
            TensorDictModule(
                lambda o, k=k: torch.full(o.shape[:-1], k), ["observation"], ["action"]
            ),
            spec,
            epsilon=0.0,
        )
        for k in range(3)
    ]
    policy = MixturePolicy(always, [0.2, 0.3, 0.5], per="episode")
    torch.manual_seed(9)
    n_envs, steps = 400, 6
    obs = _obs(n_envs)
    ids, actions = [], []
    for t in range(steps):
        td = obs.clone()
        # envs restart at t == 0 and t == 3
        td["is_init"] = torch.full((n_envs, 1), t in (0, 3))
        td = policy(td)
        ids.append(td["policy_id"])
        actions.append(td["action"])
        # a deterministic component: the logged action has probability one
        torch.testing.assert_close(td["action_prob"], torch.ones(n_envs))
    ids = torch.stack(ids)
    assert bool((ids[:3] == ids[0]).all() and (ids[3:] == ids[3]).all())
    assert not bool((ids[0] == ids[3]).all())
    torch.testing.assert_close(torch.stack(actions), ids)  # component k always plays k
    share = torch.bincount(ids[[0, 3]].reshape(-1), minlength=3).double() / (2 * n_envs)
    assert bool(((share - torch.tensor([0.2, 0.3, 0.5], dtype=torch.float64)).abs() < 0.05).all())
    td = obs.clone()
    td["action"] = actions[0]
    td["policy_id"] = ids[0]
    assert bool((policy.log_prob(td) == 0).all())
    with pytest.raises(KeyError, match="InitTracker"):
        policy(_obs(2))


def test_mixture_argument_checks():
    _, components = _continuous_components()
    with pytest.raises(ValueError, match="weights"):
        MixturePolicy(components, [1.0, -1.0])
    with pytest.raises(ValueError, match="per"):
        MixturePolicy(components, per="trajectory")
    with pytest.raises(ValueError, match="discrete or continuous"):
        MixturePolicy([components[0], UniformRandomPolicy(Categorical(2))])
    with pytest.raises(ValueError, match="per-episode"):
        MixturePolicy([MixturePolicy(components), components[0]])
    assert "MixturePolicy(per='step'" in MixturePolicy(components, per="step").describe()
