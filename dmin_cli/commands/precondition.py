"""dmin precondition: the inverse Gram matrices `query --precondition` scores through."""

from __future__ import annotations

import typer

from dmin_cli import render
from dmin_cli.options import JsonOpt, ProjectArg

EXAMPLES = (
    "Examples:\n\n  dmin precondition proj --v 256\n\n  dmin precondition proj --v 256 --lambda 0.03\n\n"
    "  dmin query proj --image gen.png --label 3 --v 256 --precondition"
)


def precondition_cmd(
    project: ProjectArg,
    v: str = typer.Option(..., "--v", help="The stored v (at most 4096)."),
    lam: float | None = typer.Option(
        None,
        "--lambda",
        help="Damping, relative to the Gram matrix's mean eigenvalue (default: the current build's, else 0.1).",
        show_default=False,
    ),
    rebuild: bool = typer.Option(False, "--rebuild", help="Sum every sample again instead of adding what changed."),
    json_out: JsonOpt = False,
) -> None:
    """Store (ΦᵀΦ + λI)⁻¹ per timestep for v; later runs add new samples and subtract forgotten ones."""
    from dmin.precondition import build_preconditioner
    from dmin.store import Project

    proj = Project.open(project)
    info = render.run_build(
        f"precondition v={v}",
        json_out,
        lambda progress: build_preconditioner(proj, v, lam, rebuild=rebuild, progress=progress),
    )
    if json_out:
        return
    if not info["changed"]:
        render.out.print(f"preconditioner v={v} is current ({info['count']} samples, λ={info['lambda']:g})")
    else:
        render.out.print(
            f"preconditioner v={v}: added {info['added']}, removed {info['removed']}, {info['count']} samples, "
            f"λ={info['lambda']:g}"
        )
