"""A DuckDB connection with views over a project's committed files (never the global default connection).

Views: samples, grads_<v> (e.g. grads_4096, grads_full), queries, query_grads_<v>, results, failures.
Only files named by the manifest are visible; an empty table is an empty view with the right columns.
"""

from __future__ import annotations

import duckdb
import pyarrow as pa

from dmin.store import paths
from dmin.store.project import Project
from dmin.store.schema import FAILURES, QUERIES, RESULTS, SAMPLES_BASE, grads_schema


def _view(
    con: duckdb.DuckDBPyConnection, project: Project, name: str, table: str, v: str | None, empty: pa.Schema
) -> None:
    files = [str(project.root / f.path) for f in project.live_files(table, v)]
    if files:
        listing = ", ".join("'" + f.replace("'", "''") + "'" for f in files)
        con.execute(f'CREATE OR REPLACE VIEW "{name}" AS SELECT * FROM read_parquet([{listing}], union_by_name=true)')
    else:
        con.register(f"__empty_{name}", empty.empty_table())
        con.execute(f'CREATE OR REPLACE VIEW "{name}" AS SELECT * FROM "__empty_{name}"')


def connect(project: Project) -> duckdb.DuckDBPyConnection:
    """An in-memory DuckDB connection with one view per table of the project."""
    con = duckdb.connect(":memory:")
    ident = project.identity
    _view(con, project, "samples", "samples", None, SAMPLES_BASE)
    _view(con, project, "queries", "queries", None, QUERIES)
    _view(con, project, "results", "results", None, RESULTS)
    _view(con, project, "failures", "failures", None, FAILURES)
    for v in ident.vs:
        dim = ident.n if v == "full" else int(v)
        _view(con, project, f"grads_{paths.v_name(v)}", "grads", v, grads_schema(dim, ident.dtype))
        _view(
            con, project, f"query_grads_{paths.v_name(v)}", "query_grads", v, grads_schema(dim, ident.dtype, "query_id")
        )
    return con


def sql_exact_scores(con: duckdb.DuckDBPyConnection, v: str, query_id: str, k: int) -> list[tuple[str, float]]:
    """The exact top-k written as a user would in SQL: per-timestep inner products, summed."""
    return con.execute(
        f"""SELECT g.sample_id, SUM(list_inner_product(g.vec::FLOAT[], q.vec::FLOAT[])) AS score
            FROM grads_{v} g JOIN query_grads_{v} q ON g.t_idx = q.t_idx
            WHERE q.query_id = ? GROUP BY g.sample_id ORDER BY score DESC, g.sample_id LIMIT ?""",
        [query_id, k],
    ).fetchall()
