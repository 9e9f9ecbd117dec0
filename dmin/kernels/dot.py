"""numba kernel: per-timestep inner products of stored vectors with a query, straight from mapped Parquet pages.

The values of a Parquet page start wherever the page header and levels end, so a mapped float32 view is often not
4-byte aligned; numpy then refuses BLAS and falls back to a loop ~5× slower. This kernel reads unaligned memory at
full speed (x86 and ARM load unaligned floats natively) and splits rows across threads. It sums runs of 256 values
in float32 (eight SIMD lanes under fastmath; the scan is then memory-bound, as numpy's BLAS scan of the same vectors
in memory is) and the runs in float64, so the relative error stays ~1e-7 however long the vectors are.
"""

from __future__ import annotations

import numpy as np
from numba import njit, prange

_RUN = 256  # values summed in float32 before the float64 total: relative error ~1e-7 per run


@njit(cache=True, nogil=True, parallel=True, fastmath=True)
def _row_dots(vecs, rows, query, out):  # pragma: no cover - compiled
    _, K, dim = vecs.shape
    full = dim // _RUN
    for r in prange(rows.shape[0]):
        i = rows[r]
        for k in range(K):
            total = 0.0
            for b in range(full):  # whole runs: a fixed trip count, which LLVM unrolls and vectorizes (a run
                base = b * _RUN  # bounded by min(…, dim) kept it scalar, 2–3× slower than the memory allows)
                acc = np.float32(0.0)  # eight float32 lanes (fastmath): twice float64's, and the run stays short
                for j in range(_RUN):
                    acc += vecs[i, k, base + j] * query[k, base + j]
                total += np.float64(acc)
            acc = np.float32(0.0)
            for j in range(full * _RUN, dim):  # the tail: a run stops at the vector's end
                acc += vecs[i, k, j] * query[k, j]
            out[r, k] = total + np.float64(acc)


@njit(cache=True, nogil=True, parallel=True, fastmath=True)
def _row_totals(vecs, query, out):  # pragma: no cover - compiled
    n, K, dim = vecs.shape
    full = dim // _RUN
    for i in prange(n):
        grand = 0.0
        for k in range(K):  # the sums of _row_dots, added over k as they come
            total = 0.0
            for b in range(full):
                base = b * _RUN
                acc = np.float32(0.0)
                for j in range(_RUN):
                    acc += vecs[i, k, base + j] * query[k, base + j]
                total += np.float64(acc)
            acc = np.float32(0.0)
            for j in range(full * _RUN, dim):
                acc += vecs[i, k, j] * query[k, j]
            grand += total + np.float64(acc)
        out[i] = grand


def row_totals(vecs: np.ndarray, query: np.ndarray, out: np.ndarray) -> None:
    """out[n] = Σ_k Σ_j vecs[n, k, j] · query[k, j] for (N, K, dim) float32 vecs: a whole scan writes one float64
    per sample, not K (the per-timestep terms of the few best are recomputed by `timestep_dots_rows`)."""
    if len(vecs):
        _row_totals(vecs, np.ascontiguousarray(query, dtype=np.float32), out)


def timestep_dots(vecs: np.ndarray, query: np.ndarray) -> np.ndarray:
    """(N, K, dim) float32 × (K, dim) → (N, K) float64: Σ_j vecs[n, k, j] · query[k, j]."""
    return timestep_dots_rows(vecs, np.arange(len(vecs)), query)


# The same loops on one thread: starting the thread pool costs ~80 µs, 10–30× the work of a few rows, and a kNN
# re-rank makes one such call per file that holds a candidate (about 20 of them at 10^6 samples).
_row_dots_serial = njit(cache=True, nogil=True, fastmath=True)(_row_dots.py_func)
_SERIAL_VALUES = 1 << 18  # values below which one thread beats the pool


def timestep_dots_rows(vecs: np.ndarray, rows: np.ndarray, query: np.ndarray) -> np.ndarray:
    """Like timestep_dots over vecs[rows] only, reading the rows in place (no gathered copy): kNN re-ranking."""
    out = np.empty((len(rows), vecs.shape[1]), dtype=np.float64)
    if len(rows):
        kernel = _row_dots_serial if len(rows) * vecs.shape[1] * vecs.shape[2] < _SERIAL_VALUES else _row_dots
        kernel(vecs, np.ascontiguousarray(rows, dtype=np.int64), np.ascontiguousarray(query, dtype=np.float32), out)
    return out


@njit(cache=True, nogil=True, parallel=True)
def _nonfinite_rows(bits, exponent, out):  # pragma: no cover - compiled
    for i in prange(bits.shape[0]):
        bad = False
        for j in range(bits.shape[1]):
            bad |= (bits[i, j] & exponent) == exponent  # all exponent bits set: NaN or ±inf
        out[i] = bad


def count_nonfinite_rows(vecs: np.ndarray) -> int:
    """How many rows of a (N, dim) float32 or float16 array (a mapped view, aligned or not) hold NaN or infinity.
    Judged on the bits (exponent all ones): integer work the compiler vectorizes, ~2.5× a float compare per value,
    and the same code for float16 (which numba cannot load as a float)."""
    wide = vecs.dtype.itemsize == 4
    out = np.zeros(len(vecs), np.uint8)
    if len(vecs):
        bits = vecs.view(np.uint32 if wide else np.uint16)
        _nonfinite_rows(bits, np.uint32(0x7F800000) if wide else np.uint16(0x7C00), out)
    return int(out.sum())
