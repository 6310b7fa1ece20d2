r"""The dynamics ensemble's training loss (PETS / MBPO), as a TorchRL ``LossModule``.

Each member ``i`` is fit by the Gaussian negative log-likelihood of the normalised
targets ``y = ((s' - s, r) - m) / sd`` on its own rows,

.. math::

    L_i = \frac{1}{B D} \sum_{b, d} \tfrac12 \Big[
        \frac{(\mu_{i,d}(x_b) - y_{b,d})^2}{\sigma^2_{i,d}(x_b)}
        + \log \sigma^2_{i,d}(x_b) + \log 2\pi \Big],

summed over members, plus PETS's bound penalty ``0.01 * (sum max_log_var - sum
min_log_var)``, MBPO's per-layer L2 weight decay, and, when the model learns
termination, the binary cross-entropy of its termination logits.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from tensordict import TensorDict, TensorDictBase
from tensordict.nn import dispatch
from tensordict.utils import NestedKey
from torch import Tensor
from torchrl.objectives import LossModule

from torchrl_offline.models.dynamics import DynamicsEnsemble
from torchrl_offline.models.errors import ModelError

__all__ = ["DynamicsLoss", "gaussian_nll"]


def gaussian_nll(mean: Tensor, log_var: Tensor, target: Tensor) -> Tensor:
    r"""Elementwise Gaussian negative log-likelihood ``0.5 * ((y - mu)^2 / var + log var + log 2 pi)``.

    Examples:
        >>> import torch
        >>> from torchrl_offline.models.dynamics_loss import gaussian_nll
        >>> round(float(gaussian_nll(torch.zeros(1), torch.zeros(1), torch.zeros(1))), 4)
        0.9189
    """
    return 0.5 * ((mean - target).square() * (-log_var).exp() + log_var + math.log(2 * math.pi))


class DynamicsLoss(LossModule):
    """Gaussian NLL of every member of a :class:`DynamicsEnsemble` on its own rows.

    The batch is either ``[B]`` (every member sees the same rows) or ``[E, B]``: row ``e``
    holds member ``e``'s rows, drawn from its own bootstrap of the data (what
    :func:`~torchrl_offline.models.fit.fit_dynamics` feeds it). One batched forward
    computes all members.

    Args:
        model: the ensemble to train.

    Keyword Args:
        bound_penalty: weight of the log-variance bounds penalty. Defaults to ``0.01``
            (PETS, MBPO).
        weight_decay: add the model's per-layer L2 penalty. Defaults to ``True``.
        termination_pos_weight: weight of the terminal rows in the termination
            classifier's cross-entropy (``pos_weight`` of
            ``binary_cross_entropy_with_logits``). Episode ends are rare (0.6% of Hopper
            medium's transitions); unweighted, the classifier misses most of them, and
            rollouts that should end go on. ``None`` (default): unweighted.

    Returns (``forward``): a TensorDict with ``loss_dynamics`` (NLL summed over
    members), ``loss_bounds``, ``loss_weight_decay``, ``loss_termination`` (learned
    termination only) and the detached diagnostics ``mse`` (normalised squared error,
    mean over members) and ``mse_member`` ``[E]``.

    Examples:
        >>> import torch
        >>> from tensordict import TensorDict
        >>> from torchrl_offline.models.dynamics import DynamicsEnsemble
        >>> from torchrl_offline.models.dynamics_loss import DynamicsLoss
        >>> model = DynamicsEnsemble(3, 1, num_members=2, num_elites=1, hidden_sizes=(16,))
        >>> loss = DynamicsLoss(model)
        >>> batch = TensorDict({
        ...     "observation": torch.randn(8, 3), "action": torch.randn(8, 1),
        ...     ("next", "observation"): torch.randn(8, 3),
        ...     ("next", "reward"): torch.randn(8, 1),
        ...     ("next", "terminated"): torch.zeros(8, 1, dtype=torch.bool),
        ... }, [8])
        >>> out = loss(batch)
        >>> sorted(k for k in out.keys() if k.startswith("loss_"))
        ['loss_bounds', 'loss_dynamics', 'loss_weight_decay']
        >>> sum(out[k] for k in out.keys() if k.startswith("loss_")).backward()
    """

    @dataclass
    class _AcceptedKeys:
        """Configurable tensordict keys.

        Attributes:
            observation (NestedKey): the observation. Defaults to ``"observation"``.
            action (NestedKey): the logged action. Defaults to ``"action"``.
            next_observation (NestedKey): the next observation. Defaults to
                ``("next", "observation")``.
            reward (NestedKey): the reward, ``[..., 1]``. Defaults to ``("next", "reward")``.
            terminated (NestedKey): the termination flag (read only by a model that learns
                termination). Defaults to ``("next", "terminated")``.
        """

        observation: NestedKey = "observation"
        action: NestedKey = "action"
        next_observation: NestedKey = ("next", "observation")
        reward: NestedKey = ("next", "reward")
        terminated: NestedKey = ("next", "terminated")

    tensor_keys: _AcceptedKeys
    default_keys = _AcceptedKeys
    out_keys = ["loss_dynamics", "loss_bounds", "loss_weight_decay"]

    def __init__(
        self,
        model: DynamicsEnsemble,
        *,
        bound_penalty: float = 0.01,
        weight_decay: bool = True,
        termination_pos_weight: float | None = None,
    ) -> None:
        super().__init__()
        self._set_deprecated_ctor_keys()
        self.model = model
        self.bound_penalty = float(bound_penalty)
        self.weight_decay = bool(weight_decay)
        if termination_pos_weight is not None and termination_pos_weight <= 0:
            raise ValueError(f"termination_pos_weight must be > 0, got {termination_pos_weight}")
        self.termination_pos_weight = termination_pos_weight

    def _forward_value_estimator_keys(self, **kwargs) -> None:
        pass

    @property
    def in_keys(self) -> list[NestedKey]:
        keys = self.tensor_keys
        out = [keys.observation, keys.action, keys.next_observation, keys.reward]
        if self.model.learn_termination:
            out.append(keys.terminated)
        return out

    def _get(self, td: TensorDictBase, key: NestedKey) -> Tensor:
        value = td.get(key, None)
        if value is None:
            raise ModelError(
                f"the dynamics loss needs {key!r} in the batch; it is missing", field=str(key)
            )
        return value

    def member_terms(self, tensordict: TensorDictBase) -> tuple[Tensor, Tensor, Tensor | None]:
        """``[E]`` NLL and normalised MSE of each member, and ``[E]`` termination BCE
        (``None`` without learned termination)."""
        model, keys = self.model, self.tensor_keys
        obs = self._get(tensordict, keys.observation)
        action = self._get(tensordict, keys.action)
        next_obs = self._get(tensordict, keys.next_observation)
        reward = self._get(tensordict, keys.reward)
        if reward.shape[-1:] != (1,) or reward.ndim != obs.ndim:
            reward = reward.reshape(*obs.shape[:-1], 1)
        x = model.normalize_inputs(obs, action.to(obs.dtype))
        y = model.normalize_targets(obs, next_obs, reward.to(obs.dtype))
        members = model.num_members
        if tensordict.batch_dims == 2 and tensordict.shape[0] == members:
            pass
        elif tensordict.batch_dims == 1:
            x = x.expand(members, *x.shape)
            y = y.expand(members, *y.shape)
        else:
            raise ModelError(
                f"the dynamics loss takes a [B] batch or an [E={members}, B] batch of each "
                f"member's rows; got batch size {tuple(tensordict.shape)}",
                field="batch_size",
            )
        mean, log_var, logit = model.normalized_forward(x)
        nll = gaussian_nll(mean, log_var, y).mean((-2, -1))
        mse = (mean - y).square().mean((-2, -1)).detach()
        bce = None
        if logit is not None:
            terminated = self._get(tensordict, keys.terminated).to(logit.dtype)
            terminated = terminated.reshape(-1, x.shape[1]).expand(members, -1)
            pos_weight = self.termination_pos_weight
            bce = torch.nn.functional.binary_cross_entropy_with_logits(
                logit.squeeze(-1),
                terminated,
                reduction="none",
                pos_weight=None if pos_weight is None else logit.new_tensor(pos_weight),
            ).mean(-1)
        return nll, mse, bce

    @dispatch
    def forward(self, tensordict: TensorDictBase) -> TensorDictBase:
        model = self.model
        nll, mse, bce = self.member_terms(tensordict)
        out = {
            "loss_dynamics": nll.sum(),
            "loss_bounds": self.bound_penalty * (model.max_log_var.sum() - model.min_log_var.sum()),
            "loss_weight_decay": model.weight_decay_loss()
            if self.weight_decay
            else torch.zeros((), device=nll.device),
            "mse": mse.mean(),
            "mse_member": mse,
        }
        if bce is not None:
            out["loss_termination"] = bce.sum()
        return TensorDict(out, batch_size=[])
