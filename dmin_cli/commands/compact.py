"""dmin compact: erase forgotten samples' bytes from every file, then delete superseded and leftover files."""

from __future__ import annotations

import typer

from dmin.store.paths import ORPHAN_GRACE
from dmin_cli import render
from dmin_cli.options import JsonOpt, ProjectArg

EXAMPLES = (
    "Killed at any instant, the project is the old one or the compacted one (both valid); run it again to "
    "finish.\n\nExamples:\n\n  dmin forget proj --source 'opt-out/*' --yes && dmin compact proj\n\n"
    "  dmin compact proj --orphan-grace 0 --json   # no other dmin command is writing to proj"
)


def compact_cmd(
    project: ProjectArg,
    orphan_grace: float = typer.Option(
        ORPHAN_GRACE,
        "--orphan-grace",
        help="Delete unnamed files left by interrupted writes once older than this many seconds (younger ones may "
        "belong to a writer about to commit).",
    ),
    json_out: JsonOpt = False,
) -> None:
    """Rewrite files holding forgotten samples without them, erase them from index graphs, merge small files,
    delete the rest."""
    from dmin.compact import compact
    from dmin.store import Project

    report = compact(Project.open(project), orphan_grace=orphan_grace)
    if json_out:
        render.print_json({"project": str(project), **report.to_dict()})
        return
    dropped = sum(report.rows_dropped.values())
    if report.seq is None:
        render.out.print("no file holds forgotten samples", highlight=False)
    else:
        erased = f"; erased from index v={', v='.join(report.indexes_erased)}" if report.indexes_erased else ""
        render.out.print(
            f"rewrote {report.files_rewritten} file(s) without {dropped} forgotten row(s){erased} "
            f"(manifest entry {report.seq})",
            highlight=False,
        )
    if report.files_merged:
        render.out.print(f"merged {report.files_merged} small file(s)", highlight=False)
    render.out.print(
        f"deleted {report.files_deleted} superseded or leftover file(s), {report.bytes_freed / 1e6:.2f} MB",
        highlight=False,
    )
    if report.orphans_kept:
        render.err.print(
            f"kept {len(report.orphans_kept)} unnamed file(s) younger than {orphan_grace:g} s (e.g. "
            f"{report.orphans_kept[0]}): a writer may still commit them; run compact again later",
            highlight=False,
        )
