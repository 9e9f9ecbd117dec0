"""The demo chain end to end at a small scale, in the LoRA setting (the base setting is `make demo`)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from PIL import Image

from dmin.demo import run_demo

pytestmark = pytest.mark.slow


def test_lora_demo_runs_and_resumes(tmp_path: Path) -> None:
    kw = {"limit": 16, "timesteps": 2, "v": 64, "k": 5, "lora": True}
    report = run_demo(tmp_path, **kw)
    meta = [json.loads(line) for line in (tmp_path / "lora" / "data" / "metadata.jsonl").read_text().splitlines()]
    assert len(meta) == 16 and {m["subset"] for m in meta} == {"base", "inverted"}
    assert report.collect["done"] == 16 and report.index["count"] == 16
    assert len(report.queries) == 10 and all(q["subset"] in ("base", "inverted") for q in report.queries)
    assert all(len(q["results"]) == 5 and "subset" in q["results"][0] for q in report.queries)
    assert set(report.detection) == {"top1", "top5"}
    assert 0 < report.chance < 1 and report.detection["top5"] > report.chance  # dmin beats a random top-5
    assert Image.open(report.sheets[0]).size[0] > 0
    again = run_demo(tmp_path, **kw)  # resumes: nothing recollected, same answers
    assert again.collect["done"] == 0 and again.collect["skipped"] == 16
    assert [q["results"] for q in again.queries] == [q["results"] for q in report.queries]
