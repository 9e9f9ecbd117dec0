"""Reading stored vectors as numpy blocks, zero-copy from the memory-mapped Parquet pages where the format allows.

Files are written with rows ordered (key, t_idx) and all K timesteps of a key consecutive, so a file's `vec` column
reshapes to (rows / K, K, v) without sorting.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from dmin.errors import IntegrityError
from dmin.store.project import Project


@dataclass(frozen=True)
class VectorBlock:
    """The vectors of one committed file: keys (N,) and vecs (N, K, dim) float32 (or float16 as stored)."""

    keys: list[str]
    vecs: np.ndarray
    path: Path


def vec_values(column: pa.ChunkedArray | pa.Array) -> np.ndarray:
    """The flat float values of a fixed_size_list column, without a copy when it is one chunk."""
    arr = column.combine_chunks() if isinstance(column, pa.ChunkedArray) else column
    return arr.values.to_numpy(zero_copy_only=False)


def read_block(path: Path, key: str, K: int, with_keys: bool = True) -> VectorBlock:
    columns = [key, "vec"] if with_keys else ["vec"]
    try:
        table = pq.read_table(path, columns=columns, memory_map=True)
    except (OSError, pa.ArrowException) as exc:
        raise IntegrityError(f"{path}: unreadable Parquet ({exc}); run `dmin verify`") from exc
    dim = table.schema.field("vec").type.list_size
    flat = vec_values(table.column("vec"))
    if len(table) % K:
        raise IntegrityError(f"{path}: {len(table)} rows is not a multiple of K={K}; run `dmin verify`")
    keys = table.column(key).to_pylist()[::K] if with_keys else []
    return VectorBlock(keys, flat.reshape(len(table) // K, K, dim), path)


def iter_blocks(project: Project, v: str, table: str = "grads", key: str = "sample_id") -> Iterator[VectorBlock]:
    """The committed vector files of a table at v, each checked against its manifest checksum before it is read."""
    for ref in project.live_files(table, v):
        yield read_block(project.checked(ref), key, project.identity.K)
