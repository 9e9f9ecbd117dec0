"""What keeps a long-lived project fast: checkpoints bound what opening reads, small files are merged without
losing a row, and the scale bench (scripts/bench_scale.py) keeps working at N = 2,000."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from dmin.store import Project
from dmin.store.state import CHECKPOINT_EVERY
from dmin.store.upkeep import FANIN, sweep_superseded
from dmin.verify import verify
from tests.conftest import add_samples, make_identity

REPO = Path(__file__).resolve().parents[1]


def test_opening_reads_a_bounded_number_of_entries(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    p = Project.create(tmp_path / "proj", make_identity())
    for i in range(150):
        add_samples(p, i, 1)
    n = p.state().seq
    assert n >= 150 and (p.root / "manifest" / "checkpoints").is_dir()
    read: list[int] = []
    original = Project.read_entry

    def counting(self: Project, seq: int):  # type: ignore[no-untyped-def]
        read.append(seq)
        return original(self, seq)

    monkeypatch.setattr(Project, "read_entry", counting)
    fresh = Project.open(p.root)
    assert len(read) <= CHECKPOINT_EVERY + 1  # the checkpoint's own entry, then the ones after it
    assert fresh.sample_ids() == {f"id{i:05d}" for i in range(150)}
    replayed = Project(p.root, p.identity)
    for checkpoint in (p.root / "manifest" / "checkpoints").glob("*.json"):
        checkpoint.write_text(checkpoint.read_text().replace('"seq"', '"Seq"'))  # damaged: readers replay instead
    read.clear()
    assert replayed.state().same_as(fresh.state()) and len(read) == n
    report = verify(p.root, deep=True)
    assert report.healthy and {f.check for f in report.findings} == {"checkpoint"}  # named, as a warning


def test_a_merge_writes_at_most_one_row_group(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Merges stop at MERGED_BYTES (one row group of vectors), so no reader holds a multi-GB merged file at once;
    no row is lost for it."""
    import dmin.store.upkeep as upkeep

    p = Project.create(tmp_path / "proj", make_identity())
    add_samples(p, 0, 2, seed=0)
    one = p.live_files("grads", "256")[0].bytes
    monkeypatch.setattr(upkeep, "MERGED_BYTES", 4 * one)
    for i in range(2, 80, 2):
        add_samples(p, i, 2, seed=i)
    merges = [e for e in p.entries() if e.kind == "merge" and e.meta.get("table") == "grads"]
    assert merges and all(e.meta["files"] <= 4 for e in merges)  # 16 of a tier would have merged at once
    assert len(p.read_table("grads", "256", columns=["sample_id"])) == 160
    assert verify(p.root, deep=True).healthy


def test_a_query_reads_the_metadata_of_its_top_k_by_row_group(tmp_path: Path) -> None:
    """`samples_by_row` finds rows in files of several row groups (by the groups' row_id ranges, kept per file) and
    in small files, and after a merge reads the merged file, not the handles of the files it replaced."""
    import numpy as np

    p = Project.create(tmp_path / "proj", make_identity())
    add_samples(p, 0, 2500, seed=0)  # one file of three row groups
    for i in range(2500, 2510, 2):
        add_samples(p, i, 2, seed=i)
    assert pq_groups(p) >= 3
    want = np.array([0, 1023, 1024, 2047, 2499, 2500, 2509])
    rows = {r["row_id"]: r for _, t in p.samples_by_row(want) for r in t.to_pylist()}
    assert sorted(rows) == want.tolist()
    keys = p.sample_keys()
    for row_id, r in rows.items():
        assert keys.lookup([r["sample_id"]])[0] == row_id and r["source"] == f"img{int(r['sample_id'][2:])}.png"
    for i in range(2510, 2600, 2):  # enough small commits to merge the small files
        add_samples(p, i, 2, seed=i)
    assert any(e.kind == "merge" and e.meta.get("table") == "samples" for e in p.entries())
    again = {r["row_id"] for _, t in p.samples_by_row(np.array([2500, 2599])) for r in t.to_pylist()}
    assert again == {2500, 2599} and set(p._footers) <= {ref.path for ref in p.live_files("samples")}


def pq_groups(p: Project) -> int:
    import pyarrow.parquet as pq

    return max(pq.ParquetFile(p.root / ref.path).metadata.num_row_groups for ref in p.live_files("samples"))


def test_small_files_are_merged_and_no_row_is_lost(tmp_path: Path) -> None:
    p = Project.create(tmp_path / "proj", make_identity())
    for i in range(0, 80, 2):
        add_samples(p, i, 2, seed=i)
    grads = p.live_files("grads", "256")
    assert len(grads) < FANIN and len(p.live_files("samples")) < FANIN  # 40 commits, merged by tier as they came
    assert any(e.kind == "merge" for e in p.entries())
    t = p.read_table("grads", "256", columns=["sample_id", "t_idx"])
    assert t is not None and len(t) == 160 and len(set(zip(*t.to_pydict().values(), strict=True))) == 160
    stored = t.column("sample_id").to_pylist()
    assert stored == sorted(stored)  # commit order kept through the merges (ids were committed in order)
    assert sweep_superseded(p, grace=0)[0] > 0  # the merged-away files go once superseded for the grace
    report = verify(p.root, deep=True)
    assert report.healthy and not report.findings, report.findings
    assert len(p.sample_ids()) == 80


@pytest.mark.slow
def test_the_scale_bench_runs(tmp_path: Path) -> None:
    r = subprocess.run(
        [sys.executable, str(REPO / "scripts" / "bench_scale.py"), "--quick", "--json", "--work", str(tmp_path),
         "--keep"],
        capture_output=True,
        text=True,
    )
    assert r.returncode == 0, r.stderr[-3000:]
    out = json.loads(r.stdout.strip().splitlines()[-1])
    res = out["results"]["2000"]
    for op in ("open", "info", "verify", "verify_deep", "sql_join", "index", "index_add_1pct", "compact"):
        assert res[op]["seconds"] > 0 and res[op]["peak_rss_mb"] > 0, op
    assert res["index_loaded"]["recall_at_10"] >= 0.9
    for state in ("query_after_10", "query_after_all"):  # timed in alternation, each over both rounds' queries
        assert res[state]["runs"] == 2 and len(res[state]["exact_p50_by_run_s"]) == 2, res[state]
    assert res["live_files"] < res["manifest_entries"]  # the queries' and commits' small files were merged
    checks = out["targets"]["checks"]
    assert {"knn_p50_ms", "verify_deep_vs_disk", "collect_decision_s"} <= set(checks)
    again = subprocess.run(  # the kept project re-measured as it stands
        [sys.executable, str(REPO / "scripts" / "bench_scale.py"), "--existing", str(tmp_path / "n2000"), "--n", "2000",
         "--json"],
        capture_output=True,
        text=True,
    )
    assert again.returncode == 0, again.stderr[-3000:]
    existing = json.loads(again.stdout.strip().splitlines()[-1])["existing"]
    assert len(existing["verify_deep"]) == 2 and all(run["seconds"] > 0 for run in existing["verify_deep"])
    assert {"open_s", "info_s", "verify_s", "verify_deep_vs_disk", "exact_vs_numpy_scan", "knn_p50_ms"} == set(
        existing["checks"]
    )


def test_a_checkpointed_state_forgets_old_supersedes_as_a_replay_does() -> None:
    """A checkpoint stores superseded files in path order; pruning must not depend on the order they came in (at
    10^6 samples a state read from a checkpoint kept 65k superseded paths a replay had pruned: verify --deep)."""
    from datetime import datetime, timedelta, timezone

    from dmin.store.state import FORGET_SUPERSEDED_AFTER, State

    now = datetime(2026, 12, 6, tzinfo=timezone.utc)
    old = (now - timedelta(seconds=FORGET_SUPERSEDED_AFTER + 60)).isoformat()
    young = (now - timedelta(seconds=10)).isoformat()
    replay = State()
    replay.supersede("b-old.parquet", 1, old)  # the order they came in
    replay.supersede("c-young.parquet", 2, young)
    replay.supersede("a-young.parquet", 3, young)
    loaded = State.from_json(replay.to_json("h"), "checkpoint", "h")  # path order puts a young one first
    assert next(iter(loaded.superseded)) == "a-young.parquet"
    for state in (replay, loaded):
        state._forget_old_supersedes(now.isoformat())
    assert set(loaded.superseded) == set(replay.superseded) == {"a-young.parquet", "c-young.parquet"}
