"""How good a fitted dynamics model is on transitions and episodes it did not train on.

* :func:`one_step_quality`: one-step error of the elites' mean prediction (MSE in units
  of the data's variance, per target) and calibration (the fraction of true targets
  inside the predictive central band, e.g. 95%);
* :func:`open_loop_errors`: multi-step error growth, rolling the model open-loop along
  logged episodes with the logged actions.

The predictive distribution is the uniform mixture of the elites' Gaussians (what
:meth:`~torchrl_offline.models.dynamics.DynamicsEnsemble.sample` draws from), moment
matched: mean of the means, variance = mean of the variances + variance of the means.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from tensordict import TensorDictBase
from torch import Tensor

from torchrl_offline.models.dynamics import DynamicsEnsemble

__all__ = ["elite_prediction", "one_step_quality", "open_loop_errors", "termination_rates"]


@torch.no_grad()
def elite_prediction(
    model: DynamicsEnsemble, observation: Tensor, action: Tensor
) -> tuple[Tensor, Tensor]:
    """The elites' moment-matched predictive ``(mean, variance)``, ``[*batch, obs + 1]``."""
    mean, log_var = model(observation, action)
    return _mixture(mean[model.elites], log_var[model.elites])


def _mixture(mean: Tensor, log_var: Tensor) -> tuple[Tensor, Tensor]:
    """The moment-matched ``(mean, variance)`` of the uniform mixture of the members'
    Gaussians ``[K, *batch, out]``."""
    var = log_var.exp()
    return mean.mean(0), var.mean(0) + mean.var(0, unbiased=False)


@torch.no_grad()
def termination_rates(model: DynamicsEnsemble, transitions: TensorDictBase) -> dict[str, float]:
    """How well a learned termination classifier finds the episode ends of
    ``transitions``: the elites' mean ``termination_recall`` (the fraction of the
    terminal transitions it calls terminal) and ``termination_false_alarm`` (the
    fraction of the others it calls terminal).

    Returns:
        Both rates (``nan`` where ``transitions`` have no row of that kind); ``{}`` for a
        model without a learned classifier or data without ``("next", "terminated")``.

    Examples:
        >>> import torch
        >>> from tensordict import TensorDict
        >>> from torchrl_offline.models import DynamicsEnsemble
        >>> from torchrl_offline.models.quality import termination_rates
        >>> model = DynamicsEnsemble(2, 1, num_members=2, num_elites=2, hidden_sizes=(4,),
        ...                          learn_termination=True)
        >>> td = TensorDict({"observation": torch.randn(9, 2), "action": torch.randn(9, 1),
        ...     ("next", "terminated"): torch.arange(9).reshape(9, 1) > 6}, [9])
        >>> sorted(termination_rates(model, td))
        ['termination_false_alarm', 'termination_recall']
    """
    if not model.learn_termination or ("next", "terminated") not in transitions.keys(True):
        return {}
    obs = transitions.get("observation").float()
    inputs = model.normalize_inputs(obs, transitions.get("action").to(obs.dtype))
    elites = model.elites
    _, _, logit = model.normalized_forward(inputs.expand(elites.numel(), *inputs.shape), elites)
    called = (logit.squeeze(-1) > 0).to(obs.dtype)  # [elites, B]
    terminal = transitions.get(("next", "terminated")).reshape(-1).bool()
    nan = float("nan")
    return {
        "termination_recall": float(called[:, terminal].mean()) if terminal.any() else nan,
        "termination_false_alarm": float(called[:, ~terminal].mean()) if (~terminal).any() else nan,
    }


@torch.no_grad()
def one_step_quality(
    model: DynamicsEnsemble, transitions: TensorDictBase, *, level: float = 0.95
) -> dict[str, float]:
    """One-step error and calibration on ``transitions``.

    Returns:
        ``mse_next_observation`` (the next observation's squared error divided by the
        data's variance of each observation dimension, averaged over dimensions),
        ``mse_delta`` (the same for the change of the observation, in units of the
        change's variance: 1 is as good as predicting the mean change), ``mse_reward``
        (in units of the reward's variance), ``coverage`` (fraction of true targets,
        change and reward, inside the central ``level`` band, averaged over
        dimensions), ``coverage_reward``, ``coverage_member`` (the same fraction for each
        elite's own Gaussian, averaged over the elites: the band a rollout samples
        from, one member per row; the mixture's band is wider than each member's
        error once averaging the members' means has cancelled part of it), and for a model that learns termination, on
        data with ``("next", "terminated")``, :func:`termination_rates`.

    Examples:
        >>> import torch
        >>> from tensordict import TensorDict
        >>> from torchrl_offline.models import DynamicsEnsemble
        >>> from torchrl_offline.models.quality import one_step_quality
        >>> model = DynamicsEnsemble(2, 1, num_members=2, num_elites=2, hidden_sizes=(4,))
        >>> td = TensorDict({"observation": torch.randn(9, 2), "action": torch.randn(9, 1),
        ...     ("next", "observation"): torch.randn(9, 2),
        ...     ("next", "reward"): torch.randn(9, 1)}, [9])
        >>> sorted(one_step_quality(model, td))
        ['coverage', 'coverage_member', 'coverage_reward', 'mse_delta', 'mse_next_observation', 'mse_reward']
    """
    obs = transitions.get("observation").float()
    action = transitions.get("action").float()
    next_obs = transitions.get(("next", "observation")).float()
    reward = transitions.get(("next", "reward")).float().reshape(-1, 1)
    member_mean, member_log_var = model(obs, action)
    member_mean, member_log_var = member_mean[model.elites], member_log_var[model.elites]
    mean, var = _mixture(member_mean, member_log_var)
    target = torch.cat([next_obs - obs, reward], -1)
    d = model.observation_dim
    err2 = (mean - target).square()
    z = torch.distributions.Normal(0.0, 1.0).icdf(torch.tensor(0.5 + level / 2))
    inside = ((mean - target).abs() <= z * var.sqrt()).float().mean(0)
    member_inside = (member_mean - target).abs() <= z * (0.5 * member_log_var).exp()
    target_var = model.target_std.square()
    return {
        "mse_next_observation": float((err2[:, :d] / model.observation_std.square()).mean()),
        "mse_delta": float((err2[:, :d] / target_var[:d]).mean()),
        "mse_reward": float((err2[:, d:] / target_var[d:]).mean()),
        "coverage": float(inside.mean()),
        "coverage_reward": float(inside[d:].mean()),
        "coverage_member": float(member_inside.float().mean()),
        **termination_rates(model, transitions),
    }


@torch.no_grad()
def open_loop_errors(
    model: DynamicsEnsemble,
    episodes: Sequence[TensorDictBase],
    horizons: Sequence[int] = (1, 5, 10, 25),
    *,
    stride: int = 5,
) -> dict[int, float]:
    """Multi-step error of open-loop rollouts along logged episodes.

    From every ``stride``-th step of each episode that has ``max(horizons)`` more steps,
    the elites' mean prediction is iterated with the logged actions; the error at
    horizon ``h`` is the squared distance to the logged observation ``h`` steps later,
    in units of the data's per-dimension variance, averaged over dimensions and starts.

    Args:
        model: the fitted ensemble.
        episodes: the logged episodes, each a TensorDict ``[T]`` in time order.
        horizons: the steps ahead to report.

    Returns:
        ``{h: error}``; empty when no episode is long enough.
    """
    longest = max(horizons)
    obs_chunks, act_chunks, truth_chunks = [], [], []
    for ep in episodes:
        length = ep.shape[0]
        if length < longest:
            continue
        obs = ep.get("observation").float()
        act = ep.get("action").float()
        nxt = ep.get(("next", "observation")).float()
        starts = torch.arange(0, length - longest + 1, stride)
        window = starts[:, None] + torch.arange(longest)[None]
        obs_chunks.append(obs[starts])
        act_chunks.append(act[window])
        truth_chunks.append(nxt[window])
    if not obs_chunks:
        return {}
    state = torch.cat(obs_chunks)
    actions, truth = torch.cat(act_chunks), torch.cat(truth_chunks)
    d = model.observation_dim
    out = {}
    for step in range(longest):
        mean, _ = elite_prediction(model, state, actions[:, step])
        state = state + mean[:, :d]
        if step + 1 in horizons:
            err = (state - truth[:, step]).square() / model.observation_std.square()
            out[step + 1] = float(err.mean())
    return out
