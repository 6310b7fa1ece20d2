"""One declaration per algorithm: everything around its loss that a run needs.

An :class:`AlgorithmDeclaration` sits next to its loss class and says which networks
the loss takes (built from the specs by a
:class:`~torchrl_offline.objectives.networks.NetworkFactory`), the network, optimizer
and training-loop settings with their defaults, which loss entries are summed for the
backward pass, which parameters each learning rate drives, the named presets and the
discrete variant. The loss's own keyword arguments are read from its constructor, so no
default is written twice.

:func:`~torchrl_offline.trainers.algorithms.build_algorithm`, the command line, the
Hydra configs, checkpoints and the benchmarks read declarations from the registry
(kind ``"algorithm"``); another package declares one through the entry-point group
``torchrl_offline.components`` (``"algorithm:<name>" = "pkg.module:DECLARATION"``).

Examples:
    >>> from torchrl_offline import registry
    >>> iql = registry.get("algorithm", "iql")
    >>> iql.loss_class.__name__, iql.loss_terms
    ('IQLLoss', ('loss_actor', 'loss_qvalue', 'loss_value'))
    >>> iql.hyperparameters()["expectile"], iql.hyperparameters()["actor_lr"]
    (0.7, 0.0003)
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field, fields
from typing import Any, Literal

from tensordict import TensorDictBase
from tensordict.nn import TensorDictModuleBase
from tensordict.utils import NestedKey
from torch import nn
from torchrl.objectives import LossModule

from torchrl_offline.data.episodes import TD_LAMBDA_RETURN, check_derived_keys
from torchrl_offline.objectives.networks import NetworkFactory

__all__ = [
    "COMMON_DEFAULTS",
    "SMALL_HIDDEN_SIZES",
    "SMALL_PRESET",
    "AlgorithmDeclaration",
    "ModelRolloutSettings",
    "ParamGroup",
    "TDLambdaSettings",
    "collect_parameters",
    "constructor_defaults",
    "constructor_parameters",
]

#: Settings every algorithm has: the hidden sizes of its networks, the discount given to
#: the loss's value estimator and the soft target-update rate.
COMMON_DEFAULTS: Mapping[str, Any] = {"hidden_sizes": (256, 256), "gamma": 0.99, "tau": 0.005}
#: The preset every algorithm has unless it declares its own of that name: every network
#: (each ``*hidden_sizes`` setting) at :data:`SMALL_HIDDEN_SIZES`, on top of the default
#: preset, for short runs on a CPU.
SMALL_PRESET = "small"
#: The hidden sizes of the :data:`SMALL_PRESET` networks.
SMALL_HIDDEN_SIZES = (64, 64)

# Constructor arguments the builder sets itself (or that are deprecated): never settings.
_SET_BY_BUILDER = frozenset({"gamma", "priority_key", "action_spec", "bounds", "action_space"})

Networks = Mapping[str, TensorDictModuleBase]


def collect_parameters(source: Any) -> list[nn.Parameter]:
    """The trainable parameters held by ``source``: a tensordict of parameters (a loss's
    ``<name>_network_params``), a module, one parameter, or an iterable of these.

    Examples:
        >>> import torch
        >>> from torchrl_offline.objectives.declaration import collect_parameters
        >>> len(collect_parameters(torch.nn.Linear(2, 3)))
        2
    """
    if source is None:
        return []
    if isinstance(source, nn.Parameter):
        return [source]
    if isinstance(source, TensorDictBase):
        return [p for p in source.values(True, True) if isinstance(p, nn.Parameter)]
    if isinstance(source, nn.Module):
        return [p for p in source.parameters() if p.requires_grad]
    out: list[nn.Parameter] = []
    for item in source:
        out.extend(collect_parameters(item))
    return out


@dataclass(frozen=True)
class ParamGroup:
    """One optimizer parameter group: a name, the setting holding its learning rate and
    the loss's parameters it updates.

    Args:
        name: the group's name (``optimizer.param_groups[i]["name"]``).
        lr: the hyperparameter holding its learning rate (e.g. ``"actor_lr"``).
        params: the loss attribute holding the parameters (e.g.
            ``"actor_network_params"``), or a function of the loss returning them. A
            group with no parameters (an optional term switched off) is left out.
    """

    name: str
    lr: str
    params: str | Callable[[LossModule], Iterable[nn.Parameter]]

    def parameters(self, loss: LossModule) -> list[nn.Parameter]:
        """The parameters of ``loss`` this group updates."""
        if callable(self.params):
            return collect_parameters(list(self.params(loss)))
        return collect_parameters(getattr(loss, self.params, None))


@dataclass(frozen=True)
class ModelRolloutSettings:
    """The training-loop need "model rollouts" of a model-based algorithm, as plain data.

    An algorithm that declares it (MOPO, COMBO) is trained on batches mixing dataset
    transitions with transitions of the current policy in a learned dynamics model: the
    trainers (:mod:`~torchrl_offline.trainers.model_rollouts`) fit the model before the
    first update, then every ``rollout_interval`` updates roll the policy out
    ``rollout_length`` steps from ``rollout_batch_size`` dataset states into a FIFO model
    buffer of ``rollout_batch_size * rollout_length * rollout_retain_epochs``
    transitions; each batch is ``real_ratio`` dataset transitions, the rest model ones.
    The model's reward is ``r - reward_penalty * u(s, a)`` with ``u`` the model's
    ``rollout_penalty`` uncertainty (``"aleatoric"``: MOPO's max over members of the
    predicted standard deviation's norm; ``"disagreement"``). The ``model_*`` fields are
    the dynamics ensemble's fit settings
    (:func:`~torchrl_offline.models.fit.fit_dynamics`; ``model_termination`` names a known
    termination function, ``None`` learns one). Every field is one of the algorithm's
    hyperparameters (:meth:`AlgorithmDeclaration.hyperparameters`), so presets, the
    command line's ``--set`` and the Hydra configs reach them. The defaults are MOPO's
    (Yu et al., 2020, and its MBPO-based code: 7 members, 5 elites, 4x200 networks, a
    rollout every 1000 updates from 50,000 states, 5 retained rollouts, 5% real data).

    Examples:
        >>> from torchrl_offline.objectives.declaration import ModelRolloutSettings
        >>> settings = ModelRolloutSettings(real_ratio=0.5, rollout_length=1)
        >>> hp = settings.hyperparameters()
        >>> hp["real_ratio"], hp["rollout_length"], hp["model_hidden_sizes"]
        (0.5, 1, (200, 200, 200, 200))
    """

    rollout_length: int = 5
    rollout_interval: int = 1000
    rollout_batch_size: int = 50_000
    rollout_retain_epochs: int = 5
    real_ratio: float = 0.05
    reward_penalty: float = 0.0
    rollout_penalty: str = "aleatoric"
    model_num_members: int = 7
    model_num_elites: int = 5
    model_hidden_sizes: tuple[int, ...] = (200, 200, 200, 200)
    model_batch_size: int = 256
    model_lr: float = 1e-3
    model_patience: int = 5
    model_max_updates: int | None = None
    model_termination: str | None = None

    def hyperparameters(self) -> dict[str, Any]:
        """The settings by name, as the algorithm's hyperparameters."""
        return {f.name: getattr(self, f.name) for f in fields(self)}


@dataclass(frozen=True)
class TDLambdaSettings:
    r"""The training-loop need "TD(lambda) returns", as plain data.

    An algorithm that declares it can fit its value function to TD(:math:`\lambda`)
    returns (:func:`~torchrl_offline.data.episodes.td_lambda_returns`), which depend on
    the value function itself: when its ``value_target`` hyperparameter (a loss
    argument) is ``"td_lambda"``, its batches carry the ``"td_lambda_return"`` column,
    which the trainers (:mod:`~torchrl_offline.trainers.td_lambda`) recompute over the
    whole dataset with the loss's current value network every ``td_lambda_interval``
    updates (the first before update 0), with :math:`\lambda` = ``td_lambda``. Every
    field is one of the algorithm's hyperparameters, so presets, the command line's
    ``--set`` and the Hydra configs reach them. The defaults: AWR's :math:`\lambda =
    0.95` (Peng et al., 2019); its code recomputes the returns every iteration, before
    200 value steps and 1,000 policy steps; an update here steps both, and the refresh
    comes every 1,000 updates by default (on a 1M-transition dataset a refresh costs
    about 200 updates of AWR's networks on one CPU thread: ``docs/objectives.md``).

    Examples:
        >>> from torchrl_offline.objectives.declaration import TDLambdaSettings
        >>> settings = TDLambdaSettings()
        >>> settings.hyperparameters()
        {'td_lambda': 0.95, 'td_lambda_interval': 1000}
        >>> settings.uses({"value_target": "td_lambda"}), settings.uses({})
        (True, False)
    """

    td_lambda: float = 0.95
    td_lambda_interval: int = 1000

    def hyperparameters(self) -> dict[str, Any]:
        """The settings by name, as the algorithm's hyperparameters."""
        return {f.name: getattr(self, f.name) for f in fields(self)}

    @staticmethod
    def uses(hyperparameters: Mapping[str, Any]) -> bool:
        """Whether a run with these hyperparameters fits its value to TD(lambda) returns."""
        return hyperparameters.get("value_target") == "td_lambda"

    @staticmethod
    def check(hyperparameters: Mapping[str, Any]) -> None:
        """Raises ``ValueError`` naming a setting out of range."""
        lmbda, interval = hyperparameters["td_lambda"], hyperparameters["td_lambda_interval"]
        if not 0.0 <= float(lmbda) <= 1.0:
            raise ValueError(f"td_lambda must be in [0, 1], got {lmbda!r}")
        if isinstance(interval, bool) or not isinstance(interval, int) or interval < 1:
            raise ValueError(f"td_lambda_interval must be an int >= 1, got {interval!r}")


@dataclass(frozen=True)
class AlgorithmDeclaration:
    """Everything around a loss class that a training run needs, declared once.

    Args:
        name: the algorithm's name (``--algo`` on the command line).
        loss_class: the :class:`~torchrl.objectives.LossModule` subclass.
        networks: ``networks(factory, hyperparameters)`` returns the loss's network
            arguments by constructor name (``{"actor_network": ..., ...}``), built in
            that order from the
            :class:`~torchrl_offline.objectives.networks.NetworkFactory`.
        optimizer: the parameter groups of the one Adam optimizer, each at its own
            learning rate.
        loss_terms: the loss entries summed for the backward pass (those the loss does
            not write, e.g. an optional term switched off, are skipped).
        action: ``"continuous"`` (a bounded 1-d action spec) or ``"discrete"``
            (``Categorical`` or ``OneHot``).
        defaults: network, optimizer and training-loop settings with their defaults
            (learning rates, ``hidden_sizes`` to replace :data:`COMMON_DEFAULTS`',
            ``policy_update_delay``, ``actor_lr_schedule``); the loss's own keyword
            arguments are added from its constructor.
        choices: settings that take one of a few values, e.g. ``{"actor": ("gaussian",
            "tanh_normal")}``.
        presets: named published settings (a name to overrides). A ``"small"`` preset
            (:data:`SMALL_PRESET`: every ``*hidden_sizes`` setting at 2x64) is added
            unless one is declared.
        default_preset: the preset applied when none is named: the recommended setting
            where it differs from the loss constructor's (the paper's) defaults. A named
            preset that sets network sizes only (``*hidden_sizes``, as ``"small"``)
            applies on top of it.
        discrete_variant: the algorithm to build instead for a discrete action spec.
        action_spec_argument: the constructor argument that receives the action spec
            (``"action_spec"``, ``"action_space"``), if any.
        policy: the network (a key of ``networks``) to act with, or, for a policy that is
            not one network (BCQ's best of sampled and perturbed actions), a function
            ``policy(loss, networks)`` returning the TorchRL module that acts (it reads
            the observation and writes ``"action"``); see :meth:`build_policy`.
        target_update: whether the loss has target networks (soft-updated at ``tau``
            after each step, with a value estimator at ``gamma``).
        derived_keys: batch entries the loss reads that the data does not store but its
            episode order gives (``"mc_return"``, the Monte Carlo return at ``gamma``;
            ``("next", "action")``): the trainers add them
            (:func:`~torchrl_offline.data.episodes.with_derived_keys`), to online
            episodes too when fine-tuning.
        model_rollouts: the need "model rollouts" (:class:`ModelRolloutSettings`, its
            fields' defaults added to ``defaults``): the trainers fit a dynamics model
            and mix the policy's rollouts in it into every batch. ``None`` (default):
            dataset batches only.
        td_lambda_returns: the need "TD(lambda) returns" (:class:`TDLambdaSettings`, its
            fields' defaults added to ``defaults``), on when the ``value_target``
            hyperparameter is ``"td_lambda"``: the batches then carry
            ``"td_lambda_return"`` instead of ``derived_keys``, recomputed by the
            trainers with the current value network. ``None`` (default): no such need.
    """

    name: str
    loss_class: type[LossModule]
    networks: Callable[[NetworkFactory, Mapping[str, Any]], Networks]
    optimizer: tuple[ParamGroup, ...]
    loss_terms: tuple[str, ...]
    action: Literal["continuous", "discrete"] = "continuous"
    defaults: Mapping[str, Any] = field(default_factory=dict)
    choices: Mapping[str, tuple[Any, ...]] = field(default_factory=dict)
    presets: Mapping[str, Mapping[str, Any]] = field(default_factory=dict)
    discrete_variant: str | None = None
    action_spec_argument: str | None = None
    policy: str | Callable[[LossModule, Networks], TensorDictModuleBase] = "actor_network"
    target_update: bool = True
    default_preset: str | None = None
    derived_keys: tuple[NestedKey, ...] = ()
    model_rollouts: ModelRolloutSettings | None = None
    td_lambda_returns: TDLambdaSettings | None = None

    def __post_init__(self) -> None:
        for need in (self.model_rollouts, self.td_lambda_returns):
            if need is not None:
                object.__setattr__(self, "defaults", {**need.hyperparameters(), **self.defaults})
        if self.action not in ("continuous", "discrete"):
            raise ValueError(
                f"algorithm {self.name!r}: action must be 'continuous' or 'discrete', "
                f"got {self.action!r}"
            )
        if not (isinstance(self.loss_class, type) and issubclass(self.loss_class, LossModule)):
            raise TypeError(
                f"algorithm {self.name!r}: loss_class must be a LossModule subclass, "
                f"got {self.loss_class!r}"
            )
        if not self.loss_terms:
            raise ValueError(f"algorithm {self.name!r}: loss_terms is empty")
        if self.default_preset is not None and self.default_preset not in self.presets:
            raise ValueError(
                f"algorithm {self.name!r}: default_preset {self.default_preset!r} is not "
                "one of its presets"
            )
        try:
            check_derived_keys(self.derived_keys)
        except ValueError as err:
            raise ValueError(f"algorithm {self.name!r}: {err}") from None
        if SMALL_PRESET not in self.presets:
            sizes = {
                key: SMALL_HIDDEN_SIZES
                for key in {**COMMON_DEFAULTS, **self.defaults}
                if key.endswith("hidden_sizes")
            }
            object.__setattr__(self, "presets", {**self.presets, SMALL_PRESET: sizes})
        lrs = {g.lr for g in self.optimizer}
        missing = sorted(lrs - set(self.defaults))
        if missing:
            raise ValueError(
                f"algorithm {self.name!r}: learning rate {missing[0]!r} has no default"
            )

    def uses_td_lambda(self, hyperparameters: Mapping[str, Any]) -> bool:
        """Whether a run of this algorithm with ``hyperparameters`` needs its TD(lambda)
        returns recomputed during training (:attr:`td_lambda_returns`)."""
        return self.td_lambda_returns is not None and self.td_lambda_returns.uses(hyperparameters)

    def batch_keys(self, hyperparameters: Mapping[str, Any]) -> tuple[NestedKey, ...]:
        """The derived entries the batches of a run with ``hyperparameters`` carry:
        ``"td_lambda_return"`` when :meth:`uses_td_lambda`, else :attr:`derived_keys`."""
        return (TD_LAMBDA_RETURN,) if self.uses_td_lambda(hyperparameters) else self.derived_keys

    def build_policy(self, loss: LossModule, networks: Networks) -> TensorDictModuleBase:
        """The module to act with: ``networks[policy]``, or ``policy(loss, networks)``
        when :attr:`policy` is a function."""
        if callable(self.policy):
            return self.policy(loss, networks)
        return networks[self.policy]

    def loss_arguments(self) -> dict[str, Any]:
        """The loss constructor's settings and their defaults: its keyword arguments
        with defaults, following ``**kwargs`` up the class hierarchy, less the networks
        (``*_network``) and the arguments the builder sets (specs, ``gamma``)."""
        return {
            k: v
            for k, v in constructor_defaults(self.loss_class).items()
            if k not in _SET_BY_BUILDER
        }

    def hyperparameters(self, preset: str | None = None) -> dict[str, Any]:
        """Every setting and its default: :data:`COMMON_DEFAULTS`, the declared
        ``defaults``, the loss's own arguments (:meth:`loss_arguments`), then the values
        of ``default_preset`` and of ``preset``: ``preset`` replaces the default preset,
        unless it sets network sizes only (``"small"``), then it goes on top of it.

        Raises:
            KeyError: an unknown preset (the message lists the valid ones).

        Examples:
            >>> from torchrl_offline import registry
            >>> cql = registry.get("algorithm", "cql")  # its default preset: "d3rlpy"
            >>> small = cql.hyperparameters("small")
            >>> small["hidden_sizes"], small["min_q_weight"] == cql.hyperparameters()["min_q_weight"]
            ((64, 64), True)
        """
        out = {**COMMON_DEFAULTS, **self.defaults, **self.loss_arguments()}
        for name in self.preset_chain(preset):
            out.update(self.presets[name])
        return out

    def preset_chain(self, preset: str | None = None) -> tuple[str, ...]:
        """The presets :meth:`hyperparameters` applies for ``preset``, in order.

        Raises:
            KeyError: an unknown preset (the message lists the valid ones).
        """
        if preset is None:
            return () if self.default_preset is None else (self.default_preset,)
        if preset not in self.presets:
            raise KeyError(
                f"Unknown preset {preset!r} for {self.name}; valid presets: "
                f"{', '.join(sorted(self.presets)) or '(none)'}"
            )
        sizes_only = all(key.endswith("hidden_sizes") for key in self.presets[preset])
        if sizes_only and self.default_preset not in (None, preset):
            return (self.default_preset, preset)
        return (preset,)


def constructor_parameters(cls: type) -> list[inspect.Parameter]:
    """The parameters of ``cls``'s constructor in order, following ``**kwargs`` up the
    class hierarchy (``DiscreteIQLLoss(..., **kwargs)`` forwards to ``IQLLoss``), without
    ``self`` and the ``*args``/``**kwargs`` catch-alls.

    Examples:
        >>> from torchrl_offline.objectives import DiscreteIQLLoss
        >>> from torchrl_offline.objectives.declaration import constructor_parameters
        >>> [p.name for p in constructor_parameters(DiscreteIQLLoss)][:3]
        ['actor_network', 'qvalue_network', 'value_network']
    """
    out: dict[str, inspect.Parameter] = {}
    for klass in cls.__mro__:
        if "__init__" not in vars(klass) or klass.__init__ is object.__init__:
            continue
        forwards = False
        for name, param in inspect.signature(klass.__init__).parameters.items():
            if param.kind is param.VAR_KEYWORD:
                forwards = True
            elif name != "self" and param.kind is not param.VAR_POSITIONAL:
                out.setdefault(name, param)
        if not forwards:
            break
    return list(out.values())


def constructor_defaults(cls: type) -> dict[str, Any]:
    """The keyword arguments with defaults of ``cls``'s constructor
    (:func:`constructor_parameters`), without the networks (``*_network``).

    Examples:
        >>> from torchrl_offline.objectives import TD3BCLoss
        >>> from torchrl_offline.objectives.declaration import constructor_defaults
        >>> constructor_defaults(TD3BCLoss)["alpha"]
        2.5
    """
    return {
        p.name: p.default
        for p in constructor_parameters(cls)
        if not p.name.endswith("_network") and p.default is not inspect.Parameter.empty
    }
