"""``torchrl-offline train``."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from torchrl_offline.cli import UsageError, main
from torchrl_offline.cli.train import parse_overrides
from torchrl_offline.trainers.checkpoint import list_checkpoints

# No evaluation unless a test asks for one (train evaluates in the dataset's env by default).
TINY = ["--batch-size", "16", "--set", "hidden_sizes=(16,16)", "--log-every", "5", "--no-progress",
        "--eval-env", "none"]  # fmt: skip


def test_train_writes_checkpoints_logs_and_summary(trained_run, capsys):
    run = Path(trained_run["run"])
    steps = [int(p.stem.split("_")[1]) for p in list_checkpoints(run / "checkpoints")]
    assert steps == [10, 20]
    summary = json.loads((run / "summary.json").read_text())
    assert summary["algorithm"] == "iql" and summary["step"] == 20
    assert summary["hyperparameters"]["hidden_sizes"] == [16, 16]
    assert summary["hyperparameters"]["expectile"] == 0.7  # the paper's default
    header = (run / "metrics.csv").read_text().splitlines()[0].split(",")
    assert header[0] == "step" and "train/loss_qvalue" in header
    assert (run / "metrics.png").read_bytes()[:4] == b"\x89PNG"
    assert not (run / "logs").exists()  # the metrics file replaces TorchRL's CSV files


def test_train_resume_continues_the_run(trained_run, tmp_path, capsys):
    import shutil

    run = tmp_path / "run"
    shutil.copytree(trained_run["run"], run)
    argv = ["train", "--algo", "iql", "--dataset", trained_run["dataset"],
            "--root", trained_run["root"], "--out", str(run), "--checkpoint-every", "10", *TINY]  # fmt: skip
    assert main([*argv, "--steps", "30", "--resume"]) == 0
    assert "iql: 30 gradient steps" in capsys.readouterr().out
    assert json.loads((run / "summary.json").read_text())["step"] == 30


def test_train_with_evaluation_in_the_datasets_env(trained_run, tmp_path, capsys):
    argv = ["train", "--algo", "bc", "--dataset", trained_run["dataset"],
            "--root", trained_run["root"], "--out", str(tmp_path / "bc"), "--steps", "4", *TINY,
            "--eval-env", "auto", "--eval-every", "4", "--eval-episodes", "1",
            "--checkpoint-every", "4"]  # fmt: skip
    assert main(argv) == 0
    out = capsys.readouterr().out
    assert "evaluation in Pendulum-v1 at step 4" in out
    evaluations = json.loads((tmp_path / "bc" / "summary.json").read_text())["evaluations"]
    assert evaluations[-1]["step"] == 4
    # Pendulum rewards are in [-16.3, 0]; one 200-step episode.
    assert -16.3 * 200 <= evaluations[-1]["return_mean"] <= 0.0
    assert evaluations[-1]["normalized_score"] == pytest.approx(
        100 * (evaluations[-1]["return_mean"] + 1200) / 1050
    )


@pytest.mark.parametrize(
    ("argv", "message", "status"),
    [  # 2: the command line alone is wrong; 1: what it names (data, env) is
        (["--algo", "dqn"], "unknown algorithm 'dqn'; valid names: awac, ", 2),
        (
            ["--algo", "iql", "--set", "expectle=0.8"],
            "hyperparameter 'expectle' for iql; valid keys:",
            2,
        ),
        (
            ["--algo", "iql", "--set", "expectile=abc"],
            "--set: hyperparameter expectile must be a number (default 0.7), got 'abc'",
            2,
        ),
        (["--algo", "iql", "--set", "hidden_sizes=(64,"], "hidden_sizes must be a tuple", 2),
        (["--algo", "iql", "--set", "expectile"], "--set expects KEY=VALUE", 2),
        (["--algo", "iql", "--steps", "0"], "--steps must be positive", 2),
        (["--algo", "iql", "--resume", "--overwrite"], "--resume and --overwrite exclude", 2),
        (["--algo", "iql", "--dataset", "no/such-v0"], "unknown dataset 'no/such-v0'", 1),
        (
            ["--algo", "iql", "--eval-env", "CartPole-v1"],
            "does not match the env 'CartPole-v1'",
            1,
        ),
        (["--algo", "iql", "--eval-env", "Nope-v0"], "unknown environment 'Nope-v0'", 1),
    ],
)
def test_train_bad_input_is_one_line(trained_run, tmp_path, capsys, argv, message, status):
    base = {"--dataset": trained_run["dataset"], "--steps": "2", "--out": str(tmp_path / "r")}
    for key, value in base.items():
        if key not in argv:
            argv = [*argv, key, value]
    assert main(["train", *argv, "--root", trained_run["root"], "--no-progress"]) == status
    err = capsys.readouterr().err
    assert err.startswith("torchrl-offline train: error: ")
    assert message in err and err.count("\n") == 1


def test_train_requires_dataset_steps_out(capsys):
    """A missing argument is a usage error (2), whichever it is."""
    assert main(["train", "--algo", "iql"]) == 2
    assert "--dataset, --steps, --out" in capsys.readouterr().err
    with pytest.raises(SystemExit) as exit_info:  # argparse's own required --algo
        main(["train", "--dataset", "x", "--steps", "1", "--out", "o"])
    assert exit_info.value.code == 2


def test_resume_with_another_algorithm_is_refused(trained_run, tmp_path, capsys):
    import shutil

    run = tmp_path / "run"
    shutil.copytree(trained_run["run"], run)
    argv = ["train", "--algo", "td3_bc", "--dataset", trained_run["dataset"], "--root",
            trained_run["root"], "--out", str(run), "--steps", "30", "--resume", *TINY]  # fmt: skip
    assert main(argv) == 1
    err = capsys.readouterr().err
    assert "iql" in err and "td3_bc" in err and err.count("\n") == 1


def test_an_existing_run_is_refused_then_replaced_with_overwrite(trained_run, tmp_path, capsys):
    """Failure 3 of issue 15: `train --out EXISTING_RUN` exited 0 and printed a checkpoint
    that keep-newest pruning had deleted."""
    import shutil

    run = tmp_path / "run"
    shutil.copytree(trained_run["run"], run)
    before = sorted(p.name for p in (run / "checkpoints").iterdir())
    summary = (run / "summary.json").read_text()
    argv = ["train", "--algo", "iql", "--dataset", trained_run["dataset"], "--root",
            trained_run["root"], "--out", str(run), "--steps", "4", "--no-progress", *TINY]  # fmt: skip
    assert main(argv) == 1
    err = capsys.readouterr().err
    assert "already holds an iql train run (newest checkpoint: step 20)" in err
    assert sorted(p.name for p in (run / "checkpoints").iterdir()) == before
    assert (run / "summary.json").read_text() == summary
    assert main([*argv, "--overwrite"]) == 0
    printed = capsys.readouterr().out
    assert f"checkpoint: {run / 'checkpoints' / 'checkpoint_000000004.pt'}" in printed
    assert [p.name for p in (run / "checkpoints").iterdir()] == ["checkpoint_000000004.pt"]
    assert json.loads((run / "summary.json").read_text())["step"] == 4


def test_resume_with_nothing_to_resume_is_an_error(trained_run, tmp_path, capsys):
    argv = ["train", "--algo", "iql", "--dataset", trained_run["dataset"], "--root",
            trained_run["root"], "--out", str(tmp_path / "new"), "--steps", "4", "--resume",
            "--no-progress", *TINY]  # fmt: skip
    assert main(argv) == 1
    assert "nothing to resume" in capsys.readouterr().err
    assert not (tmp_path / "new" / "checkpoints").exists()


def test_list_hyperparameters(capsys):
    assert main(["train", "--algo", "iql", "--list-hyperparameters"]) == 0
    out = capsys.readouterr().out
    assert "expectile" in out and "temperature" in out and "hidden_sizes" in out


def test_parse_overrides():
    got = parse_overrides(["lr=1e-3", "hidden_sizes=(8, 8)", "flag=false", "mode=sum"])
    assert got == {"lr": 1e-3, "hidden_sizes": (8, 8), "flag": False, "mode": "sum"}
    got = parse_overrides(["hidden_sizes=[32,32]", "max_weight=inf", "actor='gaussian'"])
    assert got == {"hidden_sizes": [32, 32], "max_weight": float("inf"), "actor": "gaussian"}
    with pytest.raises(UsageError, match="--set expects KEY=VALUE, got 'expectile'"):
        parse_overrides(["expectile"])


def test_ctrl_c_leaves_a_resumable_checkpoint(trained_run, tmp_path, monkeypatch, capsys):
    import os
    import signal

    import torchrl_offline.cli.train as train_cli

    real_open = train_cli.open_dataset

    def open_with_ctrl_c(*args, **kwargs):
        buffer = real_open(*args, **kwargs)
        sample, calls = buffer.sample, [0]

        def sample_then_interrupt(*a, **k):
            calls[0] += 1
            if calls[0] == 5:  # the user presses Ctrl-C during the 5th update
                os.kill(os.getpid(), signal.SIGINT)
            return sample(*a, **k)

        buffer.sample = sample_then_interrupt
        return buffer

    run = tmp_path / "run"
    argv = ["train", "--algo", "td3_bc", "--dataset", trained_run["dataset"], "--root",
            trained_run["root"], "--out", str(run), "--steps", "40", "--checkpoint-every",
            "1000", *TINY]  # fmt: skip
    monkeypatch.setattr(train_cli, "open_dataset", open_with_ctrl_c)
    assert main(argv) == 130
    captured = capsys.readouterr()
    assert "--resume" in captured.err
    interrupted_at = json.loads((run / "summary.json").read_text())["step"]
    assert 1 <= interrupted_at < 40
    assert list_checkpoints(run / "checkpoints")  # written on Ctrl-C
    monkeypatch.setattr(train_cli, "open_dataset", real_open)
    assert main([*argv, "--resume"]) == 0
    assert json.loads((run / "summary.json").read_text())["step"] == 40


def test_a_failed_train_leaves_nothing_that_blocks_the_corrected_retry(
    trained_run, tmp_path, capsys
):
    """Review of issue 15, findings 1 and 6: `--set foo=1` exited 1 and left run.json, which
    refused the corrected retry."""
    out = tmp_path / "new"
    argv = ["train", "--algo", "iql", "--dataset", trained_run["dataset"], "--root",
            trained_run["root"], "--out", str(out), "--steps", "2", *TINY]  # fmt: skip
    assert main([*argv, "--set", "foo=1"]) == 2
    assert "Unknown hyperparameter 'foo'" in capsys.readouterr().err
    assert not (out / "run.json").exists()
    assert main(argv) == 0


def test_resume_at_or_beyond_the_steps_says_there_is_nothing_to_do(trained_run, tmp_path, capsys):
    """Review of issue 15, finding 10: it exited 0 without a word."""
    argv = ["train", "--algo", "iql", "--dataset", trained_run["dataset"], "--root",
            trained_run["root"], "--out", trained_run["run"], "--resume", *TINY]  # fmt: skip
    for steps in ("20", "15"):
        assert main([*argv, "--steps", steps]) == 0
        err = capsys.readouterr().err
        assert (
            f"nothing to do: the run in {trained_run['run']} is at step 20 (--steps {steps})" in err
        )


def test_resume_from_a_named_checkpoint(trained_run, tmp_path, capsys):
    """Review of issue 15, finding 8: `--resume CHECKPOINT` continues from the previous
    good checkpoint that a damaged newest one's error names."""
    import shutil

    run = tmp_path / "run"
    shutil.copytree(trained_run["run"], run)
    older, newest = list_checkpoints(run / "checkpoints")
    newest.write_bytes(newest.read_bytes()[:-50])
    argv = ["train", "--algo", "iql", "--dataset", trained_run["dataset"], "--root",
            trained_run["root"], "--out", str(run), "--steps", "30",
            "--checkpoint-every", "10", *TINY]  # fmt: skip
    assert main([*argv, "--resume"]) == 1
    err = capsys.readouterr().err
    assert "--resume CHECKPOINT" in err and f"checkpoint of this directory is {str(older)!r}" in err
    assert main([*argv, "--resume", str(older)]) == 0
    assert "iql: 30 gradient steps" in capsys.readouterr().out
    assert (run / "checkpoints" / f"{newest.name}.set-aside").exists()


def test_train_resume_of_a_finetuning_run_names_both_kinds(trained_run, tmp_path, capsys):
    """Review of issue 15, finding 5."""
    out = tmp_path / "online"
    argv = ["finetune", trained_run["run"], "--dataset", trained_run["dataset"], "--root",
            trained_run["root"], "--out", str(out), "--steps", "4", "--frames-per-batch",
            "2", "--checkpoint-every", "2", "--batch-size", "16", "--no-progress"]  # fmt: skip
    assert main(argv) == 0
    argv = ["train", "--algo", "iql", "--dataset", trained_run["dataset"], "--root",
            trained_run["root"], "--out", str(out), "--steps", "30", "--resume", *TINY]  # fmt: skip
    assert main(argv) == 1
    err = capsys.readouterr().err
    assert "holds an iql finetune run" in err and "a train run resumes only a train run" in err
    assert "sampler" not in err


def test_a_preset_sets_the_papers_values_and_set_goes_on_top(trained_run, tmp_path, capsys):
    run = tmp_path / "preset"
    argv = ["train", "--algo", "iql", "--dataset", trained_run["dataset"], "--root",
            trained_run["root"], "--out", str(run), "--steps", "2", "--preset", "antmaze", *TINY,
            "--set", "temperature=5.0"]  # fmt: skip
    assert main(argv) == 0
    hp = json.loads((run / "summary.json").read_text())["hyperparameters"]
    assert (hp["expectile"], hp["temperature"]) == (0.9, 5.0)
    argv = [a.replace("antmaze", "gym") for a in argv]
    assert main([*argv, "--out", str(tmp_path / "x")]) == 2
    assert "iql has no preset 'gym'; valid presets: adroit, antmaze" in capsys.readouterr().err


def test_list_hyperparameters_lists_the_presets(capsys):
    assert main(["train", "--algo", "cql", "--list-hyperparameters"]) == 0
    out = capsys.readouterr().out
    assert "--preset lagrange" in out and "lagrange_thresh=5.0" in out


def test_train_rebrac_with_a_dataset_preset(trained_run, tmp_path):
    """ReBRAC reads the dataset's next action, which the run derives from the episodes."""
    run = tmp_path / "rebrac"
    argv = ["train", "--algo", "rebrac", "--dataset", trained_run["dataset"], "--root",
            trained_run["root"], "--out", str(run), "--steps", "4", "--preset",
            "hopper-medium-replay", *TINY]  # fmt: skip
    assert main(argv) == 0
    summary = json.loads((run / "summary.json").read_text())
    assert summary["step"] == 4
    hp = summary["hyperparameters"]
    assert (hp["beta_actor"], hp["beta_critic"], hp["critic_layer_norm"]) == (0.05, 0.5, True)


def test_an_eval_interval_longer_than_the_run_is_warned_about(trained_run, tmp_path, capsys):
    argv = ["train", "--algo", "bc", "--dataset", trained_run["dataset"],
            "--root", trained_run["root"], "--out", str(tmp_path / "bc"), "--steps", "4", *TINY,
            "--eval-env", "auto", "--eval-every", "100", "--eval-episodes", "1",
            "--log-every", "2"]  # fmt: skip
    assert main(argv) == 0
    err = capsys.readouterr().err
    assert err.count("warning:") == 1 and (
        "train: warning: --eval-every 100 is more than --steps 4: the policy is evaluated "
        "only before the first update and after the last one" in err
    )
    evaluations = json.loads((tmp_path / "bc" / "summary.json").read_text())["evaluations"]
    assert [e["step"] for e in evaluations] == [0, 4]  # as the warning says


def test_a_failing_command_gives_its_error_alone_not_the_run_warnings(
    trained_run, tmp_path, capsys
):
    argv = ["train", "--algo", "iql", "--dataset", trained_run["dataset"], "--root",
            trained_run["root"], "--out", str(tmp_path / "x"), "--steps", "2", *TINY,
            "--eval-env", "auto", "--set", "expectile=abc"]  # fmt: skip
    assert main(argv) == 2  # --eval-every 5000 > --steps 2, but the run never starts
    assert capsys.readouterr().err.startswith("torchrl-offline train: error: --set:")


def test_a_missing_logger_package_is_refused_with_an_install_hint(
    trained_run, tmp_path, monkeypatch, capsys
):
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util, "find_spec", lambda name, *a: None if name == "tensorboard" else real(name)
    )
    out = tmp_path / "tb"
    argv = ["train", "--algo", "bc", "--dataset", trained_run["dataset"], "--root",
            trained_run["root"], "--out", str(out), "--steps", "4", "--logger", "tensorboard",
            *TINY]  # fmt: skip
    assert main(argv) == 1
    err = capsys.readouterr().err
    assert "--logger tensorboard needs the tensorboard package" in err
    assert "pip install tensorboard" in err
    assert not out.exists()  # refused before the run directory is claimed


def test_the_small_preset_trains_2x64_networks_with_the_default_presets_values(
    trained_run, tmp_path
):
    run = tmp_path / "cql"
    argv = ["train", "--algo", "cql", "--preset", "small", "--dataset", trained_run["dataset"],
            "--root", trained_run["root"], "--out", str(run), "--steps", "2",
            "--batch-size", "16", "--no-progress"]  # fmt: skip
    assert main(argv) == 0
    hp = json.loads((run / "summary.json").read_text())["hyperparameters"]
    assert hp["hidden_sizes"] == [64, 64]
    # CQL's default preset (d3rlpy's conservative term) stays: small changes sizes only
    assert (hp["min_q_weight"], hp["with_lagrange"], hp["lagrange_thresh"]) == (5.0, True, 50.0)


def test_list_hyperparameters_shows_the_small_preset(capsys):
    assert main(["train", "--algo", "cql", "--list-hyperparameters"]) == 0
    out = capsys.readouterr().out
    assert "--preset small" in out and "hidden_sizes=(64, 64) (on top of d3rlpy)" in out
    assert "--preset d3rlpy" in out and "(the default)" in out


def test_a_long_run_gets_the_small_preset_hint(trained_run, tmp_path, monkeypatch, capsys):
    """``train`` registers the LongRunHint; here every run counts as long."""
    from torchrl_offline.trainers import speed_hint

    class EveryRunIsLong(speed_hint.LongRunHint):
        def __init__(self, **kwargs):
            super().__init__(threshold=0.0, after=0.0, probe_updates=1, min_speedup=0.0, **kwargs)

    monkeypatch.setattr(speed_hint, "LongRunHint", EveryRunIsLong)
    argv = ["train", "--algo", "td3_bc", "--dataset", trained_run["dataset"], "--root",
            trained_run["root"], "--out", str(tmp_path / "td3"), "--steps", "4",
            "--batch-size", "16", "--set", "hidden_sizes=(128,128)", "--no-progress"]  # fmt: skip
    assert main(argv) == 0
    err = capsys.readouterr().err
    assert re.search(r"hint: about .* to go at .* steps/s; --preset small \(2x64 networks\) "
                     r"trains \d+\.\dx faster here: about ", err), err  # fmt: skip
