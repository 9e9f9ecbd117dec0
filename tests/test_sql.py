"""`dmin sql` reads and never writes: reading statements only, refused in one line before they run, and a DuckDB
connection that cannot touch a file even if a statement got through; exports go outside the project."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import duckdb
import pyarrow.parquet as pq
import pytest
import xxhash

from dmin.errors import UsageError
from dmin.sql import run_sql
from dmin.store import Project
from dmin.store.catalog import check_read_only, connect

DMIN = [sys.executable, "-m", "dmin_cli"]


def files_of(root: Path) -> dict[str, str]:
    return {
        p.relative_to(root).as_posix(): xxhash.xxh3_64_hexdigest(p.read_bytes()) for p in root.rglob("*") if p.is_file()
    }


WRITES = [
    "COPY (SELECT 42) TO '{root}/dmin.json'",
    "COPY (SELECT 1) TO '{root}/samples/x.parquet' (FORMAT parquet)",
    "EXPORT DATABASE '{out}/db'",
    "EXPLAIN ANALYZE COPY (SELECT 1) TO '{out}/e.csv'",
    "ATTACH '{out}/a.db' AS a",
    "CREATE TABLE t AS SELECT 1",
    "INSERT INTO samples VALUES (1)",
    "DROP VIEW samples",
    "SET enable_external_access = true",
    "PRAGMA threads = 1",
    "PRAGMA enable_profiling",
    "CALL pragma_version()",
    "INSTALL httpfs",
    "SELECT 1; COPY (SELECT 1) TO '{out}/two.csv'",
]
READS = [
    "SELECT count(*) FROM samples",
    "WITH s AS (SELECT * FROM samples) SELECT count(*) FROM s",
    "FROM samples LIMIT 1",
    "VALUES (1)",
    "EXPLAIN SELECT * FROM samples",
    "DESCRIBE samples",
    "SHOW TABLES",
    "SUMMARIZE samples",
    "PRAGMA table_info('samples')",
]


def test_only_reading_statements_run_and_no_file_is_written(small_project: Project, tmp_path: Path) -> None:
    root, out = small_project.root, tmp_path / "outside"
    out.mkdir()
    before = files_of(root)
    for sql in WRITES:
        with pytest.raises(UsageError):
            run_sql(small_project, sql.format(root=root, out=out))
    for sql in READS:
        assert run_sql(small_project, sql).num_rows >= 1, sql
    assert run_sql(small_project, "SELECT count(*) AS n FROM samples").to_pylist() == [{"n": 20}]
    assert files_of(root) == before and list(out.iterdir()) == []


def test_the_connection_cannot_touch_files_even_past_the_statement_check(
    small_project: Project, tmp_path: Path
) -> None:
    con = connect(small_project)
    before = files_of(small_project.root)
    for sql in (
        f"COPY (SELECT 42) TO '{small_project.root}/dmin.json'",
        f"COPY (SELECT 1) TO '{tmp_path}/x.csv'",
        f"ATTACH '{tmp_path}/a.db' AS a",
        "SELECT * FROM read_csv('/etc/hostname')",
        f"SELECT * FROM read_parquet('{small_project.root}/samples/*.parquet')",
        "SET enable_external_access = true",
        "SET lock_configuration = false",
    ):
        with pytest.raises(duckdb.Error):
            con.execute(sql)
    assert con.execute("SELECT count(*) FROM grads_256").fetchone() == (40,)  # views still read the project
    assert files_of(small_project.root) == before and [p.name for p in tmp_path.iterdir()] == ["proj"]


def test_refusals_name_the_statement(small_project: Project) -> None:
    with pytest.raises(UsageError, match="COPY is refused before it runs"):
        check_read_only("COPY (SELECT 1) TO 'x.csv'")
    with pytest.raises(UsageError, match="one SQL statement"):
        check_read_only("SELECT 1; SELECT 2")
    r = subprocess.run([*DMIN, "sql", str(small_project.root), "DELETE FROM samples"], capture_output=True, text=True)
    assert r.returncode == 2 and r.stderr.count("\n") == 1 and "DELETE is refused" in r.stderr


def test_exports(small_project: Project, tmp_path: Path) -> None:
    root = str(small_project.root)
    q = "SELECT sample_id, label FROM samples ORDER BY sample_id"
    csv_out = subprocess.run([*DMIN, "sql", root, q, "--csv"], capture_output=True, text=True)
    assert csv_out.stdout.splitlines()[:2] == ["sample_id,label", "id00000,0"]
    rows = json.loads(subprocess.run([*DMIN, "sql", root, q, "--json"], capture_output=True, text=True).stdout)
    assert len(rows) == 20 and rows[1] == {"sample_id": "id00001", "label": 1}
    target = tmp_path / "out.parquet"
    done = subprocess.run([*DMIN, "sql", root, q, "--parquet", str(target), "--json"], capture_output=True, text=True)
    assert done.returncode == 0 and json.loads(done.stdout)["rows"] == 20
    assert pq.read_table(target).to_pylist() == rows
    before = files_of(small_project.root)
    inside = subprocess.run(
        [*DMIN, "sql", root, q, "--parquet", f"{root}/samples/x.parquet"], capture_output=True, text=True
    )
    assert inside.returncode == 2 and "inside the project" in inside.stderr
    assert files_of(small_project.root) == before


def test_a_closed_pipe_ends_the_output_quietly(small_project: Project) -> None:
    proc = subprocess.Popen(
        [*DMIN, "sql", str(small_project.root), "SELECT * FROM range(300000)", "--csv"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    assert proc.stdout is not None and proc.stderr is not None
    assert proc.stdout.readline() == b"range\n"  # then the reader goes away, as `| head -1` does
    proc.stdout.close()
    err = proc.stderr.read()
    assert proc.wait() == 141 and err == b""  # 128 + SIGPIPE, what a shell reports for Unix tools; no message
