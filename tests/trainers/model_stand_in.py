"""A stand-in for the learned model of issue 20's contract, for the rollout tests.

An analytic batched environment with the contract's keys: ``s' = s + W a`` (``W`` the
model's one parameter), reward ``-|s'|^2 / d - reward_penalty * u`` with ``u = |a|``
written as ``("next", "model_uncertainty")``, terminated when ``|s'|_inf > 3``; start
states drawn from the dataset's observations with the given generator.
"""

from __future__ import annotations

import torch
from tensordict import TensorDict, TensorDictBase
from torch import nn
from torchrl.data import Bounded, Composite, Unbounded
from torchrl.envs import EnvBase

from torchrl_offline.trainers.model_rollouts import DynamicsRecipe


class StandInModel(nn.Module):
    """``s' = s + a @ W``: a model whose whole state is ``W``."""

    def __init__(self, observation_dim: int, action_dim: int) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.zeros(action_dim, observation_dim))


class StandInModelEnv(EnvBase):
    """The contract's ``LearnedModelEnv`` keys over :class:`StandInModel`."""

    def __init__(self, model, observations, *, batch_size, reward_penalty, generator):
        super().__init__(batch_size=torch.Size([batch_size]))
        self.model = model
        self.start = observations
        self.reward_penalty = float(reward_penalty)
        self.generator = generator
        n_obs, n_act = model.weight.shape[1], model.weight.shape[0]
        b = (batch_size,)
        self.observation_spec = Composite(
            observation=Unbounded((*b, n_obs)),
            model_uncertainty=Unbounded((*b, 1)),
            shape=b,
        )
        self.action_spec = Bounded(-2.0, 2.0, (*b, n_act))
        self.reward_spec = Unbounded((*b, 1))

    def _draw(self, n: int) -> torch.Tensor:
        index = torch.randint(len(self.start), (n,), generator=self.generator)
        return self.start[index]

    def _reset(self, tensordict: TensorDictBase | None) -> TensorDictBase:
        b = self.batch_size[0]
        obs = self._draw(b)  # TorchRL keeps the rows a partial reset leaves
        return TensorDict(
            {
                "observation": obs,
                "model_uncertainty": torch.zeros(b, 1),
                "done": torch.zeros(b, 1, dtype=torch.bool),
                "terminated": torch.zeros(b, 1, dtype=torch.bool),
            },
            self.batch_size,
        )

    def _step(self, tensordict: TensorDictBase) -> TensorDictBase:
        obs, action = tensordict.get("observation"), tensordict.get("action")
        nxt = obs + action @ self.model.weight
        u = action.abs().sum(-1, keepdim=True)
        reward = -(nxt**2).mean(-1, keepdim=True) - self.reward_penalty * u
        terminated = nxt.abs().amax(-1, keepdim=True) > 3
        return TensorDict(
            {
                "observation": nxt,
                "model_uncertainty": u,
                "reward": reward,
                "done": terminated.clone(),
                "terminated": terminated,
            },
            self.batch_size,
        )

    def _set_seed(self, seed):
        return seed


class CountingRecipe:
    """A :class:`DynamicsRecipe` of the stand-in that counts its fits."""

    def __init__(self, observation_dim: int, action_dim: int, reward_penalty: float) -> None:
        self.fits = 0
        self.dims = (observation_dim, action_dim)
        self.reward_penalty = reward_penalty

    def recipe(self) -> DynamicsRecipe:
        return DynamicsRecipe(fit=self._fit, empty=self._empty, env=self._env)

    def _empty(self, config=None) -> StandInModel:
        return StandInModel(*self.dims)

    def _fit(self, dataset):
        self.fits += 1
        model = self._empty()
        with torch.no_grad():
            model.weight.fill_(0.5)
        return model, {"holdout_mse": 0.25, "updates": 3, "seconds": 0.01}

    def _env(self, model, dataset, batch_size, generator):
        obs = dataset.storage[: len(dataset.storage)].get("observation")
        return StandInModelEnv(
            model,
            obs,
            batch_size=batch_size,
            reward_penalty=self.reward_penalty,
            generator=generator,
        )
