"""``predict``: the actions of a trained policy for observations given as arrays.

:func:`load_policy` rebuilds the policy of a training checkpoint (or of a run directory's
newest checkpoint) as a :class:`TrainedPolicy`, whose :meth:`~TrainedPolicy.predict` maps
one observation or a batch (NumPy or torch) to NumPy actions: greedy by default, with the
observation normalisation of training applied and continuous actions clipped to the action
spec's bounds (see :mod:`torchrl_offline.deploy.tensor_policy` for what greedy means for
each algorithm, BCQ and BEAR included).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np
import torch

from torchrl_offline.deploy.errors import ObservationError
from torchrl_offline.deploy.tensor_policy import TensorPolicy

__all__ = ["TrainedPolicy", "load_policy"]


class TrainedPolicy:
    """A trained policy that acts on observations given as arrays.

    Args:
        algorithm: the built or loaded
            :class:`~torchrl_offline.trainers.algorithms.Algorithm` (its policy's modules
            are put in eval mode).

    Keyword Args:
        step (int, optional): its training step, if known.
        checkpoint (Path, optional): the checkpoint it was loaded from, if any.
        seed (int): seed of BCQ's and BEAR's fixed candidate codes.

    Attributes:
        algorithm: the algorithm (its ``policy`` is the TorchRL module).
        module: the :class:`~torchrl_offline.deploy.tensor_policy.TensorPolicy` that
            :meth:`predict` runs and :func:`~torchrl_offline.deploy.export_policy` writes.
        step: the training step, or ``None``.
        checkpoint: the checkpoint file, or ``None``.

    Examples:
        >>> import numpy as np
        >>> from torchrl.data import Bounded, Unbounded
        >>> from torchrl_offline.deploy import TrainedPolicy
        >>> from torchrl_offline.trainers.algorithms import build_algorithm
        >>> algo = build_algorithm("iql", Unbounded(shape=(3,)), Bounded(-2.0, 2.0, (1,)),
        ...                        hidden_sizes=(8,))
        >>> policy = TrainedPolicy(algo)
        >>> policy.predict(np.zeros(3)).shape, policy.predict(np.zeros((5, 3))).shape
        ((1,), (5, 1))
    """

    def __init__(
        self,
        algorithm: Any,
        *,
        step: int | None = None,
        checkpoint: str | os.PathLike | None = None,
        seed: int = 0,
    ) -> None:
        self.algorithm = algorithm
        self.step = step
        self.checkpoint = None if checkpoint is None else Path(checkpoint)
        self.module = TensorPolicy.from_algorithm(algorithm, seed=seed)

    @property
    def name(self) -> str:
        """The algorithm's name (``"iql"``, ``"discrete_cql"`` ...)."""
        return self.algorithm.name

    @property
    def observation_shape(self) -> tuple[int, ...]:
        """The shape of one observation (``(obs_dim,)``)."""
        return self.module.observation_shape

    @property
    def action_spec(self) -> Any:
        """The TorchRL action spec (bounds of a continuous one, ``n`` of a discrete one)."""
        return self.algorithm.action_spec

    def __repr__(self) -> str:
        at = "" if self.step is None else f" at step {self.step}"
        return f"TrainedPolicy({self.name}{at}, observation {self.observation_shape})"

    def _as_batch(self, observation: Any) -> tuple[torch.Tensor, bool]:
        """``observation`` as a float32 CPU batch, and whether it was a single one."""
        if isinstance(observation, torch.Tensor):
            obs = observation.detach().cpu()
        else:
            array = np.asarray(observation)
            if not (np.issubdtype(array.dtype, np.number) or array.dtype == np.bool_):
                raise ObservationError(
                    f"observations must be numbers, got an array of dtype {array.dtype}"
                )
            obs = torch.from_numpy(np.ascontiguousarray(array))
        obs = obs.to(torch.float32)
        shape = self.observation_shape
        single = tuple(obs.shape) == shape
        if not single and not (obs.ndim == len(shape) + 1 and tuple(obs.shape[1:]) == shape):
            raise ObservationError(
                f"observation of shape {tuple(obs.shape)}; the {self.name} policy takes one "
                f"observation of shape {shape} or a batch of shape (batch, {', '.join(map(str, shape))})"
            )
        batch = obs.unsqueeze(0) if single else obs
        finite = torch.isfinite(batch).reshape(batch.shape[0], -1).all(-1)
        if not bool(finite.all()):
            index = int((~finite).nonzero()[0, 0])
            where = "the observation" if single else f"observation row {index}"
            raise ObservationError(f"{where} holds a NaN or infinite value", index=index)
        return batch, single

    @torch.no_grad()
    def predict(self, observation: Any, *, deterministic: bool = True) -> np.ndarray:
        """The actions at ``observation``.

        Args:
            observation: one observation (shape :attr:`observation_shape`) or a batch
                (``[batch, *observation_shape]``): a NumPy array, a torch tensor or a
                nested list of numbers, in the raw units of the dataset (the policy
                normalises them as in training).
            deterministic: the greedy action (default); ``False`` samples from the
                policy with torch's global generator (seed it with ``torch.manual_seed``
                for reproducible samples).

        Returns:
            The actions as a NumPy array: float32 ``[*action_shape]`` (continuous,
            within the action bounds) or an int64 index (discrete; an int64 one-hot
            vector for a ``OneHot`` action spec), with a leading batch dimension for a
            batch.

        Raises:
            ObservationError: an observation of the wrong shape or holding NaN or inf
                (the message names the first bad row).
        """
        batch, single = self._as_batch(observation)
        module = self.module
        action = module(batch) if deterministic else module.sample(batch)
        out = action.cpu().numpy()
        return out[0] if single else out


def load_policy(checkpoint: str | os.PathLike, *, seed: int = 0) -> TrainedPolicy:
    """The policy of a training checkpoint, ready to :meth:`~TrainedPolicy.predict`.

    Args:
        checkpoint: a checkpoint file written by ``train``/``finetune``, or a run
            directory (its newest checkpoint).

    Keyword Args:
        seed (int): seed of BCQ's and BEAR's fixed candidate codes (other policies do not
            use it).

    Returns:
        A :class:`TrainedPolicy`.

    Raises:
        CheckpointError: no checkpoint there, or a damaged or foreign file (a
            ``ValueError`` naming the file).
    """
    from torchrl_offline.trainers.metadata import _resolve_checkpoint, load_algorithm

    path = _resolve_checkpoint(Path(checkpoint).expanduser())
    algorithm, step = load_algorithm(path)
    return TrainedPolicy(algorithm, step=step, checkpoint=path, seed=seed)
