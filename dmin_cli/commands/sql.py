"""dmin sql: DuckDB over the project's committed tables."""

from __future__ import annotations

import csv
import sys

import typer

from dmin.errors import DminError, UsageError
from dmin_cli import render
from dmin_cli.options import JsonOpt, ProjectArg

EXAMPLES = (
    "Views: samples, grads_<v>, queries, query_grads_<v>, results, failures.\n\n"
    'Examples:\n\n  dmin sql proj "SELECT label, count(*) FROM samples GROUP BY 1"\n\n'
    '  dmin sql proj "SELECT s.subset, sum(r.score) FROM results r JOIN samples s USING '
    '(sample_id) GROUP BY 1" --csv'
)


def sql_cmd(
    project: ProjectArg,
    query: str = typer.Argument(..., help="A DuckDB SQL statement."),
    json_out: JsonOpt = False,
    csv_out: bool = typer.Option(False, "--csv", help="Print CSV."),
) -> None:
    """Run SQL (DuckDB) over the project's tables."""
    import duckdb

    from dmin.store import Project
    from dmin.store.catalog import connect

    if json_out and csv_out:
        raise UsageError("use just one of --json or --csv")
    con = connect(Project.open(project))
    try:
        cur = con.execute(query)
    except duckdb.Error as exc:
        raise DminError(f"SQL error: {str(exc).splitlines()[0]}") from exc
    names = [d[0] for d in cur.description or []]
    rows = cur.fetchall()
    if json_out:
        render.print_json([dict(zip(names, r, strict=True)) for r in rows])
    elif csv_out:
        w = csv.writer(sys.stdout)
        w.writerow(names)
        w.writerows(rows)
    else:
        render.table(None, names, rows)
