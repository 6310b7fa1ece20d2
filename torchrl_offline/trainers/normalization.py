"""Observation normalisation for training: normalised batches, policies that take raw observations.

The networks see ``(observation - loc) / scale`` with the dataset's mean and standard
deviation (as in TD3+BC, IQL and CORL). :class:`NormalizeObservations` normalises the
sampled batches (a TorchRL trainer ``"batch_process"`` hook); :class:`NormalizedPolicy`
wraps the actor so that it acts on raw observations from an environment or a dataset,
and is what :attr:`Algorithm.policy` holds when normalisation is on.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
from tensordict import TensorDictBase
from tensordict.nn import TensorDictModuleBase
from torchrl.trainers import TrainerHookBase

from torchrl_offline.data.episodes import MC_TAIL_OBSERVATION

__all__ = ["NormalizeObservations", "NormalizedPolicy", "observation_moments"]

_OBS = "observation"
_NEXT_OBS = ("next", "observation")
#: Every batch entry holding an observation: the step's, the next one, and the one after
#: a logged episode's last step (derived for the Monte Carlo tails of AWR and Cal-QL).
_OBSERVATION_KEYS = (_OBS, _NEXT_OBS, MC_TAIL_OBSERVATION)


def observation_moments(
    dataset: Any, *, eps: float = 1e-3, chunk_size: int = 100_000
) -> tuple[torch.Tensor, torch.Tensor]:
    """``(loc, scale)``: the per-dimension mean and standard deviation (plus ``eps``, as
    in TD3+BC and CORL) of the ``observation`` entry of a replay buffer's storage.

    Examples:
        >>> import torch
        >>> from tensordict import TensorDict
        >>> from torchrl_offline.data.storage import make_replay_buffer
        >>> from torchrl_offline.trainers.normalization import observation_moments
        >>> obs = torch.tensor([[0.0, 10.0], [2.0, 10.0]])
        >>> loc, scale = observation_moments(make_replay_buffer(TensorDict({"observation": obs}, [2])))
        >>> loc.tolist(), scale.tolist()
        ([1.0, 10.0], [1.0010000467300415, 0.0010000000474974513])
    """
    storage = dataset.storage
    n = len(storage)
    if n == 0:
        raise ValueError("the dataset is empty; no observation statistics")
    total = total_sq = None
    for start in range(0, n, chunk_size):
        obs = storage[start : min(start + chunk_size, n)].get(_OBS)
        if not obs.is_floating_point():
            raise ValueError(
                f"'observation' has dtype {obs.dtype}; only float observations are normalised"
            )
        obs = obs.reshape(obs.shape[0], -1).double()
        s, sq = obs.sum(0), (obs * obs).sum(0)
        total = s if total is None else total + s
        total_sq = sq if total_sq is None else total_sq + sq
    mean = total / n
    std = (total_sq / n - mean * mean).clamp_min(0).sqrt()
    return mean.float(), (std + eps).float()


class NormalizeObservations(TrainerHookBase):
    """Normalises ``observation``, ``("next", "observation")`` and ``mc_tail_observation``
    (:mod:`torchrl_offline.data.episodes`) of each sampled batch.

    Registered at TorchRL's ``"batch_process"`` stage, so it runs on every batch before
    the update; the batch is a fresh sample, the stored data is not changed.

    Args:
        loc: per-dimension mean.
        scale: per-dimension scale (standard deviation).
    """

    def __init__(self, loc: torch.Tensor, scale: torch.Tensor) -> None:
        self.loc = loc
        self.scale = scale

    def __call__(self, batch: TensorDictBase) -> TensorDictBase:
        for key in _OBSERVATION_KEYS:
            value = batch.get(key, None)
            if value is not None:
                batch.set(key, (value - self.loc) / self.scale)
        return batch

    def state_dict(self) -> dict[str, Any]:
        return {}

    def load_state_dict(self, state_dict: Mapping[str, Any]) -> None:
        return None

    def register(self, trainer: Any, name: str = "normalize_observations") -> None:
        trainer.register_op("batch_process", self)


class NormalizedPolicy(TensorDictModuleBase):
    """An actor trained on normalised observations, acting on raw ones.

    Reads ``observation`` from the input, hands the actor a shallow copy holding
    ``(observation - loc) / scale``, and writes the actor's outputs (``action`` ...)
    back into the input tensordict; the input's ``observation`` is left as it was.
    ``get_dist`` is available when the actor has one.

    Args:
        policy: the actor (e.g. ``Algorithm.loss.actor_network``).
        loc: per-dimension mean.
        scale: per-dimension scale.

    Examples:
        >>> import torch
        >>> from tensordict import TensorDict
        >>> from torchrl.modules import Actor
        >>> from torchrl_offline.trainers.normalization import NormalizedPolicy
        >>> actor = Actor(torch.nn.Identity(), in_keys=["observation"])
        >>> policy = NormalizedPolicy(actor, torch.tensor([1.0]), torch.tensor([2.0]))
        >>> td = policy(TensorDict({"observation": torch.tensor([[5.0]])}, [1]))
        >>> td["action"].tolist(), td["observation"].tolist()
        ([[2.0]], [[5.0]])
    """

    def __init__(self, policy: TensorDictModuleBase, loc: torch.Tensor, scale: torch.Tensor):
        super().__init__()
        self.policy = policy
        self.register_buffer("loc", torch.as_tensor(loc, dtype=torch.float32))
        self.register_buffer("scale", torch.as_tensor(scale, dtype=torch.float32))
        self.in_keys = list(policy.in_keys)
        self.out_keys = list(policy.out_keys)

    def _normalized(self, tensordict: TensorDictBase) -> TensorDictBase:
        inner = tensordict.copy()
        inner.set(_OBS, (tensordict.get(_OBS) - self.loc) / self.scale)
        return inner

    def forward(self, tensordict: TensorDictBase) -> TensorDictBase:
        result = self.policy(self._normalized(tensordict))
        for key in self.out_keys:
            if key != _OBS and key in result.keys(include_nested=True):
                tensordict.set(key, result.get(key))
        return tensordict

    @property
    def get_dist(self):
        """The actor's ``get_dist`` on normalised observations (absent if the actor has none)."""
        inner = getattr(self.policy, "get_dist", None)
        if inner is None:
            raise AttributeError("the wrapped policy has no get_dist")

        def get_dist(tensordict: TensorDictBase, *args: Any, **kwargs: Any):
            return inner(self._normalized(tensordict), *args, **kwargs)

        return get_dist

    @property
    def spec(self):
        """The actor's spec."""
        return getattr(self.policy, "spec", None)
