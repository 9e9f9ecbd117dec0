"""dmin compress: derive a new stored v from a larger stored v (or v=full), or complete one; no model needed."""

from __future__ import annotations

import typer

from dmin.derive import derive_v
from dmin.store import Project
from dmin_cli import render
from dmin_cli.app import app
from dmin_cli.options import JsonOpt, ProjectArg


@app.command(
    "compress",
    epilog="Later commits write every stored v themselves; a rerun derives what a v lacks (e.g. in a project "
    "written by an earlier dmin).\n\nExample:\n\n  dmin compress proj --v 1024",
)
def compress_cmd(
    project: ProjectArg,
    v: int = typer.Option(..., "--v", help="The new v (a power of two ≥ 16)."),
    json_out: JsonOpt = False,
) -> None:
    """Derive v by folding a stored larger v (exact) or compressing v=full; a second run does nothing."""
    proj = Project.open(project)
    already = str(v) in proj.identity.vs
    entry = derive_v(proj, v)
    rows = sum(f.rows for f in entry.files) if entry else 0
    src = entry.meta["from"] if entry else None
    result = {"v": str(v), "from": src, "created": entry is not None and not already, "rows": rows}
    if json_out:
        render.print_json(result)
    elif entry is None:
        render.out.print(f"v={v} is already stored and complete; nothing to do")
    elif already:
        render.out.print(f"completed v={v} from v={src}: {rows} missing rows in {len(entry.files)} file(s)")
    else:
        render.out.print(f"stored v={v} from v={src}: {rows} rows in {len(entry.files)} file(s)")
