"""``torchrl-offline export``: a run's policy as an ONNX, TorchScript or pt2 file."""

from __future__ import annotations

import json

import numpy as np
import onnxruntime
import pytest
import torch

from torchrl_offline.cli import main
from torchrl_offline.cli.export import FORMATS
from torchrl_offline.deploy import EXPORT_FORMATS, load_policy


def test_the_cli_formats_are_the_library_ones():
    assert FORMATS == EXPORT_FORMATS


def test_export_writes_an_onnx_file_named_after_the_run(trained_run, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    assert main(["export", trained_run["run"], "--no-progress"]) == 0
    out = capsys.readouterr().out
    path = tmp_path / "iql-step20.onnx"
    assert path.is_file() and [p.name for p in tmp_path.iterdir()] == ["iql-step20.onnx"]
    assert "iql at step 20" in out and "wrote iql-step20.onnx (onnx," in out
    assert "input  observation: float32 [batch, 3], raw observations" in out
    assert "output action: float32 [batch, 1] in [-2, 2], greedy" in out
    assert "checked against predict on 12 observations" in out
    assert "load it with onnxruntime.InferenceSession('iql-step20.onnx')" in out
    obs = np.random.default_rng(0).normal(size=(5, 3)).astype(np.float32)
    session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    actions = session.run(None, {"observation": obs})[0]
    expected = load_policy(trained_run["run"]).predict(obs)
    np.testing.assert_allclose(actions, expected, rtol=1e-5, atol=1e-5)


@pytest.mark.filterwarnings("ignore:`torch.jit.load` is deprecated:DeprecationWarning")
def test_export_json_takes_the_format_from_the_suffix(trained_run, tmp_path, capsys):
    out = tmp_path / "deploy" / "policy.pt"
    assert main(["export", trained_run["run"], "--out", str(out), "--json"]) == 0
    captured = capsys.readouterr()
    summary = json.loads(captured.out)
    assert summary["format"] == "torchscript" and summary["path"] == str(out)
    assert summary["algorithm"] == "iql" and summary["step"] == 20
    assert summary["observation_shape"] == [3] and summary["action"]["type"] == "bounded"
    assert summary["bytes"] == out.stat().st_size and summary["max_difference"] <= 1e-5
    assert "TorchScript is deprecated" in captured.err
    module = torch.jit.load(str(out))
    assert module(torch.zeros(4, 3)).shape == (4, 1)


def test_export_refuses_an_existing_file_without_force(trained_run, tmp_path, capsys):
    out = tmp_path / "policy.pt2"
    out.write_bytes(b"mine")
    assert main(["export", trained_run["run"], "--out", str(out)]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "already exists; pass --force to replace it" in err
    assert out.read_bytes() == b"mine"
    assert main(["export", trained_run["run"], "--out", str(out), "--force"]) == 0
    assert torch.export.load(out).module()(torch.zeros(2, 3)).shape == (2, 1)


def test_export_bad_input(tmp_path, capsys):
    assert main(["export", str(tmp_path / "nothing.pt")]) == 1
    assert "not found" in capsys.readouterr().err
    assert main(["export", str(tmp_path)]) == 1
    assert "no checkpoint in" in capsys.readouterr().err
    with pytest.raises(SystemExit) as exit_:
        main(["export", str(tmp_path), "--format", "tflite"])
    assert exit_.value.code == 2 and "invalid choice: 'tflite'" in capsys.readouterr().err
