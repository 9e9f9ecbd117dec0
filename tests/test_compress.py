"""Properties of the zero-storage compressor (DESIGN §1.6)."""

from __future__ import annotations

import math
import random

import pytest
import torch

from dmin.compress import Compressor, fold
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
