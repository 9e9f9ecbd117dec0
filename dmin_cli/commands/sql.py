"""dmin sql: read-only DuckDB over the project's committed tables; CSV / JSON / Parquet exports."""

from __future__ import annotations

import csv
import os
import sys
from collections.abc import Callable
from pathlib import Path

import typer

from dmin.errors import UsageError
from dmin_cli import render
from dmin_cli.options import JsonOpt, ProjectArg

EXAMPLES = (
    "Views: samples, grads_<v>, queries, query_grads_<v>, results, failures, forgotten (without forgotten "
    "samples' rows). Read-only: SELECT, WITH, EXPLAIN, DESCRIBE, SHOW, SUMMARIZE and reading PRAGMAs; anything "
    "else is refused before it runs.\n\n"
    'Examples:\n\n  dmin sql proj "SELECT label, count(*) FROM samples GROUP BY 1"\n\n'
    '  dmin sql proj "SELECT s.subset, sum(r.score) FROM results r JOIN samples s USING '
    '(sample_id) GROUP BY 1" --csv\n\n'
    '  dmin sql proj "SELECT * FROM results" --parquet /tmp/results.parquet\n\n'
    '  dmin sql proj "DESCRIBE grads_4096"'
)


def sql_cmd(
    project: ProjectArg,
    query: str = typer.Argument(..., help="One DuckDB SQL statement that reads."),
    json_out: JsonOpt = False,
    csv_out: bool = typer.Option(False, "--csv", help="Print CSV (header line first)."),
    parquet: Path | None = typer.Option(
        None, "--parquet", help="Write the result to this Parquet file (outside the project)."
    ),
) -> None:
    """Run one reading SQL statement (DuckDB) over the project's tables."""
    from dmin.sql import export_parquet, run_sql
    from dmin.store import Project

    if json_out + csv_out > 1:
        raise UsageError("use just one of --json or --csv")
    if parquet is not None and csv_out:
        raise UsageError("use just one of --parquet or --csv")
    proj = Project.open(project)
    table = run_sql(proj, query)
    if parquet is not None:
        path = export_parquet(table, parquet, proj)
        report = {"rows": table.num_rows, "columns": table.column_names, "parquet": str(path)}
        if json_out:
            _quietly(lambda: render.print_json(report))
        else:
            _quietly(lambda: render.out.print(f"wrote {table.num_rows} row(s) to {path}", highlight=False))
        return
    names = table.column_names
    rows = [tuple(r.values()) for r in table.to_pylist()]
    if json_out:
        _quietly(lambda: render.print_json([dict(zip(names, r, strict=True)) for r in rows]))
    elif csv_out:

        def write_csv() -> None:
            w = csv.writer(sys.stdout, lineterminator="\n")  # one line per row, as Unix tools expect
            w.writerow(names)
            w.writerows(rows)
            sys.stdout.flush()

        _quietly(write_csv)
    else:
        _quietly(lambda: render.table(None, names, rows))


def _quietly(write: Callable[[], None]) -> None:
    """Write output; when the reader went away (`| head -1`), stop quietly as Unix tools do (exit 141, SIGPIPE)."""
    try:
        write()
        sys.stdout.flush()
    except BrokenPipeError:
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())  # no second error when Python flushes at exit
        raise typer.Exit(128 + 13) from None
