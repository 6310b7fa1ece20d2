"""Start-up of ``torchrl-offline``: ``--help`` imports nothing heavy and shows defaults."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

import torchrl_offline
from torchrl_offline import registry
from torchrl_offline.cli import SUBCOMMANDS, build_parser, main

#: Packages whose import takes from a tenth of a second to seconds: none of them may be
#: imported to build the parser or print a ``--help``.
HEAVY = (
    "torch",
    "torchrl",
    "tensordict",
    "numpy",
    "matplotlib",
    "scipy",
    "pandas",
    "pyarrow",
    "h5py",
    "minari",
    "gymnasium",
    "onnx",
    "onnxruntime",
    "hydra",
    "omegaconf",
)

_PROBE = """
import contextlib, io, json, sys
from torchrl_offline.cli import SUBCOMMANDS, build_parser
parser = build_parser()
for argv in [["--help"], *([name, "--help"] for name in SUBCOMMANDS)]:
    with contextlib.redirect_stdout(io.StringIO()), contextlib.suppress(SystemExit):
        parser.parse_args(argv)
heavy = json.loads(sys.argv[1])
print(json.dumps(sorted({m.split(".")[0] for m in sys.modules} & set(heavy))))
"""


def _run_fresh(code: str, *args: str) -> str:
    """Runs ``code`` in a fresh interpreter importing this checkout's package."""
    root = str(Path(torchrl_offline.__file__).resolve().parents[1])
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([root, os.environ.get("PYTHONPATH", "")])}
    done = subprocess.run(
        [sys.executable, "-c", code, *args],
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
        check=True,
    )
    return done.stdout


def test_building_the_parser_and_every_help_imports_nothing_heavy():
    """``torchrl-offline --help`` and ``torchrl-offline COMMAND --help`` for every
    subcommand (those added later too) stay well under a second: no torch, TorchRL,
    NumPy, ... is imported."""
    imported = json.loads(_run_fresh(_PROBE, json.dumps(HEAVY)))
    assert imported == []


def test_importing_the_package_is_cheap_and_its_subpackages_load_on_use():
    code = (
        "import sys, torchrl_offline\n"
        "print('torch' in sys.modules, torchrl_offline.data.from_logged.__name__)"
    )
    assert _run_fresh(code).split() == ["False", "from_logged"]


@pytest.mark.parametrize("command", SUBCOMMANDS)
def test_every_help_shows_the_defaults(command, capsys):
    with pytest.raises(SystemExit) as done:
        main([command, "--help"])
    assert done.value.code == 0
    text = " ".join(capsys.readouterr().out.split())
    assert "(default: None)" not in text and "(default: False)" not in text
    assert "(default: True)" not in text  # --no-progress: on by default, said by its name
    if command in ("train", "finetune"):
        assert "--batch-size BATCH_SIZE transitions per update (default: 256)" in text
        assert "--eval-episodes N episodes per evaluation (default: 10)" in text
        assert "--log-every N steps between logged loss means (default: --steps / 20" in text
    if command == "train":
        assert "--seed SEED seed of the run (default: 0)" in text


def test_the_algorithm_help_lists_the_builtin_algorithms_and_others_pass_to_run(capsys):
    with pytest.raises(SystemExit):
        main(["train", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    assert ", ".join(registry.BUILTIN_ALGORITHMS) in text
    # no argparse choices: a name registered by another package is checked after parsing
    args = build_parser().parse_args(["train", "--algo", "my_plugin_algo"])
    assert args.algo == "my_plugin_algo"
