"""A training hook that runs off-policy estimators every K steps and logs their estimates.

:class:`OPEHook` puts OPE curves next to the losses of a training run. It works in three
ways:

* inside a TorchRL :class:`~torchrl.trainers.Trainer`: ``hook.register(trainer)`` (or
  ``trainer.register_op("post_optim", hook)``) runs it after every optimisation step; it
  reads the trainer's step count and, unless given its own, the trainer's logger;
* in a custom loop: call ``hook(step)`` after each update;
* by hand: :meth:`OPEHook.run` evaluates now, whatever the step.

The estimators hold a reference to the policy being trained, so every evaluation sees
its current weights. Their results are kept in :attr:`OPEHook.history` and logged as
``<prefix>/<name>/value``, ``.../ci_low``, ``.../ci_high`` and ``.../ess``.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any, Protocol

import torch
from tensordict import TensorDictBase
from torchrl.data import ReplayBuffer
from torchrl.trainers.trainers import TrainerHookBase

from torchrl_offline.ope.result import OPEResult

__all__ = ["OPEHook"]


class _Estimator(Protocol):
    def estimate(self, data: Any) -> OPEResult: ...


class OPEHook(TrainerHookBase):
    """Runs off-policy estimators every ``interval`` steps and logs them.

    Args:
        estimators: a mapping ``name -> estimator`` (anything with ``estimate(data)``
            returning an :class:`~torchrl_offline.ope.result.OPEResult`, e.g. ``FQE``,
            ``WeightedImportanceSampling``), or a single estimator (named after its class).
        data: the logged episodes the estimators read (a replay buffer of the data layer
            or a TensorDict of transitions).

    Keyword Args:
        interval: run every ``interval`` steps (steps that are multiples of it).
        logger: a TorchRL :class:`~torchrl.record.loggers.Logger`; when registered in a
            ``Trainer`` without one, the trainer's logger is used. ``None`` logs nothing
            (results are still kept in :attr:`history`).
        prefix: prefix of the logged names. Defaults to ``"ope"``.
        run_at_start: also run at step 0 (before training). Defaults to ``False``.
        eval_mode: put ``policy`` (if given) in ``eval()`` mode while estimating and restore
            its mode after.
        policy: the trained policy module, for ``eval_mode``.

    Attributes:
        history: one dict per evaluation and estimator: ``step``, ``name``, ``value``,
            ``ci_low``, ``ci_high``, ``ess`` (``nan`` if the estimator gives none).
        latest: the last :class:`~torchrl_offline.ope.result.OPEResult` of each estimator.

    Examples:
        >>> import torch
        >>> from tensordict import TensorDict
        >>> from torchrl_offline.ope.hook import OPEHook
        >>> from torchrl_offline.ope.result import OPEResult
        >>> class MeanReturn:  # any object with estimate(data) -> OPEResult
        ...     def estimate(self, data):
        ...         v = float(data["next", "reward"].mean())
        ...         return OPEResult(value=v, ci_low=v - 1, ci_high=v + 1, diagnostics={"ess": 4.0})
        >>> data = TensorDict({("next", "reward"): torch.ones(4, 1)}, [4])
        >>> hook = OPEHook({"mean": MeanReturn()}, data, interval=10)
        >>> for step in range(1, 31):  # a custom training loop
        ...     _ = hook(step)
        >>> [h["step"] for h in hook.history]
        [10, 20, 30]
        >>> hook.latest["mean"].value
        1.0
    """

    def __init__(
        self,
        estimators: Mapping[str, _Estimator] | _Estimator,
        data: ReplayBuffer | TensorDictBase,
        *,
        interval: int,
        logger: Any | None = None,
        prefix: str = "ope",
        run_at_start: bool = False,
        eval_mode: bool = True,
        policy: torch.nn.Module | None = None,
    ) -> None:
        if interval < 1:
            raise ValueError(f"interval must be >= 1, got {interval}")
        if not isinstance(estimators, Mapping):
            estimators = {type(estimators).__name__: estimators}
        if not estimators:
            raise ValueError("OPEHook needs at least one estimator")
        for name, est in estimators.items():
            if not callable(getattr(est, "estimate", None)):
                raise TypeError(f"estimator {name!r} has no estimate(data) method")
        self.estimators = dict(estimators)
        self.data = data
        self.interval = int(interval)
        self.logger = logger
        self.prefix = prefix
        self.run_at_start = run_at_start
        self.eval_mode = eval_mode
        self.policy = policy
        self.history: list[dict[str, Any]] = []
        self.latest: dict[str, OPEResult] = {}
        self._calls = 0
        self._trainer = None

    # ------------------------------------------------------------------ running
    def _current_step(self, step: int | None) -> int:
        if step is not None:
            return int(step)
        if self._trainer is not None:
            return int(getattr(self._trainer, "_optim_count", self._calls))
        return self._calls

    def __call__(self, step: int | None = None) -> dict[str, float] | None:
        """Runs the estimators if ``step`` is due; returns the logged scalars or ``None``.

        Args:
            step: the current training step. Defaults to the trainer's optimisation step
                count when registered in a ``Trainer``, else the number of calls so far.
        """
        self._calls += 1
        step = self._current_step(step)
        due = step % self.interval == 0 and (step > 0 or self.run_at_start)
        if not due:
            return None
        return self.run(step)

    def run(self, step: int | None = None) -> dict[str, float]:
        """Runs every estimator now, records and logs the results; returns the scalars."""
        step = self._current_step(step)
        was_training = None
        if self.eval_mode and self.policy is not None:
            was_training = self.policy.training
            self.policy.eval()
        try:
            scalars: dict[str, float] = {}
            for name, estimator in self.estimators.items():
                result = estimator.estimate(self.data)
                self.latest[name] = result
                ess = result.diagnostics.get("ess", math.nan)
                record = {
                    "step": step,
                    "name": name,
                    "value": float(result.value),
                    "ci_low": float(result.ci_low),
                    "ci_high": float(result.ci_high),
                    "ess": float(ess) if ess is not None else math.nan,
                }
                self.history.append(record)
                for field in ("value", "ci_low", "ci_high", "ess"):
                    scalars[f"{self.prefix}/{name}/{field}"] = record[field]
        finally:
            if was_training is not None:
                self.policy.train(was_training)
        logger = self._logger()
        if logger is not None:
            for key, value in scalars.items():
                if math.isfinite(value):
                    logger.log_scalar(key, value, step=step)
        return scalars

    def _logger(self):
        if self.logger is not None:
            return self.logger
        if self._trainer is not None:
            return getattr(self._trainer, "logger", None)
        return None

    def curves(self) -> dict[str, list[tuple[int, float]]]:
        """``name -> [(step, value), ...]`` from :attr:`history`, for plotting."""
        out: dict[str, list[tuple[int, float]]] = {}
        for record in self.history:
            out.setdefault(record["name"], []).append((record["step"], record["value"]))
        return out

    # ------------------------------------------------------------------ TorchRL Trainer
    def register(self, trainer, name: str = "ope") -> None:
        """Registers the hook in a TorchRL ``Trainer`` after each optimisation step.

        Args:
            trainer: a :class:`~torchrl.trainers.Trainer`.
            name: the name under which the hook's state is saved with the trainer's.
        """
        self._trainer = trainer
        trainer.register_module(name, self)
        trainer.register_op("post_optim", self)

    def state_dict(self) -> dict[str, Any]:
        return {"calls": self._calls, "history": [dict(h) for h in self.history]}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self._calls = int(state_dict["calls"])
        self.history = [dict(h) for h in state_dict["history"]]
