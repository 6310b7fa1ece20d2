"""Checkpoints named on the command line: a file, or a training run's directory."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from torchrl_offline.cli.common import CLIError

__all__ = ["load_policy", "load_trained", "resolve_checkpoint"]


def resolve_checkpoint(path: str) -> Path:
    """The checkpoint file named by ``path``: the file itself, or the newest checkpoint of a
    run directory (``DIR/checkpoints``) or of a checkpoint directory.

    Raises:
        CLIError: nothing at ``path``, or a directory holding no checkpoint.
    """
    from torchrl_offline.trainers.checkpoint import latest_checkpoint

    target = Path(path).expanduser()
    if target.is_file():
        return target
    if target.is_dir():
        for folder in (target / "checkpoints", target):
            found = latest_checkpoint(folder)
            if found is not None:
                return found
        raise CLIError(f"no checkpoint in {target} (looked for checkpoints/checkpoint_*.pt)")
    raise CLIError(f"checkpoint {path!r} not found")


def load_trained(path: str) -> tuple[Any, int, Path]:
    """Rebuild the trained algorithm of a checkpoint: ``(algorithm, step, checkpoint file)``.

    Raises:
        CLIError: no checkpoint there. A corrupt or foreign file raises the trainer's
            ``CheckpointError`` (a ``ValueError``: one line from :func:`~torchrl_offline.cli.main`).
    """
    from torchrl_offline.trainers.offline import load_algorithm

    file = resolve_checkpoint(path)
    algorithm, step = load_algorithm(file)
    return algorithm, step, file


def load_policy(path: str, env: Any, env_id: str) -> Any:
    """The policy of a checkpoint, checked against the env it is to act in.

    Raises:
        CLIError: no checkpoint there, or its specs do not match the env.
    """
    from torchrl_offline.cli.envs import check_env_matches

    algorithm, _, _ = load_trained(path)
    check_env_matches(algorithm.observation_spec, algorithm.action_spec, env, env_id)
    return algorithm.policy
