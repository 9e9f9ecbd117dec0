"""dmin forget: make samples absent from every reader now and from later collects; `dmin compact` erases them."""

from __future__ import annotations

import sys

import typer

from dmin.errors import UsageError
from dmin_cli import render
from dmin_cli.options import JsonOpt, ProjectArg

SHOWN = 20


EXAMPLES = (
    "Selectors combine with AND; --sample-id may repeat (any of them). A --sample-id not committed yet is "
    "suppressed for later collects all the same.\n\n"
    "Examples:\n\n  dmin forget proj --source 'opt-out/*' \n\n"
    "  dmin forget proj --where \"subset = 'scraped' AND label = 3\" --yes --json\n\n"
    "  dmin forget proj --sample-id 5f1c0b…e2 --sample-id 90ad…17 --dry-run\n\n"
    "  dmin compact proj   # then erase their bytes from every file"
)


def forget_cmd(
    project: ProjectArg,
    sample_id: list[str] | None = typer.Option(None, "--sample-id", help="A sample_id to forget (repeat the option)."),
    source: str | None = typer.Option(None, "--source", help="A glob over the source column, e.g. 'cats/*.png'."),
    where: str | None = typer.Option(
        None, "--where", help="An SQL condition over the samples view, e.g. \"subset = 'web'\"."
    ),
    yes: bool = typer.Option(False, "--yes", "-y", help="Commit without asking (scripts)."),
    dry_run: bool = typer.Option(False, "--dry-run", help="Show what would be forgotten; change nothing."),
    json_out: JsonOpt = False,
) -> None:
    """Forget samples: absent from queries, the index, SQL and verify at once, skipped by later collects."""
    from dmin.forget import forget, select
    from dmin.store import Project

    proj = Project.open(project)
    sel = select(proj, sample_id or (), source, where)
    result = {
        "project": str(project),
        "selected": len(sel.samples),
        "not_committed": sel.not_committed,
        "already_forgotten": sel.already,
        "samples": sel.samples,
        "forgotten": 0,
        "seq": None,
    }
    if not json_out:
        _show(sel.samples, sel.not_committed, sel.already)
    if not sel.ids or dry_run:
        _finish(result, json_out, "nothing to forget" if not sel.ids else "dry run: nothing was changed")
        return
    if not yes:
        if json_out or not sys.stdin.isatty():
            raise UsageError("forget asks before it commits: pass --yes (or --dry-run to only look)")
        if not typer.confirm(f"Forget {len(sel.ids)} sample(s)?", default=False, err=True):
            render.err.print("nothing was forgotten")
            raise typer.Exit(1)
    entry = forget(proj, sel)
    result["forgotten"] = int(entry.meta["samples"]) if entry else 0
    result["seq"] = entry.seq if entry else None
    _finish(
        result,
        json_out,
        f"forgot {result['forgotten']} sample(s) (manifest entry {result['seq']}): absent from queries, index, SQL "
        f"and verify, skipped by later collects; run `dmin compact {project}` to erase their bytes"
        if entry
        else "nothing to forget (forgotten meanwhile)",
    )


def _show(samples: list[dict[str, str | None]], not_committed: list[str], already: list[str]) -> None:
    if samples:
        rows = [(s["sample_id"], s["source"], s["caption"]) for s in samples[:SHOWN]]
        render.table(f"{len(samples)} sample(s) to forget", ["sample_id", "source", "caption"], rows)
        if len(samples) > SHOWN:
            render.out.print(f"… and {len(samples) - SHOWN} more", highlight=False)
    if not_committed:
        render.out.print(
            f"{len(not_committed)} sample_id(s) not committed: suppressed for later collects", highlight=False
        )
    if already:
        render.out.print(f"{len(already)} sample_id(s) forgotten already", highlight=False)


def _finish(result: dict[str, object], json_out: bool, line: str) -> None:
    if json_out:
        render.print_json(result)
    else:
        render.out.print(line, highlight=False)
