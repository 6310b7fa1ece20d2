"""Offline training inside TorchRL's :class:`~torchrl.trainers.Trainer`.

TorchRL's ``Trainer`` is driven by a collector. Here an :class:`OfflineSource` stands
where the collector stands (it yields batches sampled from a replay buffer) and
:class:`OfflineTrainer` counts *gradient steps* instead of collected frames, so every
TorchRL hook (``LogScalar``, ``LRSchedulerHook``, ``TargetNetUpdaterHook``,
``EarlyStopping``, ...) and every interval (logging, evaluation, checkpoints) is in
gradient steps. :func:`train` ties it together with
:func:`~torchrl_offline.trainers.algorithms.build_algorithm`, evaluation, logging,
checkpointing and resuming.
"""

from __future__ import annotations

import json
import os
import random
import signal
import threading
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from tensordict import TensorDict, TensorDictBase
from torchrl.data import Bounded, Categorical, OneHot, ReplayBuffer, TensorSpec, Unbounded
from torchrl.envs import EnvBase
from torchrl.objectives import LossModule
from torchrl.objectives.utils import TargetNetUpdater
from torchrl.record.loggers import Logger
from torchrl.trainers import (
    DefaultOptimizationStepper,
    LRSchedulerHook,
    OptimizationStepper,
    TargetNetUpdaterHook,
    Trainer,
    TrainerHookBase,
)

from torchrl_offline.objectives.common import check_finite_losses
from torchrl_offline.trainers.algorithms import (
    Algorithm,
    AlgorithmError,
    _jsonable,
    algorithm_defaults,
    build_algorithm,
    default_policy_update_delay,
    make_lr_scheduler,
    specs_from_dataset,
)
from torchrl_offline.trainers.checkpoint import (
    CheckpointError,
    get_rng_state,
    latest_checkpoint,
    load_checkpoint,
    set_rng_state,
)
from torchrl_offline.trainers.hooks import (
    CheckpointHook,
    EvaluationHook,
    LogLosses,
    ProgressBar,
    make_logger,
)
from torchrl_offline.trainers.normalization import NormalizeObservations, observation_moments
from torchrl_offline.trainers.resume import (
    check_resumable,
    resume_point,
    run_identity,
    set_aside_newer,
)
from torchrl_offline.trainers.run_dir import RunLock, claim_run_directory

if TYPE_CHECKING:
    from torchrl_offline.trainers.distributed import DistributedContext

__all__ = [
    "OfflineSource",
    "OfflineTrainer",
    "TrainResult",
    "as_env",
    "float32_observations",
    "load_algorithm",
    "train",
]


# ----------------------------------------------------------------------------- source
class OfflineSource:
    """A replay buffer standing where a TorchRL collector stands.

    Iterating yields ``replay_buffer.sample(batch_size)`` forever. It has the parts of
    the collector interface a ``Trainer`` uses (``set_seed``, ``shutdown``,
    ``state_dict``, ``init_random_frames``); its state is the sampler's state and the
    buffer's own generator, if it has one (the global torch generator is saved by the
    trainer's checkpoint).

    Args:
        replay_buffer: the offline dataset.

    Keyword Args:
        batch_size (int, optional): sample size; the buffer's default when omitted.

    Examples:
        >>> import torch
        >>> from tensordict import TensorDict
        >>> from torchrl_offline.data.storage import make_replay_buffer
        >>> from torchrl_offline.trainers.offline import OfflineSource
        >>> rb = make_replay_buffer(TensorDict({"observation": torch.randn(10, 3)}, [10]))
        >>> batch = next(iter(OfflineSource(rb, batch_size=4)))
        >>> batch.batch_size
        torch.Size([4])
    """

    init_random_frames = 0

    def __init__(self, replay_buffer: ReplayBuffer, *, batch_size: int | None = None) -> None:
        if batch_size is None and getattr(replay_buffer, "batch_size", None) is None:
            raise ValueError("the replay buffer has no batch_size; pass batch_size=")
        if len(replay_buffer) == 0:
            raise ValueError("the replay buffer is empty")
        self.replay_buffer = replay_buffer
        # the buffer's own batch size is used as is (TorchRL warns when sample() overrides it)
        self.batch_size = None if batch_size == replay_buffer.batch_size else batch_size

    def __iter__(self) -> Iterator[TensorDictBase]:
        while True:
            yield self.replay_buffer.sample(self.batch_size)

    def set_seed(self, seed: int, static_seed: bool = False) -> int:
        """Seeds torch's and NumPy's global generators (the sampler draws from them)."""
        torch.manual_seed(seed)
        np.random.seed(seed % 2**32)
        return seed

    def shutdown(self) -> None:
        """Nothing to release."""

    def state_dict(self) -> dict[str, Any]:
        rb = self.replay_buffer
        state: dict[str, Any] = {"sampler": rb._sampler.state_dict()}
        rng = getattr(rb, "_rng", None)
        if rng is not None:
            state["rng"] = rng.get_state()
        return state

    def load_state_dict(self, state_dict: Mapping[str, Any]) -> None:
        rb = self.replay_buffer
        rb._sampler.load_state_dict(state_dict["sampler"])
        rng = getattr(rb, "_rng", None)
        if rng is not None and "rng" in state_dict:
            rng.set_state(state_dict["rng"])


class _DetachedStepper(DefaultOptimizationStepper):
    """TorchRL's default step (sum the selected losses, backward, clip, step) returning
    detached losses, so hooks holding the latest losses do not keep the graph alive."""

    def step(self, trainer: Trainer, sub_batch: TensorDictBase) -> TensorDictBase:
        return super().step(trainer, sub_batch).detach()


# ----------------------------------------------------------------------------- trainer
class OfflineTrainer(Trainer):
    """A TorchRL :class:`~torchrl.trainers.Trainer` that trains from a replay buffer alone.

    One iteration is one gradient step on one sampled batch, and
    ``collected_frames`` counts gradient steps, so TorchRL hooks registered at
    ``"post_steps"`` (``TargetNetUpdaterHook``, ``LRSchedulerHook``) run once per update
    and intervals are in updates. The optimization is TorchRL's
    :class:`~torchrl.trainers.DefaultOptimizationStepper` over ``loss_components``.

    Training stops at ``total_steps`` or when a hook calls :meth:`request_stop`
    (``EarlyStopping``; Ctrl-C, which finishes the current update first). In both
    cases checkpoint hooks (:class:`~torchrl_offline.trainers.hooks.CheckpointHook`)
    write a final checkpoint; :meth:`checkpoint_state` and
    :meth:`load_checkpoint_state` give the full training state (networks, targets,
    optimizer, hooks, sampler, random generators, step).

    Args:
        replay_buffer: the offline dataset.
        loss_module: the loss.
        optimizer: the optimizer of the loss's parameters.
        total_steps: number of gradient steps to reach.

    Keyword Args:
        batch_size (int, optional): sample size (the buffer's default when omitted).
        loss_components (sequence of str, optional): loss entries summed for backward;
            every ``loss*`` entry when omitted.
        target_net_updater (TargetNetUpdater, optional): stepped after every update
            through TorchRL's ``TargetNetUpdaterHook``.
        logger (Logger, optional): a TorchRL logger.
        log_interval (int): TorchRL's logging interval, in steps. Defaults to ``1000``.
        clip_norm (float, optional): gradient-norm clipping. Defaults to ``None``.
        seed (int, optional): seeds the global generators (through the source).
        metadata (dict, optional): JSON-able description stored in checkpoints.
        optimization_stepper (OptimizationStepper, optional): replaces the default step
            (e.g. :class:`~torchrl_offline.trainers.distributed.AllReduceStepper`, which
            averages gradients over data-parallel ranks); it should return detached
            losses.
        policy_update_delay (int, optional): delayed policy updates (TD3's): the full
            loss (actor included) on every ``policy_update_delay``-th step, the critic
            term alone (the loss's ``qvalue_loss``) on the others, so the actor's
            parameters get no gradient and the optimizer leaves them as they are.
            Defaults to the loss's algorithm's (2 for our ``TD3BCLoss``, 1 otherwise:
            :func:`~torchrl_offline.trainers.algorithms.default_policy_update_delay`).

    Examples:
        >>> import torch
        >>> from tensordict import TensorDict
        >>> from torchrl.data import Bounded, Unbounded
        >>> from torchrl_offline.data.storage import make_replay_buffer
        >>> from torchrl_offline.trainers.algorithms import build_algorithm
        >>> from torchrl_offline.trainers.offline import OfflineTrainer
        >>> n = 64
        >>> rb = make_replay_buffer(TensorDict({
        ...     "observation": torch.randn(n, 3), "action": torch.rand(n, 1) * 2 - 1,
        ...     ("next", "observation"): torch.randn(n, 3), ("next", "reward"): torch.randn(n, 1),
        ...     ("next", "done"): torch.zeros(n, 1, dtype=torch.bool),
        ...     ("next", "terminated"): torch.zeros(n, 1, dtype=torch.bool)}, [n]), batch_size=16)
        >>> algo = build_algorithm("td3_bc", Unbounded(shape=(3,)), Bounded(-1.0, 1.0, (1,)),
        ...                        hidden_sizes=(16,))
        >>> trainer = OfflineTrainer(replay_buffer=rb, loss_module=algo.loss,
        ...                          optimizer=algo.optimizer, total_steps=5,
        ...                          loss_components=algo.loss_keys,
        ...                          target_net_updater=algo.target_updater)
        >>> trainer.train()
        >>> trainer.step
        5
    """

    def __init__(
        self,
        *,
        replay_buffer: ReplayBuffer,
        loss_module: LossModule,
        optimizer: torch.optim.Optimizer,
        total_steps: int,
        batch_size: int | None = None,
        loss_components: Sequence[str] | None = None,
        target_net_updater: TargetNetUpdater | None = None,
        logger: Logger | None = None,
        log_interval: int = 1000,
        clip_norm: float | None = None,
        seed: int | None = None,
        metadata: Mapping[str, Any] | None = None,
        optimization_stepper: OptimizationStepper | None = None,
        policy_update_delay: int | None = None,
    ) -> None:
        if total_steps < 1:
            raise ValueError(f"total_steps must be >= 1, got {total_steps}")
        if policy_update_delay is None:
            policy_update_delay = default_policy_update_delay(loss_module)
        if int(policy_update_delay) < 1:
            raise ValueError(f"policy_update_delay must be >= 1, got {policy_update_delay}")
        if policy_update_delay > 1 and not callable(getattr(loss_module, "qvalue_loss", None)):
            raise ValueError(
                f"policy_update_delay={policy_update_delay} needs a loss with a qvalue_loss "
                f"method (the critic-only step); {type(loss_module).__name__} has none"
            )
        super().__init__(
            collector=OfflineSource(replay_buffer, batch_size=batch_size),
            total_frames=int(total_steps),
            frame_skip=1,
            optim_steps_per_batch=1,
            loss_module=loss_module,
            optimizer=optimizer,
            optimization_stepper=optimization_stepper or _DetachedStepper(loss_components),
            replay_buffer=replay_buffer,
            target_net_updater=target_net_updater,
            logger=logger,
            log_interval=log_interval,
            clip_grad_norm=True,
            clip_norm=clip_norm,
            progress_bar=False,
            seed=seed,
            auto_log_optim_steps=False,
        )
        self.metadata: dict[str, Any] = dict(metadata or {})
        self.policy_update_delay = int(policy_update_delay)
        self._checkpointers: list[CheckpointHook] = []
        self._interrupted = False
        if target_net_updater is not None:
            hook = TargetNetUpdaterHook(target_net_updater)
            hook.register(self, "target_net_updater")

    # -------------------------------------------------------------------- properties
    @property
    def step(self) -> int:
        """Gradient steps done so far."""
        return int(self.collected_frames)

    @property
    def stop_reason(self) -> str | None:
        """Why training stopped early (``"interrupted"``, an ``EarlyStopping`` reason) or ``None``."""
        return self._stop_reason if self._stop_training else None

    # -------------------------------------------------------------------- checkpoints
    def add_checkpointer(self, hook: CheckpointHook) -> None:
        """Attaches a checkpoint hook (called by :meth:`CheckpointHook.register`)."""
        self._checkpointers.append(hook)

    def checkpoint_state(self) -> dict[str, Any]:
        """The full training state, loadable with ``torch.load(weights_only=True)``."""
        modules = {
            name: module.state_dict()
            for name, module in self._modules.items()
            if name not in ("optimizer", "optimization_stepper")
        }
        return {
            "step": self.step,
            "optim_count": int(self._optim_count),
            "last_log": dict(self._last_log),
            "loss_module": self.loss_module.state_dict(),
            "optimizer": self.optimizer.state_dict() if self.optimizer is not None else {},
            "hooks": modules,
            "source": self.collector.state_dict(),
            "rng": get_rng_state(),
            "metadata": {"json": json.dumps(self.metadata, sort_keys=True)},
        }

    def load_checkpoint_state(self, state: Mapping[str, Any]) -> None:
        """Restores a state from :meth:`checkpoint_state`; the run continues exactly."""
        try:
            self.loss_module.load_state_dict(state["loss_module"])
            if self.optimizer is not None:
                self.optimizer.load_state_dict(state["optimizer"])
            hooks = state.get("hooks", {})
            for name, module in self._modules.items():
                if name in hooks:
                    module.load_state_dict(hooks[name])
            self.collector.load_state_dict(state["source"])
        except (KeyError, RuntimeError, ValueError) as err:
            raise CheckpointError(
                f"the checkpoint does not fit this trainer's modules: {err}"
            ) from err
        self.collected_frames = int(state["step"])
        self._optim_count = int(state.get("optim_count", state["step"]))
        self._last_log = dict(state.get("last_log", {}))
        self._last_save = self.collected_frames
        set_rng_state(state["rng"])

    def save_trainer(self, force_save: bool = False) -> None:
        """Runs the attached checkpoint hooks (each at its own interval, or now if ``force_save``)."""
        for hook in self._checkpointers:
            hook.maybe_save(self, force=force_save)

    # -------------------------------------------------------------------- loop
    def compute_loss(
        self, sub_batch: TensorDictBase, method: str | None = None
    ) -> TensorDictBase | tuple[Any, ...]:
        """The loss of this step: the whole loss, or the critic term alone on the steps a
        ``policy_update_delay`` skips (update ``t`` is full when ``t % delay == 0``)."""
        if method is None and self._optim_count % self.policy_update_delay:
            loss_qvalue, _ = super().compute_loss(sub_batch, "qvalue_loss")
            losses = TensorDict({"loss_qvalue": loss_qvalue})
            loss = self.loss_module
            if getattr(loss, "check_inputs", False):  # forward's NaN/inf check, same read
                check_finite_losses(
                    losses, self._optim_count, batch=sub_batch, batch_keys=loss.in_keys
                )
            return losses
        return super().compute_loss(sub_batch, method)

    def _on_sigint(self, signum: int, frame: Any) -> None:
        if self._interrupted:
            raise KeyboardInterrupt
        self._interrupted = True
        self.request_stop("interrupted")

    def train(self) -> None:
        """Runs gradient steps until ``total_steps`` or a stop request."""
        previous = None
        if threading.current_thread() is threading.main_thread():
            previous = signal.signal(signal.SIGINT, self._on_sigint)
        try:
            self._setup_hook()
            iterator = iter(self.collector)
            while self.collected_frames < self.total_frames and not self._stop_training:
                batch = self._process_batch_hook(next(iterator))
                self.collected_frames += 1
                self._pre_steps_log_hook(batch)
                self.optim_steps(batch)
                self._post_steps_hook()
                self._post_steps_log_hook(batch)
                if self._stop_training:
                    break
                self.save_trainer()
            self.save_trainer(force_save=True)
            self._shutdown_hook()
        finally:
            if previous is not None:
                signal.signal(signal.SIGINT, previous)


# ----------------------------------------------------------------------------- specs I/O
def _spec_to_dict(spec: TensorSpec) -> dict[str, Any]:
    if isinstance(spec, Bounded):
        return {
            "type": "bounded",
            "shape": list(spec.shape),
            "low": spec.space.low.reshape(-1).tolist(),
            "high": spec.space.high.reshape(-1).tolist(),
        }
    if isinstance(spec, Categorical):
        return {"type": "categorical", "n": int(spec.space.n), "shape": list(spec.shape)}
    if isinstance(spec, OneHot):
        return {"type": "one_hot", "n": int(spec.space.n)}
    return {"type": "unbounded", "shape": list(spec.shape)}


def _spec_from_dict(d: Mapping[str, Any]) -> TensorSpec:
    kind = d["type"]
    if kind == "bounded":
        shape = tuple(d["shape"])
        low = torch.tensor(d["low"], dtype=torch.float32).reshape(shape)
        high = torch.tensor(d["high"], dtype=torch.float32).reshape(shape)
        return Bounded(low, high, shape=shape)
    if kind == "categorical":
        return Categorical(int(d["n"]), shape=tuple(d["shape"]))
    if kind == "one_hot":
        return OneHot(int(d["n"]))
    return Unbounded(shape=tuple(d["shape"]))


def _algorithm_metadata(algo: Algorithm) -> dict[str, Any]:
    norm = None
    if algo.observation_norm is not None:
        loc, scale = algo.observation_norm
        norm = {"loc": loc.tolist(), "scale": scale.tolist()}
    return {
        "algorithm": algo.name,
        "hyperparameters": algo.hyperparameters,
        "observation_spec": _spec_to_dict(algo.observation_spec),
        "action_spec": _spec_to_dict(algo.action_spec),
        "observation_norm": norm,
    }


def _norm_from_metadata(meta: Mapping[str, Any]) -> tuple[torch.Tensor, torch.Tensor] | None:
    norm = meta.get("observation_norm")
    if not norm:
        return None
    return torch.tensor(norm["loc"]), torch.tensor(norm["scale"])


def _read_metadata(state: Mapping[str, Any], path: Path) -> dict[str, Any]:
    try:
        meta = json.loads(state["metadata"]["json"])
        if "algorithm" not in meta or "hyperparameters" not in meta:
            raise KeyError("algorithm")
    except (KeyError, TypeError, ValueError):
        raise CheckpointError(
            f"Checkpoint {str(path)!r} has no algorithm description; it was not written by train()"
        ) from None
    return meta


def _with_new_defaults(saved: Mapping[str, Any]) -> dict[str, Any]:
    """``saved`` metadata with the hyperparameters its algorithm has gained since the
    checkpoint was written filled in at their defaults, so that a checkpoint of an older
    version still resumes when the run's settings are otherwise the same (a new setting
    such as ``check_inputs`` is not a change of settings)."""
    try:
        defaults = algorithm_defaults(saved["algorithm"])
    except (AlgorithmError, KeyError):
        return dict(saved)
    hp = dict(saved["hyperparameters"])
    for key, value in defaults.items():
        hp.setdefault(key, _jsonable(value))  # as Algorithm.hyperparameters stores it
    return {**saved, "hyperparameters": hp}


def load_algorithm(checkpoint: str | os.PathLike) -> tuple[Algorithm, int]:
    """Rebuilds the algorithm saved in a checkpoint of :func:`train`, with its weights.

    Args:
        checkpoint: a checkpoint file, or a run directory (its newest checkpoint, in
            ``<dir>/checkpoints`` or ``<dir>`` itself).

    Returns:
        ``(algorithm, step)``: the networks, optimizer state and targets as saved, and
        the gradient step of the checkpoint. Evaluate ``algorithm.policy``.

    Raises:
        CheckpointError: no checkpoint found, or a corrupt or foreign file.
    """
    path = _resolve_checkpoint(Path(checkpoint))
    state = load_checkpoint(path)
    meta = _read_metadata(state, path)
    algo = build_algorithm(
        meta["algorithm"],
        _spec_from_dict(meta["observation_spec"]),
        _spec_from_dict(meta["action_spec"]),
        observation_norm=_norm_from_metadata(meta),
        **meta["hyperparameters"],
    )
    try:
        algo.loss.load_state_dict(state["loss_module"])
        algo.optimizer.load_state_dict(state["optimizer"])
    except (KeyError, RuntimeError, ValueError) as err:
        raise CheckpointError(
            f"Checkpoint {str(path)!r} does not fit {meta['algorithm']}: {err}"
        ) from err
    return algo, int(state["step"])


def _resolve_checkpoint(path: Path) -> Path:
    if path.is_dir():
        found = latest_checkpoint(path / "checkpoints") or latest_checkpoint(path)
        if found is None:
            raise CheckpointError(f"No checkpoint found in {str(path)!r}")
        return found
    return path


# ----------------------------------------------------------------------------- train()
@dataclass
class TrainResult:
    """What :func:`train` returns.

    Attributes:
        algorithm: the trained algorithm (``algorithm.policy`` is the policy).
        step: gradient steps done.
        evaluations: one entry per evaluation (``step``, ``return_mean``,
            ``return_std``, ``normalized_score``, ``episode_length``).
        checkpoint: the last checkpoint written, or ``None``.
        log_dir: the directory of the logs, or ``None``.
        stop_reason: ``None`` when ``total_steps`` was reached, ``"interrupted"`` after
            Ctrl-C, or the reason given by a stopping hook.
    """

    algorithm: Algorithm
    step: int
    evaluations: list[dict[str, Any]] = field(default_factory=list)
    checkpoint: Path | None = None
    log_dir: Path | None = None
    stop_reason: str | None = None

    @classmethod
    def of_run(
        cls,
        algorithm: Algorithm,
        trainer: OfflineTrainer,
        evaluation: EvaluationHook | None,
        checkpointer: CheckpointHook | None,
        log_dir: Path | None,
    ) -> TrainResult:
        """The result of a finished ``trainer`` run with these (optional) hooks."""
        return cls(
            algorithm=algorithm,
            step=trainer.step,
            evaluations=list(evaluation.history) if evaluation is not None else [],
            checkpoint=checkpointer.last_path if checkpointer is not None else None,
            log_dir=log_dir,
            stop_reason=trainer.stop_reason,
        )


def as_env(env: EnvBase | str) -> EnvBase:
    """``env`` itself, or a ``GymEnv`` for a gymnasium id (integer discrete actions) with
    float64 observations (as MuJoCo's) cast to float32, the dtype the datasets are loaded
    in: the environment behind ``train(eval_env=...)`` and fine-tuning.

    Examples:
        >>> as_env("Hopper-v5").observation_spec["observation"].dtype
        torch.float32
    """
    if isinstance(env, EnvBase):
        return env
    from torchrl.envs import GymEnv

    return float32_observations(GymEnv(env, categorical_action_encoding=True))


def float32_observations(env: EnvBase) -> EnvBase:
    """``env`` with its float64 observation entries cast to float32 (``DoubleToFloat``).

    The datasets are loaded with float32 observations and the networks are float32, while
    gymnasium's MuJoCo envs emit float64; ``env`` is returned unchanged when it has no
    float64 observation entry.

    Examples:
        >>> from torchrl.envs import GymEnv
        >>> float32_observations(GymEnv("Hopper-v5")).observation_spec["observation"].dtype
        torch.float32
    """
    from torchrl.envs import DoubleToFloat, TransformedEnv

    doubles = [
        key for key, spec in env.observation_spec.items(True, True) if spec.dtype == torch.float64
    ]
    if not doubles:
        return env
    return TransformedEnv(env, DoubleToFloat(in_keys=doubles))


def _check_env(env: EnvBase, algo: Algorithm) -> None:
    obs = env.observation_spec["observation"]
    act = env.action_spec
    problems = []
    want = next((p.dtype for p in algo.policy.parameters() if p.is_floating_point()), None)
    if want is not None and obs.dtype.is_floating_point and obs.dtype != want:
        problems.append(
            f"observation dtype {obs.dtype} vs the networks' {want} (wrap the env as "
            "TransformedEnv(env, DoubleToFloat()), or pass its gymnasium id, which does this)"
        )
    if tuple(obs.shape) != tuple(algo.observation_spec.shape):
        problems.append(
            f"observation shape {tuple(obs.shape)} vs dataset {tuple(algo.observation_spec.shape)}"
        )
    if tuple(act.shape) != tuple(algo.action_spec.shape) or type(act) is not type(algo.action_spec):
        problems.append(
            f"action {type(act).__name__}{tuple(act.shape)} vs dataset "
            f"{type(algo.action_spec).__name__}{tuple(algo.action_spec.shape)}"
        )
    elif isinstance(act, Bounded) and not (
        torch.allclose(act.space.low.float(), algo.action_spec.space.low.float())
        and torch.allclose(act.space.high.float(), algo.action_spec.space.high.float())
    ):
        problems.append("action bounds differ")
    elif isinstance(act, (Categorical, OneHot)) and act.space.n != algo.action_spec.space.n:
        problems.append(f"{act.space.n} actions vs dataset {algo.action_spec.space.n}")
    if problems:
        raise AlgorithmError(
            "The evaluation env does not match the dataset: " + "; ".join(problems)
        )


def _reference(dataset: Any) -> tuple[float, float] | None:
    meta = getattr(dataset, "metadata", None) or {}
    lo, hi = meta.get("ref_min_score"), meta.get("ref_max_score")
    if lo is None or hi is None:
        return None
    return float(lo), float(hi)


def train(
    algorithm: str | Algorithm,
    dataset: ReplayBuffer,
    *,
    total_steps: int,
    seed: int = 0,
    out_dir: str | os.PathLike | None = None,
    resume: bool | str | os.PathLike = False,
    overwrite: bool = False,
    batch_size: int = 256,
    overrides: Mapping[str, Any] | None = None,
    normalize_observations: bool = False,
    eval_env: EnvBase | str | None = None,
    eval_interval: int = 5000,
    eval_episodes: int = 10,
    eval_max_steps: int = 1000,
    checkpoint_interval: int = 5000,
    keep_checkpoints: int = 2,
    log_interval: int = 1000,
    logger: str | Logger | None = "csv",
    progress: bool = True,
    hooks: Sequence[TrainerHookBase] = (),
    distributed: bool | DistributedContext | None = None,
) -> TrainResult:
    """Trains an offline algorithm on a dataset, with evaluation, logs and checkpoints.

    Seeds torch, NumPy and Python with ``seed``, builds the algorithm for the dataset's
    specs (:func:`~torchrl_offline.trainers.algorithms.build_algorithm`), and runs an
    :class:`OfflineTrainer` for ``total_steps`` gradient steps with: the target updater
    and learning-rate schedule of the algorithm, loss logging (``train/loss_*``),
    evaluation in ``eval_env`` (``eval/return_mean`` ...), the extra ``hooks``, a
    progress bar, and checkpoints in ``out_dir/checkpoints``. With ``resume=True`` the
    newest checkpoint in ``out_dir`` is loaded and the run continues to
    ``total_steps`` exactly as if it had not stopped (same parameters, bitwise, on the
    same machine). Ctrl-C ends the current update, writes a checkpoint and returns.

    ``out_dir`` is owned by the run
    (:func:`~torchrl_offline.trainers.run_dir.claim_run_directory`): a lock file keeps
    other processes out while it runs, and a directory already holding a run is refused
    unless ``resume`` or ``overwrite`` is set. Resuming checks that the algorithm,
    spaces, hyperparameters, dataset (content fingerprint), batch size and seed are the
    checkpoint's (:mod:`~torchrl_offline.trainers.resume`).

    Args:
        algorithm: an algorithm name (see
            :data:`~torchrl_offline.trainers.algorithms.ALGORITHMS`) or a built
            :class:`~torchrl_offline.trainers.algorithms.Algorithm`.
        dataset: the replay buffer (e.g. from :func:`torchrl_offline.data.load_minari`).

    Keyword Args:
        total_steps: gradient steps to reach (counted from the start of the run).
        seed: the run's seed.
        out_dir: the run directory (``checkpoints/`` and ``logs/``); ``None`` writes
            nothing.
        resume: ``True`` continues from the newest checkpoint in ``out_dir`` (an error
            when there is none); a checkpoint file of ``out_dir/checkpoints`` continues
            from that one (e.g. the previous good checkpoint that a damaged newest one's
            error names), after renaming the newer ones to ``<name>.set-aside``.
        overwrite: replace the run already in ``out_dir`` (only a run directory of
            ours: its checkpoints, logs, ``summary.json`` and ``run.json`` go; other
            files stay).
        batch_size: transitions per update.
        overrides: hyperparameters for ``build_algorithm`` (with a name only).
        normalize_observations: train the networks on observations normalised by the
            dataset's mean and standard deviation (with a name only); the policy still
            takes raw observations and checkpoints keep the statistics.
        eval_env: an environment or gymnasium id to evaluate in, or ``None``.
        eval_interval: steps between evaluations.
        eval_episodes: episodes per evaluation.
        eval_max_steps: cap on evaluation episode length.
        checkpoint_interval: steps between checkpoints.
        keep_checkpoints: checkpoints kept on disk.
        log_interval: steps between logged loss means.
        logger: ``"csv"``, ``"tensorboard"``, ``"wandb"``, ``"mlflow"``, a TorchRL
            ``Logger``, or ``None``. A logger kind needs ``out_dir``.
        progress: show a progress bar.
        hooks: more TorchRL trainer hooks (e.g. ``EarlyStopping``, an OPE hook),
            registered with ``hook.register(trainer)`` after evaluation.
        distributed: data-parallel training over ``torch.distributed``
            (:mod:`~torchrl_offline.trainers.distributed`): ``None`` (default) when the
            process was started by ``torchrun``, ``True`` always, ``False`` never, or a
            :class:`~torchrl_offline.trainers.distributed.DistributedContext`. Every rank
            calls ``train`` with the same arguments; ``batch_size`` is per rank; each rank
            samples its own shard of ``dataset``; evaluation, ``hooks``, progress, logs
            and checkpoints are on rank 0 only. See ``docs/distributed.md``.

    Returns:
        A :class:`TrainResult`.

    Raises:
        AlgorithmError: unknown algorithm or hyperparameter, or an env not matching the
            dataset.
        CheckpointError: ``resume`` with a corrupt checkpoint or one of another
            algorithm, spaces, hyperparameters, dataset, batch size or seed.
        RunDirectoryError: ``out_dir`` is in use by another process, holds a run and
            neither ``resume`` nor ``overwrite`` is set, has nothing to resume, or is
            not a run of ours to overwrite.

    Examples:
        >>> import torch
        >>> from tensordict import TensorDict
        >>> from torchrl_offline.data.storage import make_replay_buffer
        >>> from torchrl_offline.trainers.offline import train
        >>> n = 64
        >>> rb = make_replay_buffer(TensorDict({
        ...     "observation": torch.randn(n, 3), "action": torch.rand(n, 1) * 2 - 1,
        ...     ("next", "observation"): torch.randn(n, 3), ("next", "reward"): torch.randn(n, 1),
        ...     ("next", "done"): torch.zeros(n, 1, dtype=torch.bool),
        ...     ("next", "terminated"): torch.zeros(n, 1, dtype=torch.bool)}, [n]))
        >>> result = train("iql", rb, total_steps=3, batch_size=8, progress=False,
        ...                logger=None, overrides={"hidden_sizes": (16,)})
        >>> result.step, result.stop_reason
        (3, None)
    """
    args = dict(locals())
    from torchrl_offline.trainers.distributed import context_for

    context, owned = context_for(args.pop("distributed"))
    claim = None
    try:
        if resume and out_dir is None:
            raise ValueError("resume=True needs out_dir")
        claim = _claim(
            None if out_dir is None else Path(out_dir),
            context,
            kind="train",
            algorithm=algorithm if isinstance(algorithm, str) else algorithm.name,
            resume=bool(resume),
            overwrite=args.pop("overwrite"),
        )
        return _train(context=context, **args)
    finally:
        if claim is not None:
            claim.release()
        if owned:
            context.close()


def _train(
    algorithm: str | Algorithm,
    dataset: ReplayBuffer,
    *,
    context: DistributedContext | None,
    total_steps: int,
    seed: int,
    out_dir: str | os.PathLike | None,
    resume: bool | str | os.PathLike,
    batch_size: int,
    overrides: Mapping[str, Any] | None,
    normalize_observations: bool,
    eval_env: EnvBase | str | None,
    eval_interval: int,
    eval_episodes: int,
    eval_max_steps: int,
    checkpoint_interval: int,
    keep_checkpoints: int,
    log_interval: int,
    logger: str | Logger | None,
    progress: bool,
    hooks: Sequence[TrainerHookBase],
) -> TrainResult:
    """The body of :func:`train`; ``context`` is the data-parallel run, if any."""
    identity = run_identity(dataset, batch_size=batch_size, seed=seed)  # before sharding
    torch.manual_seed(seed)
    np.random.seed(seed % 2**32)
    random.seed(seed)
    if context is not None:
        from torchrl_offline.trainers import distributed as dist_mod

        dataset = dist_mod.prepare_dataset(context, dataset, seed=seed)
        if not context.is_main:  # rank 0 alone evaluates, runs hooks, logs and shows progress
            eval_env, hooks, logger, progress = None, (), None, False
    if isinstance(algorithm, str):
        obs_spec, act_spec = specs_from_dataset(dataset)
        norm = observation_moments(dataset) if normalize_observations else None
        if context is not None:
            norm = context.broadcast_object(norm, what="broadcasting observation statistics")
            algo = context.call(
                "building the algorithm",
                build_algorithm,
                algorithm,
                obs_spec,
                act_spec,
                observation_norm=norm,
                **dict(overrides or {}),
            )
        else:
            algo = build_algorithm(
                algorithm, obs_spec, act_spec, observation_norm=norm, **dict(overrides or {})
            )
    else:
        if overrides or normalize_observations:
            raise AlgorithmError(
                "overrides and normalize_observations apply to an algorithm name, not a "
                "built Algorithm (pass observation_norm= to build_algorithm instead)"
            )
        algo = algorithm

    out = Path(out_dir) if out_dir is not None else None
    log_dir = None
    if isinstance(logger, Logger):
        the_logger: Logger | None = logger
        given = getattr(logger, "log_dir", None)
        log_dir = Path(given) if given else None
    elif logger and out is not None:
        log_dir = out / "logs"
        the_logger = make_logger(logger, log_dir, exp_name=algo.name)
    else:
        the_logger = None

    algo_metadata = _algorithm_metadata(algo)
    metadata = {**algo_metadata, **identity}
    stepper = None
    if context is not None:
        dist_mod.check_settings(
            context,
            {
                "algorithm": algo_metadata,
                "seed": seed,
                "batch_size": batch_size,
                "total_steps": total_steps,
                "resume": bool(resume),
                "checkpointing": out is not None,
                "checkpoint_interval": checkpoint_interval,
                "dataset": dist_mod.dataset_fingerprint(dataset),
            },
        )
        dist_mod.seed_rank(context, seed)
        if context.device.type != "cpu":
            algo.loss.to(context.device)
        stepper = dist_mod.AllReduceStepper(context, algo.loss_keys)
    trainer = OfflineTrainer(
        optimization_stepper=stepper,
        replay_buffer=dataset,
        loss_module=algo.loss,
        optimizer=algo.optimizer,
        total_steps=total_steps,
        batch_size=batch_size,
        loss_components=algo.loss_keys,
        target_net_updater=algo.target_updater,
        policy_update_delay=algo.policy_update_delay,
        logger=the_logger,
        log_interval=log_interval,
        metadata=metadata,
    )
    if algo.observation_norm is not None:
        NormalizeObservations(*algo.observation_norm).register(trainer)
    scheduler = make_lr_scheduler(algo, total_steps)
    if scheduler is not None:
        LRSchedulerHook(scheduler).register(trainer)
    LogLosses(log_interval).register(trainer)
    owned_env: EnvBase | None = None  # an env made here from a gymnasium id is closed at the end
    try:
        evaluation, checkpointer, owned_env = _setup_hooks(
            trainer,
            algo,
            dataset,
            metadata,
            seed=seed,
            out=out,
            resume=resume,
            eval_env=eval_env,
            eval_interval=eval_interval,
            eval_episodes=eval_episodes,
            eval_max_steps=eval_max_steps,
            checkpoint_interval=checkpoint_interval,
            keep_checkpoints=keep_checkpoints,
            progress=progress,
            hooks=hooks,
            context=context,
        )
        if context is not None:  # last hook: shares stop requests between ranks
            dist_mod.DistributedSync(context).register(trainer)
        trainer.train()
    finally:
        if owned_env is not None:
            owned_env.close()
    return TrainResult.of_run(algo, trainer, evaluation, checkpointer, log_dir)


def _claim(
    out: Path | None,
    context: DistributedContext | None,
    *,
    kind: str,
    algorithm: str,
    resume: bool,
    overwrite: bool,
) -> RunLock | None:
    """Claims ``out`` for this run (rank 0 alone in a data-parallel run; a refusal there
    stops every rank)."""
    if out is None:
        if overwrite:
            raise ValueError("overwrite=True needs out_dir")
        return None
    claim, error = None, None
    if context is None or context.is_main:
        try:
            claim = claim_run_directory(
                out, kind=kind, algorithm=algorithm, resume=resume, overwrite=overwrite
            )
        except Exception as err:
            if context is None:
                raise
            error = err
    if context is not None:
        try:
            context.check("claiming the run directory", error)
        except BaseException:
            if claim is not None:
                claim.release()
            raise
    return claim


def _setup_hooks(
    trainer: OfflineTrainer,
    algo: Algorithm,
    dataset: ReplayBuffer,
    metadata: Mapping[str, Any],
    *,
    seed: int,
    out: Path | None,
    resume: bool | str | os.PathLike,
    eval_env: EnvBase | str | None,
    eval_interval: int,
    eval_episodes: int,
    eval_max_steps: int,
    checkpoint_interval: int,
    keep_checkpoints: int,
    progress: bool,
    hooks: Sequence[TrainerHookBase],
    context: DistributedContext | None = None,
) -> tuple[EvaluationHook | None, CheckpointHook | None, EnvBase | None]:
    """Registers evaluation, user hooks, progress bar and checkpoints; loads the newest
    checkpoint when resuming. Returns the evaluation hook, the checkpointer and the env
    made here (to close), if any."""
    evaluation = None
    owned_env = None
    checkpointer = None
    try:
        error = None
        try:
            if eval_env is not None:
                env = as_env(eval_env)
                if env is not eval_env:
                    owned_env = env
                _check_env(env, algo)
                evaluation = EvaluationHook(
                    env,
                    algo.policy,
                    interval=eval_interval,
                    num_episodes=eval_episodes,
                    seed=seed,
                    max_steps=eval_max_steps,
                    reference=_reference(dataset),
                )
                evaluation.register(trainer)
            for hook in hooks:
                hook.register(trainer)
            if progress:
                ProgressBar().register(trainer)
        except Exception as err:
            if context is None:
                raise
            error = err
        if context is not None:  # rank 0 did this alone: a failure there stops every rank
            context.check("setting up evaluation and hooks", error)
        if out is not None and context is not None:
            from torchrl_offline.trainers import distributed as dist_mod

            checkpointer = dist_mod.DistributedCheckpointHook(
                out / "checkpoints",
                context,
                interval=checkpoint_interval,
                keep=keep_checkpoints,
                num_items=len(dataset),
            )
            checkpointer.register(trainer)
            if resume:
                directory = checkpointer.directory
                dist_mod.resume_distributed(
                    trainer,
                    checkpointer,
                    lambda: _find_resumable(directory, metadata, algo.name, resume),
                    seed=seed,
                )
        elif out is not None:
            checkpointer = CheckpointHook(
                out / "checkpoints", interval=checkpoint_interval, keep=keep_checkpoints
            )
            checkpointer.register(trainer)
            if resume:
                _resume(trainer, checkpointer, metadata, algo.name, resume)
        elif resume:
            raise ValueError("resume=True needs out_dir")
    except BaseException:
        if owned_env is not None:
            owned_env.close()
        raise
    return evaluation, checkpointer, owned_env


def _resume(
    trainer: OfflineTrainer,
    checkpointer: CheckpointHook,
    metadata: Mapping[str, Any],
    name: str,
    resume: bool | str | os.PathLike = True,
) -> None:
    found = _find_resumable(checkpointer.directory, metadata, name, resume)
    if found is None:
        return
    path, state = found
    if "distributed" in state:  # written by a data-parallel run
        from torchrl_offline.trainers.distributed import single_process_state

        state = single_process_state(trainer, state, path)
    trainer.load_checkpoint_state(state)
    checkpointer.last_path = path


def _find_resumable(
    directory: Path,
    metadata: Mapping[str, Any],
    name: str,
    resume: bool | str | os.PathLike = True,
) -> tuple[Path, dict[str, Any]] | None:
    """The checkpoint to resume (``resume`` when it is a path, else the newest in
    ``directory``) and its state, checked to be of this run
    (:func:`~torchrl_offline.trainers.resume.check_resumable`: same algorithm, spaces,
    hyperparameters, normalisation, dataset, batch size and seed), or ``None`` when
    there is none. Resuming from a named checkpoint sets the newer ones aside."""
    path = resume_point(directory, resume)
    if path is None:
        return None
    state = load_checkpoint(path)
    saved = _with_new_defaults(_read_metadata(state, path))
    if saved.get("finetune"):
        raise CheckpointError(
            f"Checkpoint {str(path)!r} is from fine-tuning, not offline training: resume it "
            "with `torchrl-offline finetune --resume` (finetune() in Python), or give this "
            "training run another output directory"
        )
    check_resumable(saved, json.loads(json.dumps(metadata)), path)
    set_aside_newer(path, resume)
    return path, state
