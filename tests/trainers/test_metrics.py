"""The metrics file: a header, one row per logged step, columns added later, resume; the
logger writing it and the hook drawing the figure."""

from __future__ import annotations

import math

import pytest

from torchrl_offline.trainers.metrics import MetricsFileError, MetricsWriter, read_metrics
from torchrl_offline.trainers.run_logs import MetricsLogger, RecordMetrics


def _write(path, rows):
    writer = MetricsWriter(path)
    writer.start()
    for step, values in rows:
        for key, value in values.items():
            writer.add(key, value, step)
        writer.flush()
    return writer


def test_one_row_per_step_with_a_header_and_columns_added_later(tmp_path):
    path = tmp_path / "metrics.csv"
    _write(
        path,
        [(0, {"eval/return_mean": -10.0}), (5, {"train/loss_a": 1.5, "eval/return_mean": -8.0})],
    )
    assert path.read_text().splitlines() == [
        "step,eval/return_mean,train/loss_a",
        "0,-10.0,",
        "5,-8.0,1.5",
    ]
    columns = read_metrics(tmp_path)  # a run directory reads its metrics.csv
    assert columns["step"].tolist() == [0, 5]
    assert math.isnan(columns["train/loss_a"][0]) and columns["train/loss_a"][1] == 1.5


def test_values_of_one_key_at_one_step_are_averaged_and_rows_come_in_step_order(tmp_path):
    path = tmp_path / "metrics.csv"
    writer = MetricsWriter(path)
    writer.add("online/episode_return", 2.0, 7)
    writer.add("online/episode_return", 4.0, 7)
    writer.add("train/loss_a", 1.0, 3)
    assert writer.flush() == [3, 7]
    assert path.read_text().splitlines() == [
        "step,train/loss_a,online/episode_return",
        "3,1.0,",
        "7,,3.0",
    ]


def test_resuming_drops_the_rows_after_the_checkpoint_and_a_cut_last_line(tmp_path):
    path = tmp_path / "metrics.csv"
    _write(path, [(s, {"train/loss_a": float(s)}) for s in (2, 4, 6)])
    with open(path, "a") as f:
        f.write("8,8.")  # a killed process's half-written row
    writer = MetricsWriter(path)
    writer.start(resume_step=4)
    assert path.read_text().splitlines() == ["step,train/loss_a", "2,2.0", "4,4.0"]
    writer.add("train/loss_a", 6.5, 6)
    writer.flush()
    assert read_metrics(path)["step"].tolist() == [2, 4, 6]
    assert read_metrics(path)["train/loss_a"].tolist() == [2.0, 4.0, 6.5]


def test_a_new_run_starts_a_new_file(tmp_path):
    path = tmp_path / "metrics.csv"
    _write(path, [(2, {"train/loss_a": 1.0})])
    _write(path, [(1, {"train/loss_b": 3.0})])
    assert path.read_text().splitlines() == ["step,train/loss_b", "1,3.0"]


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("", "is empty"),
        ("time,loss\n1,2\n", "header starts with 'time'"),
        ("step,a\n1,2\n2\n", "line 3: 1 fields, the header has 2"),
        ("step,a\n1,2\n2,oops\n", "line 3, column 'a': 'oops' is not a number"),
        ("step,a\n1.5,2\n", "line 2: the step '1.5' is not an integer"),
    ],
)
def test_a_bad_file_is_refused_naming_the_line(tmp_path, text, message):
    path = tmp_path / "metrics.csv"
    path.write_text(text)
    with pytest.raises(MetricsFileError, match=message):
        read_metrics(path)


def test_bad_paths_are_named(tmp_path):
    with pytest.raises(MetricsFileError, match="'.*nope' does not exist"):
        read_metrics(tmp_path / "nope")
    with pytest.raises(MetricsFileError, match="holds no metrics.csv"):
        read_metrics(tmp_path)


def test_the_metrics_logger_passes_everything_on_to_another_logger(tmp_path):
    from torchrl.record.loggers import CSVLogger

    other = CSVLogger("run", log_dir=str(tmp_path / "logs"))
    metrics = MetricsLogger(tmp_path / "metrics.csv", also=other)
    metrics.log_scalar("eval/return_mean", -5.0, step=3)
    metrics.flush()
    assert read_metrics(tmp_path)["eval/return_mean"].tolist() == [-5.0]
    assert other.experiment.scalars["eval/return_mean"] == [(3, -5.0)]


def test_the_figure_is_redrawn_when_due_and_a_failed_drawing_only_warns(tmp_path, caplog):
    metrics = MetricsLogger(tmp_path / "metrics.csv")
    record = RecordMetrics(metrics, figure=tmp_path / "metrics.png", redraw_seconds=0)
    record.start(None)
    metrics.log_scalar("train/lr_actor", 3e-4, step=1)  # nothing a figure draws
    record()
    assert "the run's figure" in caplog.text and "has no value to draw" in caplog.text
    assert not (tmp_path / "metrics.png").exists()
    metrics.log_scalar("train/loss_actor", 0.5, step=2)
    record()  # due at once with redraw_seconds=0
    assert (tmp_path / "metrics.png").read_bytes()[:4] == b"\x89PNG"
