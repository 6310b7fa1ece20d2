"""Hydra config of :class:`~torchrl_offline.trainers.offline.OfflineTrainer` (group ``trainer``).

The trainer takes TorchRL's own configs for what TorchRL already has (``optimizer``,
``target_net_updater``, ``logger``, ``hook`` groups) and ours or TorchRL's for the loss
and the replay buffer, referenced by interpolation as in TorchRL's trainer configs::

    trainer:
      loss_module: ${loss}
      replay_buffer: ${dataset}      # or ${replay_buffer}
      optimizer: ${optimizer}        # a partial optimizer config (TorchRL's adam ...)
      total_steps: 1000

Examples:
    >>> import torch
    >>> from hydra.utils import instantiate
    >>> from tensordict import TensorDict
    >>> from torchrl.data import Bounded, Unbounded
    >>> from torchrl.trainers.algorithms.configs import AdamConfig
    >>> from torchrl_offline.configs.trainers import OfflineTrainerConfig
    >>> from torchrl_offline.data.storage import make_replay_buffer
    >>> from torchrl_offline.trainers.algorithms import build_algorithm
    >>> n = 32
    >>> rb = make_replay_buffer(TensorDict({
    ...     "observation": torch.randn(n, 3), "action": torch.rand(n, 1) * 2 - 1,
    ...     ("next", "observation"): torch.randn(n, 3), ("next", "reward"): torch.randn(n, 1),
    ...     ("next", "done"): torch.zeros(n, 1, dtype=torch.bool),
    ...     ("next", "terminated"): torch.zeros(n, 1, dtype=torch.bool)}, [n]), batch_size=8)
    >>> loss = build_algorithm("iql", Unbounded(shape=(3,)), Bounded(-1.0, 1.0, (1,)),
    ...                        hidden_sizes=(8,)).loss
    >>> trainer = instantiate(OfflineTrainerConfig(total_steps=3, optimizer=AdamConfig(lr=3e-4)),
    ...                       loss_module=loss, replay_buffer=rb)
    >>> trainer.train()
    >>> trainer.step
    3
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
from omegaconf import MISSING
from torchrl.objectives import LossModule, SoftUpdate
from torchrl.objectives.utils import TargetNetUpdater
from torchrl.trainers.algorithms.configs.trainers import TrainerConfig

from torchrl_offline.configs.common import ConfigError, plain
from torchrl_offline.trainers.checkpoint import latest_checkpoint, load_checkpoint
from torchrl_offline.trainers.hooks import CheckpointHook, EvaluationHook
from torchrl_offline.trainers.offline import OfflineTrainer

__all__ = ["OfflineTrainerConfig", "default_loss_components"]


@dataclass
class OfflineTrainerConfig(TrainerConfig):
    """Hydra config of :class:`~torchrl_offline.trainers.offline.OfflineTrainer`
    (store name ``offline`` in group ``trainer``).

    Fields not in ``OfflineTrainer``: ``optimizer`` may be a partial optimizer config
    (called with the loss's parameters) and defaults to Adam at ``lr`` 3e-4;
    ``target_net_updater`` may be a partial updater config (TorchRL's ``soft`` /
    ``hard``, called with the loss) and defaults to a soft update at rate ``tau`` when
    the loss has target networks; ``loss_components`` defaults to the loss's own terms
    (:func:`default_loss_components`); ``policy_update_delay`` defaults to the
    algorithm's (2 for TD3+BC,
    :func:`~torchrl_offline.trainers.algorithms.default_policy_update_delay`).

    As in :func:`~torchrl_offline.trainers.offline.train`: ``eval_env`` (a gymnasium id)
    adds an :class:`~torchrl_offline.trainers.hooks.EvaluationHook` of the loss's policy
    (its ``actor_network``, or the Q-value actor of discrete CQL) with the dataset's
    reference returns, ``checkpoint_dir`` a
    :class:`~torchrl_offline.trainers.hooks.CheckpointHook`, and ``resume`` loads the
    newest checkpoint there (an error when there is none). ``hooks`` (TorchRL or ours, any object with
    ``register(trainer)``) are registered after the evaluation hook, so
    ``EarlyStopping`` can monitor ``eval/return_mean``.

    A loss whose algorithm declares the need "model rollouts" (MOPO, COMBO) is trained
    as :func:`~torchrl_offline.trainers.offline.train` trains it
    (:mod:`~torchrl_offline.trainers.model_rollouts`: the dynamics model fitted on the
    replay buffer, the loss's actor rolled out in it, mixed batches of ``batch_size``);
    ``model_rollouts`` is a mapping of its settings
    (:class:`~torchrl_offline.objectives.declaration.ModelRolloutSettings` fields, e.g.
    ``{rollout_length: 1, real_ratio: 0.5}``) over the algorithm's declared ones.

    A loss whose algorithm declares the need "TD(lambda) returns" and whose
    ``value_target`` is ``"td_lambda"`` (AWR) gets its ``"td_lambda_return"`` column
    recomputed with its value network as ``train`` does
    (:mod:`~torchrl_offline.trainers.td_lambda`); ``td_lambda`` is a mapping of its
    settings (``{td_lambda: 0.9, td_lambda_interval: 500}``) over the declared ones.

    Networks are built when the loss is instantiated, before the trainer seeds the
    generators: seed torch first (``torch.manual_seed(cfg.seed)``) for a reproducible
    run.
    """

    loss_module: Any = MISSING
    replay_buffer: Any = MISSING
    total_steps: int = MISSING
    optimizer: Any = None
    lr: float = 3e-4
    batch_size: int | None = None
    loss_components: list[str] | None = None
    target_net_updater: Any = None
    tau: float = 0.005
    logger: Any = None
    log_interval: int = 1000
    clip_norm: float | None = None
    seed: int | None = None
    metadata: Any = None
    optimization_stepper: Any = None
    policy_update_delay: int | None = None
    target_update_delay: int = 1
    eval_env: str | None = None
    eval_interval: int = 5000
    eval_episodes: int = 10
    eval_max_steps: int = 1000
    checkpoint_dir: str | None = None
    checkpoint_interval: int = 5000
    keep_checkpoints: int = 2
    resume: bool = False
    hooks: list[Any] | None = None
    model_rollouts: Any = None
    td_lambda: Any = None
    _target_: str = "torchrl_offline.configs.trainers._make_offline_trainer"

    def __post_init__(self) -> None:
        super().__post_init__()


def default_loss_components(loss_module: LossModule) -> tuple[str, ...] | None:
    """The loss terms summed for the backward pass of a registered offline loss.

    Diagnostic entries (``loss_actor_bc`` of CQL, ...) are left out. ``None`` for other
    losses (TorchRL's trainer then sums every ``loss*`` entry).

    Examples:
        >>> from torchrl.data import Bounded, Unbounded
        >>> from torchrl_offline.configs.trainers import default_loss_components
        >>> from torchrl_offline.trainers.algorithms import build_algorithm
        >>> algo = build_algorithm("cql", Unbounded(shape=(3,)), Bounded(-1.0, 1.0, (1,)),
        ...                        hidden_sizes=(8,))
        >>> default_loss_components(algo.loss)
        ('loss_actor', 'loss_qvalue', 'loss_cql', 'loss_alpha', 'loss_alpha_prime')
    """
    from torchrl_offline.trainers.algorithms import algorithm_of, loss_keys

    name = algorithm_of(loss_module)
    return None if name is None else loss_keys(name, loss_module)


def _with_derived_keys(loss_module: LossModule, replay_buffer: Any) -> Any:
    """The buffer with the entries the loss's algorithm derives from the episode order
    (``"mc_return"`` at the loss's discount, 0.99 without a value estimator), as ``train``
    adds them; a buffer already holding them is used as it is."""
    from torchrl_offline.data.episodes import with_derived_keys
    from torchrl_offline.trainers.algorithms import algorithm_of, declaration

    name = algorithm_of(loss_module)
    loss_settings = {"value_target": getattr(loss_module, "value_target", None)}
    keys = () if name is None else declaration(name).batch_keys(loss_settings)
    stored = getattr(getattr(replay_buffer, "storage", None), "_storage", None)
    if stored is not None and hasattr(stored, "keys"):
        keys = tuple(k for k in keys if k not in stored.keys(True))
    if not keys:
        return replay_buffer
    return with_derived_keys(replay_buffer, keys, gamma=_discount(loss_module))


def _discount(loss_module: LossModule) -> float:
    """The loss's value estimator's discount, 0.99 without one."""
    from torchrl_offline.objectives.declaration import COMMON_DEFAULTS

    estimator = getattr(loss_module, "_value_estimator", None)
    gamma = getattr(estimator, "gamma", None) if estimator is not None else None
    return float(COMMON_DEFAULTS["gamma"] if gamma is None else gamma)


def _call_partial(value: Any, field: str, expected: type, *args: Any) -> Any:
    if isinstance(value, expected):
        return value
    if isinstance(value, functools.partial) or (callable(value) and not isinstance(value, type)):
        value = value(*args)
    if not isinstance(value, expected):
        raise ConfigError(
            f"trainer.{field} must build a {expected.__name__}, got {type(value).__name__}"
        )
    return value


def _make_offline_trainer(
    *,
    loss_module: Any,
    replay_buffer: Any,
    total_steps: int,
    optimizer: Any,
    lr: float,
    batch_size: int | None,
    loss_components: Sequence[str] | None,
    target_net_updater: Any,
    tau: float,
    logger: Any,
    log_interval: int,
    clip_norm: float | None,
    seed: int | None,
    metadata: Any,
    optimization_stepper: Any,
    policy_update_delay: int | None,
    target_update_delay: int,
    eval_env: str | None,
    eval_interval: int,
    eval_episodes: int,
    eval_max_steps: int,
    checkpoint_dir: str | None,
    checkpoint_interval: int,
    keep_checkpoints: int,
    resume: bool,
    hooks: Sequence[Any] | None,
    model_rollouts: Any = None,
    td_lambda: Any = None,
) -> OfflineTrainer:
    loss_module = _call_partial(loss_module, "loss_module", LossModule)
    if optimizer is None:
        optimizer = torch.optim.Adam(loss_module.parameters(), lr=float(lr))
    optimizer = _call_partial(
        optimizer, "optimizer", torch.optim.Optimizer, loss_module.parameters()
    )
    if target_net_updater is None:
        has_targets = any(
            name.startswith("target_") and name.endswith("_params")
            for name, _ in loss_module.named_children()
        )
        if has_targets:
            target_net_updater = SoftUpdate(loss_module, tau=float(tau))
    else:
        target_net_updater = _call_partial(
            target_net_updater, "target_net_updater", TargetNetUpdater, loss_module
        )
    components = plain(loss_components)
    if components is None:
        components = default_loss_components(loss_module)
    replay_buffer = _with_derived_keys(loss_module, replay_buffer)
    extra = {}
    if optimization_stepper is not None:
        extra["optimization_stepper"] = optimization_stepper
    trainer = OfflineTrainer(
        replay_buffer=replay_buffer,
        loss_module=loss_module,
        optimizer=optimizer,
        total_steps=int(total_steps),
        batch_size=batch_size,
        loss_components=components,
        target_net_updater=target_net_updater,
        logger=logger,
        log_interval=int(log_interval),
        clip_norm=clip_norm,
        seed=seed,
        metadata=plain(metadata),
        policy_update_delay=policy_update_delay,
        target_update_delay=int(target_update_delay),
        **extra,
    )
    _add_model_rollouts(trainer, replay_buffer, batch_size, seed, plain(model_rollouts))
    _add_td_lambda(trainer, replay_buffer, plain(td_lambda))
    if eval_env:
        _add_evaluation(
            trainer,
            eval_env,
            interval=int(eval_interval),
            num_episodes=int(eval_episodes),
            max_steps=int(eval_max_steps),
            seed=0 if seed is None else int(seed),
        )
    for index, hook in enumerate(hooks or ()):
        if not hasattr(hook, "register"):
            raise ConfigError(
                f"trainer.hooks[{index}] must be a trainer hook with a register(trainer) "
                f"method, got {type(hook).__name__}"
            )
        hook.register(trainer)
    if checkpoint_dir is not None:
        checkpointer = CheckpointHook(
            checkpoint_dir, interval=int(checkpoint_interval), keep=int(keep_checkpoints)
        )
        checkpointer.register(trainer)
        if resume:
            path = latest_checkpoint(checkpointer.directory)
            if path is None:
                raise ConfigError(
                    f"trainer.resume: nothing to resume, no checkpoint in {checkpoint_dir!r}; "
                    "start without trainer.resume"
                )
            trainer.load_checkpoint_state(load_checkpoint(path))
            checkpointer.last_path = path
    elif resume:
        raise ConfigError("trainer.resume needs trainer.checkpoint_dir")
    return trainer


def _add_model_rollouts(
    trainer: OfflineTrainer,
    replay_buffer: Any,
    batch_size: int | None,
    seed: int | None,
    settings: Any,
) -> None:
    """Mixed dataset and model batches for a loss whose algorithm declares the need
    "model rollouts" (``settings`` over the declared ones)."""
    from torchrl_offline.trainers.algorithms import algorithm_of, declaration, specs_from_dataset
    from torchrl_offline.trainers.model_rollouts import attach_model_rollouts

    loss_module = trainer.loss_module
    name = algorithm_of(loss_module)
    declared = None if name is None else declaration(name).model_rollouts
    if declared is None:
        if settings:
            raise ConfigError(
                f"trainer.model_rollouts: {type(loss_module).__name__} does not train on "
                "model rollouts"
            )
        return
    hp = declared.hyperparameters()
    settings = dict(settings or {})
    unknown = sorted(set(settings) - set(hp))
    if unknown:
        raise ConfigError(
            f"trainer.model_rollouts: unknown setting {unknown[0]!r}; valid: {', '.join(hp)}"
        )
    obs_spec, act_spec = specs_from_dataset(replay_buffer)
    size = batch_size if batch_size is not None else getattr(replay_buffer, "batch_size", None)
    if size is None:
        raise ConfigError(f"trainer.batch_size is needed to mix {name}'s batches")
    attach_model_rollouts(
        trainer,
        _policy_of(loss_module),
        replay_buffer,
        settings={**hp, **settings},
        observation_dim=int(obs_spec.shape[-1]),
        action_dim=int(act_spec.shape[-1]),
        batch_size=int(size),
        seed=0 if seed is None else int(seed),
    )


def _add_td_lambda(trainer: OfflineTrainer, replay_buffer: Any, settings: Any) -> None:
    """The TD(lambda) refresh for a loss fitting its value to TD(lambda) returns
    (``settings`` over the declared ones)."""
    from torchrl_offline.trainers.algorithms import algorithm_of, declaration
    from torchrl_offline.trainers.td_lambda import TDLambdaRefresh

    loss_module = trainer.loss_module
    name = algorithm_of(loss_module)
    decl = None if name is None else declaration(name)
    value_target = getattr(loss_module, "value_target", None)
    if decl is None or not decl.uses_td_lambda({"value_target": value_target}):
        if settings:
            raise ConfigError(
                f"trainer.td_lambda: {type(loss_module).__name__} does not fit its value to "
                "TD(lambda) returns (set the loss's value_target: td_lambda)"
            )
        return
    hp = decl.td_lambda_returns.hyperparameters()
    settings = dict(settings or {})
    unknown = sorted(set(settings) - set(hp))
    if unknown:
        raise ConfigError(
            f"trainer.td_lambda: unknown setting {unknown[0]!r}; valid: {', '.join(hp)}"
        )
    hp.update(settings)
    try:
        decl.td_lambda_returns.check(hp)
    except ValueError as err:
        raise ConfigError(f"trainer.td_lambda: {err}") from None
    TDLambdaRefresh(
        loss_module,
        replay_buffer,
        gamma=_discount(loss_module),
        lmbda=float(hp["td_lambda"]),
        interval=int(hp["td_lambda_interval"]),
    ).register(trainer)


def _policy_of(loss_module: LossModule) -> Any:
    for name in ("actor_network", "value_network"):
        module = getattr(loss_module, name, None)
        if module is not None:
            return module
    raise ConfigError(
        f"trainer.eval_env: {type(loss_module).__name__} has no actor_network or "
        "value_network to evaluate"
    )


def _add_evaluation(
    trainer: OfflineTrainer,
    env_id: str,
    *,
    interval: int,
    num_episodes: int,
    max_steps: int,
    seed: int,
) -> None:
    from torchrl_offline.trainers.offline import as_env

    meta = getattr(trainer.replay_buffer, "metadata", None) or {}
    reference = None
    if meta.get("ref_min_score") is not None and meta.get("ref_max_score") is not None:
        reference = (float(meta["ref_min_score"]), float(meta["ref_max_score"]))
    env = as_env(env_id)  # a GymEnv, MuJoCo's float64 observations cast to float32
    EvaluationHook(
        env,
        _policy_of(trainer.loss_module),
        interval=interval,
        num_episodes=num_episodes,
        seed=seed,
        max_steps=max_steps,
        reference=reference,
    ).register(trainer)
    trainer.register_op("shutdown", env.close)
