"""Off-policy evaluation: estimate a policy's value from logged data, with honest uncertainty.

Estimators take the evaluation policy (a TorchRL actor with ``get_dist``, or a
deterministic actor with a stated kernel or epsilon) and keyword hyperparameters;
``estimator.estimate(data)`` takes a replay buffer of the data layer or a TensorDict of
transitions in dataset order and returns an :class:`OPEResult` (value, confidence
interval, diagnostics, warnings).
"""

from torchrl_offline.ope.behavior import EstimatedBehaviorPolicy, estimate_behavior_policy
from torchrl_offline.ope.decision_policies import (
    DecisionPolicy,
    EpsilonGreedyPolicy,
    SoftmaxPolicy,
    TablePolicy,
    TopKPolicy,
)
from torchrl_offline.ope.doubly_robust import DoublyRobust, QModel, WeightedDoublyRobust
from torchrl_offline.ope.episodes import Episodes, is_one_step, to_episodes
from torchrl_offline.ope.fqe import FQE, FQELoss
from torchrl_offline.ope.hook import OPEHook
from torchrl_offline.ope.importance import (
    ImportanceSampling,
    PerDecisionImportanceSampling,
    WeightedImportanceSampling,
    WeightedPerDecisionImportanceSampling,
    one_step_estimators,
)
from torchrl_offline.ope.model_based import ModelBasedOPE
from torchrl_offline.ope.policy import EvaluationPolicy, as_evaluation_policy
from torchrl_offline.ope.result import OPEError, OPEResult, OPEWarning
from torchrl_offline.ope.selection import (
    absolute_error,
    rank_policies,
    regret_at_k,
    relative_error,
    selection_metrics,
    spearman_correlation,
)
from torchrl_offline.ope.uncertainty import bootstrap_interval, lower_bound

__all__ = [
    "FQE",
    "DecisionPolicy",
    "DoublyRobust",
    "Episodes",
    "EpsilonGreedyPolicy",
    "EstimatedBehaviorPolicy",
    "EvaluationPolicy",
    "FQELoss",
    "ImportanceSampling",
    "ModelBasedOPE",
    "OPEError",
    "OPEHook",
    "OPEResult",
    "OPEWarning",
    "PerDecisionImportanceSampling",
    "QModel",
    "SoftmaxPolicy",
    "TablePolicy",
    "TopKPolicy",
    "WeightedDoublyRobust",
    "WeightedImportanceSampling",
    "WeightedPerDecisionImportanceSampling",
    "absolute_error",
    "as_evaluation_policy",
    "bootstrap_interval",
    "estimate_behavior_policy",
    "is_one_step",
    "lower_bound",
    "one_step_estimators",
    "rank_policies",
    "regret_at_k",
    "relative_error",
    "selection_metrics",
    "spearman_correlation",
    "to_episodes",
]
