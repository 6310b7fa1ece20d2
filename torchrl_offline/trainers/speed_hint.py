"""A hint, given once, when a training run will take long: how much faster the
algorithm's ``small`` preset (2x64 networks) trains on this machine.

:class:`LongRunHint` watches the first seconds of a run; when the time left at the
measured speed is above a threshold (10 minutes by default) and the run's networks are
larger than the preset's, it times a few updates of the run's algorithm and of the same
algorithm with the preset's network sizes, on the current batch, and prints one line on
stderr::

    hint: about 43 min to go at 1.1 steps/s; --preset small (2x64 networks) trains 5.3x
    faster here: about 8 min

The measurement runs on copies of the networks inside :func:`torch.random.fork_rng`:
the run itself (parameters, optimizer, random streams, checkpoints) is the same with or
without the hint. ``torchrl-offline train`` registers it; in Python pass it to
:func:`~torchrl_offline.trainers.offline.train` through ``hooks=``.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Mapping
from typing import Any, TextIO

import torch
from tensordict import TensorDictBase
from torchrl.trainers import TrainerHookBase

from torchrl_offline.objectives.declaration import SMALL_PRESET
from torchrl_offline.trainers.algorithms import Algorithm, build_algorithm, declaration
from torchrl_offline.trainers.metadata import spec_from_dict

__all__ = ["LongRunHint", "format_duration"]


def format_duration(seconds: float) -> str:
    """A duration in words: ``"40 s"``, ``"43 min"``, ``"2.5 h"``.

    Examples:
        >>> from torchrl_offline.trainers.speed_hint import format_duration
        >>> format_duration(40), format_duration(43 * 60 + 10), format_duration(9000)
        ('40 s', '43 min', '2.5 h')
    """
    if seconds < 90:
        return f"{seconds:.0f} s"
    if seconds < 90 * 60:
        return f"{seconds / 60:.0f} min"
    return f"{seconds / 3600:.1f} h"


def _sizes(value: Any) -> str:
    sizes = [int(v) for v in value]
    if len(set(sizes)) == 1:
        return f"{len(sizes)}x{sizes[0]}"
    return "-".join(map(str, sizes))


class LongRunHint(TrainerHookBase):
    """Says once, on stderr, how much faster the ``small`` preset trains when a run will
    take longer than ``threshold`` seconds.

    Needs an :class:`~torchrl_offline.trainers.trainer.OfflineTrainer` built by
    :func:`~torchrl_offline.trainers.offline.train` (the algorithm is rebuilt from the
    trainer's metadata). It stays quiet when the run's networks are not larger than the
    preset's, when they do not train at least ``min_speedup`` times faster, when the algorithm has no ``small`` preset, or when the networks are not on
    the CPU; a failed measurement is no error, only no hint.

    Keyword Args:
        advice (str): how to ask for the preset, in the message. Defaults to
            ``"preset='small'"`` (``torchrl-offline train`` passes ``"--preset small"``).
        threshold (float): seconds left above which the hint is given. Defaults to 600.
        after (float): seconds of training measured before deciding. Defaults to 20.
        probe_updates (int): timed updates of each network size (after one warm-up).
            Defaults to 3.
        min_speedup (float): the least measured gain worth a hint. Defaults to 1.5.
        file (TextIO, optional): where the hint goes; stderr when omitted.

    Attributes:
        message (str or None): the hint given, if any.
    """

    def __init__(
        self,
        *,
        advice: str = f"preset={SMALL_PRESET!r}",
        threshold: float = 600.0,
        after: float = 20.0,
        probe_updates: int = 3,
        min_speedup: float = 1.5,
        file: TextIO | None = None,
    ) -> None:
        self.advice = advice
        self.threshold = float(threshold)
        self.after = float(after)
        self.probe_updates = max(int(probe_updates), 1)
        self.min_speedup = float(min_speedup)
        self.file = file
        self.message: str | None = None
        self._trainer: Any = None
        self._start: tuple[float, int] | None = None
        self._decided = False

    def __call__(self, batch: TensorDictBase | None = None) -> None:
        if self._decided or batch is None:
            return
        now, step = time.perf_counter(), int(self._trainer.collected_frames)
        if self._start is None:  # the first update (lazy set-up, warm caches) is not timed
            self._start = (now, step)
            return
        elapsed, done = now - self._start[0], step - self._start[1]
        if elapsed < self.after or done < 1:
            return
        self._decided = True
        rate = done / elapsed
        left = (self._trainer.total_frames - step) / rate
        if left <= self.threshold:
            return
        try:
            speedup, sizes = self._speedup(batch)
        except Exception:  # a hint never stops a run
            return
        if speedup is None or speedup < self.min_speedup:
            return
        self.message = (
            f"hint: about {format_duration(left)} to go at {rate:.3g} steps/s; "
            f"{self.advice} ({sizes} networks) trains {speedup:.1f}x faster here: "
            f"about {format_duration(left / speedup)}"
        )
        from tqdm import tqdm

        tqdm.write(self.message, file=self.file if self.file is not None else sys.stderr)

    def _speedup(self, batch: TensorDictBase) -> tuple[float | None, str]:
        """How many times faster an update is with the preset's networks, and their
        sizes (``None`` when there is nothing to compare)."""
        meta: Mapping[str, Any] = self._trainer.metadata
        name, hp = meta["algorithm"], dict(meta["hyperparameters"])
        preset = declaration(name).presets.get(SMALL_PRESET)
        device = next(self._trainer.loss_module.parameters()).device
        if not preset or device.type != "cpu":
            return None, ""
        small_hp = {**hp, **{k: list(v) for k, v in preset.items()}}
        sizes = _sizes(preset.get("hidden_sizes", next(iter(preset.values()))))
        with torch.random.fork_rng(devices=[]):
            current = self._build(meta, hp)
            small = self._build(meta, small_hp)
            if _parameter_count(small) >= _parameter_count(current):
                return None, sizes
            seconds = [self._seconds_per_update(algo, batch) for algo in (current, small)]
        return seconds[0] / seconds[1], sizes

    @staticmethod
    def _build(meta: Mapping[str, Any], hp: Mapping[str, Any]) -> Algorithm:
        return build_algorithm(
            meta["algorithm"],
            spec_from_dict(meta["observation_spec"]),
            spec_from_dict(meta["action_spec"]),
            **hp,
        )

    def _seconds_per_update(self, algo: Algorithm, batch: TensorDictBase) -> float:
        def update() -> None:
            losses = algo.loss(batch.clone())
            total = sum(losses[k] for k in algo.loss_keys if k in losses.keys())
            algo.optimizer.zero_grad(set_to_none=True)
            total.backward()
            algo.optimizer.step()
            if algo.target_updater is not None:
                algo.target_updater.step()

        update()  # warm-up
        start = time.perf_counter()
        for _ in range(self.probe_updates):
            update()
        return (time.perf_counter() - start) / self.probe_updates

    def state_dict(self) -> dict[str, Any]:
        return {}

    def load_state_dict(self, state_dict: Mapping[str, Any]) -> None:
        return None

    def register(self, trainer: Any, name: str = "long_run_hint") -> None:
        self._trainer = trainer
        trainer.register_op("post_steps_log", self)


def _parameter_count(algo: Algorithm) -> int:
    return sum(p.numel() for p in algo.loss.parameters())
