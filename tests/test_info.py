"""`dmin info`: counts, sizes and index state agree with what the project holds, as it changes."""

from __future__ import annotations

import json

import pyarrow as pa
from typer.testing import CliRunner

from dmin.derive import derive_v
from dmin.forget import forget, select
from dmin.index import IndexParams, build_index
from dmin.info import IDENTITY_BRIEF, project_info
from dmin.store import Project
from dmin.store.project import now_utc
from dmin.store.schema import FAILURES, QUERIES, RESULTS
from dmin_cli.app import app
from tests.conftest import add_samples


def _log_query(p: Project, query_id: str, k: int) -> None:
    """A query and its top-k as `run_query` commits them (the vectors are not needed here)."""
    now = pa.array([now_utc()], QUERIES.field("created_at").type)
    queries = pa.table(
        {"query_id": [query_id], "image": [None], "prompt": [None], "label": [1], "seed": [None], "created_at": now},
        schema=QUERIES,
    )
    results = pa.table(
        {
            "query_id": [query_id] * k,
            "sample_id": [f"id{i:05d}" for i in range(k)],
            "rank": pa.array(range(1, k + 1), pa.int32()),
            "score": [1.0] * k,
            "scores": [[0.5, 0.5]] * k,
            "method": ["exact"] * k,
            "v": ["256"] * k,
            "created_at": pa.array([now_utc()] * k, RESULTS.field("created_at").type),
        },
        schema=RESULTS,
    )
    p.commit("queries", [("queries", None, "queries/meta", queries), ("results", None, "results", results)])


def _fail(p: Project, source: str) -> None:
    table = pa.table(
        {
            "source": [source],
            "reason": ["unreadable"],
            "created_at": pa.array([now_utc()], FAILURES.field("created_at").type),
        },
        schema=FAILURES,
    )
    p.commit("failures", [("failures", None, "failures", table)])


def test_info_follows_the_project(small_project: Project) -> None:
    p = small_project
    info = project_info(p.root)
    assert info.samples == 20 and info.failures == 0 and info.queries == 0 and info.results == 0
    assert list(info.identity) == [*IDENTITY_BRIEF, "K", "identity_hash"]
    assert info.identity["K"] == 2 and info.identity["identity_hash"] == p.identity.hash()
    (v256,) = info.vs
    files = [p.root / f.path for f in p.live_files("grads", "256")]
    assert (v256.v, v256.origin, v256.samples, v256.rows, v256.files) == ("256", "collected", 20, 40, 2)
    assert v256.bytes == sum(f.stat().st_size for f in files)
    assert info.indexes == [] and info.commits == 2

    derive_v(p, 64)
    build_index(p, "256", IndexParams(m=8))
    info = project_info(p.root)
    assert [(s.v, s.origin, s.rows) for s in info.vs] == [("256", "collected", 40), ("64", "derived", 40)]
    (index,) = info.indexes
    assert (index.v, index.state, index.samples, index.missing, index.build, index.m) == ("256", "fresh", 20, 0, 1, 8)

    add_samples(p, 20, 5)
    _fail(p, "broken.png")
    _fail(p, "broken.png")  # a rerun fails the same file again: one failure, not two
    _log_query(p, "q-a", 3)
    _log_query(p, "q-a", 3)  # the same query, another method or v: one query, six result rows
    info = project_info(p.root)
    assert info.samples == 25 and info.failures == 1 and info.queries == 1 and info.results == 6
    (index,) = info.indexes
    assert (index.state, index.samples, index.missing) == ("stale", 20, 5)
    gone = {path for e in p.entries() for path in e.supersedes}
    live = p.entries()
    assert info.bytes == sum((p.root / f.path).stat().st_size for e in live for f in e.files if f.path not in gone)
    assert info.commits == len(live) and info.last_commit_at == live[-1].created_at

    forget(p, select(p, sample_ids=[], source="img3.png"))  # a sample the index holds
    info = project_info(p.root)
    assert info.samples == 24 and info.forgotten == 1
    assert [(s.v, s.samples, s.rows) for s in info.vs] == [("256", 24, 48), ("64", 24, 48)]
    (index,) = info.indexes
    assert (index.state, index.missing) == ("stale", 5)  # the new samples it lacks; the forgotten one is filtered


def test_info_command_shows_the_brief_and_json(small_project: Project) -> None:
    build_index(small_project, "256", IndexParams())
    add_samples(small_project, 20, 2)
    runner = CliRunner()
    shown = runner.invoke(app, ["info", str(small_project.root)])
    assert shown.exit_code == 0, shown.output
    assert "samples    22 (0 failed)" in shown.output and "stale, build 1, 20 samples" in shown.output
    data = json.loads(runner.invoke(app, ["info", str(small_project.root), "--json"]).output)
    assert data["indexes"][0]["missing"] == 2 and data["vs"][0]["samples"] == 22
