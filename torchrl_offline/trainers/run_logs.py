"""What a run logs besides losses and evaluations, and where it goes: the metrics file and
the figure.

* :class:`MetricsLogger` is a TorchRL :class:`~torchrl.record.loggers.Logger` writing
  every scalar to the run's metrics file (:mod:`~torchrl_offline.trainers.metrics`) and,
  when given one, passing everything on to another logger (TensorBoard, W&B, MLflow).
* :class:`RecordMetrics` writes the rows of each step once the step has logged
  everything (before a checkpoint can be written) and draws the run's figure
  (:func:`~torchrl_offline.trainers.plot.plot_run`) at the end of the run, and during it
  when new rows came and the last drawing is ``redraw_seconds`` old.
* :class:`LogRates` logs the optimizer's learning rates and the training speed.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from torch import Tensor
from torchrl.record.loggers import Logger
from torchrl.trainers import TrainerHookBase

from torchrl_offline.trainers.hooks import _log_scalar
from torchrl_offline.trainers.metrics import MetricsWriter

__all__ = ["LogRates", "MetricsLogger", "RecordMetrics"]

logger = logging.getLogger("torchrl_offline")


class MetricsLogger(Logger):
    """A TorchRL logger writing scalars to a metrics file, and everything to ``also``.

    Args:
        path: the metrics file (``metrics.csv`` of the run directory).

    Keyword Args:
        also (Logger, optional): another logger that receives every call as well.
        exp_name (str): the experiment's name. Defaults to ``"run"``.

    Attributes:
        writer: the :class:`~torchrl_offline.trainers.metrics.MetricsWriter`.
        also: the other logger, or ``None``.

    Examples:
        >>> import tempfile
        >>> from pathlib import Path
        >>> from torchrl_offline.trainers.run_logs import MetricsLogger
        >>> path = Path(tempfile.mkdtemp()) / "metrics.csv"
        >>> metrics = MetricsLogger(path)
        >>> metrics.log_scalar("train/loss_bc", 0.25, step=100)
        >>> metrics.flush()
        >>> path.read_text().splitlines()
        ['step,train/loss_bc', '100,0.25']
    """

    def __init__(
        self, path: str | os.PathLike, *, also: Logger | None = None, exp_name: str = "run"
    ) -> None:
        self.writer = MetricsWriter(path)
        self.also = also
        super().__init__(exp_name=exp_name, log_dir=str(Path(path).parent))

    def _create_experiment(self) -> MetricsWriter:
        return self.writer

    def log_scalar(self, name: str, value: float, step: int | None = None) -> None:
        if isinstance(value, Tensor):
            value = value.item()
        self.writer.add(name, float(value), step)
        if self.also is not None:
            self.also.log_scalar(name, value, step=step)

    def log_video(self, name: str, video: Tensor, step: int | None = None, **kwargs: Any) -> None:
        if self.also is not None:
            self.also.log_video(name, video, step=step, **kwargs)

    def log_hparams(self, cfg: Any) -> None:
        if self.also is not None:
            self.also.log_hparams(cfg)

    def log_histogram(self, name: str, data: Sequence, **kwargs: Any) -> None:
        if self.also is not None:
            self.also.log_histogram(name, data, **kwargs)

    def flush(self, timeout: float | None = None) -> None:
        self.writer.flush()
        if self.also is not None:
            self.also.flush()

    def __repr__(self) -> str:
        also = f", also={self.also!r}" if self.also is not None else ""
        return f"{type(self).__name__}({str(self.writer.path)!r}{also})"


class RecordMetrics(TrainerHookBase):
    """Writes each step's rows to the metrics file and draws the run's figure.

    Registered after every hook that logs (at ``"post_steps_log"``, so the rows of a step
    are on disk before its checkpoint), with a ``"shutdown"`` operation that draws the
    figure of the finished (or interrupted) run. Drawing never stops the run: a failure
    is logged as a warning.

    Args:
        metrics: the run's :class:`MetricsLogger`.

    Keyword Args:
        figure (path, optional): the figure to draw (``None``: none).
        redraw_seconds (float): during the run, the figure is redrawn when new rows were
            written and the last drawing is at least this old. Defaults to ``60``.
    """

    def __init__(
        self,
        metrics: MetricsLogger,
        *,
        figure: str | os.PathLike | None = None,
        redraw_seconds: float = 60.0,
    ) -> None:
        self.metrics = metrics
        self.figure = None if figure is None else Path(figure)
        self.redraw_seconds = float(redraw_seconds)
        self._drawn_at = time.monotonic()

    def start(self, resume_step: int | None) -> None:
        """Starts the metrics file, continuing it after ``resume_step`` when resuming."""
        self.metrics.writer.start(resume_step)

    def __call__(self, batch: Any = None) -> None:
        written = self.metrics.writer.flush()
        due = time.monotonic() - self._drawn_at >= self.redraw_seconds
        if written and due and self.figure is not None:
            self.draw()

    def close(self) -> None:
        """Writes what is left and draws the figure of the run."""
        self.metrics.writer.flush()
        if self.figure is not None:
            self.draw()

    def draw(self) -> Path | None:
        """Draws the figure from the metrics file now; ``None`` if it could not be."""
        from torchrl_offline.trainers.plot import plot_run

        self._drawn_at = time.monotonic()
        try:
            return plot_run(self.metrics.writer.path.parent, self.figure)
        except Exception as err:  # a figure must never stop or fail a training run
            logger.warning("the run's figure %s was not drawn: %s", self.figure, err)
            return None

    def state_dict(self) -> dict[str, Any]:
        return {}

    def load_state_dict(self, state_dict: Mapping[str, Any]) -> None:
        return None

    def register(self, trainer: Any, name: str = "record_metrics") -> None:
        trainer.register_op("post_steps_log", self)
        trainer.register_op("shutdown", self.close)


class LogRates(TrainerHookBase):
    """Logs the learning rate of each optimizer parameter group (``train/lr_<group>``)
    and the training speed (``train/steps_per_s``: gradient steps per second of wall
    clock since the previous point, evaluations included) every ``interval`` steps.

    Args:
        interval (int): steps per logged point. Defaults to ``1000``.
        prefix (str): name prefix. Defaults to ``"train"``.
    """

    def __init__(self, interval: int = 1000, prefix: str = "train") -> None:
        if interval < 1:
            raise ValueError(f"interval must be >= 1, got {interval}")
        self.interval = int(interval)
        self.prefix = prefix
        self._trainer: Any = None
        self._since: tuple[float, int] | None = None

    def _start(self) -> None:
        self._since = (time.perf_counter(), int(self._trainer.collected_frames))

    def __call__(self, batch: Any = None) -> None:
        trainer = self._trainer
        step = int(trainer.collected_frames)
        if step % self.interval:
            return
        optimizer = getattr(trainer, "optimizer", None)
        for i, group in enumerate(getattr(optimizer, "param_groups", ())):
            lr = group.get("lr")
            if isinstance(lr, Tensor):
                lr = lr.item()
            if lr is not None:
                name = group.get("name") or f"group{i}"
                _log_scalar(trainer, f"{self.prefix}/lr_{name}", float(lr), step)
        if self._since is not None:
            start, first = self._since
            elapsed = time.perf_counter() - start
            if elapsed > 0 and step > first:
                _log_scalar(trainer, f"{self.prefix}/steps_per_s", (step - first) / elapsed, step)
        self._start()

    def state_dict(self) -> dict[str, Any]:
        return {}

    def load_state_dict(self, state_dict: Mapping[str, Any]) -> None:
        return None

    def register(self, trainer: Any, name: str = "log_rates") -> None:
        self._trainer = trainer
        trainer.register_op("setup", self._start)
        trainer.register_op("post_steps_log", self)
