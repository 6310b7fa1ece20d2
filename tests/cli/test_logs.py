"""Users' logs on the command line: ``--columns``, ``--ignore``, ``--env-id``, ``info --save``,
and terminal steps kept, truncated ones dropped and reported."""

from __future__ import annotations

import json
import os
from pathlib import Path

import gymnasium as gym
import numpy as np
import pandas as pd
import pytest
import torch

from torchrl_offline.cli import main
from torchrl_offline.cli.common import UsageError, open_dataset
from torchrl_offline.cli.log_options import LOG_FIELDS, cli_wording, parse_columns
from torchrl_offline.data.fingerprint import dataset_fingerprint
from torchrl_offline.data.log_columns import ACCEPTED_NAMES

#: The log's own column names -> the fields they hold, as --columns options.
COLUMNS = [
    "--columns", "observation=cos1,sin1,cos2,sin2,vel1,vel2", "--columns", "action=torque",
    "--columns", "reward=r", "--columns", "terminated=goal", "--columns", "truncated=timeout",
    "--columns", "episode=run", "--columns", "action_prob=p",
]  # fmt: skip
LOG = [*COLUMNS, "--ignore", "note", "--env-id", "Acrobot-v1"]


def acrobot_log(path: Path, caps: tuple[int, ...], seed: int = 0) -> pd.DataFrame:
    """Acrobot-v1 run by an epsilon-greedy swing-up heuristic (torque along the second
    joint's velocity), one episode per entry of ``caps``: an episode reaching the goal
    before its cap ends ``goal=True``, one stopped by the cap ``timeout=True``. Columns are
    named as a user's logger would, plus a ``note`` column that holds no field."""
    env = gym.make("Acrobot-v1")
    rng = np.random.default_rng(seed)
    rows = []
    for episode, cap in enumerate(caps):
        obs, _ = env.reset(seed=seed + episode)
        for t in range(cap):
            probs = np.full(3, 0.1 / 3)
            probs[2 if obs[5] > 0 else 0] += 0.9
            action = int(rng.choice(3, p=probs))
            nxt, reward, goal, _, _ = env.step(action)
            names = ("cos1", "sin1", "cos2", "sin2", "vel1", "vel2")
            rows.append(
                {
                    "run": episode,
                    **dict(zip(names, obs.tolist())),
                    "torque": action,
                    "r": reward,
                    "goal": goal,
                    "timeout": not goal and t == cap - 1,
                    "p": probs[action],
                    "note": "heuristic",
                }
            )
            obs = nxt
            if goal:
                break
    frame = pd.DataFrame(rows)
    frame.to_csv(path, index=False)
    return frame


@pytest.fixture(scope="module")
def logs(tmp_path_factory) -> dict[str, object]:
    """``goal``: 2 episodes that all reach the goal; ``mixed``: 2 that do, then 2 cut short."""
    base = tmp_path_factory.mktemp("logs")
    goal = acrobot_log(base / "goal.csv", (500, 500))
    mixed = acrobot_log(base / "mixed.csv", (500, 500, 30, 30))
    assert goal["goal"].sum() == 2 and not goal["timeout"].any()
    assert mixed["goal"].sum() == 2 and mixed["timeout"].sum() == 2
    return {"base": base, "goal": (base / "goal.csv", goal), "mixed": (base / "mixed.csv", mixed)}


@pytest.fixture(autouse=True)
def _cache(tmp_path, monkeypatch):
    monkeypatch.setenv("TORCHRL_OFFLINE_CACHE", str(tmp_path / "cache"))


def info_json(capsys, *argv: str) -> dict:
    capsys.readouterr()
    assert main(["info", *argv, "--json"]) == 0
    return json.loads(capsys.readouterr().out)


def test_info_reads_a_log_with_its_own_column_names(logs, capsys):
    path, frame = logs["mixed"]
    info = info_json(capsys, str(path), *LOG)
    assert info["dataset"]["env_id"] == "Acrobot-v1"
    assert info["dataset"]["action_space"] == "Discrete(3)"
    assert info["dataset"]["behavior_keys"] == ["action_prob"]
    # The two goal steps are kept; the two timed-out last steps have no next observation.
    assert info["stats"]["transitions"] == len(frame) - 2
    assert info["stats"]["terminated"] == 2 and info["stats"]["truncated"] == 2
    assert info["dataset"]["dropped_transitions"] == 2
    assert info["dataset"]["terminal_steps_kept"] == 2
    assert any("2 transitions dropped" in note for note in info["notes"])


def test_every_goal_transition_is_kept(logs, capsys):
    path, frame = logs["goal"]
    info = info_json(capsys, str(path), *LOG)
    assert info["stats"]["transitions"] == len(frame)
    assert info["dataset"]["dropped_transitions"] == 0 and info["notes"] == []
    buffer = open_dataset(str(path), columns=parse_columns(COLUMNS[1::2]), ignore=["note"])
    td = buffer.storage[:]
    goal = torch.tensor(frame["goal"].to_numpy())
    assert torch.equal(td["next", "terminated"].reshape(-1), goal)
    assert td["next", "reward"].reshape(-1)[goal].tolist() == [0.0, 0.0]  # Acrobot's goal reward
    # A goal step's next observation is a copy of its observation (masked by terminated).
    assert torch.equal(td["next", "observation"][goal], td["observation"][goal])


def test_dropped_transitions_are_reported_by_every_command(logs, tmp_path, capsys):
    path, _ = logs["mixed"]
    run = str(tmp_path / "run")
    tiny = ["--batch-size", "16", "--set", "hidden_sizes=(16,16)", "--no-progress"]
    capsys.readouterr()
    assert main(["train", "--algo", "iql", "--dataset", str(path), *LOG, "--steps", "4",
                 "--out", run, "--eval-episodes", "1", "--eval-max-steps", "5", *tiny]) == 0  # fmt: skip
    out, err = capsys.readouterr()
    assert "2 transitions dropped: the last steps of 2 truncated episodes" in err
    assert "2 terminal last steps kept" in err
    # The log's env id, recorded with --env-id, is where train evaluates by default.
    assert "evaluation in Acrobot-v1 at step 4" in out
    # the stochastic policy: a 4-step greedy one matches too few logged actions for WIS
    assert main(["ope", run, "--dataset", str(path), *LOG, "--estimators", "wis",
                 "--policy-mode", "stochastic", "--bootstrap", "20", "--no-progress"]) == 0  # fmt: skip
    assert "2 transitions dropped" in capsys.readouterr().err
    assert main(["evaluate", run, "--dataset", str(path), *LOG, "--episodes", "1",
                 "--max-steps", "5", "--no-progress"]) == 0  # fmt: skip
    out, err = capsys.readouterr()
    assert "Acrobot-v1, 1 episodes" in out and "2 transitions dropped" in err


def test_eval_env_none_and_an_explicit_env_win_over_the_recorded_one(logs, tmp_path, capsys):
    path, _ = logs["goal"]
    argv = ["train", "--algo", "bc", "--dataset", str(path), *LOG, "--steps", "2",
            "--batch-size", "8", "--set", "hidden_sizes=(8,)", "--no-progress"]  # fmt: skip
    capsys.readouterr()
    assert main([*argv, "--out", str(tmp_path / "a"), "--eval-env", "none"]) == 0
    assert "evaluation" not in capsys.readouterr().out
    # CartPole's observations are 4 numbers, Acrobot's 6: refused, naming the env asked for.
    assert main([*argv, "--out", str(tmp_path / "b"), "--eval-env", "CartPole-v1"]) == 1
    assert "the env 'CartPole-v1'" in capsys.readouterr().err


def test_unknown_columns_name_the_command_line_options(logs, capsys):
    path, _ = logs["mixed"]
    capsys.readouterr()
    assert main(["info", str(path)]) == 1
    err = capsys.readouterr().err
    assert "Unknown column 'run'" in err
    assert "map other names with --columns FIELD=COL or skip them with --ignore COL" in err
    assert "columns=" not in err and "ignore=" not in err
    assert main(["info", str(path), *COLUMNS, "--ignore", "notes"]) == 1
    assert "Column 'notes' given in --ignore is not in the source" in capsys.readouterr().err
    assert (
        main(["info", str(path), *COLUMNS[2:], "--ignore", "note,cos1,sin1,cos2,sin2,vel1,vel2"])
        == 1
    )
    err = capsys.readouterr().err
    assert "Missing field 'observation'" in err and "--columns observation=COL" in err


@pytest.mark.parametrize(
    "argv, message",
    [
        (["--columns", "observation"], "--columns expects FIELD=COL"),
        (["--columns", "action=a", "--columns", "action=b"], "--columns: action is given twice"),
    ],
)
def test_malformed_columns_are_usage_errors(logs, capsys, argv, message):
    path, _ = logs["goal"]
    assert main(["info", str(path), *argv]) == 2
    assert message in capsys.readouterr().err


def test_log_options_on_a_minari_dataset(pendulum_dataset, capsys):
    dataset_id, root = pendulum_dataset
    assert main(["info", dataset_id, "--root", root, "--columns", "action=a"]) == 2
    assert "--columns and --ignore apply to log files" in capsys.readouterr().err
    assert main(["info", dataset_id, "--root", root, "--env-id", "CartPole-v1"]) == 1
    assert "records the env Pendulum-v1" in capsys.readouterr().err


def test_env_id_checks_the_env(logs, capsys):
    path, _ = logs["goal"]
    assert main(["info", str(path), *COLUMNS, "--ignore", "note", "--env-id", "Nope-v0"]) == 1
    assert "Unknown environment 'Nope-v0'" in capsys.readouterr().err
    five = [c.replace(",vel2", "") for c in COLUMNS]
    assert main(["info", str(path), *five, "--ignore", "note,vel2", "--env-id", "Acrobot-v1"]) == 1
    assert "have shape [5] but Acrobot-v1's have [6]" in capsys.readouterr().err


def test_conversion_is_reused_until_the_log_changes(logs, tmp_path):
    _, frame = logs["goal"]
    log = tmp_path / "log.csv"
    frame.to_csv(log, index=False)
    options = {"columns": parse_columns(COLUMNS[1::2]), "ignore": ["note"], "env_id": "Acrobot-v1"}
    first = open_dataset(str(log), **options)
    assert open_dataset(str(log), **options).path == first.path  # same data: reused
    changed = frame.copy()
    changed.loc[0, "r"] = -5.0
    changed.to_csv(log, index=False)
    again = open_dataset(str(log), **options)
    assert again.path != first.path
    assert again.storage[0]["next", "reward"].item() == -5.0
    assert first.storage[0]["next", "reward"].item() == -1.0  # the old conversion untouched


def test_saved_dataset_keeps_the_env_and_warns_when_its_log_changes(logs, tmp_path, capsys):
    _, frame = logs["mixed"]
    log, root = tmp_path / "log.csv", str(tmp_path / "minari")
    frame.to_csv(log, index=False)
    save = ["info", str(log), *LOG, "--save", "acrobot/mine-v0", "--root", root]
    capsys.readouterr()
    assert main(save) == 0
    assert "later commands take --dataset acrobot/mine-v0" in capsys.readouterr().out
    info = info_json(capsys, "acrobot/mine-v0", "--root", root)
    assert info["dataset"]["env_id"] == "Acrobot-v1"
    assert info["dataset"]["log"] == str(log.resolve())
    assert info["dataset"]["dropped_transitions"] == 2
    assert info["stats"]["transitions"] == len(frame) - 2
    assert not any(note.startswith("warning") for note in info["notes"])
    before = dataset_fingerprint(open_dataset("acrobot/mine-v0", root=root))
    later = log.stat().st_mtime_ns + 10**9
    os.utime(log, ns=(later, later))  # touched, the same bytes: not a change
    info = info_json(capsys, "acrobot/mine-v0", "--root", root)
    assert not any(note.startswith("warning") for note in info["notes"])
    assert main(save) == 0
    # Nothing rewritten: a run on the saved dataset still resumes on it.
    assert dataset_fingerprint(open_dataset("acrobot/mine-v0", root=root)) == before

    changed = frame.copy()
    changed.loc[0, "r"] = -5.0
    changed.to_csv(log, index=False)
    assert main(["info", "acrobot/mine-v0", "--root", root]) == 0
    out = capsys.readouterr().out
    assert f"was written from the log {log.resolve()}, which has changed since" in out
    assert main(save) == 1  # other data: never replaced silently
    assert "replace it with --overwrite" in capsys.readouterr().err
    assert main([*save, "--overwrite"]) == 0
    info = info_json(capsys, "acrobot/mine-v0", "--root", root)
    assert not any(note.startswith("warning") for note in info["notes"])


def test_save_needs_a_log_and_an_id(pendulum_dataset, logs, capsys):
    dataset_id, root = pendulum_dataset
    assert main(["info", dataset_id, "--root", root, "--save", "x/y-v0"]) == 2
    assert "--save writes a log file as a Minari dataset" in capsys.readouterr().err
    path, _ = logs["goal"]
    assert main(["info", str(path), *LOG, "--save", "../up", "--root", root]) == 2
    assert "--save: '../up' is not a dataset id" in capsys.readouterr().err


def test_the_help_lists_every_field():
    assert set(LOG_FIELDS) == set(ACCEPTED_NAMES)


def test_cli_wording_of_every_keyword():
    text = "keep one (see ignore=) or map it with columns="
    assert cli_wording(text) == "keep one (see --ignore COL) or map it with --columns FIELD=COL"
    assert cli_wording("map yours with columns={'reward': ...}") == "map yours with --columns reward=COL"  # fmt: skip
    assert "columns=" not in cli_wording("Unknown field 'x' in columns=; accepted fields: ...")


def test_parse_columns_refuses_a_field_twice():
    with pytest.raises(UsageError, match="observation.pos is given twice"):
        parse_columns(["observation.pos=a", "observation.pos=b"])


def test_finetune_finds_the_env_of_the_log(logs, tmp_path, capsys):
    path, _ = logs["goal"]
    run, online = str(tmp_path / "run"), str(tmp_path / "online")
    data = ["--dataset", str(path), *LOG, "--batch-size", "8", "--no-progress"]
    assert main(["train", "--algo", "iql", *data, "--steps", "2", "--out", run,
                 "--set", "hidden_sizes=(8,)", "--eval-env", "none"]) == 0  # fmt: skip
    capsys.readouterr()
    assert main(["finetune", run, *data, "--steps", "3", "--out", online,
                 "--frames-per-batch", "3"]) == 0  # fmt: skip
    assert "3 fine-tuning steps in Acrobot-v1" in capsys.readouterr().out


def test_a_recorded_env_that_cannot_be_made_is_skipped_with_a_warning(
    logs, tmp_path, capsys, monkeypatch
):
    from torchrl_offline.cli import envs
    from torchrl_offline.cli.common import CLIError

    def unavailable(env_id, **_):
        raise CLIError(f"unknown environment {env_id!r}: not installed here")

    monkeypatch.setattr(envs, "make_env", unavailable)
    path, _ = logs["goal"]
    argv = ["train", "--algo", "bc", "--dataset", str(path), *LOG, "--steps", "2",
            "--batch-size", "8", "--set", "hidden_sizes=(8,)", "--no-progress"]  # fmt: skip
    capsys.readouterr()
    assert main([*argv, "--out", str(tmp_path / "a")]) == 0  # trains without evaluating
    out, err = capsys.readouterr()
    assert "warning: no evaluation in the dataset's env: unknown environment 'Acrobot-v1'" in err
    assert "evaluation" not in out
    assert main([*argv, "--out", str(tmp_path / "b"), "--eval-env", "auto"]) == 1  # asked for


def test_horizon_one_reads_a_log_of_decisions(tmp_path, capsys):
    from tests.decision_log import decision_frame, decision_log

    log = decision_log(40)
    frame = decision_frame(
        log,
        **{f"observation_{i}": f"x{i}" for i in range(3)},
        action="item",
        action_prob="propensity",
        position="slot",
        reward="click",
    )
    frame.to_csv(tmp_path / "decisions.csv", index=False)
    columns = [
        "--columns", "observation=x0,x1,x2", "--columns", "action=item",
        "--columns", "action_prob=propensity", "--columns", "reward=click",
    ]  # fmt: skip
    info = info_json(capsys, str(tmp_path / "decisions.csv"), *columns, "--horizon", "1")
    assert info["stats"]["transitions"] == 40 and info["stats"]["terminated"] == 40
    assert info["dataset"]["dropped_transitions"] == 0
    buffer = open_dataset(
        str(tmp_path / "decisions.csv"), horizon=1, columns=parse_columns(columns[1::2])
    )
    assert buffer.storage[:]["position"].tolist() == log["position"].tolist()


def test_horizon_applies_to_logs_only(pendulum_dataset, capsys):
    dataset_id, root = pendulum_dataset
    assert main(["info", dataset_id, "--root", root, "--horizon", "1"]) == 2
    assert "--horizon applies to log files" in capsys.readouterr().err


def test_train_learns_a_policy_from_a_log_of_decisions(logs, tmp_path, capsys):
    """``train --algo bandit_ips --horizon 1``: importance-weighted policy learning on a
    one-step log; a log of several-step episodes is refused with the reason."""
    from tests.decision_log import decision_frame, decision_log

    decision_frame(decision_log(64), action_prob="propensity").to_csv(
        tmp_path / "decisions.csv", index=False
    )
    argv = ["train", "--algo", "bandit_ips", "--steps", "3", "--batch-size", "16",
            "--set", "hidden_sizes=(8,)", "--no-progress", "--eval-env", "none"]  # fmt: skip
    data = ["--dataset", str(tmp_path / "decisions.csv"), "--horizon", "1",
            "--columns", "action_prob=propensity"]  # fmt: skip
    assert main([*argv, *data, "--out", str(tmp_path / "run")]) == 0
    assert (tmp_path / "run" / "checkpoints").is_dir()
    capsys.readouterr()
    path, _ = logs["goal"]
    assert main([*argv, "--dataset", str(path), *LOG, "--out", str(tmp_path / "multi")]) != 0
    assert "is not terminal: importance-weighted bandit learning" in capsys.readouterr().err


def test_num_positions_checks_the_positions_of_a_log(pendulum_dataset, tmp_path, capsys):
    from tests.decision_log import decision_frame, decision_log

    log = decision_log(30, positions=4)
    decision_frame(log).to_csv(tmp_path / "decisions.csv", index=False)
    argv = ["info", str(tmp_path / "decisions.csv"), "--horizon", "1"]
    assert main([*argv, "--num-positions", "4"]) == 0
    capsys.readouterr()
    assert main([*argv, "--num-positions", "3"]) != 0
    first = int(np.nonzero(log["position"] >= 3)[0][0])
    err = capsys.readouterr().err
    assert f"'position': value 3 at index {first} is outside the 3 declared positions" in err
    assert main([*argv, "--num-positions", "0"]) == 2
    assert "--num-positions must be a positive integer" in capsys.readouterr().err
    dataset_id, root = pendulum_dataset
    assert main(["info", dataset_id, "--root", root, "--num-positions", "3"]) == 2
    assert "--num-positions applies to log files" in capsys.readouterr().err


def test_a_logging_distribution_not_summing_to_one_is_reported(tmp_path, capsys):
    from tests.decision_log import decision_frame, decision_log, logging_probs

    log = decision_log(20)
    frame = decision_frame(log)
    probs = logging_probs(log["observation"])
    probs[11] *= 0.9
    frame["action_prob"] = probs[np.arange(20), log["action"]]
    for i in range(probs.shape[1]):
        frame[f"behavior_probs_{i}"] = probs[:, i]
    frame.to_csv(tmp_path / "decisions.csv", index=False)
    assert main(["info", str(tmp_path / "decisions.csv"), "--horizon", "1"]) == 0
    err = capsys.readouterr().err
    assert (
        "warning: DatasetWarning: Field 'behavior_probs': 1 row(s) of the logging policy's" in err
    )
    assert "do not sum to 1 (tolerance 0.0001); the first at index 11 sums to 0.9" in err
