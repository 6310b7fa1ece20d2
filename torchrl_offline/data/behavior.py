"""Behaviour policies that record the exact probability of every action they take.

Off-policy evaluation by importance sampling needs, for every logged action, the
probability (density) with which the behaviour policy chose it. Each policy here
is a TensorDict module (usable in any TorchRL :class:`~torchrl.collectors.Collector`)
that reads the observation, draws an action and writes

- ``"action"``: the action, in the encoding of the env's action spec;
- ``"action_log_prob"``: the log-probability (discrete) or log-density
  (continuous) of that very action under the policy, float32 ``[*batch]``;
- ``"action_prob"``: its probability, for discrete action spaces only.

Each policy also has :meth:`BehaviorPolicy.log_prob`, which evaluates the same
density at any given action; the value written at sampling time is that function
evaluated (in float64) at the action actually emitted, after its cast to the
spec's dtype, so the two always agree.

Randomness comes from torch's global generator (as in TorchRL's exploration
modules): ``torch.manual_seed`` makes a run reproducible.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import gymnasium as gym
import torch
from tensordict import TensorDictBase
from tensordict.nn import TensorDictModuleBase
from tensordict.utils import NestedKey
from torch import distributions as d
from torchrl.data import Bounded, Categorical, Composite, OneHot, TensorSpec, Unbounded
from torchrl.envs.utils import ExplorationType, set_exploration_type

from torchrl_offline.data.keys import ACTION, ACTION_LOG_PROB, ACTION_PROB

__all__ = [
    "IS_INIT",
    "POLICY_ID",
    "BehaviorPolicy",
    "EpsilonGreedyPolicy",
    "GaussianNoisePolicy",
    "MixturePolicy",
    "ProbabilisticActorPolicy",
    "UniformRandomPolicy",
    "as_behavior_policy",
]

#: Key of the mixture component that chose each action (see :class:`MixturePolicy`).
POLICY_ID = "policy_id"
#: Key written by :class:`~torchrl.envs.transforms.InitTracker`: True on the first step of
#: an episode. :class:`MixturePolicy` in per-episode mode draws its component there.
IS_INIT = "is_init"

_LOG_SQRT_2PI = 0.5 * math.log(2 * math.pi)


class _ActionSpace:
    """The facts about one (unbatched) action spec that the policies need."""

    def __init__(self, spec: TensorSpec | gym.Space):
        if isinstance(spec, gym.Space):
            from torchrl.envs.libs.gym import _gym_to_torchrl_spec_transform

            spec = _gym_to_torchrl_spec_transform(spec, categorical_action_encoding=True)
        if isinstance(spec, Composite):
            if ACTION not in spec.keys():
                raise ValueError("The composite action spec has no 'action' entry")
            spec = spec[ACTION]
        self.spec = spec
        self.shape = tuple(spec.shape)
        self.dtype = spec.dtype
        if type(spec) is OneHot and len(self.shape) == 1:
            self.kind = "onehot"
            self.n = int(spec.space.n)
        elif type(spec) is Categorical and math.prod(self.shape) == 1:
            self.kind = "categorical"
            self.n = int(spec.space.n)
        elif isinstance(spec, (Bounded, Unbounded)) and spec.dtype.is_floating_point:
            self.kind = "box"
            if isinstance(spec, Bounded):
                low, high = spec.space.low, spec.space.high
            else:
                low = torch.full(self.shape, -math.inf)
                high = torch.full(self.shape, math.inf)
            self.low = low.to(torch.float64).expand(self.shape).clone()
            self.high = high.to(torch.float64).expand(self.shape).clone()
        else:
            raise ValueError(
                f"Unsupported action spec {type(spec).__name__}(shape={list(self.shape)}, "
                f"dtype={spec.dtype}): behaviour policies support a continuous box "
                "(Bounded/Unbounded float), a single Categorical index or a single OneHot"
            )

    @property
    def discrete(self) -> bool:
        return self.kind != "box"

    def to_index(self, action: torch.Tensor, batch_shape: torch.Size) -> torch.Tensor:
        """A discrete action (one-hot, index or ``[*batch, 1]`` index) as int64 ``[*batch]``."""
        if action.shape == (*batch_shape, self.n) and (self.kind == "onehot" or self.n > 1):
            hot = action.long()
            one_hot = (hot.sum(-1) == 1) & ((hot == 0) | (hot == 1)).all(-1)
            return torch.where(one_hot, hot.argmax(-1), -1)  # -1: not a valid action
        return action.reshape(batch_shape).long()

    def from_index(self, index: torch.Tensor) -> torch.Tensor:
        if self.kind == "onehot":
            return torch.nn.functional.one_hot(index, self.n).to(self.dtype)
        return index.reshape((*index.shape, *self.shape)).to(self.dtype)

    def require_finite_box(self, what: str) -> None:
        if not (torch.isfinite(self.low).all() and torch.isfinite(self.high).all()):
            raise ValueError(
                f"{what} needs a bounded action box; got low={self.low.tolist()}, "
                f"high={self.high.tolist()}"
            )

    def event_sum(self, x: torch.Tensor) -> torch.Tensor:
        """Sum the per-dimension log-densities of a box action over its event dims."""
        return x.sum(dim=tuple(range(-len(self.shape), 0))) if self.shape else x

    def log_volume(self) -> torch.Tensor:
        return (self.high - self.low).log().sum()

    def in_box(self, x: torch.Tensor) -> torch.Tensor:
        inside = (x >= self.low) & (x <= self.high)
        return inside.reshape((*inside.shape[: inside.ndim - len(self.shape)], -1)).all(-1)


def _truncated_normal_sample(
    loc: torch.Tensor, scale: torch.Tensor, low: torch.Tensor, high: torch.Tensor
) -> torch.Tensor:
    """Exact draw from N(loc, scale^2) truncated to [low, high] by inverse-CDF sampling (float64).

    ``u ~ U(Phi(a), Phi(b))`` with ``a, b`` the standardised bounds, then
    ``x = loc + scale * Phi^-1(u)``: ``P(x <= t) = (Phi((t - loc)/scale) - Phi(a)) / (Phi(b) - Phi(a))``,
    the truncated normal's CDF. The final clamp only absorbs float rounding at the bounds.
    """
    a = (low - loc) / scale
    b = (high - loc) / scale
    cdf_a, cdf_b = torch.special.ndtr(a), torch.special.ndtr(b)
    u = torch.rand(loc.shape, dtype=torch.float64).clamp_(min=torch.finfo(torch.float64).tiny)
    z = torch.special.ndtri(cdf_a + u * (cdf_b - cdf_a))
    return torch.maximum(torch.minimum(loc + scale * z, high), low)


def _truncated_normal_log_prob(
    x: torch.Tensor, loc: torch.Tensor, scale: torch.Tensor, low: torch.Tensor, high: torch.Tensor
) -> torch.Tensor:
    """Per-dimension log-density of N(loc, scale^2) truncated to [low, high] (float64)."""
    mass = torch.special.ndtr((high - loc) / scale) - torch.special.ndtr((low - loc) / scale)
    z = (x - loc) / scale
    log_density = -0.5 * z.square() - scale.log() - _LOG_SQRT_2PI - mass.log()
    return torch.where((x >= low) & (x <= high), log_density, -math.inf)


class BehaviorPolicy(TensorDictModuleBase):
    """Base class of the behaviour policies: sample an action and record its exact log-probability.

    Subclasses implement :meth:`_dist_params` (whatever the action distribution depends
    on, computed from the input tensordict), :meth:`_draw` (an action from it) and
    :meth:`_log_prob` (the log-density of a given action under it, float64 ``[*batch]``).
    :meth:`forward` writes ``_log_prob`` of the action it emitted, so the recorded value
    is, by construction, the policy's density at the logged action.

    Attributes:
        discrete: whether the action space is discrete (then ``"action_prob"`` is written too).

    Examples:
        >>> import torch
        >>> from tensordict import TensorDict
        >>> from torchrl.data import Categorical
        >>> policy = UniformRandomPolicy(Categorical(4))
        >>> td = policy(TensorDict({"observation": torch.zeros(3, 2)}, batch_size=[3]))
        >>> sorted(td.keys())
        ['action', 'action_log_prob', 'action_prob', 'observation']
        >>> torch.equal(policy.log_prob(td).float(), td["action_log_prob"])  # same density
        True
    """

    discrete: bool

    def _set_keys(self, in_keys: Sequence[Any], extra_out_keys: Sequence[Any] = ()) -> None:
        self.in_keys = list(dict.fromkeys(in_keys))
        out = [ACTION, ACTION_LOG_PROB] + ([ACTION_PROB] if self.discrete else [])
        self.out_keys = out + list(extra_out_keys)

    def _dist_params(self, tensordict: TensorDictBase) -> Any:
        raise NotImplementedError

    def _draw(self, params: Any, batch_shape: torch.Size) -> torch.Tensor:
        raise NotImplementedError

    def _log_prob(self, params: Any, action: torch.Tensor, batch_shape: torch.Size) -> torch.Tensor:
        raise NotImplementedError

    def sample(self, tensordict: TensorDictBase) -> tuple[torch.Tensor, torch.Tensor]:
        """Draw actions for ``tensordict`` (not modified): ``(action, float64 log-prob [*batch])``."""
        batch_shape = tensordict.batch_size
        params = self._dist_params(tensordict)
        action = self._draw(params, batch_shape)
        return action, self._log_prob(params, action, batch_shape)

    def log_prob(self, tensordict: TensorDictBase) -> torch.Tensor:
        """Log-probability (density) of ``tensordict["action"]`` given its observation, float64.

        Args:
            tensordict: observations and actions with batch size ``[*batch]``.

        Returns:
            A float64 tensor of shape ``[*batch]``; ``-inf`` for impossible actions.
        """
        params = self._dist_params(tensordict)
        return self._log_prob(params, tensordict.get(ACTION), tensordict.batch_size)

    def forward(self, tensordict: TensorDictBase) -> TensorDictBase:
        action, log_prob = self.sample(tensordict)
        tensordict.set(ACTION, action)
        tensordict.set(ACTION_LOG_PROB, log_prob.to(torch.float32))
        if self.discrete:
            tensordict.set(ACTION_PROB, log_prob.exp().to(torch.float32))
        return tensordict

    def describe(self) -> str:
        """A short description stored in the dataset metadata."""
        return type(self).__name__


class UniformRandomPolicy(BehaviorPolicy):
    """Uniformly random actions over the action space, with their exact log-probability.

    Discrete (``Categorical`` or ``OneHot`` spec with ``n`` actions): every action has
    probability ``1/n``, recorded as ``log_prob = -log n``. Continuous (a bounded box):
    each coordinate is drawn uniformly in ``[low, high]``, so the density is the
    constant ``1/prod(high - low)`` inside the box, recorded as
    ``log_prob = -sum(log(high - low))``. Both are the exact law the draw follows.

    Args:
        action_spec: the env's unbatched action spec (``env.action_spec_unbatched``) or a
            gymnasium action space.

    Examples:
        >>> import torch
        >>> from tensordict import TensorDict
        >>> from torchrl.data import Bounded
        >>> policy = UniformRandomPolicy(Bounded(-2.0, 2.0, shape=(1,)))
        >>> td = policy(TensorDict({"observation": torch.zeros(5, 3)}, batch_size=[5]))
        >>> td["action"].shape, td["action_log_prob"][0].item() == -torch.tensor(4.0).log().item()
        (torch.Size([5, 1]), True)
    """

    def __init__(self, action_spec: TensorSpec | gym.Space):
        super().__init__()
        self.space = _ActionSpace(action_spec)
        self.discrete = self.space.discrete
        if not self.discrete:
            self.space.require_finite_box("UniformRandomPolicy")
        self._set_keys([])

    def _dist_params(self, tensordict: TensorDictBase) -> None:
        return None

    def _draw(self, params: None, batch_shape: torch.Size) -> torch.Tensor:
        space = self.space
        if self.discrete:
            return space.from_index(torch.randint(space.n, batch_shape))
        u = torch.rand(*batch_shape, *space.shape, dtype=torch.float64)
        x = torch.minimum(space.low + u * (space.high - space.low), space.high)
        return x.to(space.dtype)

    def _log_prob(
        self, params: None, action: torch.Tensor, batch_shape: torch.Size
    ) -> torch.Tensor:
        space = self.space
        if self.discrete:
            index = space.to_index(action, batch_shape)
            valid = (index >= 0) & (index < space.n)
            log_p = torch.full(batch_shape, -math.log(space.n), dtype=torch.float64)
            return log_p.masked_fill(~valid, -math.inf)
        inside = space.in_box(action.to(torch.float64))
        return torch.where(inside, -space.log_volume(), -math.inf)


def _actor_inputs(
    actor: TensorDictModuleBase, tensordict: TensorDictBase, keys: Sequence[NestedKey]
) -> TensorDictBase:
    """``keys`` of ``tensordict`` (a new tensordict), floating entries cast to the dtype of
    the actor's parameters: MuJoCo envs emit float64 observations, networks are float32.
    The collected data keeps the env's own dtype."""
    inputs = tensordict.select(*keys, strict=False)
    dtype = next((p.dtype for p in actor.parameters() if p.is_floating_point()), None)
    if dtype is None:
        return inputs
    return inputs.apply(lambda t: t.to(dtype) if t.is_floating_point() else t)


class _NoisyActor(BehaviorPolicy):
    """Shared machinery: run a TorchRL actor deterministically to get the centre of the noise."""

    def __init__(self, actor: TensorDictModuleBase, action_spec: TensorSpec | gym.Space):
        super().__init__()
        self.actor = actor
        self.space = _ActionSpace(action_spec)
        self.discrete = self.space.discrete

    def _actor_action(self, tensordict: TensorDictBase) -> torch.Tensor:
        with set_exploration_type(ExplorationType.DETERMINISTIC), torch.no_grad():
            out = self.actor(_actor_inputs(self.actor, tensordict, self.actor.in_keys))
        return out.get(ACTION)

    def _set_sigma(self, sigma: float | Sequence[float] | torch.Tensor) -> None:
        scale = torch.as_tensor(sigma, dtype=torch.float64).expand(self.space.shape).clone()
        if not bool((scale > 0).all()) or not bool(torch.isfinite(scale).all()):
            raise ValueError(f"sigma must be positive and finite, got {scale.tolist()}")
        self.register_buffer("sigma", scale)

    def _centre(self, tensordict: TensorDictBase) -> torch.Tensor:
        """The actor's action projected onto the box, float64 (the mean of the Gaussian)."""
        mu = self._actor_action(tensordict).to(torch.float64)
        return torch.maximum(torch.minimum(mu, self.space.high), self.space.low)


class GaussianNoisePolicy(_NoisyActor):
    """A deterministic actor plus Gaussian noise, truncated to the action box and sampled exactly.

    The action is drawn from a normal distribution centred on the actor's action
    (projected onto the box) with standard deviation ``sigma``, truncated to
    ``[low, high]``: ``p(a|s) = prod_i phi((a_i - mu_i)/sigma_i) / (sigma_i Z_i)`` with
    ``Z_i = Phi((high_i - mu_i)/sigma_i) - Phi((low_i - mu_i)/sigma_i)``. It is sampled by
    the inverse CDF, so the draw follows this law exactly and the recorded
    ``action_log_prob`` is its true density. (Adding noise and then clipping, as TD3 does,
    puts probability mass on the bounds and has no density there; truncation avoids that.)

    Args:
        actor: a TorchRL actor writing ``"action"`` (run in deterministic mode).
        action_spec: the env's unbatched action spec (a continuous box) or gymnasium space.

    Keyword Args:
        sigma: noise standard deviation in action units, a scalar or one per action dim.

    Examples:
        >>> import torch
        >>> from tensordict import TensorDict
        >>> from tensordict.nn import TensorDictModule
        >>> from torchrl.data import Bounded
        >>> actor = TensorDictModule(torch.nn.Linear(3, 1), ["observation"], ["action"])
        >>> policy = GaussianNoisePolicy(actor, Bounded(-2.0, 2.0, shape=(1,)), sigma=0.3)
        >>> td = policy(TensorDict({"observation": torch.zeros(4, 3)}, batch_size=[4]))
        >>> bool((td["action"].abs() <= 2).all()), td["action_log_prob"].shape
        (True, torch.Size([4]))
    """

    def __init__(
        self,
        actor: TensorDictModuleBase,
        action_spec: TensorSpec | gym.Space,
        *,
        sigma: float | Sequence[float] | torch.Tensor,
    ):
        super().__init__(actor, action_spec)
        if self.discrete:
            raise ValueError("GaussianNoisePolicy needs a continuous action space")
        self._set_sigma(sigma)
        self._set_keys(actor.in_keys)

    def _dist_params(self, tensordict: TensorDictBase) -> torch.Tensor:
        return self._centre(tensordict)

    def _draw(self, mu: torch.Tensor, batch_shape: torch.Size) -> torch.Tensor:
        space = self.space
        return _truncated_normal_sample(mu, self.sigma, space.low, space.high).to(space.dtype)

    def _log_prob(self, mu: torch.Tensor, action: torch.Tensor, batch_shape: torch.Size):
        space = self.space
        per_dim = _truncated_normal_log_prob(
            action.to(torch.float64), mu, self.sigma, space.low, space.high
        )
        return space.event_sum(per_dim)

    def describe(self) -> str:
        return f"GaussianNoisePolicy(sigma={self.sigma.tolist()})"


class EpsilonGreedyPolicy(_NoisyActor):
    """A deterministic actor that acts at random with probability ``epsilon``.

    Discrete: epsilon-greedy. With probability ``epsilon`` the action is uniform over
    the ``n`` actions, otherwise it is the actor's (greedy) action ``g``, so
    ``p(a|s) = epsilon/n + (1 - epsilon) [a = g]``, the probability recorded.

    Continuous: a point mass on the actor's action has no density, so the greedy part is
    the truncated Gaussian of :class:`GaussianNoisePolicy` (standard deviation ``sigma``):
    with probability ``epsilon`` the action is uniform in the box, otherwise it is drawn
    from that truncated Gaussian. The law is the mixture
    ``p(a|s) = epsilon / vol(box) + (1 - epsilon) N_trunc(a; mu(s), sigma)``, whose
    log is recorded; it is the exact density because which branch acted is drawn first and
    each branch is sampled exactly.

    Args:
        actor: a TorchRL actor writing ``"action"`` (run in deterministic mode). For
            discrete spaces the action may be an index or one-hot (e.g. a ``QValueActor``).
        action_spec: the env's unbatched action spec or gymnasium action space.

    Keyword Args:
        epsilon: probability of a uniformly random action, in ``[0, 1]``.
        sigma: continuous spaces only (required there): the Gaussian's standard deviation.

    Examples:
        >>> import torch
        >>> from tensordict import TensorDict
        >>> from tensordict.nn import TensorDictModule
        >>> from torchrl.data import Categorical
        >>> greedy = TensorDictModule(lambda obs: obs.argmax(-1), ["observation"], ["action"])
        >>> policy = EpsilonGreedyPolicy(greedy, Categorical(3), epsilon=0.3)
        >>> td = policy(TensorDict({"observation": torch.eye(3)}, batch_size=[3]))
        >>> {round(p, 4) for p in td["action_prob"].tolist()} <= {0.1, 0.8}  # eps/n or that + 1-eps
        True
    """

    def __init__(
        self,
        actor: TensorDictModuleBase,
        action_spec: TensorSpec | gym.Space,
        *,
        epsilon: float,
        sigma: float | Sequence[float] | torch.Tensor | None = None,
    ):
        super().__init__(actor, action_spec)
        if not 0.0 <= float(epsilon) <= 1.0:
            raise ValueError(f"epsilon must lie in [0, 1], got {epsilon}")
        self.epsilon = float(epsilon)
        if not self.discrete:
            if sigma is None:
                raise ValueError(
                    "EpsilonGreedyPolicy on a continuous action space needs sigma: its greedy "
                    "part is a truncated Gaussian around the actor's action"
                )
            self.space.require_finite_box("EpsilonGreedyPolicy")
            self._set_sigma(sigma)
        self._set_keys(actor.in_keys)

    def _dist_params(self, tensordict: TensorDictBase) -> torch.Tensor:
        if self.discrete:
            action = self._actor_action(tensordict)
            return self.space.to_index(action, tensordict.batch_size)
        return self._centre(tensordict)

    def _draw(self, centre: torch.Tensor, batch_shape: torch.Size) -> torch.Tensor:
        space = self.space
        explore = torch.rand(batch_shape, dtype=torch.float64) < self.epsilon
        if self.discrete:
            random = torch.randint(space.n, batch_shape)
            return space.from_index(torch.where(explore, random, centre))
        u = torch.rand(*batch_shape, *space.shape, dtype=torch.float64)
        uniform = torch.minimum(space.low + u * (space.high - space.low), space.high)
        gaussian = _truncated_normal_sample(centre, self.sigma, space.low, space.high)
        explore = explore.reshape((*batch_shape, *([1] * len(space.shape))))
        return torch.where(explore, uniform, gaussian).to(space.dtype)

    def _log_prob(self, centre: torch.Tensor, action: torch.Tensor, batch_shape: torch.Size):
        space = self.space
        eps = self.epsilon
        if self.discrete:
            index = space.to_index(action, batch_shape)
            valid = (index >= 0) & (index < space.n)
            prob = eps / space.n + (1.0 - eps) * (index == centre).to(torch.float64)
            return torch.where(valid, prob.log(), -math.inf)
        x = action.to(torch.float64)
        gaussian = space.event_sum(
            _truncated_normal_log_prob(x, centre, self.sigma, space.low, space.high)
        )
        uniform = torch.where(space.in_box(x), -space.log_volume(), -math.inf)
        never = torch.full_like(uniform, -math.inf)
        terms = torch.stack(
            [
                uniform + math.log(eps) if eps > 0 else never,
                gaussian + math.log1p(-eps) if eps < 1 else never,
            ]
        )
        return torch.logsumexp(terms, 0)

    def describe(self) -> str:
        sigma = "" if self.discrete else f", sigma={self.sigma.tolist()}"
        return f"EpsilonGreedyPolicy(epsilon={self.epsilon}{sigma})"


class ProbabilisticActorPolicy(BehaviorPolicy):
    """A TorchRL :class:`~torchrl.modules.ProbabilisticActor` used as it is.

    The actor's distribution ``pi(.|s)`` is built with ``actor.get_dist``, the action
    is one sample of it, and the recorded log-probability is that distribution's own
    ``log_prob`` at the sample; for a factorised distribution whose ``log_prob`` is
    per-dimension, the dims are summed (the joint density of independent coordinates).
    The action is written as sampled, never clipped, so the density recorded is the one
    of the logged action. Categorical / one-hot distributions give ``action_prob`` too.

    Args:
        actor: a ``ProbabilisticActor`` (or any probabilistic tensordict sequence with
            ``get_dist``) whose distribution samples ``"action"``.

    Examples:
        >>> import torch
        >>> from tensordict import TensorDict
        >>> from tensordict.nn import TensorDictModule
        >>> from torchrl.modules import ProbabilisticActor
        >>> logits = TensorDictModule(torch.nn.Linear(4, 2), ["observation"], ["logits"])
        >>> actor = ProbabilisticActor(
        ...     logits, in_keys=["logits"], distribution_class=torch.distributions.Categorical
        ... )
        >>> td = ProbabilisticActorPolicy(actor)(
        ...     TensorDict({"observation": torch.zeros(3, 4)}, batch_size=[3])
        ... )
        >>> torch.allclose(td["action_prob"], torch.full((3,), 0.5), atol=0.3)
        True
    """

    def __init__(self, actor: TensorDictModuleBase):
        super().__init__()
        if not hasattr(actor, "get_dist"):
            raise TypeError(
                f"{type(actor).__name__} has no get_dist(): ProbabilisticActorPolicy needs a "
                "ProbabilisticActor; wrap a deterministic actor in GaussianNoisePolicy or "
                "EpsilonGreedyPolicy instead"
            )
        self.actor = actor
        in_keys = [k for k in actor.in_keys if k not in (ACTION,)]
        self.discrete = self._infer_discrete(actor)
        self._set_keys(in_keys)

    @staticmethod
    def _infer_discrete(actor: TensorDictModuleBase) -> bool:
        dist_class = None
        for module in actor.modules():
            if hasattr(module, "distribution_class"):
                dist_class = module.distribution_class
                break
        return isinstance(dist_class, type) and issubclass(
            dist_class, (d.Categorical, d.OneHotCategorical)
        )

    def _dist_params(self, tensordict: TensorDictBase) -> d.Distribution:
        with torch.no_grad():
            return self.actor.get_dist(_actor_inputs(self.actor, tensordict, self.in_keys))

    def _draw(self, dist: d.Distribution, batch_shape: torch.Size) -> torch.Tensor:
        with torch.no_grad():
            return dist.sample()

    def _log_prob(self, dist: d.Distribution, action: torch.Tensor, batch_shape: torch.Size):
        with torch.no_grad():
            log_prob = dist.log_prob(action).to(torch.float64)
        extra = log_prob.ndim - len(batch_shape)
        return log_prob.sum(dim=tuple(range(-extra, 0))) if extra > 0 else log_prob

    def describe(self) -> str:
        return f"ProbabilisticActorPolicy({type(self.actor).__name__})"


def as_behavior_policy(policy: TensorDictModuleBase) -> BehaviorPolicy:
    """Return ``policy`` if it is a :class:`BehaviorPolicy`; wrap a ProbabilisticActor.

    Raises:
        TypeError: a module with no action distribution (a deterministic actor has no
            density: wrap it in :class:`GaussianNoisePolicy` or :class:`EpsilonGreedyPolicy`).

    Examples:
        >>> import torch
        >>> from tensordict.nn import TensorDictModule
        >>> from torchrl.modules import ProbabilisticActor
        >>> logits = TensorDictModule(torch.nn.Linear(4, 2), ["observation"], ["logits"])
        >>> actor = ProbabilisticActor(
        ...     logits, in_keys=["logits"], distribution_class=torch.distributions.Categorical
        ... )
        >>> type(as_behavior_policy(actor)).__name__
        'ProbabilisticActorPolicy'
    """
    if isinstance(policy, BehaviorPolicy):
        return policy
    from torchrl.modules import ProbabilisticActor

    if isinstance(policy, ProbabilisticActor):
        return ProbabilisticActorPolicy(policy)
    raise TypeError(
        f"{type(policy).__name__} is not a behaviour policy with known log-probabilities; "
        "use UniformRandomPolicy, GaussianNoisePolicy, EpsilonGreedyPolicy, "
        "ProbabilisticActorPolicy or MixturePolicy"
    )


class MixturePolicy(BehaviorPolicy):
    """A mixture of behaviour policies with given proportions, per episode or per step.

    ``per="episode"``: at the first step of each episode (``"is_init"``, written by
    TorchRL's :class:`~torchrl.envs.transforms.InitTracker`) one component ``k`` is
    drawn with probability ``weights[k]`` and acts for the whole episode. The recorded
    ``action_log_prob`` is ``log pi_k(a|s)`` of the component that acted, and ``k`` is
    written as ``"policy_id"``: conditionally on the episode's component, that is the
    exact law of each action (the trajectory-level mixture weight ``weights[k]`` is a
    constant per episode and can be re-applied from ``policy_id``).

    ``per="step"``: a component is drawn afresh at every step, so the action's law is
    the mixture ``p(a|s) = sum_k weights[k] pi_k(a|s)``; its log (computed with
    log-sum-exp from every component's :meth:`~BehaviorPolicy.log_prob` at the action)
    is recorded, and ``"policy_id"`` says which component drew the action.

    Every component runs at every step (one forward pass each) and the chosen one's
    action is kept, so the random stream does not depend on which component acts.

    Args:
        policies: the component behaviour policies (ProbabilisticActors are wrapped). In
            per-episode mode they must be per-step policies (not per-episode mixtures).
        weights: the mixture proportions (normalised); uniform by default.

    Keyword Args:
        per: ``"episode"`` or ``"step"``.

    Examples:
        >>> import torch
        >>> from tensordict import TensorDict
        >>> from torchrl.data import Categorical
        >>> spec = Categorical(4)
        >>> greedy = lambda obs: torch.zeros(obs.shape[:-1], dtype=torch.long)
        >>> from tensordict.nn import TensorDictModule
        >>> expert = EpsilonGreedyPolicy(
        ...     TensorDictModule(greedy, ["observation"], ["action"]), spec, epsilon=0.1
        ... )
        >>> policy = MixturePolicy([UniformRandomPolicy(spec), expert], [0.5, 0.5], per="step")
        >>> td = policy(TensorDict({"observation": torch.zeros(6, 2)}, batch_size=[6]))
        >>> td["policy_id"].shape, bool((td["action_prob"] > 0).all())
        (torch.Size([6]), True)
    """

    def __init__(
        self,
        policies: Sequence[TensorDictModuleBase],
        weights: Sequence[float] | torch.Tensor | None = None,
        *,
        per: str = "episode",
    ):
        super().__init__()
        if per not in ("episode", "step"):
            raise ValueError(f"per must be 'episode' or 'step', got {per!r}")
        if len(policies) == 0:
            raise ValueError("MixturePolicy needs at least one policy")
        components = [as_behavior_policy(p) for p in policies]
        for i, comp in enumerate(components):
            if isinstance(comp, MixturePolicy) and comp.per == "episode":
                raise ValueError(
                    f"Component {i} is a per-episode MixturePolicy; nest only per-step mixtures"
                )
        kinds = {comp.discrete for comp in components}
        if len(kinds) != 1:
            raise ValueError("All components must share the same (discrete or continuous) space")
        self.policies = torch.nn.ModuleList(components)
        w = torch.ones(len(components)) if weights is None else torch.as_tensor(weights)
        w = w.to(torch.float64)
        if w.shape != (len(components),) or not bool((w >= 0).all()) or float(w.sum()) <= 0:
            raise ValueError(
                f"weights must be {len(components)} non-negative numbers with a positive sum, "
                f"got {w.tolist()}"
            )
        self.register_buffer("weights", w / w.sum())
        self.per = per
        self.discrete = kinds.pop()
        self._component: torch.Tensor | None = None
        in_keys = [k for comp in components for k in comp.in_keys]
        if per == "episode":
            in_keys.append(IS_INIT)
        self._set_keys(in_keys, [POLICY_ID])

    def reset_episode_state(self) -> None:
        """Forget the current components, so the next call draws new ones for every env."""
        self._component = None

    def _choose(self, tensordict: TensorDictBase) -> torch.Tensor:
        batch_shape = tensordict.batch_size
        draw = torch.multinomial(self.weights, max(math.prod(batch_shape), 1), replacement=True)
        draw = draw[: math.prod(batch_shape)].reshape(batch_shape)
        if self.per == "step":
            return draw
        if IS_INIT not in tensordict.keys():
            raise KeyError(
                "MixturePolicy(per='episode') reads 'is_init' to detect episode starts: append "
                "torchrl.envs.transforms.InitTracker() to the env (collect_dataset does it)"
            )
        is_init = tensordict.get(IS_INIT).reshape(batch_shape)
        if self._component is None or self._component.shape != batch_shape:
            self._component = draw
        else:
            self._component = torch.where(is_init, draw, self._component)
        return self._component

    def sample(self, tensordict: TensorDictBase) -> tuple[torch.Tensor, torch.Tensor]:
        component = self._choose(tensordict)
        draws = [comp.sample(tensordict) for comp in self.policies]
        action = draws[0][0].clone()
        chosen_lp = draws[0][1].clone()
        for k, (a, lp) in enumerate(draws[1:], start=1):
            mask = component == k
            action = torch.where(
                mask.reshape((*mask.shape, *[1] * (a.ndim - mask.ndim))), a, action
            )
            chosen_lp = torch.where(mask, lp, chosen_lp)
        self._last_component = component
        if self.per == "episode":
            return action, chosen_lp
        probe = tensordict.select(*self.in_keys, strict=False).copy()
        probe.set(ACTION, action)
        return action, self._mixture_log_prob(probe)

    def _mixture_log_prob(self, tensordict: TensorDictBase) -> torch.Tensor:
        terms = torch.stack([comp.log_prob(tensordict) for comp in self.policies])
        log_w = self.weights.log().reshape(-1, *[1] * (terms.ndim - 1))
        return torch.logsumexp(terms + log_w, 0)

    def log_prob(self, tensordict: TensorDictBase) -> torch.Tensor:
        """Per-step: the mixture density. Per-episode: the density of the component named by
        ``tensordict["policy_id"]`` (the one that acted)."""
        if self.per == "step":
            return self._mixture_log_prob(tensordict)
        if POLICY_ID not in tensordict.keys():
            raise KeyError("MixturePolicy(per='episode').log_prob needs 'policy_id'")
        component = tensordict.get(POLICY_ID).reshape(tensordict.batch_size)
        terms = torch.stack([comp.log_prob(tensordict) for comp in self.policies])
        return terms.gather(0, component.unsqueeze(0)).squeeze(0)

    def forward(self, tensordict: TensorDictBase) -> TensorDictBase:
        super().forward(tensordict)
        tensordict.set(POLICY_ID, self._last_component.clone())
        return tensordict

    def describe(self) -> str:
        parts = ", ".join(
            f"{w:.4g}*{comp.describe()}"
            for w, comp in zip(self.weights.tolist(), self.policies, strict=True)
        )
        return f"MixturePolicy(per={self.per!r}: {parts})"
