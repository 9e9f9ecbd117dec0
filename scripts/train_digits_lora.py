#!/usr/bin/env python
"""Train the bundled LoRA: the digits DDPM fine-tuned on a mixed set of 300 digits as drawn and 300 inverted ones
(white background — a style the base model never saw), saved in diffusers' LoRA format
(`pytorch_lora_weights.safetensors`, keys `unet.<module>.lora_A/B.weight`, rank and alpha in the metadata).

The paper's setting in miniature: a LoRA on a mixed dataset, where attribution should trace an inverted generated
digit to the inverted subset. Reproducible (fixed seeds); a few minutes on a 2-core CPU.
    python scripts/train_digits_lora.py --out dmin/assets/digits-lora
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch
from diffusers import DDPMPipeline, DDPMScheduler, UNet2DModel
from peft import LoraConfig, get_peft_model_state_dict, inject_adapter_in_model
from safetensors.torch import save_file
from train_digits import train  # the script's own folder is on sys.path

from dmin.demo import LORA, MODEL, digit_pixels, lora_samples

TARGETS = ["conv_in", "conv1", "conv2", "conv_out", "time_emb_proj"]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", default=str(LORA))
    ap.add_argument("--steps", type=int, default=600)
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--rank", type=int, default=8)
    args = ap.parse_args()
    unet, sched, params = new_lora(args.rank)
    samples = lora_samples()
    x = torch.stack([torch.from_numpy(digit_pixels(i, sub == "inverted")).float() / 127.5 - 1 for i, _, sub in samples])
    x = x.unsqueeze(1)
    y = torch.tensor([label for _, label, _ in samples])
    start = time.time()
    train(unet, sched, params, x, y, args.steps, args.batch, max_lr=3e-3)
    n = save_lora(unet, Path(args.out), args.rank)
    print(f"saved {args.out} ({n} parameters, {time.time() - start:.0f}s)")


def new_lora(rank: int = 8) -> tuple[UNet2DModel, DDPMScheduler, list[torch.nn.Parameter]]:
    """The bundled base UNet, frozen, with a fresh LoRA (seed 0) on TARGETS; returns the adapter's parameters."""
    torch.manual_seed(0)
    pipe = DDPMPipeline.from_pretrained(MODEL, use_safetensors=True)
    unet, sched = pipe.unet, pipe.scheduler
    unet.requires_grad_(False)
    config = LoraConfig(r=rank, lora_alpha=rank, target_modules=TARGETS, init_lora_weights=True)
    inject_adapter_in_model(config, unet, adapter_name="default")
    params = [p for n, p in unet.named_parameters() if "lora_" in n]
    for p in params:
        p.requires_grad_(True)
    return unet, sched, params


def lora_state(unet: UNet2DModel) -> dict[str, torch.Tensor]:
    """The adapter's tensors under diffusers' key names (`unet.<module>.lora_A/B.weight`)."""
    return {f"unet.{k}": v.contiguous() for k, v in get_peft_model_state_dict(unet, adapter_name="default").items()}


def save_lora(unet: UNet2DModel, out: Path, rank: int = 8) -> int:
    """Write the adapter as pytorch_lora_weights.safetensors with its rank and alpha; returns its parameter count."""
    state = lora_state(unet)
    out.mkdir(parents=True, exist_ok=True)
    meta = {"lora_adapter_metadata": json.dumps({"r": rank, "lora_alpha": rank, "target_modules": TARGETS})}
    save_file(state, str(out / "pytorch_lora_weights.safetensors"), metadata=meta)
    return sum(v.numel() for v in state.values())


if __name__ == "__main__":
    main()
