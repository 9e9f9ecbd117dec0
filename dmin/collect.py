"""`collect`: every sample of a dataset through the gradient engine (`dmin.gradients`) into the project.

Resumable and shardable: samples go through in fixed windows, commits happen between windows, and a run killed at
any instant resumes to a bit-identical project. Failures become rows of the failures table.
"""

from __future__ import annotations

import contextlib
import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch

from dmin.batching import (
    choose_batch_size,
    is_out_of_memory,
    parse_batch_size,
)
from dmin.data import Dataset, Record, load_dataset, shard
from dmin.errors import DataError, UsageError
from dmin.gradients import GradientEngine, Setup
from dmin.models import Condition, Pixels, check_condition
from dmin.store import Identity, Project, paths
from dmin.store.project import now_utc
from dmin.store.tables import SampleBatch, failures_table
from dmin.vs import complete

# A computed sample waiting for its commit: record, its samples-table extras, {v: (K, dim)}, norms, losses.
Pending = tuple[Record, dict[str, Any], dict[str, np.ndarray], np.ndarray, np.ndarray]


@dataclass
class CollectSummary:
    done: int = 0
    skipped: int = 0
    failed: int = 0
    seconds: float = 0.0
    bytes_written: int = 0
    total: int = 0
    shard: str = "0/1"
    batch_size: int = 0
    failures: list[dict[str, str]] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return {
            "done": self.done,
            "skipped": self.skipped,
            "failed": self.failed,
            "seconds": round(self.seconds, 3),
            "bytes_written": self.bytes_written,
            "total": self.total,
            "shard": self.shard,
            "batch_size": self.batch_size,
            "failures": self.failures[:20],
        }


def shard_from_env(shard_arg: str | None) -> tuple[int, int]:
    """--shard i/N, else torchrun's RANK/WORLD_SIZE, else 0/1."""
    if shard_arg:
        try:
            i, n = (int(x) for x in shard_arg.split("/"))
        except ValueError as exc:
            raise UsageError(f"--shard {shard_arg!r}: expected i/N, e.g. 0/4") from exc
        if not 0 <= i < n:
            raise UsageError(f"--shard {shard_arg}: need 0 ≤ i < N")
        return i, n
    if "RANK" in os.environ and "WORLD_SIZE" in os.environ:
        return int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"])
    return 0, 1


def collect(
    project_dir: str | Path,
    setup: Setup,
    data: str | Path | Dataset,
    limit: int | None = None,
    shard_arg: str | None = None,
    batch_size: int | str = "auto",
    commit_every: int = 64,
    strict: bool = False,
    progress: Callable[[CollectSummary], None] | None = None,
    on_note: Callable[[str], None] | None = None,
    include_forgotten: bool = False,
) -> CollectSummary:
    """Collect gradients of every not-yet-committed sample of this shard into the project (resumable).

    Samples go through in fixed windows of `batch_size` over the shard's records (the not-yet-committed ones of a
    window form one pass), and commits happen only between windows, so a run killed at any instant and resumed
    computes exactly the passes an uninterrupted run would: the project ends bit-identical. A sample that fails
    (unreadable, a label the model lacks, a non-finite gradient) becomes a failures row; the rest of its pass is
    committed. Out of memory in a pass halves it and goes on (`on_note` says so). Forgotten samples are skipped
    unless `include_forgotten`."""
    ds = data if isinstance(data, Dataset) else load_dataset(data)
    check_condition(setup.family, ds.has_caption, ds.has_label)
    requested = parse_batch_size(batch_size)
    if commit_every < 1:
        raise UsageError(f"--commit-every {commit_every}: commit at least every 1 sample")
    if limit is not None and limit < 0:
        raise UsageError(f"--limit {limit}: expected a number of samples ≥ 0")
    index, count = shard_from_env(shard_arg)  # before anything is created: a bad --shard leaves no project behind
    data_path = str(ds.path.resolve())
    created = not Project.exists(project_dir)
    project = Project.create(project_dir, replace(setup.identity, data_path=data_path))
    records = ds.records[:limit] if limit is not None else ds.records
    mine = [r for _, r in shard(records, index, count)]
    summary = CollectSummary(total=len(mine), shard=f"{index}/{count}")
    start = time.perf_counter()
    ids = [r.sample_id for r in mine]  # content hashes: reading and hashing the data is the floor of a rerun
    skip = project.committed(ids, include_forgotten)  # one vectorized lookup, however many samples
    done_now: set[str] = set()  # collected by this run (a data set's duplicates are stored once)
    engine = GradientEngine(setup)
    pending: list[Pending] = []
    failures: list[tuple[str, str]] = []

    def fail(rec: Record, exc: DataError) -> None:
        if strict:
            raise exc
        failures.append((rec.source, str(exc)))
        summary.failed += 1
        summary.failures.append({"source": rec.source, "reason": str(exc)})

    def flush() -> None:
        if pending:
            entry = project.commit_samples(_batch(pending, setup.identity), data_path, include_forgotten, complete)
            if entry is not None:
                summary.bytes_written += sum(f.bytes for f in entry.files)
            pending.clear()
        if failures:
            table = failures_table(failures, now_utc())
            entry = project.commit("failures", [("failures", None, paths.FOLDERS["failures"], table)])
            summary.bytes_written += sum(f.bytes for f in entry.files)
            failures.clear()

    try:
        size = requested or 1
        if skip.all():  # every sample is committed already: nothing to load, probe or pass
            summary.skipped = len(mine)
        else:
            probe = engine.footprint(*_blank(setup))
            size = choose_batch_size(requested, probe, setup.identity.K, setup.device)
        summary.batch_size = size
        step = size  # shrinks when a pass runs out of memory; the windows stay fixed
        for lo in range(0, len(mine) if not skip.all() else 0, size):
            ready: list[tuple[Record, Pixels, torch.Tensor, Condition]] = []
            for i in range(lo, min(lo + size, len(mine))):
                rec = mine[i]
                if skip[i] or ids[i] in done_now:
                    summary.skipped += 1
                    continue
                try:
                    pixels = setup.family.pixels(rec.image())
                    cond = setup.family.encode_condition(rec.caption, rec.label, pixels)
                    ready.append((rec, pixels, setup.family.encode_image(pixels), cond))
                except DataError as exc:
                    fail(rec, exc)
            at = 0
            while at < len(ready):
                part = ready[at : at + step]
                try:
                    vecs, norms, losses = engine.run(
                        torch.cat([x0 for _, _, x0, _ in part]), Condition.cat([c for *_, c in part])
                    )
                except Exception as exc:
                    if not is_out_of_memory(exc) or step == 1:
                        raise
                    step = max(1, len(part) // 2)
                    if setup.device.type == "cuda":
                        torch.cuda.empty_cache()
                    if on_note:
                        on_note(f"out of memory with {len(part)} samples per pass; going on with {step}")
                    continue
                for j, (rec, pixels, _, _) in enumerate(part):
                    if not (np.isfinite(norms[j]).all() and np.isfinite(losses[j]).all()) or (norms[j] == 0).any():
                        fail(rec, DataError(
                            f"{rec.source}: non-finite or zero gradient norm/loss (NaN weights or a degenerate sample)"
                        ))
                        continue
                    sample = {v: rows[j] for v, rows in vecs.items()}
                    pending.append((rec, {**rec.extra, **setup.family.record(pixels)}, sample, norms[j], losses[j]))
                    done_now.add(rec.sample_id)
                    summary.done += 1
                at += len(part)
            if len(pending) >= commit_every:
                flush()
            summary.seconds = time.perf_counter() - start
            if progress:
                progress(summary)
        if progress and skip.all():
            progress(summary)
        if summary.failed and not summary.done and not summary.skipped:
            raise DataError(
                f"none of the {summary.total} sample(s) could be collected: {summary.failed} failed "
                f"(e.g. {summary.failures[0]['reason']}); fix the data and run again"
            )
        flush()
    except Exception:
        if created and not project.state().seq:  # a project this run made, nothing committed: leave no shell
            _unmake(project.root)
        elif failures:
            flush()  # what failed stays on record in the project that existed
        raise
    finally:
        engine.close()
    summary.seconds = time.perf_counter() - start
    return summary


def _unmake(root: Path) -> None:
    """Remove the empty project a failed first run created: its dmin.json and empty folders only, never a file
    another writer may have staged meanwhile (then the project stays, valid and empty)."""
    (root / paths.IDENTITY).unlink(missing_ok=True)
    for folder in sorted((p for p in root.rglob("*") if p.is_dir()), key=lambda p: -len(p.parts)):
        with contextlib.suppress(OSError):
            folder.rmdir()
    with contextlib.suppress(OSError):
        root.rmdir()


def _blank(setup: Setup) -> tuple[torch.Tensor, Condition]:
    """An x0 and condition of the model's shapes, for measuring a pass (contents do not change its memory)."""
    fam = setup.family
    x0 = torch.zeros((1, *setup.identity.latent_shape), device=setup.device)
    return x0, fam.encode_condition("", 0 if fam.needs_label else None)


def _batch(pending: list[Pending], ident: Identity) -> SampleBatch:
    keys = sorted({k for _, extra, *_ in pending for k in extra})
    return SampleBatch(
        sample_ids=[rec.sample_id for rec, *_ in pending],
        sources=[rec.source for rec, *_ in pending],
        captions=[rec.caption for rec, *_ in pending],
        labels=[rec.label for rec, *_ in pending],
        extra={k: [extra.get(k) for _, extra, *_ in pending] for k in keys},
        timesteps=ident.timesteps,
        vecs={v: np.stack([vecs[v] for _, _, vecs, _, _ in pending]) for v in ident.collect_vs},
        norms=np.stack([n for *_, n, _ in pending]),
        losses=np.stack([ls for *_, ls in pending]),
    )


__all__ = ["CollectSummary", "collect"]
