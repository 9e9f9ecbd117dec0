"""CUDA paths, run on a lent GPU with `pytest -m gpu` (deselected by default; CI has no GPU)."""

from __future__ import annotations

import pytest
import torch

from dmin.compressor import Compressor

pytestmark = pytest.mark.gpu


def test_cuda_kernel_equals_reference_and_cpu() -> None:
    assert torch.cuda.is_available(), "run the gpu marker only where CUDA is"
    for n in (1000, 1 << 20, 3_000_017):
        g = torch.randn(n, generator=torch.Generator().manual_seed(n))
        comp = Compressor(n, seed=3)
        cpu = comp.compress(g, 256)
        cuda = comp.compress(g.cuda(), 256)
        ref = comp.compress(g.cuda(), 256, backend="torch")
        torch.testing.assert_close(cuda.cpu(), cpu, rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(ref.cpu(), cpu, rtol=1e-5, atol=1e-5)


def test_cuda_stream_in_chunks_and_bf16() -> None:
    n = 1 << 20
    g = torch.randn(n, device="cuda")
    comp = Compressor(n)
    acc = comp.stream(4096, device="cuda")
    for lo in range(0, n, 12345):
        acc.add(lo, g[lo : lo + 12345])
    torch.testing.assert_close(acc.finish(), comp.compress(g, 4096), rtol=1e-5, atol=1e-5)
    assert abs(acc.sumsq - float((g.double() ** 2).sum())) < 1e-6 * acc.sumsq
    half = comp.compress(g.bfloat16(), 4096)
    assert torch.isfinite(half).all()


def test_cuda_batch_kernel_equals_reference_and_cpu() -> None:
    """Batched Triton kernel: hash once, add every row. Float64 atomics: equal within rounding, not bit for bit."""
    n = 1_000_003
    comp = Compressor(n, seed=6)
    for rows, dtype in ((1, torch.float32), (3, torch.bfloat16), (40, torch.float32)):
        g = torch.randn(rows, n, generator=torch.Generator().manual_seed(rows)).to(dtype)
        pieces = [(0, 5), (5, 400_000), (400_005, 3), (400_008, n - 400_008)]  # odd offsets split runs of 8
        for v in (16, 4096):
            accs = [
                comp.stream_batch(v, rows, device="cuda"),
                comp.stream_batch(v, rows, device="cuda", backend="torch"),
                comp.stream_batch(v, rows),
            ]
            for acc in accs:
                for lo, size in pieces:
                    acc.add(lo, g[:, lo : lo + size].cuda())
            cuda, ref, cpu = (acc.finish(torch.float64).cpu() for acc in accs)
            assert cuda.shape == (rows, v)
            torch.testing.assert_close(cuda, cpu, rtol=1e-9, atol=1e-9)
            torch.testing.assert_close(ref, cpu, rtol=1e-9, atol=1e-9)
            torch.testing.assert_close(accs[0].sumsq.cpu(), accs[2].sumsq, rtol=1e-9, atol=0)
            assert accs[0].sumsq.device.type == "cuda"
