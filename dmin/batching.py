"""How many samples one collection pass takes: `--batch-size auto`, and what a B that cannot fit is told.

A pass over B samples runs B×K examples. Its memory is the batched forward's saved activations (what backward
needs), the activation gradients backward makes alongside them, and the per-example gradient of the parameter being
handed over (B×K × its size); the compressor's state (B×K × v floats) is small beside them. dmin measures the
activations of one sample's K examples with a probe forward without autograd (the bytes of every leaf module's
output, on any device: about what autograd would save, without the memory of building the graph to find out),
doubles them for backward, and divides the memory free — free CUDA memory on a GPU, half the available RAM on the
CPU (other processes and the page cache need the rest) — by that. Past a few dozen examples a pass gains little on
the CPU, so `auto` stops there.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import psutil
import torch

from dmin.errors import UsageError

CPU_EXAMPLES = 64  # B×K beyond which a CPU pass gains little (scripts/bench_collect.py)
CUDA_EXAMPLES = 512


@dataclass(frozen=True)
class Footprint:
    """Memory a pass needs per sample, and what is free for passes."""

    per_sample: int
    budget: int

    def fits(self) -> int:
        return max(0, self.budget // max(1, self.per_sample))


def parse_batch_size(value: int | str) -> int | None:
    """An explicit B (≥ 1), or None for auto."""
    if isinstance(value, str):
        if value.strip().lower() == "auto":
            return None
        if not value.strip().isdigit():
            raise UsageError(f"--batch-size {value!r}: expected a number of samples per pass, or auto")
        value = int(value)
    if value < 1:
        raise UsageError(f"--batch-size {value}: a pass needs at least 1 sample (or use auto)")
    return value


def activation_bytes(model: torch.nn.Module, forward: Callable[[], object]) -> int:
    """Bytes of every leaf module's output while `forward()` runs without autograd: about what a pass with autograd
    keeps for backward (each op's input is the previous op's output), without building the graph to find out."""
    total = 0

    def count(module: torch.nn.Module, args: object, output: object) -> None:
        nonlocal total
        if isinstance(output, torch.Tensor):
            total += output.numel() * output.element_size()

    leaves = [m for m in model.modules() if next(m.children(), None) is None]
    handles = [m.register_forward_hook(count) for m in leaves]
    try:
        with torch.no_grad():
            forward()
    finally:
        for h in handles:
            h.remove()
    return total


def free_memory(device: torch.device) -> int:
    """What passes may use: 80% of free CUDA memory, or half the RAM available."""
    if device.type == "cuda":
        return int(torch.cuda.mem_get_info(device)[0] * 0.8)
    return int(psutil.virtual_memory().available * 0.5)


def choose_batch_size(requested: int | None, fp: Footprint, K: int, device: torch.device) -> int:
    """`requested`, refused when it cannot fit; for auto, the largest B that fits, up to where passes stop gaining."""
    fits = fp.fits()
    if requested is not None:
        if requested > max(1, fits * 2):  # the estimate keeps a 2× margin: refuse only what clearly cannot fit
            raise UsageError(
                f"--batch-size {requested} needs about {requested * fp.per_sample / 2**30:.1f} GiB but "
                f"{fp.budget / 2**30:.1f} GiB is free for it; the largest batch size that fits is {max(1, fits)}"
            )
        return requested
    cap = (CUDA_EXAMPLES if device.type == "cuda" else CPU_EXAMPLES) // max(1, K)
    return max(1, min(fits, cap))


def is_out_of_memory(exc: BaseException) -> bool:
    """CUDA's OutOfMemoryError, Python's MemoryError, or the CPU allocator's failure."""
    if isinstance(exc, MemoryError | torch.OutOfMemoryError):
        return True
    text = str(exc)
    return isinstance(exc, RuntimeError) and ("out of memory" in text or "can't allocate memory" in text)
