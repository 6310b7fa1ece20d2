"""The standard networks an algorithm declaration builds from the specs.

:class:`NetworkFactory` knows the observation size, the action spec and the hidden
sizes; each method returns one TorchRL module reading ``"observation"`` (and
``"action"`` for a continuous critic). An algorithm's declaration
(:class:`~torchrl_offline.objectives.declaration.AlgorithmDeclaration`) picks the ones
its loss takes. All MLPs use ReLU, as the papers do; ``layer_norm=True`` adds a
LayerNorm after each hidden ReLU (ReBRAC's critic).

Examples:
    >>> from torchrl.data import Bounded
    >>> from torchrl_offline.objectives.networks import NetworkFactory
    >>> nets = NetworkFactory(3, Bounded(-1.0, 1.0, (1,)), hidden_sizes=(16, 16))
    >>> type(nets.qvalue()).__name__, nets.qvalue().in_keys
    ('ValueOperator', ['observation', 'action'])
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from tensordict.nn import (
    NormalParamExtractor,
    TensorDictModule,
    TensorDictModuleBase,
    TensorDictSequential,
)
from torch import nn
from torchrl.data import Categorical, OneHot, TensorSpec
from torchrl.modules import (
    MLP,
    ProbabilisticActor,
    QValueActor,
    TanhModule,
    TanhNormal,
    ValueOperator,
)

from torchrl_offline.objectives.behavior_vae import BehaviorVAE, make_behavior_vae
from torchrl_offline.objectives.gaussian_actor import make_tanh_mean_gaussian_actor

__all__ = ["STOCHASTIC_ACTORS", "NetworkFactory", "is_discrete"]

#: The continuous stochastic actors :meth:`NetworkFactory.stochastic_actor` builds:
#: the IQL/AWAC papers' Gaussian (tanh mean, state-independent log-std) and TorchRL's
#: ``TanhNormal`` (SAC's actor).
STOCHASTIC_ACTORS = ("gaussian", "tanh_normal")


def is_discrete(spec: TensorSpec) -> bool:
    """Whether ``spec`` is a discrete action spec (``Categorical`` or ``OneHot``).

    Examples:
        >>> from torchrl.data import Categorical
        >>> from torchrl_offline.objectives.networks import is_discrete
        >>> is_discrete(Categorical(4))
        True
    """
    return isinstance(spec, (Categorical, OneHot))


@dataclass(frozen=True)
class NetworkFactory:
    """Builds the standard actors and critics for one observation size and action spec.

    Networks are initialised from torch's global generator, in the order they are built.

    Args:
        observation_dim: the size of the flat observation vector.
        action_spec: the leaf action spec: ``Bounded`` with shape ``(n,)`` for continuous
            actions, ``Categorical`` or ``OneHot`` for discrete ones.
        hidden_sizes: the hidden layer sizes of every MLP.
    """

    observation_dim: int
    action_spec: TensorSpec
    hidden_sizes: tuple[int, ...] = (256, 256)

    @property
    def action_dim(self) -> int:
        """The number of actions (discrete) or the action vector's size (continuous)."""
        if is_discrete(self.action_spec):
            return int(self.action_spec.space.n)
        return int(self.action_spec.shape[-1])

    def mlp(self, in_features: int, out_features: int, *, layer_norm: bool = False) -> MLP:
        """A ReLU MLP with the factory's hidden sizes.

        With ``layer_norm``, each hidden layer is ``Linear -> ReLU -> LayerNorm``, the
        order of ReBRAC's reference networks (Tarasov et al., 2023). TorchRL's ``MLP``
        puts its ``norm_class`` before the activation, so the ReLU takes the norm's
        slot and the LayerNorm the activation's.

        Examples:
            >>> from torchrl.data import Bounded
            >>> from torchrl_offline.objectives.networks import NetworkFactory
            >>> nets = NetworkFactory(3, Bounded(-1.0, 1.0, (1,)), hidden_sizes=(8,))
            >>> [type(m).__name__ for m in nets.mlp(4, 1, layer_norm=True)]
            ['Linear', 'ReLU', 'LayerNorm', 'Linear']
        """
        if not layer_norm:
            return MLP(
                in_features=in_features,
                out_features=out_features,
                num_cells=list(self.hidden_sizes),
                activation_class=nn.ReLU,
            )
        return MLP(
            in_features=in_features,
            out_features=out_features,
            num_cells=list(self.hidden_sizes),
            norm_class=nn.ReLU,
            activation_class=nn.LayerNorm,
            activation_kwargs=[{"normalized_shape": h} for h in self.hidden_sizes],
        )

    # ------------------------------------------------------------------ actors
    def stochastic_actor(self, kind: str = "gaussian") -> ProbabilisticActor:
        """A continuous stochastic actor: ``"gaussian"`` (the IQL/AWAC papers') or
        ``"tanh_normal"`` (TorchRL's ``TanhNormal``)."""
        if kind == "gaussian":
            return make_tanh_mean_gaussian_actor(
                self.observation_dim, self.action_spec, num_cells=self.hidden_sizes
            )
        if kind == "tanh_normal":
            return self.tanh_normal_actor()
        raise ValueError(f"unknown actor {kind!r}; choose from {', '.join(STOCHASTIC_ACTORS)}")

    def tanh_normal_actor(self) -> ProbabilisticActor:
        """SAC's actor: a ``TanhNormal`` over the action box with a state-dependent scale."""
        spec = self.action_spec
        body = TensorDictModule(
            nn.Sequential(
                self.mlp(self.observation_dim, 2 * self.action_dim), NormalParamExtractor()
            ),
            in_keys=["observation"],
            out_keys=["loc", "scale"],
        )
        return ProbabilisticActor(
            body,
            in_keys=["loc", "scale"],
            spec=spec,
            distribution_class=TanhNormal,
            distribution_kwargs={"low": spec.space.low, "high": spec.space.high},
            return_log_prob=False,
        )

    def deterministic_actor(self, *, layer_norm: bool = False) -> TensorDictSequential:
        """A deterministic actor squashed into the action box (TD3's)."""
        return TensorDictSequential(
            TensorDictModule(
                self.mlp(self.observation_dim, self.action_dim, layer_norm=layer_norm),
                in_keys=["observation"],
                out_keys=["param"],
            ),
            TanhModule(in_keys=["param"], out_keys=["action"], spec=self.action_spec),
        )

    def categorical_actor(self) -> ProbabilisticActor:
        """A categorical policy over the discrete actions (one-hot for a ``OneHot`` spec)."""
        dist = torch.distributions.Categorical
        if isinstance(self.action_spec, OneHot):
            from torchrl.modules.distributions import OneHotCategorical

            dist = OneHotCategorical
        return ProbabilisticActor(
            TensorDictModule(
                self.mlp(self.observation_dim, self.action_dim),
                in_keys=["observation"],
                out_keys=["logits"],
            ),
            in_keys=["logits"],
            spec=self.action_spec,
            distribution_class=dist,
            return_log_prob=False,
        )

    def actor(self, kind: str = "gaussian") -> TensorDictModuleBase:
        """The policy network for the action spec: :meth:`categorical_actor` for
        discrete actions, else :meth:`stochastic_actor` of ``kind``."""
        if is_discrete(self.action_spec):
            return self.categorical_actor()
        return self.stochastic_actor(kind)

    # ----------------------------------------------------------------- critics
    def qvalue(self, *, layer_norm: bool = False) -> ValueOperator:
        """``Q(s, a)`` (continuous actions) or ``Q(s, .)`` over every action (discrete)."""
        if is_discrete(self.action_spec):
            return ValueOperator(
                self.mlp(self.observation_dim, self.action_dim, layer_norm=layer_norm),
                in_keys=["observation"],
            )
        return ValueOperator(
            self.mlp(self.observation_dim + self.action_dim, 1, layer_norm=layer_norm),
            in_keys=["observation", "action"],
        )

    def qvalue_actor(self) -> QValueActor:
        """A DQN-style ``QValueActor``: ``Q(s, .)`` that acts greedily."""
        return QValueActor(
            self.mlp(self.observation_dim, self.action_dim),
            in_keys=["observation"],
            spec=self.action_spec,
        )

    def value(self) -> ValueOperator:
        """``V(s)``."""
        return ValueOperator(self.mlp(self.observation_dim, 1), in_keys=["observation"])

    # ------------------------------------------------------------ behaviour models
    def behavior_vae(
        self, hidden_sizes: tuple[int, ...] | None = None, *, decoder_squash: str = "tanh"
    ) -> BehaviorVAE:
        """The conditional VAE of the behaviour policy (BCQ's and BEAR's), with MLPs of
        ``hidden_sizes`` (the factory's when ``None``) and the decoder's
        ``decoder_squash`` (``"tanh"`` or ``"clip"``)."""
        return make_behavior_vae(
            self.observation_dim,
            self.action_spec,
            num_cells=tuple(self.hidden_sizes if hidden_sizes is None else hidden_sizes),
            decoder_squash=decoder_squash,
        )
