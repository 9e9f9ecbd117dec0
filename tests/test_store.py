"""The gradient database: identity, commits, readers, SQL, derive, verify with planted defects, kill-safety."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest
import torch

from dmin.compressor import Compressor, fold
from dmin.derive import derive_v
from dmin.errors import DminWarning, IdentityMismatch, ProjectError, SchemaVersionError
from dmin.score import exact_scores
from dmin.store import Project
from dmin.store.catalog import connect
from dmin.store.schema import all_schemas
from dmin.store.tables import SampleBatch
from dmin.verify import verify
from tests.conftest import add_samples, make_identity

REPO = Path(__file__).resolve().parents[1]


def test_schema_files_are_in_sync_with_code() -> None:
    for name, body in all_schemas().items():
        on_disk = json.loads((REPO / "schemas" / f"{name}.schema.json").read_text())
        assert on_disk == json.loads(json.dumps(body)), f"schemas/{name}.schema.json is stale: regenerate it"


def test_identity_is_sorted_json_and_mismatch_shows_diff(small_project: Project) -> None:
    text = (small_project.root / "dmin.json").read_text()
    assert list(json.loads(text)) == sorted(json.loads(text))
    with pytest.raises(IdentityMismatch, match=r"noise_seed: 0 \(project\) ≠ 1 \(requested\)"):
        Project.create(small_project.root, make_identity(noise_seed=1))


def test_vectors_of_the_first_compressor_are_never_compared_with_new_ones(small_project: Project) -> None:
    path = small_project.root / "dmin.json"
    raw = json.loads(path.read_text())
    del raw["compressor"]  # written before dmin.json named its compressor: the grouped-runs F
    path.write_text(json.dumps(raw))
    assert Project.open(small_project.root).identity.compressor == "runs8-grouped"
    with pytest.raises(IdentityMismatch, match="compressor"):
        Project.open(small_project.root, expect=make_identity())


def test_newer_schema_version_is_refused(small_project: Project) -> None:
    path = small_project.root / "dmin.json"
    raw = json.loads(path.read_text())
    raw["schema_version"] = 99
    path.write_text(json.dumps(raw))
    with pytest.raises(SchemaVersionError, match="upgrade dmin"):
        Project.open(small_project.root)


def test_unknown_identity_keys_are_said_not_dropped_silently(small_project: Project) -> None:
    path = small_project.root / "dmin.json"
    raw = json.loads(path.read_text())
    raw["future_field"] = 1
    path.write_text(json.dumps(raw))
    with pytest.warns(DminWarning, match="unknown key.*future_field"):
        again = Project.open(small_project.root)
    assert again.identity.hash() == small_project.identity.hash()  # the known fields are read as before
    assert "future_field" in json.loads(path.read_text())  # and the file is left as it was
    r = subprocess.run([sys.executable, "-m", "dmin_cli", "info", str(small_project.root), "--json"],
                       capture_output=True, text=True)
    assert r.returncode == 0 and json.loads(r.stdout)["samples"] == 20
    assert r.stderr.count("\n") == 1 and r.stderr.startswith("warning:") and "future_field" in r.stderr


def test_not_a_project(tmp_path: Path) -> None:
    with pytest.raises(ProjectError, match="not a dmin project"):
        Project.open(tmp_path)


def test_commit_dedups_and_assigns_dense_row_ids(small_project: Project) -> None:
    add_samples(small_project, 18, 5)  # 18 and 19 are committed already
    t = small_project.read_table("samples")
    assert t is not None
    ids = t.column("sample_id").to_pylist()
    assert len(ids) == len(set(ids)) == 23
    assert sorted(t.column("row_id").to_pylist()) == list(range(23))
    assert verify(small_project.root, deep=True).healthy


def test_writers_produce_exactly_the_schemas(small_project: Project) -> None:
    report = verify(small_project.root, deep=True)
    assert report.healthy, report.findings
    assert report.checked["schemas"] == 4


def test_exact_scores_match_numpy_and_sql(small_project: Project) -> None:
    rng = np.random.default_rng(5)
    q = rng.standard_normal((2, 256)).astype(np.float32)
    s = exact_scores(small_project, "256", q)
    t = small_project.read_table("grads", "256")
    assert t is not None
    vec = t.column("vec").combine_chunks().values.to_numpy().reshape(-1, 2, 256)
    want = np.einsum("nkd,kd->n", vec.astype(np.float64), q.astype(np.float64))
    np.testing.assert_allclose(s.total, want, rtol=1e-5)
    # the same numbers through DuckDB SQL
    from dmin.store.tables import grads_table

    small_project.commit(
        "queries",
        [
            (
                "query_grads",
                "256",
                "queries/grads/v=256",
                grads_table("query_id", ["q1"], (10.0, 500.0), q[None], np.ones((1, 2)), np.ones((1, 2)), "float32"),
            )
        ],
    )
    from dmin.store.catalog import sql_exact_scores

    con = connect(Project.open(small_project.root))
    top = sql_exact_scores(con, "256", "q1", 5)
    assert [r[0] for r in top] == [s.ids[i] for i in s.top(5)]
    np.testing.assert_allclose([r[1] for r in top], s.total[s.top(5)], rtol=1e-4)


def test_derive_folds_and_is_idempotent(small_project: Project) -> None:
    assert derive_v(small_project, 64) is not None
    assert derive_v(small_project, 64) is None
    p = Project.open(small_project.root)
    assert "64" in p.identity.vs
    a = p.read_table("grads", "256")
    b = p.read_table("grads", "64")
    assert a is not None and b is not None
    va = torch.from_numpy(a.column("vec").combine_chunks().values.to_numpy().reshape(-1, 256).copy())
    vb = b.column("vec").combine_chunks().values.to_numpy().reshape(-1, 64)
    np.testing.assert_allclose(fold(va, 64).numpy(), vb, rtol=1e-5, atol=1e-5)
    assert verify(p.root, deep=True).healthy


def _first(p: Project, table: str) -> Path:
    return p.root / p.live_files(table)[0].path


def _defects(root: Path, deep: bool = False) -> list[tuple[str, str]]:
    r = verify(root, deep=deep)
    return [(f.check, f.file) for f in r.findings if f.severity == "defect"]


def test_verify_truncated_file(small_project: Project) -> None:
    path = _first(small_project, "grads")
    path.write_bytes(path.read_bytes()[:-100])
    assert ("size", path.relative_to(small_project.root).as_posix()) in _defects(small_project.root)


def test_verify_flipped_byte_needs_deep(small_project: Project) -> None:
    path = _first(small_project, "grads")
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF
    path.write_bytes(bytes(data))
    rel = path.relative_to(small_project.root).as_posix()
    assert ("checksum", rel) in _defects(small_project.root, deep=True)


def test_verify_deleted_file(small_project: Project) -> None:
    path = _first(small_project, "samples")
    path.unlink()
    assert ("presence", path.relative_to(small_project.root).as_posix()) in _defects(small_project.root)


def test_verify_duplicate_rows_nan_and_schema(small_project: Project) -> None:
    from dmin.store.tables import grads_table

    K = 2
    # a duplicate committed through a second entry that bypasses commit_samples' de-duplication
    dup = grads_table(
        "sample_id",
        ["id00000"],
        (10.0, 500.0),
        np.zeros((1, K, 256), np.float32),
        np.ones((1, K)),
        np.ones((1, K)),
        "float32",
    )
    small_project.commit("samples", [("grads", "256", "grads/v=256", dup)])
    assert "complete" in {c for c, _ in _defects(small_project.root)}  # the quick check counts rows
    assert "duplicates" in {c for c, _ in _defects(small_project.root, deep=True)}  # the deep one names them
    nan = grads_table(
        "sample_id",
        ["zzz"],
        (10.0, 500.0),
        np.full((1, K, 256), np.nan, np.float32),
        np.ones((1, K)),
        np.ones((1, K)),
        "float32",
    )
    small_project.commit("samples", [("grads", "256", "grads/v=256", nan)])
    assert "finite" in {c for c, _ in _defects(small_project.root, deep=True)}
    bad = pa.table({"sample_id": ["x"], "t_idx": pa.array([0], pa.int64())})
    small_project.commit("samples", [("grads", "256", "grads/v=256", bad)])
    assert "schema" in {c for c, _ in _defects(small_project.root)}


def test_deep_verify_scans_float16_vectors(tmp_path: Path) -> None:
    """A project storing float16 vectors verifies healthy, deep, and a NaN among them is found (the scan once
    failed on every float16 file: numba cannot load float16 values)."""
    from dmin.store.tables import grads_table

    project = Project.create(tmp_path / "p", make_identity(dtype="float16"))
    add_samples(project, 0, 20)
    report = verify(project.root, deep=True)
    assert report.healthy and report.checked["vectors"] == 20 * project.identity.K
    nan = np.zeros((1, project.identity.K, 256), np.float32)
    nan[0, 1, 7] = np.nan
    row = grads_table("sample_id", ["zzz"], (10.0, 500.0), nan, np.ones((1, 2)), np.ones((1, 2)), "float16")
    project.commit("samples", [("grads", "256", "grads/v=256", row)])
    assert "finite" in {c for c, _ in _defects(project.root, deep=True)}


def test_deep_verify_checks_the_manifest_itself_when_no_worker_process_starts(
    small_project: Project, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Deep verify replays the manifest in a worker process; where none can start, it does the work itself."""
    from concurrent.futures import Future
    from concurrent.futures.process import BrokenProcessPool

    verify_module = sys.modules["dmin.verify"]  # `dmin.verify` the attribute is the function

    class NoWorkers:
        def __init__(self, *args: object, **kwargs: object) -> None:
            pass

        def __enter__(self) -> NoWorkers:
            return self

        def __exit__(self, *args: object) -> None:
            pass

        def submit(self, *args: object) -> Future[object]:
            future: Future[object] = Future()
            future.set_exception(BrokenProcessPool("no worker could start"))
            return future

    stray = small_project.root / "grads" / "v=256" / "stray.parquet"
    stray.write_bytes(b"left by an interrupted write")
    monkeypatch.setattr(verify_module, "ProcessPoolExecutor", NoWorkers)
    report = verify(small_project.root, deep=True)
    assert report.checked["manifest_entries"] == small_project.state().seq  # every entry, replayed here
    assert ("orphan", "grads/v=256/stray.parquet") in {(f.check, f.file) for f in report.findings}
    monkeypatch.undo()  # and the same findings from the worker processes
    apart = verify(small_project.root, deep=True)
    assert apart.checked["manifest_entries"] == report.checked["manifest_entries"]
    assert [(f.check, f.file) for f in apart.findings] == [(f.check, f.file) for f in report.findings]


def test_verify_identity_swap(small_project: Project, tmp_path: Path) -> None:
    other = Project.create(tmp_path / "other", make_identity(model_fingerprint="m1"))
    (small_project.root / "dmin.json").write_bytes((other.root / "dmin.json").read_bytes())
    assert ("identity", "dmin.json") in _defects(small_project.root)


def test_verify_manifest_edit(small_project: Project) -> None:
    path = small_project.root / "manifest" / "000000001.json"
    path.write_text(path.read_text().replace('"rows": 12', '"rows": 13'))
    assert ("manifest", "manifest/000000001.json") in _defects(small_project.root)


def test_verify_cli_exit_codes(small_project: Project) -> None:
    dmin = [sys.executable, "-m", "dmin_cli"]
    ok = subprocess.run([*dmin, "verify", str(small_project.root), "--json"], capture_output=True, text=True)
    assert ok.returncode == 0 and json.loads(ok.stdout)["healthy"] is True
    _first(small_project, "samples").unlink()
    bad = subprocess.run([*dmin, "verify", str(small_project.root)], capture_output=True, text=True)
    assert bad.returncode == 1 and "missing" in bad.stdout
    usage = subprocess.run([*dmin, "verify", str(small_project.root), "--bogus"], capture_output=True, text=True)
    assert usage.returncode == 2


WRITER = textwrap.dedent("""
    import sys
    sys.path.insert(0, {repo!r})
    from dmin.store import Project
    from tests.conftest import add_samples
    p = Project.open({root!r})
    print("ready", flush=True)
    for i in range(1000):
        add_samples(p, 100 + 7 * i, 7, v="256")
""")


def test_writer_killed_mid_write_leaves_a_clean_database(small_project: Project) -> None:
    before = set(small_project.sample_ids())
    for delay in (0.05, 0.2, 0.4):
        proc = subprocess.Popen(
            [sys.executable, "-c", WRITER.format(repo=str(REPO), root=str(small_project.root))], stdout=subprocess.PIPE
        )
        assert proc.stdout is not None
        proc.stdout.readline()
        import time

        time.sleep(delay)
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
        report = verify(small_project.root, deep=True)
        assert report.healthy, report.findings
        after = Project.open(small_project.root).sample_ids()
        assert before <= after
        before = set(after)


def _derived_project(root: Path, vs: tuple[str, str], tamper: bool) -> Project:
    """20 samples stored at two v's, the smaller derived from the larger (one row off by 0.1 when `tamper`)."""
    ident = make_identity(collect_vs=vs)
    p = Project.create(root, ident)
    big, small = vs
    rng = np.random.default_rng(3)
    dim = ident.n if big == "full" else int(big)
    rows = rng.standard_normal((20, ident.K, dim)).astype(np.float32)
    if big == "full":
        rows /= np.linalg.norm(rows, axis=2, keepdims=True)
        flat = torch.from_numpy(rows.reshape(-1, dim))
        derived = Compressor(ident.n, ident.compress_seed).compress(flat, int(small)).numpy().reshape(20, ident.K, -1)
    else:
        derived = fold(torch.from_numpy(rows), int(small)).numpy()
    if tamper:
        derived[0, 0, 0] += 0.1
    ids = [f"id{i:05d}" for i in range(20)]
    p.commit_samples(
        SampleBatch(ids, ids, [None] * 20, [0] * 20, {}, ident.timesteps, {big: rows, small: derived},
                    np.ones((20, ident.K)), np.ones((20, ident.K)))
    )
    return p


@pytest.mark.parametrize("vs", [("256", "64"), ("full", "64")])
def test_deep_verify_finds_a_derived_v_that_is_not_the_fold_of_its_parent(tmp_path: Path, vs: tuple[str, str]) -> None:
    good = verify(_derived_project(tmp_path / "good", vs, tamper=False).root, deep=True)
    assert good.healthy and good.checked["fold_checks"] > 0
    bad = verify(_derived_project(tmp_path / "bad", vs, tamper=True).root, deep=True)
    assert [f.check for f in bad.findings if f.severity == "defect"] == ["fold"]
