r"""Model-based OPE: roll the evaluation policy out in a learned dynamics model.

:class:`ModelBasedOPE` fits a :class:`~torchrl_offline.models.dynamics.DynamicsEnsemble`
on the logged transitions (or takes a fitted one), starts from the initial states of
the logged episodes, rolls the evaluation policy out in the model for ``horizon`` steps
(its actions clipped to the box of the logged actions) and averages the discounted returns (the model-based estimator of the DOPE benchmark,
Fu et al., ICLR 2021, and of Paduraru's thesis before it):

.. math::

    \hat V = \frac{1}{K n} \sum_{k \le K} \sum_{i \le n}
        \sum_{t < H} \gamma^t \hat r^{(k)}_{i, t},

where member ``k`` of the ``K`` elites rolls out alone from start ``i`` (its own mean
and noise at every step). The interval combines both uncertainties: each bootstrap
resample draws the initial states with replacement *and* one elite, and the interval
is the percentiles of the resamples' values. It cannot see an error common to all
members (they learn from the same data), so the diagnostics say how far the rollouts
strayed: ``out_of_range_fraction`` (rollout steps whose state left the data's range by
more than ``range_tolerance`` standard deviations)
and ``member_std`` (the spread of the members' values).
"""

from __future__ import annotations

import math
from typing import Any, Literal

import torch
from tensordict import TensorDict, TensorDictBase
from torch import Tensor
from torchrl.data import ReplayBuffer

from torchrl_offline.ope.episodes import to_episodes
from torchrl_offline.ope.policy import as_evaluation_policy
from torchrl_offline.ope.result import OPEError, OPEResult

__all__ = ["ModelBasedOPE"]


class ModelBasedOPE:
    """Model-based off-policy evaluation with a learned dynamics ensemble.

    Args:
        policy: the evaluation policy (see
            :class:`~torchrl_offline.ope.policy.EvaluationPolicy`); continuous actions.

    Keyword Args:
        model: a fitted :class:`~torchrl_offline.models.dynamics.DynamicsEnsemble`; when
            ``None`` (default), :meth:`fit` fits one with
            :func:`~torchrl_offline.models.fit.fit_dynamics` and ``fit_kwargs``.
        gamma: discount. Defaults to ``0.99``.
        horizon: rollout steps; default: the longest logged episode.
        termination_fn: a task name or callable for the fit (else a learned classifier).
        fit_kwargs: more arguments of ``fit_dynamics`` (e.g. ``num_members``,
            ``hidden_sizes``, ``max_updates``).
        n_bootstrap: resamples of the interval. Defaults to ``1000``.
        confidence: the interval's level. Defaults to ``0.95``.
        seed: seeds the fit, the policy's and the model's draws and the bootstrap.
        policy_mode: ``"greedy"``, ``"stochastic"`` or ``None`` (as given), as for FQE.
        kernel_bandwidth: smooth a deterministic policy's action (as for FQE).
        range_tolerance: a rollout state counts as outside the data's range when an
            entry lies beyond it by more than this many of the data's standard deviations
            (``out_of_range_fraction``). Defaults to ``0.1``: model states a hair past a
            bound the data touch (``cos(theta) = 1.0001``) are not extrapolation.

    Examples:
        >>> import torch
        >>> from tensordict import TensorDict
        >>> from tensordict.nn import TensorDictModule
        >>> from torchrl_offline.ope.model_based import ModelBasedOPE
        >>> # s' = s + a, r = -s^2: the policy a = -s/2 halves the state every step
        >>> g = torch.Generator().manual_seed(0)
        >>> n = 2000
        >>> obs, act = torch.randn(n, 1, generator=g), torch.randn(n, 1, generator=g)
        >>> data = TensorDict({"observation": obs, "action": act,
        ...     ("next", "observation"): obs + act, ("next", "reward"): -obs.square(),
        ...     ("next", "terminated"): torch.zeros(n, 1, dtype=torch.bool),
        ...     ("next", "truncated"): torch.ones(n, 1, dtype=torch.bool),
        ...     ("next", "done"): torch.ones(n, 1, dtype=torch.bool),
        ...     "episode": torch.arange(n)}, [n])
        >>> policy = TensorDictModule(lambda s: -0.5 * s, ["observation"], ["action"])
        >>> ope = ModelBasedOPE(policy, gamma=1.0, horizon=1, termination_fn="pendulum",
        ...     fit_kwargs=dict(num_members=3, num_elites=2, hidden_sizes=(32,), max_updates=300,
        ...                     lr=3e-3))
        >>> result = ope.estimate(data)
        >>> truth = float(-obs.square().mean())
        >>> abs(result.value - truth) < 0.1, result.ci_low <= result.value <= result.ci_high
        (True, True)
    """

    def __init__(
        self,
        policy: Any,
        *,
        model=None,
        gamma: float = 0.99,
        horizon: int | None = None,
        termination_fn=None,
        fit_kwargs: dict[str, Any] | None = None,
        n_bootstrap: int = 1000,
        confidence: float = 0.95,
        seed: int = 0,
        policy_mode: Literal["greedy", "stochastic"] | None = None,
        kernel_bandwidth: float | None = None,
        range_tolerance: float = 0.1,
    ) -> None:
        if not 0.0 <= gamma <= 1.0:
            raise ValueError(f"gamma must be in [0, 1], got {gamma}")
        if horizon is not None and horizon < 1:
            raise ValueError(f"horizon must be positive, got {horizon}")
        self.policy = as_evaluation_policy(
            policy, mode=policy_mode, kernel_bandwidth=kernel_bandwidth
        )
        self.model = model
        self.gamma = float(gamma)
        self.horizon = horizon
        self.termination_fn = termination_fn
        self.fit_kwargs = dict(fit_kwargs or {})
        self.n_bootstrap = int(n_bootstrap)
        self.confidence = float(confidence)
        self.seed = int(seed)
        self.range_tolerance = float(range_tolerance)
        #: The fit of the last :meth:`fit` (``None`` for a given model).
        self.fitted = None
        #: ``[K, n]`` float64 discounted returns of the last estimate, per elite and start.
        self.member_returns: Tensor | None = None

    def fit(self, data: ReplayBuffer | TensorDictBase) -> ModelBasedOPE:
        """Fits the dynamics ensemble on ``data``'s transitions; returns ``self``."""
        from torchrl_offline.models.fit import fit_dynamics

        kwargs = {"seed": self.seed, "termination_fn": self.termination_fn, **self.fit_kwargs}
        self.fitted = fit_dynamics(data, **kwargs)
        self.model = self.fitted.model
        return self

    @torch.no_grad()
    def rollout_returns(self, starts: Tensor, horizon: int) -> tuple[Tensor, dict[str, float]]:
        """``[K, n]`` discounted returns of each elite rolled out alone from each start,
        and rollout diagnostics (``out_of_range_fraction``, ``mean_uncertainty``,
        ``terminated_fraction``)."""
        model = self.model
        elites = model.elites
        k, n = elites.numel(), starts.shape[0]
        device = elites.device
        obs = starts.to(device, torch.float32).repeat(k, 1)  # [K * n, d], member-major
        members = elites.repeat_interleave(n)
        alive = torch.ones(k * n, dtype=torch.bool, device=device)
        total = torch.zeros(k * n, dtype=torch.float64, device=device)
        generator = torch.Generator(device=device).manual_seed(self.seed)
        outside = steps = 0
        uncertainty = 0.0
        discount = 1.0
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(self.seed)
            for _ in range(horizon):
                td = TensorDict({"observation": obs}, [obs.shape[0]])
                action = self.policy.sample(td).to(device, torch.float32)
                # the box of the logged actions, as a bounded environment clips them
                action = action.reshape(obs.shape[0], model.action_dim)
                action = action.clamp(model.action_low, model.action_high)
                out = model.sample(obs, action, generator=generator, members=members)
                reward = out.get(("next", "reward")).squeeze(-1).double()
                total += discount * torch.where(alive, reward, 0.0)
                obs = out.get(("next", "observation"))
                live = int(alive.sum())
                excess = model.range_excess(obs).amax(-1)[alive]
                outside += int((excess > self.range_tolerance).sum())
                uncertainty += float(out.get("model_uncertainty").squeeze(-1)[alive].sum())
                steps += live
                alive &= ~out.get(("next", "terminated")).squeeze(-1)
                discount *= self.gamma
                if not bool(alive.any()):
                    break
        diagnostics = {
            "out_of_range_fraction": outside / max(steps, 1),
            "mean_uncertainty": uncertainty / max(steps, 1),
            "terminated_fraction": 1.0 - float(alive.float().mean()),
        }
        return total.reshape(k, n).cpu(), diagnostics

    def _interval(self, returns: Tensor) -> tuple[float, float]:
        k, n = returns.shape
        g = torch.Generator().manual_seed(self.seed)
        rows = torch.randint(n, (self.n_bootstrap, n), generator=g)
        member = torch.randint(k, (self.n_bootstrap,), generator=g)
        values = returns[member[:, None], rows].mean(-1)
        alpha = 1.0 - self.confidence
        levels = torch.tensor([alpha / 2, 1 - alpha / 2], dtype=torch.float64)
        low, high = torch.quantile(values, levels).tolist()
        return low, high

    def evaluate(self, data: ReplayBuffer | TensorDictBase) -> OPEResult:
        """The estimate of the current model from ``data``'s initial states (no fitting)."""
        if self.model is None:
            raise RuntimeError("no model: call fit(data) or estimate(data), or pass model=")
        episodes = to_episodes(data)
        starts = episodes.initial_states().get("observation")
        if starts.shape[-1] != self.model.observation_dim:
            raise OPEError(
                f"the data's observations have {starts.shape[-1]} dimensions, the model "
                f"{self.model.observation_dim}",
                field="observation",
            )
        horizon = self.horizon or int(episodes.lengths.max())
        starts_outside = self.model.check_range(
            starts.float().to(self.model.elites.device),
            tolerance=self.range_tolerance,
            errors="ignore",
        )
        returns, rollout = self.rollout_returns(starts.float(), horizon)
        self.member_returns = returns
        value = float(returns.mean())
        low, high = self._interval(returns)
        member_values = returns.mean(-1)
        per_episode = returns.mean(0)
        result = OPEResult(
            value=value,
            ci_low=low,
            ci_high=high,
            diagnostics={
                "n_episodes": int(returns.shape[1]),
                "horizon": horizon,
                "gamma": self.gamma,
                "n_members": int(returns.shape[0]),
                "member_std": float(member_values.std()) if returns.shape[0] > 1 else 0.0,
                "member_min": float(member_values.min()),
                "member_max": float(member_values.max()),
                "initial_value_std": float(per_episode.std()) if per_episode.numel() > 1 else 0.0,
                **rollout,
                "starts_out_of_range": int(starts_outside.sum()),
            },
            estimator="ModelBased",
            per_episode=per_episode,
            confidence=self.confidence,
            policy_mode=self.policy.mode,
            policy=self.policy.describe(),
        )
        if self.fitted is not None:
            result.diagnostics["model_holdout_mse"] = self.fitted.holdout_mse
            result.diagnostics["model_updates"] = self.fitted.updates
            result.diagnostics["model_fit_seconds"] = self.fitted.seconds
        result.notes.append(
            f"interval: percentiles of {self.n_bootstrap} resamples of the initial states, "
            f"each rolled out by one of the {returns.shape[0]} elite members; it does not "
            "cover an error shared by all members"
        )
        if rollout["out_of_range_fraction"] > 0.1:
            result.warn(
                f"{rollout['out_of_range_fraction']:.0%} of the rollout steps left the data's "
                "range: the policy drives the model where it extrapolates"
            )
        if horizon < _effective_horizon(self.gamma) and self.horizon is not None:
            result.notes.append(
                f"horizon {horizon} is shorter than the effective horizon 1 / (1 - gamma)"
            )
        return result

    def estimate(self, data: ReplayBuffer | TensorDictBase) -> OPEResult:
        """Fits the model on ``data`` (unless one was given) and estimates the policy's value.

        Returns:
            An :class:`~torchrl_offline.ope.result.OPEResult` (estimator
            ``"ModelBased"``); ``diagnostics`` holds ``n_episodes``, ``horizon``,
            ``member_std`` / ``member_min`` / ``member_max`` (the elites' values),
            ``out_of_range_fraction`` (rollout steps outside the data's range),
            ``mean_uncertainty`` (MOPO's uncertainty along the rollouts),
            ``terminated_fraction``, ``starts_out_of_range`` and, for a model fitted
            here, ``model_holdout_mse``, ``model_updates``, ``model_fit_seconds``.
        """
        if self.model is None:
            self.fit(data)
        return self.evaluate(data)


def _effective_horizon(gamma: float) -> float:
    return math.inf if gamma >= 1 else 1.0 / (1.0 - gamma)
