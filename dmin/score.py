"""Exact influence: Σ_k ⟨c_k(train), c_k(query)⟩ for every committed training sample (docs/method.md).

Stored vectors are numpy views of the memory-mapped Parquet pages (`store.pages`; vector columns are stored
uncompressed and PLAIN) and are multiplied by the query in one pass (`kernels.dot`); the per-timestep breakdown is
read again for the rows that need it (a query's top-k). A Project kept open keeps its mappings, so later queries run
at memory speed. DuckDB keeps the SQL side (metadata joins, aggregation over `results`); `sql_exact_scores` gives
the same numbers through SQL, which the tests hold equal.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pyarrow as pa

from dmin.kernels.dot import row_totals, timestep_dots_rows
from dmin.store.project import Project
from dmin.store.vectors import VectorBlock, iter_blocks


@dataclass(frozen=True)
class Scores:
    """Scores of every live sample against one query: keys (N,) sample_ids and total (N,); the per-timestep terms
    (K of them a sample) are computed for the rows asked for (`per_t_at`), as a query needs them for its top-k
    only: writing N × K float64 terms, joining and summing them cost more than a quarter of a scan at 10^6 samples."""

    keys: pa.ChunkedArray
    total: np.ndarray
    query: np.ndarray
    blocks: tuple[VectorBlock, ...]  # the scored blocks, in score order
    rows: tuple[np.ndarray, ...]  # each block's scored rows (its live ones)
    starts: np.ndarray  # the score index of each block's first row

    def top(self, k: int) -> np.ndarray:
        """Indices of the k highest totals, best first (ties broken by sample order)."""
        k = min(k, len(self.total))
        if k <= 0:
            return np.zeros(0, dtype=np.int64)
        part = np.argpartition(-self.total, k - 1)[:k]
        return part[np.lexsort((part, -self.total[part]))]

    def ids_at(self, index: np.ndarray) -> list[str]:
        """The sample_ids at these indices (only those become Python strings)."""
        return self.keys.take(pa.array(np.asarray(index, dtype=np.int64))).to_pylist()

    def per_t_at(self, index: np.ndarray) -> np.ndarray:
        """(len(index), K) float64: each timestep's term of these scores, read again from the stored rows."""
        index = np.asarray(index, dtype=np.int64)
        out = np.zeros((len(index), len(self.query)), dtype=np.float64)
        which = np.searchsorted(self.starts, index, side="right") - 1
        for b in np.unique(which):
            at = np.flatnonzero(which == b)
            block, rows = self.blocks[b], self.rows[b][index[at] - self.starts[b]]
            vecs = block.vecs if block.vecs.dtype == np.float32 else block.vecs[rows].astype(np.float32)
            out[at] = timestep_dots_rows(vecs, rows if vecs is block.vecs else np.arange(len(rows)), self.query)
        return out

    @property
    def per_t(self) -> np.ndarray:
        """(N, K) every sample's per-timestep terms (small projects and tests; a query uses `per_t_at`)."""
        return self.per_t_at(np.arange(len(self.total)))

    @property
    def ids(self) -> list[str]:
        """Every scored sample_id as a Python list (small projects and tests; `ids_at` scales)."""
        return self.keys.to_pylist()


def exact_scores(project: Project, v: str, query: np.ndarray) -> Scores:
    """Score a query (K, dim) against every live training sample of grads/v=V (forgotten ones are absent): one
    pass over the mapped pages (`kernels.dot`) writing one total per sample into one array."""
    query = np.ascontiguousarray(query, dtype=np.float32)
    blocks = tuple(iter_blocks(project, v))
    sizes = np.array([len(b.vecs) for b in blocks], dtype=np.int64)
    total = np.empty(int(sizes.sum()), dtype=np.float64)
    at = 0
    for block, size in zip(blocks, sizes, strict=True):
        vecs = block.vecs if block.vecs.dtype == np.float32 else block.vecs.astype(np.float32)  # float16: widened
        row_totals(vecs, query, total[at : at + size])
        at += size
    rows = tuple(b.live_rows() for b in blocks)
    if any(b.alive is not None for b in blocks):  # scored whole (one pass over the pages), then forgotten rows out
        total = total[np.concatenate([r + s for r, s in zip(rows, np.cumsum(sizes) - sizes, strict=True)])]
    keys = [b.keys if b.alive is None else b.keys.filter(pa.array(b.alive)) for b in blocks]
    starts = np.cumsum([0] + [len(r) for r in rows])[:-1]
    return Scores(pa.chunked_array(keys, pa.string()), total, query, blocks, rows, np.asarray(starts, np.int64))
