"""``torchrl-offline collect`` and ``info``."""

from __future__ import annotations

import json
import subprocess
import sys

import minari
import pytest
import torch

from torchrl_offline.cli import main
from torchrl_offline.cli.policies import parse_policy_spec
from torchrl_offline.data import load_minari


def test_collect_mixture_writes_dataset_with_metadata(pendulum_dataset):
    dataset_id, root = pendulum_dataset
    buffer = load_minari(dataset_id, root=root)
    assert len(buffer) == 400
    assert buffer.metadata["ref_min_score"] == -1200.0
    assert buffer.metadata["ref_max_score"] == -150.0
    raw = minari.MinariDataset(f"{root}/{dataset_id}/data")
    assert "MixturePolicy" in raw.storage.metadata["algorithm_name"]
    policy_ids = torch.as_tensor(raw[0].infos["policy_id"][1:])
    assert set(policy_ids.unique().tolist()) <= {0, 1}
    lp = buffer.storage[:]["action_log_prob"]
    assert torch.isfinite(lp).all()


def test_collect_is_reproducible_and_seeded(tmp_path):
    root = str(tmp_path)
    args = ["collect", "CartPole-v1", "--steps", "60", "--root", root, "--no-progress"]
    assert main([*args, "--dataset-id", "cp/a-v0", "--seed", "3"]) == 0
    assert main([*args, "--dataset-id", "cp/b-v0", "--seed", "3"]) == 0
    assert main([*args, "--dataset-id", "cp/c-v0", "--seed", "4", "--format", "arrow"]) == 0
    a, b, c = (load_minari(f"cp/{n}-v0", root=root).storage[:] for n in "abc")
    assert torch.equal(a["action"], b["action"])
    assert not torch.equal(a["action"], c["action"])
    # CartPole actions are discrete: uniform random probability 1/2 recorded.
    assert torch.allclose(a["action_prob"], torch.full((60,), 0.5))


def test_collect_measures_reference_returns(tmp_path, capsys):
    code = main(
        ["collect", "CartPole-v1", "--dataset-id", "cp/ref-v0", "--steps", "50",
         "--policy", "scripted:epsilon=0.1", "--reference-episodes", "1",
         "--root", str(tmp_path), "--no-progress"]
    )  # fmt: skip
    assert code == 0
    meta = load_minari("cp/ref-v0", root=str(tmp_path)).metadata
    # The scripted CartPole controller balances for the full 500 steps; random does not.
    assert meta["ref_max_score"] == 500.0
    assert meta["ref_min_score"] < 100.0
    assert "reference returns: min" in capsys.readouterr().out


def test_info_text_and_json(pendulum_dataset, capsys):
    dataset_id, root = pendulum_dataset
    capsys.readouterr()
    assert main(["info", dataset_id, "--root", root]) == 0
    out = capsys.readouterr().out
    assert "transitions      400" in out
    assert "env_id             Pendulum-v1" in out
    assert "normalized return" in out
    assert main(["info", dataset_id, "--root", root, "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["stats"]["transitions"] == 400
    assert info["stats"]["episodes"] == 2
    assert info["dataset"]["ref_max_score"] == -150.0
    returns = load_minari(dataset_id, root=root).storage[:]["next", "reward"].reshape(2, 200)
    expected = 100 * (returns.sum(1).double() + 1200) / 1050
    assert info["normalized_return"]["mean"] == pytest.approx(expected.mean().item(), rel=1e-5)


def test_info_reads_a_dataset_folder_and_a_log_file(pendulum_dataset, tmp_path, capsys):
    dataset_id, root = pendulum_dataset
    assert main(["info", f"{root}/{dataset_id}", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["stats"]["transitions"] == 400
    import pandas as pd

    frame = pd.DataFrame(
        {
            "observation": [[0.0, 1.0], [1.0, 2.0], [2.0, 3.0]],
            "action": [0, 1, 1],
            "reward": [1.0, 0.0, 1.0],
            "next_observation": [[1.0, 2.0], [2.0, 3.0], [3.0, 4.0]],
            "terminated": [False, False, True],
        }
    )
    path = tmp_path / "log.parquet"
    frame.to_parquet(path)
    assert main(["info", str(path), "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["stats"]["transitions"] == 3
    assert info["stats"]["returns"]["mean"] == 2.0


def test_unknown_dataset_lists_the_local_ones(pendulum_dataset, capsys):
    _, root = pendulum_dataset
    capsys.readouterr()
    assert main(["info", "pendulum/missing-v0", "--root", root]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "Traceback" not in err
    assert "unknown dataset 'pendulum/missing-v0'" in err
    assert "pendulum/tiny-v0" in err


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--policy", "expert"], "unknown policy kind 'expert'; valid kinds: random, scripted"),
        (["--policy", "scripted"], "add sigma=S"),
        (["--policy", "scripted:eps=0.1"], "takes no option 'eps'"),
        (["--policy", "x*random"], "mixture weight"),
        (["--policy", "0.5*random", "--policy", "scripted:sigma=1"], "WEIGHT* prefix to every"),
        (["--policy", "checkpoint"], "checkpoint needs path=FILE"),
        (["--steps", "0"], "--steps must be positive"),
        (["--ref-min", "-1"], "give both --ref-min and --ref-max"),
        (["--dataset-id", "../.."], "--dataset-id: '../..' is not a dataset id"),
        (["--dataset-id", "/tmp/abs"], "--dataset-id: '/tmp/abs' is not a dataset id"),
    ],
)
def test_collect_bad_input_is_one_line(tmp_path, capsys, argv, message):
    base = ["collect", "Pendulum-v1", "--dataset-id", "p/x-v0", "--root", str(tmp_path)]
    steps = [] if "--steps" in argv else ["--steps", "10"]
    assert main([*base, *steps, *argv, "--no-progress"]) == 2  # a usage error
    err = capsys.readouterr().err
    assert err.startswith("torchrl-offline collect: error: ")
    assert message in err and err.count("\n") == 1


def test_collect_refuses_unknown_env_and_existing_dataset(pendulum_dataset, capsys):
    dataset_id, root = pendulum_dataset
    capsys.readouterr()
    assert main(["collect", "NoSuchEnv-v9", "--dataset-id", "a/b-v0", "--steps", "5"]) == 1
    assert "unknown environment 'NoSuchEnv-v9'" in capsys.readouterr().err
    argv = ["collect", "Pendulum-v1", "--dataset-id", dataset_id, "--steps", "5", "--root", root]
    assert main(argv) == 1
    assert "--overwrite" in capsys.readouterr().err
    assert main([*argv, "--overwrite", "--no-progress"]) == 0
    assert len(load_minari(dataset_id, root=root)) == 5


def test_collect_overwrite_replaces_only_a_dataset(tmp_path, capsys):
    unrelated = tmp_path / "notes" / "x-v0"
    unrelated.mkdir(parents=True)
    (unrelated / "notes.txt").write_text("mine")
    argv = ["collect", "CartPole-v1", "--dataset-id", "notes/x-v0", "--steps", "5",
            "--root", str(tmp_path), "--no-progress"]  # fmt: skip
    for extra in ([], ["--overwrite"]):  # review of issue 15, finding 7: not "already exists"
        assert main([*argv, *extra]) == 1
        err = capsys.readouterr().err
        assert "exists and is not a Minari dataset" in err and "already exists" not in err
    assert [p.name for p in unrelated.iterdir()] == ["notes.txt"]


def test_collect_overwrite_keeps_the_files_of_the_dataset_folder_that_are_not_data(
    tmp_path, capsys
):
    """Review of issue 15, finding 2: `collect --overwrite` deleted the whole folder."""
    argv = ["collect", "CartPole-v1", "--dataset-id", "cp/x-v0", "--steps", "5",
            "--root", str(tmp_path), "--no-progress"]  # fmt: skip
    assert main(argv) == 0
    folder = tmp_path / "cp" / "x-v0"
    (folder / "notes.txt").write_text("mine")
    assert main([*argv, "--steps", "7", "--overwrite"]) == 0
    assert (folder / "notes.txt").read_text() == "mine"
    assert len(load_minari("cp/x-v0", root=str(tmp_path))) == 7
    assert not [p for p in folder.iterdir() if p.name.startswith(".")]


def test_a_second_writer_of_one_dataset_is_refused(tmp_path, capsys):
    """Review of issue 15, finding 9: two `collect --overwrite` into one id both exited 0."""
    from torchrl_offline.data.minari_writer import dataset_lock

    argv = ["collect", "CartPole-v1", "--dataset-id", "cp/x-v0", "--steps", "5",
            "--root", str(tmp_path), "--no-progress", "--overwrite"]  # fmt: skip
    with dataset_lock(tmp_path / "cp" / "x-v0"):  # as another process writing it holds it
        assert main(argv) == 1
    err = capsys.readouterr().err
    assert "is in use by another process (pid" in err and err.count("\n") == 1
    assert not (tmp_path / "cp" / "x-v0").exists()
    assert main(argv) == 0  # released: fine


def test_scripted_controller_for_unknown_env_lists_known(tmp_path, capsys):
    argv = ["collect", "MountainCar-v0", "--dataset-id", "m/x-v0", "--steps", "5",
            "--policy", "scripted:epsilon=0.1", "--root", str(tmp_path)]  # fmt: skip
    assert main(argv) == 2
    assert "envs with one: Pendulum, CartPole" in capsys.readouterr().err


def test_parse_policy_spec():
    spec = parse_policy_spec("0.25*checkpoint:path=run/a.pt,sigma=0.1")
    assert (spec.kind, spec.weight) == ("checkpoint", 0.25)
    assert spec.options == {"path": "run/a.pt", "sigma": 0.1}


def test_module_entry_point_error_is_one_line(tmp_path):
    proc = subprocess.run(
        [sys.executable, "-m", "torchrl_offline", "info", "no/such-v0", "--root", str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 1
    assert proc.stderr.startswith("torchrl-offline info: error: unknown dataset 'no/such-v0'")
    assert proc.stderr.count("\n") == 1


@pytest.mark.parametrize("command", ["collect", "info", "train", "evaluate", "ope", "finetune"])
def test_help_everywhere(capsys, command):
    with pytest.raises(SystemExit) as exc:
        main([command, "--help"])
    assert exc.value.code == 0
    out = capsys.readouterr().out
    assert f"usage: torchrl-offline {command}" in out and "--no-progress" in out


def test_error_handling_of_main(monkeypatch, capsys):
    import torchrl_offline.cli.info as info

    def fail(exc):
        def raiser(*args, **kwargs):
            raise exc

        return raiser

    monkeypatch.setattr(info, "open_dataset", fail(KeyboardInterrupt()))
    assert main(["info", "x"]) == 130
    assert capsys.readouterr().err == "torchrl-offline info: interrupted\n"
    monkeypatch.setattr(info, "open_dataset", fail(RuntimeError("boom\nsecond line")))
    assert main(["info", "x"]) == 1
    assert (
        capsys.readouterr().err == "torchrl-offline info: error: RuntimeError: boom second line\n"
    )
    with pytest.raises(RuntimeError, match="boom"):
        main(["info", "x", "--debug"])


def test_usage_error_exits_2(capsys):
    with pytest.raises(SystemExit) as exc:
        main(["collect"])
    assert exc.value.code == 2
    assert "required" in capsys.readouterr().err


def test_collect_per_step_mixture_records_the_mixture_probability(tmp_path):
    argv = ["collect", "CartPole-v1", "--dataset-id", "cp/step-v0", "--steps", "40",
            "--policy", "random", "--policy", "scripted:epsilon=0.2", "--per", "step",
            "--root", str(tmp_path), "--no-progress"]  # fmt: skip
    assert main(argv) == 0
    prob = load_minari("cp/step-v0", root=str(tmp_path)).storage[:]["action_prob"]
    # 0.5 * 1/2 + 0.5 * (0.2/2 + 0.8 [greedy action]): 0.7 for the greedy action, else 0.3.
    assert set(prob.mul(10).round().long().unique().tolist()) <= {3, 7}
    assert torch.allclose(prob, prob.mul(10).round() / 10, atol=1e-6)


def test_ctrl_c_during_startup_is_one_line_and_130(monkeypatch, capsys):
    """Review of issue 15, finding 10: Ctrl-C while torch is imported printed a traceback."""
    import subprocess
    import sys

    import torchrl_offline.cli as cli

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(cli, "build_parser", interrupted)
    assert main(["info", "x"]) == 130
    assert capsys.readouterr().err == "torchrl-offline: interrupted\n"
    script = (  # Ctrl-C while `python -m torchrl_offline` imports the command line
        "import builtins, runpy, sys\n"
        "real = builtins.__import__\n"
        "def fake(name, *a, **k):\n"
        "    if name == 'torchrl_offline.cli':\n"
        "        raise KeyboardInterrupt\n"
        "    return real(name, *a, **k)\n"
        "builtins.__import__ = fake\n"
        "sys.argv = ['torchrl-offline', 'info', 'x']\n"
        "runpy.run_module('torchrl_offline', run_name='__main__')\n"
    )
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True)
    assert done.returncode == 130
    assert done.stderr == "torchrl-offline: interrupted\n"
