"""Input and output checks of the offline losses, and their per-update counter.

* :class:`OfflineLossError`, the exception raised for bad input (missing keys,
  non-finite values, specs that do not match the networks, non-finite losses);
* :func:`check_batch`, which names the first missing key or the first key holding
  NaN/inf together with the first bad index (the losses check presence up front and
  values together with the losses, in one host read per update);
* :func:`check_finite_losses`, which reports a non-finite loss term with its name and
  the update step;
* :func:`count_update`, the update counter every loss steps once per ``forward``,
  which runs the finiteness check of that update;
* :func:`check_output_dim`, a network's output size against its spec.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence

import torch
from tensordict import TensorDictBase
from tensordict.utils import NestedKey
from torch import Tensor, nn

__all__ = [
    "OfflineLossError",
    "check_batch",
    "check_finite_losses",
    "check_output_dim",
    "check_reduction",
    "count_update",
]


class OfflineLossError(ValueError):
    """Bad input to an offline RL loss.

    Raised for a missing key, NaN/inf in a batch, a spec that does not match a
    network, or a non-finite loss term during training. The message names the key
    (or loss term) and, where it applies, the first bad index or the update step.

    Examples:
        >>> from torchrl_offline.objectives.common import OfflineLossError
        >>> issubclass(OfflineLossError, ValueError)
        True
    """


def _key_str(key: NestedKey) -> str:
    if isinstance(key, tuple):
        return repr(key) if len(key) > 1 else repr(key[0])
    return repr(key)


def _first_bad_index(bad: Tensor, batch_ndim: int) -> tuple[int, ...]:
    """Index (over the batch dims) of the first ``True`` entry of ``bad``."""
    if batch_ndim and bad.ndim > batch_ndim:
        bad = bad.flatten(batch_ndim).any(-1)
    elif not batch_ndim:
        return ()
    flat = int(bad.reshape(-1).nonzero()[0, 0])
    return tuple(int(i) for i in torch.unravel_index(torch.tensor(flat), bad.shape))


def _probably_all_finite(tensors: Sequence[Tensor]) -> bool:
    """``True`` if every entry of every tensor is finite, with one reduction per tensor.

    The sum of all entries is NaN or inf whenever one entry is (NaN propagates,
    ``inf - inf`` is NaN), so a finite sum proves the whole batch finite. A non-finite
    sum only means "look closer": large finite values can also overflow it, so callers
    then check tensor by tensor. This is one reduction per tensor and one host read per
    update instead of an ``isfinite`` pass, an ``all`` and a stack per tensor.
    """
    sums = [t.sum() for t in tensors]
    total = sums[0] if len(sums) == 1 else torch.stack(sums).sum()
    return math.isfinite(total.item())


@torch.compiler.disable
def check_batch(
    tensordict: TensorDictBase, keys: Iterable[NestedKey], *, finite: bool = True
) -> None:
    """Checks that ``tensordict`` holds every key in ``keys`` with finite values.

    Integer and boolean entries are only checked for presence. Floating entries must
    hold no NaN or inf.

    The losses call this with ``finite=False`` before computing anything (presence
    only: no tensor work) and hand the batch to :func:`check_finite_losses` (via
    :func:`count_update`), which sums the batch's floating entries together with the
    loss terms and reads the total back once per update; only when it is not finite
    are the batch (first) and the loss terms searched for the culprit.

    Args:
        tensordict (TensorDictBase): the batch to check.
        keys (iterable of NestedKey): keys the loss reads.

    Keyword Args:
        finite (bool, optional): also check that floating entries are finite.
            Defaults to ``True``.

    Raises:
        OfflineLossError: naming the first missing key, or the first key holding a
            non-finite value together with the first bad batch index.

    Examples:
        >>> import torch
        >>> from tensordict import TensorDict
        >>> from torchrl_offline.objectives.common import OfflineLossError, check_batch
        >>> td = TensorDict({"observation": torch.zeros(3, 2)}, [3])
        >>> check_batch(td, ["observation"])
        >>> td["observation"][1, 0] = float("nan")
        >>> try:
        ...     check_batch(td, ["observation"])
        ... except OfflineLossError as err:
        ...     print(err)
        batch key 'observation' holds NaN/inf (first at batch index (1,))
    """
    floats = []
    for key in keys:
        value = tensordict.get(key, None)
        if value is None:
            raise OfflineLossError(
                f"batch is missing the key {_key_str(key)} "
                f"(present: {sorted(map(str, tensordict.keys(True, True)))})"
            )
        if finite and isinstance(value, Tensor) and value.is_floating_point():
            floats.append((key, value))
    if not floats or _probably_all_finite([v for _, v in floats]):
        return
    for key, value in floats:
        bad = ~torch.isfinite(value)
        if bool(bad.any()):
            index = _first_bad_index(bad, tensordict.batch_dims)
            raise OfflineLossError(
                f"batch key {_key_str(key)} holds NaN/inf (first at batch index {index})"
            )


@torch.compiler.disable
def check_finite_losses(
    losses: TensorDictBase,
    step: int | None = None,
    *,
    batch: TensorDictBase | None = None,
    batch_keys: Iterable[NestedKey] = (),
) -> None:
    """Raises if any ``loss_*`` entry of ``losses`` is NaN or inf.

    Args:
        losses (TensorDictBase): the output of a loss module.
        step (int, optional): the update counter, quoted in the message.

    Keyword Args:
        batch (TensorDictBase, optional): the batch the losses were computed from.
            Its floating ``batch_keys`` are checked in the same single host read, and
            reported first (:func:`check_batch`), so that bad input is reported as such
            even where the losses do not show it (masked rows, saturating activations).
        batch_keys (iterable of NestedKey, optional): the keys the loss read.

    Raises:
        OfflineLossError: naming the batch key holding the first NaN/inf (when
            ``batch`` is given and holds one), else the first non-finite loss term
            and the step.

    Examples:
        >>> import torch
        >>> from tensordict import TensorDict
        >>> from torchrl_offline.objectives.common import check_finite_losses
        >>> check_finite_losses(TensorDict({"loss_actor": torch.tensor(1.0)}), step=3)
        >>> try:
        ...     check_finite_losses(TensorDict({"loss_actor": torch.tensor(float("inf"))}), 3)
        ... except ValueError as err:
        ...     print(err)
        non-finite loss term 'loss_actor' at update step 3
    """
    items = [(k, v) for k, v in losses.items() if k.startswith("loss_") and isinstance(v, Tensor)]
    values = [v.detach() for _, v in items]
    if batch is not None:
        # the batch goes into the same single read: a NaN/inf can be hidden from the losses
        # (masked rows, saturating activations, casts to int) and still poison gradients
        for key in batch_keys:
            value = batch.get(key, None)
            if isinstance(value, Tensor) and value.is_floating_point():
                values.append(value)
    if not values or _probably_all_finite(values):
        return
    if batch is not None:
        check_batch(batch, batch_keys)
    for key, value in items:
        if not bool(torch.isfinite(value.detach()).all()):
            where = "" if step is None else f" at update step {step}"
            raise OfflineLossError(f"non-finite loss term {key!r}{where}")


@torch.compiler.disable
def count_update(
    loss: nn.Module,
    counter: str,
    losses: TensorDictBase,
    *,
    check: bool | None = None,
    batch: TensorDictBase | None = None,
    batch_keys: Iterable[NestedKey] | None = None,
) -> int:
    """Adds one to the integer attribute ``counter`` of ``loss``, then checks ``losses``.

    Kept out of ``torch.compile`` graphs (like the checks themselves, which read one
    value back to the host): a traced ``self.n += 1`` would make the compiled loss
    guard on, and recompile for, every new value of the counter.

    Args:
        loss (nn.Module): the loss module holding the counter.
        counter (str): the attribute name, e.g. ``"_num_updates"``.
        losses (TensorDictBase): the loss output, checked with
            :func:`check_finite_losses` when ``check`` is true.

    Keyword Args:
        check (bool, optional): run the finiteness check. Defaults to the loss's
            ``check_inputs`` attribute, ``True`` if it has none.
        batch (TensorDictBase, optional): the batch, whose floating ``batch_keys`` are
            checked for NaN/inf in the same host read as the losses (see
            :func:`check_finite_losses`).
        batch_keys (iterable of NestedKey, optional): the keys the loss read. Defaults
            to the loss's ``in_keys`` when ``batch`` is given.

    Returns:
        int: the new counter value.

    Examples:
        >>> import torch
        >>> from tensordict import TensorDict
        >>> from torchrl_offline.objectives.common import count_update
        >>> module = torch.nn.Module()
        >>> module._num_updates = 0
        >>> count_update(module, "_num_updates", TensorDict({"loss_a": torch.tensor(1.0)}))
        1
    """
    step = getattr(loss, counter) + 1
    setattr(loss, counter, step)
    if check is None:
        check = getattr(loss, "check_inputs", True)
    if check:
        if batch is not None and batch_keys is None:
            batch_keys = loss.in_keys
        check_finite_losses(losses, step, batch=batch, batch_keys=batch_keys or ())
    return step


def check_output_dim(name: str, got: int, expected: int, what: str = "action") -> None:
    """Raises :class:`OfflineLossError` if a network's output size ``got`` != ``expected``.

    Examples:
        >>> from torchrl_offline.objectives.common import check_output_dim
        >>> check_output_dim("actor_network", 3, 3)
        >>> try:
        ...     check_output_dim("actor_network", 2, 3)
        ... except ValueError as err:
        ...     print(err)
        actor_network produces 2 action dims but the action spec has 3
    """
    if got != expected:
        raise OfflineLossError(
            f"{name} produces {got} {what} dims but the {what} spec has {expected}"
        )


def check_reduction(reduction: str | None, loss_function: str | None = None) -> str:
    """The loss's reduction (``"mean"`` when ``None``), after checking it and, if given,
    the element-wise regression ``loss_function`` (``"l2"``, ``"l1"``, ``"smooth_l1"``).

    Examples:
        >>> from torchrl_offline.objectives._checks import check_reduction
        >>> check_reduction(None, "l2")
        'mean'
        >>> check_reduction("max")
        Traceback (most recent call last):
        ...
        ValueError: reduction must be 'none', 'mean' or 'sum', got 'max'
    """
    reduction = "mean" if reduction is None else reduction
    if reduction not in ("none", "mean", "sum"):
        raise ValueError(f"reduction must be 'none', 'mean' or 'sum', got {reduction!r}")
    if loss_function is not None and loss_function not in ("l2", "l1", "smooth_l1"):
        raise ValueError(f"unknown loss_function {loss_function!r}")
    return reduction
