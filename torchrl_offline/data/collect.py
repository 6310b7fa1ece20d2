"""Create an offline dataset by running a behaviour policy in an environment."""

from __future__ import annotations

import math
import os
import re
import tempfile
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import gymnasium as gym
import numpy as np
import torch
from tensordict import TensorDict, TensorDictBase
from tensordict.nn import TensorDictModuleBase
from torchrl.collectors import Collector
from torchrl.data import Bounded, Categorical, Composite, OneHot, TensorSpec, Unbounded
from torchrl.envs import EnvBase, TransformedEnv
from torchrl.envs.libs.gym import GymEnv
from torchrl.envs.transforms import InitTracker
from torchrl.envs.utils import ExplorationType

from torchrl_offline.data.behavior import (
    IS_INIT,
    POLICY_ID,
    BehaviorPolicy,
    UniformRandomPolicy,
    as_behavior_policy,
)
from torchrl_offline.data.errors import DatasetError
from torchrl_offline.data.keys import (
    ACTION,
    ACTION_LOG_PROB,
    ACTION_PROB,
    DONE,
    EPISODE,
    OBSERVATION,
    TERMINATED,
    TRUNCATED,
)
from torchrl_offline.data.minari_writer import (
    _write_minari,
    _writing,
    check_dataset_id,
    minari_root,
    new_dataset_directory,
)
from torchrl_offline.data.storage import allocate_transitions
from torchrl_offline.leftovers import OWNER, owner_tag, remove_stale

__all__ = ["collect_dataset"]

PolicyLike = TensorDictModuleBase | Callable[[EnvBase], TensorDictModuleBase] | None

#: Scratch folders of collections in ``$TMPDIR``: ``torchrl_offline_collect_<owner>_<random>``.
_SCRATCH = "torchrl_offline_collect_"
_STALE_SCRATCH = re.compile(rf"{_SCRATCH}{OWNER}_[a-z0-9_]+")


def _make_env(env: str | EnvBase, env_kwargs: Mapping[str, Any] | None) -> tuple[EnvBase, bool]:
    """The TorchRL env to run, and whether it was created here (then it is closed here)."""
    if isinstance(env, str):
        return GymEnv(env, categorical_action_encoding=True, **dict(env_kwargs or {})), True
    if env_kwargs:
        raise ValueError("env_kwargs only applies when env is a gymnasium id")
    if not isinstance(env, EnvBase):
        raise TypeError(f"env must be a gymnasium id or a TorchRL env, got {type(env).__name__}")
    if tuple(env.batch_size) != ():
        raise ValueError(
            f"collect_dataset runs one environment; got batch size {list(env.batch_size)}"
        )
    return env, False


def _spec_to_space(spec: TensorSpec) -> gym.Space:
    """A gymnasium space describing the values of a TorchRL spec."""
    if isinstance(spec, Composite):
        return gym.spaces.Dict({k: _spec_to_space(v) for k, v in spec.items()})
    dtype = torch.empty((), dtype=spec.dtype).numpy().dtype
    if type(spec) is OneHot:
        return gym.spaces.Discrete(int(spec.space.n))
    if type(spec) is Categorical and math.prod(spec.shape) == 1:
        return gym.spaces.Discrete(int(spec.space.n))
    if isinstance(spec, Bounded):
        low = np.broadcast_to(spec.space.low.numpy(), spec.shape).astype(dtype)
        high = np.broadcast_to(spec.space.high.numpy(), spec.shape).astype(dtype)
        return gym.spaces.Box(low, high, tuple(spec.shape), dtype)
    if isinstance(spec, Unbounded):
        return gym.spaces.Box(-np.inf, np.inf, tuple(spec.shape), dtype)
    raise ValueError(f"Cannot describe a {type(spec).__name__} spec as a gymnasium space")


def _check_zero_based(space: gym.Space) -> None:
    """Refuse integer action spaces that do not start at 0.

    TorchRL's ``GymEnv`` describes ``Discrete(n, start=s)`` as ``Categorical(n)`` and passes the
    policy's index ``0..n-1`` to the env unchanged, so the env would receive actions outside its
    space (and the data would not match the space stored with the dataset).
    """
    start = getattr(space, "start", None)
    if isinstance(space, (gym.spaces.Discrete, gym.spaces.MultiDiscrete)) and np.any(start != 0):
        raise ValueError(
            f"The env's action space {space} does not start at 0, which TorchRL's GymEnv "
            "ignores (the env would receive actions outside its space); wrap the gymnasium env "
            "so its actions start at 0 (e.g. with gymnasium.wrappers.TransformAction) and "
            "collect from that env"
        )


def _observation_keys(env: EnvBase) -> list[str]:
    return [k for k in env.observation_spec.keys() if k != IS_INIT]


def _spaces(env: EnvBase) -> tuple[gym.Space, gym.Space, Any]:
    """Observation space, action space and gymnasium EnvSpec of the stored data."""
    obs_keys = _observation_keys(env)
    if isinstance(env, GymEnv) and not isinstance(env._env.observation_space, gym.spaces.Tuple):
        gym_env = env._env
        obs_space, act_space = gym_env.observation_space, gym_env.action_space
        if obs_keys == [OBSERVATION] or isinstance(obs_space, gym.spaces.Dict):
            return obs_space, act_space, _serialisable_spec(gym_env.spec)
    if obs_keys == [OBSERVATION]:
        obs_space = _spec_to_space(env.observation_spec[OBSERVATION])
    else:
        obs_space = _spec_to_space(env.observation_spec.select(*obs_keys))
    return obs_space, _spec_to_space(env.action_spec_unbatched), None


def _serialisable_spec(spec: Any) -> Any:
    """The env spec if Minari can store it (gymnasium cannot serialise callable entry points)."""
    try:
        spec.to_json()
    except (AttributeError, ValueError):
        return None
    return spec


def _layout(batch: TensorDictBase, obs_keys: list[str], extra: list[str]) -> TensorDict:
    """Select the dataset fields of a collector batch (TorchRL layout, float32 rewards)."""

    def observation(td: TensorDictBase) -> torch.Tensor | TensorDictBase:
        if obs_keys == [OBSERVATION]:
            return td.get(OBSERVATION)
        return td.select(*obs_keys)

    nxt = batch.get("next")
    out = TensorDict(
        {
            OBSERVATION: observation(batch),
            ACTION: batch.get(ACTION),
            EPISODE: torch.zeros(batch.shape[0], dtype=torch.long),  # numbered at the end
            "next": {
                "observation": observation(nxt),
                "reward": nxt.get("reward").to(torch.float32).reshape(-1, 1),
                "done": nxt.get("done").reshape(-1, 1),
                "terminated": nxt.get("terminated").reshape(-1, 1),
                "truncated": nxt.get("truncated").reshape(-1, 1),
            },
        },
        batch_size=batch.batch_size,
    )
    for key in extra:
        value = batch.get(key).reshape(batch.shape[0])
        out.set(key, value.long() if key == POLICY_ID else value.to(torch.float32))
    return out


def _resolve_policy(policy: PolicyLike, env: EnvBase) -> TensorDictModuleBase:
    if policy is None:
        return UniformRandomPolicy(env.action_spec_unbatched)
    if not isinstance(policy, torch.nn.Module) and callable(policy):
        policy = policy(env)
    if isinstance(policy, BehaviorPolicy):
        return policy
    try:
        return as_behavior_policy(policy)
    except TypeError:
        # A custom module is accepted if it writes action_log_prob itself (checked later).
        return policy


def collect_dataset(
    env: str | EnvBase,
    policy: PolicyLike,
    num_steps: int,
    *,
    dataset_id: str,
    root: str | os.PathLike | None = None,
    seed: int = 0,
    data_format: str = "hdf5",
    ref_min_score: float | None = None,
    ref_max_score: float | None = None,
    frames_per_batch: int = 1000,
    env_kwargs: Mapping[str, Any] | None = None,
    algorithm_name: str | None = None,
    description: str | None = None,
    author: str | None = None,
    overwrite: bool = False,
) -> Path:
    """Run a behaviour policy in an environment and write the transitions as a Minari dataset.

    The policy runs in a TorchRL :class:`~torchrl.collectors.Collector` for exactly
    ``num_steps`` environment steps (episodes reset automatically when they end).
    Every transition stores the behaviour log-probability of its action as
    ``action_log_prob`` (and ``action_prob`` for discrete actions), in the Minari
    episode ``infos`` (the entry for ``actions[t]`` is ``infos[key][t + 1]``); a
    :class:`~torchrl_offline.data.behavior.MixturePolicy` also stores ``policy_id``.
    The last episode, cut by the step budget, is marked truncated; a step where the env
    terminates on its time limit (gymnasium reports both flags) is stored terminated only.

    Reproducible: the env is seeded with ``seed`` and the policy's randomness comes from
    torch's generator seeded with ``seed`` (inside :func:`torch.random.fork_rng`, so the
    caller's random state is untouched): the same arguments give identical datasets.

    Atomic: transitions go to a temporary memory-mapped buffer (so RAM stays bounded by
    ``frames_per_batch``) and the dataset is written by
    :func:`~torchrl_offline.data.write_minari` under a temporary name and renamed at the
    end, so an interrupted collection leaves no dataset.

    Args:
        env: a gymnasium id (built as ``GymEnv(id, categorical_action_encoding=True)``) or a
            TorchRL env with batch size ``[]`` (e.g. a :class:`~torchrl.envs.GymEnv`).
        policy: the behaviour policy: a
            :class:`~torchrl_offline.data.behavior.BehaviorPolicy`, a ``ProbabilisticActor``
            (used as is), any TensorDict module that writes ``"action"`` and
            ``"action_log_prob"``, a callable ``env -> policy`` (handy with an env id), or
            ``None`` for uniformly random actions.
        num_steps: number of transitions to collect.

    Keyword Args:
        dataset_id: Minari id of the new dataset, e.g. ``"pendulum/random-v0"``.
        root: datasets root (default ``$MINARI_DATASETS_PATH`` or ``~/.minari/datasets``).
        seed: seed of the env and of the policy's random draws.
        data_format: Minari storage format, ``"hdf5"`` or ``"arrow"``.
        ref_min_score: reference return of a random policy, stored for normalized scores.
        ref_max_score: reference return of an expert policy (give both or neither).
        frames_per_batch: steps per collector batch (memory use, not results).
        env_kwargs: keyword arguments of ``GymEnv`` when ``env`` is an id.
        algorithm_name: stored in the metadata (default: a description of the policy).
        description: stored in the metadata.
        author: stored in the metadata.
        overwrite: replace an existing dataset with the same id.

    Returns:
        The dataset directory (``<root>/<dataset_id>``), which ``minari.MinariDataset``
        (on its ``data`` folder) and :func:`~torchrl_offline.data.load_minari` open.

    Raises:
        FileExistsError: the dataset exists and ``overwrite`` is False.
        ValueError: the env's integer action space does not start at 0 (TorchRL's
            ``GymEnv`` ignores ``Discrete.start``).
        DatasetError: the policy did not write ``action_log_prob``, or the collected
            data is invalid (e.g. an action outside the action space).

    Examples:
        >>> import minari, tempfile
        >>> from torchrl_offline.data.collect import collect_dataset
        >>> root = tempfile.mkdtemp()
        >>> path = collect_dataset(
        ...     "CartPole-v1", None, 50, dataset_id="cartpole/random-v0", root=root, seed=1
        ... )
        >>> dataset = minari.MinariDataset(path / "data")
        >>> dataset.total_steps
        50
        >>> episode = dataset[0]
        >>> round(float(episode.infos["action_prob"][1]), 3)
        0.5
    """
    if num_steps < 1:
        raise ValueError(f"num_steps must be positive, got {num_steps}")
    if frames_per_batch < 1:
        raise ValueError(f"frames_per_batch must be positive, got {frames_per_batch}")
    if (ref_min_score is None) != (ref_max_score is None):
        raise ValueError("ref_min_score and ref_max_score must be given together")
    with _writing(minari_root(root) / check_dataset_id(dataset_id)):  # one writer at a time
        new_dataset_directory(dataset_id, root, overwrite=overwrite)  # before collecting
        return _collect(
            env,
            policy,
            num_steps,
            dataset_id=dataset_id,
            root=root,
            seed=seed,
            frames_per_batch=frames_per_batch,
            data_format=data_format,
            ref_min_score=ref_min_score,
            ref_max_score=ref_max_score,
            algorithm_name=algorithm_name,
            description=description,
            author=author,
            overwrite=overwrite,
            env_kwargs=env_kwargs,
        )


def _collect(
    env: Any,
    policy: Any,
    num_steps: int,
    *,
    dataset_id: str,
    root: str | os.PathLike | None,
    seed: int,
    frames_per_batch: int,
    data_format: str,
    ref_min_score: float | None,
    ref_max_score: float | None,
    algorithm_name: str | None,
    description: str | None,
    author: str | None,
    overwrite: bool,
    env_kwargs: Mapping[str, Any] | None,
) -> Path:
    """:func:`collect_dataset` with the dataset's lock held."""
    base_env, owned = _make_env(env, env_kwargs)
    collector = None
    try:
        done_keys = set(base_env.full_done_spec.keys())
        if not {"done", "terminated", "truncated"} <= done_keys:
            raise ValueError(
                f"The env must report done, terminated and truncated; it has {sorted(done_keys)} "
                "(see EnvBase.add_truncated_keys)"
            )
        obs_space, act_space, env_spec = _spaces(base_env)
        _check_zero_based(act_space)
        obs_keys = _observation_keys(base_env)
        run_env = base_env
        if IS_INIT not in base_env.observation_spec.keys():
            run_env = TransformedEnv(base_env, InitTracker())
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            behavior = _resolve_policy(policy, base_env)
            if hasattr(behavior, "reset_episode_state"):
                behavior.reset_episode_state()
            _seed_env(run_env, base_env, seed)
            batch_frames = min(frames_per_batch, num_steps)
            collector = Collector(
                run_env,
                behavior,
                frames_per_batch=batch_frames,
                total_frames=-1,  # endless (a finished collector closes the env): we stop
                exploration_type=ExplorationType.RANDOM,
            )
            remove_stale(tempfile.gettempdir(), _STALE_SCRATCH)  # of killed collections
            prefix = f"{_SCRATCH}{owner_tag()}_"
            with tempfile.TemporaryDirectory(prefix=prefix) as tmp:
                transitions = _gather(collector, behavior, num_steps, obs_keys, Path(tmp))
                _finish_episodes(transitions)
                info_keys = [POLICY_ID] if POLICY_ID in transitions.keys() else []
                path = _write_minari(
                    transitions,
                    dataset_id,
                    observation_space=obs_space,
                    action_space=act_space,
                    root=root,
                    env_spec=env_spec,
                    data_format=data_format,
                    ref_min_score=ref_min_score,
                    ref_max_score=ref_max_score,
                    algorithm_name=algorithm_name or _describe(behavior),
                    description=description,
                    author=author,
                    extra_metadata={
                        "behavior_policy": _describe(behavior),
                        "collection_seed": int(seed),
                        "collection_steps": int(num_steps),
                    },
                    extra_info_keys=info_keys,
                    overwrite=overwrite,
                )
                del transitions
    finally:
        if collector is not None:
            collector.shutdown(close_env=owned)
        elif owned:
            base_env.close()
    return path


def _gather(
    collector: Collector,
    behavior: TensorDictModuleBase,
    num_steps: int,
    obs_keys: list[str],
    directory: Path,
) -> TensorDictBase:
    """Copy the first ``num_steps`` collected steps, in dataset layout, to a memory-mapped buffer."""
    transitions: TensorDictBase | None = None
    extra: list[str] = []
    filled = 0
    for batch in collector:
        if transitions is None:
            keys = batch.keys()
            extra = [k for k in (ACTION_LOG_PROB, ACTION_PROB, POLICY_ID) if k in keys]
            if ACTION_LOG_PROB not in extra:
                raise DatasetError(
                    f"The policy {type(behavior).__name__} did not write {ACTION_LOG_PROB!r}: "
                    "wrap a deterministic actor in a behaviour policy (GaussianNoisePolicy, "
                    "EpsilonGreedyPolicy, ...) so every action has a known probability",
                    field=ACTION_LOG_PROB,
                    index=0,
                )
            first = _layout(batch[:1], obs_keys, extra)
            spec = {
                key: (tuple(value.shape[1:]), value.dtype)
                for key, value in first.items(include_nested=True, leaves_only=True)
            }
            transitions = allocate_transitions(spec, num_steps, directory / "buffer")
        take = min(batch.shape[0], num_steps - filled)
        transitions[filled : filled + take] = _layout(batch[:take], obs_keys, extra)
        filled += take
        if filled >= num_steps:
            return transitions
    raise RuntimeError(f"The collector stopped after {filled} of {num_steps} steps")


def _seed_env(run_env: EnvBase, base_env: EnvBase, seed: int) -> None:
    """Seed the env so that its first episode starts where gymnasium's ``reset(seed=seed)`` does.

    TorchRL's ``GymEnv.set_seed`` seeds by calling ``reset(seed=seed)``, and the collector then
    resets once more, so the first collected episode would start from the second reset. For
    a gymnasium env, the unwrapped env's generator is therefore re-seeded afterwards exactly as
    ``reset(seed=seed)`` seeds it: the collector's first reset then gives the same initial
    state as ``gym.make(id).reset(seed=seed)``, and later episodes follow unseeded resets, as in
    a plain gymnasium loop.
    """
    run_env.set_seed(seed)
    gym_env = getattr(base_env, "_env", None)
    if isinstance(base_env, GymEnv) and isinstance(gym_env, gym.Env):
        from gymnasium.utils import seeding

        gym_env.unwrapped.np_random, _ = seeding.np_random(seed)


def _finish_episodes(transitions: TensorDictBase) -> None:
    """Resolve doubly-flagged steps, mark the budget-cut last step truncated and number the
    episodes from the done flags.

    Gymnasium's ``TimeLimit`` reports ``truncated`` on the last allowed step even when the
    env terminates on that same step; the episode did terminate (nothing to bootstrap), so
    such a step is stored terminated only (a dataset never has both flags set).
    """
    terminated, truncated = transitions.get(TERMINATED), transitions.get(TRUNCATED)
    truncated &= ~terminated
    done = transitions.get(DONE)
    if not bool(done[-1].all()):
        transitions.get(TRUNCATED)[-1] = True
        done[-1] = True
    ends = done.reshape(-1).long()
    transitions.get(EPISODE).copy_(torch.cumsum(ends, 0) - ends)


def _describe(policy: TensorDictModuleBase) -> str:
    describe = getattr(policy, "describe", None)
    return describe() if callable(describe) else type(policy).__name__
