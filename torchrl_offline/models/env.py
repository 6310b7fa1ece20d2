"""The learned dynamics model as a batched TorchRL environment.

:class:`LearnedModelEnv` steps a :class:`~torchrl_offline.models.dynamics.DynamicsEnsemble`
(one random elite per row and step, MOPO / MBPO's sampling) from start observations
drawn out of a dataset, so any TorchRL policy, ``env.rollout`` or collector can roll out
in the model. Every step writes the model's uncertainty next to the observation:
``("next", "model_uncertainty")`` (MOPO's max aleatoric std norm over elites) and
``("next", "model_disagreement")`` (the norm of the elites' means' std), and the reward
is penalised, ``r - reward_penalty * u`` with ``u`` one of them (MOPO's ``lambda``).
"""

from __future__ import annotations

from typing import Literal

import torch
from tensordict import TensorDict, TensorDictBase
from torch import Tensor
from torchrl.data import Bounded, Categorical, Composite, ReplayBuffer, Unbounded
from torchrl.envs import EnvBase

from torchrl_offline.data.stats import stored_transitions
from torchrl_offline.models.dynamics import DynamicsEnsemble
from torchrl_offline.models.errors import ModelError

__all__ = ["LearnedModelEnv", "start_observations_of"]

PENALTIES = ("aleatoric", "disagreement")


def start_observations_of(source: Tensor | ReplayBuffer | TensorDictBase) -> Tensor:
    """The ``[N, observation_dim]`` observations to start from: a tensor as given, or
    the ``"observation"`` entry of a replay buffer's storage or a TensorDict of
    transitions (memory-mapped data stay on disk; rows are read when drawn)."""
    if isinstance(source, Tensor):
        return source
    td = stored_transitions(source)
    if "observation" not in td.keys():
        raise ModelError("the start data have no 'observation'", field="observation")
    return td.get("observation")


class LearnedModelEnv(EnvBase):
    """A dynamics ensemble as a batched TorchRL ``EnvBase``.

    Args:
        model: the fitted :class:`DynamicsEnsemble` (its elites are used).
        start_observations: the states a reset draws from (uniformly, with
            replacement): a ``[N, observation_dim]`` tensor, a replay buffer of the data
            layer or a TensorDict of transitions (their ``"observation"``).

    Keyword Args:
        batch_size: number of parallel rollouts (the env's batch size ``[batch_size]``).
        reward_penalty: MOPO's ``lambda``; the reward is ``r - lambda * u``.
            Defaults to ``0``.
        penalty: ``u``: ``"aleatoric"`` (``model_uncertainty``, MOPO) or
            ``"disagreement"`` (``model_disagreement``).
        max_steps: truncate rollouts after this many steps (``None``: never).
        seed: seeds the start draws and the model's sampling. Defaults to ``0``.
        generator: draw the starts and the model's samples from this generator instead
            of a new one seeded with ``seed`` (e.g. one whose state a trainer saves
            with its checkpoints). It must live on the model's device.
        range_check: what to do when ``start_observations`` hold states outside the
            model's data range: ``"warn"`` (default, a
            :class:`~torchrl_offline.models.errors.ModelRangeWarning` naming the
            dimension and the distance in standard deviations), ``"raise"`` or
            ``"ignore"``.
        range_tolerance: how far beyond the data's range, in standard deviations, a
            state may lie before it counts as outside (start states and
            ``out_of_range_steps``). Defaults to ``0.1``.

    Attributes:
        model_steps: rows stepped so far.
        out_of_range_steps: rows stepped whose next observation left the data's range
            (by more than ``range_tolerance``).

    Examples:
        >>> import torch
        >>> from torchrl.envs.utils import check_env_specs
        >>> from torchrl_offline.models.dynamics import DynamicsEnsemble
        >>> from torchrl_offline.models.env import LearnedModelEnv
        >>> model = DynamicsEnsemble(3, 1, num_members=3, num_elites=2, hidden_sizes=(16,))
        >>> env = LearnedModelEnv(model, torch.zeros(10, 3), batch_size=4, reward_penalty=1.0,
        ...                       max_steps=5)
        >>> check_env_specs(env)
        >>> rollout = env.rollout(3)
        >>> rollout["next", "model_uncertainty"].shape
        torch.Size([4, 3, 1])
    """

    def __init__(
        self,
        model: DynamicsEnsemble,
        start_observations: Tensor | ReplayBuffer | TensorDictBase,
        *,
        batch_size: int,
        reward_penalty: float = 0.0,
        penalty: Literal["aleatoric", "disagreement"] = "aleatoric",
        max_steps: int | None = None,
        seed: int | None = 0,
        generator: torch.Generator | None = None,
        range_check: Literal["warn", "raise", "ignore"] = "warn",
        range_tolerance: float = 0.1,
    ) -> None:
        if penalty not in PENALTIES:
            raise ValueError(f"penalty must be one of {PENALTIES}, got {penalty!r}")
        if batch_size < 1:
            raise ValueError(f"batch_size must be positive, got {batch_size}")
        device = model.elites.device
        super().__init__(device=device, batch_size=torch.Size([batch_size]))
        self.model = model
        self.starts = start_observations_of(start_observations)
        if self.starts.ndim != 2 or self.starts.shape[-1] != model.observation_dim:
            raise ModelError(
                f"start observations must be [N, {model.observation_dim}], got "
                f"{tuple(self.starts.shape)}",
                field="observation",
            )
        if self.starts.shape[0] == 0:
            raise ModelError("no start observations", field="observation")
        self.range_tolerance = float(range_tolerance)
        self._check_starts(range_check)
        self.reward_penalty = float(reward_penalty)
        self.penalty = penalty
        self.max_steps = max_steps
        if generator is None:
            generator = torch.Generator(device=device)
            generator.manual_seed(0 if seed is None else int(seed))
        elif torch.device(generator.device).type != torch.device(device).type:
            raise ValueError(
                f"generator is on {generator.device}, the model on {device}: pass a "
                "generator on the model's device"
            )
        self._generator = generator
        self._steps = torch.zeros(batch_size, dtype=torch.long, device=device)
        self.model_steps = 0
        self.out_of_range_steps = 0
        shape = self.batch_size
        d, a = model.observation_dim, model.action_dim
        self.observation_spec = Composite(
            observation=Unbounded((*shape, d), device=device),
            model_uncertainty=Unbounded((*shape, 1), device=device),
            model_disagreement=Unbounded((*shape, 1), device=device),
            shape=shape,
            device=device,
        )
        self.action_spec = Bounded(
            low=model.action_low.expand(*shape, a).clone(),
            high=model.action_high.expand(*shape, a).clone(),
            shape=(*shape, a),
            device=device,
        )
        self.reward_spec = Unbounded((*shape, 1), device=device)
        self.done_spec = Composite(
            done=Categorical(2, (*shape, 1), dtype=torch.bool, device=device),
            terminated=Categorical(2, (*shape, 1), dtype=torch.bool, device=device),
            truncated=Categorical(2, (*shape, 1), dtype=torch.bool, device=device),
            shape=shape,
            device=device,
        )

    def _check_starts(self, range_check: str) -> None:
        if range_check == "ignore":
            return
        with torch.no_grad():
            self.model.check_range(
                self.starts,
                tolerance=self.range_tolerance,
                errors=range_check,
                what="start observations",
            )

    @property
    def out_of_range_fraction(self) -> float:
        """Fraction of the model's steps so far that left the data's range."""
        return self.out_of_range_steps / self.model_steps if self.model_steps else 0.0

    def _draw_starts(self, count: int) -> Tensor:
        index = torch.randint(
            self.starts.shape[0], (count,), generator=self._generator, device=self.device
        )
        rows = self.starts[index.cpu() if not self.starts.is_cuda else index]
        return torch.as_tensor(rows).to(self.device, torch.float32)

    def _reset(self, tensordict: TensorDictBase | None = None, **kwargs) -> TensorDictBase:
        (n,) = self.batch_size
        mask = None if tensordict is None else tensordict.get("_reset", None)
        d = self.model.observation_dim
        if mask is None:
            observation = self._draw_starts(n)
            self._steps.zero_()
        else:
            mask = mask.reshape(n).to(self.device)
            observation = torch.zeros(n, d, device=self.device)
            observation[mask] = self._draw_starts(int(mask.sum()))
            self._steps[mask] = 0
        zeros = torch.zeros(n, 1, device=self.device)
        false = torch.zeros(n, 1, dtype=torch.bool, device=self.device)
        return TensorDict(
            {
                "observation": observation,
                "model_uncertainty": zeros,
                "model_disagreement": zeros.clone(),
                "done": false,
                "terminated": false.clone(),
                "truncated": false.clone(),
            },
            batch_size=self.batch_size,
            device=self.device,
        )

    def _step(self, tensordict: TensorDictBase) -> TensorDictBase:
        observation = tensordict.get("observation")
        action = tensordict.get("action")
        out = self.model.sample(
            observation, action.to(observation.dtype), generator=self._generator
        )
        next_obs = out.get(("next", "observation"))
        uncertainty = out.get("model_uncertainty")
        disagreement = out.get("model_disagreement")
        u = uncertainty if self.penalty == "aleatoric" else disagreement
        reward = out.get(("next", "reward")) - self.reward_penalty * u
        terminated = out.get(("next", "terminated"))
        self._steps += 1
        if self.max_steps is not None:
            truncated = (self._steps >= self.max_steps).unsqueeze(-1) & ~terminated
        else:
            truncated = torch.zeros_like(terminated)
        with torch.no_grad():
            outside = self.model.range_excess(next_obs).amax(-1) > self.range_tolerance
        self.model_steps += outside.numel()
        self.out_of_range_steps += int(outside.sum())
        return TensorDict(
            {
                "observation": next_obs,
                "reward": reward,
                "done": terminated | truncated,
                "terminated": terminated,
                "truncated": truncated,
                "model_uncertainty": uncertainty,
                "model_disagreement": disagreement,
            },
            batch_size=self.batch_size,
            device=self.device,
        )

    def _set_seed(self, seed: int | None) -> None:
        self._generator.manual_seed(0 if seed is None else int(seed))
