"""Exceptions raised by the data layer."""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator

__all__ = ["DatasetError", "DatasetNotFoundError", "DatasetWarning", "naming_source", "reading"]


class DatasetError(ValueError):
    """Invalid offline data.

    The message names the offending field (a tensordict key or a column) and,
    where it applies, the first offending transition index, so the bad record
    can be found in the source.

    Attributes:
        field: the key or column at fault, if known.
        index: the first offending transition (or episode) index, if known.
        source: the file the data come from, if known (:func:`naming_source` sets it and
            puts it at the head of the message).
    """

    def __init__(
        self,
        message: str,
        *,
        field: str | None = None,
        index: int | None = None,
        source: str | None = None,
    ):
        super().__init__(message)
        self.field = field
        self.index = index
        self.source = source


class DatasetWarning(UserWarning):
    """Data that load but deserve a look (e.g. a logging policy's probabilities that do not
    sum to 1); the message names the field, the count and the first row."""


class DatasetNotFoundError(DatasetError, FileNotFoundError):
    """A dataset id or path that could not be resolved locally."""


#: Exceptions of file readers turned into :class:`DatasetError` by :func:`reading`
#: (pyarrow's and h5py's are subclasses of these or come from those packages).
_READ_ERRORS = (OSError, ValueError, KeyError, EOFError, TypeError, IndexError, RuntimeError)


@contextlib.contextmanager
def reading(path: str | os.PathLike, what: str) -> Iterator[None]:
    """Turns the errors of reading ``path`` into a :class:`DatasetError` naming the file.

    Truncated, damaged or fake files make pyarrow, h5py, ``json`` and the OS raise their
    own exceptions (``ArrowInvalid``, ``OSError``, ``JSONDecodeError``...), without the
    file's name; inside this context they become one ``DatasetError`` (a ``ValueError``)
    that names the file, says what it should have been and keeps the original as its
    ``__cause__``. Our own ``DatasetError`` passes through unchanged.

    Args:
        path: the file (or folder) being read.
        what: what it should be, e.g. ``"Parquet file"``.

    Examples:
        >>> from torchrl_offline.data.errors import DatasetError, reading
        >>> try:
        ...     with reading("log.csv", "CSV file"):
        ...         raise OSError("unexpected end of file")
        ... except DatasetError as err:
        ...     print(err)
        The CSV file 'log.csv' cannot be read (truncated, damaged or of another format): OSError: unexpected end of file
    """
    try:
        yield
    except DatasetError:
        raise
    except _READ_ERRORS as err:
        text = " ".join(str(err).split())[:300]
        raise DatasetError(
            f"The {what} {str(path)!r} cannot be read (truncated, damaged or of another "
            f"format): {type(err).__name__}: {text}",
            source=str(path),  # named already: naming_source leaves it as it is
        ) from err


@contextlib.contextmanager
def naming_source(path: str | os.PathLike | None) -> Iterator[None]:
    """Puts the file ``path`` at the head of a :class:`DatasetError` raised inside.

    The checks of the data see values and rows, not where they come from; inside this
    context their errors also name the file (once, as ``error.source``), so a message reads
    ``log.csv: Field 'reward': non-finite value (nan) at index 137``. The error keeps its
    class, field and index. With ``path=None`` (data in memory) nothing changes.

    Examples:
        >>> from torchrl_offline.data.errors import DatasetError, naming_source
        >>> try:
        ...     with naming_source("log.csv"):
        ...         raise DatasetError("Field 'reward': non-finite value (nan) at index 3",
        ...                            field="reward", index=3)
        ... except DatasetError as err:
        ...     print(err, err.source, err.index)
        log.csv: Field 'reward': non-finite value (nan) at index 3 log.csv 3
    """
    try:
        yield
    except DatasetError as err:
        if path is not None and err.source is None:
            err.source = str(path)
            err.args = (f"{err.source}: {err.args[0] if err.args else ''}", *err.args[1:])
        raise
