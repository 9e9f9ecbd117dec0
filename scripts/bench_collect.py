#!/usr/bin/env python
"""Collection overhead against a bare forward + backward of the same model on the same inputs (JSON last).

Builds a Stable Diffusion pipeline from configs (random weights) — by default with a ~50M-parameter UNet — saves
it, and runs in separate processes (so each peak RSS is its own):
  collect  the real path: prepare + collect of one sample at K timesteps, storage included
  bare     forward + loss.backward with no hooks, same inputs, K times
Reports collect_s_per_step, bare_s_per_step, overhead_ratio, peak_rss_mb (collect), bare_peak_rss_mb, model_mb,
grad_mb (one full gradient), and on CUDA peak_gpu_mb. Presets: small (~50M UNet), sd15 (SD-1.5 UNet),
sd3m (SD3-medium transformer); use --device cuda --dtype bfloat16 for the GPU ones.
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

PRESETS = {
    "small": {
        "family": "sd",
        "unet": {
            "block_out_channels": (96, 192, 384, 384),
            "cross_attention_dim": 512,
            "sample_size": 32,
            "attention_head_dim": 8,
            "layers_per_block": 2,
        },
    },
    "sd15": {
        "family": "sd",
        "unet": {
            "block_out_channels": (320, 640, 1280, 1280),
            "cross_attention_dim": 768,
            "sample_size": 64,
            "attention_head_dim": 8,
            "layers_per_block": 2,
        },
    },
    "sd3m": {
        "family": "sd3",
        "transformer": {
            "sample_size": 64,
            "patch_size": 2,
            "in_channels": 16,
            "num_layers": 24,
            "attention_head_dim": 64,
            "num_attention_heads": 24,
            "joint_attention_dim": 4096,
            "caption_projection_dim": 1536,
            "pooled_projection_dim": 2048,
            "out_channels": 16,
            "pos_embed_max_size": 192,
        },
    },
}


def build(preset: str, out: Path) -> None:
    from diffusers import (
        AutoencoderKL,
        DDPMScheduler,
        FlowMatchEulerDiscreteScheduler,
        SD3Transformer2DModel,
        StableDiffusion3Pipeline,
        StableDiffusionPipeline,
        UNet2DConditionModel,
    )
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection, CLIPTokenizer

    torch.manual_seed(0)
    cfg = PRESETS[preset]
    vocab = {"<|startoftext|>": 0, "<|endoftext|>": 1, "a</w>": 2, "photo</w>": 3}
    (out / "tok").mkdir(parents=True, exist_ok=True)
    (out / "tok" / "vocab.json").write_text(json.dumps(vocab))
    (out / "tok" / "merges.txt").write_text("#version: 0.2\n")
    tok = CLIPTokenizer(str(out / "tok" / "vocab.json"), str(out / "tok" / "merges.txt"), model_max_length=77)
    latent_ch = 16 if cfg["family"] == "sd3" else 4
    vae = AutoencoderKL(
        in_channels=3,
        out_channels=3,
        latent_channels=latent_ch,
        block_out_channels=(32, 32, 32, 32),
        down_block_types=("DownEncoderBlock2D",) * 4,
        up_block_types=("UpDecoderBlock2D",) * 4,
        norm_num_groups=8,
        layers_per_block=1,
    )
    if cfg["family"] == "sd":
        u = cfg["unet"]
        text = CLIPTextModel(
            CLIPTextConfig(
                vocab_size=8,
                hidden_size=u["cross_attention_dim"],
                intermediate_size=64,
                num_hidden_layers=1,
                num_attention_heads=8,
                bos_token_id=0,
                eos_token_id=1,
                pad_token_id=1,
            )
        )
        unet = UNet2DConditionModel(in_channels=4, out_channels=4, **u)
        if preset != "small":
            unet = unet.to(torch.bfloat16)  # halves the bytes saved and loaded for the GPU presets
        StableDiffusionPipeline(
            vae=vae,
            text_encoder=text,
            tokenizer=tok,
            unet=unet,
            scheduler=DDPMScheduler(),
            safety_checker=None,
            feature_extractor=None,
            requires_safety_checker=False,
        ).save_pretrained(out / "model")
    else:
        t = cfg["transformer"]

        def clip(hidden: int) -> CLIPTextModelWithProjection:
            return CLIPTextModelWithProjection(
                CLIPTextConfig(
                    vocab_size=8,
                    hidden_size=hidden,
                    projection_dim=hidden,
                    intermediate_size=64,
                    num_hidden_layers=1,
                    num_attention_heads=8,
                    bos_token_id=0,
                    eos_token_id=1,
                    pad_token_id=1,
                )
            )

        StableDiffusion3Pipeline(
            transformer=SD3Transformer2DModel(**t).to(torch.bfloat16),
            scheduler=FlowMatchEulerDiscreteScheduler(),
            vae=vae,
            text_encoder=clip(768),
            tokenizer=tok,
            text_encoder_2=clip(1280),
            tokenizer_2=tok,
            text_encoder_3=None,
            tokenizer_3=None,
        ).save_pretrained(out / "model")
    size = 8 * (cfg.get("unet") or cfg["transformer"])["sample_size"]
    data = out / "data"
    data.mkdir(exist_ok=True)
    rng = np.random.default_rng(0)
    Image.fromarray((rng.random((size, size, 3)) * 255).astype(np.uint8)).save(data / "0.png")
    (data / "metadata.jsonl").write_text(json.dumps({"file_name": "0.png", "text": "a photo"}) + "\n")


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def child(mode: str, root: Path, K: int, device: str, dtype: str, v: int) -> dict[str, float]:
    from dmin.collect import collect, fixed_noise, prepare

    setup = prepare(root / "model", timesteps=K, vs=[str(v)], device=device, dtype=dtype)
    n = setup.identity.n
    cuda = setup.device.type == "cuda"
    if cuda:
        torch.cuda.reset_peak_memory_stats()
    if mode == "collect":
        collect(root / "proj-warm", setup, root / "data")  # warm-up (JIT, allocator)
        if cuda:
            torch.cuda.synchronize()
        t = time.perf_counter()
        collect(root / "proj", setup, root / "data")
        if cuda:
            torch.cuda.synchronize()
        seconds = time.perf_counter() - t
    else:
        from dmin.data import load_dataset

        rec = load_dataset(root / "data").records[0]
        fam = setup.family
        pixels = fam.pixels(rec.image())
        x0 = fam.encode_image(pixels)
        cond = fam.encode_condition(rec.caption, rec.label, pixels)
        ctx = torch.autocast(setup.device.type, dtype=setup.autocast) if setup.autocast else None

        def step(k: int, t_: float) -> None:
            ts = torch.tensor([t_], device=setup.device)
            x_t, target = fam.noisy_and_target(x0, fixed_noise(setup.identity.latent_shape, 0, k).to(setup.device), ts)
            if ctx is not None:
                with ctx:
                    pred = fam.predict(x_t, ts, cond)
            else:
                pred = fam.predict(x_t, ts, cond)
            torch.nn.functional.mse_loss(pred.float(), target.float()).backward()
            for _, p in setup.params:
                p.grad = None

        step(0, setup.identity.timesteps[0])
        if cuda:
            torch.cuda.synchronize()
        t = time.perf_counter()
        for k, t_ in enumerate(setup.identity.timesteps):
            step(k, t_)
        if cuda:
            torch.cuda.synchronize()
        seconds = time.perf_counter() - t
    out = {"s_per_step": seconds / K, "peak_rss_mb": peak_rss_mb(), "n": n}
    if cuda:
        out["peak_gpu_mb"] = torch.cuda.max_memory_allocated() / 2**20
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--preset", default="small", choices=sorted(PRESETS))
    ap.add_argument("--timesteps", type=int, default=4)
    ap.add_argument("--v", type=int, default=4096)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--dtype", default="float32")
    ap.add_argument("--json", action="store_true")
    ap.add_argument("--child", choices=["collect", "bare"], help=argparse.SUPPRESS)
    ap.add_argument("--root", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        print(json.dumps(child(args.child, Path(args.root), args.timesteps, args.device, args.dtype, args.v)))
        return
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        build(args.preset, root)
        runs = {}
        for mode in ("bare", "collect"):
            cmd = [
                sys.executable,
                __file__,
                "--child",
                mode,
                "--root",
                str(root),
                "--timesteps",
                str(args.timesteps),
                "--device",
                args.device,
                "--dtype",
                args.dtype,
                "--v",
                str(args.v),
            ]
            res = subprocess.run(cmd, capture_output=True, text=True, check=True)
            runs[mode] = json.loads(res.stdout.strip().splitlines()[-1])
    n = runs["collect"]["n"]
    bytes_per = 2 if args.dtype != "float32" and args.device == "cuda" else 4
    result = {
        "preset": args.preset,
        "device": args.device,
        "dtype": args.dtype,
        "n_params": n,
        "K": args.timesteps,
        "v": args.v,
        "collect_s_per_step": runs["collect"]["s_per_step"],
        "bare_s_per_step": runs["bare"]["s_per_step"],
        "overhead_ratio": runs["collect"]["s_per_step"] / runs["bare"]["s_per_step"],
        "compression_share": 1 - runs["bare"]["s_per_step"] / runs["collect"]["s_per_step"],
        "peak_rss_mb": runs["collect"]["peak_rss_mb"],
        "bare_peak_rss_mb": runs["bare"]["peak_rss_mb"],
        "model_mb": n * bytes_per / 2**20,
        "grad_mb": n * 4 / 2**20,
    }
    for key in ("peak_gpu_mb",):
        if key in runs["collect"]:
            result[key] = runs["collect"][key]
            result[f"bare_{key}"] = runs["bare"][key]
    if not args.json:
        for k, val in result.items():
            print(f"{k:>22}: {val:.4g}" if isinstance(val, float) else f"{k:>22}: {val}")
    print(json.dumps(result))


if __name__ == "__main__":
    main()
