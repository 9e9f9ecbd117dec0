"""Triton kernel for CUDA: the same fused F, s and group-sum as kernels/cpu.py, with float64 atomics on the buckets;
each position's bucket and sign are computed once and every row's entry is added there (one vector is one row).

Imported only when a CUDA tensor is compressed and Triton is installed; otherwise the plain-torch reference runs.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from dmin.hashing import MASK62, SIGN_BITS_AT, SIGN_SHIFTS, HashKeys

BLOCK = 2048


@triton.jit(do_not_specialize=["rows", "numel", "v", "offset", "mask", "add", "m1", "m2", "sadd", "sm1", "sm2", "m62"])
def _scatter_rows_kernel(
    g_ptr,
    acc_ptr,
    sq_ptr,
    rows,
    numel,
    v,
    offset,
    mask,
    add,
    m1,
    m2,
    sadd,
    sm1,
    sm2,
    m62,
    R1: tl.constexpr,
    R2: tl.constexpr,
    R3: tl.constexpr,
    SA: tl.constexpr,
    SB: tl.constexpr,
    SC: tl.constexpr,
    SHIFT: tl.constexpr,
    SBIT: tl.constexpr,
    LR: tl.constexpr,
    BLOCK: tl.constexpr,
):  # pragma: no cover
    # Scalars arrive as i32, u32 or i64 depending on their size: widen all of them first.
    numel = numel.to(tl.int64)
    v = v.to(tl.int64)
    offset = offset.to(tl.int64)
    mask = mask.to(tl.int64)
    add = add.to(tl.int64)
    m1 = m1.to(tl.int64)
    m2 = m2.to(tl.int64)
    sadd = sadd.to(tl.int64)
    sm1 = sm1.to(tl.int64)
    sm2 = sm2.to(tl.int64)
    m62 = m62.to(tl.int64)
    pid = tl.program_id(0).to(tl.int64)
    loc = pid * BLOCK + tl.arange(0, BLOCK).to(tl.int64)
    valid = loc < numel
    i = loc + offset
    x = ((i >> 3) + add) & mask
    x = x ^ (x >> R1)
    x = (x * m1) & mask
    x = x ^ (x >> R2)
    x = (x * m2) & mask
    x = x ^ (x >> R3)
    y = (x + sadd) & m62
    y = y ^ (y >> SA)
    y = (y * sm1) & m62
    y = y ^ (y >> SB)
    y = (y * sm2) & m62
    y = y ^ (y >> SC)
    low = i & 7
    bucket = ((low << LR) | x) >> SHIFT
    neg = ((y >> (SBIT + low)) & 1) == 1
    for r in range(0, rows):
        g = tl.load(g_ptr + r * numel + loc, mask=valid, other=0.0).to(tl.float64)
        tl.atomic_add(acc_ptr + r * v + bucket, tl.where(neg, -g, g), mask=valid, sem="relaxed")
        tl.atomic_add(sq_ptr + r, tl.sum(g * g, axis=0), sem="relaxed")


def scatter_add_rows(
    acc: torch.Tensor, sq: torch.Tensor, g: torch.Tensor, offset: int, k: HashKeys, shift: int
) -> None:
    """For each row r of g (rows × m): acc[r, F(i) >> shift] += s(F(i)) · g[r, i - offset]; sq[r] += Σ g[r]².

    acc is (rows, v) in bucket order, sq (rows, 1). Float64 atomics: the order of additions, hence the last bits,
    varies from run to run (within float64 rounding).
    """
    rows, numel = g.shape
    if numel == 0:
        return
    sa, sb, sc = SIGN_SHIFTS
    grid = (triton.cdiv(numel, BLOCK),)
    _scatter_rows_kernel[grid](
        g,
        acc,
        sq,
        rows,
        numel,
        acc.shape[1],
        offset,
        k.mask,
        k.add,
        k.m1,
        k.m2,
        k.sadd,
        k.sm1,
        k.sm2,
        MASK62,
        R1=k.r1,
        R2=k.r2,
        R3=k.r3,
        SA=sa,
        SB=sb,
        SC=sc,
        SHIFT=shift,
        SBIT=SIGN_BITS_AT,
        LR=k.L - k.run_bits,
        BLOCK=BLOCK,
    )
