"""dmin info: a project in brief — identity, stored v's, indexes, query log."""

from __future__ import annotations

from typing import Any

from dmin_cli import render
from dmin_cli.options import JsonOpt, ProjectArg

EXAMPLES = "Examples:\n\n  dmin info proj\n\n  dmin info proj --json | jq '.indexes[] | select(.state == \"stale\")'"


def _size(n: int) -> str:
    size = float(n)
    for unit in ("B", "kB", "MB", "GB"):
        if size < 1000:
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1000
    return f"{size:.1f} TB"


def _short(fingerprint: str | None) -> str:
    return f" (fingerprint {fingerprint[:12]}…)" if fingerprint else ""


def info_cmd(project: ProjectArg, json_out: JsonOpt = False) -> None:
    """What a project holds: identity, samples, stored v's with sizes, index state, queries."""
    from dmin.info import project_info

    info = project_info(project)
    if json_out:
        render.print_json(info.to_dict())
        return
    ident: dict[str, Any] = info.identity
    params = f"--params {ident['param_filter']}" if ident["param_filter"] else "all parameters"
    lines = [
        f"project    {info.project} (schema {info.schema_version}, created by dmin {info.dmin_version})",
        f"model      {ident['model_family']} {ident['model_path']}{_short(ident['model_fingerprint'])}",
        f"adapter    {ident['lora_path'] or 'none'}{_short(ident['adapter_fingerprint'])}",
        f"gradients  n = {ident['n']:,} ({params}), D = {ident['D']:,}, {ident['loss_type']} loss",
        f"timesteps  K = {ident['K']}: {', '.join(f'{t:g}' for t in ident['timesteps'])}",
        f"seeds      noise {ident['noise_seed']}, compress {ident['compress_seed']}; compressor "
        f"{ident['compressor']}; computed in {ident['compute_dtype'] or 'float32'}, stored as {ident['dtype']}",
        f"samples    {info.samples:,} ({info.failures:,} failed"
        + (f", {info.forgotten:,} forgotten)" if info.forgotten else ")"),
        f"queries    {info.queries:,} ({info.results:,} results)",
        f"commits    {info.commits:,}, last {(info.last_commit_at or 'never')[:19]}; {_size(info.bytes)} committed",
    ]
    for line in lines:
        render.out.print(line, highlight=False, markup=False)
    index_of = {i.v: i for i in info.indexes}
    rows = []
    for s in info.vs:
        i = index_of.get(s.v)
        state = "—" if i is None else f"{i.state}, build {i.build}, {i.samples:,} samples, {i.built_at[:19]}"
        if i is not None and i.missing:
            state += f" (misses {i.missing:,})"
        rows.append((s.v, s.origin, f"{s.samples:,}", f"{s.rows:,}", _size(s.bytes), state))
    render.table(None, ["v", "origin", "samples", "rows", "on disk", "index"], rows)
    for p in info.preconditioners:
        missing = f" (misses or holds {p.missing:,} changed)" if p.missing else ""
        render.out.print(
            f"preconditioner v={p.v}: {p.state}, {p.samples:,} samples, λ={p.lambda_:g}, {_size(p.bytes)}{missing}",
            highlight=False,
            markup=False,
        )
