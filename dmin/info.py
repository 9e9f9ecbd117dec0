"""`info`: a project in brief — its identity, what is stored, the indexes' state, and the query log.

Read from the manifest's sum (row counts, sizes, commit times: `store.state`) and a few small files (the samples,
failures and queries tables' key columns, each index's labels), never from the gradient files, so it stays fast on
a large project. Keys of `to_dict()` are documented in docs/cli.md and reuse dmin.json's names where they exist.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import pyarrow.compute as pc

from dmin.store import Project

# dmin.json fields that say what the gradients are (the rest of dmin.json is bookkeeping).
IDENTITY_BRIEF = (
    "model_family",
    "model_path",
    "model_fingerprint",
    "lora_path",
    "adapter_fingerprint",
    "param_filter",
    "n",
    "D",
    "loss_type",
    "schedule",
    "conditioning",
    "timesteps",
    "noise_seed",
    "compress_seed",
    "collect_vs",
    "compute_dtype",
    "dtype",
    "compressor",
)


@dataclass(frozen=True)
class StoredV:
    """One stored v: its grads table's rows, samples and committed bytes; collected, or derived by `compress`."""

    v: str
    origin: str
    samples: int
    rows: int
    files: int
    bytes: int


@dataclass(frozen=True)
class IndexState:
    """The current index build of one v: fresh when it covers every committed sample."""

    v: str
    state: str
    samples: int
    missing: int
    build: int
    built_at: str
    bytes: int
    m: int | None
    ef_construction: int | None
    graph_v: int | None


@dataclass(frozen=True)
class PreconditionerState:
    """The current preconditioner of one v: fresh when its Gram sums exactly the live samples."""

    v: str
    state: str
    samples: int
    missing: int
    lambda_: float
    built_at: str
    bytes: int

    def to_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out["lambda"] = out.pop("lambda_")
        return out


@dataclass
class ProjectInfo:
    project: str
    schema_version: int
    dmin_version: str
    identity: dict[str, Any]
    samples: int
    failures: int
    forgotten: int = 0
    vs: list[StoredV] = field(default_factory=list)
    indexes: list[IndexState] = field(default_factory=list)
    preconditioners: list[PreconditionerState] = field(default_factory=list)
    queries: int = 0
    results: int = 0
    commits: int = 0
    last_commit_at: str | None = None
    bytes: int = 0

    def to_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out["preconditioners"] = [p.to_dict() for p in self.preconditioners]
        return out


def _distinct(project: Project, table: str, column: str) -> int:
    data = project.read_table(table, columns=[column])
    return 0 if data is None else int(pc.count_distinct(data.column(column)).as_py())


def _index_state(project: Project, v: str) -> IndexState | None:
    from dmin.index import current_index, stale_count  # index pulls in hnswlib; only projects with an index need it

    idx = current_index(project, v)
    if idx is None:
        return None
    live = project.live(idx.files["index_meta"].path)
    missing = stale_count(project, idx)
    return IndexState(
        v=v,
        state="stale" if missing else "fresh",
        samples=len(idx.labels),
        missing=missing,
        build=int(idx.meta.get("build", live.build or 0)),
        built_at=live.created_at,
        bytes=sum(f.bytes for f in idx.files.values()),
        m=idx.meta.get("m"),
        ef_construction=idx.meta.get("ef_construction"),
        graph_v=idx.meta.get("graph_v"),
    )


def _preconditioner_state(project: Project, v: str) -> PreconditionerState | None:
    if not project.live_files("precondition_meta", v):
        return None  # most projects have none: skip importing the module
    from dmin.precondition import current, stale_count

    pre = current(project, v)
    if pre is None:
        return None
    missing = stale_count(project, pre)
    return PreconditionerState(
        v=v,
        state="stale" if missing else "fresh",
        samples=len(pre.held),
        missing=missing,
        lambda_=float(pre.meta["lambda"]),
        built_at=project.live(pre.files["precondition_meta"].path).created_at,
        bytes=sum(f.bytes for f in pre.files.values()),
    )


def project_info(root: str | Path) -> ProjectInfo:
    """Summarize a project (ProjectError when it is not one; IntegrityError when a file it reads is damaged)."""
    project = Project.open(root)
    ident = project.identity
    state = project.state()
    every = ident.to_dict()
    brief = {k: every[k] for k in IDENTITY_BRIEF}
    brief["K"] = ident.K
    brief["identity_hash"] = ident.hash()
    # counted from the manifest's row counts, not a million-key set: rows of forgotten samples stay in files until
    # `compact` and no longer count; a sample has K rows at every v (what `verify` checks), so the samples files
    # alone say how many to take off
    held = sum(int(dead.sum()) for f in project.live_files("samples") if (dead := project.dead_rows(f)) is not None)
    samples = sum(f.rows for f in project.live_files("samples")) - held
    vs = []
    for v in ident.vs:
        grads = project.live_files("grads", v)
        rows = sum(f.rows for f in grads) - ident.K * held
        vs.append(
            StoredV(
                v=v,
                origin="collected" if v in ident.collect_vs else "derived",
                samples=rows // max(1, ident.K),
                rows=rows,
                files=len(grads),
                bytes=sum(f.bytes for f in grads),
            )
        )
    indexes = [s for v in ident.vs if v != "full" and (s := _index_state(project, v)) is not None]
    pres = [p for v in ident.vs if v != "full" and (p := _preconditioner_state(project, v)) is not None]
    return ProjectInfo(
        project=str(project.root),
        schema_version=ident.schema_version,
        dmin_version=ident.dmin_version,
        identity=brief,
        samples=samples,
        forgotten=len(project.forgotten()),
        failures=_distinct(project, "failures", "source"),
        vs=vs,
        indexes=indexes,
        preconditioners=pres,
        queries=_distinct(project, "queries", "query_id"),
        results=sum(f.rows for f in project.live_files("results")),
        commits=state.seq,
        last_commit_at=state.last_commit_at,
        bytes=sum(live.ref.bytes for live in state.files.values()),
    )
