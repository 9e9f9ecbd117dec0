"""The digits demo: the whole DMin chain on real data (scikit-learn's digits) with the bundled class-conditional DDPM.

write the digits as an image folder → collect → index → generate one digit per class with fixed seeds → query
each → detection rate (fraction of the top-k training samples whose class matches the generated digit's).
Every step resumes: a second run reuses the project and finishes in seconds.
"""

from __future__ import annotations

import functools
import json
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from dmin.collect import CollectSummary, collect
from dmin.errors import ProjectError, UsageError
from dmin.gradients import prepare
from dmin.index import IndexParams, build_index
from dmin.query import QueryResult, QuerySpec, open_for_query, run_query
from dmin.sheet import contact_sheet
from dmin.store import Project

ASSETS = Path(__file__).parent / "assets"
MODEL = ASSETS / "digits-ddpm"
SIZE = 16


LORA = ASSETS / "digits-lora"


@functools.cache
def _digits() -> Any:
    from sklearn.datasets import load_digits

    return load_digits()


def digit_pixels(i: int, inverted: bool = False) -> np.ndarray:
    """Digit i of scikit-learn's set as 16×16 uint8 (nearest upscale); inverted: white background, dark strokes."""
    pixels = (_digits().images[i] * 255 / 16).astype(np.uint8).repeat(2, 0).repeat(2, 1)
    return 255 - pixels if inverted else pixels


def lora_samples() -> list[tuple[int, int, str]]:
    """The LoRA's mixed training set, (digit index, label, subset): 299 digits as drawn ("base") and 300 others
    inverted ("inverted", a style the base model never saw) — the paper's LoRA-on-a-mixed-dataset setting."""
    target = _digits().target
    base = [(i, int(target[i]), "base") for i in range(3, 1797, 6)][:300]
    inverted = [(i, int(target[i]), "inverted") for i in range(0, 1797, 6)][:300]
    return base + inverted


def write_digits(folder: Path, limit: int | None = None, lora: bool = False) -> Path:
    """The digits as 16×16 PNGs with metadata.jsonl (label, text, subset); idempotent. lora: the LoRA's mixed
    training set (`lora_samples`) instead of all 1797."""
    meta = folder / "metadata.jsonl"
    if meta.is_file():
        return folder
    folder.mkdir(parents=True, exist_ok=True)
    target = _digits().target
    # digit order (the LoRA's two subsets interleave), so any --limit takes both
    chosen = sorted(lora_samples()) if lora else [(i, int(target[i]), "base") for i in range(len(target))]
    lines = []
    for i, label, subset in chosen[:limit]:
        name = f"{i:04d}.png"
        Image.fromarray(digit_pixels(i, subset == "inverted"), "L").save(folder / name)
        lines.append(json.dumps({"file_name": name, "label": label, "text": f"digit {label}", "subset": subset}))
    tmp = folder / ".metadata.jsonl.tmp"
    tmp.write_text("\n".join(lines) + "\n")
    tmp.replace(meta)
    return folder


def style(image: Image.Image) -> str:
    """The subset a digit image looks drawn in: inverted digits are dark strokes on a white background."""
    return "inverted" if float(np.median(np.asarray(image.convert("L")))) > 127 else "base"


@dataclass
class DemoReport:
    project: str
    collect: dict[str, Any]
    index: dict[str, Any]
    queries: list[dict[str, Any]] = field(default_factory=list)
    detection: dict[str, float] = field(default_factory=dict)
    chance: float = 0.0  # the detection rate a random top-k would get on these queries, from the data's own mix
    sheets: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return {
            "project": self.project,
            "collect": self.collect,
            "index": self.index,
            "queries": self.queries,
            "detection": self.detection,
            "chance": self.chance,
            "sheets": self.sheets,
        }


def detection_rate(results: list[QueryResult], wanted: list[Any], k: int, column: str = "label") -> float:
    """Fraction of the top-k samples whose `column` equals the query's wanted value, over all queries."""
    hits = total = 0
    for res, want in zip(results, wanted, strict=True):
        top = res.results[:k]
        hits += sum(1 for r in top if r.get(column) == want)
        total += len(top)
    return hits / max(1, total)


def chance_rate(project: Project, wanted: list[Any], column: str = "label") -> float:
    """The detection rate of a random top-k: for each query, the share of training samples whose `column` equals
    the query's wanted value (0.1 only when the classes are balanced)."""
    table = project.read_table("samples", columns=[column])
    values = [] if table is None else [v if column != "label" else (None if v is None else int(v))
                                       for v in table.column(column).to_pylist()]
    if not values:
        return 0.0
    return sum(values.count(w) for w in wanted) / (len(values) * len(wanted))


def _check_args(out: Path, limit: int | None, timesteps: int, k: int) -> None:
    """Refuse bad arguments before anything is written (an empty --limit 0 data set would be reused by later runs)."""
    if out.exists() and not out.is_dir():
        raise ProjectError(f"--out {out} is a file; choose a directory for the demo's data, project and sheets")
    if limit is not None and limit < 1:
        raise UsageError(f"--limit must be at least 1, got {limit}; leave it out for all 1797 digits")
    if timesteps < 1:
        raise UsageError(f"--timesteps must be at least 1, got {timesteps}")
    if k < 1:
        raise UsageError(f"--k must be at least 1, got {k}")


def run_demo(
    out: Path,
    limit: int | None = None,
    timesteps: int = 10,
    v: int = 4096,
    k: int = 10,
    seeds: int = 1,
    lora: bool = False,
    on_collect: Callable[[CollectSummary], None] | None = None,
    on_step: Callable[[str], None] | None = None,
) -> DemoReport:
    """The demo; lora: the LoRA setting (bundled LoRA over its mixed base/inverted set, LoRA gradients only), where
    detection asks whether the top-k come from the generated digit's subset, in out/lora."""
    _check_args(out, limit, timesteps, k)
    say = on_step or (lambda _msg: None)
    if lora:
        out = out / "lora"
    data = write_digits(out / "data", limit, lora=lora)
    project_dir = out / "project"
    say("collecting gradients (batched passes of B digits × K timesteps)")
    setup = prepare(MODEL, lora=LORA if lora else None, timesteps=timesteps, vs=[str(v)])
    summary = collect(project_dir, setup, data, limit=limit, progress=on_collect)
    say("indexing")
    _, info = build_index(Project.open(project_dir), str(v), IndexParams())
    project, qsetup = open_for_query(project_dir)
    results, labels, styles = [], [], []
    report = DemoReport(str(project_dir), summary.to_dict(), info)
    for seed in range(seeds):
        for label in range(10):
            say(f"generating and attributing digit {label} (seed {seed})")
            res = run_query(project, qsetup, QuerySpec(label=label, seed=seed), k=k)
            image = Image.open(res.image_path or "")
            results.append(res)
            labels.append(label)
            styles.append(style(image))
            sheet = out / "sheets" / f"digit{label}-seed{seed}.png"
            sheet.parent.mkdir(parents=True, exist_ok=True)
            contact_sheet(project, res, image, sheet, force=True)  # the demo's own folder: a rerun replaces them
            report.sheets.append(str(sheet))
            extra = {"subset": styles[-1]} if lora else {}
            report.queries.append({"label": label, "seed": seed, **extra, **res.to_dict()})
    wanted, column = (styles, "subset") if lora else (labels, "label")
    report.detection = {f"top{kk}": detection_rate(results, wanted, kk, column) for kk in (1, 5, k)}
    report.chance = chance_rate(project, wanted, column)
    return report
