"""A read-only DuckDB connection with views over a project's live rows (never the global default connection).

Views: samples, grads_<v> (e.g. grads_4096, grads_full), queries, query_grads_<v>, results, failures, and forgotten
(the suppression list). Only files named by the manifest are visible, minus rows of forgotten samples; an empty
table is an empty view with the right columns.

Read-only by construction, not by convention: DuckDB reads the committed files through Arrow datasets that dmin
opens, and the connection is then locked with file system access off (`enable_external_access = false`, no
temporary directory, `lock_configuration = true`), so no statement can open, write or plant a file, or undo
the settings. `check_read_only` also refuses every statement but a read before it runs, with one clear line.
"""

from __future__ import annotations

import re

import duckdb
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.dataset as pads
import pyarrow.parquet as pq

from dmin.errors import UsageError
from dmin.store import paths
from dmin.store.project import Project
from dmin.store.schema import FAILURES, QUERIES, RESULTS, SAMPLES_BASE, grads_schema

READ_PRAGMAS = frozenset(
    {
        "table_info",
        "show",
        "show_tables",
        "show_tables_expanded",
        "show_databases",
        "database_list",
        "database_size",
        "version",
        "platform",
        "functions",
        "collations",
        "storage_info",
        "metadata_info",
        "user_agent",
    }
)
ALLOWED = "SELECT, WITH, FROM, VALUES, EXPLAIN, DESCRIBE, SHOW, SUMMARIZE and PRAGMAs that read (e.g. table_info)"


def _view(
    con: duckdb.DuckDBPyConnection, project: Project, name: str, table: str, v: str | None, empty: pa.Schema
) -> None:
    """One view over the live files of a table: files grouped by the set of forgotten sample_ids their rows must
    lose (empty for files committed after every tombstone), each group one Arrow dataset filtered at registration.
    The datasets are named too (DuckDB lists them), so each one is filtered itself: no name a statement can reach
    holds a forgotten sample's row."""
    refs = project.live_files(table, v)
    if not refs:
        con.register(f"__{name}_empty", empty.empty_table())
        con.execute(f'CREATE OR REPLACE VIEW "{name}" AS SELECT * FROM "__{name}_empty"')
        return
    liveness = project.liveness()
    groups: dict[frozenset[str], list[str]] = {}
    for ref in refs:
        groups.setdefault(liveness.dead(ref), []).append(str(project.root / ref.path))
    if table == "samples":  # metadata columns differ between data sets: every file's columns, by name
        schema = pa.unify_schemas([pq.read_schema(f) for files in groups.values() for f in files])
    else:
        schema = empty
    parts = []
    for i, (dead, files) in enumerate(groups.items()):
        data = pads.dataset(files, schema=schema, format="parquet")
        if dead and "sample_id" in schema.names:
            data = data.filter(~pc.field("sample_id").isin(pa.array(sorted(dead), pa.string())))
        con.register(f"__{name}_{i}", data)
        parts.append(f'SELECT * FROM "__{name}_{i}"')
    con.execute(f'CREATE OR REPLACE VIEW "{name}" AS ' + " UNION ALL ".join(parts))


def connect(project: Project) -> duckdb.DuckDBPyConnection:
    """An in-memory, read-only DuckDB connection with one view per table of the project."""
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
    con.register("forgotten", pa.table({"sample_id": pa.array(sorted(project.forgotten()), pa.string())}))
    for setting in (
        "SET temp_directory = ''",
        "SET autoinstall_known_extensions = false",
        "SET autoload_known_extensions = false",
        "SET enable_external_access = false",
        "SET lock_configuration = true",
    ):
        con.execute(setting)
    return con


def check_read_only(sql: str) -> None:
    """Refuse (UsageError, one line) anything but a single statement that only reads."""
    try:
        statements = duckdb.extract_statements(sql)
    except duckdb.Error as exc:
        raise UsageError(f"SQL error: {str(exc).splitlines()[0]}") from exc
    if len(statements) != 1:
        raise UsageError(f"give one SQL statement (got {len(statements)})")
    kind = statements[0].type
    if kind == duckdb.StatementType.SELECT:
        return
    if kind == duckdb.StatementType.EXPLAIN:
        inner = re.sub(r"^\s*EXPLAIN\s+(ANALY[SZ]E\s+)?(\([^)]*\)\s*)?", "", sql, flags=re.IGNORECASE)
        if inner != sql and _kinds(inner) == [duckdb.StatementType.SELECT]:
            return
        raise UsageError(f"dmin sql only reads: EXPLAIN is allowed on a query that reads ({ALLOWED})")
    if kind == duckdb.StatementType.PRAGMA:
        name = re.match(r"^\s*PRAGMA\s+(\w+)", sql, flags=re.IGNORECASE)
        if name and name.group(1).lower() in READ_PRAGMAS:
            return
    first = sql.split(maxsplit=1)[0].upper() if sql.split() else ""
    word = first if first.isalpha() else kind.name  # the statement as written (INSTALL, not LOAD), else its type
    if word in ("WITH", "FROM", "VALUES", "SELECT"):  # a reading keyword before a writing statement
        word = f"{kind.name} (after {first})"
    raise UsageError(
        f"dmin sql only reads: {word} is refused before it runs (allowed: {ALLOWED}); "
        f"export results with --csv, --json or --parquet FILE"
    )


def _kinds(sql: str) -> list[duckdb.StatementType]:
    try:
        return [s.type for s in duckdb.extract_statements(sql)]
    except duckdb.Error:
        return []


def sql_exact_scores(con: duckdb.DuckDBPyConnection, v: str, query_id: str, k: int) -> list[tuple[str, float]]:
    """The exact top-k written as a user would in SQL: per-timestep inner products, summed."""
    return con.execute(
        f"""SELECT g.sample_id, SUM(list_inner_product(g.vec::FLOAT[], q.vec::FLOAT[])) AS score
            FROM grads_{v} g JOIN query_grads_{v} q ON g.t_idx = q.t_idx
            WHERE q.query_id = ? GROUP BY g.sample_id ORDER BY score DESC, g.sample_id LIMIT ?""",
        [query_id, k],
    ).fetchall()
