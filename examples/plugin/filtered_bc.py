r"""Filtered behaviour cloning: an algorithm added to torchrl_offline from outside.

Clone the logged actions the critic rates at least as well as the policy's own action
(the binary filter of CRR, Wang et al., 2020, "Critic Regularized Regression", with a
deterministic actor), and fit the critic by TD learning on the policy's next action:

.. math::

    L_Q = \big(Q(s, a) - r - \gamma (1 - d)\, Q'(s', \pi'(s'))\big)^2, \qquad
    L_\pi = \mathbb{1}\big[Q(s, a) \ge Q(s, \pi(s))\big]\, \lVert \pi(s) - a \rVert^2 .

The loss is a TorchRL ``LossModule``; ``FILTERED_BC_ALGORITHM`` declares the rest
(networks, defaults, optimizer groups, loss terms), and the entry point in
``pyproject.toml`` registers it.

Examples:
    >>> import torch
    >>> from tensordict import TensorDict
    >>> from torchrl.data import Bounded, Unbounded
    >>> from torchrl_offline import registry
    >>> from torchrl_offline.trainers.algorithms import build_algorithm
    >>> _ = registry.register("algorithm", "filtered_bc", FILTERED_BC_ALGORITHM, replace=True)
    >>> algo = build_algorithm("filtered_bc", Unbounded(shape=(3,)), Bounded(-1.0, 1.0, (1,)),
    ...                        hidden_sizes=(8,))
    >>> batch = TensorDict({"observation": torch.randn(4, 3), "action": torch.zeros(4, 1),
    ...     "next": {"observation": torch.randn(4, 3), "reward": torch.ones(4, 1),
    ...              "done": torch.zeros(4, 1, dtype=torch.bool),
    ...              "terminated": torch.zeros(4, 1, dtype=torch.bool)}}, [4])
    >>> sorted(algo.loss(batch).keys())
    ['filter_fraction', 'loss_actor', 'loss_qvalue']
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from tensordict import TensorDict, TensorDictBase
from tensordict.nn import TensorDictModule
from tensordict.utils import NestedKey
from torch import Tensor
from torchrl.objectives import LossModule

from torchrl_offline.objectives.declaration import AlgorithmDeclaration, ParamGroup

__all__ = ["FILTERED_BC_ALGORITHM", "FilteredBCLoss"]


class FilteredBCLoss(LossModule):
    """Filtered behaviour cloning with a TD-learned critic (see the module docstring).

    Args:
        actor_network: a deterministic actor writing ``"action"``.
        qvalue_network: ``Q(s, a)`` writing ``"state_action_value"``.

    Keyword Args:
        gamma: the discount (``make_value_estimator(gamma=...)`` changes it).
    """

    @dataclass
    class _AcceptedKeys:
        """The tensordict keys the loss reads (change them with ``set_keys``)."""

        action: NestedKey = "action"
        reward: NestedKey = "reward"
        terminated: NestedKey = "terminated"
        state_action_value: NestedKey = "state_action_value"

    default_keys = _AcceptedKeys
    out_keys = ["loss_actor", "loss_qvalue"]

    def __init__(
        self,
        actor_network: TensorDictModule,
        qvalue_network: TensorDictModule,
        *,
        gamma: float = 0.99,
    ) -> None:
        super().__init__()
        self.convert_to_functional(actor_network, "actor_network", create_target_params=True)
        self.convert_to_functional(qvalue_network, "qvalue_network", create_target_params=True)
        self.gamma = gamma

    @property
    def in_keys(self) -> list[NestedKey]:
        """The batch entries the loss reads."""
        observations = list(self.actor_network.in_keys)
        k = self.tensor_keys
        nexts = [("next", key) for key in (*observations, k.reward, k.terminated)]
        return [*observations, k.action, *nexts]

    def make_value_estimator(self, value_type=None, **hyperparams) -> LossModule:
        """Sets the discount (``gamma``); the TD(0) target is written in :meth:`qvalue_loss`."""
        self.gamma = float(hyperparams.get("gamma", self.gamma))
        return self

    def _q(self, td: TensorDictBase, params: TensorDictBase) -> Tensor:
        with params.to_module(self.qvalue_network):
            return self.qvalue_network(td)[self.tensor_keys.state_action_value]

    def _act(self, td: TensorDictBase, params: TensorDictBase) -> TensorDictBase:
        with params.to_module(self.actor_network):
            return self.actor_network(td)

    def qvalue_loss(self, td: TensorDictBase) -> Tensor:
        """``(Q(s, a) - r - gamma (1 - d) Q'(s', pi'(s')))^2``, averaged."""
        with torch.no_grad():
            next_td = self._act(td["next"].clone(False), self.target_actor_network_params)
            next_q = self._q(next_td, self.target_qvalue_network_params)
            not_done = (~td["next", self.tensor_keys.terminated]).float()
            target = td["next", self.tensor_keys.reward] + self.gamma * not_done * next_q
        q = self._q(td.clone(False), self.qvalue_network_params)
        return (q - target).pow(2).mean()

    def actor_loss(self, td: TensorDictBase) -> tuple[Tensor, Tensor]:
        """The filtered squared error to the logged action, and the kept fraction."""
        logged = td[self.tensor_keys.action]
        action = self._act(td.clone(False), self.actor_network_params)[self.tensor_keys.action]
        with torch.no_grad():
            q_logged = self._q(td.clone(False), self.qvalue_network_params)
            q_policy = self._q(
                td.clone(False).set(self.tensor_keys.action, action.detach()),
                self.qvalue_network_params,
            )
            keep = (q_logged >= q_policy).float()
        error = (action - logged).pow(2).sum(-1, keepdim=True)
        return (keep * error).mean(), keep.mean()

    def forward(self, td: TensorDictBase) -> TensorDictBase:
        loss_actor, kept = self.actor_loss(td)
        return TensorDict(
            {
                "loss_actor": loss_actor,
                "loss_qvalue": self.qvalue_loss(td),
                "filter_fraction": kept.detach(),
            },
            [],
        )


#: The algorithm: a deterministic tanh actor and one ``Q(s, a)``, 2x64 MLPs, Adam at 3e-4.
FILTERED_BC_ALGORITHM = AlgorithmDeclaration(
    name="filtered_bc",
    loss_class=FilteredBCLoss,
    networks=lambda nets, hp: {
        "actor_network": nets.deterministic_actor(),
        "qvalue_network": nets.qvalue(),
    },
    optimizer=(
        ParamGroup("actor", "actor_lr", "actor_network_params"),
        ParamGroup("qvalue", "critic_lr", "qvalue_network_params"),
    ),
    loss_terms=("loss_actor", "loss_qvalue"),
    defaults={"hidden_sizes": (64, 64), "actor_lr": 3e-4, "critic_lr": 3e-4},
)
