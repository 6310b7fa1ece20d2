"""Exceptions and warnings of the learned dynamics models."""

from __future__ import annotations

__all__ = ["ModelError", "ModelRangeWarning", "TerminationWarning"]


class ModelError(ValueError):
    """Data or input a dynamics model cannot learn from or predict.

    The message names the key (or argument) at fault and, where it applies, the first
    offending transition index.

    Attributes:
        field: the key or argument at fault, if known.
        index: the first offending transition index, if known.

    Examples:
        >>> from torchrl_offline.models.errors import ModelError
        >>> issubclass(ModelError, ValueError)
        True
    """

    def __init__(self, message: str, *, field: str | None = None, index: int | None = None):
        super().__init__(message)
        self.field = field
        self.index = index


class ModelRangeWarning(UserWarning):
    """A model was queried at states outside the range of the data it was fitted on.

    Attributes:
        dimension: the observation dimension furthest outside the range.
        distance: how far outside, in the data's standard deviations of that dimension.
        index: the first row outside the range.
    """

    def __init__(self, message: str, *, dimension: int, distance: float, index: int):
        super().__init__(message)
        self.dimension = dimension
        self.distance = distance
        self.index = index


class TerminationWarning(UserWarning):
    """A learned termination classifier misses many of the held-out episode ends: the
    model's rollouts would go on past states where the real episodes stop (on a task
    with a reward for staying alive, such as Hopper's, they look better than they are).

    Attributes:
        recall: the fraction of the held-out terminal transitions the elites call
            terminal.
        terminal: how many held-out transitions are terminal.
    """

    def __init__(self, message: str, *, recall: float, terminal: int):
        super().__init__(message)
        self.recall = recall
        self.terminal = terminal
