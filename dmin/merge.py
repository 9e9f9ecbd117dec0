"""`dmin merge`: adopt projects collected separately (one per machine, on local disks) into one, in one commit.

GPU nodes in a cloud or a Slurm array usually have local disks only, so each node collects its shard into a
project of its own (`dmin collect local --shard i/N`); the projects are copied to one machine and merged. Each
source must have the destination's identity (checked field by field, as collect checks it) and store every v the
destination stores. From each source the merge takes its live rows only: samples not in the destination yet (nor
in another source before it, nor forgotten by the destination), with new row ids following the destination's;
their vectors at every stored v (files whose rows are all taken are linked or copied as they are, the others
rewritten without the rest); queries the destination has not answered; failures; and the source's suppression
list, which becomes a tombstone (an opt-out that reached one node holds everywhere). One commit of kind `adopt`
names it all, so a merge killed at any instant leaves the destination as it was, and a merge run again adopts
nothing twice. Index builds are not adopted: `dmin index` extends the destination's.
"""

from __future__ import annotations

import os
import shutil
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from dmin.errors import IdentityMismatch, UsageError
from dmin.store import paths
from dmin.store.atomic import fsync_dir
from dmin.store.keys import KeySet
from dmin.store.manifest import FileRef
from dmin.store.project import Commit, Project, Stage
from dmin.store.tables import tombstones_table
from dmin.store.vectors import read_rows

QUERY_TABLES = ("queries", "results", "query_grads")


@dataclass
class MergeReport:
    dest: str
    seq: int | None = None  # the adopt entry; None when every source was merged already
    samples: int = 0
    queries: int = 0
    failures: int = 0
    forgotten: int = 0  # ids of the sources' suppression lists newly forgotten in the destination
    files_linked: int = 0
    files_rewritten: int = 0
    sources: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def merge(dest: str | Path, sources: list[str | Path]) -> MergeReport:
    """Adopt every live row of `sources` that `dest` lacks into `dest` (created with the first source's identity
    when it does not exist), in one commit."""
    if not sources:
        raise UsageError("name at least one source project: dmin merge DEST SRC [SRC …]")
    srcs = [Project.open(s) for s in sources]
    if any(Path(s.root).resolve() == Path(dest).resolve() for s in srcs):
        raise UsageError(f"{dest}: is also a source; merge other projects into it")
    first = srcs[0]
    for src in srcs[1:]:
        _same(first, src)
    target = Project.create(dest, replace(first._base, vs=first.identity.vs))
    for src in srcs:
        _same(target, src)
        lacking = [v for v in target.identity.vs if v not in src.identity.vs]
        if lacking:
            raise UsageError(
                f"{src.root}: stores no v={lacking[0]}, which {dest} stores; derive it there first "
                f"(`dmin compress {src.root} --v {lacking[0]}`)"
            )
    report = MergeReport(str(target.root), sources=[str(s.root) for s in srcs])
    entry = target.transact(lambda stage: _plan(target, srcs, stage, report))
    report.seq = entry.seq if entry is not None else None
    if entry is None:
        report.samples = report.queries = report.failures = report.forgotten = 0
        report.files_linked = report.files_rewritten = 0
    return report


def _same(a: Project, b: Project) -> None:
    try:
        a.identity.check_matches(b.identity)
    except IdentityMismatch as exc:
        raise IdentityMismatch(f"{b.root}: {exc}") from exc


def _plan(dest: Project, srcs: list[Project], stage: Stage, report: MergeReport) -> Commit | None:
    state = dest.state()
    taken = dest.sample_keys().copy()  # live in dest, or adopted from an earlier source
    refused = dest.liveness().forgotten  # dest's suppression list
    queried = set(state.queried)
    next_row = lo = state.next_row_id
    files: list[FileRef] = []
    roots: dict[str, str] = {}
    carried: set[str] = set()
    new_answers: list[list[str]] = []
    report.samples = report.queries = report.failures = report.files_linked = report.files_rewritten = 0
    for s, src in enumerate(srcs):
        adopted = KeySet()
        for ref in src.live_files("samples"):
            t = _live_rows(src, ref)
            ids = t.column("sample_id")
            keep = ~taken.contains(ids)
            if refused:
                no = pc.is_in(ids, value_set=pa.array(sorted(refused), pa.string()))
                keep &= ~no.to_numpy(zero_copy_only=False)
            t = t.filter(pa.array(keep))
            if not len(t):
                continue
            rows = pa.array(np.arange(next_row, next_row + len(t)), pa.int64())
            t = t.set_column(t.schema.get_field_index("row_id"), "row_id", rows)
            next_row += len(t)
            taken.add(t.column("sample_id"))
            adopted.add(t.column("sample_id"))
            new = stage.table((s, ref.path, next_row), "samples", None, paths.FOLDERS["samples"], t)
            files.append(new)
            report.samples += len(t)
            report.files_rewritten += 1
            if (root := src.data_root(ref)) is not None:
                roots[new.path] = root
        for v in dest.identity.vs:
            for ref in src.live_files("grads", v):
                files += _take(src, ref, stage, (s, ref.path), adopted, "sample_id", report)
        fresh = sorted(q for q in src.state().answered if q[0] not in queried)  # queries dest never made
        new_answers += [list(q) for q in fresh]
        new_ids = {q for q, _, _ in fresh}
        if new_ids:
            wanted = KeySet.of(sorted(new_ids))
            for table in QUERY_TABLES:
                vs: tuple[str | None, ...] = dest.identity.vs if table == "query_grads" else (None,)
                for qv in vs:
                    for ref in src.live_files(table, qv):
                        files += _take(src, ref, stage, (s, ref.path), wanted, "query_id", report)
            report.queries += len(new_ids)
            queried.update(new_ids)
        for ref in src.live_files("failures"):
            files.append(_link(src, ref, stage, (s, ref.path), report))
            report.failures += ref.rows
        carried |= src.forgotten() - refused
    if carried:
        tomb = tombstones_table(carried)
        files.append(stage.table(("tombstones", tuple(sorted(carried))), "tombstones", None, paths.TOMBSTONES, tomb))
    report.forgotten = len(carried)
    if not files:
        return None
    meta: dict[str, Any] = {"sources": report.sources, "samples": report.samples, "answered": new_answers}
    if roots:
        meta["data_roots"] = roots
    return Commit("adopt", files, meta, row_ids=(lo, next_row) if next_row > lo else None)


def _live_rows(src: Project, ref: FileRef) -> pa.Table:
    dead = src.dead_rows(ref)
    return read_rows(src.checked(ref), None if dead is None else ~dead)


def _take(
    src: Project, ref: FileRef, stage: Stage, key: Any, wanted: KeySet, column: str, report: MergeReport
) -> list[FileRef]:
    """A source file's rows whose `column` is in `wanted` (and live): the file itself when that is all of them,
    a rewritten one when some, nothing when none."""
    ids = pq.read_table(src.checked(ref), columns=[column]).column(column)
    keep = wanted.contains(ids)
    dead = src.dead_rows(ref) if column == "sample_id" else None
    if dead is not None:
        keep &= ~dead
    if not keep.any():
        return []
    if keep.all():
        return [_link(src, ref, stage, key, report)]
    folder = ref.path.rsplit("/", 1)[0]
    rows = read_rows(src.checked(ref), keep).combine_chunks()
    report.files_rewritten += 1
    return [stage.table(key, ref.table, ref.v, folder, rows)]


def _link(src: Project, ref: FileRef, stage: Stage, key: Any, report: MergeReport) -> FileRef:
    """A source file taken as it is: hard-linked into the destination (files never change once committed), or
    copied when the two lie on different filesystems; its manifest record (size, rows, xxh3) carries over."""
    if stage.has(key):
        return stage.get(key)
    origin = src.checked(ref)
    folder = ref.path.rsplit("/", 1)[0]
    rel = f"{folder}/{stage.name()}"
    target = stage.root / rel
    target.parent.mkdir(parents=True, exist_ok=True)
    try:
        os.link(origin, target)
    except OSError:
        tmp = target.with_name(f"{paths.TMP_PREFIX}{target.name}")
        shutil.copyfile(origin, tmp)
        with open(tmp, "rb") as f:
            os.fsync(f.fileno())
        os.replace(tmp, target)
    fsync_dir(target.parent)
    report.files_linked += 1
    return stage.record(key, FileRef(rel, ref.table, ref.v, ref.rows, ref.bytes, ref.xxh3))
