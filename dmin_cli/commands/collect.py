"""dmin collect: per-sample gradients of a diffusers model into the project (resumable, shardable)."""

from __future__ import annotations

from pathlib import Path

import typer

from dmin.collect import CollectSummary, collect, prepare
from dmin_cli import render
from dmin_cli.app import app
from dmin_cli.options import JsonOpt, ProjectArg


@app.command(
    "collect",
    epilog="Examples:\n\n  dmin collect proj --model ./ddpm-digits --data ./digits --v 4096\n\n"
    "  dmin collect proj --model ./sd15 --lora ./my-lora --data ./imgs --shard 0/4\n\n"
    "  torchrun --nproc-per-node 8 -m dmin_cli collect proj --model … --data … "
    "--device cuda",
)
def collect_cmd(
    project: ProjectArg,
    model: Path = typer.Option(..., "--model", help="A local diffusers pipeline directory (safetensors)."),
    data: Path = typer.Option(..., "--data", help="Image folder with metadata.jsonl/csv, or a .parquet file."),
    lora: Path | None = typer.Option(
        None, "--lora", help="LoRA safetensors or PEFT adapter dir: only its parameters get gradients."
    ),
    params: str | None = typer.Option(None, "--params", help="Glob over parameter names (full models)."),
    timesteps: int = typer.Option(10, "--timesteps", help="K, spread over the training schedule."),
    timestep_list: list[float] | None = typer.Option(
        None, "--timestep-list", help="Explicit timesteps (repeat the option)."
    ),
    v: list[str] | None = typer.Option(
        None, "--v", help="Stored v's (repeat): powers of two or 'full'. Default 4096 and 65536."
    ),
    limit: int | None = typer.Option(None, "--limit", help="Only the first N samples of the data."),
    shard: str | None = typer.Option(
        None, "--shard", help="i/N: this process's share (default: torchrun's RANK/WORLD_SIZE)."
    ),
    device: str = typer.Option("cpu", "--device", help="cpu or cuda."),
    dtype: str = typer.Option("float32", "--dtype", help="Compute dtype: float32, bfloat16 or float16."),
    storage: str = typer.Option("float32", "--storage-dtype", help="Vector storage: float32 or float16."),
    batch_size: int = typer.Option(16, "--batch-size", help="Samples per commit (gradients are per sample)."),
    noise_seed: int = typer.Option(0, "--noise-seed"),
    compress_seed: int = typer.Option(0, "--compress-seed"),
    strict: bool = typer.Option(False, "--strict", help="Stop at the first failed sample."),
    include_forgotten: bool = typer.Option(
        False, "--include-forgotten", help="Collect forgotten samples again (`dmin forget` keeps them out otherwise)."
    ),
    json_out: JsonOpt = False,
) -> None:
    """Collect compressed, normalized per-sample gradients; reruns skip committed samples."""
    setup = prepare(
        model, lora, params, timesteps, timestep_list, v or (), noise_seed, compress_seed, device, dtype, storage
    )
    with render.progress(enabled=not json_out) as bar:
        task = bar.add_task("collect", total=None, rate="", note="")

        def update(s: CollectSummary) -> None:
            rate = s.done / s.seconds if s.seconds > 0 else 0.0
            bar.update(
                task,
                total=s.total,
                completed=s.done + s.skipped + s.failed,
                rate=f"{rate:.2f} samples/s",
                note=f"skipped {s.skipped} failed {s.failed}",
            )

        summary = collect(
            project,
            setup,
            data,
            limit=limit,
            shard_arg=shard,
            batch_size=batch_size,
            strict=strict,
            progress=update,
            include_forgotten=include_forgotten,
        )
    if json_out:
        render.print_json(summary.to_dict())
    else:
        for f in summary.failures[:5]:
            render.err.print(f"[yellow]failed[/yellow] {f['source']}: {f['reason']}", highlight=False)
        render.out.print(
            f"collected {summary.done}, skipped {summary.skipped} (already committed or forgotten), failed "
            f"{summary.failed}, {summary.seconds:.1f} s, {summary.bytes_written / 1e6:.1f} MB written "
            f"[shard {summary.shard}]",
            highlight=False,
        )
