"""Exceptions raised when a trained policy is used or exported outside training."""

from __future__ import annotations

__all__ = ["DeployError", "ExportError", "ObservationError"]


class DeployError(ValueError):
    """A trained policy that cannot be used or exported as asked."""


class ObservationError(DeployError):
    """Observations given to :meth:`~torchrl_offline.deploy.TrainedPolicy.predict` that the
    policy cannot take: the message names the expected shape, or the first bad row.

    Attributes:
        index: the first offending row of a batch, if any.
    """

    def __init__(self, message: str, *, index: int | None = None) -> None:
        super().__init__(message)
        self.index = index


class ExportError(DeployError):
    """A policy that cannot be written in the format asked for, or whose written file does
    not act as the policy does; the message says why and which format to try instead."""
