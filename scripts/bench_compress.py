#!/usr/bin/env python
"""Compression throughput against references measured in the same run, on the same array (JSON last).

memcpy      copying the n-float32 gradient into a preallocated buffer (the bandwidth ceiling)
dmin        Compressor.stream fed in parameter-sized chunks (gradient bytes consumed per second)
stored_perm the official DMin path: gather by a stored randperm, multiply by stored signs, block-sum
dense       TRAK's CPU path: a dense Gaussian projection generated from a seed in blocks (smaller n, scaled)
batched     Compressor.stream_batch: --rows gradients (B samples × K timesteps) fed together, one (rows, size) chunk
            per parameter of BATCH_PARAMS (UNet-like: a few 1.6–2.4M-entry tensors, many small ones; 15.4M entries
            per row); gradient bytes consumed per second (rows·n·4 / time), against memcpy above and against `rows`
            single-row accumulators fed the same chunks
"""

from __future__ import annotations

import argparse
import json
import time

import torch

from dmin.compressor import Compressor

# Parameter sizes of a mid-sized UNet block, cycled: the chunks collection feeds the compressor with.
CHUNKS = (1280 * 1280 * 9, 1280, 640 * 1280, 640 * 640 * 9, 640, 320 * 320 * 9, 320, 1280 * 4096, 4096)
# One parameter set for the batched figure, in feeding order: 3×3 convs at 512 channels, 1280² attention
# projections, 640² and 320² projections, then 40 norm weights and biases. Each is one (rows, size) chunk.
BATCH_PARAMS = (
    (512 * 512 * 9,) * 2 + (1280 * 1280,) * 4 + (640 * 640,) * 8 + (320 * 320,) * 8 + (1280, 640, 320, 1280) * 10
)


def best(fn, repeat: int = 3, sync=lambda: None) -> float:  # type: ignore[no-untyped-def]
    times = []
    for _ in range(repeat):
        sync()
        t = time.perf_counter()
        fn()
        sync()
        times.append(time.perf_counter() - t)
    return min(times)


def bench_batched(rows: int, v: int, dev: torch.device, sync) -> dict[str, float]:  # type: ignore[no-untyped-def]
    """Seconds for one pass over BATCH_PARAMS at `rows` rows: batched, and with `rows` single-row accumulators."""
    n = sum(BATCH_PARAMS)
    comp = Compressor(n, seed=0)
    buf = torch.randn(rows * max(BATCH_PARAMS), generator=torch.Generator().manual_seed(1)).to(dev)
    chunks, off = [], 0
    for size in BATCH_PARAMS:  # contiguous (rows, size) views of one buffer, as per-example gradients arrive
        chunks.append((off, buf[: rows * size].view(rows, size)))
        off += size
    state = {}

    def run_batched() -> None:
        acc = comp.stream_batch(v, rows, device=dev)
        for o, chunk in chunks:
            acc.add(o, chunk)
        acc.finish()
        state["bytes"] = acc.state_bytes

    def run_single() -> None:
        accs = [comp.stream(v, device=dev) for _ in range(rows)]
        for o, chunk in chunks:
            for r, acc in enumerate(accs):
                acc.add(o, chunk[r])
        for acc in accs:
            acc.finish()

    run_batched()  # JIT warm-up
    batched_s = best(run_batched, sync=sync)
    single_s = best(run_single, repeat=2, sync=sync)
    return {"n": n, "bytes": 4 * rows * n, "batched_s": batched_s, "single_s": single_s, "state_bytes": state["bytes"]}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, default=10**8)
    ap.add_argument("--v", type=int, default=4096)
    ap.add_argument("--dense-n", type=int, default=1 << 18, help="n for the dense projection (scaled per byte)")
    ap.add_argument("--device", default="cpu", help="cpu, or cuda for the Triton kernel on a GPU")
    ap.add_argument("--rows", type=int, default=40, help="gradients per batch for the batched figure (B × K)")
    ap.add_argument("--json", action="store_true", help="print only the JSON object")
    args = ap.parse_args()
    n, v = args.n, args.v
    dev = torch.device(args.device)
    g = torch.randn(n, generator=torch.Generator().manual_seed(0)).to(dev)
    nbytes = 4 * n
    sync = torch.cuda.synchronize if dev.type == "cuda" else (lambda: None)

    dst = torch.empty_like(g)
    memcpy_s = best(lambda: dst.copy_(g), sync=sync)

    comp = Compressor(n, seed=0)
    Compressor(1 << 16).compress(g[: 1 << 16].clone() if n >= 1 << 16 else torch.randn(1 << 16), 16)  # JIT warm-up
    offsets = []
    lo, k = 0, 0
    while lo < n:
        size = min(CHUNKS[k % len(CHUNKS)], n - lo)
        offsets.append((lo, size))
        lo, k = lo + size, k + 1

    state = {}

    def run_dmin() -> None:
        acc = comp.stream(v, device=dev)
        for off, size in offsets:
            acc.add(off, g[off : off + size])
        state["out"] = acc.finish()
        state["bytes"] = acc.state_bytes

    run_dmin()
    dmin_s = best(run_dmin, sync=sync)

    perm = torch.randperm(comp.D)[:n].to(dev)  # the official code stores a permutation of the padded length …
    signs = (torch.randint(0, 2, (n,), dtype=torch.int8) * 2 - 1).to(dev)  # … and a sign vector

    def run_stored() -> None:
        padded = torch.zeros(comp.D, device=dev)
        padded[perm] = g * signs
        padded.view(v, -1).sum(1)

    stored_s = best(run_stored, repeat=2, sync=sync)

    dn = min(args.dense_n, n)
    gd = g[:dn]
    block = 1 << 12

    def run_dense() -> None:
        gen = torch.Generator(dev).manual_seed(0)
        out = torch.zeros(v, device=dev)
        for lo in range(0, dn, block):
            rows = min(block, dn - lo)
            out += gd[lo : lo + rows] @ torch.randn(rows, v, generator=gen, device=dev)

    dense_s = best(run_dense, repeat=1, sync=sync)
    batched = bench_batched(args.rows, v, dev, sync)
    gb = 1e9
    result = {
        "n": n,
        "v": v,
        "device": str(dev),
        "threads": torch.get_num_threads(),
        "memcpy_gbps": nbytes / memcpy_s / gb,
        "dmin_gbps": nbytes / dmin_s / gb,
        "dmin_vs_memcpy": memcpy_s / dmin_s,
        "stored_perm_gbps": nbytes / stored_s / gb,
        "dmin_vs_stored_perm": stored_s / dmin_s,
        "dense_gbps": 4 * dn / dense_s / gb,
        "dense_n": dn,
        "dmin_vs_dense": (nbytes / dmin_s) / (4 * dn / dense_s),
        "state_bytes": state["bytes"],
        "stored_perm_state_bytes": 9 * n,
        "batched_rows": args.rows,
        "batched_n": batched["n"],
        "dmin_batched_gb_s": batched["bytes"] / batched["batched_s"] / gb,
        "dmin_batched_vs_memcpy": (batched["bytes"] / batched["batched_s"]) / (nbytes / memcpy_s),
        "batched_single_gb_s": batched["bytes"] / batched["single_s"] / gb,
        "batched_vs_single": batched["single_s"] / batched["batched_s"],
        "batched_state_bytes": batched["state_bytes"],
    }
    if not args.json:
        for key, val in result.items():
            print(f"{key:>24}: {val:.4g}" if isinstance(val, float) else f"{key:>24}: {val}")
    print(json.dumps(result))


if __name__ == "__main__":
    main()
