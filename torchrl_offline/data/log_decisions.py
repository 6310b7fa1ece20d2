"""Checks of a decision log's own fields: positions within a declared range, and the
logging policy's full distribution over the actions when the log holds it.

A recommender log may hold, besides the propensity of the logged action, the logging
policy's probability of every action (``behavior_probs``, one vector per row). Its rows
should sum to 1; those that do not are *reported* (count, first row, its sum: a
:class:`DatasetWarning` on load and ``metadata["behavior_probs_report"]``), not refused,
since a truncated support or rounding in the logger is common and the estimators only
read the logged action's entry. That entry must be the logged propensity
(``action_prob``, or ``exp(action_log_prob)``): a row where they differ is an error, and a
log without a propensity column takes it from the vector.
"""

from __future__ import annotations

import warnings
from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np

from torchrl_offline.data.errors import DatasetError, DatasetWarning
from torchrl_offline.data.log_episodes import first_index
from torchrl_offline.data.log_sources import Name

__all__ = [
    "PROB_SUM_TOLERANCE",
    "BehaviorProbsReport",
    "check_behavior_probs",
    "check_positions",
]

#: Largest deviation of a row of ``behavior_probs`` from summing to 1 that is not reported.
PROB_SUM_TOLERANCE = 1e-4
#: Relative tolerance between the logged propensity and its entry in ``behavior_probs``.
PROPENSITY_RTOL = 1e-4


def check_positions(
    fields: Mapping[Name, np.ndarray],
    rows: np.ndarray,
    names: Mapping[str, str],
    num_positions: int | None,
) -> None:
    """Every position in ``0 .. num_positions - 1`` (when a range is declared).

    Raises:
        DatasetError: naming the column and the first row outside the range.

    Examples:
        >>> import numpy as np
        >>> from torchrl_offline.data.log_decisions import check_positions
        >>> fields = {("position",): np.array([0, 2, 3])}
        >>> try:
        ...     check_positions(fields, np.array([10, 11, 12]), {}, num_positions=3)
        ... except ValueError as err:
        ...     print(err)
        Field 'position': value 3 at index 12 is outside the 3 declared positions (0 .. 2)
    """
    value = fields.get(("position",))
    if num_positions is None or value is None or not len(value):
        return
    if (i := first_index((value < 0) | (value >= num_positions))) is not None:
        field = names.get("position", "position")
        raise DatasetError(
            f"Field {field!r}: value {value[i].item()!r} at index {int(rows[i])} is outside "
            f"the {num_positions} declared positions (0 .. {num_positions - 1})",
            field=field,
            index=int(rows[i]),
        )


@dataclass
class BehaviorProbsReport:
    """Rows of ``behavior_probs`` whose entries do not sum to 1, over the whole log.

    Attributes:
        rows: how many rows deviate by more than ``tolerance``.
        first_index: the source row of the first one.
        first_sum: its sum.
        width: the number of actions of the vectors (set by the first chunk).
    """

    rows: int = 0
    first_index: int | None = None
    first_sum: float | None = None
    width: int | None = None
    tolerance: float = PROB_SUM_TOLERANCE

    def message(self, field: str = "behavior_probs") -> str | None:
        """A sentence for the user, or ``None`` when every row sums to 1."""
        if not self.rows:
            return None
        return (
            f"Field {field!r}: {self.rows} row(s) of the logging policy's probabilities do "
            f"not sum to 1 (tolerance {self.tolerance:g}); the first at index "
            f"{self.first_index} sums to {self.first_sum:.6g}"
        )

    def metadata(self) -> dict:
        """The report as stored in the dataset's metadata."""
        return {
            "rows_not_summing_to_1": self.rows,
            "first_index": self.first_index,
            "first_sum": self.first_sum,
            "tolerance": self.tolerance,
        }

    def warn(self, field: str = "behavior_probs") -> None:
        """Emits :meth:`message` as a :class:`DatasetWarning` (nothing when all rows sum to 1)."""
        if (text := self.message(field)) is not None:
            warnings.warn(text, DatasetWarning, stacklevel=3)


def check_behavior_probs(
    fields: dict[Name, np.ndarray],
    rows: np.ndarray,
    names: Mapping[str, str],
    report: BehaviorProbsReport,
) -> None:
    """Checks a chunk's ``behavior_probs`` against its actions and propensities, adds the
    rows not summing to 1 to ``report``, and, without a propensity column, sets
    ``fields[("action_prob",)]`` to the logged action's entry.

    Raises:
        DatasetError: a vector of another width than the first chunk's, a negative or
            non-finite entry, a logged action outside the vector, a logged action whose
            entry is 0, or a propensity different from the action's entry (each naming
            the first such row).

    Examples:
        >>> import numpy as np
        >>> from torchrl_offline.data.log_decisions import BehaviorProbsReport, check_behavior_probs
        >>> fields = {("action",): np.array([0, 1]),
        ...           ("behavior_probs",): np.array([[0.5, 0.5], [0.3, 0.6]])}
        >>> report = BehaviorProbsReport()
        >>> check_behavior_probs(fields, np.array([0, 1]), {}, report)
        >>> print(report.message())
        Field 'behavior_probs': 1 row(s) of the logging policy's probabilities do not sum to 1 (tolerance 0.0001); the first at index 1 sums to 0.9
        >>> fields[("action_prob",)]  # taken from the vectors
        array([0.5, 0.6])
    """
    probs = fields.get(("behavior_probs",))
    if probs is None or not len(probs):
        return
    field = names.get("behavior_probs", "behavior_probs")

    def fail(i: int, text: str) -> None:
        raise DatasetError(
            f"Field {field!r}: {text} at index {int(rows[i])}", field=field, index=int(rows[i])
        )

    probs = probs.reshape(len(probs), -1).astype(np.float64)
    if report.width is None:
        report.width = probs.shape[1]
    elif probs.shape[1] != report.width:
        fail(0, f"a vector of {probs.shape[1]} probabilities (earlier rows have {report.width})")
    if (i := first_index((~np.isfinite(probs) | (probs < 0)).any(-1))) is not None:
        fail(i, f"a negative or non-finite probability {probs[i].tolist()}")
    sums = probs.sum(-1)
    off = np.abs(sums - 1) > report.tolerance
    if off.any():
        if report.first_index is None:
            i = first_index(off)
            report.first_index, report.first_sum = int(rows[i]), float(sums[i])
        report.rows += int(off.sum())
    action = fields[("action",)].reshape(len(probs), -1)
    if action.shape[1] != 1:
        raise DatasetError(
            f"Field {field!r} needs one discrete action index per row, got actions of shape "
            f"{list(action.shape[1:])}",
            field=field,
        )
    action = action[:, 0]
    if (i := first_index((action < 0) | (action >= probs.shape[1]))) is not None:
        fail(i, f"the logged action {action[i].item()} is outside its {probs.shape[1]} actions")
    entry = probs[np.arange(len(probs)), action.astype(np.int64)]
    if (i := first_index(entry <= 0)) is not None:
        fail(i, f"the logged action {action[i].item()} has probability 0")
    if ("action_prob",) in fields:
        logged, what = fields[("action_prob",)].astype(np.float64), "action_prob"
    elif ("action_log_prob",) in fields:
        logged, what = np.exp(fields[("action_log_prob",)].astype(np.float64)), "action_log_prob"
    else:
        fields[("action_prob",)] = entry
        return
    bad = ~np.isclose(logged, entry, rtol=PROPENSITY_RTOL, atol=1e-7)
    if (i := first_index(bad)) is not None:
        what = names.get(what, what)
        fail(
            i,
            f"the logged action {action[i].item()} has probability {entry[i]:.6g}, but its "
            f"logged propensity ({what!r}) is {logged[i]:.6g}",
        )
