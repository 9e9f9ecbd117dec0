#!/usr/bin/env python
"""Gradient-database speed and size against numpy, on the same synthetic vectors in one run (JSON last).

write       Project.commit_samples (Parquet + manifest, fsync'd) vs np.save + fsync of the same array (the same
            durability) → write_vs_npy; np.save left in the page cache is reported as npy_nosync_write_mb_s.
            The three are interleaved batch by batch (500 samples, as a collect commits them), each after os.sync():
            this VM's disk swings 4× within seconds (a first write at 2 GB/s, the next at 400 MB/s), so writes
            timed at different moments compare the disk's moods, not the writers'. The same pass on tmpfs
            (/dev/shm, when there is one) gives the writers' own cost → tmpfs_write_vs_npy.
size        bytes on disk / payload bytes → storage_overhead
exact       dmin's exact path from the stored files (scan + top-10; median of 7, with the Project open: files
            checked and mapped once) vs numpy matmul over the vectors already in memory → exact_vs_numpy;
            exact_cold_s is one query from a freshly opened Project (checksums + mapping: what a CLI process pays)
duckdb      the same top-10 through DuckDB SQL over the Parquet files → duckdb_vs_numpy (reported)
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

from dmin.kernels.dot import timestep_dots
from dmin.score import exact_scores
from dmin.store import Identity, Project
from dmin.store.catalog import connect, sql_exact_scores
from dmin.store.tables import SampleBatch, grads_table


def median_time(fn: Callable[[], object], repeat: int = 7) -> float:
    """Median wall time of fn after one warm-up call (these machines are noisy)."""
    fn()
    times = []
    for _ in range(repeat):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return float(np.median(times))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--samples", type=int, default=2000)
    ap.add_argument("--timesteps", type=int, default=5)
    ap.add_argument("--v", type=int, default=4096)
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    N, K, v = args.samples, args.timesteps, args.v
    rng = np.random.default_rng(0)
    vecs = rng.standard_normal((N, K, v), dtype=np.float32)
    vecs /= np.linalg.norm(vecs, axis=2, keepdims=True)
    payload = vecs.nbytes
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        ident = Identity(
            model_family="bench",
            model_fingerprint="x",
            layout_hash="x",
            n=1 << 20,
            D=1 << 20,
            loss_type="epsilon",
            timesteps=tuple(float(i) for i in range(K)),
            latent_shape=(1,),
            collect_vs=(str(v),),
        )
        batch = 500

        def commit(project: Project, lo: int, hi: int, prefix: str = "s") -> None:
            project.commit_samples(
                SampleBatch(
                    [f"{prefix}{i:07d}" for i in range(lo, hi)],
                    [f"{i}.png" for i in range(lo, hi)],
                    [None] * (hi - lo),
                    [0] * (hi - lo),
                    {},
                    ident.timesteps,
                    {str(v): vecs[lo:hi]},
                    np.ones((hi - lo, K)),
                    np.ones((hi - lo, K)),
                )
            )

        # A collect commits hundreds of batches; the first pays one-time costs (Arrow allocator, zstd), measured
        # apart in a throwaway project so write_mb_s is the steady state.
        t = time.perf_counter()
        commit(Project.create(root / "warmup", ident), 0, min(N, batch), "w")
        first_commit_s = time.perf_counter() - t

        def write_pass(folder: Path) -> tuple[Project, float, float, float]:
            """(project, dmin commit s, np.save + fsync s, np.save s) over all vectors, interleaved by batch."""
            project = Project.create(folder / "proj", ident)
            write_s = npy_s = npy_nosync_s = 0.0
            for lo in range(0, N, batch):
                hi = min(N, lo + batch)
                os.sync()  # each write starts with no dirty pages of the others (the kernel throttles what follows)
                t = time.perf_counter()
                np.save(folder / f"vecs{lo}.npy", vecs[lo:hi])
                fd = os.open(folder / f"vecs{lo}.npy", os.O_RDONLY)
                os.fsync(fd)  # dmin's writes are durable (fsync'd): the fair reference
                os.close(fd)
                npy_s += time.perf_counter() - t
                os.sync()
                t = time.perf_counter()
                np.save(folder / f"nosync{lo}.npy", vecs[lo:hi])
                npy_nosync_s += time.perf_counter() - t
                os.sync()
                t = time.perf_counter()
                commit(project, lo, hi)
                write_s += time.perf_counter() - t
            return project, write_s, npy_s, npy_nosync_s

        memory: dict[str, float] = {}
        shm = Path("/dev/shm")
        if shm.is_dir() and os.access(shm, os.W_OK):  # the writers' own cost, without the disk's swings
            with tempfile.TemporaryDirectory(dir=shm) as mem:
                _, mem_write_s, mem_npy_s, _ = write_pass(Path(mem))
            memory = {
                "tmpfs_write_mb_s": payload / mem_write_s / 1e6,
                "tmpfs_npy_write_mb_s": payload / mem_npy_s / 1e6,
                "tmpfs_write_vs_npy": mem_npy_s / mem_write_s,
            }
        project, write_s, npy_s, npy_nosync_s = write_pass(root)
        on_disk = sum(f.bytes for f in project.live_files("grads", str(v)))
        q = rng.standard_normal((K, v), dtype=np.float32)
        timestep_dots(vecs[:1], q)  # load the compiled kernel (once per process, ~0.3 s) outside the timings
        t = time.perf_counter()
        exact_scores(Project.open(project.root), str(v), q).top(10)  # what one CLI process pays: check + map
        exact_cold_s = time.perf_counter() - t
        s = exact_scores(project, str(v), q)
        top = s.top(10)
        exact_s = median_time(lambda: exact_scores(project, str(v), q).top(10))
        flat = vecs.reshape(N, K * v)

        def numpy_top10() -> None:
            scores = flat @ q.reshape(-1)
            part = np.argpartition(-scores, 10)[:10]
            np.argsort(-scores[part])

        numpy_s = median_time(numpy_top10)
        project.commit(
            "queries",
            [
                (
                    "query_grads",
                    str(v),
                    f"queries/grads/v={v}",
                    grads_table(
                        "query_id", ["q"], ident.timesteps, q[None], np.ones((1, K)), np.ones((1, K)), "float32"
                    ),
                )
            ],
        )
        con = connect(Project.open(project.root))
        sql_top = sql_exact_scores(con, str(v), "q", 10)
        duck_s = median_time(lambda: sql_exact_scores(con, str(v), "q", 10))
        agree = [r[0] for r in sql_top] == [s.ids[i] for i in top]
    result = {
        "rows": N * K,
        "v": v,
        "payload_mb": payload / 1e6,
        "write_mb_s": payload / write_s / 1e6,
        "write_first_commit_s": first_commit_s,
        "npy_write_mb_s": payload / npy_s / 1e6,
        "write_vs_npy": npy_s / write_s,
        "npy_nosync_write_mb_s": payload / npy_nosync_s / 1e6,
        "write_vs_npy_nosync": npy_nosync_s / write_s,
        **memory,
        "bytes_on_disk": on_disk,
        "storage_overhead": on_disk / payload,
        "exact_s": exact_s,
        "exact_cold_s": exact_cold_s,
        "exact_numpy_s": numpy_s,
        "exact_vs_numpy": numpy_s / exact_s,
        "exact_duckdb_s": duck_s,
        "duckdb_vs_numpy": numpy_s / duck_s,
        "duckdb_top10_agrees": agree,
    }
    if not args.json:
        for k, val in result.items():
            print(f"{k:>20}: {val:.4g}" if isinstance(val, float) else f"{k:>20}: {val}")
    print(json.dumps(result))


if __name__ == "__main__":
    main()
