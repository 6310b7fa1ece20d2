"""The metrics file of a run: every logged scalar in one tidy CSV, one row per step.

``metrics.csv`` in a run directory has a header, a ``step`` column (gradient steps) and
one column per logged scalar, named as it is logged (``train/loss_actor``,
``eval/return_mean``, ``eval/return_std``, ``eval/normalized_score``, ``train/lr_actor``,
``train/steps_per_s``, ``online/episode_return``, ...); a row holds the values logged at
its step and leaves the others empty. pandas reads it as it is
(``pandas.read_csv("runs/iql/metrics.csv")``), and so does :func:`read_metrics`.

:class:`MetricsWriter` writes it while the run goes: the rows of each step are appended
once the step has logged everything (a process killed later loses none of them); a column that appears later
(the first loss logged after the first evaluation, say) makes it rewrite the file with
the wider header, atomically. A resumed run continues the same file: the rows after the
checkpoint it resumes from (logged by the stopped run after its last checkpoint) are
dropped first, so that no step has two rows. A new run in the directory starts a new
file.

Examples:
    >>> import tempfile
    >>> from pathlib import Path
    >>> from torchrl_offline.trainers.metrics import MetricsWriter, read_metrics
    >>> path = Path(tempfile.mkdtemp()) / "metrics.csv"
    >>> writer = MetricsWriter(path)
    >>> writer.add("eval/return_mean", -1200.0, step=0)
    >>> writer.flush()
    [0]
    >>> writer.add("train/loss_actor", 0.5, step=10)
    >>> writer.add("eval/return_mean", -900.0, step=10)
    >>> writer.flush()
    [10]
    >>> print(path.read_text().strip())
    step,eval/return_mean,train/loss_actor
    0,-1200.0,
    10,-900.0,0.5
    >>> read_metrics(path)["train/loss_actor"].tolist()
    [nan, 0.5]
"""

from __future__ import annotations

import csv
import math
import os
from collections.abc import Iterable
from pathlib import Path

import numpy as np

from torchrl_offline.atomic import replace_file

__all__ = [
    "FIGURE_FILE",
    "METRICS_FILE",
    "MetricsFileError",
    "MetricsWriter",
    "metrics_path",
    "read_metrics",
]

#: The metrics file of a run directory.
METRICS_FILE = "metrics.csv"
#: The figure of a run directory (drawn from its metrics file).
FIGURE_FILE = "metrics.png"
#: The first column of a metrics file.
STEP = "step"


class MetricsFileError(ValueError):
    """A metrics file, or a run directory, that cannot be read: the message names the
    file, the line and what is wrong."""


def metrics_path(run: str | os.PathLike) -> Path:
    """The metrics file of ``run``: a run directory (its ``metrics.csv``) or the file itself.

    Raises:
        MetricsFileError: ``run`` does not exist, or is a directory without a metrics file.
    """
    path = Path(run).expanduser()
    if path.is_dir():
        found = path / METRICS_FILE
        if not found.is_file():
            raise MetricsFileError(
                f"{str(path)!r} holds no {METRICS_FILE}: not the directory of a train or "
                "finetune run, or a run started without logging (logger=None, --logger none)"
            )
        return found
    if not path.exists():
        raise MetricsFileError(
            f"{str(path)!r} does not exist: name a run directory or its {METRICS_FILE}"
        )
    return path


def _lines(path: Path) -> list[str]:
    """The complete lines of ``path`` (a last line without its newline, being appended by
    a running process or cut by a killed one, is left out)."""
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError:
        raise MetricsFileError(f"{str(path)!r} is not a metrics file (not text)") from None
    except OSError as err:
        raise MetricsFileError(f"{str(path)!r} cannot be read: {err}") from None
    lines = text.splitlines(keepends=True)
    if lines and not lines[-1].endswith("\n"):
        lines.pop()
    return [line.rstrip("\r\n") for line in lines]


def _header(path: Path, lines: list[str]) -> list[str]:
    if not lines:
        raise MetricsFileError(f"{str(path)!r} is empty: no header")
    header = next(csv.reader([lines[0]]))
    if not header or header[0] != STEP:
        raise MetricsFileError(
            f"{str(path)!r} is not a metrics file: its header starts with "
            f"{(header or [''])[0]!r}, not {STEP!r}"
        )
    return header


def _step(path: Path, number: int, text: str) -> int:
    try:
        return int(text)
    except ValueError:
        raise MetricsFileError(
            f"{str(path)!r}, line {number}: the step {text!r} is not an integer"
        ) from None


def read_metrics(run: str | os.PathLike) -> dict[str, np.ndarray]:
    """The columns of a metrics file (or of a run directory's).

    Args:
        run: a run directory or a metrics file.

    Returns:
        ``{"step": int64 array, column: float64 array, ...}`` in the file's column
        order, ``NaN`` where a row has no value.

    Raises:
        MetricsFileError: no such file, no header, a row with another number of fields
            than the header, a value that is not a number (the line and column named).
    """
    path = metrics_path(run)
    lines = _lines(path)
    header = _header(path, lines)
    steps: list[int] = []
    values: list[list[float]] = []
    for number, row in enumerate(csv.reader(lines[1:]), start=2):
        if not row:
            continue
        if len(row) != len(header):
            raise MetricsFileError(
                f"{str(path)!r}, line {number}: {len(row)} fields, the header has {len(header)}"
            )
        steps.append(_step(path, number, row[0]))
        parsed = []
        for name, text in zip(header[1:], row[1:]):
            try:
                parsed.append(float(text) if text.strip() else math.nan)
            except ValueError:
                raise MetricsFileError(
                    f"{str(path)!r}, line {number}, column {name!r}: {text!r} is not a number"
                ) from None
        values.append(parsed)
    table = np.asarray(values, dtype=np.float64).reshape(len(values), len(header) - 1)
    out = {STEP: np.asarray(steps, dtype=np.int64)}
    out.update({name: table[:, i] for i, name in enumerate(header[1:])})
    return out


def _format(value: float) -> str:
    return repr(float(value))


class MetricsWriter:
    """Writes the metrics file of a run as it logs.

    :meth:`add` collects values in memory; :meth:`flush` writes the rows of the steps
    collected so far, in step order (the training loop flushes after each step has
    logged everything, before a checkpoint is written). A value logged twice for one key
    at one step (two online episodes ending on the same update) is written as the mean.

    Args:
        path: the metrics file.
    """

    def __init__(self, path: str | os.PathLike) -> None:
        self.path = Path(path)
        self.columns: list[str] = []
        self._pending: dict[int, dict[str, list[float]]] = {}
        self._last_step = 0
        self._started = False

    def start(self, resume_step: int | None = None) -> None:
        """Starts the file: a new one (``resume_step=None``: a file already there, left
        by an earlier run of the directory, is removed), or the existing one continued
        after ``resume_step`` (its rows of later steps dropped, atomically).

        Raises:
            MetricsFileError: the existing file is not a metrics file.
        """
        self._started = True
        self.columns = []
        if resume_step is None or not self.path.is_file():
            self.path.unlink(missing_ok=True)
            return
        lines = _lines(self.path)
        header = _header(self.path, lines)
        kept = [lines[0]]
        for number, line in enumerate(lines[1:], start=2):
            first = next(csv.reader([line]), [""])[0] if line else ""
            if first and _step(self.path, number, first) <= resume_step:
                kept.append(line)
        self.columns = header[1:]
        if len(kept) != len(lines) or self.path.read_bytes()[-1:] != b"\n":
            self._replace(kept)

    def add(self, key: str, value: float, step: int | None = None) -> None:
        """Records ``value`` for column ``key`` at ``step`` (the last step seen if ``None``)."""
        step = self._last_step if step is None else int(step)
        self._last_step = step
        self._pending.setdefault(step, {}).setdefault(str(key), []).append(float(value))

    def flush(self) -> list[int]:
        """Writes the collected rows; returns their steps (empty when nothing was new)."""
        if not self._pending:
            return []
        if not self._started:
            self.start()
        steps = sorted(self._pending)
        rows = [self._pending[s] for s in steps]
        new = [k for row in rows for k in row if k not in self.columns]
        new = list(dict.fromkeys(new))
        lines = [
            ",".join(
                [str(step)]
                + [
                    _format(sum(v) / len(v)) if (v := row.get(c)) else ""
                    for c in self.columns + new
                ]
            )
            for step, row in zip(steps, rows)
        ]
        if new or not self.path.is_file():
            old = _lines(self.path)[1:] if self.path.is_file() else []
            self.columns += new
            widened = [line + "," * len(new) for line in old]
            self._replace([self._header_line(), *widened, *lines])
        else:
            with open(self.path, "a", encoding="utf-8", newline="") as f:
                f.write("".join(line + "\n" for line in lines))  # closed: in the OS's hands
        self._pending.clear()
        return steps

    def _header_line(self) -> str:
        return ",".join(_quote(name) for name in [STEP, *self.columns])

    def _replace(self, lines: Iterable[str]) -> None:
        data = "".join(line + "\n" for line in lines).encode("utf-8")
        replace_file(self.path, lambda f: f.write(data))


def _quote(name: str) -> str:
    """A column name as a CSV field (quoted when it holds a comma or a quote)."""
    if any(c in name for c in ',"\n'):
        return '"' + name.replace('"', '""') + '"'
    return name
