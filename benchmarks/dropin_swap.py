"""pytest plugin: TorchRL's loss tests run on torchrl_offline's losses.

Loaded with ``-p dropin_swap`` (``benchmarks/`` on ``PYTHONPATH``), before any test
module is imported, it assigns our ``IQLLoss``, ``DiscreteIQLLoss``, ``CQLLoss``,
``DiscreteCQLLoss``, ``TD3BCLoss`` and ``BCLoss`` to ``torchrl.objectives`` and to its
``iql``, ``cql``, ``td3_bc`` and ``bc`` submodules, so ``from torchrl.objectives import
IQLLoss`` in TorchRL's tests gets ours. ``benchmarks/dropin_suite.py`` drives it.

``DROPIN_DEFAULTS`` selects the classes:

* ``ours`` (default): our classes as they are (the papers' default values);
* ``torchrl``: our classes with TorchRL's default values of the hyperparameters whose
  defaults differ on purpose (IQL's expectile, temperature and loss function, CQL's
  weight, threshold and loss function, TD3+BC's loss function), for tests that rely
  on TorchRL's defaults;
* ``none``: TorchRL's own classes (the baseline).
"""

from __future__ import annotations

import os

import torchrl.objectives
import torchrl.objectives.bc
import torchrl.objectives.cql
import torchrl.objectives.iql
import torchrl.objectives.td3_bc

import torchrl_offline.objectives as ours

#: TorchRL 0.14.1's defaults where ours are the papers' (constructor keyword -> value).
TORCHRL_DEFAULTS: dict[str, dict[str, object]] = {
    "IQLLoss": {"expectile": 0.5, "temperature": 1.0, "loss_function": "smooth_l1"},
    "DiscreteIQLLoss": {"expectile": 0.5, "temperature": 1.0, "loss_function": "smooth_l1"},
    "CQLLoss": {"loss_function": "smooth_l1", "min_q_weight": 1.0, "lagrange_thresh": 0.0},
    "DiscreteCQLLoss": {},
    "TD3BCLoss": {"loss_function": "smooth_l1"},
    "BCLoss": {},
}

#: Where each class lives in TorchRL besides ``torchrl.objectives``.
SUBMODULES = {
    "IQLLoss": torchrl.objectives.iql,
    "DiscreteIQLLoss": torchrl.objectives.iql,
    "CQLLoss": torchrl.objectives.cql,
    "DiscreteCQLLoss": torchrl.objectives.cql,
    "TD3BCLoss": torchrl.objectives.td3_bc,
    "BCLoss": torchrl.objectives.bc,
}


def with_defaults(cls: type, defaults: dict[str, object]) -> type:
    """A subclass of ``cls`` whose constructor fills in ``defaults`` (same name)."""
    if not defaults:
        return cls

    def __init__(self, *args, **kwargs):
        for key, value in defaults.items():
            kwargs.setdefault(key, value)
        cls.__init__(self, *args, **kwargs)

    namespace = {"__init__": __init__, "__module__": cls.__module__}
    out_keys = getattr(cls, "out_keys", None)
    if isinstance(out_keys, list):
        # a class-level out_keys list becomes a property in tensordict's __new__, per class
        namespace["out_keys"] = list(out_keys)
    return type(cls.__name__, (cls,), namespace)


def swap(mode: str) -> None:
    """Puts our classes (``mode`` ``"ours"`` or ``"torchrl"``) in TorchRL's namespace."""
    if mode == "none":
        return
    if mode not in ("ours", "torchrl"):
        raise ValueError(f"DROPIN_DEFAULTS must be ours, torchrl or none, got {mode!r}")
    for name, module in SUBMODULES.items():
        cls = getattr(ours, name)
        if mode == "torchrl":
            cls = with_defaults(cls, TORCHRL_DEFAULTS[name])
        setattr(torchrl.objectives, name, cls)
        setattr(module, name, cls)


swap(os.environ.get("DROPIN_DEFAULTS", "ours"))
