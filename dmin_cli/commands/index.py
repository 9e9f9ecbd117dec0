"""dmin index: build or extend the HNSW index for one stored v."""

from __future__ import annotations

import typer

from dmin_cli import render
from dmin_cli.options import JsonOpt, ProjectArg

EXAMPLES = (
    "Examples:\n\n  dmin index proj --v 4096\n\n  dmin index proj --v 256 --m 32 --rebuild\n\n"
    "  dmin index proj --v 4096 --graph-v 64 --rebuild   # a smaller graph in memory, candidates re-ranked at 4096"
)


def index_cmd(
    project: ProjectArg,
    v: str = typer.Option(..., "--v", help="The stored v to index."),
    m: int = typer.Option(16, "--m", help="HNSW graph degree."),
    ef_construction: int = typer.Option(200, "--ef-construction", help="HNSW build-time beam width."),
    threads: int = typer.Option(0, "--threads", help="Build threads (0: all cores)."),
    graph_v: int | None = typer.Option(
        None,
        "--graph-v",
        help="Dims per timestep the graph is built over (scores stay exact at --v). Default: 256, halved while the "
        "graph would pass 2 GB (32 for a million samples at K = 10).",
        show_default=False,
    ),
    rebuild: bool = typer.Option(False, "--rebuild", help="Build from scratch instead of adding new samples."),
    json_out: JsonOpt = False,
) -> None:
    """Index the samples' concatenated K per-timestep vectors (inner product); later runs add only new samples."""
    from dmin.index import IndexParams, build_index
    from dmin.store import Project

    proj = Project.open(project)
    params = IndexParams(m, ef_construction, threads, graph_v)
    info = render.run_build(
        f"index v={v}", json_out, lambda progress: build_index(proj, v, params, rebuild=rebuild, progress=progress)
    )
    if json_out:
        return
    if not info["changed"]:
        render.out.print(f"index v={v} is current ({info['count']} samples); nothing to do")
    else:
        render.out.print(f"index v={v} build {info['build']}: added {info['added']}, {info['count']} samples")
