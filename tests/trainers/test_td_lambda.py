"""The training-loop need "TD(lambda) returns" (torchrl_offline.trainers.td_lambda): AWR's
value target recomputed over the dataset with the current value network, on schedule,
exactly across a resume, refused where it cannot run."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from tests.trainers.conftest import StopAt, make_dataset
from torchrl_offline.data.episodes import EpisodeOrderError, with_derived_keys
from torchrl_offline.data.storage import make_replay_buffer
from torchrl_offline.trainers.algorithms import AlgorithmError, build_algorithm
from torchrl_offline.trainers.checkpoint import load_checkpoint
from torchrl_offline.trainers.offline import train
from torchrl_offline.trainers.td_lambda import TDLambdaRefresh, needs_td_lambda

GAMMA, LMBDA = 0.9, 0.8
TD = {"value_target": "td_lambda", "td_lambda": LMBDA, "gamma": GAMMA, "hidden_sizes": (16,)}
QUIET = {"progress": False, "logger": None, "batch_size": 16}


def _episodic(*, discrete: bool = False):
    """96 steps in three episodes: terminated after step 29, cut after 59 (a time limit)
    and at the end of the data; each row carries its index (``"row"``)."""
    data = make_dataset(n=96, discrete=discrete).storage[:]
    for t, terminated in ((29, True), (59, False)):
        data["next", "done"][t] = True
        data["next", "terminated"][t] = terminated
        data["next", "truncated"][t] = not terminated
    data["row"] = torch.arange(96)
    return data


def _loop(data, value, gamma=GAMMA, lmbda=LMBDA):
    """The TD(lambda) return written out, one step at a time from the end, with ``value``
    (a function of one next observation)."""
    n = data.shape[0]
    out, following = [0.0] * n, 0.0
    for t in reversed(range(n)):
        r = float(data["next", "reward"][t])
        v = float(value(data["next", "observation"][t]))
        keep = 0.0 if bool(data["next", "terminated"][t]) else 1.0
        if bool(data["next", "done"][t]):
            out[t] = r + gamma * keep * v
        else:
            out[t] = r + gamma * keep * ((1 - lmbda) * v + lmbda * following)
        following = out[t]
    return torch.tensor(out).unsqueeze(-1)


class Probe:
    """Registered after the refresh: at each refresh, the column against the plain loop
    with the value network's weights of that moment; at each batch, the batch's returns
    against the column's rows."""

    def __init__(self, interval: int) -> None:
        self.interval = interval
        self.trainer = None
        self.checked: list[int] = []
        self.batch_errors: list[float] = []

    def register(self, trainer) -> None:
        self.trainer = trainer
        trainer.register_op("setup", self.check)
        trainer.register_op("post_steps", self.check)
        trainer.register_op("batch_process", self.batch)

    def _refresh(self) -> TDLambdaRefresh:
        return self.trainer._modules["td_lambda_refresh"]

    def check(self, *args) -> None:
        step = self.trainer.step
        if step % self.interval or step in self.checked:
            return
        net = self.trainer.loss_module.value_network.module  # the plain MLP: V(s)
        data = self.trainer.replay_buffer.storage[:]
        with torch.no_grad():
            expected = _loop(data, lambda s: net(s))
        torch.testing.assert_close(self._refresh().returns, expected, atol=1e-5, rtol=1e-5)
        self.checked.append(step)

    def batch(self, batch):
        column = self._refresh().returns
        error = (batch["td_lambda_return"] - column[batch["row"]]).abs().max()
        self.batch_errors.append(float(error))
        return batch


@pytest.mark.parametrize("discrete", [False, True])
def test_train_refreshes_before_update_0_and_every_interval_with_the_current_value(discrete):
    probe = Probe(interval=3)
    result = train("awr", make_replay_buffer(_episodic(discrete=discrete), batch_size=16),
                   total_steps=8, overrides={**TD, "td_lambda_interval": 3}, hooks=[probe],
                   **QUIET)  # fmt: skip
    assert result.step == 8 and result.algorithm.name == ("discrete_awr" if discrete else "awr")
    assert needs_td_lambda(result.algorithm)
    assert [r["step"] for r in probe._refresh().refreshes] == [0, 3, 6]
    assert probe.checked == [0, 3, 6]
    assert len(probe.batch_errors) == 8 and max(probe.batch_errors) == 0.0


def test_the_refresh_bootstraps_with_the_value_network_s_weights():
    """V set by hand to a known function: the column is the plain loop's with it."""
    algo = build_algorithm("awr", dataset=make_dataset(), **TD)
    data = with_derived_keys(
        make_replay_buffer(_episodic(), batch_size=16), ["td_lambda_return"], gamma=GAMMA
    )
    mlp = algo.loss.value_network.module
    with torch.no_grad():
        for p in mlp.parameters():
            p.zero_()
        last = [m for m in mlp.modules() if isinstance(m, nn.Linear)][-1]
        last.bias.fill_(2.5)  # V = 2.5 everywhere
    refresh = TDLambdaRefresh(algo.loss, data, gamma=GAMMA, lmbda=LMBDA, interval=10)
    refresh.refresh(step=0)
    expected = _loop(data.storage[:], lambda s: 2.5)
    torch.testing.assert_close(refresh.returns, expected, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(data.storage[:]["td_lambda_return"], expected, atol=1e-5, rtol=0)


def test_observation_normalisation_reaches_the_refresh():
    """Trained on normalised observations, V is evaluated on normalised next observations."""
    probe_norm = {}

    class Seen:
        def register(self, trainer):
            self.trainer = trainer
            trainer.register_op("post_steps", self)

        def __call__(self):
            if self.trainer.step != 2:  # the refresh before update 2
                return
            refresh = self.trainer._modules["td_lambda_refresh"]
            loc, scale = refresh.observation_norm
            net = self.trainer.loss_module.value_network.module
            data = self.trainer.replay_buffer.storage[:]
            with torch.no_grad():
                probe_norm["expected"] = _loop(data, lambda s: net((s - loc) / scale))
            probe_norm["returns"] = refresh.returns.clone()

    train("awr", make_replay_buffer(_episodic(), batch_size=16), total_steps=3, hooks=[Seen()],
          normalize_observations=True, overrides={**TD, "td_lambda_interval": 2}, **QUIET)  # fmt: skip
    torch.testing.assert_close(probe_norm["returns"], probe_norm["expected"], atol=1e-5, rtol=1e-5)


def test_a_resumed_run_equals_an_uninterrupted_one(tmp_path):
    def run(out, **kw):
        return train("awr", make_replay_buffer(_episodic(), batch_size=16), total_steps=10, seed=3, out_dir=out,
                     checkpoint_interval=4, overrides={**TD, "td_lambda_interval": 3}, **QUIET,
                     **kw)  # fmt: skip

    full = run(tmp_path / "full")
    part = run(tmp_path / "part", hooks=[StopAt(7)])
    assert part.step == 7
    saved = load_checkpoint(part.checkpoint)["hooks"]["td_lambda_refresh"]
    assert saved["refreshed_at"] == 6 and saved["returns"].shape == (96, 1)
    resumed = run(tmp_path / "part", resume=True)
    assert resumed.step == 10
    a, b = full.algorithm.loss.state_dict(), resumed.algorithm.loss.state_dict()
    for key in a:
        torch.testing.assert_close(a[key], b[key], rtol=0, atol=0, msg=key)


def test_shuffled_data_is_refused_with_the_first_index():
    data = _episodic()
    shuffled = data[torch.randperm(96, generator=torch.Generator().manual_seed(0))]
    with pytest.raises(EpisodeOrderError, match="'td_lambda_return'.*episode order"):
        train(
            "awr", make_replay_buffer(shuffled, batch_size=16), total_steps=2, overrides=TD, **QUIET
        )


def test_monte_carlo_stays_the_default_and_bad_settings_are_named():
    algo = build_algorithm("awr", dataset=make_dataset(), hidden_sizes=(8,))
    assert algo.hyperparameters["value_target"] == "monte_carlo" and not needs_td_lambda(algo)
    assert algo.derived_keys == ("mc_return", "mc_tail_discount", "mc_tail_observation")
    for bad, message in (
        ({"td_lambda": 1.5}, "td_lambda must be in"),
        ({"td_lambda_interval": 0}, "td_lambda_interval must be an int >= 1"),
        ({"value_target": "gae"}, "value_target must be one of"),
    ):
        with pytest.raises(AlgorithmError, match=message):
            build_algorithm("awr", dataset=make_dataset(), hidden_sizes=(8,), **bad)


def test_finetune_refuses_td_lambda_and_names_the_fix():
    from torchrl_offline.trainers.finetune import finetune

    offline = train(
        "awr", make_replay_buffer(_episodic(), batch_size=16), total_steps=2, overrides=TD, **QUIET
    )
    with pytest.raises(AlgorithmError, match="value_target='monte_carlo'"):
        finetune(offline.algorithm, make_dataset(), "Pendulum-v1", total_steps=2, **QUIET)
    # the fix the message names: the same networks with Monte Carlo returns
    hp = {k: offline.algorithm.hyperparameters[k] for k in ("hidden_sizes", "gamma")}
    monte_carlo = build_algorithm("awr", dataset=make_dataset(), **hp)
    monte_carlo.loss.load_state_dict(offline.algorithm.loss.state_dict())
    online = finetune(monte_carlo, make_dataset(), "Pendulum-v1", total_steps=2,
                      frames_per_batch=2, **QUIET)  # fmt: skip
    assert online.step == 2


def test_the_command_line_takes_the_settings(tmp_path):
    from torchrl_offline.cli import main
    from torchrl_offline.trainers.metadata import load_algorithm

    root, run = str(tmp_path / "minari"), tmp_path / "run"
    collect = ["collect", "Pendulum-v1", "--dataset-id", "pendulum/tiny-v0", "--steps", "100",
               "--policy", "random", "--root", root, "--no-progress"]  # fmt: skip
    assert main(collect) == 0
    train_cmd = ["train", "--algo", "awr", "--steps", "4", "--out", str(run), "--preset", "small",
                 "--set", "value_target=td_lambda", "--set", "td_lambda_interval=2",
                 "--dataset", "pendulum/tiny-v0", "--root", root, "--batch-size", "16",
                 "--eval-env", "none", "--no-progress"]  # fmt: skip
    assert main(train_cmd) == 0
    algo, step = load_algorithm(run)
    assert step == 4 and algo.hyperparameters["value_target"] == "td_lambda"
    assert algo.hyperparameters["td_lambda_interval"] == 2 and needs_td_lambda(algo)
    saved = load_checkpoint(sorted((run / "checkpoints").glob("*.pt"))[-1])
    assert saved["hooks"]["td_lambda_refresh"]["refreshed_at"] == 2  # none after the last


def test_the_hydra_trainer_config_refreshes_the_returns():
    from hydra.errors import InstantiationException
    from hydra.utils import instantiate

    from torchrl_offline.configs import OfflineTrainerConfig

    algo = build_algorithm("awr", dataset=make_dataset(), **TD)
    data = make_replay_buffer(_episodic(), batch_size=16)
    cfg = OfflineTrainerConfig(total_steps=5, batch_size=16, seed=0,
                               td_lambda={"td_lambda": LMBDA, "td_lambda_interval": 2})  # fmt: skip
    trainer = instantiate(cfg, loss_module=algo.loss, replay_buffer=data)
    trainer.train()
    refresh = trainer._modules["td_lambda_refresh"]
    assert [r["step"] for r in refresh.refreshes] == [0, 2, 4] and refresh.lmbda == LMBDA
    with pytest.raises(InstantiationException, match="unknown setting 'lambda'"):
        instantiate(OfflineTrainerConfig(total_steps=1, td_lambda={"lambda": 0.9}),
                    loss_module=algo.loss, replay_buffer=data)  # fmt: skip
    monte_carlo = build_algorithm("awr", dataset=make_dataset(), hidden_sizes=(8,))
    with pytest.raises(InstantiationException, match="does not fit its value to TD"):
        instantiate(OfflineTrainerConfig(total_steps=1, td_lambda={"td_lambda": 0.9}),
                    loss_module=monte_carlo.loss, replay_buffer=data)  # fmt: skip


def test_a_stored_memory_mapped_column_is_not_overwritten(tmp_path):
    from torchrl_offline.data.errors import DatasetError

    algo = build_algorithm("awr", dataset=make_dataset(), **TD)
    data = _episodic()
    data["td_lambda_return"] = torch.zeros(96, 1)
    stored = make_replay_buffer(data.memmap_(tmp_path / "data"), batch_size=16)
    with pytest.raises(DatasetError, match="memory-mapped"):
        TDLambdaRefresh(algo.loss, stored, gamma=GAMMA, lmbda=LMBDA, interval=2)
