#!/usr/bin/env python
"""Gradient-database speed and size against numpy, on the same synthetic vectors in one run (JSON last).

write       Project.commit_samples (Parquet + manifest, fsync'd) vs np.save of the same array → write_vs_npy
size        bytes on disk / payload bytes → storage_overhead
exact       dmin's exact path from the stored files (scan + top-10) vs numpy matmul over the vectors already in
            memory → exact_vs_numpy
duckdb      the same top-10 through DuckDB SQL over the Parquet files → duckdb_vs_numpy (reported)
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from pathlib import Path

import numpy as np

from dmin.score import exact_scores
from dmin.store import Identity, Project
from dmin.store.catalog import connect, sql_exact_scores
from dmin.store.project import SampleBatch, grads_table


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
        t = time.perf_counter()
        np.save(root / "vecs.npy", vecs)
        npy_s = time.perf_counter() - t
        t = time.perf_counter()
        np.save(root / "vecs2.npy", vecs)
        fd = os.open(root / "vecs2.npy", os.O_RDONLY)
        os.fsync(fd)  # dmin's writes are durable (fsync'd): the fair reference
        os.close(fd)
        npy_fsync_s = time.perf_counter() - t
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
        project = Project.create(root / "proj", ident)
        t = time.perf_counter()
        batch = 500
        for lo in range(0, N, batch):
            hi = min(N, lo + batch)
            project.commit_samples(
                SampleBatch(
                    [f"s{i:07d}" for i in range(lo, hi)],
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
        write_s = time.perf_counter() - t
        on_disk = sum(f.bytes for f in project.live_files("grads", str(v)))
        q = rng.standard_normal((K, v), dtype=np.float32)
        exact_scores(project, str(v), q)  # warm the page cache as numpy's copy is warm in memory
        t = time.perf_counter()
        s = exact_scores(project, str(v), q)
        top = s.top(10)
        exact_s = time.perf_counter() - t
        flat = vecs.reshape(N, K * v)
        t = time.perf_counter()
        scores = flat @ q.reshape(-1)
        np_top = np.argsort(-scores[np.argpartition(-scores, 10)[:10]])
        numpy_s = time.perf_counter() - t
        del np_top
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
        sql_exact_scores(con, str(v), "q", 10)
        t = time.perf_counter()
        sql_top = sql_exact_scores(con, str(v), "q", 10)
        duck_s = time.perf_counter() - t
        agree = [r[0] for r in sql_top] == [s.ids[i] for i in top]
    result = {
        "rows": N * K,
        "v": v,
        "payload_mb": payload / 1e6,
        "write_mb_s": payload / write_s / 1e6,
        "npy_write_mb_s": payload / npy_s / 1e6,
        "write_vs_npy": npy_s / write_s,
        "npy_fsync_write_mb_s": payload / npy_fsync_s / 1e6,
        "write_vs_npy_fsync": npy_fsync_s / write_s,
        "bytes_on_disk": on_disk,
        "storage_overhead": on_disk / payload,
        "exact_s": exact_s,
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
