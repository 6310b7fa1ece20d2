"""FusedSoftUpdate against TorchRL's SoftUpdate, and the cheap finiteness checks."""

from __future__ import annotations

import copy

import pytest
import torch
from tensordict import TensorDict
from tensordict.nn import NormalParamExtractor, TensorDictModule
from torchrl.data import Bounded
from torchrl.modules import MLP, ProbabilisticActor, TanhNormal, ValueOperator
from torchrl.objectives import SoftUpdate

from torchrl_offline.objectives.common import (
    OfflineLossError,
    check_batch,
    check_finite_losses,
    ensemble_apply,
    module_apply,
)
from torchrl_offline.objectives.iql import IQLLoss
from torchrl_offline.objectives.target_update import FusedSoftUpdate


def _iql(seed: int = 0) -> IQLLoss:
    torch.manual_seed(seed)
    n_obs, n_act = 3, 2
    spec = Bounded(-torch.ones(n_act), torch.ones(n_act), (n_act,))
    actor = ProbabilisticActor(
        TensorDictModule(
            torch.nn.Sequential(
                MLP(in_features=n_obs, out_features=2 * n_act, num_cells=[8]),
                NormalParamExtractor(),
            ),
            in_keys=["observation"],
            out_keys=["loc", "scale"],
        ),
        in_keys=["loc", "scale"],
        spec=spec,
        distribution_class=TanhNormal,
    )
    qvalue = ValueOperator(
        MLP(in_features=n_obs + n_act, out_features=1, num_cells=[8]),
        in_keys=["observation", "action"],
    )
    value = ValueOperator(MLP(in_features=n_obs, out_features=1, num_cells=[8]), ["observation"])
    return IQLLoss(actor, qvalue, value)


def _perturb(loss: IQLLoss, seed: int) -> None:
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in loss.qvalue_network_params.values(True, True):
            p.add_(torch.randn(p.shape, generator=gen, dtype=p.dtype))


def _targets(loss: IQLLoss) -> list[torch.Tensor]:
    return [t.clone() for t in loss.target_qvalue_network_params.values(True, True)]


def test_fused_soft_update_is_bitwise_torchrl_soft_update():
    ours, theirs = _iql(), _iql()
    fused, reference = FusedSoftUpdate(ours, tau=0.05), SoftUpdate(theirs, tau=0.05)
    before = _targets(ours)
    for step in range(4):
        _perturb(ours, step)
        _perturb(theirs, step)
        fused.step()
        reference.step()
    after = _targets(ours)
    assert all(torch.equal(a, b) for a, b in zip(after, _targets(theirs)))
    assert not all(torch.equal(a, b) for a, b in zip(before, after))
    # the sources are untouched
    src_ours = list(ours.qvalue_network_params.values(True, True))
    src_theirs = list(theirs.qvalue_network_params.values(True, True))
    assert all(torch.equal(a, b) for a, b in zip(src_ours, src_theirs))


def test_fused_soft_update_after_a_forward_that_swaps_target_params():
    # DiscreteCQLLoss evaluates its target with ``params.to_module``, after which tensordict
    # holds the targets as leaf Parameters flagged requires_grad (same storage, no graph).
    from torchrl.modules import QValueActor

    from torchrl_offline.objectives.cql import DiscreteCQLLoss

    torch.manual_seed(0)
    net = QValueActor(
        MLP(in_features=3, out_features=2, num_cells=[8]),
        in_keys=["observation"],
        action_space="categorical",
    )
    ours = DiscreteCQLLoss(net, action_space="categorical")
    theirs = copy.deepcopy(ours)
    fused, reference = FusedSoftUpdate(ours, tau=0.1), SoftUpdate(theirs, tau=0.1)
    batch = TensorDict(
        {
            "observation": torch.randn(4, 3),
            "action": torch.tensor([0, 1, 1, 0]),
            ("next", "observation"): torch.randn(4, 3),
            ("next", "reward"): torch.randn(4, 1),
            ("next", "done"): torch.zeros(4, 1, dtype=torch.bool),
            ("next", "terminated"): torch.zeros(4, 1, dtype=torch.bool),
        },
        [4],
    )
    for loss, updater in ((ours, fused), (theirs, reference)):
        loss(batch.clone())
        with torch.no_grad():
            for p in loss.value_network_params.values(True, True):
                p.add_(1.0)
        updater.step()
    for a, b in zip(
        ours.target_value_network_params.values(True, True),
        theirs.target_value_network_params.values(True, True),
    ):
        assert torch.equal(a, b)


def test_fused_soft_update_follows_replaced_parameters():
    loss = _iql()
    updater = FusedSoftUpdate(loss, tau=0.5)
    updater.step()
    loss.double()  # replaces every parameter tensor
    _perturb(loss, 1)
    expected = [
        t + 0.5 * (s - t)
        for t, s in zip(
            _targets(loss), [s.detach() for s in loss.qvalue_network_params.values(True, True)]
        )
    ]
    updater.step()
    got = _targets(loss)
    assert got[0].dtype == torch.float64
    assert all(torch.allclose(a, b) for a, b in zip(got, expected))


def test_fused_soft_update_state_dict_and_eps():
    loss = _iql()
    updater = FusedSoftUpdate(loss, eps=0.9)
    assert updater.state_dict() == {"initialized": True}
    assert updater.eps == pytest.approx(0.9)
    with pytest.raises(ValueError):
        FusedSoftUpdate(loss, eps=0.9, tau=0.1)


def test_fused_soft_update_trains_with_the_loss():
    loss = _iql()
    updater = FusedSoftUpdate(loss, tau=0.01)
    optim = torch.optim.Adam(loss.parameters(), lr=1e-3)
    batch = TensorDict(
        {
            "observation": torch.randn(16, 3),
            "action": torch.rand(16, 2) * 2 - 1,
            ("next", "observation"): torch.randn(16, 3),
            ("next", "reward"): torch.randn(16, 1),
            ("next", "done"): torch.zeros(16, 1, dtype=torch.bool),
            ("next", "terminated"): torch.zeros(16, 1, dtype=torch.bool),
        },
        [16],
    )
    before = _targets(loss)
    for _ in range(3):
        out = loss(batch)
        (out["loss_actor"] + out["loss_qvalue"] + out["loss_value"]).backward()
        optim.step()
        optim.zero_grad()
        updater.step()
    assert all(not t.requires_grad for t in loss.target_qvalue_network_params.values(True, True))
    assert not all(torch.equal(a, b) for a, b in zip(before, _targets(loss)))


def test_check_batch_large_finite_values_pass_and_nan_is_located():
    # float64 sums of these overflow to inf: the exact per-key check must then accept them
    td = TensorDict(
        {"observation": torch.full((4, 2), 1e308, dtype=torch.float64), "r": torch.ones(4, 1)},
        [4],
    )
    check_batch(td, ["observation", "r"])
    td["r"][2, 0] = float("-inf")
    with pytest.raises(
        OfflineLossError, match=r"'r' holds NaN/inf \(first at batch index \(2,\)\)"
    ):
        check_batch(td, ["observation", "r"])


def test_check_finite_losses_per_sample_and_overflowing_sums():
    big = torch.full((3,), 1e308, dtype=torch.float64)
    check_finite_losses(TensorDict({"loss_a": big, "loss_b": big, "other": torch.tensor(1.0)}))
    bad = torch.tensor([1.0, float("nan"), 2.0])
    with pytest.raises(OfflineLossError, match="'loss_b' at update step 7"):
        check_finite_losses(TensorDict({"loss_a": torch.ones(3), "loss_b": bad}), step=7)


def test_functional_calls_accept_plain_tensordicts_and_params():
    loss = _iql()
    obs, act = torch.randn(5, 3), torch.rand(5, 2)
    params = loss.value_network_params
    as_td = params.data.clone()  # a plain TensorDict with the same values
    out_params = module_apply(loss.value_network, params, obs)
    out_td = module_apply(loss.value_network, as_td, obs)
    assert torch.equal(out_params, out_td)
    stacked = loss.qvalue_network_params
    detached = copy.copy(stacked.detach())
    assert torch.equal(
        ensemble_apply(loss.qvalue_network, stacked, obs, act).detach(),
        ensemble_apply(loss.qvalue_network, detached, obs, act),
    )
