"""`forget` and `compact`: forgotten samples are absent from every reader at once, kept out of later collects, and
after compaction no byte of them is left in any file under the project."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from dmin.compact import compact
from dmin.derive import derive_v
from dmin.errors import UsageError
from dmin.forget import forget, select
from dmin.index import IndexParams, build_index, current_index, knn
from dmin.score import exact_scores
from dmin.sql import run_sql
from dmin.store import Project
from dmin.store.catalog import connect
from dmin.store.project import SampleBatch, grads_table
from dmin.store.schema import QUERIES, RESULTS
from dmin.verify import verify
from dmin.vs import complete
from tests.conftest import add_samples, make_identity

DMIN = [sys.executable, "-m", "dmin_cli"]


def stored_vector(p: Project, v: str, sample_id: str) -> np.ndarray:
    """(K, v) float32 vectors of a sample as committed (forgotten or not)."""
    t = p.read_table("grads", v, live=False)
    assert t is not None
    rows = [i for i, s in enumerate(t.column("sample_id").to_pylist()) if s == sample_id]
    vec = t.column("vec").combine_chunks().values.to_numpy().reshape(len(t), -1)
    return vec[rows[-2:]].astype(np.float32)


def test_forgotten_samples_are_absent_from_every_reader(small_project: Project) -> None:
    p = small_project  # id00000..id00019, v=256, K=2
    derive_v(p, 64)
    build_index(p, "256", IndexParams())
    build_index(p, "64", IndexParams())
    q3 = stored_vector(p, "256", "id00003")
    assert exact_scores(p, "256", q3).ids[exact_scores(p, "256", q3).top(1)[0]] == "id00003"  # its own best match

    first = forget(p, select(p, source="img[37].png"))
    second = forget(p, select(p, where="label = 1 AND row_id > 5"))  # labels i % 10: id00011
    assert first is not None and second is not None
    gone = {"id00003", "id00007", "id00011"}
    everyone = {f"id{i:05d}" for i in range(20)}
    assert p.sample_ids() == everyone - gone and p.forgotten() == gone

    for v in ("256", "64"):
        q = stored_vector(p, v, "id00003")
        assert not gone & set(exact_scores(p, v, q).ids)
        idx = current_index(p, v)  # built before the forget: its graph still holds them, searches filter them
        assert idx is not None and gone <= set(idx.sample_ids.to_pylist())
        ids, _, _ = knn(p, idx, q, 20)
        assert len(ids) == 17 and not gone & set(ids)
    add_samples(p, 20, 4)
    build_index(p, "256", IndexParams())  # an incremental build on top of one that holds forgotten labels
    ids, _, _ = knn(p, current_index(p, "256"), q3, 30)  # type: ignore[arg-type]
    assert len(ids) == 21 and not gone & set(ids)

    counts = run_sql(
        p,
        "SELECT (SELECT count(*) FROM samples) s, (SELECT count(*) FROM grads_256) g, "
        "(SELECT count(*) FROM grads_64) g64, (SELECT count(*) FROM forgotten) f",
    ).to_pylist()[0]
    assert counts == {"s": 21, "g": 42, "g64": 42, "f": 3}
    assert not gone & set(run_sql(p, "SELECT sample_id FROM samples").column("sample_id").to_pylist())
    report = verify(p.root, deep=True)
    assert report.healthy, report.findings

    # the suppression list: the same samples offered again are skipped, unless asked for on purpose
    again = _batch(p, ["id00003", "id00020"], seed=5)
    assert p.committed(sorted(gone)).all() and p.commit_samples(again, complete=complete) is None
    entry = p.commit_samples(again, include_forgotten=True, complete=complete)
    assert entry is not None and entry.meta["samples"] == 1  # id00020 is live already
    assert "id00003" in p.sample_ids() and p.forgotten() == {"id00007", "id00011"}
    live = p.read_table("grads", "256")
    assert live is not None and live.column("sample_id").to_pylist().count("id00003") == 2  # K rows, not 2K
    np.testing.assert_array_equal(stored_vector(p, "256", "id00003"), again.vecs["256"][0])
    assert verify(p.root, deep=True).healthy


def _batch(p: Project, ids: list[str], seed: int, sources: list[str] | None = None, **extra: list[str]) -> SampleBatch:
    rng = np.random.default_rng(seed)
    K = p.identity.K
    return SampleBatch(
        ids,
        sources or [f"{s}.png" for s in ids],
        [f"caption of {s}" for s in ids],
        [1] * len(ids),
        {"subset": ["base"] * len(ids), **extra},
        p.identity.timesteps,
        {"256": rng.standard_normal((len(ids), K, 256)).astype(np.float32)},
        np.ones((len(ids), K)),
        np.full((len(ids), K), 0.5),
    )


TEXT = ("source", "caption", "metadata", "id")


def holders(root: Path, needles: dict[str, bytes]) -> dict[str, list[str]]:
    """For each needle, the files under root that hold it: in their raw bytes, or for text (Parquet string pages may
    be compressed) in any decoded string value."""
    found: dict[str, list[str]] = {name: [] for name in needles}
    for path in sorted(f for f in root.rglob("*") if f.is_file()):
        raw = path.read_bytes()
        strings: list[str] = []
        if path.suffix == ".parquet":
            table = pq.read_table(path)
            for col in table.columns:
                if pa.types.is_string(col.type):
                    strings += [s for s in col.to_pylist() if s is not None]
        for name, needle in needles.items():
            text = needle.decode() if name in TEXT else None  # vector bytes are stored raw (uncompressed pages)
            if needle in raw or (text is not None and any(text in s for s in strings)):
                found[name].append(path.relative_to(root).as_posix())
    return found


def test_compact_leaves_no_byte_of_a_forgotten_sample(tmp_path: Path) -> None:
    p = Project.create(tmp_path / "proj", make_identity())
    add_samples(p, 0, 10)
    secret_id = "5ec7e7a11d0000000000000000000042"
    secret = _batch(p, [secret_id], seed=7, sources=["opt-out/private-7f3a9c.png"], donor=["donor-only-3d9f"])
    secret.captions = ["a private caption 5b1e"]
    p.commit_samples(secret, complete=complete)
    add_samples(p, 20, 5)
    derive_v(p, 64)
    for v in ("256", "64"):
        build_index(p, v, IndexParams(graph_v=64))  # the v=64 graph holds the stored v=64 vectors themselves
    _commit_results_naming(p, secret_id)
    build_index(p, "64", IndexParams(graph_v=64), rebuild=True)  # an older build on disk, superseded
    vec = {v: stored_vector(p, v, secret_id) for v in ("256", "64")}
    needles = {
        "source": b"opt-out/private-7f3a9c.png",
        "caption": b"a private caption 5b1e",
        "metadata": b"donor-only-3d9f",
        "vector v=256": vec["256"][0].tobytes(),
        "vector v=64": vec["64"][1].tobytes(),
    }
    rng = np.random.default_rng(3)
    query = rng.standard_normal((2, 256)).astype(np.float32)
    before = exact_scores(p, "256", query)

    forget(p, select(p, sample_ids=[secret_id]))
    assert [f.message.split(" still")[0] for f in verify(p.root).findings if f.check == "forgotten"] == [
        "1 forgotten sample(s)"
    ]
    found = holders(p.root, needles)
    assert all(found.values()), found  # the scan sees every needle while the files still hold them
    assert any(f.startswith("index/") for f in found["vector v=64"])  # the graph holds the vector too

    report = compact(p, orphan_grace=0)
    assert report.seq is not None and sorted(report.indexes_erased) == ["256", "64"]
    assert report.rows_dropped == {"samples": 1, "grads v=256": 2, "grads v=64": 2, "results": 1}
    assert holders(p.root, needles) == {name: [] for name in needles}
    id_holders = holders(p.root, {"id": secret_id.encode()})["id"]
    assert id_holders and all(f.startswith("tombstones/") for f in id_holders)  # only the suppression list keeps it

    p = Project.open(p.root)
    after = exact_scores(p, "256", query)
    keep = [i for i, s in enumerate(before.ids) if s != secret_id]
    assert after.ids == [before.ids[i] for i in keep]
    np.testing.assert_array_equal(after.total, before.total[keep])  # the rest is untouched, bit for bit
    named = {f.path for e in p.entries() for f in e.files}
    on_disk = {f.relative_to(p.root).as_posix() for f in p.root.rglob("*") if f.is_file()}
    live = {
        f.path
        for t in (
            "samples",
            "grads",
            "results",
            "index",
            "index_labels",
            "index_meta",
            "tombstones",
            "queries",
            "query_grads",
        )
        for f in p.live_files(t)
    }
    assert on_disk - {"dmin.json"} - {n for n in on_disk if n.startswith("manifest/")} == live <= named
    report_v = verify(p.root, deep=True)
    assert report_v.healthy and not report_v.findings, report_v.findings  # nothing left to compact
    ids, _, _ = knn(p, current_index(p, "64"), vec["64"], 5)  # type: ignore[arg-type]
    assert secret_id not in ids and len(ids) == 5
    assert p.commit_samples(secret, complete=complete) is None  # still suppressed
    assert compact(p, orphan_grace=0).seq is None  # nothing left to do


def _commit_results_naming(p: Project, sample_id: str) -> None:
    ts = pa.array([pa.scalar(0, pa.timestamp("us", tz="UTC")).as_py()], pa.timestamp("us", tz="UTC"))
    queries = pa.table(
        {
            "query_id": ["q1"],
            "image": [None],
            "prompt": [None],
            "label": pa.array([1], pa.int64()),
            "seed": pa.array([None], pa.int64()),
            "created_at": ts,
        },
        schema=QUERIES,
    )
    results = pa.table(
        {
            "query_id": ["q1", "q1"],
            "sample_id": [sample_id, "id00001"],
            "rank": pa.array([1, 2], pa.int32()),
            "score": [1.5, 1.0],
            "scores": [[0.7, 0.8], [0.5, 0.5]],
            "method": ["exact"] * 2,
            "v": ["256"] * 2,
            "created_at": pa.concat_arrays([ts, ts]),
        },
        schema=RESULTS,
    )
    q = np.zeros((1, 2, 256), np.float32)
    p.commit(
        "queries",
        [
            ("queries", None, "queries/meta", queries),
            ("results", None, "results", results),
            (
                "query_grads",
                "256",
                "queries/grads/v=256",
                grads_table("query_id", ["q1"], (10.0, 500.0), q, np.ones((1, 2)), np.ones((1, 2)), "float32"),
            ),
        ],
    )


def test_forget_selectors(small_project: Project) -> None:
    p = small_project
    with pytest.raises(UsageError, match="select what to forget"):
        select(p)
    with pytest.raises(UsageError, match="not a sample_id"):
        select(p, sample_ids=["id00001"])
    with pytest.raises(UsageError, match=r"--where .*one SQL statement"):
        select(p, where="1=1; DROP VIEW samples")
    with pytest.raises(UsageError, match=r"--where .*no_such_column"):
        select(p, where="no_such_column = 1")
    both = select(p, source="img1*.png", where="label >= 5")  # AND: img15..img19
    assert sorted(s["source"] for s in both.samples) == [f"img{i}.png" for i in range(15, 20)]
    ahead = "ab" * 16  # not collected yet: suppressed all the same (an opt-out that arrives first)
    sel = select(p, sample_ids=[ahead])
    assert sel.samples == [] and sel.not_committed == [ahead]
    forget(p, sel)
    assert ahead in p.forgotten() and p.committed([ahead])[0] and not p.committed([ahead], include_forgotten=True)[0]
    assert select(p, sample_ids=[ahead]).already == [ahead] and forget(p, select(p, sample_ids=[ahead])) is None


def test_forget_and_compact_cli(small_project: Project) -> None:
    root = str(small_project.root)
    dry = subprocess.run(
        [*DMIN, "forget", root, "--source", "img1?.png", "--dry-run", "--json"], capture_output=True, text=True
    )
    assert dry.returncode == 0, dry.stderr
    assert json.loads(dry.stdout)["selected"] == 10 and json.loads(dry.stdout)["seq"] is None
    asks = subprocess.run(
        [*DMIN, "forget", root, "--source", "img1?.png"], capture_output=True, text=True, stdin=subprocess.DEVNULL
    )
    assert asks.returncode == 2 and "--yes" in asks.stderr and len(Project.open(root).sample_ids()) == 20
    done = subprocess.run(
        [*DMIN, "forget", root, "--source", "img1?.png", "--yes", "--json"], capture_output=True, text=True
    )
    out = json.loads(done.stdout)
    assert done.returncode == 0 and out["forgotten"] == 10 and out["seq"] is not None
    assert len(Project.open(root).sample_ids()) == 10
    comp = subprocess.run([*DMIN, "compact", root, "--json", "--orphan-grace", "0"], capture_output=True, text=True)
    report = json.loads(comp.stdout)
    assert comp.returncode == 0 and report["rows_dropped"] == {"samples": 10, "grads v=256": 20}
    assert report["files_deleted"] >= 3 and verify(root, deep=True).healthy


def test_tables_without_sample_rows_read_whole_after_a_forget(small_project: Project) -> None:
    _commit_results_naming(small_project, "id00004")
    forget(small_project, select(small_project, source="img4.png"))
    queries = small_project.read_table("queries", columns=["query_id"])
    assert queries is not None and queries.column("query_id").to_pylist() == ["q1"]
    results = small_project.read_table("results", columns=["rank"])
    assert results is not None and results.column("rank").to_pylist() == [2]  # the forgotten one's row is hidden


def test_no_name_sql_can_reach_holds_a_forgotten_row(small_project: Project) -> None:
    """Every relation a statement can name — the views, the datasets behind them, DuckDB's own listings — lacks the
    forgotten sample's id and source, through `dmin sql` and through `dmin.connect` alike."""
    p = small_project
    _commit_results_naming(p, "id00004")
    forget(p, select(p, source="img4.png"))
    con = connect(p)
    names = {r[0] for r in con.sql("SHOW TABLES").fetchall()}
    names |= {r[0] for r in con.sql("SELECT view_name FROM duckdb_views() WHERE NOT internal").fetchall()}
    names |= {r[0] for r in con.sql("SELECT table_name FROM duckdb_tables()").fetchall()}
    assert {"samples", "results", "grads_256", "forgotten"} <= names and any(n.startswith("__") for n in names)
    for name in sorted(names - {"forgotten"}):
        for table in (con.sql(f'SELECT * FROM "{name}"').to_arrow_table(), run_sql(p, f'SELECT * FROM "{name}"')):
            cells = {c for col in table.columns if pa.types.is_string(col.type) for c in col.to_pylist()}
            assert "id00004" not in cells and "img4.png" not in cells, name
    assert con.sql("SELECT sample_id FROM forgotten").fetchall() == [("id00004",)]
