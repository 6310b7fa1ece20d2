"""``torchrl-offline finetune``."""

from __future__ import annotations

import json

import pytest

from torchrl_offline.cli import main
from torchrl_offline.trainers.checkpoint import list_checkpoints

TINY = ["--batch-size", "16", "--frames-per-batch", "3", "--checkpoint-every", "3",
        "--log-every", "3", "--no-progress"]  # fmt: skip


def _argv(trained_run, out, *extra):
    return ["finetune", trained_run["run"], "--dataset", trained_run["dataset"],
            "--root", trained_run["root"], "--out", str(out), *TINY, *extra]  # fmt: skip


def test_finetune_evaluates_before_and_after_and_writes_a_summary(trained_run, tmp_path, capsys):
    out = tmp_path / "online"
    argv = _argv(trained_run, out, "--steps", "6", "--eval-env", "auto", "--eval-every", "6",
                 "--eval-episodes", "1", "--eval-max-steps", "10", "--anneal-steps", "4")  # fmt: skip
    assert main(argv) == 0
    text = capsys.readouterr().out
    assert "iql: 6 fine-tuning steps in Pendulum-v1 from" in text
    assert "evaluation in Pendulum-v1 before (step 0): return" in text
    assert "evaluation in Pendulum-v1 after (step 6): return" in text
    summary = json.loads((out / "summary.json").read_text())
    assert summary["step"] == 6 and summary["offline_step"] == 20
    assert [e["step"] for e in summary["evaluations"]] == [0, 6]
    steps = [int(p.stem.split("_")[1]) for p in list_checkpoints(out / "checkpoints")]
    assert steps == [3, 6]
    assert (out / "checkpoints" / "online_buffer" / "index.json").is_file()
    assert (out / "metrics.csv").is_file() and (out / "metrics.png").is_file()
    assert f"metrics: {out / 'metrics.csv'}\nfigure: {out / 'metrics.png'}\n" in text


def test_finetune_resume_continues_the_run(trained_run, tmp_path, capsys):
    out = tmp_path / "online"
    assert main([*_argv(trained_run, out, "--steps", "3")]) == 0
    assert main([*_argv(trained_run, out, "--steps", "6", "--resume")]) == 0
    assert "iql: 6 fine-tuning steps" in capsys.readouterr().out
    assert json.loads((out / "summary.json").read_text())["step"] == 6
    # another offline-to-online setting is refused on resume
    assert main([*_argv(trained_run, out, "--steps", "9", "--resume", "--utd-ratio", "2")]) == 1
    err = capsys.readouterr().err
    assert "finetune utd_ratio=1.0 vs 2.0" in err and err.count("\n") == 1


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--env", "CartPole-v1"], "does not match the env 'CartPole-v1'"),
        (["--env", "Nope-v0"], "unknown environment 'Nope-v0'"),
        (["--algo", "td3_bc"], "is a iql run, not td3_bc"),
        (["--offline-fraction", "1.0"], "--offline-fraction must be in (0, 1)"),
        (["--frames-per-batch", "0"], "--frames-per-batch must be positive"),
    ],
)
def test_finetune_bad_input_is_one_line(trained_run, tmp_path, capsys, extra, message):
    status = 2 if extra[0] in ("--offline-fraction", "--frames-per-batch") else 1  # usage: 2
    assert main([*_argv(trained_run, tmp_path / "o", "--steps", "2"), *extra]) == status
    err = capsys.readouterr().err
    assert err.startswith("torchrl-offline finetune: error: ")
    assert message in err and err.count("\n") == 1


def test_finetune_bad_paths_are_one_line(trained_run, tmp_path, capsys):
    base = ["finetune", "--root", trained_run["root"], "--steps", "2", "--no-progress"]
    cases = [
        ([str(tmp_path / "none"), "--dataset", trained_run["dataset"], "--out", str(tmp_path)],
         "not found"),
        ([trained_run["run"], "--dataset", "no/such-v0", "--out", str(tmp_path / "o")],
         "unknown dataset 'no/such-v0'"),
        ([trained_run["run"], "--dataset", trained_run["dataset"], "--out", trained_run["run"]],
         "holds the checkpoint being fine-tuned"),
    ]  # fmt: skip
    for argv, message in cases:
        assert main([*base, *argv]) == 1
        err = capsys.readouterr().err
        assert message in err and err.count("\n") == 1, err


def test_resume_from_another_algorithms_run_is_refused(trained_run, tmp_path, capsys):
    td3 = tmp_path / "td3"
    assert main(["train", "--algo", "td3_bc", "--dataset", trained_run["dataset"], "--root",
                 trained_run["root"], "--steps", "2", "--out", str(td3), "--batch-size", "16",
                 "--set", "hidden_sizes=(16,)", "--eval-env", "none", "--no-progress"]) == 0  # fmt: skip
    out = tmp_path / "online"
    assert main([*_argv(trained_run, out, "--steps", "3")]) == 0
    argv = _argv(trained_run, out, "--steps", "6", "--resume")
    argv[1] = str(td3)
    assert main(argv) == 1
    err = capsys.readouterr().err
    assert "fine-tuning run of iql that this td3_bc" in err and err.count("\n") == 1


def test_finetune_help(capsys):
    with pytest.raises(SystemExit) as exc:
        main(["finetune", "--help"])
    assert exc.value.code == 0
    out = capsys.readouterr().out
    assert "usage: torchrl-offline finetune" in out and "--offline-fraction" in out
    assert "--resume" in out and "--no-progress" in out


def test_ctrl_c_leaves_a_resumable_checkpoint(trained_run, tmp_path, monkeypatch, capsys):
    import os
    import signal

    import torchrl_offline.cli.finetune as finetune_cli

    real_open = finetune_cli.open_dataset

    def open_with_ctrl_c(*args, **kwargs):
        buffer = real_open(*args, **kwargs)
        sample, calls = buffer.sample, [0]

        def sample_then_interrupt(*a, **k):
            calls[0] += 1
            if calls[0] == 4:  # the user presses Ctrl-C during the 4th update
                os.kill(os.getpid(), signal.SIGINT)
            return sample(*a, **k)

        buffer.sample = sample_then_interrupt
        return buffer

    out = tmp_path / "online"
    monkeypatch.setattr(finetune_cli, "open_dataset", open_with_ctrl_c)
    assert main(_argv(trained_run, out, "--steps", "30", "--checkpoint-every", "1000")) == 130
    assert "--resume" in capsys.readouterr().err
    assert json.loads((out / "summary.json").read_text())["step"] == 4
    assert [p.name for p in list_checkpoints(out / "checkpoints")] == ["checkpoint_000000004.pt"]
    monkeypatch.setattr(finetune_cli, "open_dataset", real_open)
    assert (
        main(_argv(trained_run, out, "--steps", "6", "--checkpoint-every", "1000", "--resume")) == 0
    )
    assert json.loads((out / "summary.json").read_text())["step"] == 6


def test_cal_ql_trains_and_finetunes_from_the_command_line(trained_run, tmp_path, capsys):
    """Cal-QL's Monte Carlo returns are derived offline and online, with nothing to pass."""
    run = tmp_path / "cal_ql"
    argv = ["train", "--algo", "cal_ql", "--dataset", trained_run["dataset"],
            "--root", trained_run["root"], "--out", str(run), "--steps", "3",
            "--checkpoint-every", "3", "--batch-size", "16", "--set", "hidden_sizes=(8,)",
            "--set", "num_random=2", "--eval-env", "none", "--no-progress"]  # fmt: skip
    assert main(argv) == 0
    out = tmp_path / "online"
    argv = ["finetune", str(run), "--dataset", trained_run["dataset"], "--root",
            trained_run["root"], "--out", str(out), *TINY, "--steps", "4"]  # fmt: skip
    assert main(argv) == 0
    assert "cal_ql: 4 fine-tuning steps" in capsys.readouterr().out
    assert json.loads((out / "summary.json").read_text())["step"] == 4
