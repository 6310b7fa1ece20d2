"""Exceptions raised by the data layer."""

from __future__ import annotations

__all__ = ["DatasetError", "DatasetNotFoundError"]


class DatasetError(ValueError):
    """Invalid offline data.

    The message names the offending field (a tensordict key or a column) and,
    where it applies, the first offending transition index, so the bad record
    can be found in the source.

    Attributes:
        field: the key or column at fault, if known.
        index: the first offending transition (or episode) index, if known.
    """

    def __init__(self, message: str, *, field: str | None = None, index: int | None = None):
        super().__init__(message)
        self.field = field
        self.index = index


class DatasetNotFoundError(DatasetError, FileNotFoundError):
    """A dataset id or path that could not be resolved locally."""
