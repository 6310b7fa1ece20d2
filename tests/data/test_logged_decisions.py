"""Logs of decisions (one step per episode) read by from_logged: ``horizon=1``, no next
observation, propensities and positions, and the errors of bad ones."""

from __future__ import annotations

import re
import warnings

import numpy as np
import pytest
import torch

from tests.decision_log import decision_frame, decision_log, logging_probs
from torchrl_offline.data.errors import DatasetError, DatasetWarning
from torchrl_offline.data.logged import from_logged


def test_horizon_one_makes_every_row_a_terminated_episode(tmp_path):
    log = decision_log(200)
    rb = from_logged(log, path=tmp_path / "d", horizon=1)
    data = rb.storage[:]
    assert len(rb) == 200
    assert data["episode"].tolist() == list(range(200))
    assert data["next", "terminated"].all() and not data["next", "truncated"].any()
    # A terminal step needs no next observation: it is stored as the observation.
    assert torch.equal(data["next", "observation"], data["observation"])
    assert rb.metadata["horizon"] == 1
    assert rb.metadata["dropped_transitions"] == 0


def test_position_is_its_own_integer_key_and_propensities_are_kept(tmp_path):
    log = decision_log(200)
    data = from_logged(log, path=tmp_path / "d", horizon=1).storage[:]
    assert data["observation"].shape == (200, 3)  # the position is not in the observation
    assert data["position"].dtype == torch.int64
    assert data["position"].tolist() == log["position"].tolist()
    np.testing.assert_allclose(data["action_prob"].numpy(), log["action_prob"])


def test_log_probabilities_are_accepted(tmp_path):
    log = decision_log(50)
    log["action_log_prob"] = np.log(log.pop("action_prob"))
    rb = from_logged(log, path=tmp_path / "d", horizon=1)
    assert rb.metadata["behavior_keys"] == ["action_log_prob"]
    assert (rb.storage[:]["action_log_prob"] <= 0).all()


@pytest.mark.parametrize("chunk_size", [1, 7, 65536])
def test_row_ids_give_the_episode_order_without_horizon(tmp_path, chunk_size):
    """A log without flags or next observations whose ids differ row to row holds whole
    one-step episodes: no dummy column and nothing dropped."""
    log = decision_log(60)
    log["episode"] = np.arange(1000, 1060)
    rb = from_logged(log, path=tmp_path / "d", chunk_size=chunk_size)
    data = rb.storage[:]
    assert len(rb) == 60 and rb.metadata["dropped_transitions"] == 0
    assert data["next", "terminated"].all() and rb.metadata["horizon"] == 1


@pytest.mark.parametrize("chunk_size", [2, 65536])
def test_only_one_row_episodes_count_as_decisions(tmp_path, chunk_size):
    """Without flags, an episode of several rows still ends cut (its last row has no next
    observation: dropped on request); the one-row episodes around it are terminal."""
    log = decision_log(8)
    log["episode"] = [0, 1, 2, 2, 2, 3, 4, 5]
    rb = from_logged(log, path=tmp_path / "d", drop_incomplete=True, chunk_size=chunk_size)
    data = rb.storage[:]
    assert data["next", "terminated"].reshape(-1).tolist() == [1, 1, 0, 0, 1, 1, 1]
    assert data["next", "truncated"].reshape(-1).tolist() == [0, 0, 0, 1, 0, 0, 0]
    assert rb.metadata["dropped_transitions"] == 1 and rb.metadata["horizon"] is None


def test_horizon_one_over_chunks_and_files(tmp_path):
    log = decision_log(100)
    frame = decision_frame(log, position="slot")
    frame["request_id"] = np.arange(100) * 7
    frame.to_csv(tmp_path / "log.csv", index=False)
    rb = from_logged(
        tmp_path / "log.csv",
        path=tmp_path / "d",
        horizon=1,
        chunk_size=16,
        columns={"episode": "request_id"},
    )
    data = rb.storage[:]
    assert data["episode"].tolist() == list(range(100))
    assert data["position"].tolist() == log["position"].tolist()


def test_a_multi_step_log_keeps_its_episodes_and_has_no_horizon(tmp_path):
    log = decision_log(6)
    log["terminated"] = [0, 0, 1, 0, 0, 1]
    rb = from_logged(log, path=tmp_path / "d")
    assert rb.storage[:]["episode"].tolist() == [0, 0, 0, 1, 1, 1]
    assert rb.metadata["horizon"] is None


@pytest.mark.parametrize(
    ("field", "values", "index", "words"),
    [
        ("action_prob", {1: 0.0}, 1, "probability in (0, 1]"),
        ("action_prob", {3: 1.5}, 3, "probability in (0, 1]"),
        ("action_log_prob", {2: 0.1}, 2, "log-probability"),
        ("action_log_prob", {4: -np.inf}, 4, "log-probability"),
        ("position", {5: -1}, 5, "non-negative integer"),
    ],
)
def test_bad_propensities_and_positions_name_the_column_and_row(
    tmp_path, field, values, index, words
):
    log = decision_log(20)
    if field == "action_log_prob":
        log["action_log_prob"] = np.log(log.pop("action_prob"))
    for row, value in values.items():
        log[field] = log[field].astype(np.float64)
        log[field][row] = value
    with pytest.raises(DatasetError, match=rf"'{field}'.*index {index}.*{re.escape(words)}") as err:
        from_logged(log, path=tmp_path / "d", horizon=1)
    assert (err.value.field, err.value.index) == (field, index)
    assert not (tmp_path / "d").exists()


def test_duplicated_row_ids_are_refused(tmp_path):
    log = decision_log(20)
    log["episode"] = np.r_[np.arange(10), 4, np.arange(11, 20)]
    with pytest.raises(DatasetError, match=r"row id 4 at index 10 is duplicated") as err:
        from_logged(log, path=tmp_path / "d", horizon=1)
    assert (err.value.field, err.value.index) == ("episode", 10)


def test_a_flag_that_contradicts_horizon_one_is_refused(tmp_path):
    log = decision_log(20)
    log["truncated"] = np.r_[np.zeros(7, bool), True, np.zeros(12, bool)]
    with pytest.raises(DatasetError, match=r"'truncated' is True at index 7"):
        from_logged(log, path=tmp_path / "d", horizon=1)


def test_horizon_other_than_one_is_refused(tmp_path):
    with pytest.raises(ValueError, match="horizon must be 1"):
        from_logged(decision_log(5), path=tmp_path / "d", horizon=2)


def test_positions_outside_the_declared_range_name_the_row(tmp_path):
    log = decision_log(20, positions=3)
    rb = from_logged(log, path=tmp_path / "ok", horizon=1, num_positions=3)
    assert rb.storage[:]["position"].max() <= 2
    log["position"][9] = 3
    with pytest.raises(
        DatasetError,
        match=r"'position': value 3 at index 9 is outside the 3 declared positions \(0 \.\. 2\)",
    ) as err:
        from_logged(log, path=tmp_path / "d", horizon=1, num_positions=3)
    assert (err.value.field, err.value.index) == ("position", 9)
    assert not (tmp_path / "d").exists()


def test_a_position_range_needs_a_position_column(tmp_path):
    log = decision_log(5)
    log.pop("position")
    with pytest.raises(DatasetError, match="num_positions=3 is given but the log has no position"):
        from_logged(log, path=tmp_path / "d", horizon=1, num_positions=3)
    with pytest.raises(ValueError, match="num_positions must be a positive integer"):
        from_logged(decision_log(5), path=tmp_path / "d", horizon=1, num_positions=0)


def _with_full_distribution(log):
    """``log`` with the logging policy's probability of every item (``behavior_probs``)."""
    log["behavior_probs"] = logging_probs(log["observation"]).astype(np.float32)
    return log


def test_the_full_distribution_is_stored_and_checked_against_the_propensity(tmp_path):
    log = _with_full_distribution(decision_log(30))
    with warnings.catch_warnings():
        warnings.simplefilter("error", DatasetWarning)  # every row sums to 1: no report
        rb = from_logged(log, path=tmp_path / "d", horizon=1)
    data = rb.storage[:]
    assert data["behavior_probs"].shape == (30, 4)
    assert rb.metadata["behavior_probs_report"]["rows_not_summing_to_1"] == 0
    log["action_prob"][4] *= 0.5
    with pytest.raises(
        DatasetError,
        match=r"'behavior_probs': the logged action \d has probability .* but its logged propensity \('action_prob'\) is .* at index 4",
    ) as err:
        from_logged(log, path=tmp_path / "e", horizon=1)
    assert (err.value.field, err.value.index) == ("behavior_probs", 4)


def test_rows_not_summing_to_one_are_reported_with_count_first_row_and_sum(tmp_path):
    log = _with_full_distribution(decision_log(30))
    log["behavior_probs"][[7, 12], -1] += 0.05
    log["action_prob"] = log["behavior_probs"][np.arange(30), log["action"]]
    expected = float(log["behavior_probs"][7].astype(np.float64).sum())
    with pytest.warns(
        DatasetWarning, match=r"2 row\(s\) .* do not sum to 1 .* the first at index 7 sums to 1\.05"
    ):
        rb = from_logged(log, path=tmp_path / "d", horizon=1)
    report = rb.metadata["behavior_probs_report"]
    assert (report["rows_not_summing_to_1"], report["first_index"]) == (2, 7)
    assert report["first_sum"] == pytest.approx(expected, abs=1e-6)


def test_the_propensity_is_taken_from_the_full_distribution_when_not_logged(tmp_path):
    log = _with_full_distribution(decision_log(30))
    expected = log.pop("action_prob")
    rb = from_logged(log, path=tmp_path / "d", horizon=1)
    assert rb.metadata["behavior_keys"] == ["action_prob"]
    np.testing.assert_allclose(rb.storage[:]["action_prob"].numpy(), expected, rtol=1e-6)
    log["behavior_probs"][3, log["action"][3]] = 0.0
    with pytest.raises(DatasetError, match=r"logged action \d has probability 0 at index 3"):
        from_logged(log, path=tmp_path / "e", horizon=1)


def test_the_full_distribution_in_scalar_columns_of_a_file(tmp_path):
    log = _with_full_distribution(decision_log(20))
    frame = decision_frame({k: v for k, v in log.items() if k != "behavior_probs"})
    for i in range(4):
        frame[f"behavior_probs_{i}"] = log["behavior_probs"][:, i]
    frame.loc[5, "behavior_probs_2"] = -0.1
    frame.to_csv(tmp_path / "log.csv", index=False)
    with pytest.raises(DatasetError, match=r"negative or non-finite probability .* at index 5"):
        from_logged(tmp_path / "log.csv", path=tmp_path / "d", horizon=1, chunk_size=4)
