"""Python warnings of one command, each printed once with its count.

A command may raise the same warning many times (once per estimator, per chunk, per
evaluation...), and Python prints it again whenever a library resets its warning filters.
:func:`merge_repeated_warnings` collects the warnings that pass the filters while a
command runs and prints each distinct one once at the end, on stderr, with how many times
it was raised: ``torchrl-offline ope: warning: UserWarning: ... (12 times)``.
"""

from __future__ import annotations

import sys
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from typing import TextIO

__all__ = ["merge_repeated_warnings"]


@contextmanager
def merge_repeated_warnings(prefix: str, *, file: TextIO | None = None) -> Iterator[dict]:
    """Collects the warnings shown inside the block; prints each once, with its count.

    Warnings keep going through Python's filters (an ignored warning stays ignored, one
    shown once per location is counted once per location); only their printing is
    deferred and merged. Two warnings are the same when their category and message are.

    Args:
        prefix: printed before each warning, e.g. ``"torchrl-offline ope"``.

    Keyword Args:
        file: where to print (default: ``sys.stderr`` at the end of the block).

    Yields:
        The counts so far, ``{(category name, message): count}`` in order of first
        appearance.

    Examples:
        >>> import io, warnings
        >>> from torchrl_offline.cli.repeated_warnings import merge_repeated_warnings
        >>> out = io.StringIO()
        >>> with merge_repeated_warnings("demo", file=out):
        ...     for _ in range(3):
        ...         with warnings.catch_warnings():  # what resets the once-per-location rule
        ...             warnings.warn("low effective sample size")
        >>> print(out.getvalue().strip())
        demo: warning: UserWarning: low effective sample size (3 times)
    """
    counts: dict[tuple[str, str], int] = {}
    previous = warnings.showwarning

    def record(message, category, filename, lineno, file=None, line=None) -> None:
        key = (category.__name__, " ".join(str(message).split()))
        counts[key] = counts.get(key, 0) + 1

    warnings.showwarning = record
    try:
        yield counts
    finally:
        warnings.showwarning = previous
        out = sys.stderr if file is None else file
        for (category, message), count in counts.items():
            times = f" ({count} times)" if count > 1 else ""
            print(f"{prefix}: warning: {category}: {message}{times}", file=out)
