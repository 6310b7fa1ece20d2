"""Readers for logged data sources: mappings of arrays, TensorDicts, DataFrames, Parquet, CSV, HDF5.

Each reader presents its source as named columns read chunk by chunk (so large files are
never loaded at once); :mod:`torchrl_offline.data.logged` turns the columns into
transitions.
"""

from __future__ import annotations

import os
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tensordict import TensorDictBase

from torchrl_offline.data.errors import DatasetError, DatasetNotFoundError, reading
from torchrl_offline.data.validate import check_lengths

__all__ = ["Name", "SourceTable", "dotted", "open_source"]

Name = tuple[str, ...]  # a source column; nested sources (HDF5 groups, tensordicts) give tuples


def dotted(name: Name) -> str:
    return ".".join(name)


# --------------------------------------------------------------------------- sources


class SourceTable:
    """A columnar source read chunk by chunk: ``chunks()`` yields ``{name: array}``."""

    kind = "table"

    def __init__(self, names: list[Name]):
        self.names = names
        self.used = list(names)

    def select(self, used: set[Name], float_names: set[Name]) -> None:
        """Read only the ``used`` columns; ``float_names`` hold floating data."""
        self.used = [n for n in self.names if n in used]

    def chunks(self, chunk_size: int) -> Iterator[dict[Name, np.ndarray]]:
        raise NotImplementedError

    def describe(self) -> dict[str, Any]:
        return {"source_type": self.kind}


class _ArrayTable(SourceTable):
    """In-memory arrays (a mapping of numpy arrays / torch tensors / lists, a TensorDict)."""

    def __init__(self, columns: dict[Name, Any], kind: str):
        super().__init__(list(columns))
        self.kind = kind
        self.columns = columns

    def select(self, used: set[Name], float_names: set[Name]) -> None:
        super().select(used, float_names)
        self.columns = {n: _to_numpy(self.columns[n]) for n in self.used}
        self.num_rows = check_lengths({dotted(n): v for n, v in self.columns.items()})

    def chunks(self, chunk_size: int) -> Iterator[dict[Name, np.ndarray]]:
        for start in range(0, self.num_rows, chunk_size):
            yield {n: v[start : start + chunk_size] for n, v in self.columns.items()}


class _DataFrameTable(SourceTable):
    kind = "dataframe"

    def __init__(self, frame: Any):
        self.frame = frame
        super().__init__([(str(c),) for c in frame.columns])

    def chunks(self, chunk_size: int) -> Iterator[dict[Name, np.ndarray]]:
        labels = [c for c in self.frame.columns if (str(c),) in self.used]
        for start in range(0, len(self.frame), chunk_size):
            part = self.frame.iloc[start : start + chunk_size]
            yield {(str(c),): _series_to_numpy(part[c]) for c in labels}


def _series_to_numpy(series: Any) -> np.ndarray:
    """A pandas column as numpy; nullable numbers/bools (``Int64``, ``boolean``) give NaN for NA."""
    import pandas as pd

    dtype = series.dtype
    if pd.api.types.is_extension_array_dtype(dtype) and (
        pd.api.types.is_numeric_dtype(dtype) or pd.api.types.is_bool_dtype(dtype)
    ):
        if series.isna().any():
            return series.to_numpy(dtype=np.float64, na_value=np.nan)
        return series.to_numpy(dtype=dtype.numpy_dtype)
    return series.to_numpy()


class _ParquetTable(SourceTable):
    kind = "parquet"

    def __init__(self, path: Path):
        import pyarrow.parquet as pq

        self.path = path
        # Memory-mapped: the default reader keeps growing its buffers over a large file.
        with reading(path, "Parquet file"):
            self.file = pq.ParquetFile(path, memory_map=True)
        super().__init__([(name,) for name in self.file.schema_arrow.names])

    def chunks(self, chunk_size: int) -> Iterator[dict[Name, np.ndarray]]:
        names = [n[0] for n in self.used]
        with reading(self.path, "Parquet file"):
            for batch in self.file.iter_batches(batch_size=chunk_size, columns=names):
                yield {(name,): _arrow_to_numpy(batch.column(name)) for name in names}

    def describe(self) -> dict[str, Any]:
        return {"source_type": self.kind, "source_path": str(self.path)}


class _CsvTable(SourceTable):
    kind = "csv"

    def __init__(self, path: Path, chunk_size: int):
        from pyarrow import csv

        self.path = path
        # Blocks of roughly chunk_size rows of a few dozen numbers.
        self.block_size = max(1 << 12, min(1 << 24, 64 * chunk_size))
        with reading(path, "CSV file"):
            reader = csv.open_csv(path, read_options=csv.ReadOptions(block_size=self.block_size))
            self.schema = reader.schema
            reader.close()
        super().__init__([(name,) for name in self.schema.names])
        self.column_types: dict[str, Any] = {}

    def select(self, used: set[Name], float_names: set[Name]) -> None:
        import pyarrow as pa

        super().select(used, float_names)
        # Types are inferred from the first block only: floating fields are read as
        # float64 so a later block with fractions cannot break an integer column.
        for field in self.schema:
            if (field.name,) in float_names and (
                pa.types.is_integer(field.type) or pa.types.is_null(field.type)
            ):
                self.column_types[field.name] = pa.float64()

    def chunks(self, chunk_size: int) -> Iterator[dict[Name, np.ndarray]]:
        from pyarrow import csv

        names = [n[0] for n in self.used]
        with reading(self.path, "CSV file"):
            reader = csv.open_csv(
                self.path,
                read_options=csv.ReadOptions(block_size=self.block_size),
                convert_options=csv.ConvertOptions(
                    column_types=self.column_types, include_columns=names
                ),
            )
            try:
                for batch in reader:
                    yield {(name,): _arrow_to_numpy(batch.column(name)) for name in names}
            finally:
                reader.close()

    def describe(self) -> dict[str, Any]:
        return {"source_type": self.kind, "source_path": str(self.path)}


class _Hdf5Table(SourceTable):
    """An HDF5 file in D4RL layout: one dataset per field, groups for nested fields."""

    kind = "hdf5"

    def __init__(self, path: Path):
        import h5py

        self.path = path
        self.lengths: dict[Name, int] = {}
        with reading(path, "HDF5 file"), h5py.File(path, "r") as f:

            def visit(name: str, obj: Any) -> None:
                # D4RL's metadata/ group holds per-dataset values, not per-step columns.
                if isinstance(obj, h5py.Dataset) and not name.startswith("metadata/"):
                    self.lengths[tuple(name.split("/"))] = obj.shape[0] if obj.ndim else 0

            f.visititems(visit)
        super().__init__(list(self.lengths))

    def select(self, used: set[Name], float_names: set[Name]) -> None:
        super().select(used, float_names)
        self.num_rows = check_lengths({dotted(n): range(self.lengths[n]) for n in self.used})

    def chunks(self, chunk_size: int) -> Iterator[dict[Name, np.ndarray]]:
        import h5py

        with reading(self.path, "HDF5 file"), h5py.File(self.path, "r") as f:
            for start in range(0, self.num_rows, chunk_size):
                yield {n: f["/".join(n)][start : start + chunk_size] for n in self.used}

    def describe(self) -> dict[str, Any]:
        return {"source_type": self.kind, "source_path": str(self.path)}


def _to_numpy(value: Any) -> np.ndarray:
    if isinstance(value, torch.Tensor):
        return value.detach().cpu().numpy()
    return np.asarray(value)


def _arrow_to_numpy(array: Any) -> np.ndarray:
    """A pyarrow column as numpy; list columns become one more dimension."""
    import pyarrow as pa

    kind = array.type
    if pa.types.is_list(kind) or pa.types.is_large_list(kind) or pa.types.is_fixed_size_list(kind):
        if array.null_count:
            return array.to_numpy(zero_copy_only=False)  # reported with its index later
        if pa.types.is_fixed_size_list(kind):
            width = kind.list_size
        else:
            lengths = np.diff(np.asarray(array.offsets))
            if len(lengths) and (lengths != lengths[0]).any():
                return array.to_numpy(zero_copy_only=False)  # ragged: reported later
            width = int(lengths[0]) if len(lengths) else 0
        inner = _arrow_to_numpy(array.flatten())
        return inner.reshape(len(array), width, *inner.shape[1:])
    return array.to_numpy(zero_copy_only=False)


def _is_dataframe(source: Any) -> bool:
    try:
        import pandas as pd
    except ImportError:  # pragma: no cover - pandas is a dependency
        return False
    return isinstance(source, pd.DataFrame)


def open_source(source: Any, file_format: str | None, chunk_size: int) -> SourceTable:
    if isinstance(source, TensorDictBase):
        if source.batch_dims > 1:
            raise DatasetError(
                f"A TensorDict source must have one batch dimension (transitions), got batch "
                f"size {list(source.batch_size)}; flatten it with td.reshape(-1) so each "
                "episode's steps are contiguous",
                field="batch_size",
            )
        columns = {
            key if isinstance(key, tuple) else (key,): value
            for key, value in source.items(include_nested=True, leaves_only=True)
        }
        return _ArrayTable(columns, "tensordict")
    if isinstance(source, Mapping):
        columns: dict[Name, Any] = {}

        def flatten(prefix: Name, mapping: Mapping) -> None:
            for key, value in mapping.items():
                name = (*prefix, *str(key).split("/"))
                if isinstance(value, TensorDictBase):
                    value = {
                        ".".join(k) if isinstance(k, tuple) else k: v
                        for k, v in value.items(include_nested=True, leaves_only=True)
                    }
                if isinstance(value, Mapping):
                    flatten(name, value)
                else:
                    columns[name] = value

        flatten((), source)
        return _ArrayTable(columns, "arrays")
    if _is_dataframe(source):
        return _DataFrameTable(source)
    if isinstance(source, (str, os.PathLike)):
        path = Path(source).expanduser()
        if not path.is_file():
            raise DatasetNotFoundError(f"No log file at {path}")
        fmt = (file_format or path.suffix.lstrip(".")).lower()
        if fmt in ("parquet", "pq"):
            return _ParquetTable(path)
        if fmt in ("csv", "txt"):
            return _CsvTable(path, chunk_size)
        if fmt in ("hdf5", "h5", "hdf"):
            return _Hdf5Table(path)
        raise ValueError(
            f"Cannot tell the format of {path}; pass file_format='parquet', 'csv' or 'hdf5'"
        )
    raise TypeError(
        "from_logged reads a mapping of arrays, a TensorDict, a pandas DataFrame or a path to a "
        f"Parquet, CSV or HDF5 file; got {type(source).__name__}"
    )
