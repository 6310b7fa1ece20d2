"""What the losses need to know of actions: for continuous ones ``low``/``high`` read from
a TorchRL spec (never a silent ``[-1, 1]``), uniform actions in the box and the maps to and
from ``[-1, 1]``; for discrete ones the critic's value of the logged action (indices or
one-hot, range- and shape-checked).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from tensordict.utils import NestedKey
from torch import Tensor

from torchrl_offline.objectives._checks import OfflineLossError, _key_str

__all__ = [
    "action_bounds",
    "find_action_spec",
    "from_unit_interval",
    "logged_action_value",
    "to_unit_interval",
    "uniform_actions",
]


def find_action_spec(obj, action_key: NestedKey = "action"):
    """Returns the action spec held by ``obj`` (a spec, a Composite, an actor or an env).

    Args:
        obj: a :class:`~torchrl.data.TensorSpec`, a :class:`~torchrl.data.Composite`
            holding ``action_key``, an actor with a ``spec`` attribute, or an env with
            an ``action_spec``.
        action_key (NestedKey, optional): the action entry. Defaults to ``"action"``.

    Returns:
        The action :class:`~torchrl.data.TensorSpec`, or ``None`` if none is found.

    Examples:
        >>> import torch
        >>> from torchrl.data import Bounded, Composite
        >>> from torchrl_offline.objectives.common import find_action_spec
        >>> spec = Bounded(-2.0, 2.0, (1,))
        >>> find_action_spec(Composite(action=spec)) is spec
        True
    """
    from torchrl.data import Composite, TensorSpec

    if obj is None:
        return None
    if isinstance(obj, Composite):
        return obj.get(action_key, None) if action_key in obj.keys(True, True) else None
    if isinstance(obj, TensorSpec):
        return obj
    for attr in ("action_spec", "spec"):
        spec = getattr(obj, attr, None)
        if spec is not None and spec is not obj:
            found = find_action_spec(spec, action_key)
            if found is not None:
                return found
    return None


def action_bounds(
    spec, *, action_key: NestedKey = "action", dtype: torch.dtype | None = None
) -> tuple[Tensor, Tensor]:
    """Returns ``(low, high)`` of a bounded continuous action spec.

    Args:
        spec: a :class:`~torchrl.data.Bounded` spec, or anything
            :func:`find_action_spec` accepts (Composite, actor, env).

    Keyword Args:
        action_key (NestedKey, optional): the action entry. Defaults to ``"action"``.
        dtype (torch.dtype, optional): cast the bounds to this dtype.

    Raises:
        OfflineLossError: if no spec is found or the spec is not bounded (the loss
            never falls back to an assumed ``[-1, 1]`` box).

    Examples:
        >>> import torch
        >>> from torchrl.data import Bounded
        >>> from torchrl_offline.objectives.common import action_bounds
        >>> low, high = action_bounds(Bounded(-2.0, 2.0, (1,)))
        >>> low, high
        (tensor([-2.]), tensor([2.]))
    """
    found = find_action_spec(spec, action_key)
    if found is None:
        raise OfflineLossError(
            f"no action spec found for {_key_str(action_key)}: pass a bounded action spec "
            "(e.g. torchrl.data.Bounded) or an actor built with one"
        )
    from torchrl.data import Bounded

    space = getattr(found, "space", None)
    low = getattr(space, "low", None)
    high = getattr(space, "high", None)
    if not isinstance(found, Bounded) or low is None or high is None:
        raise OfflineLossError(
            f"the action spec for {_key_str(action_key)} ({type(found).__name__}) is not "
            "bounded; a Bounded spec with low/high is required"
        )
    low, high = torch.as_tensor(low), torch.as_tensor(high)
    if dtype is not None:
        low, high = low.to(dtype), high.to(dtype)
    if not bool(torch.isfinite(low).all() and torch.isfinite(high).all()):
        raise OfflineLossError(f"the action spec for {_key_str(action_key)} has infinite bounds")
    return low, high


def uniform_actions(
    low: Tensor, high: Tensor, shape: Sequence[int], *, generator: torch.Generator | None = None
) -> Tensor:
    """Samples actions uniformly in the box ``[low, high]``.

    Args:
        low (Tensor): lower bound, shaped like one action.
        high (Tensor): upper bound, shaped like one action.
        shape (sequence of int): leading batch shape.

    Keyword Args:
        generator (torch.Generator, optional): random generator.

    Returns:
        Tensor: shaped ``[*shape, *low.shape]``.

    Examples:
        >>> import torch
        >>> from torchrl_offline.objectives.common import uniform_actions
        >>> a = uniform_actions(torch.tensor([-2.0]), torch.tensor([2.0]), (5, 3))
        >>> a.shape, bool((a.abs() <= 2).all())
        (torch.Size([5, 3, 1]), True)
    """
    u = torch.rand((*shape, *low.shape), generator=generator, device=low.device, dtype=low.dtype)
    return low + (high - low) * u


def to_unit_interval(action: Tensor, low: Tensor, high: Tensor) -> Tensor:
    """Maps actions from ``[low, high]`` to ``[-1, 1]``.

    Examples:
        >>> import torch
        >>> from torchrl_offline.objectives.common import to_unit_interval
        >>> to_unit_interval(torch.tensor([2.0, 0.0]), torch.tensor(-2.0), torch.tensor(2.0))
        tensor([1., 0.])
    """
    return (action - low) * (2.0 / (high - low)) - 1.0


def from_unit_interval(action: Tensor, low: Tensor, high: Tensor) -> Tensor:
    """Maps actions from ``[-1, 1]`` to ``[low, high]``.

    Examples:
        >>> import torch
        >>> from torchrl_offline.objectives.common import from_unit_interval
        >>> from_unit_interval(torch.tensor([1.0, 0.0]), torch.tensor(-2.0), torch.tensor(2.0))
        tensor([2., 0.])
    """
    return low + (action + 1.0) * (0.5 * (high - low))


def logged_action_value(
    q: Tensor,
    action: Tensor,
    *,
    one_hot: bool,
    action_key: NestedKey = "action",
    check_inputs: bool = True,
    ensemble_dims: int = 0,
) -> Tensor:
    """The value of the logged discrete action in a critic's per-action output.

    Args:
        q (Tensor): the critic's values ``[*ensemble, *batch, n_actions]``, with
            ``ensemble_dims`` leading dimensions that the action does not have.
        action (Tensor): the logged actions: one-hot ``[*batch, n_actions]``, or indices
            ``[*batch]`` or ``[*batch, 1]``.

    Keyword Args:
        one_hot (bool): whether ``action`` is one-hot (else integer indices).
        action_key (NestedKey, optional): the batch key of the action, named in errors.
            Defaults to ``"action"``.
        check_inputs (bool, optional): range-check indices against ``[0, n_actions)``.
            Defaults to ``True`` (the one-hot width is always checked).
        ensemble_dims (int, optional): leading dimensions of ``q`` (e.g. a critic
            ensemble). Defaults to ``0``.

    Returns:
        Tensor: ``[*ensemble, *batch]``.

    Raises:
        OfflineLossError: if a one-hot action's width is not the critic's number of
            actions, or an index is outside ``[0, n_actions)`` (naming the first bad flat
            batch index).

    Examples:
        >>> import torch
        >>> from torchrl_offline.objectives.common import logged_action_value
        >>> q = torch.tensor([[[1.0, 2.0, 3.0], [4.0, 5.0, 6.0]]])  # one critic, 2 states
        >>> logged_action_value(q, torch.tensor([[2], [0]]), one_hot=False, ensemble_dims=1)
        tensor([[3., 4.]])
        >>> logged_action_value(q[0], torch.tensor([[0, 1, 0], [0, 0, 1]]), one_hot=True)
        tensor([2., 6.])
    """
    n_actions = q.shape[-1]
    if one_hot:
        if action.shape[-1] != n_actions:
            raise OfflineLossError(
                f"one-hot key {action_key!r} has {action.shape[-1]} entries but "
                f"the critic outputs {n_actions} action values"
            )
        return (q * action.to(q.dtype)).sum(-1)
    index = action.long()
    if index.ndim == q.ndim - ensemble_dims:  # [*batch, 1] index
        index = index.squeeze(-1)
    if check_inputs:
        bad = (index < 0) | (index >= n_actions)
        if bool(bad.any()):
            first = int(bad.reshape(-1).nonzero()[0, 0])
            raise OfflineLossError(
                f"key {action_key!r} holds an action index outside "
                f"[0, {n_actions}) (first at flat batch index {first})"
            )
    return q.gather(-1, index.expand(*q.shape[:-1]).unsqueeze(-1)).squeeze(-1)
