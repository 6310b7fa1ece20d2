"""``export_policy``: files that act as ``predict`` does, loaded in a process where neither
torchrl_offline nor torchrl (nor tensordict) can be imported."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from torchrl.data import Bounded, Unbounded
from torchrl.modules import Actor

from torchrl_offline.deploy import ExportError, TrainedPolicy, export_policy, load_policy
from torchrl_offline.deploy import export as export_module

#: (run, discrete, formats): a continuous policy with observation normalisation, a
#: discrete one, and BCQ, whose candidates come from fixed codes.
EXPORTS = (
    ("iql", False, ("onnx", "torchscript", "pt2")),
    ("discrete_cql", True, ("onnx", "torchscript")),
    ("bcq", False, ("torchscript",)),
)

#: Runs in a fresh interpreter (``python -I``): loads every exported file with torch or
#: onnxruntime alone and writes its actions.
CHILD = textwrap.dedent(
    """
    import json, sys
    for name in ("torchrl_offline", "torchrl", "tensordict"):
        sys.modules[name] = None  # any import of them fails
    import numpy as np
    import onnxruntime
    import torch

    for name in ("torchrl_offline", "torchrl", "tensordict"):
        try:
            __import__(name)
        except ImportError:
            pass
        else:
            raise SystemExit(f"{name} is importable")
    jobs = json.loads(open("jobs.json").read())
    cards = {}
    for job in jobs:
        obs = np.load(job["observations"])
        path = job["path"]
        if job["format"] == "onnx":
            session = onnxruntime.InferenceSession(path, providers=["CPUExecutionProvider"])
            run = lambda x: session.run(None, {"observation": x})[0]
            card = session.get_modelmeta().custom_metadata_map["torchrl_offline.policy"]
        elif job["format"] == "torchscript":
            files = {"policy.json": ""}
            module = torch.jit.load(path, _extra_files=files)
            run = lambda x: module(torch.from_numpy(x)).numpy()
            card = files["policy.json"]
        else:
            files = {"policy.json": ""}
            module = torch.export.load(path, extra_files=files).module()
            run = lambda x: module(torch.from_numpy(x)).numpy()
            card = files["policy.json"]
        np.save(job["actions"], run(obs))
        np.save(job["actions"].replace(".npy", "_one.npy"), run(obs[:1]))
        cards[path] = json.loads(card)
    json.dump(cards, open("cards.json", "w"))
    """
)


@pytest.fixture(scope="module")
def exported(runs, tmp_path_factory) -> tuple[Path, list[dict]]:
    """Every file of :data:`EXPORTS`, with observations and ``predict``'s actions on them."""
    folder = tmp_path_factory.mktemp("exported")
    g = torch.Generator().manual_seed(3)
    jobs = []
    for name, discrete, formats in EXPORTS:
        policy = load_policy(runs(name, discrete=discrete))
        obs = (torch.randn(7, 3, generator=g) * 3).numpy()
        np.save(folder / f"{name}_obs.npy", obs)
        for fmt in formats:
            path = folder / f"{name}.{fmt}"
            result = export_policy(policy, path, format=fmt)
            assert result.path == path and result.checked > 0
            jobs.append(
                {
                    "name": name,
                    "format": fmt,
                    "path": str(path),
                    "observations": str(folder / f"{name}_obs.npy"),
                    "actions": str(folder / f"{name}_{fmt}_actions.npy"),
                    "expected": policy.predict(obs),
                    "step": policy.step,
                }
            )
    (folder / "jobs.json").write_text(
        json.dumps([{k: v for k, v in j.items() if k != "expected"} for j in jobs])
    )
    return folder, jobs


def test_exported_files_run_without_torchrl_offline_and_act_as_predict(exported):
    folder, jobs = exported
    (folder / "child.py").write_text(CHILD)
    done = subprocess.run(
        [sys.executable, "-I", "child.py"], cwd=folder, capture_output=True, text=True, timeout=300
    )
    assert done.returncode == 0, done.stderr[-3000:]
    cards = json.loads((folder / "cards.json").read_text())
    for job in jobs:
        actions = np.load(job["actions"])
        expected = job["expected"]
        assert actions.shape == expected.shape and actions.dtype == expected.dtype, job["path"]
        if expected.dtype.kind == "f":
            np.testing.assert_allclose(actions, expected, rtol=1e-5, atol=1e-5, err_msg=job["path"])
        else:
            np.testing.assert_array_equal(actions, expected, err_msg=job["path"])
        one = np.load(job["actions"].replace(".npy", "_one.npy"))  # another batch size
        np.testing.assert_allclose(one, expected[:1], rtol=1e-5, atol=1e-5, err_msg=job["path"])
        card = cards[job["path"]]
        assert card["algorithm"] == job["name"] and card["step"] == job["step"]
        assert card["observation_shape"] == [3] and card["normalized_observations"] is True
    assert cards[str(folder / "bcq.torchscript")]["candidate_seed"] == 0
    assert cards[str(folder / "iql.onnx")]["action"] == {
        "type": "bounded",
        "shape": [1],
        "low": [-2.0],
        "high": [2.0],
    }


def test_an_existing_file_is_replaced_only_with_force(runs, tmp_path):
    policy = load_policy(runs("iql"))
    path = tmp_path / "policy.pt2"
    path.write_bytes(b"mine")
    with pytest.raises(FileExistsError, match="already exists; pass force=True"):
        export_policy(policy, path, format="pt2")
    assert path.read_bytes() == b"mine"
    export_policy(policy, path, format="pt2", force=True)
    loaded = torch.export.load(path).module()
    obs = np.zeros((2, 3), dtype=np.float32)
    np.testing.assert_allclose(
        loaded(torch.from_numpy(obs)).numpy(), policy.predict(obs), atol=1e-6
    )


def test_a_file_that_does_not_act_as_the_policy_is_never_written(runs, tmp_path, monkeypatch):
    def differs(policy, run, fmt):
        raise ExportError(f"the {fmt} file gives other actions")

    monkeypatch.setattr(export_module, "_compare", differs)
    with pytest.raises(ExportError, match="the pt2 file gives other actions"):
        export_policy(runs("iql"), tmp_path / "policy.pt2", format="pt2")
    assert list(tmp_path.iterdir()) == []  # no file, no temporary left behind


class _Branchy(torch.nn.Module):
    """Acts by a Python branch on the observations' values: not traceable as one graph."""

    def forward(self, observation):
        return observation[..., :1] if observation.sum() > 0 else -observation[..., :1]


def test_a_policy_torch_export_cannot_trace_is_a_clear_error(tmp_path):
    algorithm = SimpleNamespace(
        name="custom",
        policy=Actor(_Branchy(), in_keys=["observation"]),
        observation_spec=Unbounded(shape=(3,)),
        action_spec=Bounded(-1.0, 1.0, (1,)),
        observation_norm=None,
    )
    with pytest.raises(ExportError, match="torch.export cannot trace the custom policy"):
        export_policy(TrainedPolicy(algorithm), tmp_path / "p.onnx")
    assert list(tmp_path.iterdir()) == []


def test_an_unknown_format_lists_the_valid_ones(tmp_path):
    with pytest.raises(ValueError, match="valid formats: onnx, torchscript, pt2"):
        export_policy(tmp_path, tmp_path / "p.bin", format="tflite")
