"""`collect`: adapters, resume after kill -9, shards, Parquet data, failures and clear errors (every family's
exactness is in test_pipelines.py)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from dmin.collect import collect
from dmin.errors import UsageError
from dmin.gradients import prepare
from dmin.store import Project
from dmin.verify import verify
from tests import tiny

DMIN = [sys.executable, "-m", "dmin_cli"]


@pytest.fixture(scope="module")
def models(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("models")
    return {
        "ddpm": tiny.ddpm(root / "ddpm"),
        "ddpm_uncond": tiny.ddpm(root / "ddpm_uncond", conditional=False),
    }


@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tiny.digits_folder(tmp_path_factory.mktemp("data") / "digits", count=8)


def _lora(model: Path, out: Path) -> Path:
    """A LoRA on the DDPM UNet saved in diffusers' format (unet.-prefixed PEFT keys, safetensors)."""
    from diffusers import UNet2DModel
    from peft import LoraConfig, get_peft_model_state_dict, inject_adapter_in_model
    from safetensors.torch import save_file

    unet = UNet2DModel.from_pretrained(str(model / "unet"))
    torch.manual_seed(1)
    inject_adapter_in_model(LoraConfig(r=2, lora_alpha=2, target_modules=["conv1", "conv2"]), unet)
    for name, p in unet.named_parameters():
        if "lora_B" in name:
            torch.nn.init.normal_(p, std=0.02)
    state = {f"unet.{k}": v.contiguous() for k, v in get_peft_model_state_dict(unet).items()}
    out.mkdir(parents=True, exist_ok=True)
    save_file(state, str(out / "pytorch_lora_weights.safetensors"))
    return out


def test_lora_gradients_cover_only_adapter_parameters(models: dict[str, Path], data: Path, tmp_path: Path) -> None:
    lora = _lora(models["ddpm"], tmp_path / "lora")
    setup = prepare(models["ddpm"], lora=lora, timesteps=2, vs=["64"])
    names = [n for n, _ in setup.params]
    assert names and all("lora_" in n for n in names)
    assert setup.identity.n == sum(p.numel() for _, p in setup.params)
    assert setup.identity.adapter_fingerprint is not None
    assert collect(tmp_path / "p", setup, data, limit=2).done == 2


def test_lora_that_does_not_fit_is_refused(models: dict[str, Path], tmp_path: Path) -> None:
    from safetensors.torch import save_file

    bad = tmp_path / "bad"
    bad.mkdir()
    save_file(
        {"unet.nope.lora_A.weight": torch.zeros(2, 4), "unet.nope.lora_B.weight": torch.zeros(4, 2)},
        str(bad / "pytorch_lora_weights.safetensors"),
    )
    r = subprocess.run(
        [
            *DMIN,
            "collect",
            str(tmp_path / "p"),
            "--model",
            str(models["ddpm"]),
            "--data",
            str(tmp_path),
            "--lora",
            str(bad),
        ],
        capture_output=True,
        text=True,
    )
    assert r.returncode == 1
    assert "another model" in r.stderr and len(r.stderr.strip().splitlines()) == 1
    assert not (tmp_path / "p").exists()


def _vectors(root: Path, v: str) -> dict[tuple[str, int], np.ndarray]:
    t = Project.open(root).read_table("grads", v)
    assert t is not None
    vec = t.column("vec").combine_chunks().values.to_numpy().reshape(len(t), -1)
    return {
        (s, i): vec[j]
        for j, (s, i) in enumerate(zip(t.column("sample_id").to_pylist(), t.column("t_idx").to_pylist(), strict=True))
    }


def _collect_cli(project: Path, model: Path, data: Path, *extra: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [
            *DMIN,
            "collect",
            str(project),
            "--model",
            str(model),
            "--data",
            str(data),
            "--timesteps",
            "2",
            "--v",
            "64",
            "--batch-size",
            "3",
            "--commit-every",
            "1",
            "--json",
            *extra,
        ],
        capture_output=True,
        text=True,
    )


def test_resume_after_kill_and_shards_equal_one_run(models: dict[str, Path], data: Path, tmp_path: Path) -> None:
    clean = tmp_path / "clean"
    r = _collect_cli(clean, models["ddpm"], data)
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout)["done"] == 8
    # killed after its first commits, then resumed
    killed = tmp_path / "killed"
    proc = subprocess.Popen(
        [
            *DMIN,
            "collect",
            str(killed),
            "--model",
            str(models["ddpm"]),
            "--data",
            str(data),
            "--timesteps",
            "2",
            "--v",
            "64",
            "--batch-size",
            "3",
            "--commit-every",
            "1",
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    deadline = time.time() + 60
    while time.time() < deadline and len(list((killed / "manifest").glob("*.json"))) < 2:
        time.sleep(0.05)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert verify(killed, deep=True).healthy
    r = _collect_cli(killed, models["ddpm"], data)
    out = json.loads(r.stdout)
    assert out["skipped"] >= 3 and out["done"] + out["skipped"] == 8  # whole passes of 3 were committed
    # two shards
    sharded = tmp_path / "sharded"
    for i in (0, 1):
        assert _collect_cli(sharded, models["ddpm"], data, "--shard", f"{i}/2").returncode == 0
    want = _vectors(clean, "64")
    for other in (killed, sharded):
        got = _vectors(other, "64")
        assert got.keys() == want.keys()
        for key, vec in want.items():
            if other is killed:  # the same passes as the uninterrupted run: bit-identical
                np.testing.assert_array_equal(got[key], vec)
            else:  # shards form other passes (a pass's GEMMs round with its size): float32 agreement
                assert np.linalg.norm(got[key] - vec) <= 1e-5 * np.linalg.norm(vec)
        assert verify(other, deep=True).healthy


def test_parquet_data_with_hf_image_structs(models: dict[str, Path], tmp_path: Path) -> None:
    pq_path = tiny.digits_parquet(tmp_path / "digits.parquet", count=4)
    setup = prepare(models["ddpm"], timesteps=2, vs=["64"])
    assert collect(tmp_path / "p", setup, pq_path).done == 4
    t = Project.open(tmp_path / "p").read_table("samples")
    assert t is not None and sorted(t.column("source").to_pylist())[0] == "digits.parquet#0"


def test_broken_images_become_failures(models: dict[str, Path], tmp_path: Path) -> None:
    d = tiny.digits_folder(tmp_path / "d", count=3)
    (d / "0001.png").write_bytes(b"not a png")
    with open(d / "metadata.jsonl", "a") as f:
        f.write(json.dumps({"file_name": "../outside.png", "label": 1}) + "\n")
    setup = prepare(models["ddpm"], timesteps=2, vs=["64"])
    s = collect(tmp_path / "p", setup, d)
    assert (s.done, s.failed) == (2, 2)
    fails = Project.open(tmp_path / "p").read_table("failures")
    assert fails is not None
    reasons = " ".join(fails.column("reason").to_pylist())
    assert "unreadable image" in reasons and "escapes the data folder" in reasons
    r = _collect_cli(tmp_path / "strict", models["ddpm"], d, "--strict")
    assert r.returncode == 1 and "unreadable image" in r.stderr
    assert not (tmp_path / "strict").exists()  # no half-made project: the strict run committed nothing


def test_a_collect_where_every_sample_fails_exits_1_and_leaves_no_project(
    models: dict[str, Path], tmp_path: Path
) -> None:
    d = tiny.digits_folder(tmp_path / "d", count=3)
    for png in d.glob("*.png"):
        png.write_bytes(b"not a png")
    r = _collect_cli(tmp_path / "p", models["ddpm"], d)
    assert r.returncode == 1 and "none of the 3 sample(s) could be collected: 3 failed" in r.stderr
    assert len(r.stderr.strip().splitlines()) == 1 and not (tmp_path / "p").exists()
    good = tiny.digits_folder(tmp_path / "good", count=2)
    assert _collect_cli(tmp_path / "q", models["ddpm"], good).returncode == 0
    again = _collect_cli(tmp_path / "q", models["ddpm"], d)  # an existing project keeps its samples and the record
    assert again.returncode == 1 and "3 failed" in again.stderr
    project = Project.open(tmp_path / "q")
    assert len(project.sample_ids()) == 2 and len(project.read_table("failures") or []) == 3
    assert _collect_cli(tmp_path / "q", models["ddpm"], good).returncode == 0  # a rerun: all skipped, exit 0


def test_clear_errors_before_any_work(models: dict[str, Path], data: Path, tmp_path: Path) -> None:
    r = _collect_cli(tmp_path / "p", tmp_path / "missing", data)
    assert r.returncode == 1 and "no such directory" in r.stderr
    nolabel = tiny.digits_folder(tmp_path / "nolabel", count=2)
    lines = [json.loads(x) for x in (nolabel / "metadata.jsonl").read_text().splitlines()]
    (nolabel / "metadata.jsonl").write_text("".join(json.dumps({"file_name": x["file_name"]}) + "\n" for x in lines))
    r = _collect_cli(tmp_path / "p", models["ddpm"], nolabel)
    assert r.returncode == 1 and "'label' column" in r.stderr
    assert not (tmp_path / "p").exists()
    pickled = tmp_path / "pickled"
    (pickled / "unet").mkdir(parents=True)
    (pickled / "model_index.json").write_text(json.dumps({"_class_name": "DDPMPipeline"}))
    (pickled / "unet" / "diffusion_pytorch_model.bin").write_bytes(b"x")
    r = _collect_cli(tmp_path / "p", pickled, data)
    assert r.returncode == 1 and "safetensors only" in r.stderr
    ok = _collect_cli(tmp_path / "q", models["ddpm"], data, "--limit", "1")
    assert ok.returncode == 0
    mismatch = _collect_cli(tmp_path / "q", models["ddpm_uncond"], data)
    assert mismatch.returncode == 1 and "model_fingerprint" in mismatch.stderr


def test_prepare_takes_options_by_name_or_as_one_object() -> None:
    from dmin.demo import MODEL
    from dmin.gradients import PrepareOptions

    by_name = prepare(MODEL, timesteps=3, vs=[256], noise_seed=5)
    as_object = prepare(MODEL, PrepareOptions(timesteps=3, vs=[256], noise_seed=5))
    assert by_name.identity == as_object.identity and by_name.identity.K == 3
    assert prepare(MODEL, PrepareOptions(timesteps=3, vs=[256]), noise_seed=5).identity == by_name.identity
    with pytest.raises(UsageError, match=r"timestep_count.*the options are lora, params, timesteps"):
        prepare(MODEL, timestep_count=3)
