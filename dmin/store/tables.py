"""Every row table's Arrow form, built from its schema (`store.schema`) in one place: samples, grads (and query
grads), failures, queries, results, tombstones and index labels. Writers (collect, query, forget, merge, index)
hand rows here; what a file holds is never assembled anywhere else."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import numpy as np
import pyarrow as pa

from dmin.store.schema import FAILURES, QUERIES, RESULTS, SAMPLES_BASE, TOMBSTONES, grads_schema, vec_type


@dataclass
class SampleBatch:
    """Samples with their gradients for the collected v's, ready to commit together (all K timesteps or nothing)."""

    sample_ids: list[str]
    sources: list[str]
    captions: list[str | None]
    labels: list[int | None]
    extra: dict[str, list[Any]]
    timesteps: Sequence[float]
    vecs: dict[str, np.ndarray]  # v -> (B, K, dim) float32
    norms: np.ndarray  # (B, K) raw gradient norms
    losses: np.ndarray  # (B, K)

    def __len__(self) -> int:
        return len(self.sample_ids)


def samples_table(batch: SampleBatch, keep: list[int], lo: int) -> pa.Table:
    """The samples rows of `batch[keep]`, row ids from lo on; metadata columns as strings."""
    samples = {
        "sample_id": pa.array([batch.sample_ids[i] for i in keep], pa.string()),
        "row_id": pa.array(np.arange(lo, lo + len(keep), dtype=np.int64), pa.int64()),
        "source": pa.array([batch.sources[i] for i in keep], pa.string()),
        "caption": pa.array([batch.captions[i] for i in keep], pa.string()),
        "label": pa.array([batch.labels[i] for i in keep], pa.int64()),
    }
    fields = list(SAMPLES_BASE)
    for name, values in sorted(batch.extra.items()):
        samples[name] = pa.array([None if values[i] is None else str(values[i]) for i in keep], pa.string())
        fields.append(pa.field(name, pa.string()))
    return pa.table(samples, schema=pa.schema(fields))


def grads_table(
    key: str,
    ids: Sequence[str],
    timesteps: Sequence[float],
    vec: np.ndarray,
    norms: np.ndarray,
    losses: np.ndarray,
    dtype: str,
) -> pa.Table:
    """Rows ordered (key, t_idx), all K timesteps of a key consecutive: readers rely on this order."""
    B, K, dim = vec.shape
    np_dtype = np.float16 if dtype == "float16" else np.float32
    flat = pa.array(np.ascontiguousarray(vec, dtype=np_dtype).reshape(-1))
    return pa.table(
        {
            key: pa.array(np.repeat(np.asarray(ids, dtype=object), K), pa.string()),
            "t_idx": pa.array(np.tile(np.arange(K, dtype=np.int32), B)),
            "timestep": pa.array(np.tile(np.asarray(timesteps, dtype=np.float64), B)),
            "vec": pa.FixedSizeListArray.from_arrays(flat, type=vec_type(dim, dtype)),
            "norm": pa.array(np.asarray(norms, dtype=np.float64).reshape(-1)),
            "loss": pa.array(np.asarray(losses, dtype=np.float64).reshape(-1)),
        },
        schema=grads_schema(dim, dtype, key),
    )


def failures_table(failures: Sequence[tuple[str, str]], at: datetime) -> pa.Table:
    """(source, reason) rows of samples that could not be used."""
    return pa.table(
        {
            "source": [s for s, _ in failures],
            "reason": [r for _, r in failures],
            "created_at": pa.array([at] * len(failures), FAILURES.field("created_at").type),
        },
        schema=FAILURES,
    )


def queries_table(
    query_id: str, image: str | None, prompt: str | None, label: int | None, seed: int | None, at: datetime
) -> pa.Table:
    """One query's row."""
    return pa.table(
        {
            "query_id": [query_id],
            "image": [image],
            "prompt": [prompt],
            "label": pa.array([label], pa.int64()),
            "seed": pa.array([seed], pa.int64()),
            "created_at": pa.array([at], QUERIES.field("created_at").type),
        },
        schema=QUERIES,
    )


def results_table(query_id: str, results: Sequence[dict[str, Any]], method: str, v: str, at: datetime) -> pa.Table:
    """A query's top-k: rank, sample_id, score and per-timestep scores of each result."""
    n = len(results)
    return pa.table(
        {
            "query_id": [query_id] * n,
            "sample_id": [r["sample_id"] for r in results],
            "rank": pa.array([r["rank"] for r in results], pa.int32()),
            "score": pa.array([r["score"] for r in results], pa.float64()),
            "scores": pa.array([r["scores"] for r in results], pa.list_(pa.float64())),
            "method": [method] * n,
            "v": [v] * n,
            "created_at": pa.array([at] * n, RESULTS.field("created_at").type),
        },
        schema=RESULTS,
    )


def tombstones_table(sample_ids: Iterable[str]) -> pa.Table:
    """Forgotten sample_ids, sorted."""
    return pa.table({"sample_id": pa.array(sorted(sample_ids), pa.string())}, schema=TOMBSTONES)


def labels_table(row_ids: np.ndarray, sample_ids: pa.Array) -> pa.Table:
    """An index build's labels: the row id hnswlib answers with, and its sample_id."""
    return pa.table({"row_id": pa.array(row_ids, pa.int64()), "sample_id": sample_ids.cast(pa.string())})
