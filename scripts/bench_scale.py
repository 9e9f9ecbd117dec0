#!/usr/bin/env python
"""Every command's cost on a project of N samples, N = 10^4 … 10^6: seconds, peak RSS, growth exponents (JSON last).

For each N this builds a real project through the real commit path: the identity of the bundled digits DDPM (K = 10
timesteps, stored v = 256), N samples of clustered unit vectors committed 64 at a time (collect's --commit-every),
samples rows with source, caption, label and two metadata columns, matching a Parquet data file of N tiny PNG
images (their sample_ids are the images' content hashes), and 10,000 queries committed through the query path.
Then it times, end to end through the CLI where a command exists (`dmin info`, `verify`, `verify --deep`, `sql`,
`index`, `compress`, `forget`, `compact`, `collect`) and through the library where the model would be needed (a query's
everything-but-the-gradient: `dmin.query.attribute`, exact and kNN, after 10 and after 10,000 earlier queries — the
first state kept as a hard-linked snapshot and the two timed in alternation, so both read the same page cache; opening a
project), each in a child process whose peak RSS (VmHWM, which counts mapped file pages) and peak anonymous memory
(RssAnon, what the process itself holds) are polled from /proc. The disk's sequential read rate is measured in the same
run (a 1 GiB scratch file read with O_DIRECT, past the page cache), and `verify --deep` runs on a cold cache (the
project's files evicted with posix_fadvise).

Keys: results[N][op] = {seconds, peak_rss_mb, peak_anon_mb, ...}; growth[op] = exponents between consecutive N;
targets = pass or fail at the largest N (the figures the README quotes). `--plot docs/scale.png` draws seconds against
N, log–log.
`--quick` (N = 2,000, 50 queries) keeps the script working in the test suite.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import itertools
import json
import math
import mmap
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np

K = 10
V = "256"
COMMIT = 64  # samples per commit: collect's default --commit-every
ASSET = Path(__file__).resolve().parent.parent / "dmin" / "assets" / "digits-ddpm"
DMIN = [sys.executable, "-m", "dmin_cli"]


# ---- building the project --------------------------------------------------------------------------------------
def _png(pixels: np.ndarray) -> bytes:
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(pixels, "L").save(buf, format="PNG", compress_level=1)
    return buf.getvalue()


def make_data(path: Path, n: int, start: int = 0) -> list[dict[str, Any]]:
    """A Parquet data set of n tiny PNG images (rows start…start+n): image bytes, caption, label, license, batch.
    Returns each row's record fields with its sample_id, computed as collect computes it."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    from dmin.data import Record

    rng = np.random.default_rng(start + 1)
    rows = []
    writer = None
    for lo in range(0, n, 65536):
        hi = min(n, lo + 65536)
        pixels = rng.integers(0, 256, (hi - lo, 8, 8), dtype=np.uint8)
        images = [_png(p) for p in pixels]
        labels = [(start + i) % 10 for i in range(lo, hi)]
        texts = [f"digit {label} #{start + i}" for label, i in zip(labels, range(lo, hi), strict=True)]
        licenses = ["cc0" if (start + i) % 3 else "cc-by" for i in range(lo, hi)]
        batches = [f"b{(start + i) // 10000:03d}" for i in range(lo, hi)]
        table = pa.table({"image": images, "text": texts, "label": labels, "license": licenses, "batch": batches})
        writer = writer or pq.ParquetWriter(path, table.schema)
        writer.write_table(table, row_group_size=8192)
        for j in range(hi - lo):
            rec = Record(f"{path.name}#{lo + j}", images[j], texts[j], labels[j])
            rows.append(
                {"sample_id": rec.sample_id, "source": rec.source, "caption": texts[j], "label": labels[j],
                 "license": licenses[j], "batch": batches[j]}
            )
    if writer is not None:
        writer.close()
    return rows


def commit_rows(project: Any, rows: list[dict[str, Any]], data_root: str, seed: int) -> float:
    """Commit `rows` with clustered unit vectors, COMMIT samples a commit; seconds taken by the commits."""
    from dmin.store.tables import SampleBatch

    rng = np.random.default_rng(seed)
    centers = _centers()
    spent = 0.0
    for lo in range(0, len(rows), COMMIT):
        part = rows[lo : lo + COMMIT]
        vec = centers[rng.integers(0, len(centers), len(part))] + 0.7 * rng.standard_normal(
            (len(part), K, int(V)), dtype=np.float32
        )
        vec /= np.linalg.norm(vec, axis=-1, keepdims=True)
        batch = SampleBatch(
            [r["sample_id"] for r in part],
            [r["source"] for r in part],
            [r["caption"] for r in part],
            [r["label"] for r in part],
            {"license": [r["license"] for r in part], "batch": [r["batch"] for r in part]},
            project.identity.timesteps,
            {V: vec},
            np.ones((len(part), K)),
            np.full((len(part), K), 0.1),
        )
        t = time.perf_counter()
        project.commit_samples(batch, data_root=data_root)
        spent += time.perf_counter() - t
    return spent


_CENTERS: dict[str, np.ndarray] = {}


def _centers() -> np.ndarray:
    """The cluster centres the vectors are drawn around: N / 100 of them (at least 10), fixed per N."""
    return _CENTERS.get("c") if "c" in _CENTERS else _CENTERS.setdefault("c", _draw(10_000))


def _draw(count: int) -> np.ndarray:
    return np.random.default_rng(7).standard_normal((count, K, int(V)), dtype=np.float32)


def set_clusters(n: int) -> None:
    _CENTERS["c"] = _draw(max(10, n // 100))


def query_vectors(count: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    centers = _centers()
    q = centers[rng.integers(0, len(centers), count)] + 0.7 * rng.standard_normal((count, K, int(V)), np.float32)
    return (q / np.linalg.norm(q, axis=-1, keepdims=True)).astype(np.float32)


def commit_queries(project: Any, first: int, last: int) -> float:
    """Commit queries first…last-1 through the query path's commit (synthetic top-10s); seconds taken."""
    from dmin.query import QuerySpec, _commit

    rng = np.random.default_rng(first)
    keys = project.sample_keys()
    n = len(keys)
    spent = 0.0
    ids = project.read_table("samples", columns=["sample_id"]).column("sample_id") if n else None
    for i in range(first, last):
        q = query_vectors(1, 10_000_000 + i)[0]
        picks = rng.integers(0, n, 10)
        results = [
            {"rank": r + 1, "sample_id": ids[int(p)].as_py(), "score": float(9 - r), "scores": [0.9 - r / 10] * K}
            for r, p in enumerate(picks)
        ]
        t = time.perf_counter()
        _commit(
            project, f"q-bench{i:07d}", QuerySpec(image=Path("gen.png"), label=i % 10), None, {V: q},
            np.ones(K), np.full(K, 0.1), results, "knn", V,
        )
        spent += time.perf_counter() - t
    return spent


# ---- children: one measured operation each ---------------------------------------------------------------------
def child_open(root: str) -> dict[str, Any]:
    from dmin.store import Project

    t = time.perf_counter()
    p = Project.open(root)
    return {"seconds": time.perf_counter() - t, "entries": p.state().seq, "live_files": len(p.state().files)}


def child_queries(root: str, count: int, seed: int, n: int) -> dict[str, Any]:
    """A query's everything-but-the-gradient, exact and kNN, `count` of each on one open Project (as a process
    answering a batch of queries holds it): p50 after the first (the first pays mapping and graph loading)."""
    from dmin.query import QuerySpec, attribute
    from dmin.store import Project

    set_clusters(n)
    p = Project.open(root)
    out: dict[str, Any] = {}
    qs = query_vectors(2 * count + 2, seed)
    for m, method in enumerate(("exact", "knn")):
        times = []
        for i in range(count + 1):
            q = qs[m * (count + 1) + i]
            t = time.perf_counter()
            res = attribute(
                p, f"q-{method}-{seed}-{i}", QuerySpec(image=Path("gen.png"), label=1), {V: q}, np.ones(K),
                np.full(K, 0.1), k=10, v=V, method=method,
            )
            times.append(time.perf_counter() - t)
            assert len(res.results) == 10 and res.results[0]["source"]  # metadata read
        out[f"{method}_first_s"] = times[0]
        out[f"{method}_p50_s"] = float(np.median(times[1:]))
        out[f"{method}_times_s"] = times[1:]
    return out


ROUNDS = 2  # alternations of the after-10 and after-all measurements


def _pooled(runs: list[tuple[float, float, dict[str, Any]]]) -> dict[str, Any]:
    """Several child runs of the same state as one measurement: p50 over every query they timed."""
    out: dict[str, Any] = {
        "seconds": max(r[0] for r in runs),
        "peak_rss_mb": max(r[1] for r in runs),
        "peak_anon_mb": max(r[2]["peak_anon_mb"] for r in runs),
        "runs": len(runs),
    }
    for method in ("exact", "knn"):
        out[f"{method}_first_s"] = max(r[2][f"{method}_first_s"] for r in runs)
        out[f"{method}_p50_s"] = float(np.median([t for r in runs for t in r[2][f"{method}_times_s"]]))
        out[f"{method}_p50_by_run_s"] = [r[2][f"{method}_p50_s"] for r in runs]
    return out


def child_numpy(root: str) -> dict[str, Any]:
    """The reference for exact scoring: a numpy scan of the same vectors already in memory (up to 200,000
    samples' worth, scaled to all of them)."""
    from dmin.store import Project
    from dmin.store.vectors import iter_blocks

    p = Project.open(root)
    parts, have = [], 0
    for block in iter_blocks(p, V):
        take = min(len(block.vecs), 200_000 - have)
        parts.append(np.array(block.vecs[:take], dtype=np.float32))
        have += take
        if have >= 200_000:
            break
    mem = np.concatenate(parts).reshape(have, -1)
    total = len(p.sample_keys())
    times = []
    for q in query_vectors(6, 99):
        t = time.perf_counter()
        s = mem @ q.reshape(-1)
        np.argpartition(-s, 10)[:10]
        times.append(time.perf_counter() - t)
    return {"seconds": float(np.median(times[1:])) * total / have, "rows_measured": have}


def child_index(root: str, queries: int, n: int) -> dict[str, Any]:
    """The loaded index's memory (RSS grown by loading the graph) and recall@10 of kNN against exact scoring."""
    import psutil

    from dmin.index import current_index, knn, load_graph
    from dmin.score import exact_scores
    from dmin.store import Project

    set_clusters(n)
    p = Project.open(root)
    idx = current_index(p, V)
    assert idx is not None
    before = psutil.Process().memory_info().rss
    load_graph(p, idx)
    loaded = psutil.Process().memory_info().rss - before
    recall = []
    for q in query_vectors(queries, 5):
        got, _, _ = knn(p, idx, q, 10)
        ex = exact_scores(p, V, q)
        recall.append(len(set(got) & set(ex.ids_at(ex.top(10)))) / 10)
    return {"index_ram_mb": loaded / 2**20, "recall_at_10": float(np.mean(recall)), "graph_v": idx.meta["graph_v"]}


def child_floor(data: str) -> dict[str, Any]:
    """The floor of collect's already-committed decision: reading the data set and hashing every image."""
    from dmin.data import load_dataset

    t = time.perf_counter()
    ds = load_dataset(data)
    ids = [r.sample_id for r in ds.records]
    return {"seconds": time.perf_counter() - t, "samples": len(ids)}


CHILDREN = {"open": child_open, "queries": child_queries, "numpy": child_numpy, "index": child_index,
            "floor": child_floor}


def measured(args: list[str]) -> tuple[float, float, str]:
    """Run a command to completion: (wall seconds, peak RSS in MB, stdout). The peak is the child's own VmHWM,
    polled every 20 ms (wait4's ru_maxrss would count the parent's pages the fork copied). VmHWM counts the mapped
    pages of files the child read in place, which the kernel drops under pressure; the largest RssAnon seen (the
    memory the child itself holds) goes to ANON_PEAK_MB for the caller."""
    t = time.perf_counter()
    proc = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    outs: list[bytes] = []
    errs: list[bytes] = []
    threads = [
        threading.Thread(target=lambda: outs.append(proc.stdout.read())),  # type: ignore[union-attr]
        threading.Thread(target=lambda: errs.append(proc.stderr.read())),  # type: ignore[union-attr]
    ]
    for th in threads:
        th.start()
    peak = anon = 0
    while proc.poll() is None:
        try:
            status = Path(f"/proc/{proc.pid}/status").read_text()
            peak = max(peak, int(status.split("VmHWM:")[1].split()[0]))
            anon = max(anon, int(status.split("RssAnon:")[1].split()[0]))
        except (OSError, IndexError, ValueError):
            pass
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(0.02)
    wall = time.perf_counter() - t
    for th in threads:
        th.join()
    if proc.returncode:
        raise RuntimeError(f"{' '.join(args[:6])}… exited {proc.returncode}: {b''.join(errs).decode()[-2000:]}")
    ANON_PEAK_MB[0] = anon / 1024
    return wall, peak / 1024, b"".join(outs).decode()


ANON_PEAK_MB = [0.0]  # the last `measured` child's largest RssAnon


def cli(*args: str) -> tuple[float, float, str]:
    return measured([*DMIN, *args])


def child(name: str, *args: str) -> tuple[float, float, dict[str, Any]]:
    wall, rss, out = measured([sys.executable, __file__, "--child", name, *args])
    return wall, rss, json.loads(out.strip().splitlines()[-1])


# ---- the disk --------------------------------------------------------------------------------------------------
def evict(root: Path) -> None:
    """Drop the project's files from the page cache (posix_fadvise DONTNEED: no root needed)."""
    for path in root.rglob("*"):
        if path.is_file():
            fd = os.open(path, os.O_RDONLY)
            try:
                os.fsync(fd)
                os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
            finally:
                os.close(fd)


def disk_read_rate(work: Path, size: int = 1 << 30) -> float:
    """The disk's sequential read rate (bytes/s): a fresh file of `size` random bytes, written and synced, read back
    in 16 MB blocks with O_DIRECT (past the page cache). One large file, because on a virtual disk each request pays
    a latency that small files multiply: reading the project's own files at 10^4 (2 MB each) measured 27 MB/s, a
    figure of the files, not of the disk."""
    path = work / "disk-reference.bin"
    block = np.random.default_rng(0).integers(0, 256, 16 << 20, dtype=np.uint8).tobytes()
    with open(path, "wb") as f:
        for _ in range(size // len(block)):
            f.write(block)
        f.flush()
        os.fsync(f.fileno())
    buf = mmap.mmap(-1, len(block))  # page-aligned, as O_DIRECT requires
    try:
        try:
            fd = os.open(path, os.O_RDONLY | os.O_DIRECT)
        except OSError:  # a filesystem without O_DIRECT (tmpfs): evict, then read plainly
            evict(work)
            fd = os.open(path, os.O_RDONLY)
        t = time.perf_counter()
        try:
            while os.readv(fd, [buf]) == len(buf):
                pass
        finally:
            os.close(fd)
        return size / (time.perf_counter() - t)
    finally:
        path.unlink()


def live_bytes(root: Path) -> int:
    from dmin.store import Project

    return sum(live.ref.bytes for live in Project.open(root).state().files.values())


# ---- one N -----------------------------------------------------------------------------------------------------
def run(n: int, queries: int, work: Path, say: Any) -> dict[str, Any]:
    from dmin.gradients import prepare
    from dmin.store import Project

    root, data = work / "project", work / "data.parquet"
    res: dict[str, Any] = {"n": n}
    set_clusters(n)
    t = time.perf_counter()
    rows = make_data(data, n)
    res["make_data_s"] = time.perf_counter() - t
    setup = prepare(ASSET, timesteps=K, vs=[V], device="cpu")
    project = Project.create(root, setup.identity)
    say(f"n={n}: committing samples")
    res["commit_samples_s"] = commit_rows(project, rows, str(data.resolve()), seed=1)
    res["commit_samples_per_s"] = n / res["commit_samples_s"]
    commit_queries(project, 0, 10)

    def op(name: str, fn: Any) -> None:
        say(f"n={n}: {name}")
        wall, rss, extra = fn()
        res[name] = {"seconds": wall, "peak_rss_mb": rss, "peak_anon_mb": ANON_PEAK_MB[0], **(extra or {})}

    op("index", lambda: (*cli("index", str(root), "--v", V, "--json")[:2], None))
    # The project as it stands after 10 queries, kept as a snapshot of hard links (committed files are never
    # written in place): after the 10,000 queries, the two states are timed in alternation over the same inodes,
    # hence the same page cache, so the ratio measures the queries and not what the machine did in between.
    early = work / "project-after-10"
    shutil.rmtree(early, ignore_errors=True)
    shutil.copytree(root, early, copy_function=os.link)
    say(f"n={n}: committing {queries} queries")
    project = Project.open(root)
    res["commit_queries_s"] = commit_queries(project, 10, queries)
    count = 20 if queries >= 1000 else 5
    rounds: dict[str, list[tuple[float, float, dict[str, Any]]]] = {"query_after_10": [], "query_after_all": []}
    for r in range(ROUNDS):
        for name, where in (("query_after_10", early), ("query_after_all", root)):
            say(f"n={n}: {name} (round {r + 1} of {ROUNDS})")
            wall, rss, extra = child("queries", str(where), str(count), str(r + 1), str(n))  # paired query vectors
            rounds[name].append((wall, rss, {**extra, "peak_anon_mb": ANON_PEAK_MB[0]}))
    for name, runs in rounds.items():
        res[name] = _pooled(runs)
    shutil.rmtree(early, ignore_errors=True)
    res["queries"] = queries
    op("exact_numpy", lambda: child("numpy", str(root)))
    op("open", lambda: child("open", str(root)))
    op("info", lambda: (*cli("info", str(root), "--json")[:2], None))
    op("verify", lambda: (*cli("verify", str(root), "--json")[:2], None))
    res["disk_read_bytes_per_s"] = disk_read_rate(work, 1 << 30 if n >= 10_000 else 1 << 26)
    res["live_bytes"] = live_bytes(root)
    evict(root)
    op("verify_deep", lambda: (*cli("verify", str(root), "--deep", "--json")[:2], None))
    res["verify_deep"]["bytes_per_s"] = res["live_bytes"] / res["verify_deep"]["seconds"]
    op("sql_group_by", lambda: (*cli("sql", str(root), "SELECT label, license, count(*) AS n FROM samples GROUP BY ALL",
                                     "--json")[:2], None))
    op("sql_join", lambda: (*cli("sql", str(root), "SELECT s.batch, count(*) AS hits, sum(r.score) AS influence FROM "
                                 "results r JOIN samples s USING (sample_id) GROUP BY 1", "--json")[:2], None))
    say(f"n={n}: adding 1%")
    extra = make_data(work / "more.parquet", max(1, n // 100), start=n)
    commit_rows(Project.open(root), extra, str((work / "more.parquet").resolve()), seed=2)
    op("index_add_1pct", lambda: (*cli("index", str(root), "--v", V, "--json")[:2], None))
    op("index_loaded", lambda: child("index", str(root), "20", str(n)))
    op("compress_v64", lambda: (*cli("compress", str(root), "--v", "64", "--json")[:2], None))
    gone = [r["sample_id"] for r in rows[:: max(1, n // 100)][:100]]
    op("forget_100", lambda: (*cli("forget", str(root), *[a for s in gone for a in ("--sample-id", s)], "--yes",
                                   "--json")[:2], None))
    op("compact", lambda: (*cli("compact", str(root), "--orphan-grace", "0", "--json")[:2], None))
    res["forget_compact_s"] = res["forget_100"]["seconds"] + res["compact"]["seconds"]
    op("collect_decision", lambda: (*cli("collect", str(root), "--model", str(ASSET), "--data", str(data), "--v", V,
                                         "--timesteps", str(K), "--device", "cpu", "--json")[:2], None))
    op("collect_floor", lambda: child("floor", str(data)))
    state = Project.open(root).state()
    res["live_files"] = len(state.files)
    res["manifest_entries"] = state.seq
    res["project_bytes"] = sum(p.stat().st_size for p in root.rglob("*") if p.is_file())
    return res


def measure_existing(folder: Path, n: int, say: Any) -> dict[str, Any]:
    """The per-call operations again on a project a kept run built (`--keep`), as it stands now — after its run's
    10,000 queries, forget and compact: opening, info, verify, verify --deep on a cold cache beside the disk's read
    rate, and a query's everything-but-the-gradient beside the numpy scan, in alternation. For re-measuring a
    change without rebuilding 10^6 samples (an hour here); queries are committed into the project."""
    root = folder / "project"
    res: dict[str, Any] = {"n": n, "project": str(root)}

    def op(name: str, fn: Any) -> None:
        say(f"existing n={n}: {name}")
        wall, rss, extra = fn()
        res.setdefault(name, []).append({"seconds": wall, "peak_rss_mb": rss, "peak_anon_mb": ANON_PEAK_MB[0],
                                         **(extra or {})})

    for r in range(ROUNDS):
        op("open", lambda: child("open", str(root)))
        op("info", lambda: (*cli("info", str(root), "--json")[:2], None))
        op("verify", lambda: (*cli("verify", str(root), "--json")[:2], None))
        op("query", lambda r=r: child("queries", str(root), "20", str(100 + r), str(n)))
        op("exact_numpy", lambda: child("numpy", str(root)))
    res["disk_read_bytes_per_s"] = disk_read_rate(folder)
    res["live_bytes"] = live_bytes(root)
    for _ in range(ROUNDS):
        evict(root)
        op("verify_deep", lambda: (*cli("verify", str(root), "--deep", "--json")[:2], None))
    best = {name: min(run["seconds"] for run in runs) for name, runs in res.items() if isinstance(runs, list)}
    deep = res["live_bytes"] / best["verify_deep"] / res["disk_read_bytes_per_s"]
    exact = min(run["exact_p50_s"] for run in res["query"]) / best["exact_numpy"]
    knn = min(run["knn_p50_s"] for run in res["query"])
    res["checks"] = {
        "open_s": {"value": best["open"], "target": "≤ 2", "pass": best["open"] <= 2},
        "info_s": {"value": best["info"], "target": "≤ 2", "pass": best["info"] <= 2},
        "verify_s": {"value": best["verify"], "target": "≤ 2", "pass": best["verify"] <= 2},
        "verify_deep_vs_disk": {"value": deep, "target": "≥ 0.5", "pass": deep >= 0.5},
        "exact_vs_numpy_scan": {"value": exact, "target": "≤ 1.5", "pass": exact <= 1.5},
        "knn_p50_ms": {"value": knn * 1000, "target": "≤ 30", "pass": knn <= 0.030},
    }
    return res


OPS = ["open", "info", "verify", "verify_deep", "sql_group_by", "sql_join", "index", "index_add_1pct",
       "compress_v64", "forget_100", "compact", "collect_decision"]
QUERY_OPS = ["exact_p50_s", "knn_p50_s"]


def growth(results: dict[int, dict[str, Any]]) -> dict[str, list[float]]:
    ns = sorted(results)
    out: dict[str, list[float]] = {}
    for name in OPS + QUERY_OPS:
        exps = []
        for a, b in itertools.pairwise(ns):
            ta, tb = _seconds(results[a], name), _seconds(results[b], name)
            exps.append(math.log(tb / ta) / math.log(b / a) if ta > 0 and tb > 0 else float("nan"))
        out[name] = exps
    return out


def _seconds(res: dict[str, Any], name: str) -> float:
    if name in QUERY_OPS:
        return float(res["query_after_all"][name])
    return float(res[name]["seconds"])


def targets(results: dict[int, dict[str, Any]], grow: dict[str, list[float]]) -> dict[str, Any]:
    n = max(results)
    r = results[n]
    last = {k: v[-1] for k, v in grow.items() if v}
    checks: dict[str, tuple[float, str, bool]] = {}

    def check(name: str, value: float, rule: str, ok: bool) -> None:
        checks[name] = (round(value, 4), rule, bool(ok))

    for name, e in last.items():
        limit = 1.15 if name == "index" else 1.1
        check(f"growth_{name}", e, f"≤ {limit}", e <= limit)
    check("index_s", r["index"]["seconds"], "≤ 900", r["index"]["seconds"] <= 900)
    check("index_add_1pct_s", r["index_add_1pct"]["seconds"], "≤ 60", r["index_add_1pct"]["seconds"] <= 60)
    check("index_ram_gb", r["index_loaded"]["index_ram_mb"] / 1024, "≤ 4", r["index_loaded"]["index_ram_mb"] <= 4096)
    check("recall_at_10", r["index_loaded"]["recall_at_10"], "≥ 0.95", r["index_loaded"]["recall_at_10"] >= 0.95)
    after = r["query_after_all"]
    check("knn_p50_ms", after["knn_p50_s"] * 1000, "≤ 30", after["knn_p50_s"] <= 0.030)
    ratio = after["exact_p50_s"] / r["exact_numpy"]["seconds"]
    check("exact_vs_numpy_scan", ratio, "≤ 1.5", ratio <= 1.5)
    for m in ("exact", "knn"):
        q = after[f"{m}_p50_s"] / r["query_after_10"][f"{m}_p50_s"]
        check(f"{m}_after_all_vs_after_10", q, "≤ 1.2", q <= 1.2)
    check("sql_join_s", r["sql_join"]["seconds"], "≤ 2", r["sql_join"]["seconds"] <= 2)
    for name in ("open", "info", "verify"):
        check(f"{name}_s", r[name]["seconds"], "≤ 2", r[name]["seconds"] <= 2)
    deep = r["verify_deep"]["bytes_per_s"] / r["disk_read_bytes_per_s"]
    check("verify_deep_vs_disk", deep, "≥ 0.5", deep >= 0.5)
    check("forget_100_then_compact_s", r["forget_compact_s"], "≤ 120", r["forget_compact_s"] <= 120)
    check("collect_decision_s", r["collect_decision"]["seconds"], "≤ 60", r["collect_decision"]["seconds"] <= 60)
    floor = r["collect_decision"]["seconds"] / r["collect_floor"]["seconds"]
    check("collect_decision_vs_hashing_floor", floor, "(report)", True)
    return {"n": n, "checks": {k: {"value": v, "target": rule, "pass": ok} for k, (v, rule, ok) in checks.items()}}


def plot(results: dict[int, dict[str, Any]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    ns = sorted(results)
    fig, ax = plt.subplots(figsize=(8, 5.5))
    styles = ["-", "--", ":"]  # the color cycle repeats after ten lines: the line style tells them apart
    for i, name in enumerate(OPS + QUERY_OPS):
        ax.plot(
            ns,
            [_seconds(results[n], name) for n in ns],
            marker="os^"[i // 10 % 3],
            linestyle=styles[i // 10 % 3],
            label=name.replace("_p50_s", " query p50"),
        )
    ref = _seconds(results[ns[0]], "index")
    ax.plot(ns, [ref * n / ns[0] for n in ns], "k--", linewidth=0.8, label="∝ N (for reference)")
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("training samples N (K = 10, v = 256)")
    ax.set_ylabel("seconds (2 CPU cores)")
    ax.set_title("dmin at scale: each command's cost against the project's size")
    ax.legend(fontsize=7, ncol=2)
    ax.grid(True, which="both", alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, nargs="+", default=[10_000, 100_000, 1_000_000])
    ap.add_argument("--queries", type=int, default=10_000, help="committed queries before the second measurement")
    ap.add_argument("--quick", action="store_true", help="N = 2,000 and 50 queries (the test suite)")
    ap.add_argument("--work", type=Path, default=None, help="where projects are built (default: a temp folder)")
    ap.add_argument("--keep", action="store_true", help="keep the projects")
    ap.add_argument("--plot", type=Path, default=None, help="draw seconds against N here (PNG)")
    ap.add_argument("--json", action="store_true")
    ap.add_argument("--child", default=None, help=argparse.SUPPRESS)
    ap.add_argument("--existing", type=Path, default=None,
                    help="re-measure the per-call operations on a kept run's folder (…/n1000000); --n gives its N")
    args, rest = ap.parse_known_args()
    if args.existing:
        say_err = (lambda text: None) if args.json else (lambda text: print(text, file=sys.stderr, flush=True))
        print(json.dumps({"existing": measure_existing(args.existing, args.n[0], say_err)}))
        return
    if args.child:
        fn = CHILDREN[args.child]
        print(json.dumps(fn(*[int(x) if x.isdigit() else x for x in rest])))
        return
    if args.quick:
        args.n, args.queries = [2000], 50
    work = Path(args.work or tempfile.mkdtemp(prefix="dmin-scale-"))
    say = (lambda text: None) if args.json else (lambda text: print(text, file=sys.stderr, flush=True))
    results: dict[int, dict[str, Any]] = {}
    try:
        for n in args.n:
            folder = work / f"n{n}"
            shutil.rmtree(folder, ignore_errors=True)
            folder.mkdir(parents=True)
            results[n] = run(n, args.queries, folder, say)
            if not args.keep:
                shutil.rmtree(folder, ignore_errors=True)
            print(json.dumps({"partial": n, **results[n]}), file=sys.stderr, flush=True)
    finally:
        if not args.keep and args.work is None:
            shutil.rmtree(work, ignore_errors=True)
    grow = growth(results)
    out = {"results": {str(n): r for n, r in results.items()}, "growth": grow, "targets": targets(results, grow)}
    if args.plot:
        plot(results, args.plot)
    if not args.json:
        for name, c in out["targets"]["checks"].items():
            print(f"{'pass' if c['pass'] else 'FAIL'}  {name} = {c['value']} (target {c['target']})")
    print(json.dumps(out))


if __name__ == "__main__":
    main()
