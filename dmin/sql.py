"""`dmin sql`: one statement that reads, over a project's views (`store.catalog`), as an Arrow table; exports go
outside the project."""

from __future__ import annotations

from pathlib import Path

import duckdb
import pyarrow as pa
import pyarrow.parquet as pq

from dmin.errors import DminError, UsageError
from dmin.store.atomic import write_atomic
from dmin.store.catalog import check_read_only, connect
from dmin.store.project import Project


def run_sql(project: Project, sql: str) -> pa.Table:
    """The result of `sql`, refused (UsageError) unless it only reads."""
    check_read_only(sql)
    con = connect(project)
    try:
        rel = con.sql(sql)
        return rel.to_arrow_table() if rel is not None else pa.table({})
    except duckdb.Error as exc:
        raise DminError(f"SQL error: {str(exc).splitlines()[0]}") from exc
    finally:
        con.close()


def export_parquet(table: pa.Table, path: str | Path, project: Project) -> Path:
    """Write a result to a Parquet file outside the project, atomically; refused inside it (only commits write
    there)."""
    target = Path(path).resolve()
    if target.is_relative_to(project.root.resolve()):
        raise UsageError(
            f"--parquet {path}: inside the project, where only dmin's commits write; choose a path outside it"
        )
    if target.is_dir():
        raise UsageError(f"--parquet {path}: is a directory; give a file name")
    if not target.parent.is_dir():
        raise UsageError(f"--parquet {path}: no such directory {target.parent}")
    write_atomic(target, lambda tmp: pq.write_table(table, tmp))
    return target
