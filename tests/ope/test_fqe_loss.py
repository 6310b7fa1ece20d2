"""FQELoss: the TD(0) target with the policy's action and target parameters, keys, errors."""

from __future__ import annotations

import pytest
import torch
from tensordict import TensorDict
from tensordict.nn import TensorDictModule
from torch import nn
from torchrl.modules import MLP, NormalParamExtractor, ProbabilisticActor, TanhNormal
from torchrl.objectives import HardUpdate, SoftUpdate
from torchrl.objectives.utils import ValueEstimators

from torchrl_offline.objectives.common import OfflineLossError
from torchrl_offline.ope.fqe_loss import FQELoss
from torchrl_offline.ope.policy import EvaluationPolicy


def _batch(n: int = 8, obs: int = 3, act: int | None = 1) -> TensorDict:
    action = torch.randn(n, act) if act else torch.randint(4, (n,))
    return TensorDict(
        {
            "observation": torch.randn(n, obs),
            "action": action,
            ("next", "observation"): torch.randn(n, obs),
            ("next", "reward"): torch.randn(n, 1),
            ("next", "done"): torch.zeros(n, 1, dtype=torch.bool),
            ("next", "terminated"): torch.zeros(n, 1, dtype=torch.bool),
        },
        [n],
    )


def _continuous_loss(**kwargs) -> FQELoss:
    actor = TensorDictModule(nn.Linear(3, 1), ["observation"], ["action"])
    critic = TensorDictModule(
        MLP(in_features=4, out_features=1, num_cells=[8]),
        ["observation", "action"],
        ["state_action_value"],
    )
    return FQELoss(critic, actor, **kwargs)


def test_loss_target_is_td0_with_the_policy_action_and_target_params():
    loss = _continuous_loss()
    loss.make_value_estimator(gamma=0.5)
    batch = _batch()
    batch["next", "terminated"][:4] = True
    out = loss(batch.clone())
    actor = loss.evaluation_policy.actor
    with torch.no_grad():
        a2 = actor(batch["next"].select("observation").clone())["action"]
        inputs = torch.cat([batch["next", "observation"], a2], -1)
        with loss.target_qvalue_network_params.to_module(loss.qvalue_network):
            q2 = loss.qvalue_network.module(inputs)
        alive = (~batch["next", "terminated"]).float()
        target = batch["next", "reward"] + 0.5 * alive * q2
    torch.testing.assert_close(out["target_value"], target.mean())
    assert set(out.keys()) == {"loss_qvalue", "state_action_value", "target_value", "td_error"}


def test_loss_reduction_none_and_priority_key():
    loss = _continuous_loss(reduction="none")
    loss.set_keys(priority="my_priority")
    batch = _batch()
    out = loss(batch)
    assert out["loss_qvalue"].shape == (8,)
    assert batch["my_priority"].shape == (8,)


def test_only_the_critic_is_trained_and_target_updaters_work():
    loss = _continuous_loss()
    params = dict(loss.named_parameters())
    assert all("qvalue_network" in k for k in params), sorted(params)
    soft = SoftUpdate(loss, tau=0.5)
    hard = HardUpdate(loss, value_network_update_interval=2)
    out = loss(_batch())
    out["loss_qvalue"].backward()
    with torch.no_grad():
        for p in loss.qvalue_network_params.values(True, True):
            p.add_(1.0)

    def leaves(params):
        return {k: v.detach().clone() for k, v in params.items(True, True)}

    before = leaves(loss.target_qvalue_network_params)
    soft.step()
    after = leaves(loss.target_qvalue_network_params)
    source = leaves(loss.qvalue_network_params)
    for key, value in source.items():
        torch.testing.assert_close(after[key], 0.5 * before[key] + 0.5 * value)
    for _ in range(3):  # TorchRL's HardUpdate copies on the (interval + 1)-th call
        hard.step()
    torch.testing.assert_close(leaves(loss.target_qvalue_network_params), source)


def test_only_td0_is_supported():
    loss = _continuous_loss()
    with pytest.raises(NotImplementedError):
        loss.make_value_estimator(ValueEstimators.TDLambda, gamma=0.9, lmbda=0.9)


def test_discrete_loss_with_greedy_actor_and_epsilon():
    critic = TensorDictModule(nn.Linear(3, 4), ["observation"], ["state_action_value"])
    greedy = TensorDictModule(
        lambda obs: obs[..., :1].gt(0).long().squeeze(-1) * 2, ["observation"], ["action"]
    )
    loss = FQELoss(critic, greedy, action_space="categorical")
    batch = _batch(act=None)
    obs = batch["next", "observation"]
    v = loss.state_value(batch["next"])
    q = critic(batch["next"].clone())["state_action_value"]
    expected = torch.where(obs[:, 0] > 0, q[:, 2], q[:, 0])
    torch.testing.assert_close(v, expected)
    eps_loss = FQELoss(critic, greedy, action_space="categorical", epsilon=0.4)
    v_eps = eps_loss.state_value(batch["next"])
    torch.testing.assert_close(v_eps, 0.6 * expected + 0.4 * q.mean(-1))
    assert loss(batch)["loss_qvalue"].shape == ()


def test_evaluation_policy_and_tanh_normal_actor_are_accepted():
    net = nn.Sequential(nn.Linear(3, 2), NormalParamExtractor())
    actor = ProbabilisticActor(
        TensorDictModule(net, ["observation"], ["loc", "scale"]),
        in_keys=["loc", "scale"],
        distribution_class=TanhNormal,
    )
    critic = TensorDictModule(
        MLP(in_features=4, out_features=1, num_cells=[8]), ["observation", "action"], ["q"]
    )
    loss = FQELoss(critic, EvaluationPolicy(actor), num_action_samples=3)
    loss.set_keys(state_action_value="q")
    out = loss(_batch())
    assert torch.isfinite(out["loss_qvalue"])


def test_bad_inputs_raise_clear_errors():
    loss = _continuous_loss()
    batch = _batch()
    batch["observation"][2, 0] = float("nan")
    with pytest.raises(OfflineLossError, match=r"'observation'.*\(2,\)"):
        loss(batch)
    with pytest.raises(OfflineLossError, match="missing the key"):
        loss(_batch().exclude(("next", "terminated")))
    critic = TensorDictModule(nn.Linear(3, 4), ["observation"], ["state_action_value"])
    greedy = TensorDictModule(lambda obs: obs[..., 0].gt(0).long(), ["observation"], ["action"])
    dloss = FQELoss(critic, greedy, action_space="categorical")
    bad = _batch(act=None)
    bad["action"][5] = 7
    with pytest.raises(OfflineLossError, match=r"outside \[0, 4\) \(first at flat batch index 5\)"):
        dloss(bad)
    wild = TensorDictModule(lambda obs: torch.full(obs.shape[:-1], 9), ["observation"], ["action"])
    with pytest.raises(OfflineLossError, match="mismatched action spaces"):
        FQELoss(critic, wild, action_space="categorical")(_batch(act=None))
    with pytest.raises(ValueError, match="loss_function"):
        _continuous_loss(loss_function="huber")


@pytest.mark.parametrize("space", ["one_hot", "categorical"])
def test_logged_action_encoding_need_not_match_the_policy(space):
    # Regression: a one-hot policy (QValueActor with a OneHot spec) on index actions raised
    # "one-hot key has 64 entries", and a categorical one on one-hot actions (load_minari's
    # one_hot_actions=True) crashed in gather; IS/WIS accepted both encodings.
    critic = TensorDictModule(nn.Linear(3, 4), ["observation"], ["state_action_value"])
    greedy = TensorDictModule(lambda obs: obs[..., 0].gt(0).long(), ["observation"], ["action"])
    loss = FQELoss(critic, greedy, action_space=space, epsilon=0.2)
    obs = torch.randn(8, 3, generator=torch.Generator().manual_seed(0))
    index = torch.tensor([0, 3, 1, 2, 2, 0, 1, 3])
    q = critic(TensorDict({"observation": obs}, [8]))["state_action_value"]
    expected = q.gather(-1, index[:, None]).squeeze(-1)
    for action in (index, index[:, None], torch.nn.functional.one_hot(index, 4)):
        td = TensorDict({"observation": obs, "action": action}, [8])
        torch.testing.assert_close(loss.state_action_value(td), expected)
    with pytest.raises(OfflineLossError, match="has 3 entries"):
        bad = TensorDict({"observation": obs, "action": torch.zeros(8, 3, dtype=torch.long)}, [8])
        loss.state_action_value(bad)


def _critics(n: int, discrete: bool) -> list[TensorDictModule]:
    torch.manual_seed(0)
    if discrete:
        return [
            TensorDictModule(nn.Linear(3, 4), ["observation"], ["state_action_value"])
            for _ in range(n)
        ]
    return [
        TensorDictModule(
            MLP(in_features=4, out_features=1, num_cells=[8]),
            ["observation", "action"],
            ["state_action_value"],
        )
        for _ in range(n)
    ]


@pytest.mark.parametrize("discrete", [False, True])
def test_an_ensemble_is_its_members_computed_at_once(discrete):
    """Member i of ``num_qvalue_nets=E`` gives exactly the loss of the single critic i."""
    if discrete:
        actor = ProbabilisticActor(
            TensorDictModule(nn.Linear(3, 4), ["observation"], ["logits"]),
            in_keys=["logits"],
            distribution_class=torch.distributions.Categorical,
        )
    else:
        actor = TensorDictModule(nn.Linear(3, 1), ["observation"], ["action"])
    critics = _critics(3, discrete)
    batch = _batch(act=None if discrete else 1)
    batch["next", "terminated"][:3] = True
    kw = dict(reduction="none", action_space="categorical" if discrete else None)
    ensemble = FQELoss(critics, actor, num_qvalue_nets=3, **kw)
    ensemble.make_value_estimator(gamma=0.9)
    written = batch.clone()
    out = ensemble(written)
    assert out.batch_size == (3, 8)
    torch.testing.assert_close(written["td_error"], out["td_error"].mean(0))  # the priority
    for i, critic in enumerate(critics):
        single = FQELoss(critic, actor, **kw)
        single.make_value_estimator(gamma=0.9)
        one = single(batch.clone())
        for key in ("loss_qvalue", "target_value", "state_action_value"):
            torch.testing.assert_close(out[key][i], one[key])
        torch.testing.assert_close(ensemble.state_value(batch, member=i), single.state_value(batch))
    assert ensemble.state_value(batch).shape == (3, 8)


def test_greedy_mode_evaluates_the_deterministic_action_of_a_distribution():
    torch.manual_seed(0)
    actor = ProbabilisticActor(
        TensorDictModule(nn.Linear(3, 4), ["observation"], ["logits"]),
        in_keys=["logits"],
        distribution_class=torch.distributions.Categorical,
    )
    critic = _critics(1, True)[0]
    batch = _batch(act=None)
    greedy = FQELoss(critic, actor, action_space="categorical", policy_mode="greedy")
    stochastic = FQELoss(critic, actor, action_space="categorical")
    assert (greedy.policy_mode, stochastic.policy_mode) == ("greedy", "stochastic")
    q = critic(batch.select("observation").clone())["state_action_value"]
    logits = actor.module[0](batch.select("observation").clone())["logits"]
    best = q.gather(-1, logits.argmax(-1, keepdim=True)).squeeze(-1)
    torch.testing.assert_close(greedy.state_value(batch), best)
    torch.testing.assert_close(stochastic.state_value(batch), (logits.softmax(-1) * q).sum(-1))
    with pytest.raises(ValueError, match="smooth the greedy policy"):
        FQELoss(critic, actor, epsilon=0.1, policy_mode="stochastic")
