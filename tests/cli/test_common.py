"""Helpers the subcommands share: value parsing, run intervals, warnings, logger checks."""

from __future__ import annotations

import argparse
import importlib.util
import math

import pytest

from torchrl_offline.cli import build_parser
from torchrl_offline.cli.common import (
    LOGGERS,
    CLIError,
    check_logger_installed,
    log_interval,
    parse_scalar,
    run_keywords,
    warn_run_flags,
)
from torchrl_offline.trainers.hooks import LOGGER_KINDS


@pytest.mark.parametrize(
    ("text", "value"),
    [
        ("3", 3),
        ("-2", -2),
        ("0.5", 0.5),
        ("1e-3", 1e-3),
        ("1_000", 1000),
        ("true", True),
        ("False", False),
        ("TRUE", True),
        ("none", None),
        ("null", None),
        ("None", None),
        ("(64,64)", (64, 64)),
        ("(64, 64)", (64, 64)),
        ("(64,)", (64,)),
        ("[256, 256, 256]", [256, 256, 256]),
        ("'3'", "3"),
        ("sum", "sum"),
        ("runs/a.pt", "runs/a.pt"),
        ("tanh_normal", "tanh_normal"),
        ("a b", "a b"),
        ("", ""),
    ],
)
def test_parse_scalar_reads_python_literals_and_keeps_other_text(text, value):
    got = parse_scalar(text)
    assert got == value and type(got) is type(value)


def test_parse_scalar_reads_infinities_and_nan():
    assert parse_scalar("inf") == math.inf and parse_scalar("-inf") == -math.inf
    assert math.isnan(parse_scalar("nan"))


def test_parse_scalar_never_evaluates_code():
    assert parse_scalar("__import__('os').getcwd()") == "__import__('os').getcwd()"


def test_loss_logging_defaults_to_twenty_points_per_run_at_most_every_1000_steps():
    def interval(*argv: str) -> int:
        args = build_parser().parse_args(["train", "--algo", "iql", *argv])
        return run_keywords(args)["log_interval"]

    assert interval("--steps", "200") == 10
    assert interval("--steps", "30") == 1
    assert interval("--steps", "1000000") == 1000
    assert interval("--steps", "1000000", "--log-every", "50") == 50
    assert log_interval(argparse.Namespace(log_every=None, steps=5)) == 1


def _run_args(**values) -> argparse.Namespace:
    base = {"command": "train", "steps": 1000, "eval_every": 5000, "log_every": None,
            "resume": False}  # fmt: skip
    return argparse.Namespace(**{**base, **values})


def test_an_evaluation_interval_longer_than_the_run_is_warned_about(capsys):
    messages = warn_run_flags(_run_args(), evaluating=True)
    assert len(messages) == 1
    err = capsys.readouterr().err
    assert err.startswith("torchrl-offline train: warning: --eval-every 5000 is more than")
    assert "evaluated only before the first update and after the last one" in err
    resumed = warn_run_flags(_run_args(resume=True), evaluating=True)
    assert "after the last update" in resumed[0]


def test_no_warning_without_evaluation_or_with_intervals_inside_the_run(capsys):
    assert warn_run_flags(_run_args(), evaluating=False) == []
    assert warn_run_flags(_run_args(eval_every=100, log_every=10), evaluating=True) == []
    assert warn_run_flags(_run_args(eval_every=1000), evaluating=True) == []  # at 1000: the end
    assert capsys.readouterr().err == ""


def test_a_loss_logging_interval_longer_than_the_run_is_warned_about():
    (message,) = warn_run_flags(_run_args(log_every=5000), evaluating=False)
    assert "--log-every 5000 is more than --steps 1000: no loss is logged" in message
    assert "leave it out: every 50" in message


def test_a_missing_logger_package_gets_an_install_hint(monkeypatch):
    real = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util, "find_spec", lambda name, *a: None if name == "tensorboard" else real(name)
    )
    with pytest.raises(CLIError, match=r"--logger tensorboard needs .*: pip install tensorboard"):
        check_logger_installed("tensorboard")
    check_logger_installed("csv")
    check_logger_installed("none")


def test_the_logger_choices_are_the_trainers_loggers():
    assert set(LOGGERS) == {*LOGGER_KINDS, "none"}
