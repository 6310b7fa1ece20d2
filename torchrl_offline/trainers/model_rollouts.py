"""The training-loop need "model rollouts": batches mixing the dataset with the current
policy's transitions in a learned dynamics model (MOPO, COMBO).

An algorithm whose declaration names the need
(:class:`~torchrl_offline.objectives.declaration.ModelRolloutSettings`) is trained by
:func:`~torchrl_offline.trainers.offline.train` through a :class:`ModelRolloutSource`,
which stands where the dataset source stands in the
:class:`~torchrl_offline.trainers.trainer.OfflineTrainer`:

1. before the first update it fits the dynamics ensemble on the dataset
   (:func:`~torchrl_offline.models.fit.fit_dynamics` with the algorithm's ``model_*``
   settings);
2. every ``rollout_interval`` updates (the first one included) it rolls the current
   policy out ``rollout_length`` steps from ``rollout_batch_size`` dataset states in the
   learned model (:class:`~torchrl_offline.models.env.LearnedModelEnv`, reward penalised
   by ``reward_penalty`` times the model's uncertainty), sampling its actions, into a
   FIFO model buffer of ``rollout_batch_size * rollout_length * rollout_retain_epochs``
   transitions;
3. each batch is ``round(real_ratio * batch_size)`` dataset transitions followed by
   model transitions, with a boolean ``"model_data"`` entry marking the model rows
   (COMBO's conservative term reads it).

Its ``state_dict``, saved in the trainer's checkpoints, holds the fitted model's
``state_dict``, the model buffer and the rollouts' generator: a resumed run does not refit
the model and continues exactly as an uninterrupted one.
"""

from __future__ import annotations

import time
import warnings
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any

import torch
from tensordict import TensorDict, TensorDictBase
from tensordict.nn import TensorDictModuleBase
from torch import nn
from torchrl.data import LazyTensorStorage, RandomSampler, ReplayBuffer
from torchrl.envs import EnvBase
from torchrl.envs.utils import ExplorationType, set_exploration_type
from torchrl.trainers import TrainerHookBase

from torchrl_offline.data.keys import TRAINING_KEYS
from torchrl_offline.trainers.algorithms import Algorithm, AlgorithmError, declaration
from torchrl_offline.trainers.trainer import OfflineSource

__all__ = [
    "MODEL_DATA_KEY",
    "DynamicsRecipe",
    "ModelRolloutSource",
    "default_recipe",
    "needs_model_rollouts",
    "rollout_settings",
]

#: The batch entry marking the rows that come from the learned model (``[B]``, bool).
MODEL_DATA_KEY = "model_data"


def needs_model_rollouts(algo: Algorithm) -> bool:
    """Whether ``algo``'s declaration names the need "model rollouts".

    Examples:
        >>> from torchrl.data import Bounded, Unbounded
        >>> from torchrl_offline.trainers.algorithms import build_algorithm
        >>> from torchrl_offline.trainers.model_rollouts import needs_model_rollouts
        >>> specs = Unbounded(shape=(3,)), Bounded(-1.0, 1.0, (1,))
        >>> needs_model_rollouts(build_algorithm("mopo", *specs, preset="small"))
        True
        >>> needs_model_rollouts(build_algorithm("sac_n", *specs, hidden_sizes=(8,)))
        False
    """
    try:
        return declaration(algo.name).model_rollouts is not None
    except AlgorithmError:  # an Algorithm built by hand under an unregistered name
        return False


def rollout_settings(hyperparameters: Mapping[str, Any]) -> dict[str, Any]:
    """The rollout and model settings among an algorithm's hyperparameters, checked.

    Raises:
        AlgorithmError: a setting out of range (the message names it).
    """
    hp = dict(hyperparameters)
    for key in ("rollout_length", "rollout_interval", "rollout_batch_size"):
        if int(hp[key]) < 1:
            raise AlgorithmError(f"{key} must be >= 1, got {hp[key]!r}")
    if int(hp["rollout_retain_epochs"]) < 1:
        raise AlgorithmError(
            f"rollout_retain_epochs must be >= 1, got {hp['rollout_retain_epochs']!r}"
        )
    if not 0.0 <= float(hp["real_ratio"]) <= 1.0:
        raise AlgorithmError(f"real_ratio must be in [0, 1], got {hp['real_ratio']!r}")
    if float(hp["reward_penalty"]) < 0:
        raise AlgorithmError(f"reward_penalty must be >= 0, got {hp['reward_penalty']!r}")
    if hp["rollout_penalty"] not in ("aleatoric", "disagreement"):
        raise AlgorithmError(
            f"rollout_penalty must be 'aleatoric' or 'disagreement', got {hp['rollout_penalty']!r}"
        )
    hp["model_hidden_sizes"] = tuple(int(h) for h in hp["model_hidden_sizes"])
    return hp


@dataclass
class DynamicsRecipe:
    """How a :class:`ModelRolloutSource` makes its learned model and environment.

    Attributes:
        fit: ``fit(dataset) -> (model, info)``: the fitted model (a ``torch.nn.Module``
            whose ``state_dict`` is the whole model) and JSON-able facts about the fit
            (``holdout_mse``, ``updates``, ``seconds``).
        empty: ``empty(config) -> model``: an unfitted model of the architecture
            ``config`` describes (the fitted model's ``config()``, ``{}`` for a model
            without one), to load a checkpoint's ``state_dict`` into.
        env: ``env(model, dataset, batch_size, generator) -> EnvBase``: the batched
            learned-model environment starting from the dataset's observations, drawing
            its start states and model samples from ``generator``.
    """

    fit: Callable[[ReplayBuffer], tuple[nn.Module, dict[str, Any]]]
    empty: Callable[[Mapping[str, Any]], nn.Module]
    env: Callable[[nn.Module, ReplayBuffer, int, torch.Generator], EnvBase]


def default_recipe(
    hyperparameters: Mapping[str, Any],
    observation_dim: int,
    action_dim: int,
    *,
    seed: int = 0,
) -> DynamicsRecipe:
    """The recipe of :mod:`torchrl_offline.models`: a
    :class:`~torchrl_offline.models.dynamics.DynamicsEnsemble` fitted by
    :func:`~torchrl_offline.models.fit.fit_dynamics` with the ``model_*`` settings, in a
    :class:`~torchrl_offline.models.env.LearnedModelEnv` penalised by ``reward_penalty``
    times its ``rollout_penalty`` uncertainty."""
    hp = rollout_settings(hyperparameters)

    def fit(dataset: ReplayBuffer) -> tuple[nn.Module, dict[str, Any]]:
        from torchrl_offline.models.fit import fit_dynamics

        fitted = fit_dynamics(
            dataset,
            num_members=int(hp["model_num_members"]),
            num_elites=int(hp["model_num_elites"]),
            hidden_sizes=hp["model_hidden_sizes"],
            batch_size=int(hp["model_batch_size"]),
            lr=float(hp["model_lr"]),
            patience=int(hp["model_patience"]),
            max_updates=hp["model_max_updates"],
            termination_fn=hp["model_termination"],
            seed=seed,
        )
        info = {
            "holdout_mse": float(fitted.holdout_mse),
            "updates": int(fitted.updates),
            "epochs": int(fitted.epochs),
            "seconds": float(fitted.seconds),
            **fitted.termination,  # a learned classifier's held-out rates
        }
        return fitted.model, info

    def empty(config: Mapping[str, Any]) -> nn.Module:
        from torchrl_offline.models.dynamics import DynamicsEnsemble

        return DynamicsEnsemble(**config)

    def env(
        model: nn.Module, dataset: ReplayBuffer, batch_size: int, generator: torch.Generator
    ) -> EnvBase:
        from torchrl_offline.models.env import LearnedModelEnv

        env = LearnedModelEnv(
            model,
            dataset,
            batch_size=batch_size,
            reward_penalty=float(hp["reward_penalty"]),
            penalty=hp["rollout_penalty"],
            generator=generator,  # the source's: its state goes with the checkpoints
            range_check="ignore",  # the starts are the model's own training data
        )
        return env

    return DynamicsRecipe(fit=fit, empty=empty, env=env)


def _model_config(model: nn.Module | None) -> dict[str, Any]:
    """The model's constructor arguments (its ``config()``), ``{}`` without one."""
    config = getattr(model, "config", None)
    return dict(config()) if callable(config) else {}


def _select(batch: TensorDictBase, *, model: bool) -> TensorDictBase:
    out = batch.select(*TRAINING_KEYS, strict=True)
    out.set(MODEL_DATA_KEY, torch.full(out.batch_size, model, dtype=torch.bool))
    return out


class ModelRolloutSource:
    """Fits the learned model, rolls the policy out in it and yields mixed batches.

    It stands where the dataset source stands in an
    :class:`~torchrl_offline.trainers.trainer.OfflineTrainer` (see the module's
    description for the loop).

    Args:
        dataset: the offline dataset (a replay buffer of transitions).
        policy: the policy to roll out (the algorithm's, taking raw observations); its
            actions are sampled.
        recipe: how the model and its environment are made (:func:`default_recipe`).

    Keyword Args:
        batch_size (int): transitions per update.
        settings (mapping): the algorithm's hyperparameters (the
            :class:`~torchrl_offline.objectives.declaration.ModelRolloutSettings` fields).
        seed (int): seeds the rollouts' generator (start states, model samples).

    Attributes:
        model: the fitted model (``None`` before the first batch of a new run).
        fit_info: the fit's ``holdout_mse``, ``updates`` and ``seconds``, kept across
            resumes.
        rollouts: one entry per rollout phase (``step``, ``seconds``, ``transitions``,
            ``reward_mean``, ``uncertainty_mean``).
        model_buffer: the FIFO buffer of model transitions.
    """

    init_random_frames = 0

    def __init__(
        self,
        dataset: ReplayBuffer,
        policy: TensorDictModuleBase,
        recipe: DynamicsRecipe,
        *,
        batch_size: int,
        settings: Mapping[str, Any],
        seed: int = 0,
    ) -> None:
        hp = rollout_settings(settings)
        self.dataset = dataset
        self.policy = policy
        self.recipe = recipe
        self.batch_size = int(batch_size)
        self.real_batch_size = round(float(hp["real_ratio"]) * self.batch_size)
        self.model_batch_size = self.batch_size - self.real_batch_size
        self.rollout_length = int(hp["rollout_length"])
        self.rollout_interval = int(hp["rollout_interval"])
        self.rollout_batch_size = int(hp["rollout_batch_size"])
        capacity = self.rollout_batch_size * self.rollout_length * int(hp["rollout_retain_epochs"])
        self.model_buffer = ReplayBuffer(
            storage=LazyTensorStorage(capacity), sampler=RandomSampler(), batch_size=None
        )
        self.real = OfflineSource(dataset, batch_size=max(self.real_batch_size, 1))
        self.generator = torch.Generator().manual_seed(int(seed))
        self.model: nn.Module | None = None
        self.fit_info: dict[str, Any] = {}
        self.rollouts: list[dict[str, Any]] = []
        self._env: EnvBase | None = None
        self._real_iterator: Iterator[TensorDictBase] | None = None
        self._iterations = 0

    # ------------------------------------------------------------------ loop
    def fit(self) -> None:
        """Fits the model on the dataset (once; a resumed run has it from its checkpoint)."""
        model, info = self.recipe.fit(self.dataset)
        self.model = model
        self.fit_info = {k: v for k, v in info.items()}

    def _environment(self) -> EnvBase:
        if self._env is None:
            self._env = self.recipe.env(
                self.model, self.dataset, self.rollout_batch_size, self.generator
            )
        return self._env

    def rollout(self) -> TensorDictBase:
        """One rollout phase: ``rollout_length`` policy steps from ``rollout_batch_size``
        dataset states in the model, added to the model buffer; returns the transitions
        (``[rollout_batch_size * rollout_length]``)."""
        start = time.perf_counter()
        env = self._environment()
        with torch.no_grad(), set_exploration_type(ExplorationType.RANDOM):
            steps = env.rollout(
                self.rollout_length, self.policy, auto_reset=True, break_when_any_done=False
            )
        uncertainty = steps.get(("next", "model_uncertainty"), None)
        steps = steps.reshape(-1).select(*TRAINING_KEYS, strict=True)
        self.model_buffer.extend(steps)
        self.rollouts.append(
            {
                "step": self._iterations,
                "seconds": time.perf_counter() - start,
                "transitions": int(steps.shape[0]),
                "reward_mean": float(steps.get(("next", "reward")).mean()),
                "uncertainty_mean": None if uncertainty is None else float(uncertainty.mean()),
            }
        )
        return steps

    def sample(self) -> TensorDictBase:
        """One mixed batch: dataset rows first, then model rows."""
        parts = []
        if self._real_iterator is None:
            self._real_iterator = iter(self.real)
        if self.real_batch_size:
            with warnings.catch_warnings():  # a share of the batch, not the buffer's size
                warnings.filterwarnings("ignore", "Got conflicting batch_sizes", UserWarning)
                real = next(self._real_iterator)
            parts.append(_select(real, model=False))
        if self.model_batch_size:
            parts.append(_select(self.model_buffer.sample(self.model_batch_size), model=True))
        return torch.cat(parts) if len(parts) > 1 else parts[0]

    def __iter__(self) -> Iterator[TensorDictBase]:
        if self.model is None:
            self.fit()
        self._real_iterator = iter(self.real)
        while True:
            if self._iterations % self.rollout_interval == 0:
                self.rollout()
            self._iterations += 1
            yield self.sample()

    def set_seed(self, seed: int, static_seed: bool = False) -> int:
        """Seeds the global generators (the samplers draw from them)."""
        return self.real.set_seed(seed, static_seed)

    def shutdown(self) -> None:
        """Closes the model environment."""
        if self._env is not None:
            self._env.close()
            self._env = None

    # ------------------------------------------------------------------ state
    def state_dict(self) -> dict[str, Any]:
        storage = self.model_buffer._storage
        writer = self.model_buffer._writer
        size = len(storage)
        return {
            "iterations": self._iterations,
            "model": None if self.model is None else self.model.state_dict(),
            "model_config": _model_config(self.model),
            "fit_info": dict(self.fit_info),
            "rollouts": [dict(r) for r in self.rollouts],
            "generator": self.generator.get_state(),
            "buffer": {
                "data": storage[:size].to_dict() if size else None,
                "size": size,
                "cursor": int(writer._cursor),
                "write_count": int(writer._write_count),
            },
            "real": self.real.state_dict(),
        }

    def load_state_dict(self, state_dict: Mapping[str, Any]) -> None:
        self._iterations = int(state_dict["iterations"])
        if state_dict["model"] is not None:
            model = self.recipe.empty(dict(state_dict.get("model_config") or {}))
            model.load_state_dict(state_dict["model"])
            self.model = model
            self._env = None
        self.fit_info = dict(state_dict.get("fit_info", {}))
        self.rollouts = [dict(r) for r in state_dict.get("rollouts", [])]
        self.generator.set_state(state_dict["generator"])
        buffer = state_dict["buffer"]
        self.model_buffer.empty()
        if buffer["data"] is not None:
            self.model_buffer.extend(TensorDict(buffer["data"], batch_size=[buffer["size"]]))
        writer = self.model_buffer._writer
        writer._cursor = int(buffer["cursor"])
        writer._write_count = int(buffer["write_count"])
        self.real.load_state_dict(state_dict["real"])


class ModelRolloutLog(TrainerHookBase):
    """Logs the model's fit (``model/holdout_mse``, ``model/fit_seconds``,
    ``model/fit_updates``, once) and each rollout phase (``model/rollout_seconds``,
    ``model/rollout_reward``, ``model/rollout_uncertainty``)."""

    def __init__(self, source: ModelRolloutSource) -> None:
        self.source = source
        self._logged_fit = False
        self._logged_rollouts = 0
        self._trainer: Any = None

    def __call__(self, batch: TensorDictBase | None = None) -> None:
        from torchrl_offline.trainers.hooks import _log_scalar

        trainer, source = self._trainer, self.source
        step = int(trainer.collected_frames)
        if not self._logged_fit and source.fit_info:
            for key, name in (("holdout_mse", "holdout_mse"), ("seconds", "fit_seconds")):
                if source.fit_info.get(key) is not None:
                    _log_scalar(trainer, f"model/{name}", float(source.fit_info[key]), step)
            if source.fit_info.get("updates") is not None:
                _log_scalar(trainer, "model/fit_updates", float(source.fit_info["updates"]), step)
            self._logged_fit = True
        for phase in source.rollouts[self._logged_rollouts :]:
            _log_scalar(trainer, "model/rollout_seconds", phase["seconds"], step)
            _log_scalar(trainer, "model/rollout_reward", phase["reward_mean"], step)
            if phase["uncertainty_mean"] is not None:
                _log_scalar(trainer, "model/rollout_uncertainty", phase["uncertainty_mean"], step)
        self._logged_rollouts = len(source.rollouts)

    def state_dict(self) -> dict[str, Any]:
        return {"logged_fit": self._logged_fit, "logged_rollouts": self._logged_rollouts}

    def load_state_dict(self, state_dict: Mapping[str, Any]) -> None:
        self._logged_fit = bool(state_dict.get("logged_fit", False))
        self._logged_rollouts = int(state_dict.get("logged_rollouts", 0))

    def register(self, trainer: Any, name: str = "model_rollout_log") -> None:
        self._trainer = trainer
        trainer.register_op("post_steps_log", self)
        trainer.register_module(name, self)


def attach_model_rollouts(
    trainer: Any,
    policy: TensorDictModuleBase,
    data: ReplayBuffer,
    *,
    settings: Mapping[str, Any],
    observation_dim: int,
    action_dim: int,
    batch_size: int,
    seed: int,
    recipe: DynamicsRecipe | None = None,
) -> ModelRolloutSource:
    """Makes ``trainer`` train on mixed dataset and model batches: replaces its source by
    a :class:`ModelRolloutSource` rolling ``policy`` out (in a model of
    :func:`default_recipe` with ``settings`` unless ``recipe`` is given) and registers
    its :class:`ModelRolloutLog`. Call it before loading a checkpoint into ``trainer``."""
    if recipe is None:
        recipe = default_recipe(settings, observation_dim, action_dim, seed=seed)
    source = ModelRolloutSource(
        data, policy, recipe, batch_size=batch_size, settings=settings, seed=seed
    )
    trainer.collector = source
    ModelRolloutLog(source).register(trainer)
    return source
