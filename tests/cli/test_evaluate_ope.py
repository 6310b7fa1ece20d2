"""``torchrl-offline evaluate`` and ``ope``, and ``collect`` with a checkpoint's policy."""

from __future__ import annotations

import argparse
import json
import math
from pathlib import Path

import pytest
import torch

from torchrl_offline.cli import evaluate, main
from torchrl_offline.data import load_minari
from torchrl_offline.trainers.checkpoint import latest_checkpoint


def test_evaluate_json(trained_run, capsys):
    argv = ["evaluate", trained_run["run"], "--dataset", trained_run["dataset"],
            "--root", trained_run["root"], "--episodes", "2", "--json", "--no-progress"]  # fmt: skip
    assert main(argv) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["algorithm"] == "iql" and result["step"] == 20 and result["env"] == "Pendulum-v1"
    assert len(result["returns"]) == 2
    assert result["return_mean"] == pytest.approx(sum(result["returns"]) / 2)
    assert result["normalized_score"] == pytest.approx(100 * (result["return_mean"] + 1200) / 1050)
    assert result["policy_mode"] == "greedy"  # the default, the policy one deploys
    # Same seed, same returns.
    assert main(argv) == 0
    assert json.loads(capsys.readouterr().out)["returns"] == result["returns"]
    # The stochastic policy samples its actions: other returns, and said so.
    assert main([*argv, "--policy-mode", "stochastic"]) == 0
    sampled = json.loads(capsys.readouterr().out)
    assert sampled["policy_mode"] == "stochastic" and sampled["returns"] != result["returns"]


def test_evaluate_text_with_explicit_env_and_references(trained_run, capsys):
    ckpt = str(latest_checkpoint(Path(trained_run["run"]) / "checkpoints"))
    argv = ["evaluate", ckpt, "--env", "Pendulum-v1", "--episodes", "1", "--max-steps", "10",
            "--ref-min", "-100", "--ref-max", "0", "--no-progress"]  # fmt: skip
    assert main(argv) == 0
    out = capsys.readouterr().out
    assert "iql at step 20" in out and "Pendulum-v1, 1 episodes: return" in out
    assert "normalized score" in out
    assert "policy: greedy (the actor's deterministic action" in out


def test_evaluate_a_run_in_the_env_it_recorded(trained_run, tmp_path, capsys, monkeypatch):
    """Without --env and --dataset, a run that evaluated while training is evaluated in its
    env with its reference returns (its run.json); BCQ's policy is said to be what it is."""
    monkeypatch.setenv("TORCHRL_OFFLINE_CACHE", trained_run["cache"])
    run = str(tmp_path / "bcq")
    assert main(["train", "--algo", "bcq", "--dataset", trained_run["dataset"], "--root",
                 trained_run["root"], "--steps", "4", "--out", run, "--batch-size", "16",
                 "--set", "hidden_sizes=(8,)", "--set", "vae_hidden_sizes=(8,)",
                 "--eval-every", "4", "--eval-episodes", "1", "--eval-max-steps", "5",
                 "--no-progress"]) == 0  # fmt: skip
    capsys.readouterr()
    argv = ["evaluate", run, "--episodes", "1", "--max-steps", "10", "--no-progress"]
    assert main([*argv, "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["env"] == "Pendulum-v1" and result["algorithm"] == "bcq"
    assert result["normalized_score"] == pytest.approx(100 * (result["return_mean"] + 1200) / 1050)
    assert main(argv) == 0
    out = capsys.readouterr().out
    assert "policy: greedy (the best of 10 candidate actions sampled at each state" in out
    assert main([*argv, "--policy-mode", "stochastic"]) == 2
    assert "takes the best of candidate actions sampled afresh" in capsys.readouterr().err
    # another env than the recorded one: the run's reference returns are not its own
    assert main([*argv, "--env", "Pendulum-v1", "--json"]) == 0  # the same env: used
    assert json.loads(capsys.readouterr().out)["normalized_score"] is not None
    parser = argparse.ArgumentParser()
    evaluate.add_parser(parser.add_subparsers())
    other = parser.parse_args(["evaluate", run, "--env", "MyPendulum-v0"])
    assert evaluate._env_and_reference(other) == ("MyPendulum-v0", None)


def test_evaluate_bad_input(trained_run, tmp_path, capsys):
    def error(argv: list[str], status: int = 1) -> str:
        assert main(["evaluate", *argv, "--no-progress"]) == status
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and "Traceback" not in err
        return err

    assert "name the environment with --env" in error([trained_run["run"]], status=2)
    assert "not found" in error([str(tmp_path / "nothing.pt"), "--env", "Pendulum-v1"])
    assert "no checkpoint in" in error([str(tmp_path), "--env", "Pendulum-v1"])
    bad = tmp_path / "checkpoint_000000001.pt"
    bad.write_bytes(b"not a checkpoint")
    assert str(bad) in error([str(bad), "--env", "Pendulum-v1"])
    assert "does not match the env 'CartPole-v1'" in error(
        [trained_run["run"], "--env", "CartPole-v1"]
    )


def test_ope_json_with_intervals(trained_run, capsys):
    argv = ["ope", trained_run["run"], "--dataset", trained_run["dataset"],
            "--root", trained_run["root"], "--estimators", "fqe,wis,wdr", "--fqe-steps", "20",
            "--fqe-batch-size", "32", "--bootstrap", "50", "--json", "--no-progress",
            "--policy-mode", "stochastic", "--fqe-refits", "3"]  # fmt: skip
    assert main(argv) == 0
    out = json.loads(capsys.readouterr().out)
    assert list(out["estimates"]) == ["fqe", "wis", "wdr"]
    assert out["policy_mode"] == "stochastic"
    for estimate in out["estimates"].values():
        assert estimate["ci_low"] <= estimate["value"] <= estimate["ci_high"]
        assert math.isfinite(estimate["value"])
        assert estimate["policy_mode"] == "stochastic"
    assert out["estimates"]["fqe"]["diagnostics"]["n_refits"] == 3
    # The logged episodes' discounted return, computed directly.
    data = load_minari(trained_run["dataset"], root=trained_run["root"]).storage[:]
    rewards = data["next", "reward"].reshape(2, 200).double()
    discounts = 0.99 ** torch.arange(200, dtype=torch.float64)
    assert out["behavior_value"] == pytest.approx((rewards * discounts).sum(1).mean().item())


def test_ope_table(trained_run, capsys):
    argv = ["ope", trained_run["run"], "--dataset", trained_run["dataset"],
            "--root", trained_run["root"], "--estimators", "wis,pdis", "--bootstrap", "50",
            "--no-progress", "--policy-mode", "stochastic"]  # fmt: skip
    assert main(argv) == 0
    out = capsys.readouterr().out
    assert "95% CI" in out and "behaviour (logged)" in out
    assert "wis (WIS)" in out and "pdis (PDIS)" in out
    assert "policy: stochastic (actions sampled from the actor's distribution)" in out
    # Captured (not a terminal): plain text, no colour codes, no line cut by a width.
    assert "\x1b[" not in out
    assert any(len(line) > 100 for line in out.splitlines())


def test_ope_scores_the_greedy_policy_by_default(trained_run, capsys):
    base = ["ope", trained_run["run"], "--dataset", trained_run["dataset"],
            "--root", trained_run["root"], "--fqe-steps", "20", "--fqe-batch-size", "32",
            "--fqe-refits", "2", "--bootstrap", "50", "--no-progress"]  # fmt: skip
    assert main(base) == 0
    out = capsys.readouterr().out
    assert "policy: greedy (the actor's deterministic action" in out
    # the estimators' advice in the command line's words (FQE's num_steps is --fqe-steps)
    assert "may not have propagated; increase --fqe-steps" in out and "num_steps" not in out
    assert "fqe (FQE)" in out and "wis (" not in out  # IQL's actions are continuous:
    assert "note: wis, wpdis, wdr not run: the greedy policy of continuous actions" in out
    # ...the greedy policy has no density: named importance-sampling estimators are refused
    assert main([*base, "--estimators", "fqe,wis"]) == 2
    err = capsys.readouterr().err
    assert "--estimators wis: the greedy policy of continuous actions" in err
    assert "--kernel-bandwidth" in err and err.count("\n") == 1
    # ...unless a kernel smooths it
    assert main([*base, "--estimators", "wis", "--kernel-bandwidth", "0.5", "--json"]) == 0
    wis = json.loads(capsys.readouterr().out)["estimates"]["wis"]
    assert wis["policy_mode"] == "greedy" and "kernel" in wis["policy"]
    assert main([*base, "--policy-mode", "stochastic", "--epsilon", "0.1"]) == 2
    assert "do not apply to --policy-mode stochastic" in capsys.readouterr().err


def test_ope_bad_input(trained_run, tmp_path, capsys):
    argv = ["ope", trained_run["run"], "--dataset", trained_run["dataset"], "--root",
            trained_run["root"], "--no-progress"]  # fmt: skip
    assert main([*argv, "--estimators", "wis,magic"]) == 2
    assert "unknown estimator 'magic'; valid names: fqe, is, wis" in capsys.readouterr().err
    assert main([*argv, "--estimators", "wis,sndr", "--policy-mode", "stochastic"]) == 2
    assert "--estimators sndr: these need a log of one-step decisions" in capsys.readouterr().err
    cartpole = ["collect", "CartPole-v1", "--dataset-id", "cp/x-v0", "--steps", "20",
                "--root", trained_run["root"], "--no-progress", "--overwrite"]  # fmt: skip
    assert main(cartpole) == 0
    capsys.readouterr()
    assert main(["ope", trained_run["run"], "--dataset", "cp/x-v0", "--root",
                 trained_run["root"], "--estimators", "wis"]) == 1  # fmt: skip
    err = capsys.readouterr().err
    assert "does not match the checkpoint's iql policy" in err and err.count("\n") == 1


def test_collect_with_checkpoint_policy(trained_run, tmp_path):
    root = str(tmp_path)
    base = ["collect", "Pendulum-v1", "--steps", "30", "--root", root, "--no-progress"]
    assert main([*base, "--dataset-id", "p/ckpt-v0",
                 "--policy", f"checkpoint:path={trained_run['run']}"]) == 0  # fmt: skip
    assert main([*base, "--dataset-id", "p/noisy-v0",
                 "--policy", f"checkpoint:path={trained_run['run']},sigma=0.5"]) == 0  # fmt: skip
    for name in ("ckpt", "noisy"):
        data = load_minari(f"p/{name}-v0", root=root).storage[:]
        assert torch.isfinite(data["action_log_prob"]).all()
        assert (data["action"].abs() <= 2.0).all()


def test_ope_on_a_log_of_decisions_runs_the_bandit_estimators(tmp_path, monkeypatch, capsys):
    """On a log of one-step decisions the default set is IS, WIS, DM and the DR family with
    a cross-fitted reward regression (no FQE fit); PDIS is IS and WPDIS is WIS: each is
    reported once, with a note; pbm-ips sums the slots of the log's positions."""
    from tests.decision_log import decision_frame, decision_log

    monkeypatch.setenv("TORCHRL_OFFLINE_CACHE", str(tmp_path / "cache"))
    log = str(tmp_path / "log.csv")
    decision_frame(decision_log(200)).to_csv(log, index=False)
    run = str(tmp_path / "run")
    assert main(["train", "--algo", "bc", "--dataset", log, "--horizon", "1", "--steps", "10",
                 "--out", run, "--batch-size", "16", "--set", "hidden_sizes=(8,)",
                 "--eval-env", "none", "--no-progress"]) == 0  # fmt: skip
    argv = ["ope", run, "--dataset", log, "--horizon", "1", "--policy-mode", "stochastic",
            "--fqe-steps", "20", "--fqe-refits", "3", "--bootstrap", "50", "--no-progress",
            "--json"]  # fmt: skip
    capsys.readouterr()
    assert main(argv) == 0
    out = json.loads(capsys.readouterr().out)
    assert list(out["estimates"]) == ["is", "wis", "dm", "dr", "sndr", "switch-dr", "dr-os"]
    assert "notes" not in out
    dr = out["estimates"]["dr"]
    assert dr["diagnostics"]["reward_model"] == "ridge, 2-fold cross-fitted"
    assert dr["ci_low"] < dr["value"] < dr["ci_high"]
    assert main([*argv, "--estimators", "fqe,wis,wpdis,wdr", "--reward-model", "mlp"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert list(out["estimates"]) == ["fqe", "wis", "wdr"]
    assert out["notes"] == ["wpdis not run: every episode is one step, where WPDIS equals WIS"]
    assert not out["estimates"]["fqe"]["warnings"]
    assert main([*argv, "--estimators", "is,pdis,pbm-ips,switch-dr", "--switch-tau", "1"]) == 0
    out = json.loads(capsys.readouterr().out)["estimates"]
    assert list(out) == ["is", "pbm-ips", "switch-dr"]
    assert out["pbm-ips"]["diagnostics"]["positions"] == 3
    assert out["switch-dr"]["diagnostics"]["tau"] == 1.0
