"""`dmin compact`: erase forgotten samples' bytes, then delete what no reader needs.

1. One commit (kind `compact`): every live file holding rows of forgotten samples (samples, grads at every v,
   results) is rewritten without them, and every index whose graph holds a label of a row that is not live is
   rebuilt from scratch over the live samples; the entry supersedes the files it replaces. Killed before it is
   published, the project is as it was (plus unnamed staged files); after, it is the compacted one. Both are valid.
2. Then every superseded file (rewritten files, earlier index builds, ...) is deleted, and so are unnamed files
   left by interrupted writes once older than `orphan_grace` seconds (younger ones may belong to a writer that is
   about to commit them). A kill here leaves files no reader uses; the next compact deletes them.

After a compact that completed with no young orphans left, no file under the project holds a byte of a forgotten
sample's vectors, source, caption or metadata; only the tombstones keep their sample_ids (the suppression list).
"""

from __future__ import annotations

import shutil
import time
from collections import Counter
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from dmin.errors import UsageError
from dmin.index import IndexParams, LoadedIndex, committed_rows, current_index, write_build
from dmin.store import paths
from dmin.store.manifest import Entry, FileRef
from dmin.store.project import SAMPLE_KEYED, Commit, Project, Stage

ORPHAN_GRACE = paths.ORPHAN_GRACE


@dataclass
class CompactReport:
    seq: int | None = None  # the compact entry, None when nothing held forgotten rows
    rows_dropped: dict[str, int] = field(default_factory=dict)
    files_rewritten: int = 0
    indexes_rebuilt: list[str] = field(default_factory=list)
    files_deleted: int = 0
    bytes_freed: int = 0
    orphans_kept: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def compact(project: Project, orphan_grace: float = ORPHAN_GRACE, params: IndexParams | None = None) -> CompactReport:
    """Rewrite without forgotten rows, rebuild indexes holding them, then delete superseded and old unnamed files."""
    if orphan_grace < 0:
        raise UsageError(f"--orphan-grace {orphan_grace:g}: expected seconds ≥ 0 (0 when no other dmin is writing)")
    report = CompactReport()
    builds: dict[tuple[str, str, frozenset[str]], tuple[Path, list[tuple[str, Path]]]] = {}

    def plan(stage: Stage) -> Commit | None:
        liveness = project.liveness()
        files: list[FileRef] = []
        supersedes: list[str] = []
        dropped: Counter[str] = Counter()
        roots: dict[str, str] = {}
        for table in SAMPLE_KEYED:
            for ref in project.live_files(table):
                dead = liveness.dead(ref)
                if not dead:
                    continue
                ids = pq.read_table(project.checked(ref), columns=["sample_id"]).column("sample_id").to_pylist()
                keep = np.fromiter((s not in dead for s in ids), bool, len(ids))
                if keep.all():
                    continue
                folder = ref.path.rsplit("/", 1)[0]
                new = stage.table(
                    (ref.path, tuple(sorted(dead))), ref.table, ref.v, folder, _without(project, ref, keep)
                )
                files.append(new)
                supersedes.append(ref.path)
                dropped[f"{table} v={ref.v}" if ref.v else table] += int((~keep).sum())
                if table == "samples" and (root := project.data_root(ref)) is not None:
                    roots[new.path] = root
        live_rows = set(committed_rows(project).values())
        rebuilt = []
        for v in project.identity.vs:
            idx = current_index(project, v) if v != "full" else None
            if idx is None or all(int(r) in live_rows for r in idx.labels):
                continue
            key = (v, idx.files["index_meta"].path, liveness.forgotten)  # a new forget meanwhile: build again
            if key not in builds:
                build_dir, written, _ = write_build(project, v, params or _params_of(idx), None)
                builds[key] = (build_dir, written)
            files += [stage.adopt((*key, t), t, v, p) for t, p in builds[key][1]]
            supersedes += [f.path for f in idx.files.values()]
            rebuilt.append(v)
        if not files:
            return None
        report.rows_dropped, report.indexes_rebuilt = dict(dropped), rebuilt
        report.files_rewritten = len(files) - 3 * len(rebuilt)  # an index build is three files
        meta: dict[str, Any] = {"rows_dropped": dict(dropped), "indexes": rebuilt}
        if roots:
            meta["data_roots"] = roots
        return Commit("compact", files, meta, supersedes)

    entry = project.transact(plan)
    named = {f.path for f in entry.files} if entry else set()
    for build_dir, written in builds.values():  # builds a re-plan replaced; all of them when nothing was committed
        if not any(path.relative_to(project.root).as_posix() in named for _, path in written):
            shutil.rmtree(build_dir, ignore_errors=True)
    report.seq = entry.seq if entry else None
    if entry is None:
        report.rows_dropped, report.files_rewritten, report.indexes_rebuilt = {}, 0, []
    report.files_deleted, report.bytes_freed, report.orphans_kept = sweep(project, orphan_grace)
    return report


def _params_of(idx: LoadedIndex) -> IndexParams:
    """Rebuild with the graph settings the index was built with."""
    return IndexParams(m=int(idx.meta.get("m", 16)), ef_construction=int(idx.meta.get("ef_construction", 200)))


def _without(project: Project, ref: FileRef, keep: np.ndarray) -> pa.Table:
    """A committed file's rows minus forgotten ones, in the same order (grads readers rely on it)."""
    table = pq.read_table(project.checked(ref))
    return table.filter(pa.array(keep)).combine_chunks()


def sweep(project: Project, orphan_grace: float = ORPHAN_GRACE) -> tuple[int, int, list[str]]:
    """Delete superseded files, and unnamed ones (and temp files) older than `orphan_grace` seconds; returns
    (files deleted, bytes freed, orphans kept because younger)."""
    entries: list[Entry] = project.entries()
    named = {f.path for e in entries for f in e.files}
    gone = {p for e in entries for p in e.supersedes}
    deleted = freed = 0
    kept: list[str] = []

    def delete(path: Path) -> None:
        nonlocal deleted, freed
        try:
            size = path.stat().st_size
            path.unlink()
        except FileNotFoundError:
            return
        deleted += 1
        freed += size

    for rel in sorted(gone):
        delete(project.root / rel)
    now = time.time()
    candidates = [
        p for top in paths.DATA_DIRS if (project.root / top).is_dir() for p in (project.root / top).rglob("*")
    ]
    candidates += list(project.root.rglob(f"{paths.TMP_PREFIX}*"))
    for path in sorted(set(candidates)):
        if not path.is_file() or path.relative_to(project.root).as_posix() in named:
            continue
        try:
            age = now - path.stat().st_mtime
        except FileNotFoundError:
            continue
        if age >= orphan_grace:
            delete(path)
        else:
            kept.append(path.relative_to(project.root).as_posix())
    index = project.root / "index"  # build folders emptied above; no writer reuses one (other folders may be in use)
    for build in index.glob("v=*/b*") if index.is_dir() else ():
        if build.is_dir() and not any(build.iterdir()):
            build.rmdir()
    return deleted, freed, kept
