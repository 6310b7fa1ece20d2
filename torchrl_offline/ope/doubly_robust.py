"""Doubly robust estimators (per-decision DR and weighted DR).

With a model :math:`\\hat Q` of the evaluation policy's action values and
:math:`\\hat V(s) = E_{a \\sim \\pi}[\\hat Q(s, a)]`, the per-decision doubly robust estimate
(Jiang & Li, 2016; Thomas & Brunskill, 2016) is

.. math::

    \\hat V_{DR} = \\frac1n \\sum_i \\sum_t \\gamma^t \\left[ w_{it} (r_{it} - \\hat Q(s_{it}, a_{it}))
        + w_{i,t-1} \\hat V(s_{it}) \\right], \\qquad w_{i,-1} = 1.

It is unbiased whenever the weights are exact (whatever :math:`\\hat Q`), and its variance
shrinks as :math:`\\hat Q` approaches the true Q: with the exact Q only the randomness of
rewards and transitions remains. The weighted version (WDR) normalises the weights of each
step over episodes, as WPDIS does.
"""

from __future__ import annotations

from typing import Any, Protocol, runtime_checkable

import torch
from tensordict import TensorDictBase

from torchrl_offline.data.stats import iter_chunks
from torchrl_offline.ope.importance import ImportanceWeights, _OPEEstimator
from torchrl_offline.ope.result import OPEError

__all__ = ["DoublyRobust", "QModel", "WeightedDoublyRobust"]


@runtime_checkable
class QModel(Protocol):
    """What the doubly robust estimators need from a value model (a fitted ``FQE`` is one).

    Both methods take transitions with batch size ``[N]`` (keys ``observation``, ``action``
    as in the data) and return ``[N]`` tensors:

    - ``q_values(td)``: :math:`\\hat Q(s, a)` at the logged state and action;
    - ``state_values(td)``: :math:`\\hat V(s) = E_{a \\sim \\pi}[\\hat Q(s, a)]` under the
      evaluation policy.
    """

    def q_values(self, td: TensorDictBase) -> torch.Tensor: ...

    def state_values(self, td: TensorDictBase) -> torch.Tensor: ...


class DoublyRobust(_OPEEstimator):
    """Per-decision doubly robust estimator.

    Args:
        policy: the evaluation policy (see :class:`~torchrl_offline.ope.ImportanceSampling`).
        q_model: a :class:`QModel` of the evaluation policy's values, e.g. a fitted
            ``FQE``. It should be fitted on other data than the estimate's, or the
            estimate inherits its overfitting.

    Keyword Args:
        Same as :class:`~torchrl_offline.ope.ImportanceSampling` (``gamma``,
        ``behavior_policy``, ``clip_weight``, ``n_bootstrap``, ``confidence``, ``ci_method``,
        ``seed``, ``policy_mode``, ...). ``gamma`` must be the discount the Q model was
        fitted with, and a Q model that states its ``policy_mode`` (a fitted ``FQE``) must
        evaluate the same policy (greedy or stochastic) as this estimator.

    Examples:
        >>> import torch
        >>> from tensordict import TensorDict
        >>> from torchrl.data import Categorical
        >>> from torchrl_offline.data.behavior import UniformRandomPolicy
        >>> class ConstantQ:  # Q = 0.5 everywhere
        ...     def q_values(self, td): return torch.full(td.shape, 0.5)
        ...     def state_values(self, td): return torch.full(td.shape, 0.5)
        >>> td = TensorDict({
        ...     "observation": torch.zeros(4, 1), "action": torch.tensor([0, 1, 1, 0]),
        ...     "episode": torch.tensor([0, 1, 2, 3]),
        ...     "action_log_prob": torch.full((4,), 0.5).log(),
        ...     ("next", "reward"): torch.tensor([[1.0], [0.0], [0.0], [1.0]]),
        ... }, batch_size=[4])
        >>> dr = DoublyRobust(UniformRandomPolicy(Categorical(2)), ConstantQ(), gamma=1.0)
        >>> round(dr.estimate(td).value, 4)
        0.5
    """

    name = "DR"
    weighted = False
    per_decision = True

    def __init__(self, policy: Any, q_model: QModel, **kwargs: Any):
        super().__init__(policy, **kwargs)
        if not (hasattr(q_model, "q_values") and hasattr(q_model, "state_values")):
            raise TypeError(
                f"q_model must have q_values(td) and state_values(td) (a QModel), got "
                f"{type(q_model).__name__}"
            )
        q_mode = getattr(q_model, "policy_mode", None)
        if isinstance(q_mode, str) and q_mode != self.policy.mode:
            raise ValueError(
                f"the Q model evaluates the {q_mode} policy but this estimator scores the "
                f"{self.policy.mode} one: give both the same policy_mode"
            )
        self.q_model = q_model

    def _model_values(self, td: TensorDictBase) -> tuple[torch.Tensor, torch.Tensor]:
        qs, vs = [], []
        with torch.no_grad():
            for start, chunk in iter_chunks(td, self.chunk_size):
                inputs = chunk.exclude("next").to_tensordict()
                q = torch.as_tensor(self.q_model.q_values(inputs.clone())).detach()
                v = torch.as_tensor(self.q_model.state_values(inputs)).detach()
                for name, x in (("q_values", q), ("state_values", v)):
                    if x.numel() != chunk.shape[0]:
                        raise OPEError(
                            f"q_model.{name} returned {tuple(x.shape)} for {chunk.shape[0]} "
                            "transitions; expected one value per transition",
                            field=name,
                        )
                    bad = ~torch.isfinite(x.reshape(-1))
                    if bad.any():
                        i = int(bad.nonzero()[0])
                        raise OPEError(
                            f"q_model.{name} is not finite at transition {start + i}",
                            field=name,
                            index=start + i,
                        )
                qs.append(q.reshape(-1).to(torch.float64).cpu())
                vs.append(v.reshape(-1).to(torch.float64).cpu())
        return torch.cat(qs), torch.cat(vs)

    def _step_terms(self, iw: ImportanceWeights) -> tuple[torch.Tensor, ...]:
        eps = iw.episodes
        q, v = self._model_values(eps.transitions)
        q, v = eps.pad(q, 0.0), eps.pad(v, 0.0)
        disc = eps.discounts(self.gamma)
        w = iw.weights
        w_prev = torch.cat([torch.ones_like(w[:, :1]), w[:, :-1]], 1)
        correction = disc * w * (eps.rewards - q)
        baseline = disc * w_prev * v
        return correction, baseline, w, w_prev

    def _terms(self, iw: ImportanceWeights) -> tuple[torch.Tensor, torch.Tensor | None]:
        correction, baseline, _, _ = self._step_terms(iw)
        return (correction + baseline).sum(1, keepdim=True), None

    def _extra_diagnostics(self) -> dict[str, Any]:
        return {"q_model": type(self.q_model).__name__}


class WeightedDoublyRobust(DoublyRobust):
    """Weighted doubly robust estimator (Thomas & Brunskill, 2016).

    The per-step weights of :class:`DoublyRobust` are normalised over episodes; biased for
    few episodes, consistent, and usually the lowest-variance importance-based estimate.
    Same arguments as :class:`DoublyRobust`.
    """

    name = "WDR"
    weighted = True

    def _terms(self, iw: ImportanceWeights) -> tuple[torch.Tensor, torch.Tensor | None]:
        correction, baseline, w, w_prev = self._step_terms(iw)
        return torch.cat([correction, baseline], 1), torch.cat([w, w_prev], 1)
