"""Fitting a :class:`~torchrl_offline.models.dynamics.DynamicsEnsemble` on offline data.

:func:`fit_dynamics` follows MBPO's model training (Janner et al., 2019): a held-out
split of the transitions (``holdout``, at most ``max_holdout`` rows), each member
trained on its own bootstrap of the rest (drawn with replacement, so members see
different data), Adam on :class:`~torchrl_offline.models.dynamics_loss.DynamicsLoss`,
early stopping when no member improved its held-out MSE by more than 1% for
``patience`` epochs, each member's best weights restored, and the ``num_elites``
members with the lowest held-out MSE kept as elites.
"""

from __future__ import annotations

import time
import warnings
from collections.abc import Sequence
from dataclasses import dataclass, field

import torch
from tensordict import TensorDictBase
from torch import Tensor
from torchrl.data import ReplayBuffer

from torchrl_offline.data.stats import stored_transitions
from torchrl_offline.models.dynamics import DynamicsEnsemble
from torchrl_offline.models.dynamics_loss import DynamicsLoss
from torchrl_offline.models.errors import ModelError, TerminationWarning
from torchrl_offline.models.quality import termination_rates
from torchrl_offline.models.termination import TerminationFn

__all__ = ["FittedDynamics", "check_model_data", "fit_dynamics"]

_REQUIRED = ("observation", "action", ("next", "observation"))


@dataclass
class FittedDynamics:
    """A fitted ensemble and how it was fitted.

    Attributes:
        model: the :class:`DynamicsEnsemble` (best weights of each member, elites set).
        holdout_mse: mean held-out MSE of the elites (targets normalised by the data's
            standard deviation, so ``1.0`` is as good as predicting the mean).
        member_holdout_mse: ``[E]`` held-out MSE of every member.
        updates: gradient updates made.
        epochs: epochs over the members' bootstraps.
        seconds: wall-clock time of the fit.
        holdout_indices: the held-out transitions' indices in the dataset.
        history: the elites-to-be's mean held-out MSE after each epoch.
        termination: a learned classifier's held-out
            :func:`~torchrl_offline.models.quality.termination_rates` (recall, false
            alarms) and the ``pos_weight`` it was fitted with; ``{}`` with a known
            termination function.
    """

    model: DynamicsEnsemble
    holdout_mse: float
    member_holdout_mse: Tensor
    updates: int
    epochs: int
    seconds: float
    holdout_indices: Tensor
    history: list[float] = field(default_factory=list)
    termination: dict[str, float] = field(default_factory=dict)


def _key_name(key) -> str:
    return repr(key) if isinstance(key, str) else repr(tuple(key))


def check_model_data(td: TensorDictBase, *, termination_fn=None) -> None:
    """Refuses transitions a dynamics model cannot learn from, naming the key.

    Raises:
        ModelError: a missing observation, action, next observation or reward; no
            ``("next", "terminated")`` and no termination function; integer (discrete)
            actions; NaN or inf (with the first bad index).
    """
    keys = set(td.keys(True, True))
    for key in _REQUIRED:
        if key not in keys:
            raise ModelError(
                f"a dynamics model needs {_key_name(key)} in the data; it is missing",
                field=str(key),
            )
    if ("next", "reward") not in keys:
        raise ModelError(
            "the data have no ('next', 'reward'): the model cannot learn to predict rewards "
            "(add the rewards to the dataset)",
            field="('next', 'reward')",
        )
    if termination_fn is None and ("next", "terminated") not in keys:
        raise ModelError(
            "the data have no ('next', 'terminated') and no termination_fn was given: the "
            "model cannot learn when episodes end (add the flags, or pass a termination "
            "function, e.g. termination_fn='hopper')",
            field="('next', 'terminated')",
        )
    if not td.get("action").dtype.is_floating_point:
        raise ModelError(
            "dynamics models take continuous actions; 'action' holds "
            f"{td.get('action').dtype} values",
            field="action",
        )
    for key in (*_REQUIRED, ("next", "reward")):
        value = td.get(key)
        bad = ~torch.isfinite(value.reshape(value.shape[0], -1)).all(-1)
        if bool(bad.any()):
            index = int(bad.nonzero()[0, 0])
            raise ModelError(
                f"{_key_name(key)} holds NaN or inf, first at transition {index}",
                field=str(key),
                index=index,
            )


def fit_dynamics(
    dataset: ReplayBuffer | TensorDictBase,
    *,
    num_members: int = 7,
    num_elites: int = 5,
    hidden_sizes: Sequence[int] = (200, 200, 200, 200),
    holdout: float = 0.1,
    max_holdout: int = 1000,
    batch_size: int = 256,
    lr: float = 1e-3,
    weight_decay: bool | Sequence[float] = True,
    max_epochs: int | None = None,
    max_updates: int | None = None,
    patience: int = 5,
    termination_fn: str | TerminationFn | None = None,
    termination_weight: float | str | None = "balanced",
    seed: int = 0,
    device: torch.device | str | None = None,
) -> FittedDynamics:
    """Fits a dynamics ensemble on the transitions of ``dataset``.

    Args:
        dataset: a replay buffer of the data layer or a TensorDict of transitions with
            ``observation``, ``action``, ``("next", "observation")``,
            ``("next", "reward")`` and (without ``termination_fn``)
            ``("next", "terminated")``.

    Keyword Args:
        num_members, num_elites, hidden_sizes: the ensemble (MOPO's 7, 5, 4x200).
        holdout: fraction of the transitions held out for early stopping and elite
            selection (at most ``max_holdout`` rows).
        batch_size: rows per member per update. lr: Adam's learning rate.
        weight_decay: ``True`` for MBPO's per-layer L2, ``False`` for none, or one
            coefficient per layer.
        max_epochs, max_updates: caps on the fit (``None``: early stopping only).
        patience: epochs without a 1% improvement of any member before stopping (MBPO: 5).
        termination_fn: a task name or callable (see
            :mod:`~torchrl_offline.models.termination`); ``None`` learns a classifier.
        termination_weight: the learned classifier's weight of terminal rows
            (:class:`~torchrl_offline.models.dynamics_loss.DynamicsLoss`'s
            ``termination_pos_weight``): ``"balanced"`` (default) weighs them by the
            training split's ratio of other rows to terminal ones, so that rare episode
            ends count as much as the rest (unweighted, a Hopper model called 11% of its
            held-out falls terminal; balanced, most of them); a number; or ``None``
            (unweighted). A classifier that still finds fewer than half of the held-out
            episode ends warns (:class:`~torchrl_offline.models.errors.TerminationWarning`).
        seed: seeds the initialisation, the split, the bootstraps and the minibatches.
        device: where to fit (default: the data's).

    Returns:
        A :class:`FittedDynamics`. The normalisers come from the training split; the
        model's observation range (:meth:`DynamicsEnsemble.range_excess`) from every
        observation and next observation of ``dataset``.

    Raises:
        ModelError: data the model cannot learn from (see :func:`check_model_data`).

    Examples:
        >>> import torch
        >>> from tensordict import TensorDict
        >>> from torchrl_offline.models.fit import fit_dynamics
        >>> g = torch.Generator().manual_seed(0)
        >>> obs, act = torch.randn(512, 2, generator=g), torch.rand(512, 1, generator=g)
        >>> data = TensorDict({"observation": obs, "action": act,
        ...     ("next", "observation"): obs + 0.1 * act,
        ...     ("next", "reward"): act.clone()}, [512])
        >>> fitted = fit_dynamics(data, num_members=3, num_elites=2, hidden_sizes=(32,),
        ...                       termination_fn="pendulum", max_epochs=5, seed=0)
        >>> fitted.model.elites.shape, fitted.epochs, fitted.updates
        (torch.Size([2]), 5, 10)
    """
    start = time.perf_counter()
    td = stored_transitions(dataset)
    check_model_data(td, termination_fn=termination_fn)
    keys = [*_REQUIRED, ("next", "reward")]
    if termination_fn is None:
        keys.append(("next", "terminated"))
    td = td.select(*keys).to_tensordict()
    if device is not None:
        td = td.to(device)
    for key in (*_REQUIRED, ("next", "reward")):
        td.set(key, td.get(key).float())
    reward = td.get(("next", "reward"))
    td.set(("next", "reward"), reward.reshape(td.shape[0], 1))
    n = td.shape[0]
    n_hold = min(max_holdout, round(holdout * n)) if holdout > 0 else 0
    if n - n_hold < 2:
        raise ModelError(f"too few transitions to fit a model: {n}", field="dataset")
    generator = torch.Generator(device=td.device or "cpu").manual_seed(seed)
    perm = torch.randperm(n, generator=generator, device=td.device)
    hold_idx, train_idx = perm[:n_hold], perm[n_hold:]
    train, hold = td[train_idx], td[hold_idx]

    decays = None if isinstance(weight_decay, bool) else tuple(weight_decay)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = DynamicsEnsemble(
            td.get("observation").shape[-1],
            td.get("action").shape[-1],
            num_members=num_members,
            num_elites=num_elites,
            hidden_sizes=hidden_sizes,
            weight_decays=decays,
            termination_fn=termination_fn,
            learn_termination=termination_fn is None,
        ).to(td.device or "cpu")
    model.set_normalization(
        train.get("observation"),
        train.get("action"),
        train.get(("next", "observation")),
        train.get(("next", "reward")),
    )
    # the range of the data, held-out rows and last states of episodes included
    model.set_observation_range(torch.cat([td.get("observation"), td.get(("next", "observation"))]))
    pos_weight = _termination_weight(termination_weight, train) if model.learn_termination else None
    loss = DynamicsLoss(
        model, weight_decay=weight_decay is not False, termination_pos_weight=pos_weight
    )
    optim = torch.optim.Adam(model.parameters(), lr=lr)
    n_train = train.shape[0]
    bootstrap = torch.randint(
        n_train, (num_members, n_train), generator=generator, device=td.device
    )
    member_params = [p for p in model.parameters() if p.ndim == 3]  # [E, ...] of each layer
    best_params = [p.detach().clone() for p in member_params]
    best = torch.full((num_members,), float("inf"), device=model.elites.device)
    history: list[float] = []
    updates = epochs = stale = 0
    while True:
        order = torch.rand(num_members, n_train, generator=generator, device=td.device)
        rows_all = bootstrap.gather(1, order.argsort(-1))
        for begin in range(0, n_train, batch_size):
            batch = train[rows_all[:, begin : begin + batch_size]]
            out = loss(batch)
            total = out["loss_dynamics"] + out["loss_bounds"] + out["loss_weight_decay"]
            if "loss_termination" in out.keys():
                total = total + out["loss_termination"]
            optim.zero_grad(set_to_none=True)
            total.backward()
            optim.step()
            updates += 1
            if max_updates is not None and updates >= max_updates:
                break
        epochs += 1
        mse = _holdout_mse(loss, hold if n_hold else train[:1000])
        improved = (best - mse) / best.clamp_min(1e-12) > 0.01
        improved |= torch.isinf(best)
        best = torch.where(improved, mse, best)
        for p, saved in zip(member_params, best_params):
            saved[improved] = p.detach()[improved]
        history.append(float(best.sort().values[:num_elites].mean()))
        stale = 0 if bool(improved.any()) else stale + 1
        if stale >= patience:
            break
        if max_epochs is not None and epochs >= max_epochs:
            break
        if max_updates is not None and updates >= max_updates:
            break
    with torch.no_grad():
        for p, saved in zip(member_params, best_params):
            p.copy_(saved)
    member_mse = _holdout_mse(loss, hold if n_hold else train[:1000])
    elites = member_mse.argsort()[:num_elites].sort().values
    model.elites.copy_(elites)
    termination = (
        _check_termination(model, hold if n_hold else train[:1000], pos_weight)
        if model.learn_termination
        else {}
    )
    return FittedDynamics(
        model=model,
        holdout_mse=float(member_mse[elites].mean()),
        member_holdout_mse=member_mse.cpu(),
        updates=updates,
        epochs=epochs,
        seconds=time.perf_counter() - start,
        holdout_indices=hold_idx.cpu(),
        history=history,
        termination=termination,
    )


def _termination_weight(weight: float | str | None, train: TensorDictBase) -> float | None:
    """The classifier's ``pos_weight``: ``"balanced"`` is the training split's ratio of
    non-terminal to terminal rows (``None`` when it has none of either)."""
    if weight is None or not isinstance(weight, str):
        return None if weight is None else float(weight)
    if weight != "balanced":
        raise ValueError(f"termination_weight must be 'balanced', a number or None, got {weight!r}")
    terminal = int(train.get(("next", "terminated")).reshape(-1).bool().sum())
    others = train.shape[0] - terminal
    return others / terminal if terminal and others else None


def _check_termination(
    model: DynamicsEnsemble, hold: TensorDictBase, pos_weight: float | None
) -> dict[str, float]:
    """The learned classifier's held-out rates; warns when it misses most episode ends."""
    rates = termination_rates(model, hold)
    terminal = int(hold.get(("next", "terminated")).reshape(-1).bool().sum())
    recall = rates.get("termination_recall", float("nan"))
    if terminal and recall < 0.5:
        warnings.warn(
            TerminationWarning(
                f"the learned termination classifier calls {recall:.0%} of the {terminal} "
                "held-out terminal transitions terminal: rollouts in this model will go on "
                "past most episode ends. Pass the task's termination function "
                "(termination_fn=..., e.g. 'hopper') if it is known, or fit longer.",
                recall=recall,
                terminal=terminal,
            ),
            stacklevel=3,
        )
    return {**rates, "held_out_terminal": terminal, "pos_weight": pos_weight or 1.0}


@torch.no_grad()
def _holdout_mse(loss: DynamicsLoss, hold: TensorDictBase) -> Tensor:
    """``[E]`` normalised MSE of every member on the held-out rows."""
    _, mse, _ = loss.member_terms(hold)
    return mse
