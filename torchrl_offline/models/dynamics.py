r"""A probabilistic dynamics ensemble: PETS / MBPO / MOPO's learned model, batched.

:class:`DynamicsEnsemble` holds ``num_members`` MLPs, each predicting a diagonal
Gaussian over the change of the observation and the reward,

.. math::

    p_i(\Delta s, r \mid s, a) = \mathcal{N}\big(\mu_i(s, a), \operatorname{diag}
        \sigma_i^2(s, a)\big), \qquad s' = s + \Delta s,

with the log-variance softly bounded by learned per-output maxima and minima (Chua et
al., 2018, PETS, appendix A.1; Janner et al., 2019, MBPO). All members are one batched
computation: each layer is an :class:`EnsembleLinear` whose weights are ``[E, in, out]``
and whose forward is one ``torch.baddbmm``. Inputs and targets are normalised inside the
module (buffers set by :meth:`DynamicsEnsemble.set_normalization`), so the module takes
and returns raw units and its ``state_dict`` is self-contained. MOPO's defaults (Yu et
al., 2020): 7 members, 5 elites, 4 hidden layers of 200 SiLU ("swish") units.

The module also keeps the data's observation range (per-dimension min, max, mean,
std): :meth:`DynamicsEnsemble.range_excess` says how far a state lies outside it in
standard deviations, and :meth:`DynamicsEnsemble.check_range` warns (or raises) naming
the dimension and the distance.
"""

from __future__ import annotations

import itertools
import math
import warnings
from collections.abc import Sequence

import torch
from tensordict import TensorDict
from torch import Tensor, nn

from torchrl_offline.models.errors import ModelError, ModelRangeWarning
from torchrl_offline.models.termination import TerminationFn, termination_function

__all__ = ["MBPO_WEIGHT_DECAYS", "DynamicsEnsemble", "EnsembleLinear", "soft_bound"]

#: MBPO's L2 weight decay of each layer of its 4x200 model (input layer first).
MBPO_WEIGHT_DECAYS = (2.5e-5, 5e-5, 7.5e-5, 7.5e-5, 1e-4)


class EnsembleLinear(nn.Module):
    """``num_members`` independent linear layers evaluated as one ``torch.baddbmm``.

    Weights are ``[E, in, out]`` and biases ``[E, 1, out]``, initialised as MBPO does
    (truncated normal with std ``1 / (2 sqrt(in))``, zero bias).

    Examples:
        >>> import torch
        >>> from torchrl_offline.models.dynamics import EnsembleLinear
        >>> layer = EnsembleLinear(3, 4, 2)
        >>> layer(torch.randn(3, 5, 4)).shape
        torch.Size([3, 5, 2])
    """

    def __init__(self, num_members: int, in_features: int, out_features: int) -> None:
        super().__init__()
        self.num_members = num_members
        self.in_features = in_features
        self.out_features = out_features
        self.weight = nn.Parameter(torch.empty(num_members, in_features, out_features))
        self.bias = nn.Parameter(torch.zeros(num_members, 1, out_features))
        self.reset_parameters()

    def reset_parameters(self) -> None:
        std = 1.0 / (2.0 * math.sqrt(self.in_features))
        nn.init.trunc_normal_(self.weight, std=std, a=-2 * std, b=2 * std)
        nn.init.zeros_(self.bias)

    def forward(self, x: Tensor, members: Tensor | None = None) -> Tensor:
        """``x`` ``[E, B, in]`` -> ``[E, B, out]``; with ``members`` (``[K]`` indices),
        ``x`` is ``[K, B, in]`` and only those members are computed."""
        if members is None:
            return torch.baddbmm(self.bias, x, self.weight)
        return torch.baddbmm(self.bias[members], x, self.weight[members])

    def extra_repr(self) -> str:
        return f"members={self.num_members}, in={self.in_features}, out={self.out_features}"


def soft_bound(log_var: Tensor, max_log_var: Tensor, min_log_var: Tensor) -> Tensor:
    """PETS's soft clamp of a log-variance into ``[min_log_var, max_log_var]``.

    Examples:
        >>> import torch
        >>> from torchrl_offline.models.dynamics import soft_bound
        >>> out = soft_bound(torch.tensor([-50.0, 0.0, 50.0]), torch.tensor(3.0), torch.tensor(-3.0))
        >>> [round(v, 2) for v in out.tolist()]
        [-3.0, 0.0, 3.0]
    """
    log_var = max_log_var - nn.functional.softplus(max_log_var - log_var)
    return min_log_var + nn.functional.softplus(log_var - min_log_var)


def _default_weight_decays(num_layers: int) -> tuple[float, ...]:
    if num_layers == len(MBPO_WEIGHT_DECAYS):
        return MBPO_WEIGHT_DECAYS
    return tuple(torch.linspace(2.5e-5, 1e-4, num_layers).tolist())


class DynamicsEnsemble(nn.Module):
    r"""An ensemble of Gaussian MLPs over the next-observation change and the reward.

    Args:
        observation_dim: size of the flat observation.
        action_dim: size of the flat (continuous) action.

    Keyword Args:
        num_members: ensemble size ``E``. Defaults to ``7`` (MOPO).
        num_elites: members kept for prediction (the best on held-out data, set by
            :func:`~torchrl_offline.models.fit.fit_dynamics`). Defaults to ``5``.
        hidden_sizes: hidden layer sizes. Defaults to ``(200, 200, 200, 200)``.
        activation: hidden activation class. Defaults to ``nn.SiLU`` (swish).
        weight_decays: L2 coefficient of each layer (:meth:`weight_decay_loss`); defaults
            to MBPO's ``(2.5e-5, 5e-5, 7.5e-5, 7.5e-5, 1e-4)`` for 5 layers, else a
            linear ramp between the same ends.
        termination_fn: a known task name (see
            :mod:`~torchrl_offline.models.termination`) or a callable
            ``(observation, action, next_observation) -> bool [*batch, 1]``.
        learn_termination: add a termination logit to every member (a classifier
            trained by :class:`~torchrl_offline.models.dynamics_loss.DynamicsLoss`),
            used when no ``termination_fn`` is given. With neither, the model never
            terminates.

    Calling the module, ``model(observation, action)``, returns ``(mean, log_var)``
    of every member, each ``[E, *batch, observation_dim + 1]`` (the observation change,
    then the reward, raw units). :meth:`sample` draws one transition per row from a
    randomly chosen elite, with MOPO's uncertainty (the largest norm of an elite's
    predicted standard deviation) and the elites' disagreement (the norm of the
    standard deviation of their means).

    Examples:
        >>> import torch
        >>> from torchrl_offline.models.dynamics import DynamicsEnsemble
        >>> model = DynamicsEnsemble(3, 1, num_members=4, num_elites=2, hidden_sizes=(16, 16))
        >>> mean, log_var = model(torch.randn(8, 3), torch.randn(8, 1))
        >>> mean.shape, log_var.shape
        (torch.Size([4, 8, 4]), torch.Size([4, 8, 4]))
        >>> out = model.sample(torch.randn(8, 3), torch.randn(8, 1))
        >>> out["next", "observation"].shape, out["model_uncertainty"].shape
        (torch.Size([8, 3]), torch.Size([8, 1]))
    """

    def __init__(
        self,
        observation_dim: int,
        action_dim: int,
        *,
        num_members: int = 7,
        num_elites: int = 5,
        hidden_sizes: Sequence[int] = (200, 200, 200, 200),
        activation: type[nn.Module] = nn.SiLU,
        weight_decays: Sequence[float] | None = None,
        termination_fn: str | TerminationFn | None = None,
        learn_termination: bool = False,
    ) -> None:
        super().__init__()
        if num_members < 1 or not 1 <= num_elites <= num_members:
            raise ValueError(
                f"need 1 <= num_elites <= num_members, got {num_elites} and {num_members}"
            )
        self.observation_dim = int(observation_dim)
        self.action_dim = int(action_dim)
        self.num_members = int(num_members)
        self.num_elites = int(num_elites)
        self.hidden_sizes = tuple(int(h) for h in hidden_sizes)
        self.learn_termination = bool(learn_termination and termination_fn is None)
        self.termination_name = termination_fn if isinstance(termination_fn, str) else None
        self.termination_fn: TerminationFn | None = (
            None if termination_fn is None else termination_function(termination_fn)
        )
        in_dim = self.observation_dim + self.action_dim
        out_dim = self.observation_dim + 1
        sizes = [in_dim, *self.hidden_sizes]
        self.layers = nn.ModuleList(
            EnsembleLinear(self.num_members, a, b) for a, b in itertools.pairwise(sizes)
        )
        self.head = EnsembleLinear(
            self.num_members, sizes[-1], 2 * out_dim + int(self.learn_termination)
        )
        self.activation = activation()
        decays = weight_decays or _default_weight_decays(len(self.layers) + 1)
        if len(decays) != len(self.layers) + 1:
            raise ValueError(
                f"weight_decays needs one value per layer ({len(self.layers) + 1}), got {len(decays)}"
            )
        self.weight_decays = tuple(float(d) for d in decays)
        self.max_log_var = nn.Parameter(torch.full((out_dim,), 0.5))
        self.min_log_var = nn.Parameter(torch.full((out_dim,), -10.0))
        self.register_buffer("input_mean", torch.zeros(in_dim))
        self.register_buffer("input_std", torch.ones(in_dim))
        self.register_buffer("target_mean", torch.zeros(out_dim))
        self.register_buffer("target_std", torch.ones(out_dim))
        self.register_buffer("observation_low", torch.full((observation_dim,), -math.inf))
        self.register_buffer("observation_high", torch.full((observation_dim,), math.inf))
        self.register_buffer("observation_mean", torch.zeros(observation_dim))
        self.register_buffer("observation_std", torch.ones(observation_dim))
        self.register_buffer("action_low", torch.full((action_dim,), -1.0))
        self.register_buffer("action_high", torch.full((action_dim,), 1.0))
        self.register_buffer("elites", torch.arange(self.num_elites))

    @property
    def output_dim(self) -> int:
        """``observation_dim + 1``: the observation change, then the reward."""
        return self.observation_dim + 1

    # ------------------------------------------------------------------ statistics
    @torch.no_grad()
    def set_normalization(
        self, observation: Tensor, action: Tensor, next_observation: Tensor, reward: Tensor
    ) -> None:
        """Sets the input/target normalisers and the observation range from transitions
        (``[N, dim]`` each, ``reward`` ``[N, 1]``); action bounds are the data's range."""
        inputs = torch.cat([observation, action], -1).double()
        targets = torch.cat([next_observation - observation, reward], -1).double()
        for name, value in (
            ("input_mean", inputs.mean(0)),
            ("input_std", _safe_std(inputs)),
            ("target_mean", targets.mean(0)),
            ("target_std", _safe_std(targets)),
            ("observation_low", observation.amin(0)),
            ("observation_high", observation.amax(0)),
            ("observation_mean", observation.double().mean(0)),
            ("observation_std", _safe_std(observation.double())),
            ("action_low", action.amin(0)),
            ("action_high", action.amax(0)),
        ):
            getattr(self, name).copy_(value.to(getattr(self, name)))

    @torch.no_grad()
    def set_observation_range(self, observation: Tensor) -> None:
        """Sets the data's observation range (per-dimension min and max) from ``[N, dim]``
        observations, e.g. every observation and next observation of a dataset."""
        self.observation_low.copy_(observation.amin(0).to(self.observation_low))
        self.observation_high.copy_(observation.amax(0).to(self.observation_high))

    # ------------------------------------------------------------------ forward
    def normalized_forward(
        self, inputs: Tensor, members: Tensor | None = None
    ) -> tuple[Tensor, Tensor, Tensor | None]:
        """The networks on normalised inputs ``[E, B, in]``: normalised ``(mean,
        log_var)`` ``[E, B, out]`` (log-variance soft-bounded) and the termination logit
        ``[E, B, 1]`` (``None`` without a learned classifier). With ``members`` (``[K]``
        indices) only those members run, on ``[K, B, in]`` inputs."""
        x = inputs
        for layer in self.layers:
            x = self.activation(layer(x, members))
        out = self.head(x, members)
        d = self.output_dim
        mean, log_var = out[..., :d], out[..., d : 2 * d]
        log_var = soft_bound(log_var, self.max_log_var, self.min_log_var)
        logit = out[..., 2 * d :] if self.learn_termination else None
        return mean, log_var, logit

    def normalize_inputs(self, observation: Tensor, action: Tensor) -> Tensor:
        """``[..., in]`` normalised network inputs."""
        return (torch.cat([observation, action], -1) - self.input_mean) / self.input_std

    def normalize_targets(
        self, observation: Tensor, next_observation: Tensor, reward: Tensor
    ) -> Tensor:
        """``[..., out]`` normalised targets (observation change, reward)."""
        targets = torch.cat([next_observation - observation, reward], -1)
        return (targets - self.target_mean) / self.target_std

    def _predict(
        self, observation: Tensor, action: Tensor, members: Tensor | None = None
    ) -> tuple[Tensor, Tensor, Tensor | None]:
        batch = observation.shape[:-1]
        count = self.num_members if members is None else members.numel()
        x = self.normalize_inputs(observation, action).reshape(1, -1, self.input_mean.numel())
        mean, log_var, logit = self.normalized_forward(x.expand(count, -1, -1), members)
        mean = mean * self.target_std + self.target_mean
        log_var = log_var + 2.0 * self.target_std.log()
        shape = (count, *batch, -1)
        logit = None if logit is None else logit.reshape(shape)
        return mean.reshape(shape), log_var.reshape(shape), logit

    def forward(self, observation: Tensor, action: Tensor) -> tuple[Tensor, Tensor]:
        """``(mean, log_var)`` of every member, ``[E, *batch, observation_dim + 1]``,
        raw units (the observation change, then the reward)."""
        mean, log_var, _ = self._predict(observation, action)
        return mean, log_var

    def weight_decay_loss(self) -> Tensor:
        """MBPO's L2 penalty ``sum_l decay_l * ||W_l||^2 / 2`` summed over members."""
        layers = [*self.layers, self.head]
        return sum(
            d * 0.5 * layer.weight.square().sum() for d, layer in zip(self.weight_decays, layers)
        )

    # ------------------------------------------------------------------ sampling
    @torch.no_grad()
    def sample(
        self,
        observation: Tensor,
        action: Tensor,
        *,
        generator: torch.Generator | None = None,
        members: Tensor | None = None,
    ) -> TensorDict:
        """One sampled transition per row, from a randomly drawn elite member.

        Args:
            observation: ``[*batch, observation_dim]`` raw observations.
            action: ``[*batch, action_dim]`` raw actions.

        Keyword Args:
            generator: the draws' generator (member choice and Gaussian noise).
            members: ``[*batch]`` (or one) elite member index of each row instead of a
                random elite (e.g. one member's own rollout).

        Returns:
            A TensorDict with batch ``batch``: ``("next", "observation")``,
            ``("next", "reward")`` ``[*batch, 1]``, ``("next", "terminated")``
            ``[*batch, 1]`` bool, ``"model_uncertainty"`` ``[*batch, 1]`` (max over
            elites of the norm of the predicted std) and ``"model_disagreement"``
            ``[*batch, 1]`` (norm of the std over elites of their means).
        """
        batch = observation.shape[:-1]
        obs = observation.reshape(-1, self.observation_dim)
        act = action.reshape(-1, self.action_dim)
        n = obs.shape[0]
        # only the elites run; `slot` is each row's position among them
        mean, log_var, logit = self._predict(obs, act, self.elites)
        std = (0.5 * log_var).exp()
        rows = torch.arange(n, device=obs.device)
        if members is None:
            slot = torch.randint(self.num_elites, (n,), generator=generator, device=obs.device)
        else:
            members = members.reshape(-1).to(obs.device).expand(n)
            match = members[:, None] == self.elites[None, :]
            if not bool(match.any(-1).all()):
                raise ModelError(
                    f"members must be elites ({self.elites.tolist()})", field="members"
                )
            slot = match.float().argmax(-1)
        noise = torch.randn(
            (n, self.output_dim), generator=generator, device=obs.device, dtype=obs.dtype
        )
        pred = mean[slot, rows] + std[slot, rows] * noise
        next_obs = obs + pred[:, : self.observation_dim]
        reward = pred[:, self.observation_dim :]
        if self.termination_fn is not None:
            terminated = self.termination_fn(obs, act, next_obs).reshape(n, 1).bool()
        elif logit is not None:
            terminated = logit[slot, rows] > 0
        else:
            terminated = torch.zeros(n, 1, dtype=torch.bool, device=obs.device)
        uncertainty = std.norm(dim=-1).amax(0).unsqueeze(-1)
        if self.num_elites > 1:
            disagreement = mean.std(0, unbiased=False).norm(dim=-1).unsqueeze(-1)
        else:
            disagreement = torch.zeros_like(uncertainty)
        return TensorDict(
            {
                ("next", "observation"): next_obs.reshape(*batch, -1),
                ("next", "reward"): reward.reshape(*batch, 1),
                ("next", "terminated"): terminated.reshape(*batch, 1),
                "model_uncertainty": uncertainty.reshape(*batch, 1),
                "model_disagreement": disagreement.reshape(*batch, 1),
            },
            batch_size=batch,
            device=obs.device,
        )

    # ------------------------------------------------------------------ data range
    def range_excess(self, observation: Tensor) -> Tensor:
        """``[*batch, observation_dim]``: how far each entry lies outside the data's
        ``[min, max]`` range, in the data's standard deviations (``0`` inside)."""
        below = (self.observation_low - observation).clamp_min(0.0)
        above = (observation - self.observation_high).clamp_min(0.0)
        return (below + above) / self.observation_std

    def check_range(
        self,
        observation: Tensor,
        *,
        tolerance: float = 0.0,
        errors: str = "warn",
        what: str = "start states",
        chunk_size: int = 65536,
    ) -> Tensor:
        """Says when states lie outside the data's range; returns the ``[*batch]`` mask.

        One warning (or error) for all rows, read ``chunk_size`` rows at a time.

        Args:
            observation: ``[*batch, observation_dim]`` raw observations (memory-mapped
                ones are read by chunks).
            tolerance: allowed distance beyond the range, in standard deviations.
            errors: ``"warn"`` (a :class:`ModelRangeWarning`), ``"raise"`` (a
                :class:`ModelError`) or ``"ignore"``.
            what: what the states are, for the message.

        Examples:
            >>> import torch, warnings
            >>> from torchrl_offline.models.dynamics import DynamicsEnsemble
            >>> model = DynamicsEnsemble(2, 1, num_members=2, num_elites=1, hidden_sizes=(4,))
            >>> data = torch.tensor([[0.0, 0.0], [2.0, 1.0]])
            >>> model.set_normalization(data, torch.zeros(2, 1), data, torch.zeros(2, 1))
            >>> with warnings.catch_warnings(record=True) as caught:
            ...     warnings.simplefilter("always")
            ...     _ = model.check_range(torch.tensor([[1.0, 0.5], [1.0, 2.0]]))
            >>> print(caught[0].message)
            1 of 2 start states lie outside the data's range (by up to 1.41 standard deviations, dimension 1, first at row 1): the model's predictions there are extrapolations
        """
        if errors not in ("warn", "raise", "ignore"):
            raise ValueError(f"errors must be 'warn', 'raise' or 'ignore', got {errors!r}")
        flat = observation.reshape(-1, self.observation_dim)
        row_excess, dim_excess = [], torch.zeros_like(self.observation_std)
        for start in range(0, flat.shape[0], chunk_size):  # memory-mapped data: by chunks
            chunk = torch.as_tensor(flat[start : start + chunk_size]).to(self.observation_std)
            excess = self.range_excess(chunk)
            row_excess.append(excess.amax(-1))
            dim_excess = torch.maximum(dim_excess, excess.amax(0))
        outside = torch.cat(row_excess) > tolerance
        if errors != "ignore" and bool(outside.any()):
            worst = int(dim_excess.argmax())
            distance = float(dim_excess[worst])
            index = int(outside.nonzero()[0, 0])
            message = (
                f"{int(outside.sum())} of {outside.numel()} {what} lie outside the data's range "
                f"(by up to {distance:.3g} standard deviations, dimension {worst}, first at "
                f"row {index}): the model's predictions there are extrapolations"
            )
            if errors == "raise":
                raise ModelError(message, field="observation", index=index)
            warnings.warn(
                ModelRangeWarning(message, dimension=worst, distance=distance, index=index),
                stacklevel=2,
            )
        return outside.reshape(observation.shape[:-1])

    def config(self) -> dict:
        """The constructor's arguments (with the termination function by name, when it
        has one), to rebuild the module before loading its ``state_dict``."""
        return {
            "observation_dim": self.observation_dim,
            "action_dim": self.action_dim,
            "num_members": self.num_members,
            "num_elites": self.num_elites,
            "hidden_sizes": self.hidden_sizes,
            "weight_decays": self.weight_decays,
            "termination_fn": self.termination_name,
            "learn_termination": self.learn_termination,
        }


def _safe_std(x: Tensor) -> Tensor:
    std = x.std(0) if x.shape[0] > 1 else torch.ones_like(x[0])
    return torch.where(std > 1e-6, std, torch.ones_like(std))
