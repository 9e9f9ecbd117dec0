"""dmin compress: derive a new stored v from a larger stored v (or v=full), or complete one; no model needed."""

from __future__ import annotations

import typer

from dmin_cli import render
from dmin_cli.options import JsonOpt, ProjectArg

EXAMPLES = (
    "Later commits write every stored v themselves; a rerun derives what a v lacks (e.g. in a project written by "
    "an earlier dmin).\n\nExample:\n\n  dmin compress proj --v 1024"
)


def compress_cmd(
    project: ProjectArg,
    v: str = typer.Option(
        ..., "--v", help="The new v: a power of two ≥ 16 that divides a stored v (or any, from full)."
    ),
    json_out: JsonOpt = False,
) -> None:
    """Derive v by folding a stored larger v (exact) or compressing v=full; a second run does nothing."""
    from dmin.derive import derive_v
    from dmin.store import Project
    from dmin.vs import derivable_v, source_for

    proj = Project.open(project)
    new = derivable_v(proj, v)
    already = str(new) in proj.identity.vs
    with render.progress(enabled=not json_out) as bar:
        task = bar.add_task(f"compress v={source_for(proj, new)} → {new}", total=None, rate="", note="")
        entry = derive_v(proj, new, progress=lambda done, total: bar.update(task, completed=done, total=total))
    rows = sum(f.rows for f in entry.files) if entry else 0
    src = entry.meta["from"] if entry else None
    result = {"v": str(new), "from": src, "created": entry is not None and not already, "rows": rows}
    if json_out:
        render.print_json(result)
    elif entry is None:
        render.out.print(f"v={new} is already stored and complete; nothing to do")
    elif already:
        render.out.print(f"completed v={new} from v={src}: {rows} missing rows in {len(entry.files)} file(s)")
    else:
        render.out.print(f"stored v={new} from v={src}: {rows} rows in {len(entry.files)} file(s)")
