"""dmin collect: per-sample gradients of a diffusers model into the project (resumable, shardable)."""

from __future__ import annotations

from pathlib import Path

import typer

from dmin.errors import UsageError
from dmin_cli import render
from dmin_cli.options import JsonOpt, ProjectArg

EXAMPLES = (
    "Examples:\n\n  dmin collect proj --model ./ddpm-digits --data ./digits --v 4096\n\n"
    "  dmin collect proj --model ./sd15 --lora ./my-lora --data ./imgs --shard 0/4\n\n"
    "  dmin collect proj --model stabilityai/stable-diffusion-xl-base-1.0 --lora ./sdxl-lora --data ./imgs "
    "--dtype bf16\n\n"
    "  torchrun --nproc-per-node 8 -m dmin_cli collect proj --model … --data … --device cuda"
)


def collect_cmd(
    project: ProjectArg,
    model: str = typer.Option(
        ..., "--model", help="A diffusers pipeline: a local directory or a Hub id (org/name[@revision]) in the cache."
    ),
    data: Path = typer.Option(..., "--data", help="Image folder with metadata.jsonl/csv, or a .parquet file."),
    lora: str | None = typer.Option(
        None, "--lora", help="LoRA safetensors, a PEFT adapter dir or a Hub id: only its parameters get gradients."
    ),
    params: str | None = typer.Option(None, "--params", help="Glob over parameter names (full models)."),
    timesteps: int | None = typer.Option(
        None, "--timesteps", help="K, spread over the training schedule (default 10).", show_default=False
    ),
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
    device: str = typer.Option(
        "auto", "--device", help="auto, cpu, cuda or cuda:N (under torchrun, cuda means cuda:$LOCAL_RANK)."
    ),
    dtype: str = typer.Option(
        "float32", "--dtype", help="Compute dtype: float32, bfloat16 (bf16) or float16 (fp16); part of the identity."
    ),
    resolution: int | None = typer.Option(
        None, "--resolution", help="Image size in pixels (default: the model's native size, e.g. 1024 for SDXL)."
    ),
    storage: str = typer.Option("float32", "--storage-dtype", help="Vector storage: float32 or float16."),
    batch_size: str = typer.Option(
        "auto",
        "--batch-size",
        help="Samples per pass (each pass computes B×K exact per-example gradients); auto: the largest that fits "
        "in memory, up to where passes stop getting faster.",
    ),
    commit_every: int = typer.Option(64, "--commit-every", help="Commit after at least this many samples."),
    noise_seed: int = typer.Option(0, "--noise-seed"),
    compress_seed: int = typer.Option(0, "--compress-seed"),
    strict: bool = typer.Option(False, "--strict", help="Stop at the first failed sample."),
    include_forgotten: bool = typer.Option(
        False, "--include-forgotten", help="Collect forgotten samples again (`dmin forget` keeps them out otherwise)."
    ),
    json_out: JsonOpt = False,
) -> None:
    """Collect compressed, normalized per-sample gradients; reruns skip committed samples."""
    from dmin.collect import CollectSummary, collect
    from dmin.gradients import PrepareOptions, prepare

    if timesteps is not None and timestep_list:
        raise UsageError("give --timesteps K or --timestep-list T (repeated), not both: one of them would be ignored")
    options = PrepareOptions(
        lora=lora,
        params=params,
        timesteps=timesteps or 10,
        timestep_list=timestep_list,
        vs=v or (),
        noise_seed=noise_seed,
        compress_seed=compress_seed,
        device=device,
        dtype=dtype,
        storage_dtype=storage,
        resolution=resolution,
    )
    setup = prepare(model, options)
    for note in setup.notes:
        render.note(note, quiet=json_out)
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
            project, setup, data, limit=limit, shard_arg=shard, batch_size=batch_size, commit_every=commit_every,
            strict=strict, progress=update, on_note=lambda text: render.warn(text, quiet=json_out),
            include_forgotten=include_forgotten,
        )
    if json_out:
        render.print_json(summary.to_dict())
    else:
        for f in summary.failures[:5]:
            render.out.print(f"[yellow]failed[/yellow] {f['source']}: {f['reason']}", highlight=False)
        render.out.print(
            f"collected {summary.done}, skipped {summary.skipped} (already committed or forgotten), failed "
            f"{summary.failed}, {summary.seconds:.1f} s, {summary.bytes_written / 1e6:.1f} MB written "
            f"[shard {summary.shard}]",
            highlight=False,
            markup=False,
        )
