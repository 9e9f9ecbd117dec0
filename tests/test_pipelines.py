"""Real pipelines as users have them, shrunk: every family's stored rows against an independent autograd
computation with a hand-written forward process, the same weights under any scheduler, LoRA files as diffusers'
training scripts write them, generation, and what is refused."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from dmin.collect import collect
from dmin.compressor import Compressor
from dmin.errors import ModelLoadError
from dmin.gradients import prepare
from dmin.store import Project
from dmin.verify import verify
from tests import tiny

DMIN = [sys.executable, "-m", "dmin_cli"]
FAMILIES = ["ddpm", "ddpm_uncond", "sd15", "sd21", "sdxl", "sd3", "sd35", "flux", "schnell", "dit"]
FLUX_RES = 32  # FLUX's native 1024 px is too big for a CPU test; --resolution gives any size


@pytest.fixture(scope="module")
def models(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("models")
    return {
        "ddpm": tiny.ddpm(root / "ddpm"),
        "ddpm_uncond": tiny.ddpm(root / "ddpm_uncond", conditional=False),
        "sd15": tiny.sd15(root / "sd15"),
        "sd21": tiny.sd21(root / "sd21"),
        "sdxl": tiny.sdxl(root / "sdxl"),
        "sd3": tiny.sd3(root / "sd3"),
        "sd35": tiny.sd3(root / "sd35", version="3.5"),
        "flux": tiny.flux(root / "flux"),
        "schnell": tiny.flux(root / "schnell", dev=False),
        "dit": tiny.dit(root / "dit"),
    }


@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory) -> dict[int, Path]:
    root = tmp_path_factory.mktemp("data")
    return {16: tiny.digits_folder(root / "d16", count=3), FLUX_RES: tiny.digits_folder(root / "d32", 3, size=32)}


def _pipe(model: Path):  # type: ignore[no-untyped-def]
    import diffusers

    cls = json.loads((model / "model_index.json").read_text())["_class_name"]
    kw: dict[str, object] = {"use_safetensors": True}
    if cls == "StableDiffusionPipeline":
        kw.update(safety_checker=None, requires_safety_checker=False)
    if cls == "StableDiffusion3Pipeline":
        kw.update(text_encoder_3=None, tokenizer_3=None)
    return getattr(diffusers, cls).from_pretrained(str(model), **kw)


def alphas_cumprod_by_hand(config: dict) -> torch.Tensor:
    """ᾱ from the scheduler config's betas, written out (linear or scaled_linear), in float64."""
    T, b0, b1 = config["num_train_timesteps"], config["beta_start"], config["beta_end"]
    if config["beta_schedule"] == "scaled_linear":
        betas = torch.linspace(b0**0.5, b1**0.5, T, dtype=torch.float64) ** 2
    else:
        assert config["beta_schedule"] == "linear"
        betas = torch.linspace(b0, b1, T, dtype=torch.float64)
    return torch.cumprod(1 - betas, 0)


def reference_gradient(
    model: Path, image: Path, caption: str, label: int, t: float, k: int, lora: Path | None = None
) -> np.ndarray:
    """Plain autograd on the loaded pipeline with the training forward process written by hand; normalized. With
    `lora`: the adapter loaded into the pipeline by PEFT (diffusers' load_lora_weights), gradients of its weights."""
    from diffusers import FluxPipeline

    pipe = _pipe(model)
    cls = type(pipe).__name__
    if lora is not None:
        pipe.load_lora_weights(str(lora), adapter_name="dmin")
    den = pipe.unet if hasattr(pipe, "unet") else pipe.transformer
    latent = hasattr(pipe, "vae")
    img = Image.open(image).convert("RGB" if latent else "L")  # already the model's size: no resize, no crop
    px = torch.tensor(np.asarray(img), dtype=torch.float32) / 127.5 - 1
    px = px.permute(2, 0, 1)[None] if latent else px[None, None]
    if latent:
        with torch.no_grad():
            mode = pipe.vae.encode(px).latent_dist.mode()
        x0 = (mode - (pipe.vae.config.shift_factor or 0.0)) * pipe.vae.config.scaling_factor
    else:
        x0 = px
    eps = torch.randn((1, *x0.shape[1:]), generator=torch.Generator().manual_seed(k))  # noise_seed 0
    flow = cls in ("StableDiffusion3Pipeline", "FluxPipeline")
    if flow:
        sigma = t / 1000
        x_t, target = (1 - sigma) * x0 + sigma * eps, eps - x0
    else:
        ac = alphas_cumprod_by_hand(dict(pipe.scheduler.config))[int(t)].float()
        x_t = ac.sqrt() * x0 + (1 - ac).sqrt() * eps
        v_pred = pipe.scheduler.config.prediction_type == "v_prediction"
        target = ac.sqrt() * eps - (1 - ac).sqrt() * x0 if v_pred else eps
    params = [(n, p) for n, p in sorted(den.named_parameters(), key=lambda kv: kv[0]) if lora is None or "lora_" in n]
    for _, p in params:
        p.requires_grad_(True)
    ts = torch.tensor([int(t)])
    with torch.no_grad():
        if cls == "StableDiffusionPipeline":
            ids = pipe.tokenizer(
                caption, padding="max_length", max_length=pipe.tokenizer.model_max_length, truncation=True,
                return_tensors="pt",
            ).input_ids
            text = {"encoder_hidden_states": pipe.text_encoder(ids)[0]}
        elif cls == "StableDiffusionXLPipeline":
            emb, _, pooled, _ = pipe.encode_prompt(caption, do_classifier_free_guidance=False)
            size = x0.shape[-1] * 2  # the image's pixels: original size = target size, no crop
            time_ids = torch.tensor([[size, size, 0, 0, size, size]], dtype=emb.dtype)
            text = {"encoder_hidden_states": emb, "added_cond_kwargs": {"text_embeds": pooled, "time_ids": time_ids}}
        elif cls == "StableDiffusion3Pipeline":
            emb, _, pooled, _ = pipe.encode_prompt(
                caption, caption, caption, do_classifier_free_guidance=False, max_sequence_length=256
            )
            text = {"encoder_hidden_states": emb, "pooled_projections": pooled}
        elif cls == "FluxPipeline":
            emb, pooled, text_ids = pipe.encode_prompt(caption, caption, max_sequence_length=512)
    if cls == "DDPMPipeline":
        labels = torch.tensor([label]) if den.config.num_class_embeds else None
        pred = den(x_t, ts, class_labels=labels).sample
    elif cls in ("StableDiffusionPipeline", "StableDiffusionXLPipeline"):
        pred = den(x_t, ts, **text).sample
    elif cls == "StableDiffusion3Pipeline":
        pred = den(hidden_states=x_t, timestep=torch.tensor([t]), **text).sample
    elif cls == "FluxPipeline":
        n, c, h, w = x_t.shape
        guidance = torch.tensor([3.5]) if den.config.guidance_embeds else None
        out = den(
            hidden_states=FluxPipeline._pack_latents(x_t, n, c, h, w),
            timestep=torch.tensor([t / 1000]),
            guidance=guidance,
            pooled_projections=pooled,
            encoder_hidden_states=emb,
            txt_ids=text_ids,
            img_ids=FluxPipeline._prepare_latent_image_ids(n, h // 2, w // 2, "cpu", torch.float32),
        ).sample
        scale = pipe.vae_scale_factor
        pred = FluxPipeline._unpack_latents(out, h * scale, w * scale, scale)
    else:
        pred = den(x_t, timestep=ts, class_labels=torch.tensor([label])).sample[:, :4]
    loss = torch.nn.functional.mse_loss(pred, target)
    grads = torch.autograd.grad(loss, [p for _, p in params], allow_unused=True)
    parts = [(g if g is not None else torch.zeros_like(p)) for g, (_, p) in zip(grads, params, strict=True)]
    flat = torch.cat([g.reshape(-1) for g in parts])
    return (flat.double() / flat.double().norm()).numpy()


def _rows(project: Project, v: str) -> np.ndarray:
    t = project.read_table("grads", v)
    assert t is not None
    dim = project.identity.n if v == "full" else int(v)
    return t.column("vec").combine_chunks().values.to_numpy().reshape(-1, dim)


@pytest.mark.slow
@pytest.mark.parametrize("family", FAMILIES)
def test_stored_rows_equal_an_independent_computation(
    family: str, models: dict[str, Path], data: dict[int, Path], tmp_path: Path
) -> None:
    ddpm = family.startswith("ddpm")
    ts = [7.0, 61.0] if ddpm else [70.0, 610.0]
    res = FLUX_RES if family in ("flux", "schnell") else None
    folder = data[res or 16]
    setup = prepare(models[family], timestep_list=ts, vs=["64", "full"], resolution=res)
    assert collect(tmp_path / "p", setup, folder, limit=1).done == 1
    project = Project.open(tmp_path / "p")
    rows, rows64 = _rows(project, "full"), _rows(project, "64")
    meta = json.loads((folder / "metadata.jsonl").read_text().splitlines()[0])
    comp = Compressor(project.identity.n)
    for k, t in enumerate(ts):
        want = reference_gradient(models[family], folder / meta["file_name"], meta["text"], meta["label"], t, k)
        np.testing.assert_allclose(rows[k], want, rtol=1e-4, atol=1e-5)
        np.testing.assert_allclose(
            rows64[k], comp.compress(torch.from_numpy(rows[k]).double(), 64).numpy(), rtol=1e-5, atol=1e-6
        )
    assert verify(project.root, deep=True).healthy


@pytest.mark.slow
@pytest.mark.parametrize("family", ["sd15", "sdxl", "flux"])
def test_lora_rows_equal_an_independent_computation(
    family: str, models: dict[str, Path], data: dict[int, Path], tmp_path: Path
) -> None:
    """LoRA gradients on the real families against plain autograd through a PEFT adapter (not dmin's per-example
    hooks), with the adapter format each trainer writes: diffusers' (SD 1.5), DreamBooth's converted keys with
    alpha ≠ rank (SDXL), PEFT keys with `transformer.lora_alpha` (FLUX)."""
    lora = {"sd15": lambda: tiny.lora(models["sd15"], tmp_path / "lora"),
            "sdxl": lambda: sdxl_dreambooth_lora(models["sdxl"], tmp_path / "lora"),
            "flux": lambda: flux_lora(models["flux"], tmp_path / "lora")}[family]()
    ts = [70.0, 610.0]
    res = FLUX_RES if family == "flux" else None
    folder = data[res or 16]
    setup = prepare(models[family], lora=lora, timestep_list=ts, vs=["64", "full"], resolution=res)
    assert collect(tmp_path / "p", setup, folder, limit=1).done == 1
    rows = _rows(Project.open(tmp_path / "p"), "full")
    meta = json.loads((folder / "metadata.jsonl").read_text().splitlines()[0])
    for k, t in enumerate(ts):
        want = reference_gradient(
            models[family], folder / meta["file_name"], meta["text"], meta["label"], t, k, lora=lora
        )
        assert want.shape == rows[k].shape
        np.testing.assert_allclose(rows[k], want, rtol=1e-4, atol=1e-6)


def test_sdxl_records_the_micro_conditioning_it_used(models: dict[str, Path], tmp_path: Path) -> None:
    """add_time_ids come from each image's original size and crop, as SDXL's training scripts compute them."""
    folder = tmp_path / "wide"
    folder.mkdir()
    Image.new("RGB", (40, 20), "white").save(folder / "wide.png")  # 20 high, 40 wide: resized to 32×16, cropped
    (folder / "metadata.jsonl").write_text(json.dumps({"file_name": "wide.png", "text": "a photo"}) + "\n")
    setup = prepare(models["sdxl"], timesteps=1, vs=["64"])
    pixels = setup.family.pixels(Image.open(folder / "wide.png"))
    assert (pixels.original_size, pixels.crop_top_left) == ((20, 40), (0, 8))
    cond = setup.family.encode_condition("a photo", None, pixels)
    assert cond["time_ids"].tolist() == [[20.0, 40.0, 0.0, 8.0, 16.0, 16.0]]
    assert collect(tmp_path / "p", setup, folder).done == 1
    samples = Project.open(tmp_path / "p").read_table("samples")
    assert samples is not None and samples.column("sdxl_time_ids").to_pylist() == ["20,40,0,8,16,16"]


def test_same_weights_under_any_scheduler_give_identical_vectors(tmp_path: Path) -> None:
    """SD 1.5 ships PNDM and SDXL EulerDiscrete; the gradients must come from the training process whatever the
    saved scheduler — Euler's own add_noise is the VE form, a different input scale."""
    from diffusers import DDPMScheduler, EulerDiscreteScheduler

    cfg = {k: v for k, v in tiny.SD15_SCHEDULER.items() if k != "_class_name"}
    zero, one, t500 = torch.zeros(1), torch.ones(1), torch.tensor([500])
    euler, ddpm = EulerDiscreteScheduler.from_config(cfg), DDPMScheduler.from_config(cfg)
    assert abs(float(euler.add_noise(zero, one, t500)) - float(ddpm.add_noise(zero, one, t500))) > 0.5  # 1.62, 0.85

    data = tiny.digits_folder(tmp_path / "d", count=2)
    vectors, identities = {}, set()
    for cls in ("PNDMScheduler", "DDIMScheduler", "EulerDiscreteScheduler", "DDPMScheduler"):
        model = tiny.sd15(tmp_path / cls, {**tiny.SD15_SCHEDULER, "_class_name": cls})
        assert json.loads((model / "scheduler" / "scheduler_config.json").read_text())["_class_name"] == cls
        setup = prepare(model, timestep_list=[100.0, 700.0], vs=["full"])
        assert collect(tmp_path / f"p-{cls}", setup, data).done == 2
        vectors[cls] = _rows(Project.open(tmp_path / f"p-{cls}"), "full")
        identities.add(setup.identity.hash())
    assert len(identities) == 1  # the scheduler is not part of what the gradients mean
    want = vectors["DDPMScheduler"]
    for cls, got in vectors.items():
        assert np.linalg.norm(got - want) <= 1e-6 * np.linalg.norm(want), cls


# ---- LoRA files as diffusers' training scripts write them ---------------------------------------------------------


def _randomize_lora_b(module: torch.nn.Module) -> None:
    torch.manual_seed(3)
    for name, p in module.named_parameters():
        if "lora_B" in name:
            torch.nn.init.normal_(p, std=0.05)


def _scalings(module: torch.nn.Module) -> set[float]:
    return {float(m.scaling["dmin"]) for m in module.modules() if hasattr(m, "scaling") and "dmin" in m.scaling}


def sdxl_dreambooth_lora(model: Path, out: Path) -> Path:
    """What train_dreambooth_lora_sdxl.py writes: unet and text-encoder LoRA converted by
    convert_state_dict_to_diffusers (`lora.down` / `lora.up` keys) with per-component alpha metadata, alpha ≠ rank."""
    from diffusers import StableDiffusionXLPipeline
    from diffusers.utils import convert_state_dict_to_diffusers
    from peft import LoraConfig
    from peft.utils import get_peft_model_state_dict

    pipe = _pipe(model)
    unet_cfg = LoraConfig(r=4, lora_alpha=8, target_modules=["to_k", "to_q", "to_v", "to_out.0"])
    te_cfg = LoraConfig(r=2, lora_alpha=2, target_modules=["q_proj", "k_proj", "v_proj", "out_proj"])
    pipe.unet.add_adapter(unet_cfg)
    pipe.text_encoder.add_adapter(te_cfg)
    _randomize_lora_b(pipe.unet)
    unet_layers = convert_state_dict_to_diffusers(get_peft_model_state_dict(pipe.unet))
    assert any(".lora.down." in k for k in unet_layers)  # the older key format
    StableDiffusionXLPipeline.save_lora_weights(
        out,
        unet_lora_layers=unet_layers,
        text_encoder_lora_layers=convert_state_dict_to_diffusers(get_peft_model_state_dict(pipe.text_encoder)),
        unet_lora_adapter_metadata=unet_cfg.to_dict(),
        text_encoder_lora_adapter_metadata=te_cfg.to_dict(),
    )
    return out


def flux_lora(model: Path, out: Path, alpha: int = 6) -> Path:
    """What train_dreambooth_lora_flux.py writes: transformer LoRA, PEFT keys, `transformer.lora_alpha` metadata."""
    from diffusers import FluxPipeline
    from peft import LoraConfig
    from peft.utils import get_peft_model_state_dict

    pipe = _pipe(model)
    cfg = LoraConfig(r=2, lora_alpha=alpha, target_modules=["to_k", "to_q", "to_v", "to_out.0"])
    pipe.transformer.add_adapter(cfg)
    _randomize_lora_b(pipe.transformer)
    FluxPipeline.save_lora_weights(
        out, transformer_lora_layers=get_peft_model_state_dict(pipe.transformer),
        transformer_lora_adapter_metadata=cfg.to_dict(),
    )
    return out


def test_sdxl_dreambooth_lora_loads_with_its_alpha_and_text_encoder_note(
    models: dict[str, Path], data: dict[int, Path], tmp_path: Path
) -> None:
    lora = sdxl_dreambooth_lora(models["sdxl"], tmp_path / "lora")
    setup = prepare(models["sdxl"], lora=lora, timesteps=2, vs=["64"])
    assert _scalings(setup.family.denoiser) == {2.0}  # lora_alpha 8 / r 4, from `unet.lora_alpha`
    assert _scalings(setup.family.pipe.text_encoder) == {1.0}  # applied to prompt encoding
    assert any("text_encoder" in note for note in setup.notes)
    names = [n for n, _ in setup.params]
    assert names and all("lora_" in n for n in names)
    assert not any(p.requires_grad for p in setup.family.pipe.text_encoder.parameters())
    assert collect(tmp_path / "p", setup, data[16], limit=2).done == 2


def test_flux_lora_params_glob_and_generation(models: dict[str, Path], data: dict[int, Path], tmp_path: Path) -> None:
    lora = flux_lora(models["flux"], tmp_path / "lora")
    setup = prepare(models["flux"], lora=lora, params="*to_q*", timesteps=2, vs=["64"], resolution=FLUX_RES)
    assert _scalings(setup.family.denoiser) == {3.0}  # 6 / 2
    names = [n for n, _ in setup.params]
    assert names and all("lora_" in n and "to_q" in n for n in names)
    assert collect(tmp_path / "p", setup, data[FLUX_RES], limit=1).done == 1
    image = setup.family.generate("a digit one", None, seed=1, steps=2)
    assert image.size == (FLUX_RES, FLUX_RES)


def test_lora_for_another_model_is_refused_in_one_line(
    models: dict[str, Path], data: dict[int, Path], tmp_path: Path
) -> None:
    lora = flux_lora(models["flux"], tmp_path / "flux-lora")
    r = subprocess.run(
        [*DMIN, "collect", str(tmp_path / "p"), "--model", str(models["sdxl"]), "--lora", str(lora), "--data",
         str(data[16])],
        capture_output=True, text=True,
    )
    assert r.returncode == 1, r.stderr
    assert "another model" in r.stderr and "unexpected" not in r.stderr
    assert len(r.stderr.strip().splitlines()) == 1
    assert not (tmp_path / "p").exists()


def test_ddpm_lora_reads_per_component_alpha(models: dict[str, Path], tmp_path: Path) -> None:
    """No diffusers LoRA loader for DDPMPipeline: dmin reads `unet.lora_alpha` as diffusers writes it."""
    from diffusers import UNet2DModel
    from peft import LoraConfig, get_peft_model_state_dict, inject_adapter_in_model
    from safetensors.torch import save_file

    unet = UNet2DModel.from_pretrained(str(models["ddpm"] / "unet"))
    inject_adapter_in_model(LoraConfig(r=2, lora_alpha=5, target_modules=["conv1", "conv2"]), unet)
    state = {f"unet.{k}": v.contiguous() for k, v in get_peft_model_state_dict(unet).items()}
    (tmp_path / "lora").mkdir()
    meta = {"lora_adapter_metadata": json.dumps({"unet.r": 2, "unet.lora_alpha": 5})}
    save_file(state, str(tmp_path / "lora" / "pytorch_lora_weights.safetensors"), metadata=meta)
    setup = prepare(models["ddpm"], lora=tmp_path / "lora", timesteps=1, vs=["64"])
    assert _scalings(setup.family.denoiser) == {2.5}


def test_peft_adapter_directory(models: dict[str, Path], data: dict[int, Path], tmp_path: Path) -> None:
    from peft import LoraConfig, get_peft_model

    pipe = _pipe(models["sd15"])
    peft_model = get_peft_model(pipe.unet, LoraConfig(r=2, lora_alpha=3, target_modules=["to_q", "to_v"]))
    _randomize_lora_b(peft_model)
    peft_model.save_pretrained(str(tmp_path / "adapter"))
    assert (tmp_path / "adapter" / "adapter_config.json").is_file()
    setup = prepare(models["sd15"], lora=tmp_path / "adapter", timesteps=1, vs=["64"])
    assert _scalings(setup.family.denoiser) == {1.5}
    assert collect(tmp_path / "p", setup, data[16], limit=1).done == 1


# ---- generation, dtypes, devices ----------------------------------------------------------------------------------


@pytest.mark.parametrize("family", ["sdxl", "sd3", "dit", "ddpm"])
def test_generation_is_quiet_and_reports_steps(
    family: str, models: dict[str, Path], capfd: pytest.CaptureFixture[str]
) -> None:
    setup = prepare(models[family], timesteps=1, vs=["64"])
    capfd.readouterr()
    steps: list[tuple[int, int]] = []
    label = 3 if family in ("dit", "ddpm") else None
    image = setup.family.generate("a digit one", label, seed=0, steps=3, on_step=lambda d, t: steps.append((d, t)))
    assert image.size == (setup.family.resolution,) * 2
    assert steps[-1][0] == steps[-1][1] and len(steps) >= 3
    out, err = capfd.readouterr()
    assert out == "" and err == ""


def test_sd3_vae_without_shift_factor_generates(tmp_path: Path) -> None:
    """A VAE config without shift_factor means a shift of 0 (the SD3 pipeline adds it unguarded)."""
    model = tiny.sd3(tmp_path / "sd3")
    cfg_path = model / "vae" / "config.json"
    cfg = json.loads(cfg_path.read_text())
    cfg["shift_factor"] = None
    cfg_path.write_text(json.dumps(cfg))
    setup = prepare(model, timesteps=1, vs=["64"])
    assert setup.family.generate("a digit two", None, seed=0, steps=2).size == (16, 16)


def test_compute_dtype_is_part_of_the_identity(models: dict[str, Path], data: dict[int, Path], tmp_path: Path) -> None:
    from dmin.errors import IdentityMismatch
    from dmin.query import open_for_query

    setup = prepare(models["ddpm"], timesteps=1, vs=["64"], dtype="bf16")
    assert setup.identity.compute_dtype == "bfloat16"
    assert collect(tmp_path / "p", setup, data[16], limit=1).done == 1
    _, again = open_for_query(tmp_path / "p")  # the project's dtype by default
    assert again.identity.compute_dtype == "bfloat16"
    with pytest.raises(IdentityMismatch, match="compute_dtype") as err:
        open_for_query(tmp_path / "p", dtype="float32")
    assert "pass --dtype bfloat16" in str(err.value)  # the hint names the option that succeeds
    with pytest.raises(IdentityMismatch, match="--noise-seed 0"):
        collect(tmp_path / "p", prepare(models["ddpm"], timesteps=1, vs=["64"], dtype="bf16", noise_seed=4), data[16])


def test_torchrun_rank_takes_its_local_gpu() -> None:
    from dmin.errors import UsageError
    from dmin.gradients import choose_device

    assert choose_device("cuda", {"LOCAL_RANK": "3", "RANK": "11"}) == torch.device("cuda:3")
    assert choose_device("cuda:1", {"LOCAL_RANK": "3"}) == torch.device("cuda:1")  # an explicit index wins
    assert choose_device("cuda", {}) == torch.device("cuda")
    assert choose_device("cpu", {"LOCAL_RANK": "3"}) == torch.device("cpu")
    with pytest.raises(UsageError, match="choose auto, cpu, cuda"):
        choose_device("gpu", {})


def test_unknown_pipeline_class_is_one_clear_error(tmp_path: Path) -> None:
    (tmp_path / "m").mkdir()
    (tmp_path / "m" / "model_index.json").write_text(json.dumps({"_class_name": "KandinskyPipeline"}))
    with pytest.raises(ModelLoadError, match=r"not supported .*FluxPipeline"):
        prepare(tmp_path / "m")


# ---- hub ids --------------------------------------------------------------------------------------------------------


def test_hub_ids_resolve_from_the_local_cache_offline(
    models: dict[str, Path], data: dict[int, Path], tmp_path: Path
) -> None:
    cache = tmp_path / "hub"
    commit = tiny.hub_cache(cache, "acme/tiny-sd15", models["sd15"])
    tiny.hub_cache(cache, "acme/tiny-lora", sdxl_dreambooth_lora(models["sdxl"], tmp_path / "lora"))
    env = {**os.environ, "HF_HUB_CACHE": str(cache), "HF_HUB_OFFLINE": "1", "DMIN_CACHE_DIR": str(tmp_path / "c")}

    def run(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([*DMIN, *args], capture_output=True, text=True, env=env)

    base = ["--data", str(data[16]), "--timesteps", "1", "--v", "64", "--json"]
    r = run("collect", str(tmp_path / "p"), "--model", "acme/tiny-sd15", *base)
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout)["done"] == 3 and r.stderr == ""
    assert Project.open(tmp_path / "p").identity.model_path == "acme/tiny-sd15"
    r = run("collect", str(tmp_path / "p"), "--model", f"acme/tiny-sd15@{commit}", *base)
    assert r.returncode == 0 and json.loads(r.stdout)["skipped"] == 3  # same model, pinned to its commit
    image = data[16] / "0000.png"
    r = run("query", str(tmp_path / "p"), "--image", str(image), "--prompt", "a digit zero", "--exact", "--json")
    assert r.returncode == 0, r.stderr
    assert len(json.loads(r.stdout)["results"]) == 3
    r = run("collect", str(tmp_path / "q"), "--model", "acme/absent", *base)
    assert r.returncode == 1 and len(r.stderr.strip().splitlines()) == 1
    assert "local Hugging Face cache" in r.stderr and "HF_HUB_OFFLINE=1" in r.stderr
    assert "acme/absent" in r.stderr and not (tmp_path / "q").exists()
    r = run("collect", str(tmp_path / "q"), "--model", str(models["sdxl"]), "--lora", "acme/absent-lora", *base)
    assert r.returncode == 1 and "acme/absent-lora" in r.stderr and not (tmp_path / "q").exists()
    lora = run("collect", str(tmp_path / "r"), "--model", str(models["sdxl"]), "--lora", "acme/tiny-lora", *base)
    assert lora.returncode == 0, lora.stderr
    assert Project.open(tmp_path / "r").identity.lora_path == "acme/tiny-lora"


@pytest.mark.slow
@pytest.mark.parametrize("family", ["ddpm", "sd15", "sd21", "sdxl", "sdxl+lora", "sd3", "flux", "dit"])
def test_half_precision_projects_generate_and_attribute(
    family: str, models: dict[str, Path], data: dict[int, Path], tmp_path: Path
) -> None:
    """The README's GPU recipe on every family: collect in bf16 (and fp16), then `query --seed` generates in the
    project's compute dtype — frozen weights in half precision, selected ones and the VAE in float32."""
    from dmin.query import QuerySpec, open_for_query, run_query

    name, _, adapter = family.partition("+")
    lora = tiny.lora(models[name], tmp_path / "lora") if adapter else None
    res = FLUX_RES if name == "flux" else None
    label = 1 if name in ("ddpm", "dit") else None
    for dtype in ("bf16", "fp16"):
        setup = prepare(models[name], lora=lora, timesteps=1, vs=["64"], dtype=dtype, resolution=res)
        project_dir = tmp_path / dtype
        assert collect(project_dir, setup, data[res or 16], limit=1).done == 1
        project, qsetup = open_for_query(project_dir)
        qsetup.family.default_steps = 2
        spec = QuerySpec(prompt=None if label is not None else "a digit", label=label, seed=3)
        result = run_query(project, qsetup, spec, k=1)
        assert result.image_path is not None and Path(result.image_path).is_file()
        assert len(result.results) == 1 and np.isfinite(result.results[0]["score"])
