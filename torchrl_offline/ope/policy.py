"""The evaluation policy seen by the estimators: log-probabilities of logged actions, sampling.

Off-policy estimators need ``log pi(a | s)`` of each logged action under the policy being
evaluated (importance sampling) and actions or action probabilities from it (direct
method, doubly robust). :class:`EvaluationPolicy` gives both for

- a TorchRL :class:`~torchrl.modules.ProbabilisticActor`, or any module with
  ``get_dist(tensordict)``: continuous distributions, and discrete ones over integer action
  indices (``Categorical``, ``MaskedCategorical``) or one-hot vectors (TorchRL's
  ``OneHotCategorical`` family): logged indices are converted as each expects;
- a deterministic actor (a TensorDict module writing ``"action"``) with a stated
  Gaussian kernel bandwidth (continuous actions: ``pi(a | s) = N(a; mu(s), h^2 I)``) or an
  epsilon (discrete actions: the actor's action with probability ``1 - eps``, uniform
  otherwise);
- any object with ``log_prob(tensordict)`` (and, for sampling, ``sample(tensordict)``),
  such as the behaviour policies of :mod:`torchrl_offline.data.behavior`.

Which policy is scored (:data:`POLICY_MODES`): the *stochastic* policy samples from the
actor's distribution; the *greedy* policy takes its deterministic action (the mode of a
discrete distribution, the mean or mode of a continuous one: what the actor returns under
``ExplorationType.DETERMINISTIC``, as ``evaluate`` and a deployed policy run it). A greedy
policy has probability 1 on one action: for discrete actions that is a valid (0 or 1)
probability, for continuous actions a point mass whose density at any logged action is 0,
so importance weights need a stated ``kernel_bandwidth``.
"""

from __future__ import annotations

import math
from typing import Any

import torch
from tensordict import TensorDictBase
from torch import distributions as D
from torchrl.envs.utils import ExplorationType, set_exploration_type
from torchrl.modules.distributions import MaskedOneHotCategorical, OneHotCategorical

from torchrl_offline.data.keys import ACTION
from torchrl_offline.data.stats import iter_chunks
from torchrl_offline.ope.result import OPEError

__all__ = ["POLICY_MODES", "EvaluationPolicy", "as_evaluation_policy", "check_policy_mode"]

#: Which policy of an actor is scored: ``"greedy"`` (its deterministic action) or
#: ``"stochastic"`` (sampling from its distribution).
POLICY_MODES = ("greedy", "stochastic")

_ONE_HOT_DISTS = (OneHotCategorical, MaskedOneHotCategorical, D.OneHotCategorical)


def _is_discrete_action(action: torch.Tensor) -> bool:
    return not (action.dtype.is_floating_point or action.dtype.is_complex)


def _is_one_hot(action: torch.Tensor) -> bool:
    """Whether floating actions ``[B, n]`` are one-hot vectors (a discrete space)."""
    if action.ndim < 2 or action.shape[-1] < 2:
        return False
    binary = (action == 0) | (action == 1)
    return bool(binary.all()) and bool((action.sum(-1) == 1).all())


class EvaluationPolicy:
    """A policy to evaluate, with log-probabilities of given actions and sampling.

    Args:
        policy: a ``ProbabilisticActor`` / module with ``get_dist``, a deterministic actor,
            or an object with ``log_prob(tensordict)``.

    Keyword Args:
        kernel_bandwidth: for a deterministic actor with continuous actions, the standard
            deviation ``h`` of the Gaussian kernel around its action.
        epsilon: for a deterministic actor with discrete actions, the probability of a
            uniformly random action.
        num_actions: number of discrete actions (needed for a deterministic actor that
            writes action indices, and to check logged indices against the policy).
        action_key: the action key in the data.
        mode: which policy to score: ``"stochastic"`` (the actor's distribution; needs
            ``get_dist`` or ``log_prob``), ``"greedy"`` (its deterministic action, smoothed
            by ``epsilon`` or ``kernel_bandwidth`` when given), or ``None`` (the policy as
            given: its distribution if it has one, else its action). :attr:`mode` tells
            which was chosen.

    Examples:
        >>> import torch
        >>> from torch import nn
        >>> from tensordict import TensorDict
        >>> from tensordict.nn import TensorDictModule
        >>> from torchrl.modules import ProbabilisticActor
        >>> actor = ProbabilisticActor(
        ...     TensorDictModule(nn.Linear(3, 4), ["observation"], ["logits"]),
        ...     in_keys=["logits"], distribution_class=torch.distributions.Categorical)
        >>> td = TensorDict({"observation": torch.randn(6, 3),
        ...                  "action": torch.tensor([0, 1, 2, 3, 0, 1])}, [6])
        >>> pi = EvaluationPolicy(actor)
        >>> pi.log_prob(td).shape, pi.action_probs(td).shape
        (torch.Size([6]), torch.Size([6, 4]))
    """

    def __init__(
        self,
        policy: Any,
        *,
        kernel_bandwidth: float | None = None,
        epsilon: float | None = None,
        num_actions: int | None = None,
        action_key: str = ACTION,
        mode: str | None = None,
    ):
        if isinstance(policy, EvaluationPolicy):
            raise TypeError("policy is already an EvaluationPolicy; use as_evaluation_policy")
        check_policy_mode(mode, kernel_bandwidth=kernel_bandwidth, epsilon=epsilon)
        if kernel_bandwidth is not None and epsilon is not None:
            raise ValueError("Give kernel_bandwidth (continuous) or epsilon (discrete), not both")
        if kernel_bandwidth is not None and not kernel_bandwidth > 0:
            raise ValueError(f"kernel_bandwidth must be > 0, got {kernel_bandwidth}")
        if epsilon is not None and not 0 <= epsilon <= 1:
            raise ValueError(f"epsilon must be in [0, 1], got {epsilon}")
        self.policy = policy
        self.kernel_bandwidth = kernel_bandwidth
        self.epsilon = epsilon
        self.num_actions = num_actions
        self.action_key = action_key
        stochastic = hasattr(policy, "get_dist") or hasattr(policy, "log_prob")
        if mode == "stochastic" and not stochastic:
            raise TypeError(
                f"Cannot score the stochastic policy of a {type(policy).__name__}: it has no "
                "action distribution (get_dist or log_prob); score its greedy policy "
                "(mode='greedy', with epsilon or kernel_bandwidth to smooth it)"
            )
        if kernel_bandwidth is not None or epsilon is not None or mode == "greedy":
            self.kind = "deterministic"
            self._greedy_actor = _greedy_actor(policy)
        elif hasattr(policy, "get_dist"):
            self.kind = "distribution"
        elif hasattr(policy, "log_prob"):
            self.kind = "log_prob"
        elif callable(policy):
            self.kind = "deterministic"
            self._greedy_actor = policy
        else:
            raise TypeError(
                f"Cannot evaluate a {type(policy).__name__}: expected a module with get_dist(td) "
                "(e.g. a ProbabilisticActor), an object with log_prob(td), or a deterministic "
                "actor (optionally with kernel_bandwidth (continuous) or epsilon (discrete))"
            )

    @property
    def mode(self) -> str:
        """The policy scored: ``"greedy"`` (the actor's deterministic action, smoothed or
        not) or ``"stochastic"`` (its distribution)."""
        return "greedy" if self.kind == "deterministic" else "stochastic"

    def describe(self) -> str:
        name = type(self.policy).__name__
        if self.kernel_bandwidth is not None:
            return (
                f"{name}, greedy action with a Gaussian kernel (bandwidth "
                f"{self.kernel_bandwidth:g})"
            )
        if self.epsilon is not None:
            return f"{name}, epsilon-greedy around its greedy action (epsilon {self.epsilon:g})"
        if self.kind == "deterministic":
            return f"{name}, greedy (its deterministic action)"
        return f"{name}, stochastic (sampling its distribution)"

    # ------------------------------------------------------------------ inputs
    def _inputs(self, td: TensorDictBase) -> TensorDictBase:
        """An in-memory copy of the policy's input keys (the policy may write into it)."""
        in_keys = getattr(self.policy, "in_keys", None)
        keys = set(td.keys(True, True))
        if in_keys and all(k in keys or k in td.keys(True) for k in in_keys):
            out = td.select(*in_keys).to_tensordict()
        else:
            out = td.exclude("next", self.action_key).to_tensordict()
        device = self._device()
        return out.to(device) if device is not None else out

    def _device(self) -> torch.device | None:
        params = getattr(self.policy, "parameters", None)
        if params is None:
            return None
        p = next(iter(params()), None)
        return None if p is None else p.device

    def _dist(self, td: TensorDictBase) -> D.Distribution:
        return self.policy.get_dist(self._inputs(td))

    def _actor_action(self, td: TensorDictBase) -> torch.Tensor:
        with set_exploration_type(ExplorationType.DETERMINISTIC):
            out = self._greedy_actor(self._inputs(td))
        action = out.get(self.action_key) if isinstance(out, TensorDictBase) else out
        return action.detach().cpu()

    # ----------------------------------------------------------- discrete helpers
    def _n_from(
        self, dist: D.Distribution | None = None, action: torch.Tensor | None = None
    ) -> int:
        if dist is not None:
            return (
                int(dist.logits.shape[-1]) if hasattr(dist, "logits") else int(dist.probs.shape[-1])
            )
        if self.num_actions is not None:
            return int(self.num_actions)
        if action is not None and action.dtype.is_floating_point is False and action.ndim >= 2:
            return int(action.shape[-1])
        spec = getattr(self.policy, "spec", None)
        n = getattr(getattr(spec, "space", None), "n", None)
        if n is None and spec is not None and hasattr(spec, "get"):
            inner = spec.get(self.action_key, None) if self.action_key in spec.keys() else None
            n = getattr(getattr(inner, "space", None), "n", None)
        if n is None:
            raise OPEError(
                "The number of discrete actions is unknown: pass num_actions=", field="num_actions"
            )
        return int(n)

    def _greedy_num_actions(self, td: TensorDictBase, emitted: torch.Tensor) -> int:
        """Number of discrete actions around a greedy action: stated, the width of the
        policy's distribution (a ``get_dist`` policy scored greedily), or the emitted
        one-hot's."""
        if self.num_actions is None and hasattr(self.policy, "get_dist"):
            return self._n_from(self._dist(td))
        return self._n_from(action=emitted)

    @staticmethod
    def _to_index(action: torch.Tensor, n: int | None, batch: int) -> torch.Tensor:
        """Logged or emitted discrete actions as indices ``[batch]``."""
        if (
            action.ndim >= 2
            and action.shape[-1] > 1
            and action.reshape(batch, -1).shape[-1] == action.shape[-1]
        ):
            if n is not None and action.shape[-1] != n:
                raise OPEError(
                    f"Mismatched action spaces: one-hot actions of size {action.shape[-1]} but "
                    f"the policy has {n} actions",
                    field=ACTION,
                )
            return action.reshape(batch, -1).argmax(-1)
        return action.reshape(batch).long()

    def _check_discrete(self, action: torch.Tensor, offset: int, what: str) -> None:
        if not _is_discrete_action(action) and not (action.ndim >= 2 and action.shape[-1] > 1):
            raise OPEError(
                f"Mismatched action spaces: the data's {self.action_key!r} is {action.dtype} "
                f"(continuous) but {what} is discrete",
                field=self.action_key,
            )

    def _check_indices(self, index: torch.Tensor, n: int, offset: int) -> None:
        bad = (index < 0) | (index >= n)
        if bad.any():
            i = int(bad.nonzero()[0])
            raise OPEError(
                f"Mismatched action spaces: logged action {int(index[i])} at transition "
                f"{offset + i} is outside the policy's {n} actions",
                field=self.action_key,
                index=offset + i,
            )

    # ------------------------------------------------------------- public API
    @torch.no_grad()
    def log_prob(
        self, td: TensorDictBase, *, offset: int = 0, action_start: int = 0
    ) -> torch.Tensor:
        """Log-probability (density for continuous actions) of ``td[action_key]``, float64 ``[B]``.

        Args:
            td: transitions ``[B]`` with the policy's input keys and the logged action.
            offset: index of ``td[0]`` in the dataset (for error messages).
            action_start: value of the first discrete action in the data (gymnasium's
                ``Discrete(n, start=...)``): logged integer actions ``start + i`` are the
                policy's action ``i`` (one-hot actions are left as they are).

        Raises:
            OPEError: mismatched action spaces (kind, dimension, index range) or a NaN
                log-probability, naming the first offending transition.
        """
        batch = td.shape[0]
        action = td.get(self.action_key)
        one_hot = action.ndim >= 2 and action.shape[-1] > 1
        if action_start and _is_discrete_action(action) and not one_hot:
            action = action - int(action_start)  # values of Discrete(n, start) -> indices
            if self.kind == "log_prob":
                td = td.clone(False).set(self.action_key, action)
        if self.kind == "distribution":
            dist = self._dist(td)
            lp = self._dist_log_prob(dist, action, batch, offset)
        elif self.kind == "deterministic":
            lp = self._kernel_log_prob(td, action, batch, offset)
        else:
            out = self.policy.log_prob(td)
            lp = out.reshape(batch) if isinstance(out, torch.Tensor) else None
            if lp is None:
                raise TypeError(f"{type(self.policy).__name__}.log_prob must return a tensor")
        lp = lp.detach().to(torch.float64).cpu().reshape(batch)
        self._check_finite(lp, offset)
        return lp

    def _check_finite(self, lp: torch.Tensor, offset: int) -> None:
        bad = lp.isnan() | (lp == float("inf"))
        if bad.any():
            i = int(bad.nonzero()[0])
            raise OPEError(
                f"The evaluation policy's log-probability is {lp[i].item()} at transition "
                f"{offset + i}",
                field="evaluation log_prob",
                index=offset + i,
            )

    def _dist_log_prob(
        self, dist: D.Distribution, action: torch.Tensor, batch: int, offset: int
    ) -> torch.Tensor:
        device = self._device() or action.device
        if isinstance(dist, (D.Categorical, *_ONE_HOT_DISTS)):
            self._check_discrete(action, offset, f"the policy's {type(dist).__name__}")
            n = self._n_from(dist)
            index = self._to_index(action, n, batch)
            self._check_indices(index, n, offset)
            if isinstance(dist, _ONE_HOT_DISTS):
                value = torch.nn.functional.one_hot(index, n).to(device=device)
                value = value.to(dist.logits.dtype if hasattr(dist, "logits") else torch.float32)
            else:
                value = index.to(device)
            return dist.log_prob(value).reshape(batch)
        if _is_discrete_action(action):
            raise OPEError(
                f"Mismatched action spaces: the data's {self.action_key!r} holds integer indices "
                f"(discrete) but the policy's {type(dist).__name__} is continuous",
                field=self.action_key,
            )
        value = action.to(device=device, dtype=torch.get_default_dtype())
        event = tuple(getattr(dist, "event_shape", ()))
        sample_shape = tuple(getattr(dist, "batch_shape", ())) + event
        if sample_shape and tuple(value.shape) != sample_shape:
            raise OPEError(
                f"Mismatched action spaces: logged actions have shape {tuple(value.shape[1:])} "
                f"but the policy's {type(dist).__name__} gives {sample_shape[1:]}",
                field=self.action_key,
            )
        lp = dist.log_prob(value)
        return lp.reshape(batch, -1).sum(-1)

    def _kernel_log_prob(
        self, td: TensorDictBase, action: torch.Tensor, batch: int, offset: int
    ) -> torch.Tensor:
        emitted = self._actor_action(td)
        discrete = _is_discrete_action(action) or _is_one_hot(action)
        if self.epsilon is not None or (self.kernel_bandwidth is None and discrete):
            eps = self.epsilon or 0.0
            self._check_discrete(action, offset, "an epsilon-greedy policy")
            n = self._greedy_num_actions(td, emitted)
            index = self._to_index(action, n, batch)
            self._check_indices(index, n, offset)
            greedy = self._to_index(emitted, n, batch)
            p = torch.where(index == greedy, 1 - eps + eps / n, eps / n)
            return p.to(torch.float64).log()
        if _is_discrete_action(action):
            raise OPEError(
                f"Mismatched action spaces: the data's {self.action_key!r} holds integer indices "
                "(discrete) but kernel_bandwidth is for continuous actions (use epsilon=)",
                field=self.action_key,
            )
        if self.kernel_bandwidth is None:
            raise OPEError(
                f"The greedy policy of {type(self.policy).__name__} is deterministic over "
                "continuous actions: a point mass whose density at every logged action is 0, "
                "so importance weights (IS, WIS, PDIS, WPDIS, DR, WDR) are undefined. State a "
                "Gaussian kernel_bandwidth to smooth it (--kernel-bandwidth), score the "
                "stochastic policy (mode 'stochastic', --policy-mode stochastic), or use FQE",
                field="kernel_bandwidth",
            )
        a = action.reshape(batch, -1).to(torch.float64)
        mu = emitted.reshape(batch, -1).to(torch.float64)
        if a.shape != mu.shape:
            raise OPEError(
                f"Mismatched action spaces: logged actions have {a.shape[-1]} dimensions but the "
                f"actor emits {mu.shape[-1]}",
                field=self.action_key,
            )
        h = self.kernel_bandwidth
        d = a.shape[-1]
        return -0.5 * ((a - mu) / h).pow(2).sum(-1) - d * (
            math.log(h) + 0.5 * math.log(2 * math.pi)
        )

    @torch.no_grad()
    def action_probs(self, td: TensorDictBase) -> torch.Tensor:
        """Discrete actions: ``[B, num_actions]`` float64 probabilities of every action."""
        batch = td.shape[0]
        if self.kind == "distribution":
            dist = self._dist(td)
            if not (isinstance(dist, (D.Categorical, *_ONE_HOT_DISTS))):
                raise OPEError(f"action_probs needs a discrete policy, got {type(dist).__name__}")
            return dist.probs.detach().to(torch.float64).cpu().reshape(batch, -1)
        if self.kind == "deterministic":
            if self.kernel_bandwidth is not None:
                raise OPEError("action_probs needs a discrete policy (epsilon=), not a kernel")
            eps = self.epsilon or 0.0
            emitted = self._actor_action(td)
            n = self._greedy_num_actions(td, emitted)
            greedy = self._to_index(emitted, n, batch)
            probs = torch.full((batch, n), eps / n, dtype=torch.float64)
            probs[torch.arange(batch), greedy] += 1 - eps
            return probs
        n = self._n_from()
        cols = []
        for a in range(n):
            probe = td.exclude("next").to_tensordict()
            probe.set(self.action_key, torch.full((batch,), a, dtype=torch.long))
            cols.append(self.policy.log_prob(probe).reshape(batch).to(torch.float64).exp())
        return torch.stack(cols, -1)

    @torch.no_grad()
    def sample(self, td: TensorDictBase, num_samples: int | None = None) -> torch.Tensor:
        """Actions drawn from the policy at the states of ``td`` (batch ``[B]``).

        Args:
            td: states ``[B]``.
            num_samples: draw this many actions per state.

        Returns:
            ``[B, ...]`` actions, or ``[num_samples, B, ...]`` with ``num_samples``; discrete
            actions are indices. Randomness comes from torch's global generator.
        """
        batch = td.shape[0]
        shape = () if num_samples is None else (int(num_samples),)
        if self.kind == "distribution":
            dist = self._dist(td)
            a = dist.sample(shape)
            if isinstance(dist, _ONE_HOT_DISTS):
                a = a.argmax(-1)
            return a.cpu()
        if self.kind == "deterministic":
            emitted = self._actor_action(td)
            discrete = _is_discrete_action(emitted) or _is_one_hot(emitted)
            if self.epsilon is not None or (self.kernel_bandwidth is None and discrete):
                n = self._greedy_num_actions(td, emitted)
                greedy = self._to_index(emitted, n, batch).expand(*shape, batch)
                if not self.epsilon:
                    return greedy.clone()
                explore = torch.rand(*shape, batch) < self.epsilon
                return torch.where(explore, torch.randint(n, (*shape, batch)), greedy)
            mu = emitted.expand(*shape, *emitted.shape)
            if self.kernel_bandwidth is None:
                return mu.clone()
            return mu + self.kernel_bandwidth * torch.randn_like(mu)
        if not hasattr(self.policy, "sample"):
            raise TypeError(f"{type(self.policy).__name__} has no sample(td) method")
        inputs = td.exclude("next").to_tensordict()

        def draw() -> torch.Tensor:
            out = self.policy.sample(inputs)
            return out[0] if isinstance(out, tuple) else out

        return draw() if num_samples is None else torch.stack([draw() for _ in range(num_samples)])

    def log_prob_dataset(
        self, td: TensorDictBase, *, chunk_size: int = 65536, action_start: int = 0
    ) -> torch.Tensor:
        """:meth:`log_prob` over all transitions ``[N]`` of a (memory-mapped) dataset, chunk by chunk."""
        return torch.cat(
            [
                self.log_prob(c, offset=s, action_start=action_start)
                for s, c in iter_chunks(td, chunk_size)
            ]
        )


def check_policy_mode(
    mode: str | None, *, kernel_bandwidth: float | None = None, epsilon: float | None = None
) -> None:
    """Refuses an unknown ``mode`` and smoothing (``epsilon``, ``kernel_bandwidth``), which
    applies to the greedy action, together with ``mode="stochastic"``: a ``ValueError``."""
    if mode is not None and mode not in POLICY_MODES:
        raise ValueError(f"policy mode must be one of {POLICY_MODES} or None, got {mode!r}")
    if mode == "stochastic" and (kernel_bandwidth is not None or epsilon is not None):
        raise ValueError(
            "epsilon and kernel_bandwidth smooth the greedy policy (the actor's deterministic "
            "action); they do not apply to the stochastic policy (mode 'stochastic')"
        )


def _greedy_actor(policy: Any) -> Any:
    """What gives ``policy``'s greedy action: the policy itself (run under
    ``ExplorationType.DETERMINISTIC``), or the actor inside a noisy behaviour policy."""
    if hasattr(policy, "get_dist") or not hasattr(policy, "log_prob"):
        if not callable(policy):
            raise TypeError(f"Cannot take the greedy action of a {type(policy).__name__}")
        return policy
    actor = getattr(policy, "actor", None)
    if actor is None:
        raise TypeError(
            f"{type(policy).__name__} has no greedy action (no actor inside it to take the "
            "deterministic action of): score its stochastic policy (mode 'stochastic')"
        )
    return actor


def discrete_action_start(data: Any) -> int:
    """``start`` of the dataset's ``Discrete`` action space, from ``data.metadata`` (else 0).

    Datasets loaded by :func:`~torchrl_offline.data.minari.load_minari` store Discrete
    actions as values of the space (``start .. start + n - 1``), while TorchRL policies
    index their actions from 0.
    """
    serialized = getattr(data, "metadata", None)
    serialized = serialized.get("action_space") if isinstance(serialized, dict) else None
    if not isinstance(serialized, str):
        return 0
    try:
        from gymnasium.spaces import Discrete
        from minari.serialization import deserialize_space

        space = deserialize_space(serialized)
    except Exception:  # unknown or custom space
        return 0
    return int(space.start) if isinstance(space, Discrete) else 0


def as_evaluation_policy(policy: Any, **kwargs: Any) -> EvaluationPolicy:
    """Wrap ``policy`` as an :class:`EvaluationPolicy` (returned as is if it already is one)."""
    if isinstance(policy, EvaluationPolicy):
        mode = kwargs.pop("mode", None)
        if any(v is not None for v in kwargs.values()):
            raise ValueError("Keyword arguments cannot be applied to an existing EvaluationPolicy")
        if mode is not None and mode != policy.mode:
            raise ValueError(f"the EvaluationPolicy scores its {policy.mode} policy, not {mode}")
        return policy
    return EvaluationPolicy(policy, **kwargs)
