"""Helpers shared by the offline RL losses, importable from one place.

Each idea lives in its own module; this one gathers their public names:

* checks and errors (:mod:`._checks`): :class:`OfflineLossError`, :func:`check_batch`,
  :func:`check_finite_losses`, :func:`count_update` (the per-update counter and
  check), :func:`check_output_dim`;
* networks with explicit parameters (:mod:`._functional`): :func:`ensemble_forward`,
  :func:`ensemble_apply` (one batched call of a critic ensemble), :func:`module_apply`,
  :func:`actor_distribution`;
* the tanh-squashed Gaussian's density (:mod:`._tanh_normal`):
  :func:`tanh_normal_log_prob`;
* action ranges read from TorchRL specs (:mod:`._actions`): :func:`find_action_spec`,
  :func:`action_bounds`, :func:`uniform_actions`, :func:`to_unit_interval`,
  :func:`from_unit_interval`; the critic's value of a logged discrete action
  :func:`logged_action_value`;
* the critics' target (:mod:`._targets`): :func:`make_loss_value_estimator`,
  :func:`bootstrap_target`, :func:`td_target`, :func:`next_key`.
"""

from __future__ import annotations

from torchrl_offline.objectives._actions import (
    action_bounds,
    find_action_spec,
    from_unit_interval,
    logged_action_value,
    to_unit_interval,
    uniform_actions,
)
from torchrl_offline.objectives._checks import (
    OfflineLossError,
    check_batch,
    check_finite_losses,
    check_output_dim,
    count_update,
)
from torchrl_offline.objectives._functional import (
    actor_distribution,
    ensemble_apply,
    ensemble_forward,
    module_apply,
)
from torchrl_offline.objectives._tanh_normal import tanh_normal_log_prob
from torchrl_offline.objectives._targets import (
    bootstrap_target,
    make_loss_value_estimator,
    next_key,
    td_target,
)

__all__ = [
    "OfflineLossError",
    "action_bounds",
    "actor_distribution",
    "bootstrap_target",
    "check_batch",
    "check_finite_losses",
    "check_output_dim",
    "count_update",
    "ensemble_apply",
    "ensemble_forward",
    "find_action_spec",
    "from_unit_interval",
    "logged_action_value",
    "make_loss_value_estimator",
    "module_apply",
    "next_key",
    "tanh_normal_log_prob",
    "td_target",
    "to_unit_interval",
    "uniform_actions",
]
