"""Tests for DiscreteBCQLoss and DiscreteBCQActor (torchrl_offline.objectives.discrete_bcq)."""

from __future__ import annotations

import json

import pytest
import torch
from tensordict import TensorDict
from tensordict.nn import TensorDictSequential
from torch import nn
from torchrl.data import Categorical, OneHot, Unbounded
from torchrl.envs.utils import ExplorationType, set_exploration_type
from torchrl.modules import MLP
from torchrl.objectives import SoftUpdate

from torchrl_offline.cli import main
from torchrl_offline.objectives import DiscreteBCQActor, DiscreteBCQLoss, OfflineLossError
from torchrl_offline.objectives.discrete_bcq import bcq_action_mask
from torchrl_offline.trainers.algorithms import build_algorithm
from torchrl_offline.trainers.metadata import load_algorithm

pytestmark = pytest.mark.filterwarnings("ignore:No target network updater")

OBS, N_ACT, B, GAMMA = 3, 4, 8, 0.9


def make_actor(spec=None, hidden=8, sharp=4.0):
    """Two small MLP heads; the imitation head is scaled so that the filter bites."""
    torch.manual_seed(0)
    q = MLP(in_features=OBS, out_features=N_ACT, num_cells=[hidden])
    g = MLP(in_features=OBS, out_features=N_ACT, num_cells=[hidden])
    with torch.no_grad():
        g[-1].weight.mul_(sharp)
    return DiscreteBCQActor(q, g, spec=Categorical(N_ACT) if spec is None else spec)


def make_loss(spec=None, **kwargs):
    loss = DiscreteBCQLoss(make_actor(spec), **kwargs)
    loss.make_value_estimator(gamma=GAMMA)
    with torch.no_grad():  # the target network differs from the online one
        for p in loss.target_value_network_params.values(True, True):
            p.mul_(0.7)
    return loss


def make_batch(one_hot=False, b=B, seed=1):
    g = torch.Generator().manual_seed(seed)
    action = torch.randint(N_ACT, (b,), generator=g)
    if one_hot:
        action = nn.functional.one_hot(action, N_ACT)
    terminated = torch.zeros(b, 1, dtype=torch.bool)
    terminated[0] = True
    return TensorDict(
        {
            "observation": torch.randn(b, OBS, generator=g),
            "action": action,
            "next": {
                "observation": torch.randn(b, OBS, generator=g),
                "reward": torch.randn(b, 1, generator=g),
                "done": terminated.clone(),
                "terminated": terminated,
            },
        },
        [b],
    )


# ----------------------------------------------------------------------------- reference
def _mlp(seq: nn.Module, params: TensorDict, x: torch.Tensor) -> torch.Tensor:
    """A plain-torch pass of the MLP ``seq`` with the head's parameters ``params``."""
    flat = params.flatten_keys(".")
    for name, child in seq.named_children():
        if isinstance(child, nn.Linear):
            x = x @ flat[f"module.{name}.weight"].T + flat[f"module.{name}.bias"]
        else:
            x = child(x)
    return x


def reference_bcq(loss: DiscreteBCQLoss, data: TensorDict) -> dict[str, torch.Tensor]:
    """The reference code's update in plain torch (Fujimoto et al., 2019,
    ``discrete_BCQ.train``): the filter on probability ratios with a -1e8 mask, the
    target network at the filtered argmax, Huber, NLL and 1e-2 times the squared logits."""
    heads = loss.value_network.heads.module

    def net(params_td, obs):  # the Q head and the imitation head
        return [
            _mlp(heads[h].module, params_td.get(("module", "0", "module", str(h))), obs)
            for h in (0, 1)
        ]

    s, s2 = data["observation"], data["next", "observation"]
    r = data["next", "reward"].squeeze(-1)
    not_term = 1.0 - data["next", "terminated"].float().squeeze(-1)
    action = data["action"]
    idx = action.argmax(-1) if action.ndim == 2 else action
    with torch.no_grad():
        q2, i2 = net(loss.value_network_params, s2)
        imt = torch.softmax(i2, -1)
        imt = (imt / imt.max(1, keepdim=True).values > loss.threshold).float()
        next_action = (imt * q2 + (1 - imt) * -1e8).argmax(1, keepdim=True)
        q2_target, _ = net(loss.target_value_network_params, s2)
        y = r + not_term * GAMMA * q2_target.gather(1, next_action).squeeze(1)
    q, i = net(loss.value_network_params, s)
    pred = q.gather(1, idx[:, None]).squeeze(1)
    d = pred - y
    huber = torch.where(d.abs() < 1, 0.5 * d**2, d.abs() - 0.5)
    nll = torch.logsumexp(i, -1) - i.gather(1, idx[:, None]).squeeze(1)
    return {
        "loss_qvalue": huber,
        "loss_imitation": nll + 1e-2 * (i**2).mean(-1),
        "td_error": d.abs().detach(),
        "changed": next_action.squeeze(1) != q2.argmax(-1),
    }


@pytest.mark.parametrize("one_hot", [False, True], ids=["categorical", "one_hot"])
def test_matches_plain_torch_transcription(one_hot):
    spec = OneHot(N_ACT) if one_hot else Categorical(N_ACT)
    loss = make_loss(spec, reduction="none")
    assert loss.action_space == ("one_hot" if one_hot else "categorical")
    data = make_batch(one_hot)
    out = loss(data)
    ref = reference_bcq(loss, make_batch(one_hot))
    assert ref.pop("changed").any()  # the filter moves the backup's argmax somewhere
    torch.testing.assert_close(data["td_error"], ref.pop("td_error"), rtol=1e-5, atol=1e-5)
    for key, expected in ref.items():
        torch.testing.assert_close(out[key], expected.detach(), rtol=1e-5, atol=1e-5, msg=key)
    params = list(loss.value_network_params.values(True, True))
    ours = torch.autograd.grad(out["loss_qvalue"].mean() + out["loss_imitation"].mean(), params)
    theirs = torch.autograd.grad(ref["loss_qvalue"].mean() + ref["loss_imitation"].mean(), params)
    for g_ours, g_ref in zip(ours, theirs):
        torch.testing.assert_close(g_ours, g_ref, rtol=1e-5, atol=1e-5)
    loss.reduction = "mean"
    out_mean = loss(make_batch(one_hot))
    for key in ("loss_qvalue", "loss_imitation"):
        torch.testing.assert_close(out_mean[key], out[key].mean(), rtol=1e-5, atol=1e-6)


def test_the_policy_is_the_filtered_argmax():
    loss = make_loss(threshold=0.3)
    actor = loss.value_network
    assert actor.threshold == 0.3
    obs = make_batch(b=32)["observation"]
    with set_exploration_type(ExplorationType.DETERMINISTIC), torch.no_grad():
        td = actor(TensorDict({"observation": obs}, [32]))
        q_head, g_head = actor.heads.module[0], actor.heads.module[1]
        q, logits = q_head.module(obs), g_head.module(obs)
    probs = torch.softmax(logits, -1)
    allowed = probs / probs.max(-1, keepdim=True).values > 0.3
    torch.testing.assert_close(td["action"], q.masked_fill(~allowed, -1e30).argmax(-1))
    assert (td["action"] != q.argmax(-1)).any()  # the filter changes some decisions
    loss.threshold = 0.0  # the loss's threshold is the policy's; 0 is greedy (DQN)
    assert actor.threshold == 0.0
    with torch.no_grad():
        torch.testing.assert_close(
            actor(TensorDict({"observation": obs}, [32]))["action"], q.argmax(-1)
        )
    assert bcq_action_mask(torch.tensor([0.0, -5.0]), 0.0).all()


def test_gradient_routing():
    loss = make_loss()
    out = loss(make_batch())
    params = loss.value_network_params
    q_head = list(params.get(("module", "0", "module", "0")).values(True, True))
    g_head = list(params.get(("module", "0", "module", "1")).values(True, True))
    for key, (touched, untouched) in {
        "loss_qvalue": (q_head, g_head),
        "loss_imitation": (g_head, q_head),
    }.items():
        grads = torch.autograd.grad(out[key], touched + untouched, allow_unused=True)
        assert all(g is not None and g.abs().sum() > 0 for g in grads[: len(touched)]), key
        assert all(g is None or g.abs().sum() == 0 for g in grads[len(touched) :]), key
    assert not any(p.requires_grad for p in loss.target_value_network_params.values(True, True))


def test_any_network_writing_both_heads():
    """A plain TensorDictSequential writing action_value and logits (no policy module)
    gives the same losses as the DiscreteBCQActor holding the same heads."""
    actor = make_actor()
    plain = TensorDictSequential(actor.heads.module[0], actor.heads.module[1])
    ours = DiscreteBCQLoss(actor)
    other = DiscreteBCQLoss(plain, action_space="categorical")
    for loss in (ours, other):
        loss.make_value_estimator(gamma=GAMMA)
    a, b = ours(make_batch()), other(make_batch())
    for key in a.keys():
        torch.testing.assert_close(a[key], b[key], msg=key)
    with pytest.raises(OfflineLossError, match="action_space is needed"):
        DiscreteBCQLoss(plain)


def test_reduction_set_keys_nested_batch_and_state_dict():
    loss = make_loss(reduction="sum")
    assert loss(make_batch())["loss_qvalue"].shape == ()
    loss = make_loss(reduction="none")
    loss.set_keys(action="act", reward="rew", priority="prio")
    data = make_batch()
    data["act"] = data.pop("action")
    data["next", "rew"] = data["next"].pop("reward")
    out = loss(data.reshape(2, 4))
    assert out["loss_imitation"].shape == (2, 4) and out.batch_size == (2, 4)
    other = make_loss()
    with torch.no_grad():
        for p in loss.value_network_params.values(True, True):
            p.add_(0.05)
    other.load_state_dict(loss.state_dict())
    other.set_keys(action="act", reward="rew")
    other.reduction = "none"
    torch.testing.assert_close(other(data)["loss_qvalue"], loss(data)["loss_qvalue"])


def test_bad_input_is_named():
    loss = make_loss()
    with pytest.raises(OfflineLossError, match="'action'"):
        loss(make_batch().exclude("action"))
    bad = make_batch()
    bad["next", "observation"][5, 1] = float("inf")
    with pytest.raises(OfflineLossError, match=r"\('next', 'observation'\).*\(5,\)"):
        loss(bad)
    bad = make_batch()
    bad["action"][2] = N_ACT
    with pytest.raises(OfflineLossError, match="outside \\[0, 4\\).*index 2"):
        loss(bad)
    with pytest.raises(OfflineLossError, match="one-hot key 'action' has 3 entries"):
        make_loss(OneHot(N_ACT))(make_batch(one_hot=True).set("action", torch.zeros(B, 3)))
    for threshold in (-0.1, 1.0):
        with pytest.raises(ValueError, match="threshold must be in \\[0, 1\\)"):
            DiscreteBCQLoss(make_actor(), threshold=threshold)


def test_learns_on_cartpole(cartpole_dataset, evaluate_actor, one_thread):
    torch.manual_seed(0)
    data = cartpole_dataset.data
    heads = [MLP(in_features=4, out_features=2, num_cells=[32, 32]) for _ in range(2)]
    actor = DiscreteBCQActor(*heads, spec=Categorical(2))
    loss = DiscreteBCQLoss(actor)
    loss.make_value_estimator(gamma=0.99)
    updater = SoftUpdate(loss, tau=0.02)
    optim = torch.optim.Adam(loss.parameters(), lr=3e-3)
    g = torch.Generator().manual_seed(0)
    for _ in range(300):
        out = loss(data[torch.randint(data.numel(), (64,), generator=g)])
        (out["loss_qvalue"] + out["loss_imitation"]).backward()
        optim.step()
        optim.zero_grad()
        updater.step()
    score = evaluate_actor(actor, "CartPole-v1", episodes=3)
    assert score > 4 * cartpole_dataset.random_return, (score, cartpole_dataset.random_return)


# ----------------------------------------------------------------------------- algorithm
def test_declaration_builder_and_presets():
    algo = build_algorithm("discrete_bcq", Unbounded(shape=(3,)), Categorical(3), hidden_sizes=(8,))
    assert algo.policy is algo.loss.value_network and isinstance(algo.policy, DiscreteBCQActor)
    assert algo.loss_keys == ("loss_qvalue", "loss_imitation")
    assert (algo.loss.threshold, algo.policy.threshold, algo.loss.logit_penalty) == (0.3, 0.3, 0.01)
    tighter = build_algorithm(
        "discrete_bcq", Unbounded(shape=(3,)), Categorical(3), hidden_sizes=(8,), threshold=0.5
    )
    assert tighter.policy.threshold == 0.5
    atari = build_algorithm(
        "discrete_bcq", Unbounded(shape=(3,)), OneHot(3), hidden_sizes=(8,), preset="atari"
    )
    assert atari.optimizer.param_groups[0]["lr"] == 6.25e-5 and atari.target_update_delay == 8000
    assert atari.hyperparameters["tau"] == 1.0 and atari.loss.action_space == "one_hot"


def test_trains_and_finetunes_through_the_command_line(tmp_path, capsys, one_thread):
    root, run = str(tmp_path / "minari"), tmp_path / "run"
    collect = ["collect", "CartPole-v1", "--dataset-id", "cartpole/tiny-v0", "--steps", "120",
               "--policy", "random", "--root", root, "--no-progress"]  # fmt: skip
    assert main(collect) == 0
    common = ["--dataset", "cartpole/tiny-v0", "--root", root, "--batch-size", "16",
              "--checkpoint-every", "3", "--eval-env", "none", "--no-progress"]  # fmt: skip
    train = ["train", "--algo", "discrete_bcq", "--steps", "6", "--out", str(run),
             "--set", "hidden_sizes=(16,)", "--set", "threshold=0.5", *common]  # fmt: skip
    assert main(train) == 0
    summary = json.loads((run / "summary.json").read_text())
    assert summary["algorithm"] == "discrete_bcq" and summary["hyperparameters"]["threshold"] == 0.5
    algo, step = load_algorithm(run)  # the checkpoint rebuilds the policy with its filter
    assert step == 6 and algo.policy.threshold == 0.5
    online = ["finetune", str(run), "--steps", "9", "--out", str(tmp_path / "online"),
              "--frames-per-batch", "3", *common]  # fmt: skip
    assert main(online) == 0
    assert "discrete_bcq: 9 fine-tuning steps in CartPole-v1" in capsys.readouterr().out
