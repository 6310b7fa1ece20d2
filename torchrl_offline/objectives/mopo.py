r"""MOPO (Yu, Thomas, Yu, Ermon, Zou, Levine, Finn & Ma, NeurIPS 2020): SAC on a mix of
dataset transitions and uncertainty-penalised rollouts in a learned dynamics model.

Paper: "MOPO: Model-based Offline Policy Optimization", https://arxiv.org/abs/2005.13239;
reference code https://github.com/tianheyu927/mopo (built on MBPO's).

MOPO learns an ensemble of probabilistic dynamics models, rolls the current policy out
``h`` steps from dataset states in it, and trains SAC on batches of ``real_ratio``
dataset transitions (5%) and model transitions whose reward is penalised by the model's
uncertainty, :math:`\tilde r(s, a) = \hat r(s, a) - \lambda\, u(s, a)` with
:math:`u(s, a) = \max_i \lVert \Sigma_i(s, a) \rVert_F` (the largest predicted standard
deviation's norm over the ensemble, the paper's default). The penalty is applied where
the model transitions are made (the learned-model environment's ``reward_penalty``), so
the loss is SAC's: :class:`MOPOLoss` is :class:`~torchrl_offline.objectives.edac.EDACLoss`
with two critics and no diversity term (SAC-N with ``N = 2``, SAC's clipped double Q);
the training loop's need "model rollouts" is declared in :data:`MOPO_ALGORITHM`
(:class:`~torchrl_offline.objectives.declaration.ModelRolloutSettings`; the trainers act
on it, :mod:`~torchrl_offline.trainers.model_rollouts`).
"""

from __future__ import annotations

from typing import Any

from tensordict.nn import ProbabilisticTensorDictSequential, TensorDictModule

from torchrl_offline.objectives.declaration import (
    SMALL_HIDDEN_SIZES,
    AlgorithmDeclaration,
    ModelRolloutSettings,
)
from torchrl_offline.objectives.edac import _EDAC_COMMON, EDACLoss

__all__ = [
    "MODEL_BASED_SMALL_PRESET",
    "MOPO_ALGORITHM",
    "MOPO_PRESETS",
    "MOPOLoss",
    "with_known_termination",
]


def with_known_termination(presets: dict[str, dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """``presets`` with ``model_termination`` set to the task's known termination
    function (by name: ``"hopper"``, ``"halfcheetah"``, as the MOPO code's static
    functions) where :mod:`torchrl_offline.models.termination` has one; the others
    (Walker2d) learn it.

    Examples:
        >>> from torchrl_offline.objectives.mopo import with_known_termination
        >>> with_known_termination({"hopper-medium": {"rollout_length": 5}})
        {'hopper-medium': {'rollout_length': 5, 'model_termination': 'hopper'}}
    """
    known = ("hopper", "halfcheetah")
    out = {}
    for name, values in presets.items():
        task = name.split("-")[0]
        out[name] = {**values, "model_termination": task} if task in known else dict(values)
    return out


#: MOPO's published rollout length ``h`` and penalty weight ``lambda`` per D4RL
#: Gym-MuJoCo (v0) dataset: the reference code's per-dataset configs
#: (``examples/config/d4rl/<env>_<dataset>.py`` of github.com/tianheyu927/mopo,
#: ``rollout_length`` and ``penalty_coeff``; its "mixed" is D4RL's medium-replay), with
#: the known termination functions of Hopper and HalfCheetah.
MOPO_PRESETS: dict[str, dict[str, Any]] = with_known_termination(
    {
        "halfcheetah-random": {"rollout_length": 5, "reward_penalty": 0.5},
        "hopper-random": {"rollout_length": 5, "reward_penalty": 1.0},
        "walker2d-random": {"rollout_length": 1, "reward_penalty": 1.0},
        "halfcheetah-medium": {"rollout_length": 1, "reward_penalty": 1.0},
        "hopper-medium": {"rollout_length": 5, "reward_penalty": 5.0},
        "walker2d-medium": {"rollout_length": 5, "reward_penalty": 5.0},
        "halfcheetah-medium-replay": {"rollout_length": 5, "reward_penalty": 1.0},
        "hopper-medium-replay": {"rollout_length": 5, "reward_penalty": 1.0},
        "walker2d-medium-replay": {"rollout_length": 1, "reward_penalty": 1.0},
        "halfcheetah-medium-expert": {"rollout_length": 5, "reward_penalty": 5.0},
        "hopper-medium-expert": {"rollout_length": 5, "reward_penalty": 1.0},
        "walker2d-medium-expert": {"rollout_length": 1, "reward_penalty": 2.0},
    }
)

#: The ``"small"`` preset of the model-based algorithms, for short CPU runs and tests:
#: 2x64 policy, critic and model networks, 3 model members (2 elites) fitted for at most
#: 500 updates, 500 rollout starts every 250 updates, 2 rollouts retained.
MODEL_BASED_SMALL_PRESET: dict[str, Any] = {
    "hidden_sizes": SMALL_HIDDEN_SIZES,
    "model_hidden_sizes": SMALL_HIDDEN_SIZES,
    "model_num_members": 3,
    "model_num_elites": 2,
    "model_max_updates": 500,
    "rollout_batch_size": 500,
    "rollout_interval": 250,
    "rollout_retain_epochs": 2,
}


class MOPOLoss(EDACLoss):
    r"""MOPO's policy loss (Yu et al., 2020): SAC with two critics on the mixed batch.

    :class:`~torchrl_offline.objectives.edac.EDACLoss` with ``num_qvalue_nets=2`` and
    ``eta=0`` (SAC-N at ``N = 2``): the critics regress on
    :math:`y = \tilde r + \gamma (1 - d)(\min_j \bar Q_j(s', a') - \alpha \log\pi(a'|s'))`
    where the model rows' reward :math:`\tilde r = \hat r - \lambda u` already carries
    MOPO's penalty (the learned-model environment subtracts it); dataset rows keep their
    reward.

    Keyword Args:
        num_qvalue_nets (int, optional): the critics. Defaults to ``2`` (SAC's).
        eta (float, optional): the ensemble-similarity weight. Defaults to ``0.0``.
        **kwargs: the other arguments of :class:`~torchrl_offline.objectives.edac.EDACLoss`.

    Examples:
        >>> from torchrl.data import Bounded, Unbounded
        >>> from torchrl_offline.trainers.algorithms import build_algorithm
        >>> loss = build_algorithm("mopo", Unbounded(shape=(3,)), Bounded(-1.0, 1.0, (1,)),
        ...                        hidden_sizes=(8,)).loss
        >>> type(loss).__name__, loss.num_qvalue_nets, loss.eta, "loss_diversity" in loss.out_keys
        ('MOPOLoss', 2, 0.0, False)
    """

    def __init__(
        self,
        actor_network: ProbabilisticTensorDictSequential,
        qvalue_network: TensorDictModule,
        *,
        num_qvalue_nets: int = 2,
        eta: float = 0.0,
        **kwargs: Any,
    ) -> None:
        super().__init__(
            actor_network, qvalue_network, num_qvalue_nets=num_qvalue_nets, eta=eta, **kwargs
        )


#: MOPO as :func:`~torchrl_offline.trainers.algorithms.build_algorithm` builds it: SAC's
#: ``TanhNormal`` actor and twin ``Q(s, a)`` critics (2x256 MLPs, Adam at 3e-4, automatic
#: entropy temperature: the MBPO/MOPO code's SAC), the need "model rollouts" at the
#: reference code's settings (``examples/config/d4rl/base.py``: 7 members, 5 elites,
#: 4x200 model networks; every 1000 updates,
#: ``h = 5`` steps from 50,000 dataset states, 5 rollouts retained; 5% real data;
#: ``lambda = 1``), per-task ``h`` and ``lambda``: :data:`MOPO_PRESETS`.
MOPO_ALGORITHM = AlgorithmDeclaration(
    name="mopo",
    loss_class=MOPOLoss,
    presets={**MOPO_PRESETS, "small": MODEL_BASED_SMALL_PRESET},
    model_rollouts=ModelRolloutSettings(rollout_length=5, real_ratio=0.05, reward_penalty=1.0),
    **{**_EDAC_COMMON, "defaults": {**_EDAC_COMMON["defaults"], "hidden_sizes": (256, 256)}},
)
