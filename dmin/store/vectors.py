"""Reading stored vectors as numpy blocks, zero-copy from the memory-mapped Parquet pages where the layout allows.

Files are written with rows ordered (key, t_idx) and all K timesteps of a key consecutive, so a file's `vec` column
reshapes to (rows / K, K, v) without sorting.
"""

from __future__ import annotations

import mmap
from collections.abc import Iterator
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from dmin.errors import IntegrityError
from dmin.store.pages import plain_pieces, plain_values
from dmin.store.paths import grads_dir, query_grads_dir
from dmin.store.project import Project

_MAX_KEPT = 8192  # mappings a Project keeps open (the kernel allows ~65k per process)


@dataclass(frozen=True)
class VectorBlock:
    """The vectors of one committed file: keys (N,) and vecs (N, K, dim) float32 (or float16 as stored)."""

    keys: pa.Array  # strings, one per sample (every K-th row's key)
    vecs: np.ndarray
    path: Path
    mapped: bool = False  # a view of the page cache (costs no memory to keep), not a decoded copy
    alive: np.ndarray | None = None  # (N,) bool when some rows are of forgotten samples; None: every row is live

    def live_rows(self) -> np.ndarray:
        """Indices of the rows of samples not forgotten."""
        return np.arange(len(self.keys)) if self.alive is None else np.flatnonzero(self.alive)


def mapping_of(arr: np.ndarray) -> mmap.mmap | None:
    """The file mapping a numpy view reads from (through its chain of bases), or None for memory of its own."""
    owner: object = arr
    while isinstance(owner, np.ndarray):
        owner = owner.base
    if isinstance(owner, memoryview):
        owner = owner.obj
    return owner if isinstance(owner, mmap.mmap) else None


def prefetch_rows(vecs: np.ndarray, rows: np.ndarray) -> None:
    """Ask the kernel to read these rows of a mapped (N, K, dim) view now, all at once (MADV_WILLNEED). On a cold
    cache a re-rank's few hundred scattered rows otherwise fault in one after another, a disk round trip each
    (11 s for the self-test's 20 queries at 10^6 samples); asked together, the disk serves them side by side.
    A view of no mapping (a decoded copy) is left alone."""
    owner = mapping_of(vecs)
    advice = getattr(mmap, "MADV_WILLNEED", None)  # absent where the platform has no madvise
    if advice is None or owner is None or not len(rows) or not vecs.flags.c_contiguous:
        return
    start = np.frombuffer(owner, np.uint8, count=1).ctypes.data
    page, size = mmap.PAGESIZE, vecs.strides[0]
    first = vecs.ctypes.data - start + np.unique(rows).astype(np.int64) * size
    try:
        for lo, hi in zip(first // page * page, first + size, strict=True):
            owner.madvise(advice, int(lo), int(hi - lo))
    except OSError:  # advice only: a kernel that refuses it costs speed, never a result
        return


def vec_values(column: pa.ChunkedArray | pa.Array) -> np.ndarray:
    """The flat float values of a fixed_size_list column, without a copy when it is one chunk."""
    arr = column.combine_chunks() if isinstance(column, pa.ChunkedArray) else column
    return arr.values.to_numpy(zero_copy_only=False)


def read_blocks(path: Path, key: str, K: int, populate: bool = False) -> list[VectorBlock]:
    """A file's vectors as views of its mapped pages when the layout allows (`pages`; `populate` maps them all at
    once, for a reader that reads every row), else decoded by Arrow.

    A file of several row groups (a merged file past 1 GiB) gives one block per group, each a view: joining them
    would copy the file into memory on every read. A sample whose K rows straddle two groups gets a small block of
    its own (a copy of K rows). Pages that split a row (v=full rows past 16 MiB) are joined into one copy."""
    try:
        fast = plain_pieces(path, "vec", populate)
        fast = fast if fast and fast[0] else None
        table = pq.read_table(path, columns=[key] if fast else [key, "vec"], memory_map=True)
    except (OSError, pa.ArrowException) as exc:
        raise IntegrityError(f"{path}: unreadable Parquet ({exc}); run `dmin verify`") from exc
    if fast is None:
        pieces, dim = [vec_values(table.column("vec"))], table.schema.field("vec").type.list_size
    else:
        pieces, dim = fast
        if len(pieces) > 1 and any(p.size % dim for p in pieces):
            pieces = [np.concatenate(pieces)]
    rows = sum(p.size for p in pieces) // dim
    if rows % K or len(table) != rows:
        raise IntegrityError(f"{path}: {len(table)} rows, {rows} vectors, K={K}: inconsistent; run `dmin verify`")
    keys = table.column(key).combine_chunks()
    keys = keys.take(pa.array(np.arange(0, rows, K))) if K > 1 else keys
    mapped = fast is not None and not pieces[0].flags.owndata
    if len(pieces) == 1:
        return [VectorBlock(keys, pieces[0].reshape(rows // K, K, dim), path, mapped)]
    blocks: list[VectorBlock] = []
    starts = np.cumsum([0] + [p.size // dim for p in pieces])  # each piece's first row
    for j, piece in enumerate(pieces):
        lo, hi = int(starts[j]), int(starts[j + 1])
        first, last = -(-lo // K), hi // K  # the samples wholly inside this piece
        if last > first:
            part = piece.reshape(-1, dim)[first * K - lo : last * K - lo]
            blocks.append(VectorBlock(keys[first:last], part.reshape(-1, K, dim), path, mapped))
        if hi % K and j + 1 < len(pieces):  # sample hi // K straddles this piece's end
            s = hi // K
            rows_of = [p.reshape(-1, dim)[max(s * K, a) - a : min(s * K + K, b) - a]
                       for p, a, b in zip(pieces, starts[:-1], starts[1:], strict=True) if a < s * K + K and b > s * K]
            blocks.append(VectorBlock(keys[s : s + 1], np.concatenate(rows_of).reshape(1, K, dim), path, False))
    return blocks


def read_rows(path: Path, keep: np.ndarray | None = None) -> pa.Table:
    """A committed file as an Arrow table (only the rows `keep` marks), its vector column copied from the mapped
    pages instead of decoded: rewriting a 1 GB grads file (compact, merges) costs a memory copy, not Arrow's list
    decoding at ~1 GB/s. Other layouts are read by Arrow."""
    schema = pq.read_schema(path)
    fast = plain_values(path, "vec", populate=True) if "vec" in schema.names else None
    if fast is None:
        table = pq.read_table(path, memory_map=True)
        return table if keep is None else table.filter(pa.array(keep))
    flat, dim = fast
    table = pq.read_table(path, columns=[n for n in schema.names if n != "vec"], memory_map=True)
    vecs = flat.reshape(-1, dim)
    if keep is not None:
        table, vecs = table.filter(pa.array(keep)), vecs[keep]
    field = schema.field("vec")
    column = pa.FixedSizeListArray.from_arrays(pa.array(np.array(vecs).reshape(-1)), type=field.type)
    return table.add_column(schema.get_field_index("vec"), field, column).cast(schema)


def iter_blocks(
    project: Project, v: str, table: str = "grads", key: str = "sample_id", keep: bool = True
) -> Iterator[VectorBlock]:
    """The committed vector files of a table at v, each checked against its manifest checksum before it is read,
    with the rows of forgotten samples marked (`VectorBlock.alive`).

    Mapped blocks are kept per Project (views of the page cache, not copies), so a process that keeps its Project
    open scores later queries at memory speed without re-reading or re-checking the files. A one-pass reader (verify's
    self-test) passes keep=False: each mapping then goes with its block, and the process never holds every touched
    page of a 10 GB table at once."""
    liveness = project.liveness() if key == "sample_id" else None
    refs = project.live_files(table, v)
    live, folder = {ref.path for ref in refs}, f"{grads_dir(v) if table == 'grads' else query_grads_dir(v)}/"
    for path in [p for p in project.blocks if p.startswith(folder) and p not in live]:
        del project.blocks[path]  # merged or compacted away: let the mapping (and the deleted file's blocks) go
    for ref in refs:
        blocks = project.blocks.get(ref.path)
        if blocks is None:
            blocks = read_blocks(project.checked(ref), key, project.identity.K, populate=not keep)
            if keep and blocks[0].mapped and len(project.blocks) < _MAX_KEPT:
                project.blocks[ref.path] = blocks
        dead = liveness.dead(ref) if liveness else frozenset()
        for block in blocks:
            if dead:
                alive = ~pc.is_in(block.keys, value_set=pa.array(sorted(dead), pa.string())).to_numpy(
                    zero_copy_only=False
                )
                if not alive.all():
                    block = replace(block, alive=alive)
            yield block
