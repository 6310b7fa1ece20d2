"""Models of the expected reward of a one-step decision, for the direct method and the DR family.

On a log of one-step decisions (context ``x``, action ``a``, optional slot ``k``, reward
``r``) the direct method needs :math:`\\hat r(x, a, k) \\approx E[r \\mid x, a, k]` for every
action, not only the logged one. :func:`fit_reward_model` fits one of three fast models and
returns a :class:`RewardRegression` whose :meth:`~RewardRegression.predict` gives all
actions at once (``[rows, num_actions]``):

- ``"ridge"``: least squares with an L2 penalty, in closed form, on the features
  ``[1, x, onehot(a), onehot(k), onehot(a) * x]`` (a linear model per action sharing a
  common part; contexts standardised first; the cost grows linearly with the actions);
- ``"logistic"``: the same features through a sigmoid, for rewards in ``[0, 1]`` (clicks),
  fitted by a few L-BFGS steps;
- ``"mlp"``: a small network ``[x, onehot(k)] -> one output per action`` trained on the
  logged action's output, with early stopping on a held-out split.

:func:`cross_fit_rewards` gives each row a prediction from a model fitted on the other
folds (cross-fitting, Chernozhukov et al. 2018), as doubly robust estimators need so that
the model's overfitting on a row does not leak into that row's correction.
"""

from __future__ import annotations

import copy
import math
from typing import Literal

import torch
from torch import nn

from torchrl_offline.ope.decision_policies import _check_range
from torchrl_offline.ope.result import OPEError

__all__ = ["REWARD_MODELS", "RewardRegression", "cross_fit_rewards", "fit_reward_model"]

#: The kinds of reward model :func:`fit_reward_model` fits.
REWARD_MODELS = ("ridge", "logistic", "mlp")
RewardModelKind = Literal["ridge", "logistic", "mlp"]

_CHUNK = 65536


class RewardRegression(nn.Module):
    """A fitted model of the expected reward of every action given the context (and slot).

    Made by :func:`fit_reward_model`; :meth:`predict` is all an estimator needs.

    Attributes:
        kind: ``"ridge"``, ``"logistic"`` or ``"mlp"``.
        num_actions: number of discrete actions (output width).
        num_positions: number of slots the model reads (0: none).
    """

    def __init__(
        self,
        kind: str,
        num_features: int,
        num_actions: int,
        num_positions: int,
        mean: torch.Tensor,
        std: torch.Tensor,
        hidden: int = 64,
    ):
        super().__init__()
        self.kind = kind
        self.num_actions = int(num_actions)
        self.num_positions = int(num_positions)
        self.register_buffer("mean", mean)
        self.register_buffer("std", std)
        d, a, k = num_features, num_actions, num_positions
        if kind == "mlp":
            self.net = nn.Sequential(
                nn.Linear(d + k, hidden), nn.ReLU(), nn.Linear(hidden, hidden), nn.ReLU()
            )
            self.head = nn.Linear(hidden, a)
        else:  # linear scores: intercept, context, action, position, action x context
            self.bias = nn.Parameter(torch.zeros((), dtype=torch.float64))
            self.w_context = nn.Parameter(torch.zeros(d, dtype=torch.float64))
            self.w_action = nn.Parameter(torch.zeros(a, dtype=torch.float64))
            self.w_position = nn.Parameter(torch.zeros(k, dtype=torch.float64))
            self.w_cross = nn.Parameter(torch.zeros(a, d, dtype=torch.float64))

    def _inputs(self, observation: torch.Tensor) -> torch.Tensor:
        x = torch.as_tensor(observation).reshape(observation.shape[0], -1).to(self.mean.dtype)
        return (x - self.mean) / self.std

    def scores(self, observation: torch.Tensor, position: torch.Tensor | None) -> torch.Tensor:
        """The model's raw outputs ``[rows, num_actions]`` (logits for ``"logistic"``)."""
        x = self._inputs(observation)
        onehot = _position_onehot(position, self.num_positions, x.shape[0], x.dtype)
        if self.kind == "mlp":
            return self.head(self.net(torch.cat([x, onehot], -1).float())).to(torch.float64)
        common = self.bias + x @ self.w_context + onehot @ self.w_position
        return common[:, None] + self.w_action + x @ self.w_cross.T

    @torch.no_grad()
    def predict(
        self, observation: torch.Tensor, position: torch.Tensor | None = None
    ) -> torch.Tensor:
        """The expected reward of every action, float64 ``[rows, num_actions]``.

        Examples:
            >>> import torch
            >>> x = torch.randn(500, 2, generator=torch.Generator().manual_seed(0))
            >>> a = torch.arange(500) % 3
            >>> r = x[:, 0] + a.double()  # action 2 pays 2 more than action 0
            >>> model = fit_reward_model(x, a, r, num_actions=3, l2=1e-6)
            >>> model.predict(torch.zeros(1, 2)).round(decimals=3)
            tensor([[0., 1., 2.]], dtype=torch.float64)
        """
        rows = observation.shape[0]
        outs = []
        for start in range(0, rows, _CHUNK):
            pos = None if position is None else position[start : start + _CHUNK]
            s = self.scores(observation[start : start + _CHUNK], pos)
            outs.append(torch.sigmoid(s) if self.kind == "logistic" else s)
        return torch.cat(outs) if outs else torch.zeros(0, self.num_actions, dtype=torch.float64)

    def describe(self) -> str:
        slots = f", {self.num_positions} positions" if self.num_positions else ""
        return f"{self.kind} reward model ({self.num_actions} actions{slots})"


def _position_onehot(
    position: torch.Tensor | None, num_positions: int, rows: int, dtype: torch.dtype
) -> torch.Tensor:
    if num_positions == 0:
        return torch.zeros(rows, 0, dtype=dtype)
    if position is None:
        raise OPEError("The reward model reads positions but none were given", field="position")
    pos = torch.as_tensor(position).reshape(rows).long()
    _check_range(pos, num_positions, "position", "positions of the reward model")
    return nn.functional.one_hot(pos, num_positions).to(dtype)


def _logged_scores(model: RewardRegression, x, a, pos) -> torch.Tensor:
    return model.scores(x, pos).gather(-1, a[:, None])[:, 0]


def _fit_ridge(model: RewardRegression, x, a, r, pos, l2: float) -> None:
    """Closed-form ridge on ``[1, x, onehot(k)]`` (shared) and ``onehot(a) * [1, x]`` (per
    action). The normal equations are accumulated block by block: the per-action part of
    the Gram matrix is block-diagonal, so the cost is linear in the actions, not quadratic.
    """
    d, n_a, k = x.shape[1], model.num_actions, model.num_positions
    p, q = 1 + d + k, 1 + d  # shared and per-action feature counts
    shared = torch.zeros(p, p, dtype=torch.float64)
    cross = torch.zeros(n_a, p, q, dtype=torch.float64)
    own = torch.zeros(n_a, q, q, dtype=torch.float64)
    rhs_shared = torch.zeros(p, dtype=torch.float64)
    rhs_own = torch.zeros(n_a, q, dtype=torch.float64)
    for start in range(0, x.shape[0], _CHUNK):
        xc = model._inputs(x[start : start + _CHUNK])
        ac, rc = a[start : start + _CHUNK], r[start : start + _CHUNK]
        rows = xc.shape[0]
        ones = torch.ones(rows, 1, dtype=torch.float64)
        onehot_k = _position_onehot(
            None if pos is None else pos[start : start + _CHUNK], k, rows, torch.float64
        )
        c, z = torch.cat([ones, xc, onehot_k], 1), torch.cat([ones, xc], 1)
        shared += c.T @ c
        rhs_shared += c.T @ rc
        cross.index_add_(0, ac, c[:, :, None] * z[:, None, :])
        own.index_add_(0, ac, z[:, :, None] * z[:, None, :])
        rhs_own.index_add_(0, ac, z * rc[:, None])
    dim = p + n_a * q
    gram = torch.zeros(dim, dim, dtype=torch.float64)
    gram[:p, :p] = shared
    gram[:p, p:] = cross.permute(1, 0, 2).reshape(p, n_a * q)
    gram[p:, :p] = gram[:p, p:].T
    gram[p:, p:] = torch.block_diag(*own)
    penalty = torch.full((dim,), float(l2), dtype=torch.float64)
    penalty[0] = 0.0  # the intercept is not shrunk
    rhs = torch.cat([rhs_shared, rhs_own.reshape(-1)])
    beta = torch.linalg.lstsq(gram + torch.diag(penalty), rhs[:, None]).solution[:, 0]
    per_action = beta[p:].reshape(n_a, q)
    with torch.no_grad():
        model.bias.copy_(beta[0])
        model.w_context.copy_(beta[1 : 1 + d])
        model.w_position.copy_(beta[1 + d : p])
        model.w_action.copy_(per_action[:, 0])
        model.w_cross.copy_(per_action[:, 1:])


def _fit_logistic(model: RewardRegression, x, a, r, pos, l2: float, steps: int) -> None:
    if ((r < 0) | (r > 1)).any():
        i = int(((r < 0) | (r > 1)).nonzero()[0])
        raise OPEError(
            f"A logistic reward model needs rewards in [0, 1]; reward at row {i} is {r[i].item()}",
            field="reward",
            index=i,
        )
    params = [p for name, p in model.named_parameters()]
    opt = torch.optim.LBFGS(params, max_iter=steps, line_search_fn="strong_wolfe")
    n = x.shape[0]

    def closure() -> torch.Tensor:
        opt.zero_grad()
        loss = nn.functional.binary_cross_entropy_with_logits(
            _logged_scores(model, x, a, pos), r, reduction="sum"
        ) / n + 0.5 * l2 / n * sum(p.pow(2).sum() for p in params[1:])
        loss.backward()
        return loss

    opt.step(closure)


def _fit_mlp(
    model: RewardRegression,
    x,
    a,
    r,
    pos,
    *,
    generator: torch.Generator,
    val_fraction: float,
    max_epochs: int,
    patience: int,
    batch_size: int,
    lr: float,
) -> None:
    """Adam on the logged action's output; keeps the weights of the best held-out loss."""
    n = x.shape[0]
    perm = torch.randperm(n, generator=generator)
    n_val = max(1, round(val_fraction * n)) if n > 1 else 0
    val, train = perm[:n_val], perm[n_val:]
    if train.numel() == 0:
        train = val
    opt = torch.optim.Adam(model.parameters(), lr=lr)

    def loss_on(idx: torch.Tensor) -> torch.Tensor:
        p = None if pos is None else pos[idx]
        return (_logged_scores(model, x[idx], a[idx], p) - r[idx]).pow(2).mean()

    best, best_state, waited = math.inf, copy.deepcopy(model.state_dict()), 0
    for _ in range(max_epochs):
        order = train[torch.randperm(train.numel(), generator=generator)]
        for start in range(0, order.numel(), batch_size):
            opt.zero_grad()
            loss_on(order[start : start + batch_size]).backward()
            opt.step()
        with torch.no_grad():
            held_out = loss_on(val if val.numel() else train).item()
        if held_out < best - 1e-9:
            best, best_state, waited = held_out, copy.deepcopy(model.state_dict()), 0
        else:
            waited += 1
            if waited >= patience:
                break
    model.load_state_dict(best_state)


def _checked(observation, action, reward, position, num_actions, num_positions):
    x = torch.as_tensor(observation)
    x = x.reshape(x.shape[0], -1).to(torch.float64)
    a = torch.as_tensor(action).reshape(-1).long()
    r = torch.as_tensor(reward).reshape(-1).to(torch.float64)
    if not (x.shape[0] == a.shape[0] == r.shape[0]):
        raise OPEError(
            f"observation, action and reward have {x.shape[0]}, {a.shape[0]} and {r.shape[0]} "
            "rows; they must match",
            field="action",
        )
    if x.shape[0] == 0:
        raise OPEError("No rows to fit a reward model on", field="reward")
    _check_range(a, num_actions, "action", "actions of the reward model")
    for name, t in (("observation", x), ("reward", r)):
        finite = torch.isfinite(t.reshape(t.shape[0], -1)).all(-1)
        if not finite.all():
            i = int((~finite).nonzero()[0])
            raise OPEError(f"{name} at row {i} is not finite", field=name, index=i)
    pos = None
    if position is not None and num_positions:
        pos = torch.as_tensor(position).reshape(-1).long()
    return x, a, r, pos


def fit_reward_model(
    observation: torch.Tensor,
    action: torch.Tensor,
    reward: torch.Tensor,
    *,
    num_actions: int,
    position: torch.Tensor | None = None,
    num_positions: int | None = None,
    kind: RewardModelKind = "ridge",
    l2: float = 1.0,
    seed: int = 0,
    logistic_steps: int = 50,
    hidden: int = 64,
    max_epochs: int = 50,
    patience: int = 5,
    batch_size: int = 256,
    lr: float = 3e-3,
    val_fraction: float = 0.2,
) -> RewardRegression:
    """Fit a model of the expected reward given the context, the action (and the slot).

    Args:
        observation: context features ``[rows, ...]`` (flattened).
        action: logged action indices ``[rows]``.
        reward: rewards ``[rows]``.

    Keyword Args:
        num_actions: number of discrete actions.
        position: slot of each row ``[rows]``, or ``None``.
        num_positions: number of slots (default: ``max(position) + 1``); the model reads
            the slot only when positions are given.
        kind: ``"ridge"``, ``"logistic"`` or ``"mlp"`` (see the module docstring).
        l2: the ridge / logistic penalty (on standardised contexts).
        seed: seed of the MLP's initialisation, split and minibatches.
        logistic_steps: L-BFGS iterations of the logistic fit.
        hidden, max_epochs, patience, batch_size, lr, val_fraction: the MLP's width,
            epoch budget, early-stopping patience (epochs without a better held-out loss),
            minibatch size, Adam step size and held-out fraction.

    Returns:
        A fitted :class:`RewardRegression`.

    Raises:
        OPEError: mismatched rows, an action or position out of range, a non-finite value
            (naming the row), or rewards outside ``[0, 1]`` for ``"logistic"``.
    """
    if kind not in REWARD_MODELS:
        raise ValueError(f"kind must be one of {REWARD_MODELS}, got {kind!r}")
    if position is not None and num_positions is None:
        num_positions = int(torch.as_tensor(position).max()) + 1
    k = int(num_positions or 0) if position is not None else 0
    x, a, r, pos = _checked(observation, action, reward, position, num_actions, k)
    generator = torch.Generator().manual_seed(int(seed))
    mean = x.mean(0)
    std = x.std(0) if x.shape[0] > 1 else torch.ones_like(mean)
    std = torch.where(std > 1e-12, std, torch.ones_like(std))
    if kind == "mlp":
        with torch.random.fork_rng():
            torch.manual_seed(int(seed))
            model = RewardRegression(kind, x.shape[1], num_actions, k, mean, std, hidden)
        _fit_mlp(
            model,
            x,
            a,
            r,
            pos,
            generator=generator,
            val_fraction=val_fraction,
            max_epochs=max_epochs,
            patience=patience,
            batch_size=batch_size,
            lr=lr,
        )
    else:
        model = RewardRegression(kind, x.shape[1], num_actions, k, mean, std)
        if kind == "ridge":
            _fit_ridge(model, x, a, r, pos, l2)
        else:
            _fit_logistic(model, x, a, r, pos, l2, logistic_steps)
    return model.eval()


def cross_fit_rewards(
    observation: torch.Tensor,
    action: torch.Tensor,
    reward: torch.Tensor,
    *,
    num_actions: int,
    position: torch.Tensor | None = None,
    folds: int = 2,
    seed: int = 0,
    **kwargs,
) -> torch.Tensor:
    """Out-of-fold reward predictions for every action, ``[rows, num_actions]`` float64.

    The rows are split at random into ``folds`` parts; each part is predicted by a model
    fitted (:func:`fit_reward_model`, keyword arguments passed on) on the others. With
    ``folds=1`` one model is fitted on all rows and predicts them all.

    Examples:
        >>> import torch
        >>> x = torch.randn(400, 2, generator=torch.Generator().manual_seed(0))
        >>> a = torch.arange(400) % 2
        >>> q = cross_fit_rewards(x, a, x[:, 0] * (a == 1), num_actions=2, folds=2, l2=1e-6)
        >>> q.shape, bool((q[:, 1] - x[:, 0]).abs().max() < 1e-2)
        (torch.Size([400, 2]), True)
    """
    n = torch.as_tensor(action).reshape(-1).shape[0]
    if int(folds) != folds or folds < 1:
        raise ValueError(f"folds must be a positive integer, got {folds}")
    if folds > n:
        raise OPEError(f"{folds} folds need at least {folds} rows, got {n}", field="folds")
    obs = torch.as_tensor(observation)
    obs = obs.reshape(n, -1)
    act = torch.as_tensor(action).reshape(-1)
    rew = torch.as_tensor(reward).reshape(-1)
    pos = None if position is None else torch.as_tensor(position).reshape(-1)
    if pos is not None and "num_positions" not in kwargs:
        kwargs["num_positions"] = int(pos.max()) + 1
    if folds == 1:
        model = fit_reward_model(
            obs, act, rew, num_actions=num_actions, position=pos, seed=seed, **kwargs
        )
        return model.predict(obs, pos)
    fold = torch.randperm(n, generator=torch.Generator().manual_seed(int(seed))) % int(folds)
    out = torch.empty(n, num_actions, dtype=torch.float64)
    for f in range(int(folds)):
        held, rest = fold == f, fold != f
        model = fit_reward_model(
            obs[rest],
            act[rest],
            rew[rest],
            num_actions=num_actions,
            position=None if pos is None else pos[rest],
            seed=seed + f,
            **kwargs,
        )
        out[held] = model.predict(obs[held], None if pos is None else pos[held])
    return out
