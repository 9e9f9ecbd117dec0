"""numba kernel: F, s and the group-sum fused in one pass over a chunk of R gradients, no temporaries.

Works run by run (8 consecutive entries share one G and one S hash, dmin.hashing): entry r of a run lands at
r · D/8 + G(run), so the run's 8 entries go to 8 different buckets, each signed by a row of a constant 256×8 table
indexed by the run's sign byte. A block of runs is hashed once, then added to every row; rows are split across
threads, each row handled start to end by one thread. The float64 buckets (v·8 bytes a row) stay in cache.
"""

from __future__ import annotations

import numba
import numpy as np
from llvmlite import ir
from numba import njit, prange, types
from numba.extending import intrinsic

from dmin.hashing import MASK62, SIGN_BITS_AT, SIGN_SHIFTS, HashKeys

_U = np.uint64
# Row b holds the signs (+1 / -1) that the 8 bits of b stand for: a constant, the same for every key.
SIGN_TABLE = np.array([[1.0 - 2.0 * ((b >> k) & 1) for k in range(8)] for b in range(256)], dtype=np.float64)


@njit(cache=True, nogil=True, inline="always")
def _run_hash(q, p):  # pragma: no cover
    """(G(q), sign byte) of run q: entry k of the run goes to position k·D/8 + G(q), signed by bit k of the byte."""
    mask, add, m1, m2, r1, r2, r3 = p[0], p[1], p[2], p[3], p[4], p[5], p[6]
    sadd, sm1, sm2, m62, sa, sb, sc, sbit = p[7], p[8], p[9], p[10], p[11], p[12], p[13], p[15]
    x = (_U(q) + add) & mask
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
    return x, (y >> sbit) & _U(255)


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


# Buckets are kept *run-major*: bucket k·v/8 + j (run offset k, base j = G(q) >> shift) lives at j·8 + k, so the 8
# entries of a run update one 64-byte line with one 8-wide vector add instead of 8 scattered scalars. `finish`
# transposes back. Each bucket receives its entries in index order, so a row's buckets do not depend on the blocking,
# the thread count or the other rows. Σg² is kept in 32 lanes,
# lane (q mod 4)·8 + k for entry 8q + k: a function of the index only (never of blocks, rows or threads), summed in a
# fixed order by the caller; a single running sum would be a 3-cycle dependency per entry.

SQ_LANES = 32
BLOCK_RUNS = 4096  # runs hashed at a time, then scattered for every row: 32 KiB of codes, cache-resident
_SERIAL_MAX = 1 << 16  # below this many entries (all rows) a parallel launch costs more than it saves
_FLAT_SIGNS = np.ascontiguousarray(SIGN_TABLE.reshape(-1))


def _vec_ptr(context, builder, arrty, arr, idx):  # type: ignore[no-untyped-def]
    """Pointer to 8 consecutive elements of a contiguous 1-D array, starting at idx."""
    data = context.make_array(arrty)(context, builder, arr).data
    elem = context.get_value_type(arrty.dtype)
    return builder.bitcast(builder.gep(data, [idx]), ir.VectorType(elem, 8).as_pointer())


@intrinsic
def _add_run(typingctx, acc, a, g, t, signs, s, sq, lane):  # type: ignore[no-untyped-def]
    """acc[a:a+8] += g[t:t+8] · signs[s:s+8] and sq[lane:lane+8] += g[t:t+8]², as 8-wide float64 vectors.

    The same IEEE operations, lane by lane, as the scalar loop (no fused multiply-add, no reassociation), but one
    vector each: numba leaves LLVM's SLP vectorizer off, so written as scalars this stays 8× scalar.
    """
    sig = types.void(acc, a, g, t, signs, s, sq, lane)

    def codegen(context, builder, signature, args):  # type: ignore[no-untyped-def]
        acc_v, a_v, g_v, t_v, s_arr, s_v, sq_v, lane_v = args
        tys = signature.args
        x = builder.load(_vec_ptr(context, builder, tys[2], g_v, t_v), align=4)
        if tys[2].dtype != types.float64:
            x = builder.fpext(x, ir.VectorType(ir.DoubleType(), 8))
        w = builder.load(_vec_ptr(context, builder, tys[4], s_arr, s_v), align=8)
        pa = _vec_ptr(context, builder, tys[0], acc_v, a_v)
        builder.store(builder.fadd(builder.load(pa, align=8), builder.fmul(x, w)), pa, align=8)
        ps = _vec_ptr(context, builder, tys[6], sq_v, lane_v)
        builder.store(builder.fadd(builder.load(ps, align=8), builder.fmul(x, x)), ps, align=8)
        return context.get_dummy_value()

    return sig, codegen


@njit(cache=True, nogil=True)
def _edge(gr, lo, hi, offset, accr, sqr, p, signs):  # pragma: no cover
    """Entries lo..hi of one row that do not fill a whole run (a chunk's first and last), one by one."""
    for t in range(lo, hi):
        i = _U(offset + t)
        q = i >> _U(3)
        k = i & _U(7)
        base, sbyte = _run_hash(q, p)
        base >>= p[14]
        val = np.float64(gr[t])
        accr[(base << _U(3)) | k] += val * signs[(sbyte << _U(3)) | k]
        sqr[((q & _U(3)) << _U(3)) | k] += val * val


@njit(cache=True, nogil=True)
def _scatter_rows(g, r0, r1, offset, acc, sq, p, signs, block_runs):  # pragma: no cover
    """Rows r0..r1 of the chunk g (rows × m): hash a block of runs once, then add it to every row."""
    m = g.shape[1]
    head = min(m, (8 - offset % 8) % 8)
    runs = (m - head) // 8
    tail = head + 8 * runs
    q0 = (offset + head) // 8
    code = np.empty(min(block_runs, max(runs, 1)), np.uint64)
    for r in range(r0, r1):
        _edge(g[r], 0, head, offset, acc[r], sq[r], p, signs)
    for b0 in range(0, runs, block_runs):
        nb = min(block_runs, runs - b0)
        for j in range(nb):
            base, sbyte = _run_hash(q0 + b0 + j, p)
            base >>= p[14]
            code[j] = (base << _U(8)) | sbyte
        for r in range(r0, r1):
            gr, accr, sqr = g[r], acc[r], sq[r]
            t = _U(head + 8 * b0)
            q = _U(q0 + b0)
            for j in range(nb):
                c = code[j]
                a, s, lane = (c >> _U(8)) << _U(3), (c & _U(255)) << _U(3), (q & _U(3)) << _U(3)
                _add_run(accr, a, gr, t, signs, s, sqr, lane)  # type: ignore[call-arg]  # typingctx is numba's
                t += _U(8)
                q += _U(1)
    for r in range(r0, r1):
        _edge(g[r], tail, m, offset, acc[r], sq[r], p, signs)


@njit(cache=True, nogil=True, parallel=True)
def _scatter_rows_parallel(g, offset, acc, sq, p, signs, block_runs, nt):  # pragma: no cover
    rows = g.shape[0]
    for w in prange(nt):
        _scatter_rows(g, w * rows // nt, (w + 1) * rows // nt, offset, acc, sq, p, signs, block_runs)


def scatter_add_rows(
    acc: np.ndarray,
    sq: np.ndarray,
    g: np.ndarray,
    offset: int,
    p: np.ndarray,
    block_runs: int = BLOCK_RUNS,
    threads: int | None = None,
) -> None:
    """For each row r of g (rows × m): acc[r] (run-major) += c_v(g[r] at offset); sq[r] (SQ_LANES lanes) += g[r]².

    Rows are split into `threads` parts (default: numba's thread count), each row handled start to end by one
    thread, so a row's result does not depend on the thread count, on the other rows, or on block_runs.
    """
    _check_rows_layout(acc, sq, g, p, block_runs)
    threads = min(threads or numba.get_num_threads(), g.shape[0])
    if threads > 1 and g.size >= _SERIAL_MAX:
        _scatter_rows_parallel(g, offset, acc, sq, p, _FLAT_SIGNS, block_runs, threads)
    else:
        _scatter_rows(g, 0, g.shape[0], offset, acc, sq, p, _FLAT_SIGNS, block_runs)


def _check_rows_layout(acc: np.ndarray, sq: np.ndarray, g: np.ndarray, p: np.ndarray, block_runs: int) -> None:
    """The vector loads and stores are unchecked: refuse any array whose shape or layout they would overrun."""
    v = 1 << (int(p[16]) + 3 - int(p[14]))  # log2 v = log2(D/8) + 3 - shift
    rows = g.shape[0] if g.ndim == 2 else -1
    if not (
        acc.shape == (rows, v)
        and sq.shape == (rows, SQ_LANES)
        and all(a.flags.c_contiguous for a in (acc, sq, g))
        and acc.dtype == sq.dtype == np.float64
        and g.dtype in (np.float32, np.float64)
        and block_runs >= 1
    ):
        raise ValueError(
            f"scatter_add_rows needs C-contiguous float64 acc ({rows}, {v}) and sq ({rows}, {SQ_LANES}) and a 2-D "
            f"float32/float64 g, block_runs ≥ 1; got acc {acc.shape}, sq {sq.shape}, g {g.shape} {g.dtype}"
        )
