"""Components looked up by kind and name: algorithms, losses, datasets, OPE estimators,
behaviour policies, hooks.

Built-in components are registered lazily (as ``"module:attribute"`` strings, imported on
first use), so ``registry.names("loss")`` costs nothing. Other packages add components
through the entry-point group ``torchrl_offline.components``; each entry point is named
``"<kind>:<name>"`` and points at the object::

    [project.entry-points."torchrl_offline.components"]
    "algorithm:my_algo" = "my_package.my_algo:MY_ALGO_ALGORITHM"

An ``"algorithm"`` is an
:class:`~torchrl_offline.objectives.declaration.AlgorithmDeclaration`: it can be
trained by name (``torchrl-offline train --algo my_algo``), and its loss class is the
``"loss"`` of the same name.

Examples:
    >>> from torchrl_offline import registry
    >>> "iql" in registry.names("loss")
    True
    >>> registry.get("loss", "iql").__name__
    'IQLLoss'
"""

from __future__ import annotations

import importlib
import threading
from collections.abc import Callable
from importlib.metadata import entry_points
from typing import Any, TypeVar

__all__ = [
    "BUILTIN_ALGORITHMS",
    "ENTRY_POINT_GROUP",
    "KINDS",
    "RegistryError",
    "get",
    "names",
    "register",
]

#: The entry-point group other packages use to add components.
ENTRY_POINT_GROUP = "torchrl_offline.components"
#: The kinds of component the registry knows.
KINDS = ("algorithm", "loss", "dataset", "ope", "behavior_policy", "hook")

T = TypeVar("T")

_entries: dict[str, dict[str, Any]] = {kind: {} for kind in KINDS}
_entry_points_loaded = False
_lock = threading.Lock()


class RegistryError(KeyError, ValueError):
    """An unknown kind or name, or a conflicting registration; the message lists valid names."""

    def __str__(self) -> str:  # KeyError quotes its message; show it plainly
        return str(self.args[0]) if self.args else ""


def _check_kind(kind: str) -> None:
    if kind not in _entries:
        raise RegistryError(f"Unknown component kind {kind!r}; valid kinds: {', '.join(KINDS)}")


def register(kind: str, name: str, obj: Any = None, *, replace: bool = False) -> Any:
    """Register ``obj`` under ``(kind, name)``; usable as a decorator when ``obj`` is omitted.

    Args:
        kind: one of :data:`KINDS`.
        name: the lookup name (lower case, ``snake_case`` by convention).
        obj: the component, or an import string ``"module:attribute"`` resolved on first use.
        replace: allow replacing an existing registration.

    Returns:
        ``obj`` (or the decorator).

    Raises:
        RegistryError: unknown kind, or ``name`` already registered and not ``replace``.

    Examples:
        >>> from torchrl_offline import registry
        >>> @registry.register("hook", "noop_example", replace=True)
        ... def noop(step):
        ...     return None
        >>> registry.get("hook", "noop_example") is noop
        True
    """
    _check_kind(kind)
    if obj is None:

        def decorator(target: T) -> T:
            register(kind, name, target, replace=replace)
            return target

        return decorator
    with _lock:
        if name in _entries[kind] and not replace and _entries[kind][name] is not obj:
            raise RegistryError(
                f"A {kind} named {name!r} is already registered; pass replace=True to override"
            )
        _entries[kind][name] = obj
    return obj


def _load_entry_points() -> None:
    global _entry_points_loaded
    if _entry_points_loaded:
        return
    _entry_points_loaded = True
    for ep in entry_points(group=ENTRY_POINT_GROUP):
        kind, sep, name = ep.name.partition(":")
        if not sep or kind not in _entries:
            raise RegistryError(
                f"Entry point {ep.name!r} in group {ENTRY_POINT_GROUP!r} must be named "
                f"'<kind>:<name>' with kind in {', '.join(KINDS)}"
            )
        _entries[kind].setdefault(name, ep.value)


def names(kind: str) -> list[str]:
    """Sorted names registered under ``kind`` (built-ins and entry points); the losses
    include those of the registered algorithms."""
    _check_kind(kind)
    _load_entry_points()
    if kind == "loss":
        return sorted(set(_entries["loss"]) | set(_entries["algorithm"]))
    return sorted(_entries[kind])


def get(kind: str, name: str) -> Any:
    """The component registered under ``(kind, name)``, imported on first use.

    Raises:
        RegistryError: unknown kind or name; the message lists the valid names.
    """
    _check_kind(kind)
    _load_entry_points()
    if kind == "loss" and name not in _entries["loss"] and name in _entries["algorithm"]:
        return get("algorithm", name).loss_class
    try:
        obj = _entries[kind][name]
    except KeyError:
        raise RegistryError(
            f"Unknown {kind} {name!r}; valid names: {', '.join(names(kind)) or '(none)'}"
        ) from None
    if isinstance(obj, str):
        module, _, attr = obj.partition(":")
        try:
            target: Callable[..., Any] = getattr(importlib.import_module(module), attr)
        except (ImportError, AttributeError) as err:
            raise RegistryError(
                f"The {kind} {name!r} points at {obj!r}, which cannot be imported: {err}"
            ) from err
        with _lock:
            _entries[kind][name] = target
        obj = target
    return obj


# Built-in components (lazy).
_BUILTINS = {
    # each algorithm's loss is the "loss" of the same name
    "algorithm": {
        "awac": "torchrl_offline.objectives.awac:AWAC_ALGORITHM",
        "awr": "torchrl_offline.objectives.awr:AWR_ALGORITHM",
        "bandit_ips": "torchrl_offline.objectives.bandit_ips:BANDIT_IPS_ALGORITHM",
        "bc": "torchrl_offline.objectives.bc:BC_ALGORITHM",
        "bcq": "torchrl_offline.objectives.bcq:BCQ_ALGORITHM",
        "bear": "torchrl_offline.objectives.bear:BEAR_ALGORITHM",
        "cal_ql": "torchrl_offline.objectives.cal_ql:CAL_QL_ALGORITHM",
        "combo": "torchrl_offline.objectives.combo:COMBO_ALGORITHM",
        "cql": "torchrl_offline.objectives.cql:CQL_ALGORITHM",
        "discrete_awac": "torchrl_offline.objectives.awac:DISCRETE_AWAC_ALGORITHM",
        "discrete_awr": "torchrl_offline.objectives.awr:DISCRETE_AWR_ALGORITHM",
        "discrete_bc": "torchrl_offline.objectives.bc:DISCRETE_BC_ALGORITHM",
        "discrete_bcq": "torchrl_offline.objectives.discrete_bcq:DISCRETE_BCQ_ALGORITHM",
        "discrete_cql": "torchrl_offline.objectives.discrete_cql:DISCRETE_CQL_ALGORITHM",
        "discrete_iql": "torchrl_offline.objectives.iql:DISCRETE_IQL_ALGORITHM",
        "edac": "torchrl_offline.objectives.edac:EDAC_ALGORITHM",
        "iql": "torchrl_offline.objectives.iql:IQL_ALGORITHM",
        "mopo": "torchrl_offline.objectives.mopo:MOPO_ALGORITHM",
        "rebrac": "torchrl_offline.objectives.rebrac:REBRAC_ALGORITHM",
        "sac_n": "torchrl_offline.objectives.edac:SAC_N_ALGORITHM",
        "td3_bc": "torchrl_offline.objectives.td3_bc:TD3_BC_ALGORITHM",
    },
    "dataset": {
        "minari": "torchrl_offline.data.minari:load_minari",
        "logged": "torchrl_offline.data.logged:from_logged",
        "collect": "torchrl_offline.data.collect:collect_dataset",
    },
    "ope": {
        "is": "torchrl_offline.ope.importance:ImportanceSampling",
        "wis": "torchrl_offline.ope.importance:WeightedImportanceSampling",
        "pdis": "torchrl_offline.ope.importance:PerDecisionImportanceSampling",
        "wpdis": "torchrl_offline.ope.importance:WeightedPerDecisionImportanceSampling",
        "dr": "torchrl_offline.ope.doubly_robust:DoublyRobust",
        "wdr": "torchrl_offline.ope.doubly_robust:WeightedDoublyRobust",
        "fqe": "torchrl_offline.ope.fqe:FQE",
        "dm": "torchrl_offline.ope.bandit_estimators:DirectMethod",
        "dr_one_step": "torchrl_offline.ope.bandit_estimators:OneStepDoublyRobust",
        "sndr": "torchrl_offline.ope.bandit_estimators:SelfNormalizedDoublyRobust",
        "switch_dr": "torchrl_offline.ope.bandit_estimators:SwitchDoublyRobust",
        "dr_os": "torchrl_offline.ope.bandit_estimators:DoublyRobustShrinkage",
        "pbm_ips": "torchrl_offline.ope.bandit_estimators:PositionBasedIPS",
    },
    "behavior_policy": {
        "random": "torchrl_offline.data.behavior:UniformRandomPolicy",
        "gaussian_noise": "torchrl_offline.data.behavior:GaussianNoisePolicy",
        "epsilon_greedy": "torchrl_offline.data.behavior:EpsilonGreedyPolicy",
        "probabilistic": "torchrl_offline.data.behavior:ProbabilisticActorPolicy",
        "mixture": "torchrl_offline.data.behavior:MixturePolicy",
    },
    "hook": {
        "evaluation": "torchrl_offline.trainers.hooks:EvaluationHook",
        "checkpoint": "torchrl_offline.trainers.hooks:CheckpointHook",
        "log_losses": "torchrl_offline.trainers.hooks:LogLosses",
        "progress_bar": "torchrl_offline.trainers.hooks:ProgressBar",
        "ope": "torchrl_offline.ope.hook:OPEHook",
    },
}
#: The algorithms this package declares (other packages add theirs by entry point).
BUILTIN_ALGORITHMS = tuple(_BUILTINS["algorithm"])

for _kind, _table in _BUILTINS.items():
    for _name, _target in _table.items():
        register(_kind, _name, _target)
