"""Keeping a project fast however long it lives: checkpoints, small files merged, superseded files deleted.

Every commit adds small files (a collect commit of 64 samples: a samples file and ~0.6 MB of grads per v; a query:
four files of a few KB), and readers pay per file. So after each commit its writer does what table formats do
after a write (Delta Lake's checkpoints and auto-compaction, Iceberg's rewrite of small data files):

- every `CHECKPOINT_EVERY` entries it stores the manifest's sum (`store.state`), so opening reads a bounded number
  of entries;
- files are merged by size tier (log16 of their bytes, as size-tiered compaction does): once `FANIN` files of a
  table (and v, and data root) share a tier, the oldest `FANIN` are rewritten as one, without the rows of forgotten
  samples, by an ordinary commit (kind `merge`) that supersedes them. A row is rewritten about once per tier it
  climbs (~4 times from a 64-sample commit to a 256 MB file) and a table holds at most ~FANIN files per tier;
  files of `FINAL_BYTES` or more are left as they are (`merge_small(..., everything=True)` merges every group of
  small files at once, for tools), and no merge writes more than `MERGED_BYTES` (a merged grads file stays one
  row group, one mapped view: at 10^6 samples, 2.5 GB merges of 16 tier-6 files held three groups, and every
  reader that needs the whole file in memory — a compact's rewrite, `compress` — held 2.5 GB of it at once);
- files superseded more than `ORPHAN_GRACE` ago (by a merge, a compact or a newer index build) are deleted: a
  reader plans against a snapshot and opens its files within seconds, far less than that.

A merge is a commit like any other: killed at any instant it leaves the old files or the merged one, and a writer
that loses the race to another merge re-plans and usually finds nothing left to merge.
"""

from __future__ import annotations

import math
import time
from collections import defaultdict
from collections.abc import Iterator
from datetime import datetime

import pyarrow as pa

from dmin.store import paths
from dmin.store.manifest import Entry, FileRef, create_exclusive
from dmin.store.project import SAMPLE_KEYED, Commit, Project, Stage
from dmin.store.state import CHECKPOINT_EVERY, checkpoint_name

FANIN = 16
FINAL_BYTES = 256 << 20
MERGED_BYTES = 1 << 30  # a merge's output at most (about): one row group of vectors (`atomic._GROUP_BYTES`)
MERGED = ("samples", "grads", "failures", "queries", "query_grads", "results")  # never tombstones: their seq matters
FOLDERS = {t: f for t, f in paths.FOLDERS.items() if t != paths.TOMBSTONES}  # tombstones stay one file each
KEEP_CHECKPOINTS = 2


def after_commit(project: Project, entry: Entry | None) -> None:
    """What a writer does after publishing `entry`: a checkpoint when due, merges of full tiers, and (with each
    checkpoint) the deletion of long-superseded files."""
    if entry is None:
        return
    if entry.seq % CHECKPOINT_EVERY == 0:
        write_checkpoint(project, entry.seq)
        sweep_superseded(project)
    if entry.kind in ("samples", "queries", "failures", "derive", "merge"):
        merge_small(project, tables={(f.table, f.v) for f in entry.files})


def write_checkpoint(project: Project, seq: int) -> None:
    """Store the state at entry `seq` (put-if-absent: writers racing to it write the same bytes) and keep only the
    newest few."""
    state = project.state()
    if state.seq != seq or not seq:  # another writer committed meanwhile; it writes the checkpoint of its own
        return
    create_exclusive(project.root / checkpoint_name(seq), state.to_json(project.identity.hash()).encode())
    folder = project.root / paths.CHECKPOINTS
    for old in sorted(folder.glob("*.json"))[:-KEEP_CHECKPOINTS]:
        old.unlink(missing_ok=True)


def sweep_superseded(project: Project, grace: float = paths.ORPHAN_GRACE) -> tuple[int, int]:
    """Delete files superseded more than `grace` seconds ago; (files, bytes) freed."""
    now = time.time()
    deleted = freed = 0
    for rel, (_, at) in list(project.state().superseded.items()):
        if now - datetime.fromisoformat(at).timestamp() < grace:
            continue
        path = project.root / rel
        try:
            size = path.stat().st_size
            path.unlink()
        except FileNotFoundError:
            continue
        deleted, freed = deleted + 1, freed + size
    return deleted, freed


def tier(size: int) -> int:
    """A file's size tier: files within a factor of FANIN of each other share one."""
    return int(math.log(max(size, 1), FANIN))


def _groups(project: Project, table: str, v: str | None) -> Iterator[list[FileRef]]:
    """A table's live files that may be merged together: same v, and for samples the same data root."""
    by_root: dict[str | None, list[FileRef]] = defaultdict(list)
    for ref in project.live_files(table, v):
        if ref.bytes < FINAL_BYTES:
            by_root[project.data_root(ref) if table == "samples" else None].append(ref)
    yield from by_root.values()


def merge_small(
    project: Project, tables: set[tuple[str, str | None]] | None = None, everything: bool = False
) -> list[Entry]:
    """Merge full tiers of the given (table, v)s (all tables when None); `everything`: every group of two or more
    small files, whatever their tiers (what `compact` does). Returns the merge entries committed."""
    done: list[Entry] = []
    if tables is None:
        tables = {(live.ref.table, live.ref.v) for live in project.state().files.values()}
    for table, v in sorted(tables, key=str):
        if table not in MERGED:
            continue
        while (entry := project.transact(_merge_plan(project, table, v, everything))) is not None:
            done.append(entry)
    return done


def _pick(group: list[FileRef], everything: bool) -> list[FileRef]:
    """The files of a group to merge now: the oldest FANIN of the lowest full tier; with `everything`, the oldest
    files of the group up to FINAL_BYTES."""
    if everything:
        picked: list[FileRef] = []
        size = 0
        for ref in group:
            if picked and size + ref.bytes > FINAL_BYTES:
                break
            picked.append(ref)
            size += ref.bytes
        return picked if len(picked) > 1 else []
    by_tier: dict[int, list[FileRef]] = defaultdict(list)
    for ref in group:
        by_tier[tier(ref.bytes)].append(ref)
    full = sorted(t for t, refs in by_tier.items() if len(refs) >= FANIN)
    if not full:
        return []
    picked, size = [], 0
    for ref in by_tier[full[0]][:FANIN]:
        if len(picked) >= 2 and size + ref.bytes > MERGED_BYTES:
            break
        picked.append(ref)
        size += ref.bytes
    return picked


def _merge_plan(project: Project, table: str, v: str | None, everything: bool):  # type: ignore[no-untyped-def]
    def plan(stage: Stage) -> Commit | None:
        for group in _groups(project, table, v):
            picked = _pick(group, everything)
            if picked:
                break
        else:
            return None
        folder = FOLDERS.get(table) or (paths.grads_dir if table == "grads" else paths.query_grads_dir)(str(v))
        key = ("merge", *(ref.path for ref in picked))
        merged = stage.table(key, table, v, folder, lambda: _merged(project, picked))
        meta: dict[str, object] = {"table": table, "v": v, "files": len(picked)}
        if table == "samples" and (root := project.data_root(picked[0])) is not None:
            meta["data_roots"] = {merged.path: root}
        return Commit("merge", [merged], meta, [ref.path for ref in picked])

    return plan


def _merged(project: Project, refs: list[FileRef]) -> pa.Table:
    """The live rows of `refs`, in commit order (grads keep each sample's K rows together)."""
    from dmin.store.vectors import read_rows  # vectors imports project, as upkeep does: no cycle either way

    parts = []
    for ref in refs:
        dead = project.dead_rows(ref) if ref.table in SAMPLE_KEYED else None
        parts.append(read_rows(project.checked(ref), None if dead is None else ~dead))
    return pa.concat_tables(parts, promote_options="default").combine_chunks()

