"""Model fingerprints: free the second time, yet a changed weight file is always caught."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from dmin.models.fingerprint import cache_file, file_digest, fingerprint
from dmin.models.load import model_fingerprint, read_index
from tests import tiny


@pytest.fixture(autouse=True)
def _cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DMIN_CACHE_DIR", str(tmp_path / "cache"))


def _files(root: Path) -> list[Path]:
    root.mkdir()
    (root / "a.json").write_text('{"x": 1}')
    (root / "w.safetensors").write_bytes(os.urandom(4096))
    return sorted(root.iterdir())


def test_second_call_reads_nothing_and_a_rewrite_is_caught(tmp_path: Path) -> None:
    files = _files(tmp_path / "m")
    first = fingerprint(files, tmp_path / "m")
    assert cache_file().is_file()
    cache = json.loads(cache_file().read_text())
    assert [file_digest(p, cache)[1] for p in files] == [False, False]  # served from the cache
    assert fingerprint(files, tmp_path / "m") == first
    weights = tmp_path / "m" / "w.safetensors"
    st = weights.stat()
    data = bytearray(weights.read_bytes())
    data[100] ^= 0xFF
    weights.write_bytes(bytes(data))  # same size, and the mtime set back: only the ctime tells
    os.utime(weights, ns=(st.st_atime_ns, st.st_mtime_ns))
    assert weights.stat().st_mtime_ns == st.st_mtime_ns and weights.stat().st_size == st.st_size
    assert fingerprint(files, tmp_path / "m") != first


def test_an_unwritable_cache_only_costs_rereading(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("")
    monkeypatch.setenv("DMIN_CACHE_DIR", str(blocker / "sub"))  # a path under a file: never creatable
    files = _files(tmp_path / "m")
    assert fingerprint(files, tmp_path / "m") == fingerprint(files, tmp_path / "m")


def test_the_scheduler_is_not_fingerprinted_but_weights_are(tmp_path: Path) -> None:
    pndm = tiny.sd15(tmp_path / "pndm")
    euler = tiny.sd15(tmp_path / "euler", {**tiny.SD15_SCHEDULER, "_class_name": "EulerDiscreteScheduler"})
    fp = {m: model_fingerprint(m, read_index(m, m)) for m in (pndm, euler)}
    assert fp[pndm] == fp[euler]
    other = tiny.ddpm(tmp_path / "ddpm")
    assert model_fingerprint(other, read_index(other, other)) != fp[pndm]
    vae = pndm / "vae" / "diffusion_pytorch_model.safetensors"
    vae.write_bytes(vae.read_bytes()[:-4] + b"\0\0\0\0")
    assert model_fingerprint(pndm, read_index(pndm, pndm)) != fp[pndm]
