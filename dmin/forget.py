"""`dmin forget`: make samples absent from every reader now, and keep them out of later collects.

A forget commits a tombstone (`store.liveness`): a file of sample_ids, forgotten in every file committed before it.
From then on exact and kNN queries, the index, SQL views, contact sheets and verify treat those samples as absent,
and `collect` skips them (the suppression list: their sample_ids are content hashes, so the same image and
condition is recognized wherever it comes from), unless `--include-forgotten`. Their bytes stay on disk until
`dmin compact` rewrites the files that hold them.
"""

from __future__ import annotations

import fnmatch
import re
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from dmin.errors import DminError, UsageError
from dmin.sql import run_sql
from dmin.store import paths
from dmin.store.manifest import Entry
from dmin.store.project import Commit, Project, Stage
from dmin.store.tables import tombstones_table

_SAMPLE_ID = re.compile(r"^[0-9a-f]{32}$")


@dataclass
class Selection:
    """Live samples a forget selects, and --sample-id values that name no live sample."""

    samples: list[dict[str, str | None]]  # sample_id, source, caption of each selected live sample
    not_committed: list[str] = field(default_factory=list)  # suppressed for later collects all the same
    already: list[str] = field(default_factory=list)  # forgotten before: nothing to do

    @property
    def ids(self) -> list[str]:
        return [str(s["sample_id"]) for s in self.samples] + self.not_committed


def select(
    project: Project, sample_ids: Sequence[str] = (), source: str | None = None, where: str | None = None
) -> Selection:
    """Live samples matching every selector given: any of `sample_ids`, `source` (a glob over the source column),
    `where` (an SQL condition over the samples view)."""
    if not sample_ids and source is None and where is None:
        raise UsageError("select what to forget: --sample-id ID, --source GLOB or --where CONDITION")
    for sid in sample_ids:
        if not _SAMPLE_ID.match(sid):
            raise UsageError(
                f"--sample-id {sid}: not a sample_id (32 hex digits, as `dmin sql PROJECT "
                f'"SELECT sample_id, source FROM samples"` lists them)'
            )
    hits = None
    if where is not None:
        try:
            matched = run_sql(project, f"SELECT sample_id FROM samples WHERE {where}")
        except DminError as exc:
            raise UsageError(f"--where {where!r}: {exc} (give a condition over the samples view)") from exc
        hits = matched.column("sample_id")
    rows: list[dict[str, str | None]] = []
    for ref in project.live_files("samples"):  # filtered in Arrow: only the selected rows become Python objects
        t = pq.read_table(project.checked(ref), columns=["sample_id", "source", "caption"])
        keep = pa.array(np.ones(len(t), bool) if (dead := project.dead_rows(ref)) is None else ~dead)
        if sample_ids:
            keep = pc.and_(keep, pc.is_in(t.column("sample_id"), value_set=pa.array(list(sample_ids), pa.string())))
        if source is not None:
            regex = "^" + fnmatch.translate(source).replace("\\Z", "\\z")  # RE2 (Arrow's) spells the end \z
            keep = pc.and_(keep, pc.match_substring_regex(t.column("source"), pattern=regex))
        if hits is not None:
            keep = pc.and_(keep, pc.is_in(t.column("sample_id"), value_set=hits))
        rows += t.filter(keep).to_pylist()
    live = {r["sample_id"] for r in rows}
    forgotten = project.forgotten()
    rest = [s for s in dict.fromkeys(sample_ids) if s not in live]
    committed = project.sample_keys().contains(rest) if rest else np.zeros(0, bool)
    return Selection(
        rows,
        not_committed=[s for s, c in zip(rest, committed, strict=True) if s not in forgotten and not c],
        already=[s for s in rest if s in forgotten],
    )


def forget(project: Project, selection: Selection) -> Entry | None:
    """Commit one tombstone for the selection; None when every id is forgotten already (by anyone, meanwhile)."""

    def plan(stage: Stage) -> Commit | None:
        forgotten = project.forgotten()
        ids = sorted(s for s in set(selection.ids) if s not in forgotten)
        if not ids:
            return None
        tombstone = tombstones_table(ids)
        ref = stage.table(tuple(ids), "tombstones", None, paths.TOMBSTONES, tombstone)
        return Commit("forget", [ref], {"samples": len(ids)})

    return project.transact(plan)
