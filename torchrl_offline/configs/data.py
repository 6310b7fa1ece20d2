"""Hydra configs of the offline datasets (ConfigStore groups ``dataset`` and ``replay_buffer``).

Each config instantiates to an
:class:`~torchrl_offline.data.storage.OfflineReplayBuffer`, so the same node is stored
twice: as ``dataset: minari | logged | collect`` and, for TorchRL trainer configs that
read ``${replay_buffer}``, as ``replay_buffer: offline_minari | offline_logged |
offline_collect``. ``sampler`` and ``transform`` take TorchRL's own configs
(``sampler@dataset.sampler: without_replacement``); ``dtype`` is a name such as
``"float32"``.

Examples:
    >>> import tempfile
    >>> import numpy as np
    >>> import pandas as pd
    >>> from hydra.utils import instantiate
    >>> from torchrl_offline.configs.data import LoggedDatasetConfig
    >>> rng = np.random.default_rng(0)
    >>> path = tempfile.mkdtemp() + "/log.parquet"
    >>> pd.DataFrame({"observation_0": rng.normal(size=8), "action_0": rng.uniform(-1, 1, 8),
    ...               "reward": rng.normal(size=8), "terminated": [False] * 7 + [True]}
    ...              ).to_parquet(path)
    >>> rb = instantiate(LoggedDatasetConfig(source=path, batch_size=4, drop_incomplete=True))
    >>> len(rb), rb.sample().batch_size  # the terminal last step needs no next observation
    (8, torch.Size([4]))
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from omegaconf import MISSING
from torchrl.trainers.algorithms.configs.common import ConfigBase

from torchrl_offline.configs.common import as_dtype, plain
from torchrl_offline.data.storage import OfflineReplayBuffer

__all__ = [
    "DATASET_CONFIGS",
    "CollectedDatasetConfig",
    "DatasetConfig",
    "LoggedDatasetConfig",
    "MinariDatasetConfig",
]

_MAKERS = "torchrl_offline.configs.data."


@dataclass
class DatasetConfig(ConfigBase):
    """Base of the dataset configs: the replay-buffer side shared by all of them."""

    batch_size: int | None = 256
    sampler: Any = None
    transform: Any = None
    _partial_: bool = False

    def __post_init__(self) -> None:
        """Nothing to check before composition (the loaders validate their inputs)."""


@dataclass
class MinariDatasetConfig(DatasetConfig):
    """A local Minari dataset, :func:`~torchrl_offline.data.load_minari` (``dataset: minari``)."""

    dataset_id_or_path: str = MISSING
    root: str | None = None
    dtype: str = "float32"
    one_hot_actions: bool = False
    cache_dir: str | None = None
    download: bool = False
    info_keys: list[str] = field(default_factory=list)
    chunk_transitions: int = 65_536
    _target_: str = _MAKERS + "_make_minari_dataset"


@dataclass
class LoggedDatasetConfig(DatasetConfig):
    """A log file (Parquet, CSV or HDF5), :func:`~torchrl_offline.data.from_logged`
    (``dataset: logged``); ``observation_space`` / ``action_space`` may be gymnasium
    space configs (``{_target_: gymnasium.spaces.Box, ...}``)."""

    source: str = MISSING
    path: str | None = None
    columns: Any = None
    ignore: list[str] = field(default_factory=list)
    observation_space: Any = None
    action_space: Any = None
    drop_incomplete: bool = False
    dtype: str = "float32"
    one_hot_actions: bool = False
    file_format: str | None = None
    chunk_size: int = 65_536
    ref_min_score: float | None = None
    ref_max_score: float | None = None
    overwrite: bool = False
    minari_id: str | None = None
    minari_root: str | None = None
    minari_kwargs: Any = None
    env_id: str | None = None
    horizon: int | None = None
    num_positions: int | None = None
    _target_: str = _MAKERS + "_make_logged_dataset"


@dataclass
class CollectedDatasetConfig(DatasetConfig):
    """A dataset collected by running a behaviour policy in an env,
    :func:`~torchrl_offline.data.collect_dataset` then
    :func:`~torchrl_offline.data.load_minari` (``dataset: collect``).

    ``policy`` is ``None`` (uniform random actions), a config of a behaviour policy, or a
    ``_partial_`` config called with the env. With ``reuse_existing`` (the default) a
    dataset already at ``<root>/<dataset_id>`` is loaded instead of collected again, so
    re-running a Hydra job does not redo the collection; ``overwrite`` collects anew.
    """

    env: str = MISSING
    policy: Any = None
    num_steps: int = MISSING
    dataset_id: str = MISSING
    root: str | None = None
    seed: int = 0
    data_format: str = "hdf5"
    ref_min_score: float | None = None
    ref_max_score: float | None = None
    frames_per_batch: int = 1000
    env_kwargs: Any = None
    algorithm_name: str | None = None
    description: str | None = None
    author: str | None = None
    overwrite: bool = False
    reuse_existing: bool = True
    dtype: str = "float32"
    one_hot_actions: bool = False
    cache_dir: str | None = None
    _target_: str = _MAKERS + "_make_collected_dataset"


#: Store name in group ``dataset`` -> config class (``offline_<name>`` in ``replay_buffer``).
DATASET_CONFIGS: dict[str, type[DatasetConfig]] = {
    "minari": MinariDatasetConfig,
    "logged": LoggedDatasetConfig,
    "collect": CollectedDatasetConfig,
}


# ----------------------------------------------------------------------------- makers
def _make_minari_dataset(**kwargs: Any) -> OfflineReplayBuffer:
    from torchrl_offline.data.minari import load_minari

    kwargs = {k: plain(v) for k, v in kwargs.items()}
    kwargs["dtype"] = as_dtype(kwargs["dtype"], "dataset.dtype")
    kwargs["info_keys"] = tuple(kwargs["info_keys"])
    return load_minari(kwargs.pop("dataset_id_or_path"), **kwargs)


def _make_logged_dataset(**kwargs: Any) -> OfflineReplayBuffer:
    from torchrl_offline.data.logged import from_logged

    kwargs = {k: plain(v) for k, v in kwargs.items()}
    kwargs["dtype"] = as_dtype(kwargs["dtype"], "dataset.dtype")
    kwargs["ignore"] = tuple(kwargs["ignore"])
    return from_logged(kwargs.pop("source"), **kwargs)


def _make_collected_dataset(
    *,
    env: str,
    policy: Any,
    num_steps: int,
    dataset_id: str,
    root: str | None,
    overwrite: bool,
    reuse_existing: bool,
    batch_size: int | None,
    sampler: Any,
    transform: Any,
    dtype: str,
    one_hot_actions: bool,
    cache_dir: str | None,
    **collect_kwargs: Any,
) -> OfflineReplayBuffer:
    from torchrl_offline.data.collect import collect_dataset
    from torchrl_offline.data.minari import load_minari
    from torchrl_offline.data.minari_writer import minari_root

    path = minari_root(root) / dataset_id
    if overwrite or not (reuse_existing and path.exists()):
        collect_kwargs = {k: plain(v) for k, v in collect_kwargs.items()}
        path = collect_dataset(
            env,
            policy,
            int(num_steps),
            dataset_id=dataset_id,
            root=root,
            overwrite=overwrite,
            **collect_kwargs,
        )
    return load_minari(
        path,
        batch_size=batch_size,
        sampler=sampler,
        transform=transform,
        dtype=as_dtype(dtype, "dataset.dtype"),
        one_hot_actions=one_hot_actions,
        cache_dir=cache_dir,
    )
