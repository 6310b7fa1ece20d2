r"""SAC's entropy temperature, learned to hold the policy's entropy at a target.

:class:`EntropyTemperature` is the piece of Soft Actor-Critic (Haarnoja et al., "Soft
Actor-Critic Algorithms and Applications", 2018, section 5) that CQL, EDAC and SAC-N
share: the temperature :math:`\alpha = e^{\log\alpha}` weighting the policy's
log-density, and its loss :math:`-\log\alpha\,(\log\pi(\tilde a|s) + \bar{\mathcal
H})` with the target entropy :math:`\bar{\mathcal H}` (``-dim(A)`` by default).
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

__all__ = ["EntropyTemperature"]


class EntropyTemperature:
    """Mixin for a ``LossModule`` with SAC's automatic entropy temperature.

    :meth:`_init_temperature` registers ``log_alpha`` (a parameter, or a buffer with
    ``fixed_alpha``) and the ``alpha_init`` and ``target_entropy`` buffers (the names
    TorchRL's ``SACLoss`` uses, so state dicts line up); :attr:`_alpha` is the detached
    temperature (clamped to ``[min_alpha, max_alpha]``) that the actor and the soft
    target use; :meth:`_temperature_loss` is the temperature's per-sample loss.

    Examples:
        >>> import torch
        >>> from torch import nn
        >>> from torchrl_offline.objectives._temperature import EntropyTemperature
        >>> class Loss(EntropyTemperature, nn.Module):
        ...     def __init__(self):
        ...         super().__init__()
        ...         self._init_temperature(alpha_init=0.5, action_dim=2)
        >>> loss = Loss()
        >>> round(loss._alpha.item(), 4), loss.target_entropy.item()
        (0.5, -2.0)
        >>> loss._temperature_loss(torch.tensor([1.0])).shape
        torch.Size([1])
    """

    log_alpha: Tensor
    target_entropy: Tensor

    def _init_temperature(
        self,
        *,
        alpha_init: float = 1.0,
        min_alpha: float | None = None,
        max_alpha: float | None = None,
        fixed_alpha: bool = False,
        target_entropy: str | float = "auto",
        action_dim: int | None = None,
        device: torch.device | None = None,
    ) -> None:
        """Registers the temperature; ``target_entropy="auto"`` is ``-action_dim``."""
        if alpha_init <= 0:
            raise ValueError(f"alpha_init must be > 0, got {alpha_init}")
        if target_entropy == "auto":
            if action_dim is None:
                raise ValueError("target_entropy='auto' needs the action dimension")
            target_entropy = -float(action_dim)
        self.register_buffer("alpha_init", torch.tensor(float(alpha_init), device=device))
        self.min_log_alpha = None if min_alpha is None else math.log(min_alpha)
        self.max_log_alpha = None if max_alpha is None else math.log(max_alpha)
        self.fixed_alpha = fixed_alpha
        log_alpha = torch.tensor(math.log(alpha_init), device=device)
        if fixed_alpha:
            self.register_buffer("log_alpha", log_alpha)
        else:
            self.register_parameter("log_alpha", nn.Parameter(log_alpha))
        self.register_buffer("target_entropy", torch.tensor(float(target_entropy), device=device))

    @property
    def _alpha(self) -> Tensor:
        """The temperature, detached (what the actor and the soft target use)."""
        log_alpha = self.log_alpha.detach()
        if self.min_log_alpha is not None or self.max_log_alpha is not None:
            log_alpha = log_alpha.clamp(self.min_log_alpha, self.max_log_alpha)
        return log_alpha.exp()

    def _temperature_loss(self, log_prob: Tensor) -> Tensor:
        """``-log alpha (log pi + target_entropy)`` per sample, ``log_prob`` detached."""
        return -self.log_alpha * (log_prob.detach() + self.target_entropy)
