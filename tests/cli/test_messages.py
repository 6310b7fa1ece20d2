"""What every command prints besides its results: merged warnings, OPE notes, policy modes."""

from __future__ import annotations

import warnings

import pytest

from torchrl_offline.cli import main


def test_a_warning_raised_many_times_is_printed_once_with_its_count(monkeypatch, capsys):
    import torchrl_offline.cli.info as info

    def noisy(args):
        for i in range(12):
            with warnings.catch_warnings():  # as libraries do: resets "once per location"
                warnings.warn("the behaviour policy was estimated", UserWarning, stacklevel=1)
            warnings.warn(f"chunk {i % 2} is small", RuntimeWarning, stacklevel=1)
        warnings.warn("ignored", DeprecationWarning, stacklevel=1)
        return 0

    monkeypatch.setattr(info, "run", noisy)
    with warnings.catch_warnings():  # Python's default filters, not pytest's
        warnings.simplefilter("default")
        warnings.simplefilter("ignore", DeprecationWarning)
        assert main(["info", "any-dataset"]) == 0
    err = capsys.readouterr().err.splitlines()
    assert err == [
        "torchrl-offline info: warning: UserWarning: the behaviour policy was estimated (12 times)",
        "torchrl-offline info: warning: RuntimeWarning: chunk 0 is small (6 times)",
        "torchrl-offline info: warning: RuntimeWarning: chunk 1 is small (6 times)",
    ]


def test_warnings_are_printed_when_the_command_fails(monkeypatch, capsys):
    import torchrl_offline.cli.info as info

    def failing(args):
        for _ in range(3):
            with warnings.catch_warnings():
                warnings.warn("low effective sample size", stacklevel=1)
        raise ValueError("bad data")

    monkeypatch.setattr(info, "run", failing)
    assert main(["info", "any-dataset"]) == 1
    err = capsys.readouterr().err
    assert "warning: UserWarning: low effective sample size (3 times)" in err
    assert err.rstrip().endswith("error: bad data")


def test_ope_notes_and_warnings_are_grouped_by_message():
    from torchrl_offline.cli.ope import _messages
    from torchrl_offline.ope.result import OPEResult

    shared = "the behaviour policy was estimated from the data"
    results = {
        name: OPEResult(0.0, 0.0, 0.0, notes=[shared], warnings=warns)
        for name, warns in (("wis", ["low ESS"]), ("wpdis", ["low ESS"]), ("wdr", []))
    }
    assert _messages(results) == [
        f"wis, wpdis, wdr: note: {shared}",
        "wis, wpdis: WARNING: low ESS",
    ]
    # an estimator that raised is a row of its own, its error listed with the messages
    from rich.console import Console

    from torchrl_offline.cli.ope import _table
    from torchrl_offline.ope.result import OPEError

    results["is"] = OPEError("Every importance weight is zero")
    assert _messages(results)[-1] == "is: ERROR: Every importance weight is zero"
    console = Console(width=200, record=True)
    console.print(_table(results, -1.0, 0.95))
    rows = [line.split() for line in console.export_text().splitlines()]
    assert ["is", "failed", "-", "-"] in rows
    assert ["wis", "()", "0", "[0,", "0]", "-", "1"] in rows


def test_stochastic_mode_needs_a_policy_with_a_distribution():
    from torchrl_offline.cli.common import UsageError, require_policy_mode

    class Deterministic:
        pass

    require_policy_mode(Deterministic(), "greedy", "td3_bc")
    with pytest.raises(UsageError, match="td3_bc policy is deterministic"):
        require_policy_mode(Deterministic(), "stochastic", "td3_bc")
