"""The training-loop need "TD(lambda) returns": a value function fitted to returns that
it bootstraps itself (AWR's value target, Peng et al., 2019).

An algorithm whose declaration names the need
(:class:`~torchrl_offline.objectives.declaration.TDLambdaSettings`), run with
``value_target="td_lambda"``, reads the ``"td_lambda_return"`` column of its batches
(:data:`~torchrl_offline.data.episodes.TD_LAMBDA_RETURN`, added to the dataset by
:func:`~torchrl_offline.data.episodes.with_derived_keys` like the other derived
entries). :class:`TDLambdaRefresh`, a TorchRL trainer hook that
:func:`~torchrl_offline.trainers.offline.train` registers, recomputes that column over the
whole dataset (:func:`~torchrl_offline.data.episodes.td_lambda_returns`) with the loss's
current value network evaluated on every next observation, a chunk at a time:

1. before update 0 (the trainer's ``"setup"`` stage);
2. after update ``u - 1`` for every ``u`` that is a multiple of ``td_lambda_interval``
   (the ``"post_steps"`` stage), so update ``u``'s batch already reads the new returns
   (not after the run's last update: a run resumed beyond it refreshes at its setup).

The column is the dataset's own (batches gather it when sampled), so the refresh costs one
forward pass of the value network over the dataset and one vectorised recurrence, and no
copy of the data. Its ``state_dict``, saved in the trainer's checkpoints, holds the column
and the update it was computed at: a resumed run continues exactly as an uninterrupted one.
In a data-parallel run every rank refreshes the whole column with the same value network
(the ranks hold identical parameters), so every rank's batches read the same returns.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from typing import Any

import torch
from tensordict import MemoryMappedTensor, TensorDict, TensorDictBase
from torchrl.data import ReplayBuffer
from torchrl.objectives import LossModule
from torchrl.trainers import TrainerHookBase

from torchrl_offline.data.episodes import TD_LAMBDA_RETURN, episode_ends, td_lambda_returns
from torchrl_offline.data.errors import DatasetError
from torchrl_offline.data.keys import NEXT_OBSERVATION, REWARD, TERMINATED
from torchrl_offline.trainers.algorithms import Algorithm, AlgorithmError, declaration

__all__ = ["TDLambdaRefresh", "attach_td_lambda", "needs_td_lambda"]

# Next observations evaluated by the value network at a time.
_CHUNK = 65_536


def needs_td_lambda(algo: Algorithm) -> bool:
    """Whether ``algo`` fits its value function to TD(lambda) returns recomputed during
    training (its declaration names the need and its ``value_target`` is
    ``"td_lambda"``).

    Examples:
        >>> from torchrl.data import Bounded, Unbounded
        >>> from torchrl_offline.trainers.algorithms import build_algorithm
        >>> from torchrl_offline.trainers.td_lambda import needs_td_lambda
        >>> specs = Unbounded(shape=(3,)), Bounded(-1.0, 1.0, (1,))
        >>> needs_td_lambda(build_algorithm("awr", *specs, hidden_sizes=(8,),
        ...                                 value_target="td_lambda"))
        True
        >>> needs_td_lambda(build_algorithm("awr", *specs, hidden_sizes=(8,)))
        False
    """
    try:
        decl = declaration(algo.name)
    except AlgorithmError:  # an Algorithm built by hand under an unregistered name
        return False
    return decl.uses_td_lambda(algo.hyperparameters)


class TDLambdaRefresh(TrainerHookBase):
    """Recomputes a dataset's TD(lambda) returns with a loss's current value network.

    Args:
        loss: the loss whose value network bootstraps the returns: its
            ``state_value(td)`` gives ``V(s)`` per sample
            (:meth:`~torchrl_offline.objectives.AWRLoss.state_value`) and its
            ``value_network`` reads one observation entry.
        dataset: the replay buffer the trainer samples; its storage holds the whole
            dataset in order with the ``key`` column in memory (what
            :func:`~torchrl_offline.data.episodes.with_derived_keys` returns).

    Keyword Args:
        gamma (float): the discount.
        lmbda (float): :math:`\\lambda`.
        interval (int): updates between refreshes.
        observation_norm (tuple of tensors, optional): ``(loc, scale)`` when the networks
            are trained on normalised observations
            (:class:`~torchrl_offline.trainers.normalization.NormalizeObservations`).
        key (NestedKey): the column. Defaults to ``"td_lambda_return"``.

    Attributes:
        returns: the column (``[N, 1]``), shared with the dataset.
        refreshed_at: the update the column was last computed before (``None`` before
            the first refresh).
        refreshes: one entry per refresh (``step``, ``seconds``, ``return_mean``).

    Examples:
        >>> import torch
        >>> from tensordict import TensorDict
        >>> from torchrl.data import Bounded, Unbounded
        >>> from torchrl_offline.data.episodes import with_derived_keys
        >>> from torchrl_offline.data.storage import make_replay_buffer
        >>> from torchrl_offline.trainers.algorithms import build_algorithm
        >>> from torchrl_offline.trainers.td_lambda import TDLambdaRefresh
        >>> obs = torch.arange(5.0).unsqueeze(-1).expand(5, 3)
        >>> rb = with_derived_keys(make_replay_buffer(TensorDict({
        ...     "observation": obs, "action": torch.zeros(5, 1),
        ...     ("next", "observation"): obs + 1, ("next", "reward"): torch.ones(5, 1),
        ...     ("next", "done"): torch.tensor([[False], [True], [False], [False], [True]])},
        ...     [5])), ["td_lambda_return"], gamma=0.5)
        >>> algo = build_algorithm("awr", Unbounded(shape=(3,)), Bounded(-1.0, 1.0, (1,)),
        ...                        hidden_sizes=(8,), value_target="td_lambda")
        >>> refresh = TDLambdaRefresh(algo.loss, rb, gamma=0.5, lmbda=0.95, interval=100)
        >>> refresh.refresh(step=0)
        >>> refresh.refreshed_at, rb.storage[:]["td_lambda_return"].shape
        (0, torch.Size([5, 1]))
    """

    def __init__(
        self,
        loss: LossModule,
        dataset: ReplayBuffer,
        *,
        gamma: float,
        lmbda: float,
        interval: int,
        observation_norm: tuple[torch.Tensor, torch.Tensor] | None = None,
        key: Any = TD_LAMBDA_RETURN,
    ) -> None:
        if int(interval) < 1:
            raise ValueError(f"interval must be >= 1, got {interval}")
        stored = getattr(dataset.storage, "_storage", None)
        if not isinstance(stored, TensorDictBase) or key not in stored.keys(True):
            raise DatasetError(
                f"TD(lambda) returns are recomputed into the dataset's {key!r} column: pass "
                "the buffer with_derived_keys(buffer, ['td_lambda_return'], gamma=...) returns",
                field=str(key),
            )
        if isinstance(stored.get(key), MemoryMappedTensor):
            raise DatasetError(
                f"the dataset's {key!r} column is memory-mapped: recomputing it would write "
                "into the stored files; drop it from the stored data (the trainers derive "
                "it in memory)",
                field=str(key),
            )
        value_keys = list(loss.value_network.in_keys)
        if len(value_keys) != 1:
            raise ValueError(
                f"TD(lambda) returns need a value network reading one observation entry, "
                f"got {value_keys}"
            )
        self.loss = loss
        self.gamma = float(gamma)
        self.lmbda = float(lmbda)
        self.interval = int(interval)
        self.observation_norm = observation_norm
        self.value_key = value_keys[0]
        self.returns: torch.Tensor = stored.get(key)
        self.reward = stored.get(REWARD)
        self.next_observation = stored.get(NEXT_OBSERVATION)
        self.ends = episode_ends(stored, needed_for=f"{key!r} (TD(lambda) returns)")
        self.terminated = (
            stored.get(TERMINATED).reshape(stored.shape[0], -1).any(-1)
            if TERMINATED in stored.keys(True)
            else None
        )
        self.refreshed_at: int | None = None
        self.refreshes: list[dict[str, float]] = []
        self._logged = 0
        self._trainer: Any = None

    # ------------------------------------------------------------------ refresh
    @torch.no_grad()
    def next_values(self) -> torch.Tensor:
        """``V(s_{t+1})`` of every step (``[N]``, float64 on the CPU), a chunk at a time
        on the value network's device."""
        device = next(iter(self.loss.value_network_params.values(True, True))).device
        out = torch.empty(self.returns.shape[0], dtype=torch.float64)
        for start in range(0, out.shape[0], _CHUNK):
            obs = self.next_observation[start : start + _CHUNK].to(device)
            if self.observation_norm is not None:
                loc, scale = self.observation_norm
                obs = (obs - loc.to(device)) / scale.to(device)
            td = TensorDict({self.value_key: obs}, batch_size=obs.shape[:1])
            out[start : start + obs.shape[0]] = self.loss.state_value(td).double().cpu()
        return out

    def refresh(self, step: int) -> None:
        """Recomputes the column with the current value network (before update ``step``)."""
        start = time.perf_counter()
        new = td_lambda_returns(
            self.reward,
            self.ends,
            self.next_values(),
            terminated=self.terminated,
            gamma=self.gamma,
            lmbda=self.lmbda,
        )
        self.returns.copy_(new.reshape(self.returns.shape))
        self.refreshed_at = int(step)
        self.refreshes.append(
            {
                "step": int(step),
                "seconds": time.perf_counter() - start,
                "return_mean": float(new.mean()),
            }
        )

    # ------------------------------------------------------------------ hook
    def setup(self) -> None:
        """The refresh due at the trainer's current update, unless the column (from a
        checkpoint) is already that one."""
        step = int(self._trainer.collected_frames)
        due = step - step % self.interval
        if self.refreshed_at != due:
            self.refresh(step)

    def __call__(self, batch: TensorDictBase | None = None) -> None:
        trainer = self._trainer
        step = int(trainer.collected_frames)
        last = step >= trainer.total_frames  # no update follows: a resume refreshes at setup
        if step % self.interval == 0 and self.refreshed_at != step and not last:
            self.refresh(step)

    def log(self, batch: TensorDictBase | None = None) -> None:
        """Logs each refresh once (``td_lambda/refresh_seconds``,
        ``td_lambda/return_mean``)."""
        from torchrl_offline.trainers.hooks import _log_scalar

        step = int(self._trainer.collected_frames)
        for entry in self.refreshes[self._logged :]:
            _log_scalar(self._trainer, "td_lambda/refresh_seconds", entry["seconds"], step)
            _log_scalar(self._trainer, "td_lambda/return_mean", entry["return_mean"], step)
        self._logged = len(self.refreshes)

    def state_dict(self) -> dict[str, Any]:
        return {
            "refreshed_at": -1 if self.refreshed_at is None else self.refreshed_at,
            "returns": self.returns.clone(),
        }

    def load_state_dict(self, state_dict: Mapping[str, Any]) -> None:
        returns = state_dict["returns"]
        if tuple(returns.shape) != tuple(self.returns.shape):
            raise ValueError(
                f"the checkpoint's TD(lambda) returns are shaped {tuple(returns.shape)}, "
                f"this dataset's {tuple(self.returns.shape)}"
            )
        self.returns.copy_(returns)
        at = int(state_dict["refreshed_at"])
        self.refreshed_at = None if at < 0 else at
        self._logged = len(self.refreshes)

    def register(self, trainer: Any, name: str = "td_lambda_refresh") -> None:
        self._trainer = trainer
        trainer.register_op("setup", self.setup)
        trainer.register_op("post_steps", self)
        trainer.register_op("post_steps_log", self.log)
        trainer.register_module(name, self)


def attach_td_lambda(trainer: Any, algo: Algorithm, data: ReplayBuffer) -> TDLambdaRefresh:
    """Registers on ``trainer`` the refresh of ``algo``'s TD(lambda) returns over
    ``data`` (its ``gamma``, ``td_lambda``, ``td_lambda_interval`` and observation
    normalisation). Call it before loading a checkpoint into ``trainer``."""
    hp = algo.hyperparameters
    refresh = TDLambdaRefresh(
        algo.loss,
        data,
        gamma=float(hp.get("gamma", 0.99)),
        lmbda=float(hp["td_lambda"]),
        interval=int(hp["td_lambda_interval"]),
        observation_norm=algo.observation_norm,
    )
    refresh.register(trainer)
    return refresh
