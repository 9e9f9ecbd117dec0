"""Running exact top-k of a few queries over vectors streamed slice by slice (the index self-test's exact half).

Each slice keeps only the rows that are among some query's top `depth` within it, so memory holds a few rows per
slice, never the data. Ties go to the row seen first, as in exact scoring.
"""

from __future__ import annotations

import numpy as np
import pyarrow as pa


class TopK:
    """The top `depth` sample_ids of each of Q queries (Q, D) by inner product over every row `add` is given."""

    def __init__(self, queries: np.ndarray, depth: int) -> None:
        self.qt = np.ascontiguousarray(np.asarray(queries, np.float32).reshape(len(queries), -1).T)
        self.depth = depth
        self.scores: list[np.ndarray] = []  # per kept slice: (n, Q) scores, -inf where a row was seeded for another
        self.ids: list[pa.Array] = []

    def seed(self, q: int, ids: list[str], scores: list[float]) -> None:
        """Rows already ranked for query q alone (an earlier build's answers): they precede every row added."""
        if ids:
            block = np.full((len(ids), self.qt.shape[1]), -np.inf, np.float32)
            block[:, q] = scores
            self.scores.append(block)
            self.ids.append(pa.array(ids, pa.string()))

    def add(self, rows: np.ndarray, ids: pa.Array, at: np.ndarray | None = None) -> None:
        """Score (n, D) rows (float32 or float16; mapped pages are read in place) and keep each query's best; row i
        is sample ids[at[i]] (ids[i] without `at`)."""
        if not len(rows):
            return
        scores = np.asarray(rows, dtype=np.float32).reshape(len(rows), -1) @ self.qt
        depth = min(self.depth, len(rows))
        pick = np.unique(np.argpartition(-scores, depth - 1, axis=0)[:depth])
        self.scores.append(scores[pick])
        self.ids.append(ids.take(pa.array(pick if at is None else at[pick])))

    def result(self) -> list[tuple[list[str], list[float]]]:
        """Each query's (sample_ids, scores), best first, at most `depth` of them."""
        Q = self.qt.shape[1]
        if not self.scores:
            return [([], []) for _ in range(Q)]
        scores = np.concatenate(self.scores)
        ids = pa.concat_arrays(self.ids)
        out = []
        for q in range(Q):
            order = np.argsort(-scores[:, q], kind="stable")[: self.depth]
            order = order[np.isfinite(scores[order, q])]
            out.append((ids.take(pa.array(order)).to_pylist(), scores[order, q].astype(float).tolist()))
        return out
