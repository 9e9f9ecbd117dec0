"""The digits demo: the whole DMin chain on real data (scikit-learn's digits) with the bundled class-conditional DDPM.

write the digits as an image folder → collect → index → generate one digit per class with fixed seeds → query
each → detection rate (fraction of the top-k training samples whose class matches the generated digit's).
Every step resumes: a second run reuses the project and finishes in seconds.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from dmin.collect import CollectSummary, collect, prepare
from dmin.index import IndexParams, build_index
from dmin.query import QueryResult, QuerySpec, open_for_query, run_query
from dmin.sheet import contact_sheet
from dmin.store import Project

ASSETS = Path(__file__).parent / "assets"
MODEL = ASSETS / "digits-ddpm"
SIZE = 16


def write_digits(folder: Path, limit: int | None = None) -> Path:
    """scikit-learn's bundled digits as 16×16 PNGs with metadata.jsonl (label, text, subset); idempotent."""
    from sklearn.datasets import load_digits

    meta = folder / "metadata.jsonl"
    if meta.is_file():
        return folder
    d = load_digits()
    folder.mkdir(parents=True, exist_ok=True)
    lines = []
    count = len(d.images) if limit is None else min(limit, len(d.images))
    for i in range(count):
        pixels = (d.images[i] * 255 / 16).astype(np.uint8).repeat(2, 0).repeat(2, 1)
        Image.fromarray(pixels, "L").save(folder / f"{i:04d}.png")
        lines.append(
            json.dumps(
                {
                    "file_name": f"{i:04d}.png",
                    "label": int(d.target[i]),
                    "text": f"digit {int(d.target[i])}",
                    "subset": "base",
                }
            )
        )
    tmp = folder / ".metadata.jsonl.tmp"
    tmp.write_text("\n".join(lines) + "\n")
    tmp.replace(meta)
    return folder


@dataclass
class DemoReport:
    project: str
    collect: dict[str, Any]
    index: dict[str, Any]
    queries: list[dict[str, Any]] = field(default_factory=list)
    detection: dict[str, float] = field(default_factory=dict)
    sheets: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return {
            "project": self.project,
            "collect": self.collect,
            "index": self.index,
            "queries": self.queries,
            "detection": self.detection,
            "sheets": self.sheets,
        }


def detection_rate(results: list[QueryResult], labels: list[int], k: int) -> float:
    """Fraction of the top-k samples whose label equals the query's, over all queries."""
    hits = total = 0
    for res, label in zip(results, labels, strict=True):
        top = res.results[:k]
        hits += sum(1 for r in top if r.get("label") == label)
        total += len(top)
    return hits / max(1, total)


def _collect_worker(project_dir: Path, data: Path, limit: int | None, timesteps: int, v: int, shard: str) -> dict:
    import numba
    import torch

    torch.set_num_threads(1)
    numba.set_num_threads(1)
    setup = prepare(MODEL, timesteps=timesteps, vs=[str(v)])
    return collect(project_dir, setup, data, limit=limit, shard_arg=shard, batch_size=32).to_dict()


def _collect_sharded(
    project_dir: Path,
    data: Path,
    limit: int | None,
    timesteps: int,
    v: int,
    workers: int,
    on_collect: Callable[[CollectSummary], None] | None,
) -> CollectSummary:
    """Collect with `workers` concurrent shards (the same --shard path users run on clusters), showing progress
    from the committed sample count."""
    import multiprocessing as mp
    import time
    from concurrent.futures import ProcessPoolExecutor

    from dmin.data import load_dataset

    records = load_dataset(data).records[:limit]
    total = len(records)
    # create the project first, so concurrent workers never race to create it
    setup = prepare(MODEL, timesteps=timesteps, vs=[str(v)])
    project = Project.create(project_dir, setup.identity)
    del setup
    start = time.perf_counter()
    if {r.sample_id for r in records} <= project.sample_ids():  # a rerun: nothing to compute
        return CollectSummary(skipped=total, total=total, shard="resume", seconds=time.perf_counter() - start)
    live = CollectSummary(total=total, shard=f"0..{workers - 1}/{workers}")
    with ProcessPoolExecutor(workers, mp_context=mp.get_context("spawn")) as pool:
        futures = [
            pool.submit(_collect_worker, project_dir, data, limit, timesteps, v, f"{i}/{workers}")
            for i in range(workers)
        ]
        while not all(f.done() for f in futures):
            time.sleep(0.5)
            live.done = len(project.sample_ids())
            live.seconds = time.perf_counter() - start
            if on_collect:
                on_collect(live)
        parts = [f.result() for f in futures]
    summary = CollectSummary(total=total, shard=f"{workers} shards", seconds=time.perf_counter() - start)
    for part in parts:
        summary.done += part["done"]
        summary.skipped += part["skipped"]
        summary.failed += part["failed"]
        summary.bytes_written += part["bytes_written"]
    if on_collect:
        on_collect(summary)
    return summary


def run_demo(
    out: Path,
    limit: int | None = None,
    timesteps: int = 10,
    v: int = 4096,
    k: int = 10,
    seeds: int = 1,
    workers: int = 2,
    on_collect: Callable[[CollectSummary], None] | None = None,
    on_step: Callable[[str], None] | None = None,
) -> DemoReport:
    say = on_step or (lambda _msg: None)
    data = write_digits(out / "data", limit)
    project_dir = out / "project"
    say(
        f"collecting gradients ({workers} shard worker(s), one thread each: faster than one two-thread process "
        f"for a model this small)"
    )
    summary = _collect_sharded(project_dir, data, limit, timesteps, v, workers, on_collect)
    say("indexing")
    _, info = build_index(Project.open(project_dir), str(v), IndexParams())
    project, qsetup = open_for_query(project_dir)
    results, labels = [], []
    report = DemoReport(str(project_dir), summary.to_dict(), info)
    for seed in range(seeds):
        for label in range(10):
            say(f"generating and attributing digit {label} (seed {seed})")
            res = run_query(project, qsetup, QuerySpec(label=label, seed=seed), k=k)
            results.append(res)
            labels.append(label)
            sheet = out / "sheets" / f"digit{label}-seed{seed}.png"
            contact_sheet(project, res, Image.open(res.image_path or ""), sheet)
            report.sheets.append(str(sheet))
            report.queries.append({"label": label, "seed": seed, **res.to_dict()})
    report.detection = {f"top{kk}": detection_rate(results, labels, kk) for kk in (1, 5, k)}
    return report
