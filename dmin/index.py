"""HNSW index over each sample's K per-timestep vectors concatenated (inner-product space), labels = row_id.

For v > GRAPH_V the graph is built over vectors folded to GRAPH_V (dim K·GRAPH_V: ~10× cheaper per distance) and
its candidates are re-ranked exactly at v in place, from the committed grads files' mapped pages (no second copy
of the vectors on disk). Scores are therefore true inner products at v, never hnswlib distances.

Each build is a new folder index/v=V/bNNNNNN-<token> committed through the manifest, superseding the previous build,
so a build killed at any instant leaves the previous index valid. The index binary is checksummed before hnswlib
loads it (a damaged file must never crash the interpreter). Forgotten samples are never returned: every search
filters its candidates by the live row ids (hnswlib's filter), which honours a tombstone at once for every build,
incremental ones included; `compact` rebuilds graphs without them.
"""

from __future__ import annotations

import errno
import json
import shutil
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import torch
import xxhash

from dmin.compress import fold
from dmin.errors import IndexStale, IntegrityError, UsageError
from dmin.findings import Findings
from dmin.kernels.dot import timestep_dots, timestep_dots_rows
from dmin.score import Scores, exact_scores
from dmin.store import paths
from dmin.store.atomic import file_checksum, write_atomic, write_bytes_atomic, write_parquet_atomic
from dmin.store.manifest import Entry, FileRef
from dmin.store.project import Commit, Project, Stage
from dmin.store.vectors import VectorBlock, iter_blocks
from dmin.stored_v import resolve_v

GRAPH_V = 256
RERANK_FACTOR = 16  # candidates re-ranked exactly per result wanted: recall 0.997 at N=10^4 (scripts/bench_query.py)


@dataclass(frozen=True)
class IndexParams:
    m: int = 16
    ef_construction: int = 200
    threads: int = 0  # 0: all cores

    def __post_init__(self) -> None:
        if self.m < 2:
            raise UsageError(f"--m must be at least 2, got {self.m}")
        if self.ef_construction < 1:
            raise UsageError(f"--ef-construction must be positive, got {self.ef_construction}")


def labels_checksum(row_ids: np.ndarray, sample_ids: list[str]) -> str:
    """xxh3-128 over the sorted (row_id, sample_id) set an index holds."""
    order = np.argsort(row_ids, kind="stable")
    h = xxhash.xxh3_128()
    for i in order:
        h.update(f"{int(row_ids[i])}:{sample_ids[i]}\n".encode())
    return h.hexdigest()


def committed_rows(project: Project) -> dict[str, int]:
    """sample_id → row_id of every live (committed, not forgotten) sample."""
    table = project.read_table("samples", columns=["sample_id", "row_id"])
    if table is None:
        return {}
    return dict(zip(table.column("sample_id").to_pylist(), table.column("row_id").to_pylist(), strict=True))


def graph_vectors(vecs: np.ndarray, graph_v: int) -> np.ndarray:
    """(N, K, v) → (N, K·graph_v) float32: the vectors the graph is built over."""
    t = torch.from_numpy(np.ascontiguousarray(vecs, dtype=np.float32))
    if t.shape[-1] != graph_v:
        t = fold(t, graph_v)
    return t.reshape(t.shape[0], -1).numpy()


def build_index(
    project: Project,
    v: str,
    params: IndexParams,
    rebuild: bool = False,
    progress: Callable[[int, int], None] | None = None,
) -> tuple[Entry | None, dict[str, Any]]:
    """Build (or extend) the index for v; returns the new manifest entry (None when already current) and info.
    When another build for v is committed first, this one is dropped and redone on top of it."""
    if str(v).strip().lower() == "full":
        raise UsageError("index a compressed v (e.g. --v 4096); v=full is for exact scoring and validation")
    v = resolve_v(project, v)
    while True:
        old = current_index(project, v)
        prev = None if rebuild else old
        if prev is not None and not _new_rows(project, prev):
            return None, {"added": 0, "count": len(prev.labels), "build": prev.meta["build"]}
        folder, written, built = write_build(project, v, params, prev, progress)
        entry = project.transact(_commit_build(project, v, old, written, built))
        if entry is not None:
            return entry, built
        shutil.rmtree(folder, ignore_errors=True)  # another build for v was committed first: redo on top of it


def _commit_build(
    project: Project, v: str, old: LoadedIndex | None, written: list[tuple[str, Path]], built: dict[str, Any]
) -> Callable[[Stage], Commit | None]:
    """The plan that commits a written build, superseding the current one; it commits nothing when another build
    for v landed since `old` (the one this build extends or replaces)."""

    def plan(stage: Stage) -> Commit | None:
        cur = current_index(project, v)
        if _meta_path(cur) != _meta_path(old):
            return None
        files = [stage.adopt(table, table, v, path) for table, path in written]
        meta = {"v": v, "build": built["build"], "count": built["count"]}
        return Commit("index", files, meta, [f.path for f in cur.files.values()] if cur else [])

    return plan


def _meta_path(idx: LoadedIndex | None) -> str | None:
    return idx.files["index_meta"].path if idx is not None else None


def _new_rows(project: Project, prev: LoadedIndex) -> bool:
    have = set(prev.labels.tolist())
    return any(r not in have for r in committed_rows(project).values())


def write_build(
    project: Project,
    v: str,
    params: IndexParams,
    prev: LoadedIndex | None,
    progress: Callable[[int, int], None] | None = None,
) -> tuple[Path, list[tuple[str, Path]], dict[str, Any]]:
    """Write a build of the index for v into a new folder, extending `prev` with the live samples it lacks (or, with
    no prev, over every live sample). Returns the folder, its files as (table, path) and {added, count, build};
    nothing is committed."""
    import hnswlib

    ident = project.identity
    V = int(v)
    graph_v = min(V, GRAPH_V)
    K = ident.K
    dim = K * graph_v
    rows = committed_rows(project)
    have: set[int] = set(prev.labels.tolist()) if prev is not None else set()
    new_keys: list[str] = []
    new_vecs = []
    for block in iter_blocks(project, v):
        keep = [i for i in block.live_rows() if rows.get(block.keys[i]) is not None and rows[block.keys[i]] not in have]
        if keep:  # folded block by block: memory holds the graph's vectors (K·graph_v each), not the data's
            new_keys.extend(block.keys[i] for i in keep)
            new_vecs.append(graph_vectors(block.vecs[keep], graph_v))
    vecs = np.concatenate(new_vecs) if new_vecs else np.zeros((0, dim), np.float32)
    labels = np.asarray([rows[s] for s in new_keys], dtype=np.int64)
    total = len(labels) + (len(prev.labels) if prev else 0)
    graph = hnswlib.Index(space="ip", dim=dim)
    if prev is not None:
        graph.load_index(str(project.checked(prev.files["index"])), max_elements=max(total, 1))
    else:
        graph.init_index(max_elements=max(total, 1), ef_construction=params.ef_construction, M=params.m, random_seed=0)
    graph.set_num_threads(params.threads or max(1, torch.get_num_threads()))
    step = 2048
    for lo in range(0, len(labels), step):
        graph.add_items(vecs[lo : lo + step], labels[lo : lo + step])
        if progress:
            progress(min(lo + step, len(labels)), len(labels))
    build = (prev.meta["build"] + 1) if prev else _next_build(project, v)
    folder = project.root / paths.index_dir(v, build, uuid.uuid4().hex[:12])
    folder.mkdir(parents=True, exist_ok=True)

    def save(tmp: Path) -> None:
        # hnswlib does not report failed writes (a full disk leaves a short file): load it back before committing
        graph.save_index(str(tmp))
        check = hnswlib.Index(space="ip", dim=dim)
        try:
            check.load_index(str(tmp), max_elements=max(total, 1))
        except RuntimeError as exc:
            raise OSError(errno.ENOSPC, "the index file was written incompletely (disk full?)", str(tmp)) from exc

    try:
        write_atomic(folder / "hnsw.bin", save)
        all_labels = np.concatenate([prev.labels, labels]) if prev else labels
        all_ids = [*prev.sample_ids, *new_keys] if prev else new_keys
        write_parquet_atomic(
            folder / "labels.parquet",
            pa.table({"row_id": pa.array(all_labels, pa.int64()), "sample_id": pa.array(all_ids, pa.string())}),
        )
        info = {
            "v": v,
            "graph_v": graph_v,
            "dim": dim,
            "count": len(all_labels),
            "m": params.m,
            "ef_construction": params.ef_construction,
            "space": "ip",
            "identity_hash": ident.hash(),
            "labels_checksum": labels_checksum(all_labels, all_ids),
            "build": build,
            "K": K,
        }
        write_bytes_atomic(folder / "index.json", (json.dumps(info, indent=2, sort_keys=True) + "\n").encode())
    except BaseException:
        shutil.rmtree(folder, ignore_errors=True)
        raise
    written = [
        ("index", folder / "hnsw.bin"),
        ("index_labels", folder / "labels.parquet"),
        ("index_meta", folder / "index.json"),
    ]
    return folder, written, {"added": len(labels), "count": len(all_labels), "build": build}


def _next_build(project: Project, v: str) -> int:
    builds = [
        paths.build_of(f.path) for e in project.entries() for f in e.files if f.table == "index_meta" and f.v == v
    ]
    return max(builds, default=0) + 1


@dataclass
class RowSource:
    """Where each live sample's vectors at v lie in the committed grads files: re-ranking reads them in place."""

    blocks: list[VectorBlock]
    where: dict[str, tuple[int, int]]  # sample_id → (block, row)

    @classmethod
    def of(cls, project: Project, v: str) -> RowSource:
        blocks = list(iter_blocks(project, v))
        where = {block.keys[i]: (b, int(i)) for b, block in enumerate(blocks) for i in block.live_rows()}
        return cls(blocks, where)

    def dots(self, sample_ids: list[str], query: np.ndarray) -> np.ndarray:
        """(len(sample_ids), K) per-timestep inner products with the query, file by file."""
        out = np.empty((len(sample_ids), query.shape[0]), dtype=np.float64)
        spots = np.asarray([self.where[s] for s in sample_ids], dtype=np.int64).reshape(-1, 2)
        for b in np.unique(spots[:, 0]):
            at = np.flatnonzero(spots[:, 0] == b)
            vecs = self.blocks[int(b)].vecs
            if vecs.dtype == np.float32:
                out[at] = timestep_dots_rows(vecs, spots[at, 1], query)
            else:  # float16 storage: widen the few rows needed
                out[at] = timestep_dots(vecs[spots[at, 1]].astype(np.float32), query)
        return out


@dataclass
class LoadedIndex:
    files: dict[str, FileRef]  # index, index_labels, index_meta → the build's committed files
    dir: Path
    meta: dict[str, Any]
    labels: np.ndarray
    sample_ids: list[str]
    graph: Any = None
    live: set[int] | None = None  # live row ids, computed once per load: searches return only these
    missing: int | None = None  # live samples the index lacks, computed once per load
    pos_of: dict[int, int] | None = None  # row_id → position in labels
    rows: RowSource | None = None  # the vectors at v, for re-ranking (when the graph is over a fold)


def current_index(project: Project, v: str) -> LoadedIndex | None:
    """The latest committed build for v (metadata, labels and re-rank vectors; the graph loads lazily)."""
    metas = project.live_files("index_meta", v)
    if not metas:
        return None
    meta_ref = metas[-1]
    folder = meta_ref.path.rsplit("/", 1)[0]
    files = {f.table: f for f in project.entry_of(meta_ref.path).files if f.path.rsplit("/", 1)[0] == folder}
    if set(files) != {"index", "index_labels", "index_meta"}:
        raise IntegrityError(f"{folder}: index build for v={v} is incomplete; rebuild with `dmin index --rebuild`")
    try:
        meta = json.loads(project.checked(meta_ref).read_text(errors="replace"))
        labels_table = pq.read_table(project.checked(files["index_labels"]))
    except (OSError, ValueError, pa.ArrowException) as exc:
        raise IntegrityError(
            f"index for v={v} is unreadable ({exc}); rebuild with `dmin index --v {v} --rebuild`"
        ) from exc
    if meta.get("identity_hash") != project.identity.hash():
        raise IntegrityError(
            f"index for v={v} was built for a different identity; rebuild with `dmin index --v {v} --rebuild`"
        )
    labels = labels_table.column("row_id").to_numpy()
    return LoadedIndex(files, project.root / folder, meta, labels, labels_table.column("sample_id").to_pylist())


def load_graph(project: Project, idx: LoadedIndex) -> Any:
    """Load hnsw.bin after checking its size and checksum against the manifest."""
    import hnswlib

    ref = idx.files["index"]
    path = project.root / ref.path
    if not path.is_file() or path.stat().st_size != ref.bytes or file_checksum(path) != ref.xxh3:
        raise IntegrityError(
            f"{ref.path}: index file does not match its manifest checksum; "
            f"rebuild with `dmin index --v {idx.meta['v']} --rebuild`"
        )
    graph = hnswlib.Index(space="ip", dim=int(idx.meta["dim"]))
    try:
        graph.load_index(str(path), max_elements=max(1, int(idx.meta["count"])))
    except RuntimeError as exc:
        raise IntegrityError(
            f"{ref.path}: hnswlib cannot load the index ({exc}); rebuild with `dmin index --v "
            f"{idx.meta['v']} --rebuild`"
        ) from exc
    idx.graph = graph
    return graph


def stale_count(project: Project, idx: LoadedIndex) -> int:
    """How many live samples the index lacks."""
    have = set(idx.labels.tolist())
    return sum(r not in have for r in committed_rows(project).values())


def knn(
    project: Project, idx: LoadedIndex, query: np.ndarray, k: int, ef: int = 100, allow_stale: bool = False
) -> tuple[list[str], np.ndarray, np.ndarray]:
    """Top-k by the index: (sample_ids, total scores, per-timestep scores), exact inner products at v; forgotten
    samples are filtered out of the search."""
    if idx.live is None:
        rows = set(committed_rows(project).values())
        idx.live = rows
        idx.missing = len(rows - set(idx.labels.tolist()))
    missing = idx.missing
    if missing and not allow_stale:
        raise IndexStale(
            f"the v={idx.meta['v']} index misses {missing} committed sample(s); run `dmin index "
            f"{project.root} --v {idx.meta['v']}` (or pass --allow-stale)"
        )
    graph = idx.graph or load_graph(project, idx)
    K, V, graph_v = int(idx.meta["K"]), int(idx.meta["v"]), int(idx.meta["graph_v"])
    live = idx.live
    count = sum(int(r) in live for r in idx.labels)
    k = min(k, count)
    if k == 0:
        return [], np.zeros(0), np.zeros((0, K))
    rerank = graph_v != V
    want = min(count, k * RERANK_FACTOR if rerank else k)
    graph.set_ef(max(ef, want))
    gq = graph_vectors(query[None].astype(np.float32), graph_v)
    only_live = None if count == len(idx.labels) else (lambda label: label in live)
    labels, _ = graph.knn_query(gq, k=want, filter=only_live)
    labels = labels[0].astype(np.int64)
    if idx.pos_of is None:
        idx.pos_of = {int(r): i for i, r in enumerate(idx.labels)}
    pos = np.sort([idx.pos_of[int(r)] for r in labels])  # ties go to the earlier row, as in exact scoring
    ids = [idx.sample_ids[int(p)] for p in pos]
    if rerank:
        if idx.rows is None:
            idx.rows = RowSource.of(project, str(V))
        per_t = idx.rows.dots(ids, query)
    else:
        by_label = dict(zip(labels.tolist(), graph.get_items(labels, return_type="numpy"), strict=True))
        cand = np.stack([by_label[int(idx.labels[p])] for p in pos]).reshape(-1, K, graph_v)
        per_t = timestep_dots(np.ascontiguousarray(cand, dtype=np.float32), query)
    total = per_t.sum(1)
    best = np.lexsort((pos, -total))[:k]
    return [ids[int(i)] for i in best], total[best], per_t[best]


def verify_indexes(project: Project, ver: Findings) -> None:
    """Index checks for `verify`: checksum, label set, stale/unknown labels, and (deep) a recall self-test."""
    known = None
    for v in project.identity.vs:
        metas = project.live_files("index_meta", v)
        if not metas:
            continue
        build = project.entry_of(metas[-1].path)
        ref = next((f for f in build.files if f.table == "index" and f.v == v), None)
        if ref is None:
            ver.defect("index", f"index/v={v}", "index entry names no hnsw.bin")
            continue
        path = project.root / ref.path
        if path.is_file() and path.stat().st_size == ref.bytes and file_checksum(path) != ref.xxh3:
            ver.defect("index", ref.path, "index binary checksum differs from the manifest")
            continue
        try:
            idx = current_index(project, v)
        except IntegrityError as exc:
            ver.defect("index", f"index/v={v}", str(exc))
            continue
        if idx is None:
            continue
        ver.checked["indexes"] += 1
        if labels_checksum(idx.labels, idx.sample_ids) != idx.meta.get("labels_checksum"):
            ver.defect(
                "index", idx.files["index_labels"].path, "label set does not match the checksum recorded in index.json"
            )
            continue
        if idx.meta.get("identity_hash") != project.identity.hash():
            ver.defect("index", idx.files["index_meta"].path, "index was built for a different identity")
        if known is None:  # every committed row id, forgotten ones included: a forgotten label is filtered, not unknown
            every = project.read_table("samples", columns=["row_id"], live=False)
            known = set() if every is None else set(every.column("row_id").to_pylist())
        unknown = [int(r) for r in idx.labels if int(r) not in known]
        if unknown:
            ver.defect(
                "index", f"index/v={v}", f"{len(unknown)} label(s) name no committed sample (e.g. row_id {unknown[0]})"
            )
            continue
        stale = stale_count(project, idx)
        if stale:
            ver.warn("index", f"index/v={v}", f"stale: misses {stale} committed sample(s); run `dmin index`")
        if ver.deep:
            recall = self_test_recall(project, idx)
            ver.checked["index_self_test"] += 1
            if recall is not None and recall < 0.9:
                ver.defect("index", f"index/v={v}", f"self-test recall@10 = {recall:.3f} < 0.9 against exact scoring")


def self_test_recall(project: Project, idx: LoadedIndex, queries: int = 20, k: int = 10) -> float | None:
    """Query ≥ 20 live stored samples through the index; mean recall@10 against exact scoring (None if too few)."""
    v = str(idx.meta["v"])
    picked: list[np.ndarray] = []
    for block in iter_blocks(project, v):
        for i in block.live_rows()[: max(0, queries - len(picked))]:
            picked.append(np.asarray(block.vecs[i], dtype=np.float32))
    if not picked:
        return None
    hits = 0.0
    indexed = set(idx.sample_ids)  # a stale index is judged on the samples it holds (staleness is a warning)
    held = None
    for q in picked:
        exact = exact_scores(project, v, q)
        if held is None:
            held = np.fromiter((s in indexed for s in exact.ids), bool, len(exact.ids))
        top = Scores(exact.ids, exact.per_t, np.where(held, exact.total, -np.inf)).top(min(k, int(held.sum())))
        want = {exact.ids[i] for i in top}
        got, _, _ = knn(project, idx, q, k, ef=max(100, 4 * k), allow_stale=True)
        hits += len(want & set(got)) / max(1, len(want))
    return hits / len(picked)
