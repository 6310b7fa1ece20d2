"""The critics' bootstrapped target and the value estimator behind it.

* :func:`make_loss_value_estimator`, the shared body of every loss's
  ``make_value_estimator``;
* :func:`bootstrap_target`, ``r + gamma (1 - terminated) V(s')`` with a direct TD(0)
  fast path, any other TorchRL estimator through ``value_estimate``;
* :func:`td_target`, the same for a loss whose ``tensor_keys`` name the reward,
  done and terminated entries;
* :func:`next_key`, a key under ``"next"``.
"""

from __future__ import annotations

from tensordict import TensorDictBase
from tensordict.utils import NestedKey
from torch import Tensor

__all__ = ["bootstrap_target", "make_loss_value_estimator", "next_key", "td_target"]


def make_loss_value_estimator(
    loss,
    value_type=None,
    *,
    tensor_keys: dict[str, NestedKey],
    **hyperparams,
):
    """The shared body of every loss's ``make_value_estimator``.

    ``value_type`` may be a :class:`~torchrl.objectives.utils.ValueEstimators` member
    (checked against ``loss.SUPPORTED_VALUE_ESTIMATORS``; ``None`` means
    ``loss.default_value_estimator``) or a ``ValueEstimatorBase`` instance or subclass,
    which TorchRL's own ``LossModule.make_value_estimator`` handles. The estimator's keys
    are set from ``tensor_keys``.

    Args:
        loss (LossModule): the loss whose estimator to build.
        value_type: the estimator type.

    Keyword Args:
        tensor_keys (dict): estimator key name -> the loss's tensordict key.
        **hyperparams: estimator hyperparameters, e.g. ``gamma``.

    Returns:
        What TorchRL's ``make_value_estimator`` returns: ``None`` for a
        ``ValueEstimators`` member, the loss for an estimator class or instance.
    """
    from torchrl.objectives import LossModule
    from torchrl.objectives.utils import dispatch_value_estimator
    from torchrl.objectives.value import ValueEstimatorBase

    if value_type is None:
        value_type = loss.default_value_estimator
    if isinstance(value_type, ValueEstimatorBase) or (
        isinstance(value_type, type) and issubclass(value_type, ValueEstimatorBase)
    ):
        return LossModule.make_value_estimator(loss, value_type, **hyperparams)
    dispatch_value_estimator(
        loss,
        value_type,
        supported=loss.SUPPORTED_VALUE_ESTIMATORS,
        tensor_keys=tensor_keys,
        **hyperparams,
    )
    return None


def bootstrap_target(
    estimator,
    tensordict: TensorDictBase,
    next_value: Tensor,
    *,
    reward_key: NestedKey = "reward",
    done_key: NestedKey = "done",
    terminated_key: NestedKey = "terminated",
) -> Tensor:
    """The critics' regression target from the value of the next states.

    TD(0) (the default of every loss) is computed directly, ``r + gamma (1 - terminated)
    next_value`` (``gamma ** steps_to_next_obs`` for n-step data); any other TorchRL
    estimator (TD(1), TD(lambda)) gets ``next_value`` through ``value_estimate``, over the
    batch as given (keep the time dimension of trajectory batches for TD(lambda)).

    Args:
        estimator (ValueEstimatorBase): the loss's ``value_estimator``.
        tensordict (TensorDictBase): the batch, with ``("next", reward/done/terminated)``.
        next_value (Tensor): the value of the next states, shaped like the batch
            (``[*batch]``) or with trailing values (``[*batch, K]``, e.g. quantiles).

    Keyword Args:
        reward_key, done_key, terminated_key (NestedKey): the entries under ``"next"``.

    Returns:
        Tensor: shaped like ``next_value``.

    Examples:
        >>> import torch
        >>> from tensordict import TensorDict
        >>> from torchrl.objectives.value import TD0Estimator
        >>> from torchrl_offline.objectives.common import bootstrap_target
        >>> td = TensorDict({("next", "reward"): torch.ones(2, 1),
        ...                  ("next", "done"): torch.tensor([[False], [True]]),
        ...                  ("next", "terminated"): torch.tensor([[False], [True]])}, [2])
        >>> bootstrap_target(TD0Estimator(gamma=0.5, value_network=None), td, torch.ones(2))
        tensor([1.5000, 1.0000])
    """
    from torchrl.objectives.value import TD0Estimator

    batch = tensordict.batch_size
    value = next_value.reshape(*batch, -1)  # [*batch, K]
    if type(estimator) is TD0Estimator and not estimator.average_rewards:
        reward = tensordict.get(next_key(reward_key))
        terminated = tensordict.get(next_key(terminated_key), None)
        if terminated is None:
            terminated = tensordict.get(next_key(done_key))
        gamma = estimator.gamma.to(reward.device)
        steps = tensordict.get(estimator.tensor_keys.steps_to_next_obs, None)
        if steps is not None:
            gamma = gamma ** steps.view_as(reward)
        not_terminal = (~terminated.bool()).to(value.dtype)
        target = reward.reshape(*batch, 1) + gamma * not_terminal.reshape(*batch, 1) * value
    else:
        keys = [next_key(k) for k in (reward_key, done_key, terminated_key)]
        keys += [estimator.tensor_keys.steps_to_next_obs, "shifted_valid"]
        td = tensordict.select(*keys, strict=False).copy()
        target = estimator.value_estimate(td, next_value=value)
    return target.reshape(next_value.shape)


def td_target(loss, tensordict: TensorDictBase, next_value: Tensor) -> Tensor:
    """:func:`bootstrap_target` with the loss's estimator and its reward/done/terminated keys.

    Args:
        loss (LossModule): a loss whose ``tensor_keys`` have ``reward``, ``done`` and
            ``terminated`` entries and whose ``value_estimator`` gives the discount.
        tensordict (TensorDictBase): the batch.
        next_value (Tensor): the value of the next states, ``[*batch]`` or ``[*batch, K]``.

    Returns:
        Tensor: shaped like ``next_value``.

    Examples:
        >>> import torch
        >>> from tensordict import TensorDict
        >>> from torchrl.data import Bounded
        >>> from torchrl.modules import MLP, ValueOperator
        >>> from torchrl_offline.objectives import TD3BCLoss
        >>> from torchrl_offline.objectives.common import td_target
        >>> from tensordict.nn import TensorDictModule
        >>> actor = TensorDictModule(torch.nn.Linear(3, 1), ["observation"], ["action"])
        >>> q = ValueOperator(MLP(in_features=4, out_features=1, num_cells=[8]),
        ...                   in_keys=["observation", "action"])
        >>> loss = TD3BCLoss(actor, q, bounds=(-1.0, 1.0))
        >>> loss.make_value_estimator(gamma=0.5)
        >>> td = TensorDict({("next", "reward"): torch.ones(2, 1),
        ...                  ("next", "done"): torch.tensor([[False], [True]]),
        ...                  ("next", "terminated"): torch.tensor([[False], [True]])}, [2])
        >>> td_target(loss, td, torch.ones(2))
        tensor([1.5000, 1.0000])
    """
    keys = loss.tensor_keys
    return bootstrap_target(
        loss.value_estimator,
        tensordict,
        next_value,
        reward_key=keys.reward,
        done_key=keys.done,
        terminated_key=keys.terminated,
    )


def next_key(key: NestedKey) -> tuple[str, ...]:
    """The key of ``key`` under ``"next"``, flattened: ``"reward"`` -> ``("next", "reward")``.

    Examples:
        >>> from torchrl_offline.objectives.common import next_key
        >>> next_key("reward"), next_key(("agent", "obs"))
        (('next', 'reward'), ('next', 'agent', 'obs'))
    """
    return ("next", *key) if isinstance(key, tuple) else ("next", key)
