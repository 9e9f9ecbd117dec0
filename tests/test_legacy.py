"""A project written by the previous layout (tests/data/legacy-v1, made by main at 9ddacdb: flock commits,
part-<seq> names, vs only in dmin.json, one data_path, v=64 missing three samples) stays readable and usable."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np

from dmin.compact import compact
from dmin.derive import derive_v
from dmin.forget import forget, select
from dmin.index import IndexParams, build_index, current_index, knn
from dmin.relocate import roots
from dmin.score import exact_scores
from dmin.sql import run_sql
from dmin.store import Project
from dmin.verify import verify
from tests.conftest import add_samples

LEGACY = Path(__file__).parent / "data" / "legacy-v1"


def legacy(tmp_path: Path) -> Project:
    shutil.copytree(LEGACY, tmp_path / "legacy")
    return Project.open(tmp_path / "legacy")


def test_the_old_layout_reads_and_its_incomplete_v_is_repaired(tmp_path: Path) -> None:
    p = legacy(tmp_path)
    assert p.identity.vs == ("256", "64") and len(p.sample_ids()) == 15
    gap = [f for f in verify(p.root).findings if f.check == "complete"]
    assert [(f.file, f.message.split(":")[0]) for f in gap] == [("grads/v=64", "6 row(s) missing at v=64")]
    deep = [f for f in verify(p.root, deep=True).findings if f.check == "complete"]
    assert ("grads/v=64", "3 live sample(s) have no rows at v=64") in [(f.file, f.message) for f in deep]
    entry = derive_v(p, 64)  # compress --v 64 on a stored v: derives only what it lacks (3 samples, 1 query; K=2)
    assert entry is not None and sorted((f.table, f.rows) for f in entry.files) == [("grads", 6), ("query_grads", 2)]
    report = verify(p.root, deep=True)
    assert report.healthy, report.findings
    assert len(exact_scores(p, "64", np.ones((2, 64), np.float32)).ids) == 15
    idx = current_index(p, "64")  # the old build folder index/v=64/b000001
    assert idx is not None and len(idx.labels) == 12
    assert len(knn(p, idx, np.ones((2, 64), np.float32), 5, allow_stale=True)[0]) == 5
    _, info = build_index(p, "64", IndexParams())
    assert info == {"added": 3, "count": 15, "build": 2}
    assert [(r.root, r.samples, r.exists) for r in roots(p)] == [("/data/legacy-images", 15, False)]
    add_samples(p, 20, 2)  # a new commit writes both stored v's
    assert verify(p.root, deep=True).healthy
    assert run_sql(p, "SELECT count(*) n FROM grads_64").to_pylist() == [{"n": 34}]


def test_forget_and_compact_on_the_old_layout(tmp_path: Path) -> None:
    p = legacy(tmp_path)
    derive_v(p, 64)
    assert run_sql(p, "SELECT sample_id FROM results").to_pylist() == [{"sample_id": "id00003"}]
    forget(p, select(p, sample_ids=[], source="img3.png"))
    assert run_sql(p, "SELECT count(*) n FROM results").to_pylist() == [{"n": 0}]
    report = compact(p, orphan_grace=0)
    assert report.indexes_erased == ["64"] and report.rows_dropped["results"] == 1
    assert not any(f.name.startswith("part-000000001") for f in (p.root / "samples").iterdir())  # rewritten
    assert verify(p.root, deep=True).healthy and "id00003" not in Project.open(p.root).sample_ids()
