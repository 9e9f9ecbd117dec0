"""dmin query: which training samples most influenced this image?"""

from __future__ import annotations

import functools
from pathlib import Path

import typer
from rich.progress import Progress, TaskID

from dmin.errors import UsageError
from dmin_cli import render
from dmin_cli.options import JsonOpt, ProjectArg, VOpt


def _generation_step(bar: Progress, task: TaskID, done: int, total: int) -> None:
    """One bar counts the queries; a generated image's steps show beside it."""
    bar.update(task, note=f"generating: step {done}/{total}")


EXAMPLES = (
    "Examples:\n\n  dmin query proj --image gen.png --label 3 --k 10 --sheet top.png\n\n"
    "  dmin query proj --label 7 --seed 1 --exact --json\n\n"
    "  dmin query proj --queries batch.jsonl --json > results.json"
)


def query_cmd(
    project: ProjectArg,
    image: Path | None = typer.Option(None, "--image", help="The generated image to attribute."),
    prompt: str | None = typer.Option(None, "--prompt", help="Its text condition."),
    label: int | None = typer.Option(None, "--label", help="Its class label."),
    seed: int | None = typer.Option(None, "--seed", help="Without --image: generate the image with this seed."),
    queries: Path | None = typer.Option(
        None, "--queries", help="JSONL, one query per line: image or seed, prompt/label, optional query_id."
    ),
    k: int = typer.Option(10, "--k", min=1, help="How many training samples to return."),
    v: VOpt = None,
    exact: bool = typer.Option(False, "--exact", help="Score every sample exactly."),
    knn_opt: bool = typer.Option(False, "--knn", help="Use the HNSW index."),
    ef: int = typer.Option(100, "--ef", help="HNSW search beam width."),
    allow_stale: bool = typer.Option(
        False, "--allow-stale", help="Use an index (or preconditioner) that misses new samples."
    ),
    precondition: bool = typer.Option(
        False, "--precondition", help="Score through the preconditioner `dmin precondition` built for this v."
    ),
    sheet: str | None = typer.Option(
        None,
        "--sheet",
        help="Write a contact sheet PNG (query + top-k) to this new file, or '-' for stdout; with --queries, a "
        "pattern such as 'top-{i}.png' or 'sheets/{query_id}.png'.",
    ),
    force: bool = typer.Option(False, "--force", help="Let --sheet replace an existing file."),
    per_t: bool = typer.Option(False, "--per-t", help="Show each timestep's share of the score in the table."),
    model: str | None = typer.Option(None, "--model", help="Model dir or Hub id (default: the one collect used)."),
    device: str = typer.Option("auto", "--device", help="auto, cpu, cuda or cuda:N."),
    dtype: str | None = typer.Option(
        None, "--dtype", help="Compute dtype (default: the project's); another one is refused with the field diff."
    ),
    json_out: JsonOpt = False,
) -> None:
    """Attribute an image to its most influential training samples (default: kNN if a fresh index exists)."""
    from PIL import Image

    from dmin.query import QueryResult, QuerySpec, open_for_query, read_queries, run_query
    from dmin.sheet import check_sheet_path, contact_sheet, render_sheet

    if exact and knn_opt:
        raise UsageError("use just one of --exact or --knn")
    if sheet == "-" and (json_out or queries is not None):
        raise UsageError("--sheet - writes the PNG to stdout: use it with one query and without --json")
    if sheet is not None and queries is not None and "{i}" not in sheet and "{query_id}" not in sheet:
        raise UsageError("with --queries, --sheet takes a pattern such as 'top-{i}.png' (one sheet per query)")
    method = "exact" if exact else "knn" if knn_opt else "auto"
    if queries is None:
        specs = [QuerySpec(image=image, prompt=prompt, label=label, seed=seed)]
    elif any(x is not None for x in (image, prompt, label, seed)):
        raise UsageError("use --queries alone: each of its lines carries its own image or seed, prompt and label")
    else:
        specs = read_queries(queries)
    if sheet is not None and sheet != "-" and "{query_id}" not in sheet:  # refused before the model loads
        for i in range(len(specs)):
            check_sheet_path(project, sheet.replace("{i}", str(i)), force)
    results: list[QueryResult] = []
    with render.progress(enabled=not json_out) as bar:
        task = bar.add_task("loading the model", total=len(specs), rate="", note="")
        proj, setup = open_for_query(project, model=model, device=device, dtype=dtype)
        bar.update(task, description="query")
        for i, spec in enumerate(specs):
            res = run_query(
                proj,
                setup,
                spec,
                k=k,
                v=v,
                method=method,
                ef=ef,
                allow_stale=allow_stale,
                precondition=precondition,
                on_step=functools.partial(_generation_step, bar, task),
            )
            results.append(res)
            if sheet is not None:
                img = Image.open(res.image_path) if res.image_path else Image.open(spec.image)  # type: ignore[arg-type]
                if sheet == "-":
                    render.write_bytes(render_sheet(proj, res, img))
                else:
                    name = sheet.replace("{i}", str(i)).replace("{query_id}", res.query_id)
                    contact_sheet(proj, res, img, name, force)
            bar.update(task, advance=1, note="")
    if sheet == "-":
        return  # stdout holds the PNG
    if json_out:
        render.print_json(results[0].to_dict() if queries is None else [r.to_dict() for r in results])
        return
    steps = [f"t={t:g}" for t in proj.identity.timesteps] if per_t else []
    for res in results:
        rows = [
            (
                r["rank"],
                f"{r['score']:.4f}",
                *(f"{x:.4f}" for x in (r["scores"] if per_t else ())),
                r["sample_id"][:12],
                r.get("caption") or r.get("label"),
                r.get("source"),
            )
            for r in res.results
        ]
        render.table(
            f"query {res.query_id} — {res.method}, v={res.v}",
            ["rank", "score", *steps, "sample_id", "caption/label", "source"],
            rows,
        )
    if sheet is not None and sheet != "-":
        render.out.print(f"contact sheet{'s' if queries is not None else ''}: {sheet}")
