"""Helpers shared by the offline RL losses.

This module holds what every loss in :mod:`torchrl_offline.objectives` needs:

* :class:`OfflineLossError`, the exception raised for bad input (missing keys,
  non-finite values, specs that do not match the networks, non-finite losses);
* :func:`check_batch`, which names the first missing key or the first key holding
  NaN/inf together with the first bad index (the losses check presence up front and
  values together with the losses, in one host read per update);
* :func:`ensemble_forward` / :func:`ensemble_apply`, one batched evaluation of an
  ensemble of critics whose parameters are stacked along a leading dimension (a
  ``torch.baddbmm`` fast path for plain MLP critics, ``torch.vmap`` otherwise);
* :func:`module_apply`, a call of a (single) network with an explicit set of
  parameters that avoids swapping parameters in and out of the module when the
  network is a plain MLP;
* :func:`action_bounds`, :func:`uniform_actions`, :func:`to_unit_interval` and
  :func:`from_unit_interval`, action-range helpers that read ``low``/``high`` from a
  TorchRL spec (never a silent ``[-1, 1]``);
* :func:`check_finite_losses`, which reports a non-finite loss term with its name
  and the update step.
"""

from __future__ import annotations

import contextlib
import math
import weakref
from collections.abc import Iterable, Sequence

import torch
from tensordict import TensorDict, TensorDictBase, TensorDictParams
from tensordict.nn import TensorDictModuleBase
from tensordict.utils import NestedKey
from torch import Tensor, nn

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
    "make_loss_value_estimator",
    "module_apply",
    "next_key",
    "tanh_normal_log_prob",
    "to_unit_interval",
    "uniform_actions",
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


# ----------------------------------------------------------------------------- networks

_ELEMENTWISE = (
    nn.ReLU,
    nn.Tanh,
    nn.ELU,
    nn.SiLU,
    nn.LeakyReLU,
    nn.GELU,
    nn.Identity,
    nn.Sigmoid,
    nn.Softplus,
    nn.Mish,
)

# A plan is a list of ("linear", weight_key, bias_key | None) and ("act", module) steps.
_Plan = list[tuple]
_PLANS: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()
_NO_PLAN = object()


def _mlp_plan(module: TensorDictModuleBase) -> _Plan | None:
    """A layer plan if ``module`` is a TensorDictModule around a plain MLP, else None."""
    cached = _PLANS.get(module, None)
    if cached is not None:
        return None if cached is _NO_PLAN else cached
    plan = _build_plan(module)
    _PLANS[module] = _NO_PLAN if plan is None else plan
    return plan


def _is_plain_sequential(module: nn.Module) -> bool:
    from torchrl.modules import MLP

    if type(module) is nn.Sequential:
        return True
    return isinstance(module, MLP) and type(module).forward is MLP.forward


def _layers_plan(inner: nn.Module, prefix: tuple) -> _Plan | None:
    """Flattens nested plain ``nn.Sequential``/``MLP`` containers into a layer plan.

    Accepts ``nn.Linear``, elementwise activations and, as the very last layer, a
    ``NormalParamExtractor`` (whose output is a ``(loc, scale)`` tuple).
    """
    from tensordict.nn import NormalParamExtractor

    flat: list[tuple[nn.Module, tuple]] = []

    def walk(module: nn.Module, key: tuple) -> None:
        if _is_plain_sequential(module):
            for name, child in module.named_children():
                walk(child, (*key, name))
        else:
            flat.append((module, key))

    walk(inner, prefix)
    plan: _Plan = []
    for i, (child, key) in enumerate(flat):
        if type(child) is nn.Linear:
            bias = (*key, "bias") if child.bias is not None else None
            plan.append(("linear", (*key, "weight"), bias))
        elif type(child) in _ELEMENTWISE:
            plan.append(("act", child))
        elif type(child) is NormalParamExtractor and i == len(flat) - 1:
            if any(True for _ in child.parameters()):
                return None
            plan.append(("act", child))
        else:
            return None
    if not plan or plan[0][0] != "linear":
        return None
    return plan


def _build_plan(module) -> _Plan | None:
    from torchrl.modules import MLP

    inner = getattr(module, "module", None)
    if inner is None or len(getattr(module, "out_keys", ())) != 1:
        return None
    if getattr(module, "safe", False) or getattr(module, "out_to_in_map", False):
        return None
    if not _is_plain_sequential(inner):
        return None
    if not isinstance(inner, MLP) and len(module.in_keys) != 1:
        return None
    plan = _layers_plan(inner, ("module",))
    if plan is None or (plan[-1][0] == "act" and not isinstance(plan[-1][1], _ELEMENTWISE)):
        return None
    return plan


_ACTOR_PLANS: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def _actor_plan(actor) -> tuple | None:
    """``(plan, in_key, param_keys, dist_module)`` for a ``ProbabilisticActor`` made of one
    plain MLP ``TensorDictModule`` (optionally ending in ``NormalParamExtractor``) followed
    by its distribution module; ``None`` for anything else."""
    cached = _ACTOR_PLANS.get(actor, None)
    if cached is not None:
        return None if cached is _NO_PLAN else cached
    plan = _build_actor_plan(actor)
    _ACTOR_PLANS[actor] = _NO_PLAN if plan is None else plan
    return plan


def _build_actor_plan(actor) -> tuple | None:
    from tensordict.nn import (
        ProbabilisticTensorDictModule,
        ProbabilisticTensorDictSequential,
        TensorDictModule,
    )

    if not isinstance(actor, ProbabilisticTensorDictSequential):
        return None
    modules = list(actor.module)
    if len(modules) != 2:
        return None
    det, prob = modules
    if type(prob).get_dist is not ProbabilisticTensorDictModule.get_dist:
        return None
    if not isinstance(det, TensorDictModule) or not isinstance(prob, ProbabilisticTensorDictModule):
        return None
    if getattr(det, "safe", False) or getattr(det, "out_to_in_map", False):
        return None
    if len(det.in_keys) != 1 or list(det.out_keys) != list(prob.in_keys):
        return None
    if not all(isinstance(k, str) for k in det.out_keys):
        return None
    inner = det.module
    if not _is_plain_sequential(inner):
        return None
    plan = _layers_plan(inner, ("module", "0", "module"))
    if plan is None:
        return None
    return plan, det.in_keys[0], list(det.out_keys), prob


def actor_distribution(actor, params: TensorDictBase, tensordict: TensorDictBase):
    """The action distribution of a ``ProbabilisticActor`` at the states in ``tensordict``.

    For the common actor shape (one plain MLP ``TensorDictModule``, optionally ending in
    a ``NormalParamExtractor``, followed by its distribution module) the parameters are
    used functionally and no tensordict is built; other actors are called through
    ``get_dist`` with ``params`` swapped in.

    Args:
        actor (ProbabilisticTensorDictSequential): the actor.
        params (TensorDictBase): its parameters, shaped like ``TensorDict.from_module(actor)``.
        tensordict (TensorDictBase): holds the actor's input keys.

    Returns:
        torch.distributions.Distribution

    Examples:
        >>> import torch
        >>> from tensordict import TensorDict
        >>> from tensordict.nn import NormalParamExtractor, TensorDictModule
        >>> from torchrl.modules import MLP, ProbabilisticActor, TanhNormal
        >>> from torchrl_offline.objectives.common import actor_distribution
        >>> actor = ProbabilisticActor(
        ...     TensorDictModule(torch.nn.Sequential(MLP(in_features=3, out_features=2,
        ...                      num_cells=[8]), NormalParamExtractor()),
        ...                      in_keys=["observation"], out_keys=["loc", "scale"]),
        ...     in_keys=["loc", "scale"], distribution_class=TanhNormal)
        >>> td = TensorDict({"observation": torch.randn(5, 3)}, [5])
        >>> dist = actor_distribution(actor, TensorDict.from_module(actor), td)
        >>> dist.log_prob(torch.zeros(5, 1)).shape
        torch.Size([5])
    """
    found = _actor_plan(actor)
    if found is not None:
        plan, in_key, out_keys, prob = found
        out = _plan_apply_single(plan, params, tensordict.get(in_key))
        if not isinstance(out, tuple):
            out = (out,)
        if len(out) == len(out_keys):
            return prob.get_dist(dict(zip(out_keys, out)))
    td = TensorDict({k: tensordict.get(k) for k in actor.in_keys}, batch_size=tensordict.batch_size)
    with params.to_module(actor, preserve_module_state=False):
        return actor.get_dist(td)


def _leaf(params: TensorDictBase, key: tuple) -> Tensor:
    """``params.get(key)`` without tensordict's per-call dispatch (hot path).

    The parameters are read afresh on every call (nothing is cached), straight from the
    nested dicts of a ``TensorDict`` or of the ``TensorDict`` a ``TensorDictParams``
    wraps: about 0.5 us instead of 3.5 us per tensor. Anything else goes through ``get``.
    """
    td = params._param_td if type(params) is TensorDictParams else params
    if type(td) is TensorDict:
        try:
            for k in key:
                td = td._tensordict[k]
        except (AttributeError, KeyError):
            return params.get(key)
        if isinstance(td, Tensor):
            return td
    return params.get(key)


def _plan_apply_single(plan: _Plan, params: TensorDictBase, x: Tensor) -> Tensor:
    for step in plan:
        if step[0] == "linear":
            bias = None if step[2] is None else _leaf(params, step[2])
            x = torch.nn.functional.linear(x, _leaf(params, step[1]), bias)
        else:
            x = step[1](x)
    return x


def _plan_apply_stacked(plan: _Plan, params: TensorDictBase, x: Tensor) -> Tensor:
    """``x`` is ``[M, in]``, shared by all members; returns ``[E, M, out]``.

    Each layer is one ``baddbmm`` over the stacked ``[E, out, in]`` weights. (A
    feature-major layout, ``baddbmm(b, W, h)``, avoids a strided copy of the weight
    gradients but measured slower here: 6.7 vs 5.3 ms forward+backward for twin 2x256
    critics at batch 256 on one CPU thread.)
    """
    fresh = False  # x is the output of a (b)addbmm, which its backward does not need
    for step in plan:
        if step[0] == "linear":
            weight = _leaf(params, step[1])  # [E, out, in]
            if x.ndim == 2:
                x = x.expand(weight.shape[0], *x.shape)
            if step[2] is None:
                x = torch.bmm(x, weight.transpose(1, 2))
            else:
                x = torch.baddbmm(_leaf(params, step[2]).unsqueeze(1), x, weight.transpose(1, 2))
            fresh = True
        elif fresh and type(step[1]) is nn.ReLU:
            x = torch.relu_(x)
            fresh = False
        else:
            x = step[1](x)
            fresh = False
    return x


def _inputs(module, tensordict: TensorDictBase) -> list[Tensor]:
    return [tensordict.get(key) for key in module.in_keys]


def _cat_inputs(inputs: Sequence[Tensor]) -> Tensor:
    if len(inputs) == 1:
        return inputs[0]
    batch = inputs[0].shape[:-1]
    if all(t.shape[:-1] == batch for t in inputs):  # the usual case: no broadcasting
        return torch.cat(inputs, -1)
    shape = torch.broadcast_shapes(*(t.shape[:-1] for t in inputs))
    return torch.cat([t.expand(*shape, t.shape[-1]) for t in inputs], -1)


def _vmap_call(
    module,
    stacked_params: TensorDictBase,
    tensordict: TensorDictBase,
    randomness: str,
    vectorize: bool = True,
) -> TensorDictBase:
    def call(params, td):
        with params.to_module(module, preserve_module_state=False):
            return module(td)

    if not vectorize:
        outs = [call(stacked_params[i], tensordict.copy()) for i in range(stacked_params.shape[0])]
        return torch.stack(outs)
    return torch.vmap(call, (0, None), randomness=randomness)(stacked_params, tensordict)


def ensemble_apply(
    module: TensorDictModuleBase,
    stacked_params: TensorDictBase,
    *inputs: Tensor,
    out_key: NestedKey | None = None,
    randomness: str = "different",
    vectorize: bool = True,
) -> Tensor:
    """Evaluates an ensemble of copies of ``module`` on shared inputs; returns a tensor.

    This is the hot-path variant of :func:`ensemble_forward`: ``inputs`` are the
    tensors for ``module.in_keys`` (in order) and the result is the single output of
    the module for every ensemble member, shaped ``[E, *batch, out]``.

    Args:
        module (TensorDictModuleBase): the critic (one output key).
        stacked_params (TensorDictBase): parameters with a leading ensemble dim ``E``,
            as made by ``LossModule.convert_to_functional(..., expand_dim=E)``.
        *inputs (Tensor): one tensor per ``module.in_keys`` entry, batch dims first.

    Keyword Args:
        out_key (NestedKey, optional): the output to return for modules with several
            outputs. Defaults to ``module.out_keys[0]``.
        randomness (str, optional): ``torch.vmap`` randomness for the generic path.
        vectorize (bool, optional): if ``False``, loop over the members instead of
            batching them (for debugging and reference). Defaults to ``True``.

    Returns:
        Tensor: shaped ``[E, *batch, out]``.

    Examples:
        >>> import torch
        >>> from tensordict import TensorDict
        >>> from torchrl.modules import MLP, ValueOperator
        >>> from torchrl_offline.objectives.common import ensemble_apply
        >>> import copy
        >>> critic = ValueOperator(MLP(in_features=5, out_features=1, num_cells=[8]),
        ...                        in_keys=["observation", "action"])
        >>> params = TensorDict.from_modules(critic, copy.deepcopy(critic), as_module=True)
        >>> ensemble_apply(critic, params, torch.randn(4, 3), torch.randn(4, 2)).shape
        torch.Size([2, 4, 1])
    """
    plan = _mlp_plan(module) if vectorize else None
    if plan is not None:
        x = _cat_inputs(inputs)
        batch = x.shape[:-1]
        out = _plan_apply_stacked(plan, stacked_params, x.reshape(-1, x.shape[-1]))
        return out.reshape(out.shape[0], *batch, out.shape[-1])
    batch = torch.broadcast_shapes(*(t.shape[:-1] for t in inputs))
    td = TensorDict(
        {k: t.expand(*batch, t.shape[-1]) for k, t in zip(module.in_keys, inputs)}, batch
    )
    out = _vmap_call(module, stacked_params, td, randomness, vectorize)
    return out.get(module.out_keys[0] if out_key is None else out_key)


def ensemble_forward(
    module: TensorDictModuleBase,
    stacked_params: TensorDictBase,
    tensordict: TensorDictBase,
    *,
    randomness: str = "different",
    vectorize: bool = True,
) -> TensorDictBase:
    """Evaluates an ensemble of copies of ``module`` in one batched computation.

    Equal (up to float rounding) to looping over the ensemble members and stacking
    their outputs. Plain MLP critics (a ``TensorDictModule`` around
    :class:`torchrl.modules.MLP` or an ``nn.Sequential`` of ``nn.Linear`` and
    elementwise activations) take a fast path of stacked ``torch.baddbmm`` calls;
    any other ``TensorDictModule`` is evaluated with ``torch.vmap``.

    Args:
        module (TensorDictModuleBase): the network (its own parameters are not used).
        stacked_params (TensorDictBase): parameters with a leading ensemble dim ``E``.
        tensordict (TensorDictBase): inputs, holding ``module.in_keys``.

    Keyword Args:
        randomness (str, optional): ``torch.vmap`` randomness for the generic path.
            Defaults to ``"different"``.
        vectorize (bool, optional): if ``False``, loop over the members and stack
            (the reference the batched paths are tested against). Defaults to ``True``.

    Returns:
        TensorDictBase: with batch size ``[E, *tensordict.batch_size]`` holding the
        module's output keys.

    Examples:
        >>> import torch
        >>> from tensordict import TensorDict
        >>> from torchrl.modules import MLP, ValueOperator
        >>> from torchrl_offline.objectives.common import ensemble_forward
        >>> import copy
        >>> critic = ValueOperator(MLP(in_features=5, out_features=1, num_cells=[8]),
        ...                        in_keys=["observation", "action"])
        >>> params = TensorDict.from_modules(critic, copy.deepcopy(critic), copy.deepcopy(critic),
        ...                                  as_module=True)
        >>> td = TensorDict({"observation": torch.randn(4, 3), "action": torch.randn(4, 2)}, [4])
        >>> ensemble_forward(critic, params, td)["state_action_value"].shape
        torch.Size([3, 4, 1])
    """
    plan = _mlp_plan(module) if vectorize else None
    if plan is not None:
        value = ensemble_apply(module, stacked_params, *_inputs(module, tensordict))
        return TensorDict(
            {module.out_keys[0]: value},
            batch_size=[value.shape[0], *tensordict.batch_size],
        )
    td = tensordict.select(*module.in_keys, strict=False)
    return _vmap_call(module, stacked_params, td, randomness, vectorize)


def module_apply(
    module: TensorDictModuleBase,
    params: TensorDictBase,
    *inputs: Tensor,
    out_key: NestedKey | None = None,
) -> Tensor:
    """Calls ``module`` with ``params`` on ``inputs`` and returns its single output.

    Plain MLPs are evaluated functionally (``F.linear`` with the given parameters);
    other modules get the parameters swapped in with ``params.to_module``.

    Args:
        module (TensorDictModuleBase): a network with one output key.
        params (TensorDictBase): parameters shaped like ``TensorDict.from_module(module)``.
        *inputs (Tensor): one tensor per ``module.in_keys`` entry.

    Keyword Args:
        out_key (NestedKey, optional): the output to return for modules with several
            outputs. Defaults to ``module.out_keys[0]``.

    Returns:
        Tensor: the module's output.

    Examples:
        >>> import torch
        >>> from tensordict import TensorDict
        >>> from torchrl.modules import MLP, ValueOperator
        >>> from torchrl_offline.objectives.common import module_apply
        >>> value = ValueOperator(MLP(in_features=3, out_features=1, num_cells=[8]),
        ...                       in_keys=["observation"])
        >>> params = TensorDict.from_module(value)
        >>> module_apply(value, params, torch.randn(4, 3)).shape
        torch.Size([4, 1])
    """
    plan = _mlp_plan(module)
    if plan is not None:
        return _plan_apply_single(plan, params, _cat_inputs(inputs))
    batch = torch.broadcast_shapes(*(t.shape[:-1] for t in inputs))
    td = TensorDict(
        {k: t.expand(*batch, t.shape[-1]) for k, t in zip(module.in_keys, inputs)}, batch
    )
    with params.to_module(module, preserve_module_state=False):
        return module(td).get(module.out_keys[0] if out_key is None else out_key)


_TANH_NORMAL_KWARGS = {"low", "high", "tanh_loc", "upscale", "event_dims", "safe_tanh"}


def tanh_normal_log_prob(
    actor,
    params: TensorDictBase,
    tensordict: TensorDictBase,
    action: Tensor,
    *,
    action_eps: float = 0.0,
    action_key: NestedKey = "action",
) -> Tensor | None:
    """Log-likelihood of ``action`` under a plain-MLP ``TanhNormal`` actor, or ``None``.

    For the actor shape of TorchRL's offline examples (one plain MLP with a
    ``NormalParamExtractor`` feeding :class:`~torchrl.modules.TanhNormal` with
    ``event_dims`` 1) the density is computed directly, ``sum_d [log N(atanh(x_d);
    loc_d, scale_d) - log(1 - x_d^2) - log((high_d - low_d) / 2)]`` with ``x`` the
    action mapped to ``[-1, 1]`` and clamped to ``[-1 + eps, 1 - eps]``, without building
    the distribution object. Returns ``None`` for any other actor (the caller then uses
    :func:`actor_distribution`).

    Raises:
        OfflineLossError: if ``action``'s shape does not match the actor's output.

    Examples:
        >>> import torch
        >>> from tensordict import TensorDict
        >>> from tensordict.nn import NormalParamExtractor, TensorDictModule
        >>> from torchrl.modules import MLP, ProbabilisticActor, TanhNormal
        >>> from torchrl_offline.objectives.common import tanh_normal_log_prob
        >>> actor = ProbabilisticActor(
        ...     TensorDictModule(torch.nn.Sequential(MLP(in_features=3, out_features=2,
        ...                      num_cells=[8]), NormalParamExtractor()),
        ...                      in_keys=["observation"], out_keys=["loc", "scale"]),
        ...     in_keys=["loc", "scale"], distribution_class=TanhNormal)
        >>> td = TensorDict({"observation": torch.randn(5, 3)}, [5])
        >>> params = TensorDict.from_module(actor)
        >>> lp = tanh_normal_log_prob(actor, params, td, torch.zeros(5, 1))
        >>> torch.allclose(lp, actor.get_dist(td).log_prob(torch.zeros(5, 1)))
        True
    """
    from torchrl.modules import TanhNormal

    found = _actor_plan(actor)
    if found is None:
        return None
    plan, in_key, out_keys, prob = found
    kwargs = dict(prob.distribution_kwargs)
    if prob.distribution_class is not TanhNormal or set(kwargs) - _TANH_NORMAL_KWARGS:
        return None
    if kwargs.get("event_dims", 1) != 1 or sorted(prob.dist_keys) != ["loc", "scale"]:
        return None
    out = _plan_apply_single(plan, params, tensordict.get(in_key))
    if not isinstance(out, tuple) or len(out) != 2:
        return None
    named = dict(zip(prob.dist_keys, (dict(zip(out_keys, out))[k] for k in prob.in_keys)))
    loc, scale = named["loc"], named["scale"]
    if tuple(action.shape) != tuple(loc.shape):
        raise OfflineLossError(
            f"key {_key_str(action_key)} has shape {tuple(action.shape)} but the actor's "
            f"distribution is over shape {tuple(loc.shape)}: the action spec or the actor's "
            "output size does not match the data"
        )
    if kwargs.get("tanh_loc", False):
        upscale = kwargs.get("upscale", 5.0)
        loc = upscale * torch.tanh(loc / upscale)
    low = torch.as_tensor(kwargs.get("low", -1.0), dtype=loc.dtype, device=loc.device)
    high = torch.as_tensor(kwargs.get("high", 1.0), dtype=loc.dtype, device=loc.device)
    eps = max(float(action_eps), torch.finfo(loc.dtype).eps)
    with contextlib.nullcontext() if action.requires_grad else torch.no_grad():
        # What depends on the action only (no graph for a logged action): the pre-tanh
        # action and the log-Jacobian of the squashing and affine maps, summed over dims.
        half = (high - low) / 2
        x = ((action - (high + low) / 2) / half).clamp(-1.0 + eps, 1.0 - eps)
        pre = torch.atanh(x)
        log_jacobian = (torch.log1p(-x.square()) + torch.log(half).expand_as(x)).sum(-1)
    z = (pre - loc) / scale
    log_normal = (z.square() * -0.5 - scale.log()).sum(-1)
    return log_normal - (log_jacobian + 0.5 * math.log(2 * math.pi) * loc.shape[-1])


# ----------------------------------------------------------------------------- actions


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


def next_key(key: NestedKey) -> tuple[str, ...]:
    """The key of ``key`` under ``"next"``, flattened: ``"reward"`` -> ``("next", "reward")``.

    Examples:
        >>> from torchrl_offline.objectives.common import next_key
        >>> next_key("reward"), next_key(("agent", "obs"))
        (('next', 'reward'), ('next', 'agent', 'obs'))
    """
    return ("next", *key) if isinstance(key, tuple) else ("next", key)
