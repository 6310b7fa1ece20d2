"""OPEHook: every K steps in a plain loop and inside TorchRL's Trainer, logged to a logger."""

from __future__ import annotations

import itertools
import math

import pytest
import torch
from tensordict import TensorDict
from tensordict.nn import TensorDictModule
from torch import nn
from torchrl.data import Categorical
from torchrl.modules import ProbabilisticActor
from torchrl.record.loggers import CSVLogger
from torchrl.trainers import Trainer

from torchrl_offline.ope.fqe import FQE
from torchrl_offline.ope.hook import OPEHook
from torchrl_offline.ope.importance import WeightedImportanceSampling

N = 64


@pytest.fixture
def bandit():
    """One-step episodes, uniform logged actions in {0, 1}, reward = action."""
    g = torch.Generator().manual_seed(0)
    action = torch.randint(2, (N,), generator=g)
    data = TensorDict(
        {
            "observation": torch.ones(N, 1),
            "action": action,
            "action_log_prob": torch.full((N,), math.log(0.5)),
            "episode": torch.arange(N),
            ("next", "observation"): torch.ones(N, 1),
            ("next", "reward"): action.float().unsqueeze(-1),
            ("next", "done"): torch.ones(N, 1, dtype=torch.bool),
            ("next", "terminated"): torch.ones(N, 1, dtype=torch.bool),
            ("next", "truncated"): torch.zeros(N, 1, dtype=torch.bool),
        },
        [N],
    )
    logits = nn.Linear(1, 2, bias=False)
    nn.init.zeros_(logits.weight)
    actor = ProbabilisticActor(
        TensorDictModule(logits, ["observation"], ["logits"]),
        in_keys=["logits"],
        spec=Categorical(2),
        distribution_class=torch.distributions.Categorical,
    )
    return data, actor, logits


def _pg_step(actor_logits: nn.Linear, optim) -> torch.Tensor:
    """One update pushing the policy towards action 1 (the rewarding one)."""
    loss = -torch.log_softmax(actor_logits.weight.T, -1)[0, 1]
    optim.zero_grad()
    loss.backward()
    optim.step()
    return loss.detach()


def test_plain_loop_runs_every_k_steps_and_logs(bandit, tmp_path):
    data, actor, logits = bandit
    logger = CSVLogger("run", log_dir=str(tmp_path))
    hook = OPEHook(
        {"wis": WeightedImportanceSampling(actor, gamma=1.0, n_bootstrap=50)},
        data,
        interval=5,
        logger=logger,
        run_at_start=True,
        policy=actor,
    )
    optim = torch.optim.SGD(logits.parameters(), lr=0.5)
    actor.train()
    for step in range(16):
        out = hook(step)
        assert (out is not None) == (step % 5 == 0)
        _pg_step(logits, optim)
    assert actor.training  # eval mode was restored
    steps = [h["step"] for h in hook.history]
    assert steps == [0, 5, 10, 15]
    values = [h["value"] for h in hook.history]
    # at step 0 the policy is uniform: WIS gives the mean reward of the data
    assert values[0] == pytest.approx(float(data["next", "reward"].mean()))
    assert all(b > a for a, b in itertools.pairwise(values))  # the OPE curve follows training
    assert hook.latest["wis"].value == values[-1]
    assert [s for s, _ in hook.curves()["wis"]] == steps
    logged = logger.experiment.scalars
    assert [s for s, _ in logged["ope/wis/value"]] == steps
    assert {"ope/wis/ci_low", "ope/wis/ci_high", "ope/wis/ess"} <= set(logged)


class _ListCollector(list):
    """A fixed list of batches standing in for a collector (an offline loop)."""

    init_random_frames = 0

    def shutdown(self) -> None:
        pass

    def update_policy_weights_(self, *args, **kwargs) -> None:
        pass


class _PGLoss(nn.Module):
    def __init__(self, logits: nn.Linear):
        super().__init__()
        self.logits = logits

    def forward(self, batch):
        return TensorDict({"loss_pg": -torch.log_softmax(self.logits.weight.T, -1)[0, 1]}, [])


def test_torchrl_trainer_hook_uses_the_step_count_and_the_trainers_logger(bandit, tmp_path):
    data, actor, logits = bandit
    loss = _PGLoss(logits)
    logger = CSVLogger("trainer", log_dir=str(tmp_path))
    trainer = Trainer(
        collector=_ListCollector([data[:8]] * 3),
        total_frames=24,
        frame_skip=1,
        optim_steps_per_batch=4,
        loss_module=loss,
        optimizer=torch.optim.SGD(loss.parameters(), lr=0.5),
        logger=logger,
        progress_bar=False,
    )
    fqe = FQE(actor, gamma=1.0, num_steps=20, batch_size=N, num_cells=(8,), n_bootstrap=20)
    hook = OPEHook(
        {"wis": WeightedImportanceSampling(actor, gamma=1.0), "fqe": fqe}, data, interval=6
    )
    hook.register(trainer, "ope")
    trainer.train()
    assert [h["step"] for h in hook.history if h["name"] == "wis"] == [6, 12]
    assert [s for s, _ in logger.experiment.scalars["ope/fqe/value"]] == [6, 12]
    state = hook.state_dict()
    fresh = OPEHook({"wis": WeightedImportanceSampling(actor)}, data, interval=6)
    fresh.load_state_dict(state)
    assert fresh.history == hook.history


def test_single_estimator_and_bad_arguments(bandit):
    data, actor, _ = bandit
    hook = OPEHook(WeightedImportanceSampling(actor, gamma=1.0, n_bootstrap=20), data, interval=2)
    assert list(hook.estimators) == ["WeightedImportanceSampling"]
    assert hook() is None and hook() is not None  # counts its own calls without a step
    assert hook.run(step=7)["ope/WeightedImportanceSampling/value"] == pytest.approx(
        float(data["next", "reward"].mean())
    )
    with pytest.raises(ValueError, match="interval"):
        OPEHook({"a": hook}, data, interval=0)
    with pytest.raises(TypeError, match="estimate"):
        OPEHook({"a": object()}, data, interval=1)
    with pytest.raises(ValueError, match="at least one"):
        OPEHook({}, data, interval=1)
