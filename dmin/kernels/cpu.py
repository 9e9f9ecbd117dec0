"""numba kernel: F, s and the group-sum fused in one pass over a gradient chunk, no temporaries.

Works run by run (8 consecutive entries share one G and one S hash, dmin.hashing): entry r of a run lands at
r · D/8 + G(run), so the run's 8 entries go to 8 different buckets, each signed by a row of a constant 256×8 table
indexed by the run's sign byte. The float64 buckets (v·8 bytes) stay in cache. Large chunks are split across
threads, each with private buckets summed at the end in a fixed order.
"""

from __future__ import annotations

import numba
import numpy as np
from numba import njit, prange

from dmin.hashing import MASK62, SIGN_BITS_AT, SIGN_SHIFTS, HashKeys

_PARALLEL_MIN = 1 << 18
_U = np.uint64
# Row b holds the signs (+1 / -1) that the 8 bits of b stand for: a constant, the same for every key.
SIGN_TABLE = np.array([[1.0 - 2.0 * ((b >> k) & 1) for k in range(8)] for b in range(256)], dtype=np.float64)


@njit(cache=True, nogil=True)
def _scatter_range(g, lo, hi, offset, acc, p, table):  # pragma: no cover
    mask, add, m1, m2, r1, r2, r3 = p[0], p[1], p[2], p[3], p[4], p[5], p[6]
    sadd, sm1, sm2, m62, sa, sb, sc, shift, sbit = p[7], p[8], p[9], p[10], p[11], p[12], p[13], p[14], p[15]
    lr = p[16]  # log2(D/8): where a run's offset goes in a position
    sq = 0.0
    t = lo
    while t < hi:
        i = offset + t
        k0 = i & 7
        cnt = min(8 - k0, hi - t)
        x = (_U(i >> 3) + add) & mask
        x ^= x >> r1
        x = (x * m1) & mask
        x ^= x >> r2
        x = (x * m2) & mask
        x ^= x >> r3
        y = (x + sadd) & m62
        y ^= y >> sa
        y = (y * sm1) & m62
        y ^= y >> sb
        y = (y * sm2) & m62
        y ^= y >> sc
        row = table[np.int64((y >> sbit) & _U(255))]
        for k in range(cnt):
            val = np.float64(g[t + k])
            sq += val * val
            acc[((_U(k0 + k) << lr) | x) >> shift] += val * row[k0 + k]
        t += cnt
    return sq


@njit(cache=True, nogil=True, parallel=True)
def _scatter_parallel(g, offset, acc, p, table, nt):  # pragma: no cover
    n = g.shape[0]
    step = ((n + nt - 1) // nt + 7) // 8 * 8
    priv = np.zeros((nt, acc.shape[0]))
    sq = np.zeros(nt)
    for t in prange(nt):
        lo = t * step
        hi = min(n, lo + step)
        if lo < hi:
            sq[t] = _scatter_range(g, lo, hi, offset, priv[t], p, table)
    for t in range(nt):
        acc += priv[t]
    return sq.sum()


def params(keys: HashKeys, shift: int) -> np.ndarray:
    """The kernel's integer parameters as one uint64 array (numba then sees a single, stable signature)."""
    sa, sb, sc = SIGN_SHIFTS
    return np.array(
        [
            keys.mask,
            keys.add,
            keys.m1,
            keys.m2,
            keys.r1,
            keys.r2,
            keys.r3,
            keys.sadd,
            keys.sm1,
            keys.sm2,
            MASK62,
            sa,
            sb,
            sc,
            shift,
            SIGN_BITS_AT,
            keys.L - keys.run_bits,
        ],
        dtype=np.uint64,
    )


def scatter_add(acc: np.ndarray, g: np.ndarray, offset: int, p: np.ndarray) -> float:
    """acc[F(i) >> shift] += s(F(i)) * g[i - offset] for the chunk; returns Σ g²."""
    threads = numba.get_num_threads()
    if g.shape[0] >= _PARALLEL_MIN and threads > 1:
        return float(_scatter_parallel(g, offset, acc, p, SIGN_TABLE, threads))
    return float(_scatter_range(g, 0, g.shape[0], offset, acc, p, SIGN_TABLE))
