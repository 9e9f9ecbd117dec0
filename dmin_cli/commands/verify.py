"""dmin verify: exit 0 healthy, 1 a defect found, 2 usage error."""

from __future__ import annotations

import typer

from dmin_cli import render
from dmin_cli.options import JsonOpt, ProjectArg

EXAMPLES = "Examples:\n\n  dmin verify proj\n\n  dmin verify proj --deep --json > report.json"


def verify_cmd(
    project: ProjectArg,
    deep: bool = typer.Option(
        False, "--deep", help="Also checksums, vector contents, folds, index self-test, orphan files."
    ),
    json_out: JsonOpt = False,
) -> None:
    """Check a project against its manifest and schemas; every finding names the file."""
    from dmin.verify import verify

    with render.progress(enabled=deep and not json_out) as bar:
        task = bar.add_task("verify --deep", total=None, rate="", note="")
        report = verify(project, deep=deep, progress=lambda done, total: bar.update(task, completed=done, total=total))
    if json_out:
        render.print_json(report.to_dict())
    else:
        for f in report.findings:
            style = "red" if f.severity == "defect" else "yellow"
            render.out.print(
                f"[{style}]{f.severity}[/{style}] {f.check}: {f.file}: {f.message}", markup=True, highlight=False
            )
        summary = ", ".join(f"{k}={v}" for k, v in sorted(report.checked.items()))
        state = "[green]healthy[/green]" if report.healthy else "[red]DEFECTS FOUND[/red]"
        render.out.print(f"{state} ({'deep' if deep else 'quick'}; {summary})")
    raise typer.Exit(0 if report.healthy else 1)
