"""dmin merge: adopt projects collected separately (each node on its local disk) into one."""

from __future__ import annotations

from pathlib import Path

import typer

from dmin_cli import render
from dmin_cli.options import JsonOpt

EXAMPLES = (
    "Each node collects its shard into a local project; copy them to one machine, then merge (run again: nothing "
    "is adopted twice).\n\nExamples:\n\n"
    "  dmin collect local --model M --data D --shard $I/$N   # on node I of N\n\n"
    "  dmin merge proj shard-0 shard-1 shard-2 shard-3 && dmin verify proj --deep"
)


def merge_cmd(
    dest: Path = typer.Argument(..., help="The project to merge into (created when missing).", metavar="DEST"),
    sources: list[Path] = typer.Argument(
        ..., help="Projects to adopt, collected with DEST's settings.", metavar="SRC…"
    ),
    json_out: JsonOpt = False,
) -> None:
    """Adopt the samples, vectors, queries, failures and opt-outs of other projects, in one commit."""
    from dmin.merge import merge

    report = merge(dest, [str(s) for s in sources])
    if json_out:
        render.print_json(report.to_dict())
        return
    if report.seq is None:
        render.out.print(f"nothing to adopt: {dest} holds all its {len(sources)} source(s) hold", highlight=False)
        return
    render.out.print(
        f"adopted {report.samples} sample(s), {report.queries} query(ies) and {report.failures} failure row(s) from "
        f"{len(sources)} project(s) into {dest} (manifest entry {report.seq}; {report.files_linked} file(s) linked, "
        f"{report.files_rewritten} rewritten)"
        + (f"; {report.forgotten} opt-out(s) carried over" if report.forgotten else ""),
        highlight=False,
    )
    render.out.print(f"next: `dmin index {dest}` to add them to the index", highlight=False)
