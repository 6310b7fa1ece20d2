"""BanditIPSLoss: importance-weighted policy learning (POEM / Norm-POEM / BanditNet) on
logs of one-step decisions, against the objectives written out in plain torch."""

from __future__ import annotations

import pytest
import torch
from tensordict import TensorDict
from tensordict.nn import TensorDictModule
from torch import nn
from torchrl.data import Categorical, Unbounded
from torchrl.modules import ProbabilisticActor
from torchrl.modules.distributions import OneHotCategorical

from tests.decision_log import decision_log
from torchrl_offline import registry
from torchrl_offline.data.logged import from_logged
from torchrl_offline.objectives import BanditIPSLoss, OfflineLossError
from torchrl_offline.trainers.algorithms import build_algorithm
from torchrl_offline.trainers.offline import train

N_OBS, N_ACT = 3, 4


def _actor(one_hot: bool = False) -> ProbabilisticActor:
    return ProbabilisticActor(
        TensorDictModule(nn.Linear(N_OBS, N_ACT), ["observation"], ["logits"]),
        in_keys=["logits"],
        distribution_class=OneHotCategorical if one_hot else torch.distributions.Categorical,
    )


def _batch(n: int = 32, seed: int = 0) -> TensorDict:
    g = torch.Generator().manual_seed(seed)
    logger = torch.softmax(torch.randn(n, N_ACT, generator=g), -1)
    action = torch.multinomial(logger, 1, generator=g).squeeze(-1)
    return TensorDict(
        {
            "observation": torch.randn(n, N_OBS, generator=g),
            "action": action,
            "action_log_prob": logger.gather(-1, action[:, None]).squeeze(-1).log(),
            ("next", "reward"): torch.randn(n, 1, generator=g) + 1.0,
            ("next", "terminated"): torch.ones(n, 1, dtype=torch.bool),
        },
        [n],
    )


def _paper_objective(actor, batch, *, estimator, max_weight, baseline, kappa):
    """The objectives in plain torch. w = min(pi(a|x) / p, M);
    IPS (POEM, BanditNet's translated form): V = mean((r - lambda) w), penalty
    kappa * sqrt(var(u) / n), u = (r - lambda) w, sample variance;
    SNIPS (Norm-POEM): V = sum(r w) / sum(w), penalty kappa * sqrt(sum((r - V)^2 w^2)) / sum(w)."""
    linear = actor.module[0].module
    pi = torch.softmax(linear(batch["observation"]), -1)
    a = batch["action"]
    p = batch["action_log_prob"].exp()
    w = pi[torch.arange(len(a)), a] / p
    if max_weight is not None:
        w = torch.minimum(w, torch.tensor(max_weight))
    r = batch["next", "reward"].squeeze(-1)
    if estimator == "ips":
        u = (r - baseline) * w
        value = u.mean()
        penalty = kappa * torch.sqrt(u.var() / len(u))
    else:
        value = (r * w).sum() / w.sum()
        penalty = kappa * torch.sqrt(((r - value) ** 2 * w**2).sum()) / w.sum()
    return -value, penalty


@pytest.mark.parametrize(
    ("estimator", "max_weight", "baseline", "kappa"),
    [
        ("snips", None, 0.0, 0.0),
        ("snips", 1.5, 0.0, 0.3),
        ("ips", 2.0, 0.7, 0.5),
        ("ips", None, 0.0, 0.0),
    ],
)
def test_matches_the_papers_objectives(estimator, max_weight, baseline, kappa):
    torch.manual_seed(0)
    actor, batch = _actor(), _batch()
    loss = BanditIPSLoss(
        actor, estimator=estimator, max_weight=max_weight, baseline=baseline, variance_penalty=kappa
    )
    out = loss(batch)
    expected, penalty = _paper_objective(
        actor, batch, estimator=estimator, max_weight=max_weight, baseline=baseline, kappa=kappa
    )
    torch.testing.assert_close(out["loss_actor"], expected, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(out["estimated_value"], -expected.detach(), atol=1e-5, rtol=1e-5)
    if kappa:
        torch.testing.assert_close(out["loss_variance"], penalty, atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(loss.variance_loss(batch)[0], penalty, atol=1e-5, rtol=1e-5)
    else:
        assert "loss_variance" not in out.keys()  # not a loss term: skipped by the trainer
    torch.testing.assert_close(loss.actor_loss(batch)[0], expected, atol=1e-5, rtol=1e-5)


def test_one_hot_actions_and_probabilities_give_the_same_loss():
    torch.manual_seed(0)
    actor, batch = _actor(), _batch()
    expected = BanditIPSLoss(actor)(batch)["loss_actor"]
    one_hot = batch.clone().set("action", nn.functional.one_hot(batch["action"], N_ACT))
    hot_actor = _actor(one_hot=True)
    hot_actor.load_state_dict(actor.state_dict())
    got = BanditIPSLoss(hot_actor, action_space="one-hot")(one_hot)["loss_actor"]
    torch.testing.assert_close(got, expected)
    probs = (
        batch.clone().set("action_prob", batch["action_log_prob"].exp()).exclude("action_log_prob")
    )
    torch.testing.assert_close(BanditIPSLoss(actor)(probs)["loss_actor"], expected)


@pytest.mark.parametrize("estimator", ["snips", "ips"])
def test_reduction_none_gives_per_decision_terms_whose_mean_is_the_loss(estimator):
    torch.manual_seed(0)
    actor, batch = _actor(), _batch()
    mean = BanditIPSLoss(actor, estimator=estimator)(batch)["loss_actor"]
    per = BanditIPSLoss(actor, estimator=estimator, reduction="none")(batch)["loss_actor"]
    total = BanditIPSLoss(actor, estimator=estimator, reduction="sum")(batch)["loss_actor"]
    assert per.shape == (32,)
    torch.testing.assert_close(per.mean(), mean)
    torch.testing.assert_close(total, per.sum())


def test_gradients_reach_the_policy_only_through_unclipped_weights():
    torch.manual_seed(0)
    batch = _batch()
    loss = BanditIPSLoss(_actor(), estimator="ips")
    loss(batch)["loss_actor"].backward()
    params = list(loss.actor_network_params.values(True, True))
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in params)
    # every weight clipped: the objective is flat in the policy
    clipped = BanditIPSLoss(_actor(), estimator="ips", max_weight=1e-6)
    clipped(_batch())["loss_actor"].backward()
    grads = [p.grad for p in clipped.actor_network_params.values(True, True)]
    assert all(g is None or torch.count_nonzero(g) == 0 for g in grads)


def test_the_gradient_raises_the_probability_of_well_rewarded_actions():
    """One SGD step on SNIPS moves probability toward the logged action with the high reward."""
    torch.manual_seed(0)
    actor = _actor()
    nn.init.zeros_(actor.module[0].module.weight)
    nn.init.zeros_(actor.module[0].module.bias)
    batch = _batch(2)
    batch["observation"] = torch.zeros(2, N_OBS)
    batch["action"] = torch.tensor([0, 1])
    batch["action_log_prob"] = torch.full((2,), 0.25).log()
    batch["next", "reward"] = torch.tensor([[1.0], [0.0]])
    loss = BanditIPSLoss(actor)
    loss(batch)["loss_actor"].backward()
    with torch.no_grad():
        for p in loss.actor_network_params.values(True, True):
            p -= 1.0 * p.grad
    probs = torch.softmax(actor.module[0].module(torch.zeros(1, N_OBS)), -1)[0]
    assert probs[0] > 0.25 > probs[1]


def test_missing_propensities_and_multi_step_data_are_named():
    loss = BanditIPSLoss(_actor())
    with pytest.raises(OfflineLossError, match="no propensity: neither 'action_log_prob' nor"):
        loss(_batch().exclude("action_log_prob"))
    multi = _batch()
    multi["next", "terminated"][5] = False
    with pytest.raises(OfflineLossError, match="batch index 5 is not terminal.*horizon=1"):
        loss(multi)
    bad = _batch()
    bad["action_log_prob"][7] = 0.5
    with pytest.raises(OfflineLossError, match=r"propensity at batch index 7 is 1\.6"):
        loss(bad)


def test_bad_arguments_are_refused():
    with pytest.raises(ValueError, match="estimator must be one of snips, ips"):
        BanditIPSLoss(_actor(), estimator="dr")
    with pytest.raises(ValueError, match="max_weight"):
        BanditIPSLoss(_actor(), max_weight=0.0)
    with pytest.raises(ValueError, match="variance_penalty"):
        BanditIPSLoss(_actor(), variance_penalty=-1.0)


def test_declared_with_the_papers_defaults():
    decl = registry.get("algorithm", "bandit_ips")
    hp = decl.hyperparameters()
    assert decl.loss_class is BanditIPSLoss and decl.action == "discrete"
    assert (hp["estimator"], hp["max_weight"], hp["variance_penalty"]) == ("snips", None, 0.0)
    assert decl.loss_terms == ("loss_actor", "loss_variance") and not decl.target_update
    obs, act = Unbounded(shape=(N_OBS,)), Categorical(N_ACT)
    assert build_algorithm("bandit_ips", obs, act, hidden_sizes=(8,)).loss_keys == ("loss_actor",)
    penalised = build_algorithm("bandit_ips", obs, act, hidden_sizes=(8,), variance_penalty=0.1)
    assert penalised.loss_keys == ("loss_actor", "loss_variance")


def test_trains_on_a_one_step_log_and_refuses_a_log_without_propensities(tmp_path):
    log = decision_log(64)
    rb = from_logged(log, path=tmp_path / "d", horizon=1)
    algo = build_algorithm("bandit_ips", dataset=rb, hidden_sizes=(8,))
    assert algo.loss.action_space == "categorical"
    result = train(algo, rb, total_steps=5, batch_size=16, progress=False, logger=None)
    assert result.step == 5
    log.pop("action_prob")
    bare = from_logged(log, path=tmp_path / "bare", horizon=1)
    with pytest.raises(OfflineLossError, match="no propensity"):
        train("bandit_ips", bare, total_steps=2, batch_size=16, progress=False, logger=None)
