"""dmin roots: the data folders samples resolve against; re-point one that moved (checked against content hashes)."""

from __future__ import annotations

import typer

from dmin.errors import UsageError
from dmin_cli import render
from dmin_cli.options import JsonOpt, ProjectArg

EXAMPLES = (
    "Examples:\n\n  dmin roots proj\n\n  dmin roots proj --from /data/old-folder --to /mnt/new/folder --json"
)


def roots_cmd(
    project: ProjectArg,
    old: str | None = typer.Option(None, "--from", help="A root that moved (as `dmin roots` lists it)."),
    new: str | None = typer.Option(None, "--to", help="Where it is now; every sample must match its stored hash."),
    json_out: JsonOpt = False,
) -> None:
    """List data roots (samples per root, present or not), or re-point one with --from OLD --to NEW."""
    from dmin.relocate import relocate, roots
    from dmin.store import Project

    proj = Project.open(project)
    if (old is None) != (new is None):
        raise UsageError("re-pointing needs both --from OLD and --to NEW")
    if old is not None and new is not None:
        entry, count = relocate(proj, old, new)
        result = {"from": entry.meta["from"], "to": entry.meta["to"], "samples": count, "seq": entry.seq}
        if json_out:
            render.print_json(result)
        else:
            render.out.print(
                f"re-pointed {result['from']} → {result['to']}: {count} sample(s) checked", highlight=False
            )
        return
    listed = roots(proj)
    if json_out:
        render.print_json([r.to_dict() for r in listed])
    else:
        render.table(
            None,
            ["root", "samples", "present"],
            [(r.root, r.samples, "yes" if r.exists else "MISSING") for r in listed],
        )
