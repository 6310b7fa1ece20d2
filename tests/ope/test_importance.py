"""Importance-sampling estimators on finite MDPs with exact values, and their bad-input behaviour."""

from __future__ import annotations

import math
import warnings

import pytest
import torch
from tensordict import TensorDict
from tensordict.nn import TensorDictModule
from torch import nn
from torchrl.data import Categorical
from torchrl.modules import NormalParamExtractor, ProbabilisticActor, TanhNormal

from torchrl_offline.data.behavior import UniformRandomPolicy
from torchrl_offline.data.storage import make_replay_buffer
from torchrl_offline.ope.importance import (
    ImportanceSampling,
    PerDecisionImportanceSampling,
    WeightedImportanceSampling,
    WeightedPerDecisionImportanceSampling,
)
from torchrl_offline.ope.policy import as_evaluation_policy
from torchrl_offline.ope.result import OPEError, OPEResult, OPEWarning

ALL = [
    ImportanceSampling,
    WeightedImportanceSampling,
    PerDecisionImportanceSampling,
    WeightedPerDecisionImportanceSampling,
]

# 400 independent datasets of 50 episodes, drawn at once (one generator, episode-major).
N_DATASETS, N_EPISODES = 400, 50


@pytest.fixture(scope="module")
def big(problem) -> TensorDict:
    return problem.mdp.sample(problem.mu, N_DATASETS * N_EPISODES, seed=123)


@pytest.fixture(scope="module")
def big_results(problem, big) -> dict[str, OPEResult]:
    actor = problem.actor()
    return {
        cls.__name__: cls(actor, gamma=problem.gamma, n_bootstrap=200, seed=0).estimate(big)
        for cls in ALL
    }


@pytest.mark.parametrize("name", ["ImportanceSampling", "PerDecisionImportanceSampling"])
def test_unbiased_over_many_datasets(problem, big_results, name):
    # IS and PDIS are means of per-episode terms, so the estimate on dataset j is the mean of
    # its episodes' terms; the mean over the 400 datasets must match the exact value.
    per = big_results[name].per_episode.reshape(N_DATASETS, N_EPISODES)
    estimates = per.mean(1)
    se = estimates.std() / math.sqrt(N_DATASETS)
    truth = problem.true_value
    assert abs(estimates.mean() - truth) < 3.5 * se, (estimates.mean(), truth, se)
    # The evaluation policy's value differs from the behaviour's: the test has power.
    behaviour = problem.mdp.value(problem.mu, problem.gamma)
    assert abs(estimates.mean() - behaviour) > 3.5 * se


def test_single_dataset_estimate_equals_mean_of_its_episodes(problem, big):
    actor = problem.actor()
    one = big[big["episode"] < N_EPISODES]
    for cls in (ImportanceSampling, PerDecisionImportanceSampling):
        r_one = cls(actor, gamma=problem.gamma, n_bootstrap=50).estimate(one)
        r_big = cls(actor, gamma=problem.gamma, n_bootstrap=50).estimate(big)
        assert r_one.value == pytest.approx(r_big.per_episode[:N_EPISODES].mean().item(), rel=1e-9)


@pytest.mark.parametrize(
    "name", ["WeightedImportanceSampling", "WeightedPerDecisionImportanceSampling"]
)
def test_weighted_estimators_consistent(problem, big_results, name):
    r = big_results[name]
    pdis = big_results["PerDecisionImportanceSampling"]
    se = pdis.per_episode.std().item() / math.sqrt(pdis.per_episode.numel())
    assert abs(r.value - problem.true_value) < 4 * se
    # per_episode contributions average to the estimate.
    assert r.per_episode.mean().item() == pytest.approx(r.value, rel=1e-9)
    assert r.ci_low < r.value < r.ci_high


def test_diagnostics(big_results):
    r = big_results["ImportanceSampling"]
    d = r.diagnostics
    assert 0 < d["ess"] < N_DATASETS * N_EPISODES
    assert d["episodes"] == N_DATASETS * N_EPISODES
    assert d["mean_weight"] == pytest.approx(1.0, abs=0.1)  # E_mu[w] = 1 under full support
    assert d["max_weight"] >= d["mean_weight"]
    assert d["fraction_clipped"] == 0.0
    assert d["fraction_near_zero"] == 0.0
    assert d["behavior_policy"] == "logged (action_log_prob)"
    assert r.warnings == []
    text = str(r)
    assert "IS:" in text and "ess" in text
    assert r.as_dict()["value"] == r.value


def test_on_policy_weights_are_one(problem, mdp_tools):
    # pi = mu: every weight is 1, IS = WIS = PDIS = mean discounted return, ESS = episodes.
    p = problem
    td = p.mdp.sample(p.mu, 300, seed=5)
    actor = mdp_tools.tabular_actor(p.mu)
    values = []
    for cls in ALL:
        r = cls(actor, gamma=p.gamma, n_bootstrap=100).estimate(td)
        assert r.diagnostics["ess"] == pytest.approx(300, rel=1e-4)
        assert r.diagnostics["max_weight"] == pytest.approx(1.0, abs=1e-4)
        values.append(r.value)
    assert max(values) - min(values) < 1e-4


def test_one_hot_actor_matches_categorical_actor(problem, big):
    td = big[:500]
    r1 = PerDecisionImportanceSampling(problem.actor(), gamma=0.9, n_bootstrap=20).estimate(td)
    r2 = PerDecisionImportanceSampling(problem.actor(one_hot=True), gamma=0.9, n_bootstrap=20)
    assert r2.estimate(td).value == pytest.approx(r1.value, rel=1e-6)


def test_replay_buffer_input_matches_tensordict(problem, big):
    td = big[:800]
    rb = make_replay_buffer(td.clone())
    est = WeightedPerDecisionImportanceSampling(problem.actor(), gamma=0.9, n_bootstrap=50)
    assert est.estimate(rb).value == pytest.approx(est.estimate(td).value, rel=1e-12)


def test_clipping_caps_weights(problem, big):
    td = big[big["episode"] < 2000]
    actor = problem.actor()
    plain = ImportanceSampling(actor, gamma=0.9, n_bootstrap=50).estimate(td)
    clipped = ImportanceSampling(actor, gamma=0.9, n_bootstrap=50, clip_weight=2.0).estimate(td)
    assert clipped.diagnostics["max_weight"] <= 2.0
    assert 0 < clipped.diagnostics["fraction_clipped"] < 1
    assert clipped.value != plain.value
    loose = ImportanceSampling(actor, gamma=0.9, n_bootstrap=50, clip_weight=1e9).estimate(td)
    assert loose.value == plain.value and loose.diagnostics["fraction_clipped"] == 0


def _toy(n_ep: int = 4, steps: int = 3, actions=None) -> TensorDict:
    n = n_ep * steps
    obs = torch.zeros(n, 2)
    obs[:, 0] = torch.arange(n).float()
    nxt = obs.clone()
    nxt[:, 0] += 1
    done = torch.zeros(n, 1, dtype=torch.bool)
    done[steps - 1 :: steps] = True
    return TensorDict(
        {
            "observation": obs,
            "action": actions if actions is not None else torch.arange(n) % 2,
            "episode": torch.arange(n) // steps,
            "action_log_prob": torch.full((n,), math.log(0.5)),
            ("next", "observation"): nxt,
            ("next", "reward"): torch.ones(n, 1),
            ("next", "done"): done,
            ("next", "terminated"): done.clone(),
        },
        batch_size=[n],
    )


class _PreferZero(nn.Module):
    """A discrete policy putting probability p on action 0 (the rest on action 1)."""

    def __init__(self, p: float):
        super().__init__()
        self.p = p
        self.in_keys = ["observation"]

    def get_dist(self, td):
        probs = torch.tensor([self.p, 1 - self.p]).expand(td.shape[0], 2)
        return torch.distributions.Categorical(probs=probs)


def test_unsupported_actions_warn_with_count():
    td = _toy()
    est = ImportanceSampling(_PreferZero(1.0), gamma=1.0, n_bootstrap=20)
    with pytest.warns(OPEWarning, match=r"6 of 12 logged actions"):
        r = est.estimate(td)
    assert r.diagnostics["fraction_near_zero"] == pytest.approx(0.5)
    assert r.value == 0.0 and math.isfinite(r.ci_low)
    assert any("near-zero probability" in w for w in r.warnings)
    # Self-normalised: every weight is zero, the estimate is undefined: a clear error.
    with pytest.raises(OPEError, match="Every importance weight is zero"):
        WeightedImportanceSampling(_PreferZero(1.0), gamma=1.0).estimate(td)


def test_partial_support_no_nan():
    td = _toy(actions=torch.tensor([0, 0, 0, 0, 1, 0, 0, 0, 0, 1, 1, 1]))
    with pytest.warns(OPEWarning, match="near-zero"):
        r = WeightedPerDecisionImportanceSampling(_PreferZero(1.0), gamma=1.0).estimate(td)
    assert math.isfinite(r.value) and math.isfinite(r.ci_low) and math.isfinite(r.ci_high)
    # Two episodes take only action 0: both have weight 2**3 and return 3.
    w = WeightedImportanceSampling(_PreferZero(1.0), gamma=1.0)
    with pytest.warns(OPEWarning):
        assert w.estimate(td).value == pytest.approx(3.0)


@pytest.mark.parametrize("bad", [-math.inf, math.nan])
def test_bad_behavior_log_prob(bad):
    td = _toy()
    td["action_log_prob"][7] = bad
    with pytest.raises(OPEError, match="transition 7") as info:
        ImportanceSampling(_PreferZero(0.5), gamma=1.0).estimate(td)
    assert info.value.field == "action_log_prob" and info.value.index == 7


def test_bad_behavior_prob():
    td = _toy().exclude("action_log_prob")
    td["action_prob"] = torch.full((12,), 0.5)
    td["action_prob"][3] = 0.0
    with pytest.raises(OPEError, match="action_prob.*transition 3"):
        ImportanceSampling(_PreferZero(0.5), gamma=1.0).estimate(td)


def test_discrete_log_prob_above_zero_is_refused():
    """A discrete action's probability is at most 1, as action_prob's (0, 1] check says."""
    td = _toy()
    td["action_log_prob"][5] = 0.3  # probability 1.35
    with pytest.raises(OPEError, match=r"is 0.3 at transition 5 \(probability 1.3") as info:
        ImportanceSampling(_PreferZero(0.5), gamma=1.0).estimate(td)
    assert info.value.field == "action_log_prob" and info.value.index == 5
    td["action_log_prob"][5] = 0.0  # probability 1: allowed
    assert math.isfinite(ImportanceSampling(_PreferZero(0.5), gamma=1.0).estimate(td).value)


def test_mismatched_action_spaces():
    td = _toy()
    actor = ProbabilisticActor(
        TensorDictModule(
            nn.Sequential(nn.Linear(2, 2), NormalParamExtractor()),
            ["observation"],
            ["loc", "scale"],
        ),
        in_keys=["loc", "scale"],
        distribution_class=TanhNormal,
    )
    with pytest.raises(OPEError, match="Mismatched action spaces.*integer"):
        ImportanceSampling(actor, gamma=1.0).estimate(td)
    # A 2-action policy and a logged action index 2.
    td["action"][5] = 2
    with pytest.raises(OPEError, match="transition 5 is outside the policy's 2 actions"):
        ImportanceSampling(_PreferZero(0.5), gamma=1.0).estimate(td)
    # Discrete policy on continuous data.
    cont = _toy()
    cont["action"] = torch.rand(12, 1)
    with pytest.raises(OPEError, match="Mismatched action spaces"):
        ImportanceSampling(_PreferZero(0.5), gamma=1.0).estimate(cont)
    # Continuous policy of the wrong dimension.
    cont["action"] = torch.rand(12, 3)
    with pytest.raises(OPEError, match="Mismatched action spaces"):
        ImportanceSampling(actor, gamma=1.0).estimate(cont)


def test_episodes_without_initial_state():
    td = _toy()
    td["is_init"] = (torch.arange(12) % 3 == 0)[:, None]
    td["is_init"][6] = False  # episode 2 lost its first step
    with pytest.raises(OPEError, match="1 episode.*initial state.*transition 6") as info:
        ImportanceSampling(_PreferZero(0.5), gamma=1.0).estimate(td)
    assert info.value.index == 6
    est = ImportanceSampling(_PreferZero(0.5), gamma=1.0, on_missing_initial="drop")
    with pytest.warns(OPEWarning, match="1 episode"):
        r = est.estimate(td)
    assert r.diagnostics["episodes"] == 3
    assert any("dropped" in n for n in r.notes)


def test_deterministic_actor_with_epsilon():
    # A greedy actor always choosing action 0, evaluated as epsilon-greedy.
    actor = TensorDictModule(
        lambda obs: torch.zeros(obs.shape[0], dtype=torch.long), ["observation"], ["action"]
    )
    td = _toy()
    eps = 0.2
    r = ImportanceSampling(actor, gamma=1.0, epsilon=eps, num_actions=2, n_bootstrap=20)
    result = r.estimate(td)
    # Episodes alternate actions 0,1,0 / 1,0,1 (behaviour 0.5 each).
    p0, p1 = 1 - eps + eps / 2, eps / 2
    w = torch.tensor([p0 * p1 * p0, p1 * p0 * p1] * 2) / 0.125
    assert result.value == pytest.approx((w * 3).mean().item(), rel=1e-6)
    # The logged data were not changed by running the actor.
    assert td["action"].tolist() == (torch.arange(12) % 2).tolist()


def test_behavior_policy_object_and_uniform_eval():
    td = _toy()
    uniform = UniformRandomPolicy(Categorical(2))
    r = PerDecisionImportanceSampling(uniform, gamma=0.5, behavior_policy=uniform).estimate(td)
    assert r.value == pytest.approx(1 + 0.5 + 0.25)
    assert r.diagnostics["behavior_policy"].startswith("given")


def _bandit(n: int, seed: int) -> TensorDict:
    """One-step continuous bandit: s ~ N(0, 1), a ~ N(0, 1) logged, r = -(a - s)^2."""
    g = torch.Generator().manual_seed(seed)
    s = torch.randn(n, 1, generator=g)
    a = torch.randn(n, 1, generator=g)
    logp = torch.distributions.Normal(0.0, 1.0).log_prob(a)[:, 0]
    done = torch.ones(n, 1, dtype=torch.bool)
    return TensorDict(
        {
            "observation": s,
            "action": a,
            "episode": torch.arange(n),
            "action_log_prob": logp,
            ("next", "observation"): s,
            ("next", "reward"): -((a - s) ** 2),
            ("next", "done"): done,
            ("next", "terminated"): done.clone(),
        },
        batch_size=[n],
    )


# pi(a | s) = N(0.5 s, 0.8^2): E[-(a - s)^2] = -(0.64 + 0.25 * E[s^2]) = -0.89.
BANDIT_TRUTH = -0.89


def _bandit_actor(distribution_class) -> ProbabilisticActor:
    """pi(a | s) with location 0.5 s and scale 0.8."""

    class Head(nn.Module):
        def forward(self, obs):
            return 0.5 * obs, torch.full_like(obs, 0.8)

    return ProbabilisticActor(
        TensorDictModule(Head(), ["observation"], ["loc", "scale"]),
        in_keys=["loc", "scale"],
        distribution_class=distribution_class,
    )


def test_continuous_gaussian_actor_unbiased():
    from torchrl.modules import IndependentNormal

    actor = _bandit_actor(IndependentNormal)
    r = ImportanceSampling(actor, gamma=1.0, n_bootstrap=200).estimate(_bandit(20000, 0))
    se = r.per_episode.std().item() / math.sqrt(20000)
    assert abs(r.value - BANDIT_TRUTH) < 4 * se
    assert r.ci_low < BANDIT_TRUTH < r.ci_high


def test_deterministic_actor_with_kernel():
    # A deterministic actor a = 0.5 s with a Gaussian kernel of width 0.8 is the same policy.
    actor = TensorDictModule(lambda obs: 0.5 * obs, ["observation"], ["action"])
    td = _bandit(20000, 1)
    r = WeightedImportanceSampling(actor, gamma=1.0, kernel_bandwidth=0.8).estimate(td)
    pdis = PerDecisionImportanceSampling(actor, gamma=1.0, kernel_bandwidth=0.8).estimate(td)
    se = pdis.per_episode.std().item() / math.sqrt(20000)
    assert abs(r.value - BANDIT_TRUTH) < 4 * se
    assert "kernel" in repr(ImportanceSampling(actor, kernel_bandwidth=0.8))


# ----------------------------------------------------------------- episodes and policies


def test_to_episodes_layout():
    from torchrl_offline.ope.episodes import to_episodes

    td = _toy(n_ep=3, steps=2)
    td = torch.cat([td, _toy(n_ep=1, steps=4)[:3]])  # a last, shorter episode ...
    td["episode"][6:] = 3  # ... with its own id
    td["observation"][6:, 0] = torch.tensor([10.0, 11.0, 12.0])
    td["next", "observation"][6:, 0] = torch.tensor([11.0, 12.0, 13.0])
    td["next", "done"][6:] = False
    td["next", "terminated"][6:] = False
    eps = to_episodes(td)
    assert eps.lengths.tolist() == [2, 2, 2, 3]
    assert eps.mask.sum().item() == 9 and eps.max_length == 3
    assert eps.terminated.tolist() == [True, True, True, False]
    assert eps.starts.tolist() == [0, 2, 4, 6]
    torch.testing.assert_close(
        eps.discounts(0.5)[3], torch.tensor([1.0, 0.5, 0.25], dtype=torch.float64)
    )
    torch.testing.assert_close(
        eps.discounts(0.5)[0], torch.tensor([1.0, 0.5, 0.0], dtype=torch.float64)
    )
    assert eps.returns(1.0).tolist() == [2.0, 2.0, 2.0, 3.0]
    padded = eps.pad(torch.arange(9.0), fill=-1.0)
    assert padded[0].tolist() == [0.0, 1.0, -1.0]
    assert eps.initial_states()["observation"][:, 0].tolist() == [0.0, 2.0, 4.0, 10.0]


def test_to_episodes_rejects_broken_episodes():
    from torchrl_offline.ope.episodes import to_episodes

    td = _toy()
    td["episode"][9:] = 0  # episode 0 again after episodes 1 and 2
    with pytest.raises(OPEError, match="Episode 0 is not contiguous.*transition 9"):
        to_episodes(td)
    td = _toy()
    td["next", "done"][4] = True  # done in the middle of episode 1
    with pytest.raises(OPEError, match="done is True at transition 4"):
        to_episodes(td)
    td = _toy()
    td["observation"][5, 0] = 99.0  # spliced: does not continue transition 4
    with pytest.raises(OPEError, match="transition 5.*not contiguous") as info:
        to_episodes(td)
    assert info.value.index == 5 and info.value.field == "observation"
    assert to_episodes(td, check_continuity=False).num_episodes == 4
    td = _toy()
    td["is_init"] = torch.zeros(12, 1, dtype=torch.bool)
    td["is_init"][::3] = True
    td["is_init"][4] = True  # a start inside episode 1: a missing boundary
    with pytest.raises(OPEError, match="is_init.*transition 4"):
        to_episodes(td)
    with pytest.raises(OPEError, match="neither"):
        to_episodes(_toy().exclude("episode", ("next", "done")))
    # Without episode ids, episodes end at done.
    assert to_episodes(_toy().exclude("episode")).lengths.tolist() == [3, 3, 3, 3]


def test_evaluation_policy_sampling_and_probabilities(problem):
    from torchrl_offline.ope.policy import as_evaluation_policy

    td = TensorDict({"observation": torch.eye(5), "action": torch.zeros(5, dtype=torch.long)}, [5])
    for one_hot in (False, True):
        pi = as_evaluation_policy(problem.actor(one_hot=one_hot))
        torch.testing.assert_close(pi.action_probs(td), problem.pi, atol=1e-6, rtol=0)
        torch.manual_seed(0)
        draws = pi.sample(td, num_samples=4000)
        assert draws.shape == (4000, 5) and draws.dtype == torch.long
        freq = torch.nn.functional.one_hot(draws, 3).double().mean(0)
        assert (freq - problem.pi).abs().max() < 0.04
    greedy = TensorDictModule(lambda obs: obs.argmax(-1) % 3, ["observation"], ["action"])
    eg = as_evaluation_policy(greedy, epsilon=0.3, num_actions=3)
    probs = eg.action_probs(td)
    assert probs.sum(-1).tolist() == pytest.approx([1.0] * 5)
    assert probs[4, 1].item() == pytest.approx(0.8)
    assert eg.sample(td, num_samples=7).shape == (7, 5)
    kern = as_evaluation_policy(
        TensorDictModule(lambda obs: obs[:, :2], ["observation"], ["action"]), kernel_bandwidth=0.1
    )
    assert kern.sample(td, num_samples=3).shape == (3, 5, 2)
    with pytest.raises(TypeError, match="Cannot evaluate"):
        as_evaluation_policy(object())


def test_wrong_behaviour_probabilities_are_flagged(problem, big):
    td = big[big["episode"] < 1000].clone()
    td["action_log_prob"] = td["action_log_prob"] + math.log(0.8)  # claims mu 20% too small
    with pytest.warns(OPEWarning, match="mean per-step importance ratio .* it should be 1"):
        r = WeightedImportanceSampling(problem.actor(), gamma=0.9, n_bootstrap=20).estimate(td)
    assert r.diagnostics["mean_weight"] > 1.3
    assert r.diagnostics["mean_step_ratio"] == pytest.approx(1.25, abs=0.05)


def test_step_count_marks_initial_states():
    from torchrl_offline.ope.episodes import to_episodes

    td = _toy()
    td["step_count"] = (torch.arange(12) % 3)[:, None]
    assert to_episodes(td).num_episodes == 4
    td = td[1:]  # the first episode lost its first step
    with pytest.raises(OPEError, match="step_count.*not 0.*transition 0"):
        to_episodes(td)
    with pytest.warns(OPEWarning, match="1 episode"):
        assert to_episodes(td, on_missing_initial="drop").num_episodes == 3


class _FixedBinary:
    """An evaluation policy choosing action 1 with probability ``p`` everywhere."""

    def __init__(self, p: float):
        self.p = p

    def log_prob(self, td: TensorDict) -> torch.Tensor:
        a = td["action"].reshape(-1)
        return torch.where(a == 1, math.log(self.p), math.log(1 - self.p)).to(torch.float64)


def _long_episodes(n_ep: int, steps: int, seed: int = 0) -> TensorDict:
    """Uniform-random binary actions over long episodes, reward = action."""
    n = n_ep * steps
    a = torch.randint(2, (n,), generator=torch.Generator().manual_seed(seed))
    done = torch.zeros(n, 1, dtype=torch.bool)
    done[steps - 1 :: steps] = True
    return TensorDict(
        {
            "observation": torch.zeros(n, 1),
            "action": a,
            "episode": torch.arange(n_ep).repeat_interleave(steps),
            "action_log_prob": torch.full((n,), math.log(0.5)),
            ("next", "observation"): torch.zeros(n, 1),
            ("next", "reward"): a[:, None].float(),
            ("next", "done"): done,
            ("next", "terminated"): done,
        },
        [n],
    )


def test_long_episodes_underflow_warns_and_weighted_estimates_survive():
    # Regression: with ~1e-700 trajectory weights every weight underflowed to 0; IS returned
    # a silent-looking 0 (blamed on unsupported actions) and WIS raised "every weight is zero".
    td = _long_episodes(12, 2500)
    pi = _FixedBinary(0.9)
    with pytest.warns(OPEWarning, match="underflow"):
        r = ImportanceSampling(pi, gamma=1.0, n_bootstrap=20).estimate(td)
    assert r.value == 0.0 and any("underflow" in w for w in r.warnings)
    assert not any("should be 1" in w for w in r.warnings)
    # Self-normalised estimators are computed in a rescaled space: finite, and equal to the
    # formula evaluated with log-sum-exp.
    log_w = torch.where(td["action"] == 1, math.log(1.8), math.log(0.2)).to(torch.float64)
    log_w = log_w.reshape(12, 2500).sum(1)
    returns = td["next", "reward"].reshape(12, 2500).sum(1).to(torch.float64)
    expected = (torch.softmax(log_w, 0) * returns).sum().item()
    assert log_w.max() < -700  # the raw weights do underflow
    with pytest.warns(OPEWarning):
        r = WeightedImportanceSampling(pi, gamma=1.0, n_bootstrap=20).estimate(td)
    assert r.value == pytest.approx(expected, rel=1e-5)
    assert not any("underflow" in w for w in r.warnings)
    assert r.ci_low <= r.value <= r.ci_high
    with pytest.warns(OPEWarning):
        r = WeightedPerDecisionImportanceSampling(pi, gamma=1.0, n_bootstrap=20).estimate(td)
    assert math.isfinite(r.value) and 0 < r.value <= 2500
    # With clipping the weights are not rescaled: the error says why.
    with pytest.raises(OPEError, match="underflow"):
        WeightedImportanceSampling(pi, gamma=1.0, clip_weight=10.0, n_bootstrap=20).estimate(td)


def test_rescaled_weighted_estimates_match_unscaled_formula():
    td = _long_episodes(30, 20, seed=1)
    pi = _FixedBinary(0.7)
    est = WeightedPerDecisionImportanceSampling(pi, gamma=0.9, n_bootstrap=20)
    iw = est.importance_weights(td)
    assert iw.log_scale.abs().max() > 0  # rescaled
    eps = iw.episodes
    ratio = torch.where(eps.gather("action") == 1, 0.7 / 0.5, 0.3 / 0.5).to(torch.float64)
    w = torch.where(eps.mask, ratio, 1.0).cumprod(1)
    disc = eps.discounts(0.9)
    expected = ((disc * w * eps.rewards).sum(0) / w.sum(0)).sum().item()
    r = est.estimate(td)
    assert r.value == pytest.approx(expected, rel=1e-6)  # float32 inputs
    # Regression: exact behaviour probabilities used to be flagged as wrong here, the
    # heavy-tailed trajectory weights having a sample mean of 0.4 "4 standard errors" below 1.
    assert r.diagnostics["mean_weight"] < 0.6
    assert r.diagnostics["mean_step_ratio"] == pytest.approx(1.0, abs=0.05)
    assert not any("should be 1" in w for w in r.warnings)
    torch.testing.assert_close(iw.unscaled_trajectory_weights, w[:, -1], rtol=1e-5, atol=0)


def test_discrete_space_with_start_is_read_from_buffer_metadata():
    # Regression: load_minari stores Discrete(n, start) actions as values start .. start+n-1
    # while TorchRL policies index actions from 0; the values were taken as indices, so
    # action 1 of a Discrete(2, start=1) space was scored as the policy's second action.
    from gymnasium.spaces import Discrete
    from minari.serialization import serialize_space

    td = _toy(n_ep=20, steps=3)  # actions 0/1 = indices; logged uniform
    pi = _PreferZero(0.8)
    expected = ImportanceSampling(pi, gamma=1.0, n_bootstrap=20).estimate(td)
    shifted = td.clone()
    shifted["action"] = shifted["action"] + 1  # values of Discrete(2, start=1)
    meta = {"action_space": serialize_space(Discrete(2, start=1))}
    rb = make_replay_buffer(shifted, metadata=meta)
    got = ImportanceSampling(pi, gamma=1.0, n_bootstrap=20).estimate(rb)
    assert got.value == pytest.approx(expected.value, rel=1e-12)
    assert (got.ci_low, got.ci_high) == (expected.ci_low, expected.ci_high)
    # Without the metadata the values are out of the policy's range: a clear error.
    with pytest.raises(OPEError, match="outside the policy's 2 actions"):
        ImportanceSampling(pi, gamma=1.0, n_bootstrap=20).estimate(shifted)


# ----------------------------------------------------------------- which policy is scored


def test_policy_mode_greedy_scores_the_deterministic_action(problem, big):
    """Greedy: probability 1 on the actor's most likely action (an exact 0/1 probability
    for discrete actions), so IS estimates the greedy policy's own exact value."""
    td = big[big["episode"] < 4000]
    greedy_pi = torch.nn.functional.one_hot(problem.pi.argmax(-1), 3).double()
    pi = as_evaluation_policy(problem.actor(), mode="greedy")
    assert pi.mode == "greedy" and "greedy" in pi.describe()
    torch.testing.assert_close(pi.action_probs(td[:5]), greedy_pi[td["state"][:5]])
    assert (pi.sample(td[:5], num_samples=3) == problem.pi.argmax(-1)[td["state"][:5]]).all()
    est = WeightedPerDecisionImportanceSampling(
        problem.actor(), gamma=problem.gamma, policy_mode="greedy", n_bootstrap=200
    )
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", OPEWarning)  # most logged actions are not greedy
        greedy = est.estimate(td)
    stochastic = WeightedPerDecisionImportanceSampling(
        problem.actor(), gamma=problem.gamma, n_bootstrap=200
    ).estimate(td)
    assert (greedy.policy_mode, stochastic.policy_mode) == ("greedy", "stochastic")
    assert greedy.as_dict()["policy_mode"] == "greedy" and "policy: " in str(greedy)
    truth = problem.mdp.value(greedy_pi, problem.gamma)
    assert abs(truth - problem.true_value) > 0.05
    assert greedy.ci_low < truth < greedy.ci_high
    assert not stochastic.ci_low < truth < stochastic.ci_high


def test_greedy_continuous_policy_needs_a_kernel():
    actor = _bandit_actor(TanhNormal)
    td = _bandit(200, 0)
    td["action"] = td["action"].clamp(-0.99, 0.99)
    with pytest.raises(OPEError, match="kernel_bandwidth") as err:
        WeightedImportanceSampling(actor, gamma=1.0, policy_mode="greedy").estimate(td)
    assert "density at every logged action is 0" in str(err.value)
    smoothed = WeightedImportanceSampling(
        actor, gamma=1.0, policy_mode="greedy", kernel_bandwidth=0.5, n_bootstrap=20
    ).estimate(td)
    assert smoothed.policy_mode == "greedy" and "kernel" in smoothed.policy
    # the stochastic policy has a density: no kernel needed
    assert WeightedImportanceSampling(actor, gamma=1.0, n_bootstrap=20).estimate(
        td
    ).policy_mode == ("stochastic")


def test_policy_mode_errors(problem):
    plain = TensorDictModule(lambda obs: obs.argmax(-1) % 3, ["observation"], ["action"])
    with pytest.raises(TypeError, match="no action distribution"):
        as_evaluation_policy(plain, mode="stochastic")
    with pytest.raises(ValueError, match="smooth the greedy policy"):
        as_evaluation_policy(problem.actor(), mode="stochastic", epsilon=0.1)
    with pytest.raises(ValueError, match="policy mode must be"):
        as_evaluation_policy(problem.actor(), mode="best")
    # a deterministic actor without epsilon is its greedy policy (probabilities 0 or 1)
    assert as_evaluation_policy(plain, num_actions=3).mode == "greedy"
    uniform = UniformRandomPolicy(Categorical(3))
    with pytest.raises(TypeError, match="no greedy action"):
        as_evaluation_policy(uniform, mode="greedy")
