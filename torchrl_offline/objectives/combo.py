r"""COMBO (Yu, Kumar, Rafailov, Rajeswaran, Levine & Finn, NeurIPS 2021): CQL's
conservative term on the state-actions of rollouts in a learned dynamics model.

Paper: "COMBO: Conservative Offline Model-Based Policy Optimization",
https://arxiv.org/abs/2102.08363.

COMBO trains SAC with CQL's regulariser on batches of ``f`` dataset transitions (50%) and
the rest transitions of the current policy's short rollouts in a learned model, without
MOPO's reward penalty. Where CQL pushes the critics down at sampled actions of dataset
states, COMBO pushes them down at the states of the model rollouts and up at the
dataset's state-actions (the paper's Eq. 2):

.. math::

    \beta\,\Big(\mathbb{E}_{s \sim d^\pi_{\hat M}}\Big[\log\sum_{a} \exp Q(s, a)\Big]
        - \mathbb{E}_{s, a \sim \mathcal{D}}\big[Q(s, a)\big]\Big)

(with CQL's importance-sampled log-sum-exp over uniform and policy actions, ``beta`` the
``min_q_weight``), plus the Bellman error on the mixed batch. :class:`COMBOLoss` is
:class:`~torchrl_offline.objectives.cql.CQLLoss` with ``conservative_states="model"``: it
reads the batch's ``model_data`` entry, which the model-rollout trainers write
(:mod:`~torchrl_offline.trainers.model_rollouts`).
"""

from __future__ import annotations

from typing import Any

from tensordict.nn import TensorDictModule

from torchrl_offline.objectives.cql import CQL_ALGORITHM, CQLLoss
from torchrl_offline.objectives.declaration import AlgorithmDeclaration, ModelRolloutSettings
from torchrl_offline.objectives.mopo import MODEL_BASED_SMALL_PRESET, with_known_termination

__all__ = ["COMBO_ALGORITHM", "COMBO_PRESETS", "COMBOLoss"]

#: COMBO's published conservative weight ``beta`` and rollout length ``h`` per D4RL
#: Gym-MuJoCo dataset (the hyperparameter table of the paper's appendix; ``f = 0.5``
#: throughout), with the known termination functions of Hopper and HalfCheetah.
#: OfflineRL-Kit's suggested settings agree on every medium, medium-replay and
#: medium-expert dataset but walker2d-medium-replay (``beta = 0.5`` there).
COMBO_PRESETS: dict[str, dict[str, Any]] = with_known_termination(
    {
        "halfcheetah-random": {"min_q_weight": 0.5, "rollout_length": 5},
        "hopper-random": {"min_q_weight": 1.0, "rollout_length": 5},
        "walker2d-random": {"min_q_weight": 1.0, "rollout_length": 1},
        "halfcheetah-medium": {"min_q_weight": 0.5, "rollout_length": 5},
        "hopper-medium": {"min_q_weight": 5.0, "rollout_length": 5},
        "walker2d-medium": {"min_q_weight": 5.0, "rollout_length": 1},
        "halfcheetah-medium-replay": {"min_q_weight": 0.5, "rollout_length": 5},
        "hopper-medium-replay": {"min_q_weight": 0.5, "rollout_length": 5},
        "walker2d-medium-replay": {"min_q_weight": 1.0, "rollout_length": 1},
        "halfcheetah-medium-expert": {"min_q_weight": 5.0, "rollout_length": 5},
        "hopper-medium-expert": {"min_q_weight": 5.0, "rollout_length": 5},
        "walker2d-medium-expert": {"min_q_weight": 5.0, "rollout_length": 1},
    }
)


class COMBOLoss(CQLLoss):
    r"""COMBO's loss (Yu et al., 2021): CQL whose conservative term pushes down at model
    states and up at dataset state-actions.

    :class:`~torchrl_offline.objectives.cql.CQLLoss` with ``conservative_states="model"``
    and COMBO's weight: per critic, :math:`\beta` times the mean over the model rows of
    the soft maximum over sampled actions (CQL(H)'s log-sum-exp of uniform, :math:`\pi(s)`
    and :math:`\pi(s')` actions at the row's state) minus the mean over the dataset rows
    of :math:`Q(s, a)`. The batch's ``model_data`` entry marks the model rows.

    Keyword Args:
        min_q_weight (float, optional): :math:`\beta`. Defaults to ``1.0``.
        conservative_states (str, optional): Defaults to ``"model"``.
        **kwargs: the other arguments of :class:`~torchrl_offline.objectives.cql.CQLLoss`.

    Examples:
        >>> import torch
        >>> from tensordict import TensorDict
        >>> from torchrl.data import Bounded, Unbounded
        >>> from torchrl_offline.trainers.algorithms import build_algorithm
        >>> loss = build_algorithm("combo", Unbounded(shape=(3,)), Bounded(-1.0, 1.0, (1,)),
        ...                        hidden_sizes=(8,)).loss
        >>> data = TensorDict({
        ...     "observation": torch.randn(8, 3), "action": torch.rand(8, 1) * 2 - 1,
        ...     ("next", "observation"): torch.randn(8, 3), ("next", "reward"): torch.randn(8, 1),
        ...     ("next", "done"): torch.zeros(8, 1, dtype=torch.bool),
        ...     ("next", "terminated"): torch.zeros(8, 1, dtype=torch.bool),
        ...     "model_data": torch.arange(8) >= 4}, [8])  # rows 4-7 from the model
        >>> out = loss(data)
        >>> loss.min_q_weight, loss.conservative_states, out["loss_cql"].shape
        (1.0, 'model', torch.Size([]))
    """

    def __init__(
        self,
        actor_network: TensorDictModule,
        qvalue_network: TensorDictModule | list[TensorDictModule],
        *,
        min_q_weight: float = 1.0,
        conservative_states: str = "model",
        **kwargs: Any,
    ) -> None:
        super().__init__(
            actor_network,
            qvalue_network,
            min_q_weight=min_q_weight,
            conservative_states=conservative_states,
            **kwargs,
        )


#: COMBO as :func:`~torchrl_offline.trainers.algorithms.build_algorithm` builds it: CQL's
#: networks and optimizer (``TanhNormal`` actor, twin critics, 3x256 MLPs, Adam at 1e-4
#: for the actor and temperature, 3e-4 for the critics: the paper's), ``beta = 1``
#: fixed, and the need "model rollouts" at the paper's settings (``h = 5``,
#: ``f = real_ratio = 0.5``, no reward penalty; MOPO's model and rollout schedule);
#: per-task ``beta`` and ``h``: :data:`COMBO_PRESETS`.
COMBO_ALGORITHM = AlgorithmDeclaration(
    name="combo",
    loss_class=COMBOLoss,
    networks=CQL_ALGORITHM.networks,
    optimizer=CQL_ALGORITHM.optimizer,
    loss_terms=CQL_ALGORITHM.loss_terms,
    defaults=dict(CQL_ALGORITHM.defaults),
    presets={**COMBO_PRESETS, "small": MODEL_BASED_SMALL_PRESET},
    action_spec_argument="action_spec",
    model_rollouts=ModelRolloutSettings(rollout_length=5, real_ratio=0.5, reward_penalty=0.0),
)
