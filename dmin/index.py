"""HNSW index over each sample's K per-timestep vectors concatenated (inner-product space), labels = row_id.

The graph is built over vectors folded to `graph_v` per timestep (256, halved while the graph's vectors would pass
2 GB: 32 for a million samples at K = 10, 1.4 GB of hnswlib memory where v = 256 would take 10 GB) and its
candidates are re-ranked exactly at v in place, from the committed grads files' mapped pages (no second copy of
the vectors on disk). Scores are therefore true inner products at v, never hnswlib distances; the fold only
decides which candidates are looked at.

Each build is a new folder index/v=V/bNNNNNN-<token> committed through the manifest, superseding the previous build,
so a build killed at any instant leaves the previous index valid. The index binary is checksummed before hnswlib
loads it (a damaged file must never crash the interpreter). Forgotten samples are never returned: a loaded graph
marks their labels deleted, which honours a tombstone at once for every build, incremental ones included; `compact`
then erases them from the graph file (vector overwritten with zeros, label deleted), without a rebuild.
"""

from __future__ import annotations

import errno
import json
import os
import shutil
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import xxhash

from dmin.errors import IndexStale, IntegrityError, UsageError
from dmin.store import paths
from dmin.store.atomic import write_atomic, write_bytes_atomic, write_parquet_atomic
from dmin.store.builds import commit_build
from dmin.store.manifest import Entry, FileRef
from dmin.store.project import Project
from dmin.store.tables import labels_table
from dmin.store.vectors import VectorBlock, iter_blocks, prefetch_rows
from dmin.topk import TopK
from dmin.vs import resolve_v

GRAPH_V = 256  # graph dims per timestep at most; fewer once the graph would pass GRAPH_BYTES (`graph_v_for`)
GRAPH_BYTES = 2 << 30  # the graph's vectors' budget: 10^6 samples at K = 10 get v = 32 (1.4 GB loaded, links included)
MIN_GRAPH_V = 16
RERANK_FACTOR = 16  # candidates re-ranked exactly per result wanted: recall@10 0.98 at N = 10^5 (bench_scale.py)
_ADD_ROWS = 8192  # rows handed to hnswlib per add_items call (its threads split each call)
SELF_TEST_QUERIES = 20
SELF_TEST_K = 10
SELF_TEST_DEPTH = 4 * SELF_TEST_K  # answers stored per query: forgetting up to 30 of them leaves the top-10 known


@dataclass(frozen=True)
class IndexParams:
    m: int = 16
    ef_construction: int = 200
    threads: int = 0  # 0: all cores
    graph_v: int | None = None  # None: `graph_v_for` the project's size

    def __post_init__(self) -> None:
        if self.m < 2:
            raise UsageError(f"--m must be at least 2, got {self.m}")
        if self.ef_construction < 1:
            raise UsageError(f"--ef-construction must be positive, got {self.ef_construction}")
        if self.graph_v is not None and (self.graph_v < 1 or self.graph_v & (self.graph_v - 1)):
            raise UsageError(f"--graph-v must be a power of two such as 32, got {self.graph_v}")


def graph_v_for(samples: int, K: int, v: int) -> int:
    """The graph's dims per timestep for a project of this size: GRAPH_V (or v) while the graph's vectors fit
    GRAPH_BYTES, halved until they do (never under MIN_GRAPH_V). Re-ranking at v keeps scores exact; a smaller
    graph only sees candidates less sharply (recall@10 0.98 at 10^5 clustered samples with v = 32)."""
    graph_v = min(v, GRAPH_V)
    while graph_v > MIN_GRAPH_V and samples * K * graph_v * 4 > GRAPH_BYTES:
        graph_v //= 2
    return graph_v


LABELS_CHECKSUM = 2  # 2: over the sorted row ids' and sample_ids' Arrow buffers (1: a text line per label)


def labels_checksum(row_ids: np.ndarray, sample_ids: pa.Array, version: int = LABELS_CHECKSUM) -> str:
    """xxh3-128 over the (row_id, sample_id) set an index holds, sorted by row id: its little-endian int64 row ids,
    then the sample_ids' offsets and bytes (a million labels hash in milliseconds). Version 1, of builds made
    before, is a text line per label."""
    order = np.argsort(row_ids, kind="stable")
    h = xxhash.xxh3_128()
    if version == 1:
        ids = sample_ids.to_pylist()
        for i in order:
            h.update(f"{int(row_ids[i])}:{ids[i]}\n".encode())
        return h.hexdigest()
    ids = sample_ids.cast(pa.string()).take(pa.array(order))
    offsets = np.frombuffer(ids.buffers()[1], np.int32)[ids.offset : ids.offset + len(ids) + 1]
    data = ids.buffers()[2]
    h.update(np.ascontiguousarray(row_ids[order], dtype="<i8").tobytes())
    h.update((offsets - offsets[0]).astype("<i4").tobytes())
    if data is not None:
        h.update(memoryview(data)[offsets[0] : offsets[-1]])
    return h.hexdigest()


def labels_ok(idx: LoadedIndex) -> bool:
    """Whether the labels read back are the set the build recorded."""
    version = int(idx.meta.get("labels_checksum_version", 1))
    return labels_checksum(idx.labels, idx.sample_ids, version) == idx.meta.get("labels_checksum")


def live_row_mask(project: Project, size: int = 0) -> np.ndarray:
    """A bool mask over row ids: True for every live (committed, not forgotten) sample. From the samples' row_id
    column (0.15 s at 10^6), not the sample_id key set, which a process that only checks staleness (`verify`,
    `info`) would build for nothing (0.85 s)."""
    live = project.read_table("samples", columns=["row_id"])
    rows = np.zeros(0, np.int64) if live is None else live.column("row_id").to_numpy()
    mask = np.zeros(max(size, project.next_row_id(), int(rows.max()) + 1 if len(rows) else 0), bool)
    mask[rows] = True
    return mask


def graph_vectors(vecs: np.ndarray, graph_v: int) -> np.ndarray:
    """(N, K, v) → (N, K·graph_v) float32: the vectors the graph is built over, folded as `compress.fold` folds
    (each of graph_v entries sums a contiguous run of v / graph_v)."""
    n, K, v = vecs.shape
    out = np.asarray(vecs, dtype=np.float32)
    if v != graph_v:
        out = out.reshape(n, K, graph_v, v // graph_v).sum(-1, dtype=np.float64).astype(np.float32)
    return np.ascontiguousarray(out.reshape(n, -1))


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
        if prev is not None and not stale_count(project, prev):
            return None, {"added": 0, "count": len(prev.labels), "build": prev.meta["build"]}
        folder, written, built = write_build(project, v, params, prev, progress)
        meta = {"v": v, "build": built["build"], "count": built["count"]}
        entry = commit_build(project, "index", v, lambda: current_index(project, v), old, folder, written, meta)
        if entry is not None:
            return entry, built
        # another build for v was committed first: redo on top of it


def _new_rows(project: Project, v: str, have: np.ndarray) -> Iterator[tuple[np.ndarray, np.ndarray, pa.Array]]:
    """(vectors, row_ids, sample_ids) of the live samples at v whose row ids are not in `have`, file by file."""
    keys = project.sample_keys()
    held = np.zeros(max(project.next_row_id(), int(have.max()) + 1 if len(have) else 0), bool)
    held[have] = True
    for block in iter_blocks(project, v, keep=False):
        rows = keys.lookup(block.keys)  # a forgotten row of a sample collected again maps to its new row: drop it
        keep = (rows >= 0) if block.alive is None else (rows >= 0) & block.alive
        keep[keep] = ~held[rows[keep]]
        if keep.any():
            at = np.flatnonzero(keep)
            yield block.vecs[at], rows[at], block.keys.take(pa.array(at))


def write_build(
    project: Project,
    v: str,
    params: IndexParams,
    prev: LoadedIndex | None,
    progress: Callable[[int, int], None] | None = None,
) -> tuple[Path, list[tuple[str, Path]], dict[str, Any]]:
    """Write a build of the index for v into a new folder, extending `prev` with the live samples it lacks (or, with
    no prev, over every live sample). Vectors go to hnswlib file by file, folded to the graph's v, so memory holds
    the graph and one batch, never the data. Returns the folder, its files as (table, path) and {added, count,
    build}; nothing is committed."""
    import hnswlib

    ident = project.identity
    K = ident.K
    have = prev.labels if prev is not None else np.zeros(0, np.int64)
    todo = stale_count(project, prev) if prev is not None else len(project.sample_keys())
    if prev is not None:
        graph_v = int(prev.meta["graph_v"])
    else:
        graph_v = min(int(v), params.graph_v) if params.graph_v else graph_v_for(todo, K, int(v))
    dim = K * graph_v
    elements = (int(prev.meta.get("elements", len(prev.labels))) if prev is not None else 0) + todo
    graph = hnswlib.Index(space="ip", dim=dim)
    if prev is not None:
        graph.load_index(str(project.checked(prev.files["index"])), max_elements=max(elements, 1))
    else:
        graph.init_index(
            max_elements=max(elements, 1), ef_construction=params.ef_construction, M=params.m, random_seed=0
        )
    graph.set_num_threads(params.threads or max(1, len(os.sched_getaffinity(0))))
    test = SelfTestBuild.after(project, prev)
    new_rows: list[np.ndarray] = []
    new_ids: list[pa.Array] = []
    pending: list[tuple[np.ndarray, np.ndarray]] = []
    added = 0

    def flush() -> None:
        nonlocal added
        if pending:
            graph.add_items(np.concatenate([g for g, _ in pending]), np.concatenate([r for _, r in pending]))
            added += sum(len(r) for _, r in pending)
            pending.clear()
            if progress:
                progress(added, todo)

    for vecs, rows, ids in _new_rows(project, v, have):
        pending.append((graph_vectors(vecs, graph_v), rows))
        test.add(vecs, ids)
        new_rows.append(rows)
        new_ids.append(ids)
        if sum(len(r) for _, r in pending) >= _ADD_ROWS:
            flush()
    flush()
    labels = np.concatenate([have, *new_rows]).astype(np.int64)
    sample_ids = pa.concat_arrays([prev.sample_ids if prev is not None else pa.array([], pa.string()), *new_ids])
    build = (prev.meta["build"] + 1) if prev else _next_build(project, v)
    meta = {
        "v": v,
        "graph_v": graph_v,
        "dim": dim,
        "count": len(labels),
        "elements": (int(prev.meta.get("elements", len(prev.labels))) if prev else 0) + added,
        "m": int(prev.meta["m"]) if prev else params.m,
        "ef_construction": int(prev.meta["ef_construction"]) if prev else params.ef_construction,
        "space": "ip",
        "identity_hash": ident.hash(),
        "labels_checksum": labels_checksum(labels, sample_ids),
        "labels_checksum_version": LABELS_CHECKSUM,
        "build": build,
        "K": K,
    }
    answers = test.meta()
    if answers is not None:
        meta["self_test"] = answers
    folder, written = save_build(project, v, graph, labels, sample_ids, meta)
    return folder, written, {"added": added, "count": len(labels), "build": build}


def save_build(
    project: Project, v: str, graph: Any, labels: np.ndarray, sample_ids: pa.Array, meta: dict[str, Any]
) -> tuple[Path, list[tuple[str, Path]]]:
    """Write a graph, its labels and index.json into a new build folder (not committed); the folder and its files."""
    import hnswlib

    folder = project.root / paths.index_dir(v, int(meta["build"]), uuid.uuid4().hex[:12])
    folder.mkdir(parents=True, exist_ok=True)

    def save(tmp: Path) -> None:
        # hnswlib does not report failed writes (a full disk leaves a short file): load it back before committing
        graph.save_index(str(tmp))
        check = hnswlib.Index(space="ip", dim=int(meta["dim"]))
        try:
            check.load_index(str(tmp), max_elements=max(int(meta["elements"]), 1))
        except RuntimeError as exc:
            raise OSError(errno.ENOSPC, "the index file was written incompletely (disk full?)", str(tmp)) from exc

    try:
        names = paths.INDEX_FILES
        write_atomic(folder / names["index"], save)
        write_parquet_atomic(
            folder / names["index_labels"],
            labels_table(labels, sample_ids),
        )
        write_bytes_atomic(folder / names["index_meta"], (json.dumps(meta, indent=2, sort_keys=True) + "\n").encode())
    except BaseException:
        shutil.rmtree(folder, ignore_errors=True)
        raise
    written = [(table, folder / name) for table, name in paths.INDEX_FILES.items()]
    return folder, written


def erase(
    project: Project, idx: LoadedIndex, live: np.ndarray
) -> tuple[Path, list[tuple[str, Path]], dict[str, Any]] | None:
    """A new build of `idx` without the labels that are not live: each such element's vector is overwritten with
    zeros and marked deleted (hnswlib's `mark_deleted`), in place, with no rebuild; its label leaves labels.parquet.
    None when every label is live. Not committed (`compact` commits it)."""
    keep = live[idx.labels] if len(live) else np.zeros(len(idx.labels), bool)
    if keep.all():
        return None
    graph = read_graph(project, idx)  # its own copy: the loaded one keeps answering queries meanwhile
    gone = idx.labels[~keep]
    graph.add_items(np.zeros((len(gone), int(idx.meta["dim"])), np.float32), gone)  # the stored vector, overwritten
    for label in gone.tolist():
        graph.mark_deleted(label)
    at = np.flatnonzero(keep)
    labels, ids = idx.labels[at], idx.sample_ids.take(pa.array(at))
    meta = {**idx.meta, "count": len(labels), "labels_checksum": labels_checksum(labels, ids)}
    if "self_test" in meta:  # no forgotten sample_id stays in index.json either
        meta["self_test"] = without(meta["self_test"], set(idx.sample_ids.filter(pa.array(~keep)).to_pylist()))
    meta["labels_checksum_version"] = LABELS_CHECKSUM
    meta["build"] = _next_build(project, str(idx.meta["v"]))
    meta.setdefault("elements", len(idx.labels))
    folder, written = save_build(project, str(idx.meta["v"]), graph, labels, ids, meta)
    return folder, written, {"erased": len(gone), "count": len(labels), "build": meta["build"]}


def _next_build(project: Project, v: str) -> int:
    return project.state().max_build.get(v, 0) + 1


@dataclass
class RowSource:
    """Where each live sample's vectors at v lie in the committed grads files, by row id: re-ranking reads them in
    place. Two int arrays over the row ids (8 MB a million samples), built once per loaded index."""

    blocks: list[VectorBlock]
    block_of: np.ndarray  # row_id → block index (-1: none)
    row_in: np.ndarray  # row_id → row within its block

    @classmethod
    def of(cls, project: Project, v: str) -> RowSource:
        keys = project.sample_keys()
        blocks = list(iter_blocks(project, v))
        size = max(project.next_row_id(), 1)
        block_of = np.full(size, -1, np.int32)
        row_in = np.zeros(size, np.int64)
        for b, block in enumerate(blocks):
            rows = keys.lookup(block.keys)
            ok = (rows >= 0) if block.alive is None else (rows >= 0) & block.alive
            block_of[rows[ok]] = b
            row_in[rows[ok]] = np.flatnonzero(ok)
        return cls(blocks, block_of, row_in)

    def vectors(self, row_ids: np.ndarray) -> np.ndarray:
        """(len(row_ids), K, v) float32: the stored vectors of a few rows."""
        return np.stack([np.asarray(self.blocks[self.block_of[r]].vecs[self.row_in[r]], np.float32) for r in row_ids])

    def dots(self, row_ids: np.ndarray, query: np.ndarray) -> np.ndarray:
        """(len(row_ids), K) per-timestep inner products with the query, file by file."""
        from dmin.kernels.dot import timestep_dots, timestep_dots_rows  # numba: loaded when a search needs it
        out = np.empty((len(row_ids), query.shape[0]), dtype=np.float64)
        where = self.block_of[row_ids]
        for b in np.unique(where):  # every file's reads asked for first, so a cold disk serves them together
            prefetch_rows(self.blocks[int(b)].vecs, self.row_in[row_ids[where == b]])
        for b in np.unique(where):
            at = np.flatnonzero(where == b)
            vecs = self.blocks[int(b)].vecs
            rows = self.row_in[row_ids[at]]
            if vecs.dtype == np.float32:
                out[at] = timestep_dots_rows(vecs, rows, query)
            else:  # float16 storage: widen the few rows needed
                out[at] = timestep_dots(vecs[rows].astype(np.float32), query)
        return out


@dataclass
class LoadedIndex:
    files: dict[str, FileRef]  # index, index_labels, index_meta → the build's committed files
    dir: Path
    meta: dict[str, Any]
    labels: np.ndarray  # row ids the graph answers with (live when built; erased ones are not listed)
    sample_ids: pa.Array
    graph: Any = None
    live: np.ndarray | None = None  # bool mask over row ids: searches return only these
    missing: int = 0  # live samples the index lacks
    seen: tuple[int, int] | None = None  # the project's samples_version() that `live` and `missing` reflect
    deleted: set[int] = field(default_factory=set)  # labels marked deleted in the loaded graph
    marked: tuple[int, int] | None = None  # the samples_version() `deleted` reflects
    pos_of: np.ndarray | None = None  # row_id → position in labels (-1: not in the index)
    rows: RowSource | None = None  # the vectors at v, for re-ranking (when the graph is over a fold)


def current_index(project: Project, v: str) -> LoadedIndex | None:
    """The latest committed build for v (metadata and labels; the graph and re-rank vectors load lazily). Kept by
    the Project while it stays current, so a process answering many queries loads each graph once."""
    metas = project.live_files("index_meta", v)
    if not metas:
        return None
    meta_ref = metas[-1]
    cached = project.indexes.get(v)
    if cached is not None and cached.files["index_meta"].path == meta_ref.path:
        return cached
    folder = meta_ref.path.rsplit("/", 1)[0]
    files = {
        f.table: f
        for table in ("index", "index_labels", "index_meta")
        for f in project.live_files(table, v)
        if f.path.rsplit("/", 1)[0] == folder
    }
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
    ids = labels_table.column("sample_id").combine_chunks()
    project.indexes[v] = LoadedIndex(files, project.root / folder, meta, labels, ids)
    return project.indexes[v]


def load_graph(project: Project, idx: LoadedIndex) -> Any:
    """Load hnsw.bin (checked) into `idx`, once."""
    if idx.graph is None:
        idx.graph = read_graph(project, idx)
    return idx.graph


def read_graph(project: Project, idx: LoadedIndex) -> Any:
    """A new hnswlib object from hnsw.bin, after checking its size and checksum against the manifest."""
    import hnswlib

    ref = idx.files["index"]
    try:
        path = project.checked(ref)  # hashed once per process: verify's file pass has already read it
    except IntegrityError as exc:
        raise IntegrityError(
            f"{ref.path}: index file does not match its manifest checksum; "
            f"rebuild with `dmin index --v {idx.meta['v']} --rebuild`"
        ) from exc
    graph = hnswlib.Index(space="ip", dim=int(idx.meta["dim"]))
    try:
        graph.load_index(str(path), max_elements=max(1, int(idx.meta.get("elements", idx.meta["count"]))))
    except RuntimeError as exc:
        raise IntegrityError(
            f"{ref.path}: hnswlib cannot load the index ({exc}); rebuild with `dmin index --v "
            f"{idx.meta['v']} --rebuild`"
        ) from exc
    return graph


def _refresh(project: Project, idx: LoadedIndex) -> LoadedIndex:
    """Bring `idx`'s view of the live samples up to date (only after a samples or forget commit)."""
    version = project.samples_version()
    if idx.seen != version:
        live = live_row_mask(project, int(idx.labels.max()) + 1 if len(idx.labels) else 0)
        held = np.zeros(len(live), bool)
        held[idx.labels] = True
        idx.live, idx.missing, idx.seen = live, int((live & ~held).sum()), version
        idx.pos_of = np.full(len(live), -1, np.int64)
        idx.pos_of[idx.labels] = np.arange(len(idx.labels))
    return idx


def stale_count(project: Project, idx: LoadedIndex) -> int:
    """How many live samples the index lacks."""
    return _refresh(project, idx).missing


def knn(
    project: Project, idx: LoadedIndex, query: np.ndarray, k: int, ef: int = 100, allow_stale: bool = False
) -> tuple[list[str], np.ndarray, np.ndarray]:
    """Top-k by the index: (sample_ids, total scores, per-timestep scores), exact inner products at v; forgotten
    samples are marked deleted in the loaded graph, so searches never return them."""
    graph = load_graph(project, idx)
    if idx.marked != _refresh(project, idx).seen:  # forgotten since the build: marked deleted, never an answer
        assert idx.live is not None
        for label in idx.labels[~idx.live[idx.labels]].tolist():
            if label not in idx.deleted:
                graph.mark_deleted(label)
                idx.deleted.add(label)
        idx.marked = idx.seen
    if idx.missing and not allow_stale:
        raise IndexStale(
            f"the v={idx.meta['v']} index misses {idx.missing} committed sample(s); run `dmin index "
            f"{project.root} --v {idx.meta['v']}` (or pass --allow-stale)"
        )
    K, V, graph_v = int(idx.meta["K"]), int(idx.meta["v"]), int(idx.meta["graph_v"])
    count = len(idx.labels) - len(idx.deleted)
    k = min(k, count)
    if k == 0:
        return [], np.zeros(0), np.zeros((0, K))
    rerank = graph_v != V
    want = min(count, k * RERANK_FACTOR if rerank else k)
    graph.set_ef(max(ef, want))
    gq = graph_vectors(query[None].astype(np.float32), graph_v)
    labels, _ = graph.knn_query(gq, k=want)
    labels = labels[0].astype(np.int64)
    assert idx.pos_of is not None
    pos = np.sort(idx.pos_of[labels])  # ties go to the earlier row, as in exact scoring
    rows = idx.labels[pos]
    if rerank:
        if idx.rows is None:
            idx.rows = RowSource.of(project, str(V))
        per_t = idx.rows.dots(rows, query)
    else:
        from dmin.kernels.dot import timestep_dots

        cand = graph.get_items(rows, return_type="numpy").reshape(-1, K, graph_v)
        per_t = timestep_dots(np.ascontiguousarray(cand, dtype=np.float32), query)
    total = per_t.sum(1)
    best = np.lexsort((pos, -total))[:k]
    return idx.sample_ids.take(pa.array(pos[best])).to_pylist(), total[best], per_t[best]


class SelfTestBuild:
    """The self-test's exact half, found while a build streams its new rows past: a fresh build takes the first
    SELF_TEST_QUERIES live rows as queries; an incremental one carries its previous build's queries and answers and
    ranks the new rows into them. `meta()` is what index.json keeps (None when there is nothing to carry): per query
    its top SELF_TEST_DEPTH, and whether that list holds every sample of the build ("whole"), which tells when
    forgetting leaves the top-10 unknown."""

    def __init__(self, ids: list[str] | None = None, top: TopK | None = None, whole: list[bool] | None = None) -> None:
        self.ids = ids or []
        self.top = top
        self.whole = whole  # per carried query: its previous list held every sample
        self.fresh = ids is None  # queries still to be picked from the first rows
        self.early: list[tuple[np.ndarray, pa.Array]] = []

    @classmethod
    def after(cls, project: Project, prev: LoadedIndex | None) -> SelfTestBuild:
        """The self-test of a build extending `prev` (a fresh one without it)."""
        if prev is None:
            return cls()
        stored = prev.meta.get("self_test")
        if not stored:
            return cls([])  # answers never stored for this index: verify scans for them
        ids, vecs = stored_queries(project, prev, stored["queries"])
        if not ids:
            return cls([])
        top = TopK(vecs, SELF_TEST_DEPTH)
        at = {sid: q for q, sid in enumerate(stored["queries"])}
        for q, sid in enumerate(ids):
            top.seed(q, stored["exact"][at[sid]], stored["scores"][at[sid]])
        return cls(ids, top, [bool(stored["whole"][at[sid]]) for sid in ids])

    def add(self, vecs: np.ndarray, ids: pa.Array) -> None:
        """New rows of the build: (n, K, v) vectors and their sample ids."""
        if self.top is not None:
            self.top.add(vecs.reshape(len(vecs), -1), ids)
        elif self.fresh:
            self.early.append((vecs, ids))
            if sum(len(e[1]) for e in self.early) >= SELF_TEST_QUERIES:
                self._start()

    def _start(self) -> None:
        self.fresh = False
        if not self.early:
            return
        vecs = np.concatenate([e[0][:SELF_TEST_QUERIES] for e in self.early])[:SELF_TEST_QUERIES]
        self.ids = pa.concat_arrays([e[1] for e in self.early]).to_pylist()[:SELF_TEST_QUERIES]
        self.top = TopK(np.asarray(vecs, np.float32), SELF_TEST_DEPTH)
        for e in self.early:
            self.top.add(e[0].reshape(len(e[0]), -1), e[1])
        self.early.clear()

    def meta(self) -> dict[str, Any] | None:
        if self.fresh:
            self._start()
        if self.top is None:
            return None
        found = self.top.result()
        whole = self.whole or [True] * len(found)
        return {
            "queries": self.ids,
            "depth": SELF_TEST_DEPTH,
            "exact": [ids for ids, _ in found],
            "scores": [scores for _, scores in found],
            "whole": [w and len(ids) < SELF_TEST_DEPTH for w, (ids, _) in zip(whole, found, strict=True)],
        }


def without(stored: dict[str, Any], gone: set[str]) -> dict[str, Any]:
    """Stored self-test answers less the samples in `gone` (and the queries that were such samples)."""
    out: dict[str, Any] = {**stored, "queries": [], "exact": [], "scores": [], "whole": []}
    for q, query in enumerate(stored["queries"]):
        if query not in gone:
            kept = [(i, s) for i, s in zip(stored["exact"][q], stored["scores"][q], strict=True) if i not in gone]
            out["queries"].append(query)
            out["exact"].append([i for i, _ in kept])
            out["scores"].append([s for _, s in kept])
            out["whole"].append(stored["whole"][q])
    return out


def held_live(project: Project, idx: LoadedIndex, ids: list[str]) -> tuple[np.ndarray, np.ndarray]:
    """(row ids, mask): which of these sample_ids are live samples that `idx` holds (-1 rows: not live)."""
    rows = project.sample_keys().lookup(pa.array(ids, pa.string()))
    pos_of = _refresh(project, idx).pos_of
    assert pos_of is not None
    ok = (rows >= 0) & (rows < len(pos_of))
    ok[ok] = pos_of[rows[ok]] >= 0
    return rows, ok


def stored_queries(project: Project, idx: LoadedIndex, ids: list[str]) -> tuple[list[str], np.ndarray]:
    """The stored self-test queries still live and held by `idx`, with their vectors read from the grads files."""
    rows, ok = held_live(project, idx, ids)
    if not ok.any():
        return [], np.zeros(0, np.float32)
    if idx.rows is None:
        idx.rows = RowSource.of(project, str(idx.meta["v"]))
    return [i for i, keep in zip(ids, ok, strict=True) if keep], idx.rows.vectors(rows[ok])
