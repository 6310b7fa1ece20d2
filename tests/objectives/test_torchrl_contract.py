"""TorchRL's call semantics, kept by every loss that shares a TorchRL name.

One test per bug and API gap found when TorchRL's own test suite and scripts ran on our
classes: shared trunks, target parameters, the critic's output key, validity masks,
value estimators, per-term methods, what ``forward`` returns and when, and the errors
and warnings of ``BCLoss``. The math defaults (paper values) are not part of the
contract; call semantics are.
"""

from __future__ import annotations

import pytest
import torch
from tensordict import TensorDict
from tensordict.nn import (
    NormalParamExtractor,
    ProbabilisticTensorDictModule,
    ProbabilisticTensorDictSequential,
    TensorDictModule,
    TensorDictSequential,
)
from torch import nn
from torchrl.data import Bounded, Categorical
from torchrl.modules import MLP, ProbabilisticActor, QValueActor, TanhModule, TanhNormal
from torchrl.objectives import IQLLoss as TorchRLIQLLoss
from torchrl.objectives import SoftUpdate
from torchrl.objectives.utils import ValueEstimators
from torchrl.objectives.value import TDLambdaEstimator

from torchrl_offline.objectives import (
    ActorOutputError,
    BCLoss,
    CQLLoss,
    DiscreteCQLLoss,
    DiscreteIQLLoss,
    IQLLoss,
    OfflineLossError,
    TD3BCLoss,
)

OBS, ACT, HIDDEN, B = 3, 2, 8, 6
SPEC = Bounded(-torch.ones(ACT), torch.ones(ACT), (ACT,))


def mlp(n_in, n_out):
    return MLP(in_features=n_in, out_features=n_out, num_cells=[HIDDEN], activation_class=nn.ReLU)


def batch(b=B, *, time=None, discrete=None, seed=0):
    g = torch.Generator().manual_seed(seed)
    shape = (b,) if time is None else (b, time)
    if discrete is None:
        action = torch.rand(*shape, ACT, generator=g) * 1.8 - 0.9
    else:
        action = torch.randint(discrete, shape, generator=g)
    return TensorDict(
        {
            "observation": torch.randn(*shape, OBS, generator=g),
            "action": action,
            ("next", "observation"): torch.randn(*shape, OBS, generator=g),
            ("next", "reward"): torch.randn(*shape, 1, generator=g),
            ("next", "done"): torch.zeros(*shape, 1, dtype=torch.bool),
            ("next", "terminated"): torch.zeros(*shape, 1, dtype=torch.bool),
        },
        shape,
    )


def tanh_normal_actor(trunk=None):
    """A TanhNormal actor; with ``trunk``, the trunk writes "hidden" first."""
    if trunk is None:
        body = TensorDictModule(
            nn.Sequential(mlp(OBS, 2 * ACT), NormalParamExtractor()),
            in_keys=["observation"],
            out_keys=["loc", "scale"],
        )
        return ProbabilisticActor(
            body, in_keys=["loc", "scale"], spec=SPEC, distribution_class=TanhNormal
        )
    return ProbabilisticTensorDictSequential(
        trunk,
        TensorDictModule(
            nn.Sequential(mlp(HIDDEN, 2 * ACT), NormalParamExtractor()),
            in_keys=["hidden"],
            out_keys=["loc", "scale"],
        ),
        ProbabilisticTensorDictModule(
            in_keys=["loc", "scale"], out_keys=["action"], distribution_class=TanhNormal
        ),
    )


def q_critic(hidden_size=HIDDEN):
    """``Q(s, a)`` built as TorchRL users build one: a trunk writing "hidden", a head."""
    return TensorDictSequential(
        TensorDictModule(mlp(OBS + ACT, hidden_size), ["observation", "action"], ["hidden"]),
        TensorDictModule(nn.Linear(hidden_size, 1), ["hidden"], ["state_action_value"]),
    )


def shared_trunk_q(trunk):
    """``Q(s, a)`` on top of a trunk shared with the actor (as in TorchRL's tests)."""
    return TensorDictSequential(
        trunk,
        TensorDictModule(mlp(HIDDEN + ACT, 1), ["hidden", "action"], ["state_action_value"]),
    )


def plain_q():
    return TensorDictModule(mlp(OBS + ACT, 1), ["observation", "action"], ["state_action_value"])


def value_net(trunk=None):
    if trunk is None:
        return TensorDictModule(mlp(OBS, 1), ["observation"], ["state_value"])
    return TensorDictSequential(
        trunk, TensorDictModule(nn.Linear(HIDDEN, 1), ["hidden"], ["state_value"])
    )


def td3_actor(*, layered=False):
    """TD3's tanh actor; ``layered``: a trunk and a head, evaluated with swapped params."""
    if layered:
        return TensorDictSequential(
            TensorDictModule(mlp(OBS, HIDDEN), ["observation"], ["hidden"]),
            TensorDictModule(nn.Linear(HIDDEN, ACT), ["hidden"], ["param"]),
            TanhModule(in_keys=["param"], out_keys=["action"], spec=SPEC),
        )
    return TensorDictSequential(
        TensorDictModule(mlp(OBS, ACT), ["observation"], ["param"]),
        TanhModule(in_keys=["param"], out_keys=["action"], spec=SPEC),
    )


def nonzero(grads):
    return [g is not None and bool(g.abs().sum() > 0) for g in grads]


# ----------------------------------------------------------------------------- shared trunk
@pytest.mark.parametrize("separate_losses", [False, True])
def test_iql_shared_trunk_gets_the_actor_gradient(separate_losses):
    """Bug 1: an actor and a value network sharing a trunk. The actor loss reaches the
    trunk through the actor's parameters (TorchRL: all of them), whatever
    ``separate_losses`` is, and the parameters an optimizer holds are still the ones
    that get gradients after a forward pass."""
    torch.manual_seed(0)
    trunk = TensorDictModule(mlp(OBS, HIDDEN), ["observation"], ["hidden"])
    loss = IQLLoss(
        tanh_normal_actor(trunk),
        shared_trunk_q(trunk),
        value_net(trunk),
        separate_losses=separate_losses,
    )
    held = list(loss.actor_network_params.values(True, True))
    held_by_optimizer = dict(loss.named_parameters())
    out = loss(batch())
    assert dict(loss.named_parameters()) == held_by_optimizer  # same objects
    out["loss_actor"].backward()
    assert all(nonzero([p.grad for p in held]))
    trunk_in_value = list(loss.value_network_params.values(True, True))[:2]
    grads = [p.grad for p in trunk_in_value]
    # shared parameters: the same objects (separate_losses=False) get the actor's
    # gradient; with separate_losses=True the value's copies are detached from it
    assert all(nonzero(grads)) != separate_losses


def test_discrete_iql_shared_trunk_gets_the_actor_gradient():
    torch.manual_seed(0)
    trunk = TensorDictModule(mlp(OBS, HIDDEN), ["observation"], ["hidden"])
    actor = ProbabilisticTensorDictSequential(
        trunk,
        TensorDictModule(nn.Linear(HIDDEN, 3), ["hidden"], ["logits"]),
        ProbabilisticTensorDictModule(
            in_keys=["logits"],
            out_keys=["action"],
            distribution_class=torch.distributions.Categorical,
        ),
    )
    qvalue = TensorDictSequential(
        trunk, TensorDictModule(nn.Linear(HIDDEN, 3), ["hidden"], ["state_action_value"])
    )
    loss = DiscreteIQLLoss(actor, qvalue, value_net(trunk), action_space="categorical")
    held = list(loss.actor_network_params.values(True, True))
    loss(batch(discrete=3))["loss_actor"].backward()
    assert all(nonzero([p.grad for p in held]))


# ----------------------------------------------------------------------------- targets
@pytest.mark.parametrize("name", ["td3_bc", "discrete_cql", "cql", "iql"])
def test_targets_stay_non_trainable_after_forward(name):
    """Bug 2: a forward pass must not turn target tensors into trainable parameters;
    TorchRL's ``SoftUpdate`` built after a forward call refuses those."""
    torch.manual_seed(0)
    if name == "td3_bc":
        loss = TD3BCLoss(td3_actor(layered=True), q_critic(), action_spec=SPEC)
        data = batch()
    elif name == "discrete_cql":
        net = QValueActor(mlp(OBS, 3), in_keys=["observation"], spec=Categorical(3))
        loss, data = DiscreteCQLLoss(net, action_space="categorical"), batch(discrete=3)
    elif name == "cql":
        loss, data = CQLLoss(tanh_normal_actor(), q_critic(), action_spec=SPEC), batch()
    else:
        loss, data = IQLLoss(tanh_normal_actor(), q_critic(), value_net()), batch()
    loss.make_value_estimator(gamma=0.9)
    loss(data)
    for pname, _ in loss.named_parameters():
        assert not pname.startswith("target_"), pname
    updater = SoftUpdate(loss, tau=0.5)
    updater.step()
    for pname, buf in loss.named_buffers():
        if pname.startswith("target_"):
            assert not buf.requires_grad, pname


# ----------------------------------------------------------------------------- critic key
@pytest.mark.parametrize("hidden_size", [1, 4])
def test_td3_bc_reads_q_from_state_action_value(hidden_size):
    """Bug 3: Q is the critic's ``state_action_value``, not its first output key."""
    torch.manual_seed(0)
    critic = q_critic(hidden_size)
    loss = TD3BCLoss(td3_actor(), critic, action_spec=SPEC)
    loss.make_value_estimator(gamma=0.9)
    data = batch()
    _, meta = loss.qvalue_loss(data)
    params = loss.qvalue_network_params[0]
    with params.to_module(loss.qvalue_network):
        expected = loss.qvalue_network(data.clone())["state_action_value"].squeeze(-1)
    torch.testing.assert_close(meta["pred_value"][0], expected.detach())


@pytest.mark.parametrize("hidden_size", [1, 4])
def test_cql_reads_q_from_state_action_value(hidden_size):
    torch.manual_seed(0)
    loss = CQLLoss(tanh_normal_actor(), q_critic(hidden_size), action_spec=SPEC)
    loss.make_value_estimator(gamma=0.9)
    data = batch()
    loss.q_loss(data)
    params = loss.qvalue_network_params[1]
    with params.to_module(loss.qvalue_network):
        expected = loss.qvalue_network(data.clone())["state_action_value"]
    torch.testing.assert_close(data["pred_q2"].detach(), expected.detach())


# ----------------------------------------------------------------------------- masks
def _masked(data, row=0, reward=1e4):
    data = data.clone()
    data["next", "reward"][row] = reward
    data["collector", "mask"] = torch.ones(data.shape, dtype=torch.bool)
    data["collector", "mask"][row] = False
    return data


def test_cql_terms_ignore_masked_rows():
    """Bug 4: a masked row (huge reward) does not move CQL's losses (TorchRL's do not)."""
    torch.manual_seed(0)
    loss = CQLLoss(tanh_normal_actor(), plain_q(), action_spec=SPEC)
    loss.make_value_estimator(gamma=0.9)
    out = loss(_masked(batch()))
    assert out["loss_qvalue"] < 100
    loss.loss_mask_key = None  # TorchRL's switch: no masking at all
    assert loss(_masked(batch()))["loss_qvalue"] > 1e6


def test_discrete_cql_terms_ignore_masked_rows():
    torch.manual_seed(0)
    net = QValueActor(mlp(OBS, 3), in_keys=["observation"], spec=Categorical(3))
    loss = DiscreteCQLLoss(net, action_space="categorical")
    loss.make_value_estimator(gamma=0.9)
    data = batch(discrete=3)
    masked = _masked(data)
    out = loss(masked)
    # the mean over the 5 real rows, exactly
    real = loss(data[1:].clone())
    torch.testing.assert_close(out["loss_qvalue"], real["loss_qvalue"])
    torch.testing.assert_close(out["loss_cql"], real["loss_cql"])


def test_iql_mask_semantics_match_torchrl():
    """TorchRL's IQL masks its actor and value terms but not its critic term (the
    critic's batch is selected without the mask); ours gives the same numbers."""
    torch.manual_seed(0)
    actor, q, v = tanh_normal_actor(), plain_q(), value_net()
    kwargs = {"expectile": 0.5, "temperature": 1.0, "loss_function": "smooth_l1"}
    ours = IQLLoss(actor, q, v, action_eps=0.0, **kwargs)
    theirs = TorchRLIQLLoss(actor, q, v, **kwargs)
    theirs.load_state_dict(ours.state_dict())
    for loss in (ours, theirs):
        loss.make_value_estimator(gamma=0.9)
    data = _masked(batch(), reward=3.0)
    mine, ref = ours(data.clone()), theirs(data.clone())
    for key in ("loss_actor", "loss_qvalue", "loss_value"):
        torch.testing.assert_close(mine[key], ref[key], msg=key)


def test_discrete_iql_mask_semantics_match_torchrl():
    """TorchRL's discrete IQL masks all three terms, its critic term included."""
    from torchrl.objectives import DiscreteIQLLoss as TorchRLDiscreteIQLLoss

    torch.manual_seed(0)
    actor = ProbabilisticActor(
        TensorDictModule(mlp(OBS, 3), ["observation"], ["logits"]),
        in_keys=["logits"],
        spec=Categorical(3),
        distribution_class=torch.distributions.Categorical,
    )
    q = TensorDictModule(mlp(OBS, 3), ["observation"], ["state_action_value"])
    kwargs = {"expectile": 0.5, "temperature": 1.0, "loss_function": "smooth_l1"}
    ours = DiscreteIQLLoss(actor, q, value_net(), action_space="categorical", **kwargs)
    theirs = TorchRLDiscreteIQLLoss(actor, q, value_net(), action_space="categorical", **kwargs)
    theirs.load_state_dict(ours.state_dict())
    for loss in (ours, theirs):
        loss.make_value_estimator(gamma=0.9)
    data = _masked(batch(discrete=3), reward=1e3)
    mine, ref = ours(data.clone()), theirs(data.clone())
    for key in ("loss_actor", "loss_qvalue", "loss_value"):
        torch.testing.assert_close(mine[key], ref[key], msg=key)
    assert mine["loss_qvalue"] < 100


# ----------------------------------------------------------------------------- estimators
@pytest.mark.parametrize("value_type", [ValueEstimators.TD1, ValueEstimators.TDLambda])
def test_cql_accepts_td1_and_td_lambda(value_type):
    torch.manual_seed(0)
    loss = CQLLoss(tanh_normal_actor(), plain_q(), action_spec=SPEC)
    loss.make_value_estimator(value_type, gamma=0.9)
    out = loss(batch(2, time=5))
    assert out["loss_qvalue"].isfinite()


def test_discrete_cql_td_lambda_target_is_torchrls_estimator():
    """The TD(lambda) target over a [B, T] batch equals TorchRL's estimator fed with
    the target network's greedy value of the next states."""
    torch.manual_seed(0)
    net = QValueActor(mlp(OBS, 3), in_keys=["observation"], spec=Categorical(3))
    loss = DiscreteCQLLoss(net, action_space="categorical")
    loss.make_value_estimator(ValueEstimators.TDLambda, gamma=0.9, lmbda=0.8)
    data = batch(2, time=5, discrete=3)
    data["next", "done"][0, 2] = data["next", "terminated"][0, 2] = True
    _, meta = loss.value_loss(data)
    with torch.no_grad(), loss.target_value_network_params.to_module(loss.value_network):
        next_q = loss.value_network(data["next"].clone())["action_value"].max(-1).values
    expected = TDLambdaEstimator(gamma=0.9, lmbda=0.8, value_network=None).value_estimate(
        data.clone(), next_value=next_q.unsqueeze(-1)
    )
    torch.testing.assert_close(meta["target_value"].reshape(2, 5), expected.squeeze(-1))


def test_discrete_cql_quantiles_refuse_multistep_estimators():
    net = nn.Sequential(nn.Linear(OBS, 3 * 4))
    loss = DiscreteCQLLoss(net, action_space="categorical", num_quantiles=4)
    with pytest.raises(OfflineLossError, match="TD0"):
        loss.make_value_estimator(ValueEstimators.TDLambda, gamma=0.9)


# ----------------------------------------------------------------------------- per-term methods
def test_cql_per_term_methods_route_gradients():
    torch.manual_seed(0)
    loss = CQLLoss(tanh_normal_actor(), plain_q(), action_spec=SPEC, with_lagrange=True)
    loss.make_value_estimator(gamma=0.9)
    data = batch()
    actor = list(loss.actor_network_params.values(True, True))
    critic = list(loss.qvalue_network_params.values(True, True))

    def grads_of(term):
        loss.zero_grad(set_to_none=True)
        term.backward(retain_graph=True)
        return (
            any(nonzero([p.grad for p in actor])),
            any(nonzero([p.grad for p in critic])),
            loss.log_alpha.grad is not None,
            loss.log_alpha_prime.grad is not None,
        )

    loss_actor, actor_meta = loss.actor_loss(data)
    assert grads_of(loss_actor) == (True, False, False, False)
    assert grads_of(loss.actor_bc_loss(data)[0]) == (True, False, False, False)
    assert grads_of(loss.alpha_loss(actor_meta, mask_tensordict=data)[0]) == (
        False,
        False,
        True,
        False,
    )
    with pytest.raises(KeyError, match="q_loss before cql_loss"):
        loss.cql_loss(data.clone())
    assert grads_of(loss.q_loss(data)[0]) == (False, True, False, False)
    assert grads_of(loss.cql_loss(data)[0]) == (False, True, False, False)
    assert grads_of(loss.alpha_prime_loss(data)[0]) == (False, False, False, True)
    assert loss.target_entropy.item() == -ACT


@pytest.mark.parametrize("reduction", ["mean", "sum"])
def test_cql_alpha_prime_loss_is_a_batch_mean_whatever_the_reduction(reduction):
    torch.manual_seed(0)
    loss = CQLLoss(
        tanh_normal_actor(),
        plain_q(),
        action_spec=SPEC,
        with_lagrange=True,
        lagrange_thresh=1.0,
        reduction=reduction,
    )
    data = batch()
    data["cql_q1_loss"] = torch.arange(B, dtype=torch.float32)
    data["cql_q2_loss"] = torch.ones(B)
    value, _ = loss.alpha_prime_loss(data)
    expected = -(torch.arange(B) + 1.0).div(2).sub(1.0).mean()  # alpha' = 1 at init
    torch.testing.assert_close(value, expected)


def test_cql_q_loss_equals_forwards_critic_term_when_sampling_does_not_matter():
    """With critics that ignore the action, the policy's samples do not enter the
    Bellman target: ``q_loss`` and ``forward`` compute the same ``loss_qvalue``."""
    torch.manual_seed(0)
    loss = CQLLoss(tanh_normal_actor(), plain_q(), action_spec=SPEC)
    with torch.no_grad():
        for w in loss.qvalue_network_params.values(True, True):
            if w.ndim == 3 and w.shape[-1] == OBS + ACT:
                w[..., OBS:] = 0  # the action columns of the first layer
        for w in loss.target_qvalue_network_params.values(True, True):
            if w.ndim == 3 and w.shape[-1] == OBS + ACT:
                w[..., OBS:] = 0
    loss.make_value_estimator(gamma=0.9)
    data = batch()
    torch.testing.assert_close(loss.q_loss(data.clone())[0], loss(data.clone())["loss_qvalue"])


def test_discrete_cql_forward_is_value_loss_plus_cql_loss():
    torch.manual_seed(0)
    net = QValueActor(mlp(OBS, 3), in_keys=["observation"], spec=Categorical(3))
    loss = DiscreteCQLLoss(net, action_space="categorical")
    loss.make_value_estimator(gamma=0.9)
    data = batch(discrete=3)
    out = loss(data.clone())
    with pytest.raises(KeyError, match="value_loss before cql_loss"):
        loss.cql_loss(data.clone())
    td = data.clone()
    loss_q, _ = loss.value_loss(td)
    assert td["pred_val"].shape == (B, 3) and td["pred_val"].requires_grad
    loss_cql, _ = loss.cql_loss(td)
    torch.testing.assert_close(out["loss_qvalue"], loss_q)
    torch.testing.assert_close(out["loss_cql"], loss_cql)


def test_iql_torchrl_attributes_and_expectile_range():
    loss = IQLLoss(tanh_normal_actor(), plain_q(), value_net(), expectile=1.0)
    assert loss.delay_qvalue is True and loss.expectile == 1.0
    assert IQLLoss(tanh_normal_actor(), plain_q(), value_net(), expectile=0.0).expectile == 0.0
    with pytest.raises(ValueError, match=r"expectile must be in \[0, 1\]"):
        IQLLoss(tanh_normal_actor(), plain_q(), value_net(), expectile=1.5)


def test_td3_bc_forward_has_no_policy_delay():
    torch.manual_seed(0)
    loss = TD3BCLoss(td3_actor(), plain_q(), action_spec=SPEC)
    loss.make_value_estimator(gamma=0.9)
    for _ in range(2):
        out = loss(batch())
        assert out["loss_actor"].requires_grad


# ----------------------------------------------------------------------------- BCLoss
def det_bc_actor(out_key="action"):
    return TensorDictModule(nn.Linear(OBS, ACT), ["observation"], [out_key])


def test_bc_absent_pad_mask_means_no_mask():
    loss = BCLoss(det_bc_actor(), loss_function="l1")
    loss.set_keys(pad_mask="is_pad")
    assert "is_pad" in loss.in_keys
    data = batch().select("observation", "action")
    plain = BCLoss(det_bc_actor(), loss_function="l1")
    plain.load_state_dict(loss.state_dict())
    torch.testing.assert_close(loss(data)["loss_bc"], plain(data)["loss_bc"])
    data["is_pad"] = torch.zeros(B, dtype=torch.bool)
    data["is_pad"][0] = True
    data["action"][0] = 1e6
    assert loss(data)["loss_bc"] < 10


def test_bc_honours_the_collector_mask():
    loss = BCLoss(det_bc_actor(), loss_function="l1")
    data = batch().select("observation", "action")
    masked = data.clone()
    masked["action"][0] = 1e6
    masked["collector", "mask"] = torch.arange(B) > 0
    torch.testing.assert_close(loss(masked)["loss_bc"], loss(data[1:].clone())["loss_bc"])


def test_bc_action_key_errors_and_warnings_are_torchrls():
    data = batch().select("observation")
    data["expert"] = torch.randn(B, ACT)
    loss = BCLoss(det_bc_actor("prediction"))
    loss.set_keys(action="expert")
    with pytest.raises(RuntimeError, match="did not write a prediction"):
        loss(data)
    with pytest.raises(ActorOutputError):  # also our ValueError subclass
        loss(data)
    legacy = BCLoss(det_bc_actor("action"))
    legacy.set_keys(action="expert")
    with pytest.warns(FutureWarning, match="hardcoded 'action' key"):
        assert legacy(data)["loss_bc"].requires_grad


def test_bc_pad_mask_wider_than_the_loss_is_a_runtime_error():
    loss = BCLoss(det_bc_actor(), loss_function="l1")
    loss.set_keys(pad_mask="is_pad")
    data = batch().select("observation", "action")
    data["is_pad"] = torch.zeros(B, ACT, 2, dtype=torch.bool)
    with pytest.raises(RuntimeError, match="more dimensions"):
        loss(data)


def test_bc_reports_a_nan_not_an_absent_pad_mask():
    loss = BCLoss(det_bc_actor(), loss_function="l1")
    loss.set_keys(pad_mask="is_pad")
    data = batch().select("observation", "action")
    data["observation"][2, 0] = float("nan")
    with pytest.raises(OfflineLossError, match="'observation' holds NaN/inf"):
        loss(data)


def test_cql_mean_backup_q_loss_equals_forwards_critic_term():
    """With ``backup_action="mean"`` the target is deterministic given the networks:
    ``q_loss`` and ``forward`` agree for any critic."""
    torch.manual_seed(0)
    loss = CQLLoss(tanh_normal_actor(), plain_q(), action_spec=SPEC, backup_action="mean")
    loss.make_value_estimator(gamma=0.9)
    data = batch()
    torch.testing.assert_close(loss.q_loss(data.clone())[0], loss(data.clone())["loss_qvalue"])
    with pytest.raises(ValueError, match="backup_action"):
        CQLLoss(tanh_normal_actor(), plain_q(), action_spec=SPEC, backup_action="max")
