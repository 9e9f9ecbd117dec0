"""Properties of the zero-storage compressor (docs/method.md)."""

from __future__ import annotations

import contextlib
import math
import random

import numba
import pytest
import torch

from dmin.compressor import Compressor, fold
from dmin.errors import CompressionError, DminError


@pytest.mark.parametrize("log2_d", range(4, 21))
def test_permutation_is_a_bijection_exhaustively(log2_d: int) -> None:
    for seed in (0, 7):
        comp = Compressor(1 << log2_d, seed=seed)
        pos = comp.positions(torch.arange(comp.D))
        assert pos.min() >= 0 and pos.max() < comp.D
        assert torch.unique(pos).numel() == comp.D


def test_permutation_depends_on_seed_and_moves_most_entries() -> None:
    idx = torch.arange(1 << 16)
    a = Compressor(1 << 16, seed=0).positions(idx)
    b = Compressor(1 << 16, seed=1).positions(idx)
    assert (a != b).float().mean() > 0.99
    assert (a != idx).float().mean() > 0.99


def test_signs_are_balanced_and_keyed() -> None:
    comp = Compressor(1 << 20)
    s = comp.signs(torch.arange(comp.D))
    assert set(s.unique().tolist()) == {-1, 1}
    assert abs(s.float().mean().item()) < 0.01
    other = Compressor(1 << 20, seed=3).signs(torch.arange(comp.D))
    assert abs((s * other).float().mean().item()) < 0.01


@pytest.mark.parametrize("n", [16, 1000, 100_003])
def test_fast_kernel_equals_torch_reference(n: int) -> None:
    g = torch.randn(n, generator=torch.Generator().manual_seed(n))
    comp = Compressor(n, seed=5)
    for v in {16, min(256, comp.D), comp.D}:
        fast = comp.compress(g, v)
        ref = comp.compress(g, v, backend="torch")
        torch.testing.assert_close(fast, ref, rtol=1e-6, atol=1e-6)


def test_definition_by_hand() -> None:
    """c_v[j] = Σ_{F(i) in block j} s(F(i)) g_i, written out with a Python loop."""
    n = 300
    comp = Compressor(n, seed=11)
    g = torch.randn(n, dtype=torch.float64)
    v = 32
    block = comp.D // v
    pos = comp.positions(torch.arange(n))
    sgn = comp.signs(pos)
    want = [0.0] * v
    for i in range(n):
        want[int(pos[i]) // block] += float(sgn[i]) * float(g[i])
    torch.testing.assert_close(
        comp.compress(g, v).double(), torch.tensor(want, dtype=torch.float64), rtol=1e-6, atol=1e-6
    )


@pytest.mark.parametrize(("n", "chunk"), [(5_000, 1), (100_003, 7), (100_003, 4096), (100_003, None)])
def test_stream_in_shuffled_chunks_equals_one_shot(n: int, chunk: int | None) -> None:
    g = torch.randn(n, generator=torch.Generator().manual_seed(1))
    comp = Compressor(n, seed=2)
    size = chunk or n
    pieces = [(lo, g[lo : lo + size]) for lo in range(0, n, size)]
    random.Random(0).shuffle(pieces)
    acc = comp.stream(256)
    for lo, piece in pieces:
        acc.add(lo, piece)
    one_shot = comp.compress(g, 256)
    torch.testing.assert_close(acc.finish(), one_shot, rtol=1e-6, atol=1e-6 * one_shot.abs().max().item())
    assert math.isclose(acc.sumsq, float((g.double() ** 2).sum()), rel_tol=1e-9)


def test_stream_accepts_parameter_shaped_chunks() -> None:
    w = torch.randn(40, 25)
    b = torch.randn(40)
    comp = Compressor(w.numel() + b.numel())
    acc = comp.stream(64)
    acc.add(w.numel(), b)
    acc.add(0, w)
    flat = torch.cat([w.reshape(-1), b])
    torch.testing.assert_close(acc.finish(), comp.compress(flat, 64), rtol=1e-6, atol=1e-6)


def test_fold_is_exact() -> None:
    n = 200_000
    g = torch.randn(n)
    comp = Compressor(n)
    big = comp.compress(g, 4096)
    for v in (2048, 256, 16):
        torch.testing.assert_close(fold(big, v), comp.compress(g, v), rtol=1e-6, atol=1e-5)
    pair = torch.stack([big, 2 * big])
    torch.testing.assert_close(fold(pair, 256)[1], 2 * fold(big, 256))


def test_float32_and_float64_inputs_agree() -> None:
    g64 = torch.randn(50_000, dtype=torch.float64)
    comp = Compressor(g64.numel())
    torch.testing.assert_close(comp.compress(g64.float(), 1024), comp.compress(g64, 1024), rtol=1e-5, atol=1e-5)
    half = comp.compress(g64.bfloat16(), 1024)
    assert half.dtype == torch.float32 and torch.isfinite(half).all()


def _unit(x: torch.Tensor) -> torch.Tensor:
    return x / x.norm()


def test_inner_products_within_the_oporp_bound() -> None:
    """Errors of compressed inner products of unit vectors: mean ≈ 0, std ≈ sqrt((1 + ρ²)/v)."""
    n, v, pairs = 1_000_000, 4096, 200
    gen = torch.Generator().manual_seed(0)
    comp = Compressor(n, seed=0)
    z, norms = [], []
    for k in range(pairs):
        rho = -0.9 + 1.8 * k / (pairs - 1)
        a = _unit(torch.randn(n, generator=gen, dtype=torch.float64))
        u = torch.randn(n, generator=gen, dtype=torch.float64)
        u = _unit(u - (u @ a) * a)
        b = rho * a + math.sqrt(1 - rho * rho) * u
        ca, cb = comp.compress(a, v).double(), comp.compress(b, v).double()
        z.append(((ca @ cb).item() - rho) / math.sqrt((1 + rho * rho) / v))
        norms.append((ca @ ca).item())
    zt = torch.tensor(z)
    assert abs(zt.mean().item()) < 3 / math.sqrt(pairs)
    assert 0.7 <= zt.std().item() <= 1.3
    assert abs(sum(norms) / pairs - 1) < 5 * math.sqrt(2 / v / pairs)


@pytest.mark.parametrize(("log2_d", "v"), [(10, 8), (16, 256), (20, 4096), (20, 1 << 17)])
def test_a_runs_neighbours_land_in_different_buckets(log2_d: int, v: int) -> None:
    """The 8 entries hashed together must not share a bucket: gradient neighbours are large together."""
    comp = Compressor(1 << log2_d, seed=4)
    buckets = comp.positions(torch.arange(comp.D)) // (comp.D // v)
    assert (buckets.reshape(-1, 8).sort(dim=1).values.diff(dim=1) > 0).all()


def test_error_shrinks_with_v_on_concentrated_gradients() -> None:
    """Real gradients put their energy in a few places, neighbours alike (a conv kernel, a bias). Compressed inner
    products of such vectors must still improve as v grows (the first design had a floor of ~0.24 here)."""
    n = 300_000
    gen = torch.Generator().manual_seed(3)
    comp = Compressor(n, seed=1)
    errors: dict[int, list[float]] = {256: [], 16384: []}
    for _ in range(12):
        shared = torch.zeros(n, dtype=torch.float64)
        for start in torch.randint(0, n - 64, (40,), generator=gen).tolist():
            shared[start : start + 64] += torch.randn(1, generator=gen, dtype=torch.float64)  # blobs of equal values
        a = _unit(shared + 0.3 * shared.abs() * torch.randn(n, generator=gen, dtype=torch.float64))
        b = _unit(shared + 0.3 * shared.abs() * torch.randn(n, generator=gen, dtype=torch.float64))
        for v, errs in errors.items():
            errs.append(abs((comp.compress(a, v).double() @ comp.compress(b, v).double()).item() - (a @ b).item()))
    small, large = (sum(e) / len(e) for e in errors.values())
    assert large < small / 3 and large < 3 / math.sqrt(16384)


@pytest.mark.parametrize("v", [0, 8, 100, 3.0, True, 1 << 20])
def test_bad_v_is_a_clear_error(v: object) -> None:
    comp = Compressor(1000)
    with pytest.raises(CompressionError, match="v"):
        comp.compress(torch.randn(1000), v)  # type: ignore[arg-type]


def test_bad_inputs_name_the_rule() -> None:
    comp = Compressor(1000)
    with pytest.raises(CompressionError, match=r"shape \(999,\)"):
        comp.compress(torch.randn(999), 64)
    with pytest.raises(CompressionError, match="float16"):
        comp.compress(torch.arange(1000), 64)
    acc = comp.stream(64)
    with pytest.raises(CompressionError, match="overruns"):
        acc.add(990, torch.randn(20))
    with pytest.raises(CompressionError, match="overruns"):
        acc.add(-1, torch.randn(2))
    with pytest.raises(CompressionError, match="multiple"):
        fold(torch.randn(48), 16)
    with pytest.raises(ValueError):
        Compressor(0)
    assert issubclass(CompressionError, DminError)


def test_state_is_small() -> None:
    acc = Compressor(10**8).stream(4096)
    assert acc.state_bytes < 1 << 20


# ---- Batched streaming (stream_batch) ----------------------------------------------------------------------------


def _pieces(n: int, seed: int) -> list[tuple[int, int]]:
    """Increasing (offset, size) pieces of [0, n) with odd sizes, so most split a run of 8 (sizes 1 to ~n/3)."""
    rng = random.Random(seed)
    out, lo = [], 0
    while lo < n:
        size = min(n - lo, rng.choice([1, 3, 7, 9, 13, 8 * rng.randrange(1, 50) + 5, rng.randrange(1, n // 3 + 2)]))
        out.append((lo, size))
        lo += size
    return out


def _feed(acc, g: torch.Tensor, pieces: list[tuple[int, int]]):  # type: ignore[no-untyped-def]
    for lo, size in pieces:
        acc.add(lo, g[..., lo : lo + size])
    return acc


@contextlib.contextmanager
def _numba_threads(k: int):  # type: ignore[no-untyped-def]
    before = numba.get_num_threads()
    numba.set_num_threads(k)
    try:
        yield
    finally:
        numba.set_num_threads(before)


@pytest.mark.parametrize(
    ("n", "rows", "dtype"),
    [
        (13, 3, torch.float32),
        (1000, 1, torch.float32),
        (1000, 40, torch.float16),
        (100_003, 3, torch.bfloat16),
        (100_003, 40, torch.float32),
        (70_001, 3, torch.float64),
    ],
)
def test_batch_equals_single_row_streams(n: int, rows: int, dtype: torch.dtype) -> None:
    """Each row: buckets bit-identical to a single-row Accumulator, close to the torch reference."""
    comp = Compressor(n, seed=9)
    g = torch.randn(rows, n, generator=torch.Generator().manual_seed(n + rows)).to(dtype)
    pieces = _pieces(n, seed=rows)
    for v in sorted({16, min(1024, comp.D), comp.D}):
        batch = _feed(comp.stream_batch(v, rows), g, pieces)
        ref = _feed(comp.stream_batch(v, rows, backend="torch"), g, pieces)
        got = batch.finish(torch.float64)
        assert got.shape == (rows, v)
        torch.testing.assert_close(got, ref.finish(torch.float64), rtol=1e-12, atol=1e-12)
        torch.testing.assert_close(batch.sumsq, ref.sumsq, rtol=1e-12, atol=0)
        singles = [_feed(comp.stream(v), g[r], pieces) for r in range(rows)]  # on every thread numba has
        for r, single in enumerate(singles):
            assert torch.equal(got[r], single.finish(torch.float64)), f"row {r}, v={v}"
            assert batch.sumsq[r].item() == single.sumsq
        assert batch.finish().dtype == torch.float32
        whole = comp.compress(g.reshape(rows, n), v)  # every row of a whole-gradient batch at once
        assert torch.equal(whole, torch.stack([comp.compress(g[r].reshape(n), v) for r in range(rows)]))


def test_one_vector_does_not_depend_on_threads() -> None:
    """A long vector compressed alone (one row of the batched kernel) gives the same bits on one thread or many,
    and the same as inside a batch: no per-thread partial sums to add up in a thread-dependent order."""
    comp = Compressor(600_000, seed=4)
    g = torch.randn(3, 600_000, generator=torch.Generator().manual_seed(4))
    with _numba_threads(1):
        one = comp.compress(g[1], 1024)
    with _numba_threads(min(2, numba.config.NUMBA_NUM_THREADS)):
        many = comp.compress(g[1], 1024)
        batch = comp.compress(g, 1024)
    assert torch.equal(one, many) and torch.equal(one, batch[1])


def test_batch_row_does_not_depend_on_other_rows_threads_or_blocks() -> None:
    """The engine relies on it: batch size 8 vs 1, and a resumed run, must give bit-identical vectors."""
    from dmin.kernels import cpu

    n, v = 300_007, 4096
    comp = Compressor(n, seed=4)
    gen = torch.Generator().manual_seed(0)
    g = torch.randn(40, n, generator=gen)
    pieces = [(0, 5), (5, 100_000), (100_005, 3), (100_008, 200_000 - 1), (300_007 - 2, 2)]
    with _numba_threads(1):
        want = _feed(comp.stream_batch(v, 1), g[7:8], pieces)
    results = [(1, _feed(comp.stream_batch(v, 3), g[6:9], pieces)), (7, _feed(comp.stream_batch(v, 40), g, pieces))]
    with _numba_threads(min(2, numba.config.NUMBA_NUM_THREADS)):
        results.append((7, _feed(comp.stream_batch(v, 40), g, pieces)))
    # The kernel itself, over explicit row splits and hash block sizes.
    params = cpu.params(comp.keys, comp.L - 12)
    for threads, block_runs in ((1, 1), (3, 7), (7, 4096), (40, 100_000)):
        acc = comp.stream_batch(v, 40)
        for lo, size in pieces:
            part = g[:, lo : lo + size].contiguous().numpy()
            cpu.scatter_add_rows(acc._acc.numpy(), acc._sq.numpy(), part, lo, params, block_runs, threads)
        results.append((7, acc))
    for row, acc in results:
        assert torch.equal(acc.finish(torch.float64)[row], want.finish(torch.float64)[0])
        assert torch.equal(acc.sumsq[row], want.sumsq[0])


def test_batch_is_bit_identical_however_the_entries_are_split() -> None:
    """Fed in increasing order, any split into add calls gives the same bits (a resumed run re-feeds the same way)."""
    n, rows, v = 50_001, 3, 256
    comp = Compressor(n, seed=1)
    g = torch.randn(rows, n, generator=torch.Generator().manual_seed(2))
    whole = _feed(comp.stream_batch(v, rows), g, [(0, n)])
    for seed in range(3):
        split = _feed(comp.stream_batch(v, rows), g, _pieces(n, seed))
        assert torch.equal(split.finish(torch.float64), whole.finish(torch.float64))
        assert torch.equal(split.sumsq, whole.sumsq)
    torch.testing.assert_close(whole.sumsq, (g.double() ** 2).sum(1), rtol=1e-12, atol=0)


def test_batch_accepts_parameter_shaped_chunks_on_any_backend() -> None:
    rows, w, b = 4, torch.randn(4, 40, 25), torch.randn(4, 40)
    comp = Compressor(40 * 25 + 40)
    flat = torch.cat([w.reshape(rows, -1), b], dim=1)
    for backend in ("auto", "torch"):
        acc = comp.stream_batch(64, rows, backend=backend)  # type: ignore[arg-type]
        acc.add(1000, b)
        acc.add(0, w.transpose(1, 2).contiguous().transpose(1, 2))  # non-contiguous, as autograd may hand it over
        want = torch.stack([comp.compress(flat[r], 64, backend="torch") for r in range(rows)])
        torch.testing.assert_close(acc.finish(), want, rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("rows", [0, -2, True, 2.0, None])
def test_bad_rows_is_a_clear_error(rows: object) -> None:
    with pytest.raises(CompressionError, match="rows must be a positive integer"):
        Compressor(1000).stream_batch(64, rows)  # type: ignore[arg-type]


@pytest.mark.parametrize("backend", ["auto", "torch"])
def test_bad_batch_chunks_name_the_rule(backend: str) -> None:
    comp = Compressor(1000)
    acc = comp.stream_batch(64, 3, backend=backend)  # type: ignore[arg-type]
    with pytest.raises(CompressionError, match=r"rows = 3 first, got shape \(2, 10\)"):
        acc.add(0, torch.randn(2, 10))
    with pytest.raises(CompressionError, match=r"rows = 3 first, got shape \(\)"):
        acc.add(0, torch.tensor(1.0))
    with pytest.raises(CompressionError, match="overruns"):
        acc.add(995, torch.randn(3, 2, 3))
    with pytest.raises(CompressionError, match="overruns"):
        acc.add(-1, torch.randn(3, 1))
    with pytest.raises(CompressionError, match="overruns"):
        acc.add(True, torch.randn(3, 1))  # type: ignore[arg-type]
    with pytest.raises(CompressionError, match="float16"):
        acc.add(0, torch.ones(3, 4, dtype=torch.int32))
    with pytest.raises(CompressionError, match=r"torch\.Tensor"):
        acc.add(0, [[1.0]] * 3)  # type: ignore[arg-type]
    with pytest.raises(CompressionError, match="v must be"):
        comp.stream_batch(48, 3)
    acc.add(990, torch.zeros(3, 0))  # empty chunks are fine and change nothing
    assert not acc.finish().any() and not acc.sumsq.any()


def test_batch_state_is_the_buckets() -> None:
    acc = Compressor(10**8).stream_batch(4096, 40)
    assert 40 * 4096 * 8 <= acc.state_bytes <= 40 * 4096 * 8 + 40 * 64 * 8


def test_batch_kernel_refuses_arrays_it_would_overrun() -> None:
    """Its vector loads and stores are unchecked, so the wrapper checks shapes and layout first."""
    import numpy as np

    from dmin.kernels import cpu

    comp = Compressor(1000)
    params = cpu.params(comp.keys, comp.L - 6)  # v = 64
    acc, sq, g = np.zeros((3, 64)), np.zeros((3, cpu.SQ_LANES)), np.ones((3, 10), dtype=np.float32)
    cpu.scatter_add_rows(acc, sq, g, 0, params)
    assert sq.sum() == 30
    for bad in (
        (np.zeros((3, 32)), sq, g),
        (acc, np.zeros((3, 8)), g),
        (acc, sq, np.ones((2, 10), dtype=np.float32)),
        (acc, sq, np.ones((3, 20), dtype=np.float32)[:, ::2]),
        (np.zeros((64, 3)).T, sq, g),
        (acc, sq, np.ones((3, 10), dtype=np.float16)),
    ):
        with pytest.raises(ValueError, match="C-contiguous"):
            cpu.scatter_add_rows(*bad, 0, params)
    with pytest.raises(ValueError, match="block_runs"):
        cpu.scatter_add_rows(acc, sq, g, 0, params, block_runs=0)
