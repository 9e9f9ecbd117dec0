"""`dmin roots`: where each sample's image is read from, and re-pointing a data folder that moved.

Every samples commit records its data root (the --data folder or Parquet file), so samples collected from several
folders each resolve against their own. When a folder moves, `relocate` re-points its root after checking every
live sample under it against the new location: the same source must hold the same image and condition
(sample_id = xxh3-128 of both, `data.Record.sample_id`), so a wrong folder is refused before anything changes.
The re-pointing is a manifest entry (kind `relocate`) that applies to the commits before it: a later collect from
another folder at the old path is not redirected.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from dmin.data import load_dataset
from dmin.errors import DataError, ProjectError, UsageError
from dmin.store.manifest import Entry
from dmin.store.project import Commit, Project, Stage


@dataclass
class Root:
    root: str | None  # None: samples committed with no recorded root (by the library, without a data set)
    samples: int
    exists: bool

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def roots(project: Project) -> list[Root]:
    """Each data root live samples resolve against, with how many samples and whether it is there."""
    counts: Counter[str | None] = Counter()
    for f in project.live_files("samples"):
        dead = project.dead_rows(f)
        counts[project.data_root(f)] += f.rows - (int(dead.sum()) if dead is not None else 0)
    return [Root(r, n, r is not None and Path(r).exists()) for r, n in counts.items() if n]


def _key(source: str) -> str:
    """How a source is matched in the new location: a Parquet row by its number (the file may be renamed)."""
    return "#" + source.rsplit("#", 1)[1] if "#" in source else source


def _samples_under(project: Project, root: str) -> list[tuple[str, str]]:
    """(sample_id, source) of the live samples resolving against `root`."""
    out = []
    for f in project.live_files("samples"):
        if project.data_root(f) == root:
            t = pq.read_table(project.checked(f), columns=["sample_id", "source"])
            dead = project.dead_rows(f)
            if dead is not None:
                t = t.filter(pa.array(~dead))
            out += list(zip(t.column("sample_id").to_pylist(), t.column("source").to_pylist(), strict=True))
    return out


def relocate(project: Project, old: str, new: str | Path) -> tuple[Entry, int]:
    """Re-point data root `old` to `new` after checking every live sample under it; returns the entry and the count.
    DataError (nothing changed) when a sample is missing or differs at the new location."""
    known = [r.root for r in roots(project) if r.root is not None]
    if old not in known:
        resolved = str(Path(old).resolve())
        if resolved not in known:
            listing = ", ".join(known) or "none"
            raise UsageError(f"--from {old}: not a data root of this project (roots: {listing}); see `dmin roots`")
        old = resolved
    target = Path(new).resolve()
    if str(target) == old:
        raise UsageError(f"--to {new}: is the root already")
    samples = _samples_under(project, old)
    records = {_key(r.source): r for r in load_dataset(target).records}
    problems = []
    for sid, source in samples:
        rec = records.get(_key(source))
        if rec is None:
            problems.append(f"{source}: missing")
        elif rec.error:
            problems.append(rec.error)
        elif rec.sample_id != sid:
            problems.append(f"{source}: image or caption/label differs from what was collected")
    if problems:
        raise DataError(
            f"{new}: {len(problems)} of {len(samples)} sample(s) under {old} do not match it (e.g. {problems[0]}); "
            f"nothing was re-pointed"
        )

    def plan(stage: Stage) -> Commit | None:
        if old not in [r.root for r in roots(project)]:
            return None
        return Commit("relocate", [], {"from": old, "to": str(target), "samples": len(samples)})

    entry = project.transact(plan)
    if entry is None:
        raise ProjectError(f"{old}: was re-pointed by another command meanwhile; see `dmin roots`")
    return entry, len(samples)
