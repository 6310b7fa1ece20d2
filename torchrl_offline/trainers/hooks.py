"""Trainer hooks for offline training: evaluation, checkpoints, loss logging, progress.

Each hook is a TorchRL :class:`~torchrl.trainers.TrainerHookBase`: ``hook.register(trainer)``
puts it at its default place in :class:`~torchrl_offline.trainers.offline.OfflineTrainer`
(or any TorchRL ``Trainer``), and its ``state_dict`` is saved with the trainer. Steps are
gradient steps (``trainer.collected_frames`` in an ``OfflineTrainer``).
"""

from __future__ import annotations

import math
import os
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from tensordict import TensorDictBase
from tensordict.nn import TensorDictModuleBase
from torchrl.envs import EnvBase
from torchrl.envs.utils import ExplorationType, set_exploration_type
from torchrl.record.loggers import Logger
from torchrl.trainers import TrainerHookBase

from torchrl_offline.trainers.checkpoint import checkpoint_path, list_checkpoints, save_checkpoint

__all__ = [
    "CheckpointHook",
    "EvaluationHook",
    "EvaluationResult",
    "LogLosses",
    "ProgressBar",
    "evaluate_policy",
    "make_logger",
]

LOGGER_KINDS = ("csv", "tensorboard", "wandb", "mlflow")
#: The package each optional logger needs, for the install hint of :func:`make_logger`.
LOGGER_PACKAGES = {"tensorboard": "tensorboard", "wandb": "wandb", "mlflow": "mlflow"}


# --------------------------------------------------------------------------- evaluation
@dataclass
class EvaluationResult:
    """Returns of a policy over evaluation episodes.

    Attributes:
        returns: the undiscounted return of each episode.
        lengths: the length of each episode.
        mean: mean return.
        std: standard deviation of the returns (population, 0 for one episode).
        normalized_score: ``100 * (mean - ref_min) / (ref_max - ref_min)`` when reference
            returns are known, else ``None``.
        policy_mode: the policy that ran: ``"greedy"`` (deterministic actions) or
            ``"stochastic"`` (actions sampled from its distribution).
    """

    returns: list[float]
    lengths: list[int]
    mean: float
    std: float
    normalized_score: float | None = None
    policy_mode: str = "greedy"

    def as_dict(self) -> dict[str, Any]:
        """The summary as plain numbers (``return_mean``, ``return_std``, ...)."""
        return {
            "return_mean": self.mean,
            "return_std": self.std,
            "normalized_score": self.normalized_score,
            "episode_length": sum(self.lengths) / max(len(self.lengths), 1),
        }


def evaluate_policy(
    env: EnvBase,
    policy: TensorDictModuleBase,
    *,
    num_episodes: int = 10,
    seed: int = 0,
    max_steps: int = 1000,
    reference: tuple[float, float] | None = None,
    policy_mode: str = "greedy",
) -> EvaluationResult:
    """Runs ``policy`` (deterministic actions by default) for ``num_episodes`` episodes in ``env``.

    The episodes run inside :func:`torch.random.fork_rng` with the env seeded by
    ``seed``, so evaluating neither depends on nor changes the caller's random state:
    the same policy and seed give the same returns, and periodic evaluation does not
    alter the training run.

    Args:
        env: a TorchRL environment with batch size ``[]``.
        policy: the actor; it runs under ``ExplorationType.DETERMINISTIC`` (or ``RANDOM``
            with ``policy_mode="stochastic"``).
        num_episodes: number of episodes.
        seed: seed of the env (and of torch inside the evaluation).
        max_steps: cap on the length of an episode.
        reference: ``(ref_min_score, ref_max_score)`` for the normalized score.
        policy_mode: ``"greedy"`` (the actor's deterministic action, under
            ``ExplorationType.DETERMINISTIC``: the policy one deploys) or ``"stochastic"``
            (actions sampled from its distribution, ``ExplorationType.RANDOM``).

    Returns:
        An :class:`EvaluationResult`.

    Examples:
        >>> import torch
        >>> from torchrl.envs import GymEnv
        >>> from torchrl.modules import Actor
        >>> from torchrl_offline.trainers.hooks import evaluate_policy
        >>> env = GymEnv("Pendulum-v1")
        >>> policy = Actor(torch.nn.Linear(3, 1), spec=env.action_spec)
        >>> result = evaluate_policy(env, policy, num_episodes=2, max_steps=20,
        ...                          reference=(-1500.0, -150.0))
        >>> len(result.returns), result.lengths
        (2, [20, 20])
    """
    if num_episodes < 1:
        raise ValueError(f"num_episodes must be >= 1, got {num_episodes}")
    modes = {"greedy": ExplorationType.DETERMINISTIC, "stochastic": ExplorationType.RANDOM}
    if policy_mode not in modes:
        raise ValueError(f"policy_mode must be 'greedy' or 'stochastic', got {policy_mode!r}")
    returns: list[float] = []
    lengths: list[int] = []
    with torch.random.fork_rng(devices=[]), torch.no_grad():
        torch.manual_seed(seed)
        env.set_seed(seed)
        with set_exploration_type(modes[policy_mode]):
            for _ in range(num_episodes):
                rollout = env.rollout(max_steps, policy, auto_reset=True, break_when_any_done=True)
                returns.append(float(rollout.get(("next", "reward")).sum()))
                lengths.append(int(rollout.numel()))
    mean = sum(returns) / len(returns)
    std = math.sqrt(sum((r - mean) ** 2 for r in returns) / len(returns))
    score = None
    if reference is not None:
        lo, hi = (float(v) for v in reference)
        if hi != lo:
            score = 100.0 * (mean - lo) / (hi - lo)
    return EvaluationResult(returns, lengths, mean, std, score, policy_mode)


def _log_scalar(trainer: Any, key: str, value: float, step: int) -> None:
    logger = getattr(trainer, "logger", None)
    if logger is not None:
        logger.log_scalar(key, value, step=step)
    log_dict = getattr(trainer, "_log_dict", None)
    if log_dict is not None:  # where TorchRL's EarlyStopping looks for monitored metrics
        log_dict[key].append(value)


class EvaluationHook(TrainerHookBase):
    """Evaluates the policy in an environment every ``interval`` steps.

    Logs ``{prefix}/return_mean``, ``{prefix}/return_std``, ``{prefix}/episode_length``
    and, with reference returns, ``{prefix}/normalized_score`` to the trainer's logger
    (always, whatever the trainer's ``log_interval``) and to ``trainer._log_dict``, so
    TorchRL's :class:`~torchrl.trainers.EarlyStopping` can monitor them
    (``EarlyStopping(monitor="eval/return_mean")``, registered after this hook). The
    policy is also evaluated before the first update (step 0) and after the last one.

    Args:
        env: the evaluation environment.
        policy: the actor to evaluate.

    Keyword Args:
        interval (int): steps between evaluations. Defaults to ``5000``.
        num_episodes (int): episodes per evaluation. Defaults to ``10``.
        seed (int): env seed of every evaluation (the same episodes' starts each time).
            Defaults to ``0``.
        max_steps (int): cap on episode length. Defaults to ``1000``.
        reference (tuple of float, optional): ``(ref_min_score, ref_max_score)``.
        prefix (str): name prefix of the logged values. Defaults to ``"eval"``.

    Attributes:
        history (list of dict): one entry per evaluation: ``step``, ``return_mean``,
            ``return_std``, ``normalized_score``, ``episode_length``.

    Examples:
        >>> import torch
        >>> from torchrl.envs import GymEnv
        >>> from torchrl.modules import Actor
        >>> from torchrl_offline.trainers.hooks import EvaluationHook
        >>> env = GymEnv("Pendulum-v1")
        >>> hook = EvaluationHook(env, Actor(torch.nn.Linear(3, 1), spec=env.action_spec),
        ...                       interval=100, num_episodes=1, max_steps=10)
        >>> hook.evaluate(step=0)["episode_length"]
        10.0
    """

    def __init__(
        self,
        env: EnvBase,
        policy: TensorDictModuleBase,
        *,
        interval: int = 5000,
        num_episodes: int = 10,
        seed: int = 0,
        max_steps: int = 1000,
        reference: tuple[float, float] | None = None,
        prefix: str = "eval",
    ) -> None:
        if interval < 1:
            raise ValueError(f"interval must be >= 1, got {interval}")
        self.env = env
        self.policy = policy
        self.interval = int(interval)
        self.num_episodes = int(num_episodes)
        self.seed = int(seed)
        self.max_steps = int(max_steps)
        self.reference = reference
        self.prefix = prefix
        self.history: list[dict[str, Any]] = []
        self._trainer: Any = None

    def evaluate(self, step: int) -> dict[str, Any]:
        """Evaluates now, records the result under ``step`` and logs it."""
        result = evaluate_policy(
            self.env,
            self.policy,
            num_episodes=self.num_episodes,
            seed=self.seed,
            max_steps=self.max_steps,
            reference=self.reference,
        )
        entry = {"step": int(step), **result.as_dict()}
        self.history.append(entry)
        for key, value in entry.items():
            if key != "step" and value is not None:
                _log_scalar(self._trainer, f"{self.prefix}/{key}", float(value), step)
        return entry

    def _current_step(self) -> int:
        return int(getattr(self._trainer, "collected_frames", 0))

    def _already_done(self, step: int) -> bool:
        return bool(self.history) and self.history[-1]["step"] == step

    def setup(self) -> None:
        """Evaluates the policy before training (skipped when resuming a run)."""
        if not self.history:
            self.evaluate(self._current_step())

    def __call__(self, batch: TensorDictBase | None = None) -> None:
        step = self._current_step()
        total = getattr(self._trainer, "total_frames", None)
        if (step % self.interval == 0 or step == total) and not self._already_done(step):
            self.evaluate(step)

    def state_dict(self) -> dict[str, Any]:
        return {"history": [dict(h) for h in self.history]}

    def load_state_dict(self, state_dict: Mapping[str, Any]) -> None:
        self.history = [dict(h) for h in state_dict.get("history", [])]
        log_dict = getattr(self._trainer, "_log_dict", None)
        if self.history and log_dict is not None:  # for EarlyStopping after a resume
            for key, value in self.history[-1].items():
                if key != "step" and value is not None:
                    log_dict[f"{self.prefix}/{key}"].append(float(value))

    def register(self, trainer: Any, name: str = "evaluation") -> None:
        self._trainer = trainer
        trainer.register_op("setup", self.setup)
        trainer.register_op("post_steps_log", self)
        trainer.register_module(name, self)


# --------------------------------------------------------------------------- checkpoints
class CheckpointHook(TrainerHookBase):
    """Writes an atomic checkpoint of the trainer every ``interval`` steps.

    The checkpoint holds what :meth:`OfflineTrainer.checkpoint_state` returns: the loss
    module (networks and target parameters), the optimizer, every registered hook, the
    replay-buffer sampler state, the random generators' states and the step. It is
    written at the end of a step, after evaluation and logging, as
    ``directory/checkpoint_<step>.pt``; the ``keep`` newest files are kept (older ones
    are deleted only after a newer one is safely on disk). The trainer also saves when
    training ends or is stopped (Ctrl-C, early stopping).

    Args:
        directory: where the checkpoints go.

    Keyword Args:
        interval (int): steps between checkpoints. Defaults to ``5000``.
        keep (int): how many checkpoints to keep. Defaults to ``2``.
        metadata (dict, optional): JSON-able entries stored with every checkpoint (the
            trainer adds the algorithm description itself).
    """

    def __init__(
        self,
        directory: str | os.PathLike,
        *,
        interval: int = 5000,
        keep: int = 2,
        metadata: Mapping[str, Any] | None = None,
    ) -> None:
        if interval < 1:
            raise ValueError(f"interval must be >= 1, got {interval}")
        if keep < 1:
            raise ValueError(f"keep must be >= 1, got {keep}")
        self.directory = Path(directory)
        self.interval = int(interval)
        self.keep = int(keep)
        self.metadata = dict(metadata or {})
        self.last_path: Path | None = None

    def save(self, trainer: Any) -> Path:
        """Writes the checkpoint of the trainer's current step and prunes old ones."""
        step = int(trainer.collected_frames)
        state = trainer.checkpoint_state()
        state["metadata"] = {**self.metadata, **state.get("metadata", {})}
        path = save_checkpoint(checkpoint_path(self.directory, step), state)
        self.last_path = path
        for old in list_checkpoints(self.directory)[: -self.keep]:
            old.unlink(missing_ok=True)
        return path

    def maybe_save(self, trainer: Any, force: bool = False) -> Path | None:
        """Saves when the step is a multiple of ``interval`` (or when ``force``)."""
        step = int(trainer.collected_frames)
        if force or step % self.interval == 0:
            if self.last_path is not None and self.last_path == checkpoint_path(
                self.directory, step
            ):
                return self.last_path
            return self.save(trainer)
        return None

    def state_dict(self) -> dict[str, Any]:
        return {}

    def load_state_dict(self, state_dict: Mapping[str, Any]) -> None:
        return None

    def register(self, trainer: Any, name: str = "checkpoint") -> None:
        if not hasattr(trainer, "checkpoint_state"):
            raise TypeError("CheckpointHook needs an OfflineTrainer (no checkpoint_state method)")
        trainer.add_checkpointer(self)


# --------------------------------------------------------------------------- logging
class LogLosses(TrainerHookBase):
    """Logs the mean of every scalar loss entry over each ``interval`` steps.

    Values go to the trainer's logger as ``train/<key>`` at steps that are multiples of
    ``interval`` (and are appended to ``trainer._log_dict`` for TorchRL hooks such as
    ``EarlyStopping``). Non-scalar entries are skipped. Each entry's mean is over the
    steps that wrote it: with a delayed policy update, ``loss_actor`` is the mean over
    the actor's updates. The sums and counts stay on the losses' device (one float64
    accumulator, one column per entry seen) and are read back once per logged point,
    not once per step and entry, also when the entries change from step to step.

    Args:
        interval (int): steps per logged point. Defaults to ``1000``.
        prefix (str): name prefix. Defaults to ``"train"``.
    """

    def __init__(self, interval: int = 1000, prefix: str = "train") -> None:
        if interval < 1:
            raise ValueError(f"interval must be >= 1, got {interval}")
        self.interval = int(interval)
        self.prefix = prefix
        self._keys: list[str] = []  # the accumulator's columns
        self._acc: torch.Tensor | None = None  # [2, len(_keys)]: float64 sums, counts
        self._columns: dict[tuple[str, ...], torch.Tensor] = {}  # entry set -> columns
        self._restored: dict[str, tuple[float, float]] = {}  # from a checkpoint, not yet seen
        self._count = 0
        self._trainer: Any = None

    def __call__(self, optim_steps: int, losses: TensorDictBase | None) -> None:
        if losses is not None:
            scalars = [
                (key, value)
                for key, value in losses.items()
                if isinstance(value, torch.Tensor) and value.numel() == 1
            ]
            if scalars:
                keys = tuple(key for key, _ in scalars)
                values = torch.stack([v.detach().reshape(()).to(torch.float64) for _, v in scalars])
                columns = self._columns.get(keys)
                if columns is None:
                    columns = self._add_columns(keys, values.device)
                update = torch.stack([values, torch.ones_like(values)])
                self._acc.index_add_(1, columns, update)
            self._count += 1
        step = int(getattr(self._trainer, "collected_frames", optim_steps))
        if step % self.interval == 0 and self._count:
            for key, (total, count) in self._totals().items():
                if count:
                    _log_scalar(self._trainer, f"{self.prefix}/{key}", total / count, step)
            self._keys, self._acc, self._columns, self._restored = [], None, {}, {}
            self._count = 0

    def _add_columns(self, keys: tuple[str, ...], device: torch.device) -> torch.Tensor:
        """Columns of ``keys`` in the accumulator, adding those it lacks (no host read)."""
        new = [key for key in keys if key not in self._keys]
        if new:
            start = [self._restored.pop(key, (0.0, 0.0)) for key in new]
            block = torch.tensor(start, dtype=torch.float64, device=device).T.reshape(2, -1)
            self._acc = block if self._acc is None else torch.cat([self._acc, block], 1)
            self._keys.extend(new)
        columns = torch.tensor([self._keys.index(k) for k in keys], device=device)
        self._columns[keys] = columns
        return columns

    def _totals(self) -> dict[str, tuple[float, float]]:
        """``key -> (sum, count)`` since the last logged point."""
        totals = dict(self._restored)
        if self._acc is not None:
            sums, counts = self._acc.tolist()
            totals.update(zip(self._keys, zip(sums, counts)))
        return totals

    def state_dict(self) -> dict[str, Any]:
        totals = self._totals()
        return {
            "sums": {k: s for k, (s, _) in totals.items()},
            "counts": {k: c for k, (_, c) in totals.items()},
            "count": self._count,
        }

    def load_state_dict(self, state_dict: Mapping[str, Any]) -> None:
        self._count = int(state_dict.get("count", 0))
        sums = dict(state_dict.get("sums", {}))
        # checkpoints written before per-entry counts: every entry was written each step
        counts = dict(state_dict.get("counts", {k: float(self._count) for k in sums}))
        self._restored = {k: (float(sums[k]), float(counts.get(k, 0.0))) for k in sums}
        self._keys, self._acc, self._columns = [], None, {}

    def register(self, trainer: Any, name: str = "log_losses") -> None:
        self._trainer = trainer
        trainer.register_op("post_optim_complete_log", self)
        trainer.register_module(name, self)


class ProgressBar(TrainerHookBase):
    """A tqdm progress bar over gradient steps with the time left (tqdm's
    ``[elapsed<remaining, rate]``), steps/s and the latest losses.

    Args:
        total (int, optional): total steps; read from the trainer when omitted.
        interval (int): steps between refreshes. Defaults to ``50``.
        seconds (float): a slow run refreshes after this many seconds even before
            ``interval`` steps, so its time left shows early. Defaults to ``1.0``.
        **tqdm_kwargs: passed to :class:`tqdm.tqdm` (e.g. ``file=``, ``disable=``).
    """

    def __init__(
        self,
        total: int | None = None,
        *,
        interval: int = 50,
        seconds: float = 1.0,
        **tqdm_kwargs: Any,
    ):
        self.total = total
        self.interval = max(int(interval), 1)
        self.seconds = float(seconds)
        self.tqdm_kwargs = tqdm_kwargs
        self._refreshed = 0.0
        self._bar: Any = None
        self._losses: TensorDictBase | None = None
        self._trainer: Any = None
        self._shown = 0
        self._t0 = 0.0
        self._s0 = 0

    def _open(self) -> None:
        from tqdm.auto import tqdm

        step = int(self._trainer.collected_frames)
        total = self.total if self.total is not None else self._trainer.total_frames
        self._bar = tqdm(total=total, initial=step, unit="step", **self.tqdm_kwargs)
        self._shown = step
        self._t0, self._s0 = time.perf_counter(), step
        self._refreshed = self._t0

    def _capture(self, optim_steps: int, losses: TensorDictBase | None) -> None:
        self._losses = losses

    def __call__(self, batch: TensorDictBase | None = None) -> None:
        if self._bar is None:
            self._open()
        step = int(self._trainer.collected_frames)
        now = time.perf_counter()
        if (
            step - self._shown < self.interval
            and step != self._trainer.total_frames
            and now - self._refreshed < self.seconds
        ):
            return
        self._refreshed = now
        postfix: dict[str, str] = {}
        elapsed = now - self._t0
        if elapsed > 0:
            postfix["steps/s"] = f"{(step - self._s0) / elapsed:.1f}"
        if self._losses is not None:
            for key, value in self._losses.items():
                if (
                    key.startswith("loss")
                    and isinstance(value, torch.Tensor)
                    and value.numel() == 1
                ):
                    postfix[key] = f"{float(value):.4g}"
        evals = self._trainer._log_dict.get("eval/return_mean")
        if evals:
            postfix["eval"] = f"{float(evals[-1]):.1f}"
        self._bar.set_postfix(postfix, refresh=False)
        self._bar.update(step - self._shown)
        self._shown = step

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()
            self._bar = None

    def state_dict(self) -> dict[str, Any]:
        return {}

    def load_state_dict(self, state_dict: Mapping[str, Any]) -> None:
        return None

    def register(self, trainer: Any, name: str = "progress_bar") -> None:
        self._trainer = trainer
        trainer.register_op("post_optim_complete_log", self._capture)
        trainer.register_op("post_steps_log", self)
        trainer.register_op("shutdown", self.close)


def make_logger(
    kind: str | None,
    log_dir: str | os.PathLike,
    *,
    exp_name: str = "train",
    **kwargs: Any,
) -> Logger | None:
    """A TorchRL logger: ``"csv"`` (no dependency), ``"tensorboard"``, ``"wandb"``, ``"mlflow"``.

    Args:
        kind: the logger type, or ``None`` / ``""`` for no logger.
        log_dir: the directory of the logs (the experiment is a sub-directory).
        exp_name: the experiment name.
        **kwargs: passed to the logger class.

    Raises:
        ValueError: an unknown kind (the message lists the valid ones).
        ImportError: the logger's package is not installed (the message says what to
            ``pip install``).

    Examples:
        >>> import tempfile
        >>> from torchrl_offline.trainers.hooks import make_logger
        >>> logger = make_logger("csv", tempfile.mkdtemp(), exp_name="demo")
        >>> logger.log_scalar("eval/return_mean", 1.5, step=10)
    """
    if not kind:
        return None
    if kind not in LOGGER_KINDS:
        raise ValueError(f"Unknown logger {kind!r}; valid loggers: {', '.join(LOGGER_KINDS)}")
    try:
        return _make_logger(kind, log_dir, exp_name, kwargs)
    except ImportError as err:
        package = LOGGER_PACKAGES.get(kind)
        if package is None:
            raise
        raise ImportError(
            f"the {kind} logger needs the {package} package ({err}): pip install {package}"
        ) from err


def _make_logger(kind: str, log_dir: str | os.PathLike, exp_name: str, kwargs: Any) -> Logger:
    from torchrl.record import loggers

    if kind == "csv":
        return loggers.CSVLogger(exp_name, log_dir=str(log_dir), **kwargs)
    if kind == "tensorboard":
        return loggers.TensorboardLogger(exp_name, log_dir=str(log_dir), **kwargs)
    if kind == "wandb":
        return loggers.WandbLogger(exp_name=exp_name, save_dir=str(log_dir), **kwargs)
    uri = Path(log_dir).resolve().as_uri()
    return loggers.MLFlowLogger(exp_name, tracking_uri=uri, **kwargs)
