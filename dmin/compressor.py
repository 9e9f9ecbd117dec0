"""The zero-storage gradient compressor (docs/method.md): pad, permute, random sign, contiguous group-sum.

    c_v[j] = Σ_{i<n, F(i) >> (L - log2 v) = j} s(F(i)) · g_i          (D = 2^L ≥ n)

F and s are pure integer functions of (seed, D, i) (dmin.hashing), so nothing is stored and any chunk of the
gradient can be compressed anywhere, in any order: `Compressor.stream` accumulates parameter gradients as backward
produces them, and `Compressor.stream_batch` does so for R per-example gradients at once (one (R, …) chunk per
parameter), hashing each position once for all R. Because buckets are contiguous blocks of the permuted vector,
halving v is a pairwise sum (`fold`): one pass at the largest v gives every smaller v exactly.

Backends: a fused numba kernel on the CPU, a Triton kernel on CUDA, and the plain-torch reference on any device
(`backend="torch"`), which the tests hold the others to. Buckets accumulate in float64; `finish` returns float32.
"""

from __future__ import annotations

import functools
from typing import Literal

import torch

from dmin.errors import CompressionError
from dmin.hashing import HashKeys, hash_keys, permute, sign_bit

Backend = Literal["auto", "torch"]
_FLOATS = (torch.float16, torch.bfloat16, torch.float32, torch.float64)
_REF_BLOCK = 1 << 20


def _is_pow2(x: int) -> bool:
    return x > 0 and (x & (x - 1)) == 0


def _log2(x: int) -> int:
    return x.bit_length() - 1


@functools.cache
def _cpu_kernel():  # type: ignore[no-untyped-def]
    try:
        from dmin.kernels import cpu
    except ImportError:  # numba missing or broken: the reference path still works
        return None
    return cpu


@functools.cache
def _cuda_kernel():  # type: ignore[no-untyped-def]
    try:
        from dmin.kernels import cuda
    except ImportError:
        return None
    return cuda


class Compressor:
    """Compresses n-vectors to v buckets for any power of two 16 ≤ v ≤ D, with F and s derived from `seed`."""

    def __init__(self, n: int, seed: int = 0) -> None:
        if not isinstance(n, int) or isinstance(n, bool) or n < 1:
            raise CompressionError(f"n must be a positive integer (the number of gradient entries), got {n!r}")
        if not isinstance(seed, int) or seed < 0:
            raise CompressionError(f"seed must be a non-negative integer, got {seed!r}")
        self.n = n
        self.seed = seed
        self.L = max(0, (n - 1).bit_length())
        self.D = 1 << self.L
        self.keys: HashKeys = hash_keys(seed, self.L)

    def __repr__(self) -> str:
        return f"Compressor(n={self.n}, seed={self.seed}, D={self.D})"

    def check_v(self, v: int) -> int:
        """Validate v (a power of two, 16 ≤ v ≤ D) and return it."""
        if isinstance(v, bool) or not isinstance(v, int) or not _is_pow2(v):
            raise CompressionError(f"v must be a power of two (16, 32, …, {self.D}), got {v!r}")
        if v < 16:
            raise CompressionError(f"v must be at least 16, got {v}")
        if v > self.D:
            raise CompressionError(
                f"v={v} exceeds D={self.D} (the padded gradient length for n={self.n}); "
                f"use v ≤ {self.D}, or v=full to keep the gradient uncompressed"
            )
        return v

    def positions(self, idx: torch.Tensor) -> torch.Tensor:
        """F(i) for int64 indices: where each gradient entry lands in the permuted vector."""
        return permute(idx.to(torch.int64), self.keys)

    def signs(self, pos: torch.Tensor) -> torch.Tensor:
        """s(p) ∈ {+1, -1} (int64) for positions p."""
        return 1 - 2 * sign_bit(pos.to(torch.int64), self.keys)

    def stream(self, v: int, device: torch.device | str | None = None, backend: Backend = "auto") -> Accumulator:
        """An accumulator for one vector of length n fed chunk by chunk; memory O(v + chunk)."""
        return Accumulator(self, self.check_v(v), torch.device(device or "cpu"), backend)

    def stream_batch(
        self, v: int, rows: int, device: torch.device | str | None = None, backend: Backend = "auto"
    ) -> BatchAccumulator:
        """Accumulators for `rows` vectors of length n fed together, chunk by chunk: each chunk position is hashed
        once for all rows. Row r's result equals `stream(v)` fed row r's chunks (see `BatchAccumulator`)."""
        if isinstance(rows, bool) or not isinstance(rows, int) or rows < 1:
            raise CompressionError(f"rows must be a positive integer (gradients per batch), got {rows!r}")
        return BatchAccumulator(self, self.check_v(v), rows, torch.device(device or "cpu"), backend)

    def compress(self, g: torch.Tensor, v: int, backend: Backend = "auto") -> torch.Tensor:
        """c_v(g) for a whole gradient g of shape (n,), or for each row of g (rows, n) at once (rows split over
        threads). Does not normalize (the caller divides by ‖g‖)."""
        _check_float(g)
        if g.dim() not in (1, 2) or g.shape[-1] != self.n:
            raise CompressionError(
                f"compress expects a tensor of shape ({self.n},) or (rows, {self.n}), got shape {tuple(g.shape)}"
            )
        if g.dim() == 2 and len(g) == 0:
            return torch.zeros((0, self.check_v(v)))
        acc = self.stream_batch(v, len(g) if g.dim() == 2 else 1, device=g.device, backend=backend)
        acc.add(0, g.reshape(-1, self.n))
        return acc.finish().reshape(*g.shape[:-1], v)


class Accumulator:
    """Running c_v of one vector fed chunk by chunk, plus its sum of squares (the norm comes from the same pass).

    One row of a `BatchAccumulator`: the same kernel, so a vector's buckets are bit-identical whether it is
    compressed alone or as a row of any batch, on any number of threads. (A separate single-row kernel, which split
    a long chunk over two threads, measured 2–2.6× slower than one row of the batched kernel on one thread.)
    """

    def __init__(self, comp: Compressor, v: int, device: torch.device, backend: Backend) -> None:
        self.comp = comp
        self.v = v
        self._row = BatchAccumulator(comp, v, 1, device, backend)

    @property
    def state_bytes(self) -> int:
        """Bytes kept between calls: the float64 buckets and the sum-of-squares lanes."""
        return self._row.state_bytes

    @property
    def sumsq(self) -> float:
        """Σ g² over every chunk added so far (‖g‖² once the whole vector is in)."""
        return float(self._row.sumsq[0])

    def add(self, offset: int, chunk: torch.Tensor) -> None:
        """Add g[offset : offset + chunk.numel()] (any shape, flattened in row-major order)."""
        _check_float(chunk)
        self._row.add(offset, chunk.reshape(1, -1))

    def finish(self, dtype: torch.dtype = torch.float32) -> torch.Tensor:
        """The compressed vector c_v (shape (v,)), as `dtype`."""
        return self._row.finish(dtype)[0]


class BatchAccumulator:
    """Running c_v of `rows` gradients fed together, plus each one's sum of squares.

    Determinism: on the CPU kernel a row is handled start to end by one thread, and each bucket receives the row's
    entries in the order they were fed, so a row's buckets are bit-identical whatever the number of rows, the thread
    count, the kernel's blocking, or how the same entries were split into `add` calls (in increasing order); they
    are the same bits as `Accumulator` (a one-row batch). Σg² is summed in 32 index-keyed lanes, as
    deterministic. On CUDA, float64 atomics make the order (hence the last bits) vary from run to run.
    """

    def __init__(self, comp: Compressor, v: int, rows: int, device: torch.device, backend: Backend) -> None:
        self.comp = comp
        self.v = v
        self.rows = rows
        self.shift = comp.L - _log2(v)
        self.device = device
        self.backend = backend
        self._cpu_params = None
        if device.type == "cpu" and backend == "auto" and (kernel := _cpu_kernel()) is not None:
            self._cpu_params = kernel.params(comp.keys, self.shift)
            lanes = kernel.SQ_LANES
        else:
            lanes = 1
        # The CPU kernel keeps buckets run-major (slot j·8 + k for bucket k·v/8 + j); others in bucket order.
        self._acc = torch.zeros(rows, v, dtype=torch.float64, device=device)
        self._sq = torch.zeros(rows, lanes, dtype=torch.float64, device=device)

    @property
    def state_bytes(self) -> int:
        """Bytes kept between calls: float64 buckets and sum-of-squares lanes of every row."""
        return (self._acc.numel() + self._sq.numel()) * 8

    @property
    def sumsq(self) -> torch.Tensor:
        """Σ g² of each row over every chunk added so far: float64, shape (rows,), on the accumulator's device."""
        sq = self._sq
        while sq.shape[1] > 1:  # a fixed pairwise order over the lanes, so the result is deterministic
            sq = sq[:, 0::2] + sq[:, 1::2]
        return sq[:, 0].clone()

    def add(self, offset: int, chunk: torch.Tensor) -> None:
        """Add entries [offset, offset + m) of every row: chunk has shape (rows, …), row r flattened row-major."""
        _check_float(chunk)
        if chunk.dim() < 1 or chunk.shape[0] != self.rows:
            raise CompressionError(
                f"chunk must have shape (rows, …) with rows = {self.rows} first, got shape {tuple(chunk.shape)}"
            )
        numel = chunk.numel() // self.rows
        if isinstance(offset, bool) or not isinstance(offset, int) or offset < 0 or offset + numel > self.comp.n:
            raise CompressionError(
                f"chunk [{offset}, {offset}+{numel}) overruns the gradient: offsets must satisfy "
                f"0 ≤ offset and offset + entries per row ≤ n = {self.comp.n}"
            )
        if numel == 0:
            return
        flat = chunk.detach().reshape(self.rows, numel)
        if flat.device != self.device:
            flat = flat.to(self.device)
        if self._cpu_params is not None:
            if flat.dtype in (torch.float16, torch.bfloat16):
                flat = flat.float()
            kernel = _cpu_kernel()
            kernel.scatter_add_rows(
                self._acc.numpy(), self._sq.numpy(), flat.contiguous().numpy(), offset, self._cpu_params
            )
            return
        if self.device.type == "cuda" and self.backend == "auto" and (cuda := _cuda_kernel()) is not None:
            cuda.scatter_add_rows(self._acc, self._sq, flat.contiguous(), offset, self.comp.keys, self.shift)
            return
        self._add_reference(offset, flat)

    def _add_reference(self, offset: int, flat: torch.Tensor) -> None:
        """The plain-torch definition, each position hashed once per block for all rows."""
        step = max(1, _REF_BLOCK // self.rows)
        for lo in range(0, flat.shape[1], step):
            part = flat[:, lo : lo + step].to(torch.float64)
            idx = torch.arange(offset + lo, offset + lo + part.shape[1], device=self.device, dtype=torch.int64)
            pos = permute(idx, self.comp.keys)
            neg = sign_bit(pos, self.comp.keys).bool()
            self._acc.index_add_(1, pos >> self.shift, torch.where(neg, -part, part))
            self._sq[:, 0] += (part * part).sum(1)

    def finish(self, dtype: torch.dtype = torch.float32) -> torch.Tensor:
        """The compressed vectors c_v, shape (rows, v), as `dtype`."""
        if self._cpu_params is None:
            return self._acc.to(dtype)
        return self._acc.view(self.rows, self.v // 8, 8).transpose(1, 2).reshape(self.rows, self.v).to(dtype)


def fold(c: torch.Tensor, v: int) -> torch.Tensor:
    """Exact c_v from c_{v'} on the last dimension, v' a multiple of v: c_{v/2}[j] = c_v[2j] + c_v[2j+1]."""
    have = c.shape[-1] if c.dim() else 0
    if isinstance(v, bool) or not isinstance(v, int) or not _is_pow2(v) or v < 16:
        raise CompressionError(f"v must be a power of two ≥ 16, got {v!r}")
    if not _is_pow2(have) or have % v:
        raise CompressionError(
            f"cannot fold a last dimension of {have} to v={v}: it must be a power-of-two multiple of v"
        )
    # Sum in float64: folding float32 inputs then stays within their own rounding.
    return c.reshape(*c.shape[:-1], v, have // v).sum(-1, dtype=torch.float64).to(c.dtype)


def _check_float(t: torch.Tensor) -> None:
    if not isinstance(t, torch.Tensor):
        raise CompressionError(f"expected a torch.Tensor, got {type(t).__name__}")
    if t.dtype not in _FLOATS:
        raise CompressionError(f"gradients must be float16, bfloat16, float32 or float64, got {t.dtype}")
