r"""The Gaussian policy of the IQL paper: a ``tanh`` mean in the action box, one log-std.

IQL (Kostrikov et al., 2022) and d3rlpy's ``IQL`` fit the actor by weighted
log-likelihood of the logged action under

.. math::

    \pi(a \mid s) = \mathcal{N}\big(c + h \tanh(f_\theta(s)),\; (h\,\sigma)^2\big),
    \quad \log\sigma = \ell_{\min} + (\ell_{\max} - \ell_{\min})\,\mathrm{sigmoid}(p)

with ``c`` and ``h`` the centre and half-range of the action box and ``p`` a learned,
state-independent parameter (``"sigmoid"`` bound, d3rlpy's; ``"clamp"`` uses
``clamp(p, l_min, l_max)`` as the paper's code). The mean, not the sample, is squashed,
so an action logged on the bound of the box has a finite log-likelihood, and the
deterministic action is the mean itself.

TorchRL's offline IQL example uses a ``TanhNormal`` actor with a state-dependent scale
instead. With it, IQL on a mixed-quality Pendulum dataset ends below the dataset's
average return, with this actor above it (``benchmarks/learning_pendulum.py``).
"""

from __future__ import annotations

import logging
from typing import Literal

import torch
from tensordict.nn import TensorDictModule
from torch import Tensor, nn
from torchrl.data.tensor_specs import Bounded, TensorSpec
from torchrl.envs.utils import ExplorationType
from torchrl.modules import MLP, IndependentNormal, ProbabilisticActor

__all__ = ["TanhMeanGaussian", "advise_on_actor", "make_tanh_mean_gaussian_actor"]

logger = logging.getLogger("torchrl_offline")

#: Measured consequences of a ``TanhNormal`` actor, per weighted-likelihood loss (mixed
#: Pendulum-v1 data of ``benchmarks/pendulum_mixed.py``, 5,000 updates, final return,
#: mean over seeds; ``docs/benchmarks.md``).
_TANH_NORMAL_MEASURED = {
    "IQLLoss": "final return -1014 with it, -331 with the paper's Gaussian (d3rlpy -328)",
    "AWACLoss": "final return -822 with it, -131 with the paper's Gaussian (d3rlpy -126)",
}
_ADVISED: set[str] = set()


class TanhMeanGaussian(nn.Module):
    r"""Maps observations to the ``(loc, scale)`` of the IQL paper's Gaussian policy.

    ``loc = center + half_range * tanh(MLP(obs))`` and ``scale = half_range *
    exp(log_std)`` with a state-independent ``log_std`` bounded to ``log_std_bounds``.

    Args:
        obs_dim (int): observation size.
        low (Tensor): lower bound of the action box, shape ``[act_dim]``.
        high (Tensor): upper bound of the action box, shape ``[act_dim]``.

    Keyword Args:
        num_cells (list of int, optional): hidden sizes. Defaults to ``[256, 256]``.
        activation_class (type, optional): hidden activation. Defaults to ``nn.ReLU``
            (note that ``torchrl.modules.MLP`` alone defaults to ``nn.Tanh``).
        log_std_bounds (tuple of float, optional): ``(min, max)`` of the log-std, in
            units of the half-range. Defaults to ``(-5.0, 2.0)``.
        log_std_mapping (str, optional): ``"sigmoid"`` (d3rlpy: ``min + (max - min) *
            sigmoid(p)``, starting at the midpoint, std ``exp(-1.5) = 0.22``) or
            ``"clamp"`` (``clamp(p, min, max)``, starting at 0, std 1). Defaults to
            ``"sigmoid"``.

    Examples:
        >>> import torch
        >>> net = TanhMeanGaussian(3, -2 * torch.ones(1), 2 * torch.ones(1), num_cells=[8])
        >>> loc, scale = net(torch.randn(5, 3))
        >>> loc.shape, bool((loc.abs() <= 2).all()), round(float(scale[0, 0]), 4)
        (torch.Size([5, 1]), True, 0.4463)
    """

    def __init__(
        self,
        obs_dim: int,
        low: Tensor,
        high: Tensor,
        *,
        num_cells: list[int] | tuple[int, ...] = (256, 256),
        activation_class: type[nn.Module] = nn.ReLU,
        log_std_bounds: tuple[float, float] = (-5.0, 2.0),
        log_std_mapping: Literal["sigmoid", "clamp"] = "sigmoid",
    ) -> None:
        super().__init__()
        low = torch.as_tensor(low, dtype=torch.float32).reshape(-1)
        high = torch.as_tensor(high, dtype=torch.float32).reshape(-1)
        if low.shape != high.shape or not bool((high > low).all()):
            raise ValueError(
                f"the action box needs low < high elementwise with equal shapes, got "
                f"low={low.tolist()} and high={high.tolist()}"
            )
        if log_std_mapping not in ("sigmoid", "clamp"):
            raise ValueError(
                f"log_std_mapping must be 'sigmoid' or 'clamp', got {log_std_mapping!r}"
            )
        if not log_std_bounds[0] < log_std_bounds[1]:
            raise ValueError(
                f"log_std_bounds must be (min, max) with min < max, got {log_std_bounds}"
            )
        act_dim = low.numel()
        self.net = MLP(
            in_features=obs_dim,
            out_features=act_dim,
            num_cells=list(num_cells),
            activation_class=activation_class,
        )
        self.log_std = nn.Parameter(torch.zeros(act_dim))
        self.log_std_bounds = (float(log_std_bounds[0]), float(log_std_bounds[1]))
        self.log_std_mapping = log_std_mapping
        self.register_buffer("center", (high + low) / 2)
        self.register_buffer("half_range", (high - low) / 2)

    def bounded_log_std(self) -> Tensor:
        """The log-std in units of the half-range, after the bound is applied."""
        lo, hi = self.log_std_bounds
        if self.log_std_mapping == "sigmoid":
            return lo + (hi - lo) * torch.sigmoid(self.log_std)
        return self.log_std.clamp(lo, hi)

    def forward(self, observation: Tensor) -> tuple[Tensor, Tensor]:
        loc = self.center + self.half_range * torch.tanh(self.net(observation))
        scale = self.half_range * self.bounded_log_std().exp()
        return loc, scale.expand_as(loc)


def make_tanh_mean_gaussian_actor(
    obs_dim: int,
    action_spec: TensorSpec,
    *,
    num_cells: list[int] | tuple[int, ...] = (256, 256),
    activation_class: type[nn.Module] = nn.ReLU,
    log_std_bounds: tuple[float, float] = (-5.0, 2.0),
    log_std_mapping: Literal["sigmoid", "clamp"] = "sigmoid",
    in_key: str = "observation",
) -> ProbabilisticActor:
    """A ``ProbabilisticActor`` with the IQL paper's Gaussian policy over a bounded spec.

    The distribution is TorchRL's ``IndependentNormal`` on ``loc``/``scale``; the
    deterministic action (``ExplorationType.DETERMINISTIC``) is ``loc``, inside the box.
    Use it as the ``actor_network`` of :class:`~torchrl_offline.objectives.iql.IQLLoss`.

    Args:
        obs_dim (int): observation size.
        action_spec (TensorSpec): bounded action spec (``Bounded``).

    Keyword Args:
        num_cells, activation_class, log_std_bounds, log_std_mapping: as in
            :class:`TanhMeanGaussian`.
        in_key (str, optional): observation key. Defaults to ``"observation"``.

    Examples:
        >>> import torch
        >>> from tensordict import TensorDict
        >>> from torchrl.data import Bounded
        >>> from torchrl.envs.utils import ExplorationType, set_exploration_type
        >>> spec = Bounded(-2 * torch.ones(1), 2 * torch.ones(1), (1,))
        >>> actor = make_tanh_mean_gaussian_actor(3, spec, num_cells=[8])
        >>> td = TensorDict({"observation": torch.randn(4, 3)}, [4])
        >>> with set_exploration_type(ExplorationType.DETERMINISTIC):
        ...     action = actor(td)["action"]
        >>> torch.equal(action, td["loc"])
        True
    """
    if not isinstance(action_spec, Bounded):
        raise ValueError(
            "the action spec must be bounded (torchrl.data.Bounded), got "
            f"{type(action_spec).__name__}"
        )
    low, high = action_spec.space.low, action_spec.space.high
    module = TanhMeanGaussian(
        obs_dim,
        low,
        high,
        num_cells=num_cells,
        activation_class=activation_class,
        log_std_bounds=log_std_bounds,
        log_std_mapping=log_std_mapping,
    )
    return ProbabilisticActor(
        TensorDictModule(module, in_keys=[in_key], out_keys=["loc", "scale"]),
        in_keys=["loc", "scale"],
        spec=action_spec,
        distribution_class=IndependentNormal,
        default_interaction_type=ExplorationType.RANDOM,
    )


def _samples_tanh_normal(actor: nn.Module) -> bool:
    from tensordict.nn import ProbabilisticTensorDictModule
    from torchrl.modules import TanhNormal

    return any(
        isinstance(m, ProbabilisticTensorDictModule)
        and isinstance(m.distribution_class, type)
        and issubclass(m.distribution_class, TanhNormal)
        for m in actor.modules()
    )


def advise_on_actor(loss_name: str, actor: nn.Module) -> bool:
    """Logs, once per process and loss, that a ``TanhNormal`` actor is a known-bad choice
    for a loss fitting the actor by the weighted likelihood of logged actions (IQL, AWAC).

    A ``TanhNormal`` with a state-dependent scale (TorchRL's example actor) gives logged
    actions on or near the action bounds log-likelihoods dominated by ``atanh`` near
    ``+-1``; their gradients swamp the advantage weighting. The paper's Gaussian
    (:func:`make_tanh_mean_gaussian_actor`) does not have the problem. The advice goes to
    the ``torchrl_offline`` logger (a ``logging`` warning, not a Python warning, so test
    suites that turn warnings into errors keep running).

    Args:
        loss_name (str): the loss class's name, e.g. ``"IQLLoss"``.
        actor (nn.Module): the actor network.

    Returns:
        bool: whether the advice applies (it is logged the first time only).

    Examples:
        >>> import torch
        >>> from torchrl.data import Bounded
        >>> from torchrl_offline.objectives.gaussian_actor import (
        ...     advise_on_actor, make_tanh_mean_gaussian_actor)
        >>> actor = make_tanh_mean_gaussian_actor(3, Bounded(-1.0, 1.0, (1,)), num_cells=[8])
        >>> advise_on_actor("IQLLoss", actor)
        False
    """
    if loss_name not in _TANH_NORMAL_MEASURED or not _samples_tanh_normal(actor):
        return False
    if loss_name not in _ADVISED:
        _ADVISED.add(loss_name)
        measured = _TANH_NORMAL_MEASURED[loss_name]
        logger.warning(
            "%s: the actor samples from a TanhNormal (TorchRL's example actor). %s fits it "
            "by the weighted log-likelihood of logged actions, and those on or near the "
            "action bounds then dominate the fit%s. The paper's Gaussian, "
            "torchrl_offline.objectives.make_tanh_mean_gaussian_actor(obs_dim, action_spec), "
            "avoids it (docs/objectives.md, 'The IQL paper's Gaussian actor').",
            loss_name,
            loss_name,
            f" (mixed-quality Pendulum data: {measured})",
        )
    return True
