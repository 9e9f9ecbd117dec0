"""Batched collection: B samples × K timesteps per pass give the vectors one sample per pass gives, for every family
with full parameters and with a LoRA; failures stay per sample; out of memory halves the pass; bad sizes refused."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from dmin.collect import collect
from dmin.errors import UsageError
from dmin.gradients import prepare
from dmin.store import Project
from tests import tiny

FAMILIES = ["ddpm", "sd15", "sd21", "sdxl", "sd3", "sd35", "flux", "dit"]
BUILD = {
    "ddpm": tiny.ddpm,
    "sd15": tiny.sd15,
    "sd21": tiny.sd21,
    "sdxl": tiny.sdxl,
    "sd3": tiny.sd3,
    "sd35": lambda p: tiny.sd3(p, version="3.5"),
    "flux": tiny.flux,
    "dit": tiny.dit,
}


@pytest.fixture(scope="module")
def models(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("models")
    return {name: build(root / name) for name, build in BUILD.items()}


@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory) -> dict[int, Path]:
    root = tmp_path_factory.mktemp("data")
    return {16: tiny.digits_folder(root / "d16", count=9), 32: tiny.digits_folder(root / "d32", count=9, size=32)}


def by_sample(project: Path, v: str) -> dict[str, np.ndarray]:
    """sample_id → its (K, dim) stored vectors."""
    t = Project.open(project).read_table("grads", v)
    assert t is not None
    vec = t.column("vec").combine_chunks().values.to_numpy().reshape(len(t), -1)
    out: dict[str, list[np.ndarray]] = {}
    for sid, k, row in zip(t.column("sample_id").to_pylist(), t.column("t_idx").to_pylist(), vec, strict=True):
        out.setdefault(sid, []).append((k, row))  # type: ignore[arg-type]
    return {sid: np.stack([r for _, r in sorted(rows, key=lambda kr: kr[0])]) for sid, rows in out.items()}


def assert_same_vectors(a: Path, b: Path, v: str, rtol: float = 1e-5) -> None:
    """Each sample's stored (K, dim) vectors agree within rtol relative (L2 over the sample's K rows)."""
    va, vb = by_sample(a, v), by_sample(b, v)
    assert va.keys() == vb.keys() and va
    for sid in va:
        err = np.linalg.norm(va[sid] - vb[sid]) / np.linalg.norm(va[sid])
        assert err <= rtol, (sid, err)


@pytest.mark.slow
@pytest.mark.parametrize("lora", [False, True], ids=["full", "lora"])
@pytest.mark.parametrize("family", FAMILIES)
def test_batch_of_8_equals_batch_of_1(
    family: str, lora: bool, models: dict[str, Path], data: dict[int, Path], tmp_path: Path
) -> None:
    """9 samples: one pass of 8 and a last partial pass of 1, against nine passes of 1."""
    adapter = tiny.lora(models[family], tmp_path / "lora") if lora else None
    res = 32 if family == "flux" else None
    setup = prepare(models[family], lora=adapter, timesteps=2, vs=["64", "full"], resolution=res)
    for b in (1, 8):
        summary = collect(tmp_path / f"b{b}", setup, data[res or 16], batch_size=b)
        assert (summary.done, summary.batch_size) == (9, b)
    for v in ("full", "64"):
        assert_same_vectors(tmp_path / "b1", tmp_path / "b8", v)


def test_a_failing_sample_does_not_take_its_pass_down(
    models: dict[str, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    folder = tiny.digits_folder(tmp_path / "d", count=6)
    rows = [json.loads(x) for x in (folder / "metadata.jsonl").read_text().splitlines()]
    rows[1]["label"] = 42  # a class the model does not have: refused before the pass
    (folder / "metadata.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    setup = prepare(models["ddpm"], timesteps=2, vs=["64"])
    poisoned = setup.family.pixels  # sample 0003 gets a NaN image: its gradient is not finite, inside the pass

    def pixels(img):  # type: ignore[no-untyped-def]
        px = poisoned(img)
        if img.info.get("poison"):
            px.tensor[:] = float("nan")
        return px

    from dmin.data import Record

    original = Record.image

    def image(self: Record):  # type: ignore[no-untyped-def]
        img = original(self)
        if self.source == "0003.png":
            img.info["poison"] = True
        return img

    monkeypatch.setattr(Record, "image", image)
    monkeypatch.setattr(setup.family, "pixels", pixels)
    summary = collect(tmp_path / "p", setup, folder, batch_size=6)
    assert (summary.done, summary.failed) == (4, 2)
    reasons = {f["source"]: f["reason"] for f in summary.failures}
    assert "outside" in reasons["0001.png"] and "non-finite" in reasons["0003.png"]
    samples = Project.open(tmp_path / "p").read_table("samples")
    assert samples is not None and sorted(samples.column("source").to_pylist()) == [
        "0000.png", "0002.png", "0004.png", "0005.png"
    ]


def test_out_of_memory_halves_the_pass_and_goes_on(
    models: dict[str, Path], data: dict[int, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from dmin.gradients import GradientEngine

    setup = prepare(models["ddpm"], timesteps=2, vs=["64"])
    real_run = GradientEngine.run

    def run(self: GradientEngine, x0: torch.Tensor, cond: object):  # type: ignore[no-untyped-def]
        if x0.shape[0] > 2:
            raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")
        return real_run(self, x0, cond)  # type: ignore[arg-type]

    monkeypatch.setattr(GradientEngine, "run", run)
    notes: list[str] = []
    summary = collect(tmp_path / "p", setup, data[16], batch_size=8, on_note=notes.append)
    assert summary.done == 9 and summary.failed == 0
    assert notes == ["out of memory with 8 samples per pass; going on with 4",
                     "out of memory with 4 samples per pass; going on with 2"]
    monkeypatch.setattr(GradientEngine, "run", real_run)
    collect(tmp_path / "ref", setup, data[16], batch_size=1)
    assert_same_vectors(tmp_path / "ref", tmp_path / "p", "64")


@pytest.mark.parametrize("size", [0, -3, "abc", 10**9])
def test_batch_sizes_that_cannot_work_are_refused(
    size: object, models: dict[str, Path], data: dict[int, Path], tmp_path: Path
) -> None:
    setup = prepare(models["ddpm"], timesteps=2, vs=["64"])
    with pytest.raises(UsageError, match="--batch-size") as err:
        collect(tmp_path / "p", setup, data[16], batch_size=size)  # type: ignore[arg-type]
    if size == 10**9:
        assert "largest batch size that fits is" in str(err.value)
    assert not (tmp_path / "p" / "samples").exists()


def test_auto_batch_size_is_bounded(models: dict[str, Path], data: dict[int, Path], tmp_path: Path) -> None:
    setup = prepare(models["ddpm"], timesteps=4, vs=["64"])
    summary = collect(tmp_path / "p", setup, data[16])
    assert 1 <= summary.batch_size <= 64 // 4 and summary.done == 9
