"""The keyed integer functions behind compression: the permutation F and the sign s (docs/method.md).

Nothing is stored. F handles *runs* of RUN = 8 consecutive entries with one hash: entry i = 8q + r (run q, offset
r) goes to F(i) = r · D/8 + G(q), where G is a keyed bijection of [0, D/8) built from three invertible steps modulo
2^(L-3) — add a key, xor-shift right, multiply by an odd key — repeated like a hash finalizer (murmur3's fmix):
multiplication carries low bits up, the shifts carry high bits down, so the top bits (which choose the bucket)
depend on every input bit. Each step is a bijection, hence so are G and F (the tests check F exhaustively for
D ≤ 2^20). The sign of position p is bit (54 + p's top three bits) of a 62-bit finalizer S of p's low bits, i.e.
of G(q): still a keyed function of the position, so it does not depend on how a gradient is chunked.

Why runs: one hash pair per 8 entries instead of per entry made the CPU kernel ~5× faster. Why r · D/8 and not
G(q) · 8 + r (this module's first design): the 8 neighbours of a run must land in 8 *different* buckets. Gradient
entries are large together (a conv kernel, a bias), and neighbours that always share a bucket add a cross term
Σ s_i s_j g_i h_j that no v can shrink: on the digits model it put an error floor of ~0.24 on compressed inner
products at every v up to 65536 (`tests/test_compress.py` now checks concentrated vectors). With offsets in
different eighths, two entries share a bucket with probability ≈ 1/v, as for a per-entry hash (never, within a run).
dmin.json names the compressor (`store.identity.COMPRESSOR`), so vectors of the two designs are never compared.

The same arithmetic is written three times — plain torch here (the reference, any device), numba for the CPU and
Triton for CUDA (dmin.kernels) — and tests hold the fast ones equal to this one. All values stay below 2^62, so
int64 and uint64 arithmetic agree: products wrap modulo 2^64 and masking keeps the low bits exact.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

MASK62 = (1 << 62) - 1
SIGN_SHIFTS = (31, 29, 32)
RUN_BITS = 3
SIGN_BITS_AT = 54  # signs of a run's 8 entries: bits 54..61 of S(run)


def _splitmix64(state: int) -> tuple[int, int]:
    """One step of splitmix64 on Python ints: (new_state, output)."""
    state = (state + 0x9E3779B97F4A7C15) & 0xFFFFFFFFFFFFFFFF
    z = state
    z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & 0xFFFFFFFFFFFFFFFF
    z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & 0xFFFFFFFFFFFFFFFF
    return state, z ^ (z >> 31)


@dataclass(frozen=True)
class HashKeys:
    """All integers that define F and s for one (seed, D). Derived, never stored."""

    run_bits: int
    L: int
    mask: int
    add: int
    m1: int
    m2: int
    r1: int
    r2: int
    r3: int
    sadd: int
    sm1: int
    sm2: int


def hash_keys(seed: int, log2_d: int) -> HashKeys:
    """Keys for the permutation of [0, 2^log2_d) and the sign function, from a seed."""
    run_bits = min(RUN_BITS, log2_d)
    mask = (1 << (log2_d - run_bits)) - 1
    state = (seed * 0x632BE59BD9B4E019 + log2_d) & 0xFFFFFFFFFFFFFFFF
    words = []
    for _ in range(6):
        state, out = _splitmix64(state)
        words.append(out)
    L = log2_d - run_bits  # G permutes runs
    return HashKeys(
        run_bits=run_bits,
        L=log2_d,
        mask=mask,
        add=words[0] & mask,
        m1=(words[1] | 1) & mask,
        m2=(words[2] | 1) & mask,
        r1=max(1, (L + 1) // 2),
        r2=max(1, (L + 2) // 3),
        r3=max(1, (L + 1) // 2),
        sadd=words[3] & MASK62,
        sm1=(words[4] | 1) & MASK62,
        sm2=(words[5] | 1) & MASK62,
    )


def permute_runs(r: torch.Tensor, k: HashKeys) -> torch.Tensor:
    """G(r): the keyed bijection of run indices [0, D >> run_bits)."""
    x = (r + k.add) & k.mask
    x = x ^ (x >> k.r1)
    x = (x * k.m1) & k.mask
    x = x ^ (x >> k.r2)
    x = (x * k.m2) & k.mask
    return x ^ (x >> k.r3)


def run_signs(q: torch.Tensor, k: HashKeys) -> torch.Tensor:
    """S(q): a 62-bit hash of a position run q whose bits 54..61 are the signs of its 8 entries."""
    a, b, c = SIGN_SHIFTS
    y = (q + k.sadd) & MASK62
    y = y ^ (y >> a)
    y = (y * k.sm1) & MASK62
    y = y ^ (y >> b)
    y = (y * k.sm2) & MASK62
    return y ^ (y >> c)


def permute(i: torch.Tensor, k: HashKeys) -> torch.Tensor:
    """F(i) = (i mod 8) · D/8 + G(i >> 3) for an int64 tensor of indices in [0, D)."""
    low = (1 << k.run_bits) - 1
    return ((i & low) << (k.L - k.run_bits)) | permute_runs(i >> k.run_bits, k)


def sign_bit(p: torch.Tensor, k: HashKeys) -> torch.Tensor:
    """1 where s(p) = -1, 0 where s(p) = +1, for an int64 tensor of positions."""
    return (run_signs(p & k.mask, k) >> (SIGN_BITS_AT + (p >> (k.L - k.run_bits)))) & 1
