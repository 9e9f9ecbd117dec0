"""`dmin compact`: erase forgotten samples' bytes, merge small files, then delete what no reader needs.

1. One commit (kind `compact`): only the live files that hold rows of forgotten samples (samples, grads at every
   v, results) are rewritten without them, and every index graph that holds such a sample has its vector
   overwritten with zeros and its label marked deleted, in place (`index.erase`: no rebuild, so 100 forgotten
   samples of a million cost seconds, not the hour a new graph takes); the entry supersedes the files it replaces.
   Killed before it is published, the project is as it was (plus unnamed staged files); after, it is the
   compacted one. Both are valid.
2. Tiers of small files that filled up are merged (`store.upkeep`), as after any commit: the rewritten files are
   smaller than the ones they replace.
3. Then every superseded file (rewritten files, merged ones, earlier index builds, ...) is deleted, and so are
   unnamed files left by interrupted writes once older than `orphan_grace` seconds (younger ones may belong to a
   writer that is about to commit them). A kill here leaves files no reader uses; the next compact deletes them.

After a compact that completed with no young orphans left, no file under the project holds a byte of a forgotten
sample's vectors, source, caption or metadata; only the tombstones keep their sample_ids (the suppression list).
"""

from __future__ import annotations

import functools
import shutil
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa

from dmin.errors import UsageError
from dmin.index import current_index, erase, live_row_mask
from dmin.precondition import current as current_preconditioner
from dmin.precondition import erase_forgotten
from dmin.store import paths
from dmin.store.manifest import FileRef
from dmin.store.project import SAMPLE_KEYED, Commit, Project, Stage
from dmin.store.upkeep import merge_small, write_checkpoint
from dmin.store.vectors import read_rows

ORPHAN_GRACE = paths.ORPHAN_GRACE


@dataclass
class CompactReport:
    seq: int | None = None  # the compact entry, None when nothing held forgotten rows
    rows_dropped: dict[str, int] = field(default_factory=dict)
    files_rewritten: int = 0
    indexes_erased: list[str] = field(default_factory=list)  # v's whose graph had forgotten vectors overwritten
    preconditioners_updated: list[str] = field(default_factory=list)  # v's whose Gram had forgotten samples taken out
    files_merged: int = 0  # small files merged into larger ones (`store.upkeep`)
    files_deleted: int = 0
    bytes_freed: int = 0
    orphans_kept: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def compact(project: Project, orphan_grace: float = ORPHAN_GRACE) -> CompactReport:
    """Rewrite the files that hold forgotten rows without them, erase forgotten vectors from index graphs, merge
    small files, then delete superseded and old unnamed files."""
    if orphan_grace < 0:
        raise UsageError(f"--orphan-grace {orphan_grace:g}: expected seconds ≥ 0 (0 when no other dmin is writing)")
    report = CompactReport()
    builds: dict[tuple[Any, ...], tuple[Path, list[tuple[str, Path]], dict[str, Any]] | None] = {}

    def plan(stage: Stage) -> Commit | None:
        files: list[FileRef] = []
        supersedes: list[str] = []
        dropped: Counter[str] = Counter()
        roots: dict[str, str] = {}
        clean: list[str] = []  # examined and free of forgotten rows: readers skip the tombstone check from now on
        for table in SAMPLE_KEYED:
            for ref in project.live_files(table):
                dead = project.dead_rows(ref)
                if dead is None:
                    continue
                if not dead.any():
                    clean.append(ref.path)
                    continue  # only files that hold forgotten rows are rewritten
                supersedes.append(ref.path)
                dropped[f"{table} v={ref.v}" if ref.v else table] += int(dead.sum())
                if dead.all():
                    continue  # nothing left of this file
                folder = ref.path.rsplit("/", 1)[0]
                rewrite = (ref.path, tuple(sorted(project.liveness().dead(ref))))
                new = stage.table(rewrite, ref.table, ref.v, folder, functools.partial(_without, project, ref, ~dead))
                files.append(new)
                if table == "samples" and (root := project.data_root(ref)) is not None:
                    roots[new.path] = root
        live = live_row_mask(project)
        erased: list[str] = []
        updated: list[str] = []
        for v in (v for v in project.identity.vs if v != "full"):
            pre = current_preconditioner(project, v)
            derived: tuple[tuple[str, Any, Callable[[Any], Any], list[str]], ...] = (
                ("index_meta", current_index(project, v), lambda idx: erase(project, idx, live), erased),
                ("precondition_meta", pre, lambda pre: erase_forgotten(project, pre), updated),
            )
            for name, built, redo, done in derived:  # each derived build of v drops the forgotten samples in place
                if built is None:
                    continue
                key: tuple[Any, ...] = (name, v, built.files[name].path, project.liveness().forgotten)  # new forget
                if key not in builds:
                    builds[key] = redo(built)
                build = builds[key]
                if build is None:
                    continue
                files += [stage.adopt((*key, t), t, v, path) for t, path in build[1]]
                supersedes += [f.path for f in built.files.values()]
                done.append(v)
        if not supersedes and not clean:
            return None
        report.rows_dropped, report.indexes_erased, report.preconditioners_updated = dict(dropped), erased, updated
        builds_files = len(paths.INDEX_FILES) * len(erased) + len(paths.PRECONDITION_FILES) * len(updated)
        report.files_rewritten = len(files) - builds_files
        meta: dict[str, Any] = {
            "rows_dropped": dict(dropped),
            "indexes_erased": erased,
            "preconditioners_updated": updated,
            "clean": clean,
        }
        if roots:
            meta["data_roots"] = roots
        return Commit("compact", files, meta, supersedes)

    entry = project.transact(plan)
    named = {f.path for f in entry.files} if entry else set()
    for build in builds.values():  # builds a re-plan replaced; all of them when nothing was committed
        if build is not None and not any(p.relative_to(project.root).as_posix() in named for _, p in build[1]):
            shutil.rmtree(build[0], ignore_errors=True)
    report.seq = entry.seq if entry else None
    if entry is None:
        report.rows_dropped, report.files_rewritten, report.indexes_erased = {}, 0, []
        report.preconditioners_updated = []
    report.files_merged = sum(int(e.meta.get("files", 0)) for e in merge_small(project))
    report.files_deleted, report.bytes_freed, report.orphans_kept = sweep(project, orphan_grace)
    write_checkpoint(project, project.state().seq)  # a project written before checkpoints gets its first here
    return report


def _without(project: Project, ref: FileRef, keep: np.ndarray) -> pa.Table:
    """A committed file's rows minus forgotten ones, in the same order (grads readers rely on it)."""
    return read_rows(project.checked(ref), keep).combine_chunks()


def sweep(project: Project, orphan_grace: float = ORPHAN_GRACE) -> tuple[int, int, list[str]]:
    """Delete superseded files, and unnamed ones (and temp files) older than `orphan_grace` seconds; returns
    (files deleted, bytes freed, orphans kept because younger)."""
    state = project.state()
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

    for rel in sorted(state.superseded):
        delete(project.root / rel)
    now = time.time()
    candidates = [
        p for top in paths.DATA_DIRS if (project.root / top).is_dir() for p in (project.root / top).rglob("*")
    ]
    candidates += list(project.root.rglob(f"{paths.TMP_PREFIX}*"))
    for path in sorted(set(candidates)):
        if not path.is_file() or path.relative_to(project.root).as_posix() in state.files:
            continue
        try:
            age = now - path.stat().st_mtime
        except FileNotFoundError:
            continue
        if age >= orphan_grace:
            delete(path)
        else:
            kept.append(path.relative_to(project.root).as_posix())
    for top in ("index", "precondition"):  # build folders emptied above; no writer reuses one
        folder = project.root / top
        for build in folder.glob("v=*/*") if folder.is_dir() else ():
            if build.is_dir() and not any(build.iterdir()):
                build.rmdir()
    return deleted, freed, kept
