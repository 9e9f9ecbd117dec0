"""Exact influence: Σ_k ⟨c_k(train), c_k(query)⟩ for every committed training sample (docs/method.md).

Stored vectors are numpy views of the memory-mapped Parquet pages (`store.pages`; vector columns are stored
uncompressed and PLAIN) and are multiplied by the query in one pass (`kernels.dot`), the per-timestep breakdown
for free; a Project kept open keeps its mappings, so later queries run at memory speed. DuckDB keeps the SQL side
(metadata joins, aggregation over `results`); `sql_exact_scores` gives the same numbers through SQL, which the
tests hold equal.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pyarrow as pa

from dmin.kernels.dot import timestep_dots
from dmin.store.project import Project
from dmin.store.vectors import iter_blocks


@dataclass(frozen=True)
class Scores:
    """Scores of every live sample against one query: keys (N,) sample_ids, per_t (N, K), total (N,)."""

    keys: pa.ChunkedArray
    per_t: np.ndarray
    total: np.ndarray

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

    @property
    def ids(self) -> list[str]:
        """Every scored sample_id as a Python list (small projects and tests; `ids_at` scales)."""
        return self.keys.to_pylist()


def block_scores(vecs: np.ndarray, query: np.ndarray) -> np.ndarray:
    """(N, K, dim) × (K, dim) → (N, K) float64 in one pass over the block, aligned or not (`kernels.dot`)."""
    if vecs.dtype != np.float32:  # float16 storage: widen once per block
        vecs = vecs.astype(np.float32)
    return timestep_dots(vecs, query)


def exact_scores(project: Project, v: str, query: np.ndarray) -> Scores:
    """Score a query (K, dim) against every live training sample of grads/v=V (forgotten ones are absent)."""
    K = project.identity.K
    keys: list[pa.Array] = []
    parts = []
    for block in iter_blocks(project, v):
        scores = block_scores(block.vecs, query)
        if block.alive is None:
            keys.append(block.keys)
            parts.append(scores)
        else:  # scored whole (one pass over the mapped pages), then the forgotten rows dropped
            keys.append(block.keys.filter(pa.array(block.alive)))
            parts.append(scores[block.alive])
    per_t = np.concatenate(parts) if parts else np.zeros((0, K))
    return Scores(pa.chunked_array(keys, pa.string()), per_t, per_t.sum(axis=1))
