"""``torchrl-offline ope --estimators model``: the model-based estimate next to FQE."""

from __future__ import annotations

import json
import math

from torchrl_offline.cli import main


def test_model_based_estimate_in_the_json_output(trained_run, capsys):
    argv = ["ope", trained_run["run"], "--dataset", trained_run["dataset"],
            "--root", trained_run["root"], "--estimators", "model", "--model-updates", "30",
            "--model-hidden", "16", "--model-termination", "pendulum", "--model-horizon", "20",
            "--bootstrap", "50", "--json", "--no-progress"]  # fmt: skip
    assert main(argv) == 0
    out = json.loads(capsys.readouterr().out)
    model = out["estimates"]["model"]
    assert model["estimator"] == "ModelBased" and model["policy_mode"] == "greedy"
    assert model["ci_low"] <= model["value"] <= model["ci_high"]
    assert math.isfinite(model["value"])
    diagnostics = model["diagnostics"]
    assert diagnostics["horizon"] == 20 and diagnostics["model_updates"] <= 30
    assert 0.0 <= diagnostics["out_of_range_fraction"] <= 1.0
    assert "member_std" in diagnostics


def test_model_runs_for_the_greedy_continuous_policy_without_a_kernel(trained_run, capsys):
    argv = ["ope", trained_run["run"], "--dataset", trained_run["dataset"],
            "--root", trained_run["root"], "--estimators", "model,wis", "--model-updates", "5",
            "--model-hidden", "8", "--no-progress"]  # fmt: skip
    assert main(argv) == 2  # wis needs a density; model does not
    assert "--estimators wis" in capsys.readouterr().err
    assert main([*argv[:7], "model", *argv[8:], "--model-horizon", "3"]) == 0
    assert "model (ModelBased)" in capsys.readouterr().out


def test_unknown_termination_is_a_usage_error(trained_run, capsys):
    argv = ["ope", trained_run["run"], "--dataset", trained_run["dataset"],
            "--root", trained_run["root"], "--estimators", "model", "--model-updates", "2",
            "--model-termination", "walker", "--no-progress"]  # fmt: skip
    assert main(argv) == 2
    assert "no known termination function for 'walker'" in capsys.readouterr().err
