"""dmin demo: the whole chain on scikit-learn's digits with the bundled model, ending in a detection rate."""

from __future__ import annotations

from pathlib import Path

import typer

from dmin_cli import render
from dmin_cli.options import JsonOpt

EXAMPLES = (
    "Examples:\n\n  dmin demo --out demo-out   # rerun: reuses the project, takes seconds\n\n"
    "  dmin demo --lora           # the paper's LoRA-on-a-mixed-dataset setting, in demo-out/lora"
)


def demo_cmd(
    out: Path = typer.Option(Path("demo-out"), "--out", help="Where the data, project and sheets go."),
    limit: int | None = typer.Option(None, "--limit", help="Only the first N digits (default: all 1797)."),
    timesteps: int = typer.Option(10, "--timesteps", help="K."),
    k: int = typer.Option(10, "--k", help="Top-k per query."),
    lora: bool = typer.Option(
        False,
        "--lora",
        help="The LoRA setting: the bundled LoRA over its mixed set of 300 digits as drawn and 300 inverted; "
        "detection = top-k from the generated digit's subset. Writes to OUT/lora.",
    ),
    json_out: JsonOpt = False,
) -> None:
    """Collect, index, generate one digit per class, attribute each, and report the detection rate."""
    from dmin.collect import CollectSummary
    from dmin.demo import run_demo

    with render.progress(enabled=not json_out) as bar:
        task = bar.add_task("collect digits", total=None, rate="", note="")

        def update(s: CollectSummary) -> None:
            bar.update(task, total=s.total, completed=s.done + s.skipped + s.failed, rate="", note="")

        def step(msg: str) -> None:
            if not json_out and render.interactive():
                render.err.print(f"[dim]· {msg}[/dim]")

        seeds = 3 if lora else 1  # the LoRA draws both styles; three seeds per class show both
        report = run_demo(
            out, limit=limit, timesteps=timesteps, k=k, seeds=seeds, lora=lora, on_collect=update, on_step=step
        )
    if json_out:
        render.print_json(report.to_dict())
        return
    for q in report.queries:
        # the subset each training digit came from is the point of the LoRA setting
        columns = ["rank", "score", "label", "subset", "source"] if lora else ["rank", "score", "label", "source"]
        rows = [(r["rank"], f"{r['score']:.3f}", *[r.get(c) for c in columns[2:]]) for r in q["results"][:5]]
        drawn = f", drawn {q['subset']}" if lora else ""
        render.table(
            f"generated digit {q['label']} (seed {q['seed']}{drawn}) — {q['method']}, v={q['v']}", columns, rows
        )
    c = report.collect
    render.out.print(
        f"collected {c['done']} digits (skipped {c['skipped']} already committed) in {c['seconds']:.0f} s; "
        f"index holds {report.index['count']}; project: {report.project}"
    )
    render.out.print(f"contact sheets: {Path(report.sheets[0]).parent}/")
    det = report.detection
    what = "subset (as drawn / inverted)" if lora else "class"
    render.out.print(
        f"detection rate (top-k samples of the generated digit's {what}): top-1 {det['top1']:.3f}, "
        f"top-5 {det['top5']:.3f}, top-{k} {det[f'top{k}']:.3f} over {len(report.queries)} generated "
        f"digits (random: {report.chance:.3f})"
    )
