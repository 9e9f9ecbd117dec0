"""Exact influence: Σ_k ⟨c_k(train), c_k(query)⟩ for every committed training sample (DESIGN §1.7).

Stored vectors are read file by file through Arrow into numpy (memory-mapped, no decompression: vector columns are
stored uncompressed) and multiplied by the query with BLAS — one pass over the data, the per-timestep breakdown
for free. DuckDB keeps the SQL side (metadata joins, aggregation over `results`); `sql_exact_scores` gives the same
numbers through SQL, which the tests hold equal.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from dmin.store.project import Project
from dmin.store.vectors import iter_blocks


@dataclass(frozen=True)
class Scores:
    """Scores of every committed sample against one query: ids (N,), per_t (N, K), total (N,)."""

    ids: list[str]
    per_t: np.ndarray
    total: np.ndarray

    def top(self, k: int) -> np.ndarray:
        """Indices of the k highest totals, best first (ties broken by sample order)."""
        k = min(k, len(self.total))
        if k <= 0:
            return np.zeros(0, dtype=np.int64)
        part = np.argpartition(-self.total, k - 1)[:k]
        return part[np.lexsort((part, -self.total[part]))]


def block_scores(vecs: np.ndarray, query: np.ndarray) -> np.ndarray:
    """(N, K, dim) × (K, dim) → (N, K): one strided gemv per timestep, a single pass over the block."""
    N, K, _ = vecs.shape
    out = np.empty((N, K), dtype=np.float64)
    q = query.astype(vecs.dtype if vecs.dtype == np.float32 else np.float32, copy=False)
    for k in range(K):
        rows = vecs[:, k, :]
        out[:, k] = (rows if rows.dtype == np.float32 else rows.astype(np.float32)) @ q[k]
    return out


def exact_scores(project: Project, v: str, query: np.ndarray) -> Scores:
    """Score a query (K, dim) against every committed training sample of grads/v=V."""
    K = project.identity.K
    ids: list[str] = []
    parts = []
    for block in iter_blocks(project, v):
        ids.extend(block.keys)
        parts.append(block_scores(block.vecs, query))
    per_t = np.concatenate(parts) if parts else np.zeros((0, K))
    return Scores(ids, per_t, per_t.sum(axis=1))
