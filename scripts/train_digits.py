#!/usr/bin/env python
"""Train the bundled demo model: a small class-conditional DDPM (UNet2DModel, num_class_embeds=10) on
scikit-learn's digits (8x8, upscaled to 16x16), saved as a diffusers pipeline directory in safetensors.

Reproducible: fixed seeds, deterministic data order; a few minutes on a 2-core CPU.
    python scripts/train_digits.py --out dmin/assets/digits-ddpm
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import torch
from diffusers import DDPMPipeline, DDPMScheduler, UNet2DModel
from sklearn.datasets import load_digits


def digits_tensor() -> tuple[torch.Tensor, torch.Tensor]:
    d = load_digits()
    x = torch.tensor(d.images, dtype=torch.float32) / 16.0  # (N, 8, 8) in [0, 1]
    x = x.repeat_interleave(2, 1).repeat_interleave(2, 2)  # 16x16, nearest
    return (x * 2 - 1).unsqueeze(1), torch.tensor(d.target, dtype=torch.long)


def train(
    unet: UNet2DModel,
    sched: DDPMScheduler,
    params: list[torch.nn.Parameter],
    x: torch.Tensor,
    y: torch.Tensor,
    steps: int,
    batch: int,
    max_lr: float,
    removed: torch.Tensor | None = None,
    log: bool = True,
) -> None:
    """The epsilon-prediction loss on random batches, AdamW with a one-cycle schedule; fixed seeds, so a rerun
    reproduces the weights (scripts/train_digits_lora.py trains its adapter with the same loop).

    `removed` (a bool mask over x) retrains without those samples for the counterfactual test
    (scripts/eval_counterfactual.py): every batch, noise and timestep is drawn exactly as over the full set and the
    removed items are then skipped, so a retrain differs from the original only by what was removed (re-indexing
    the shrunken set would change every later draw)."""
    opt = torch.optim.AdamW(params, lr=max_lr)
    lr = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=max_lr, total_steps=steps, pct_start=0.1)
    gen = torch.Generator().manual_seed(0)
    start = time.time()
    for step in range(steps):
        idx = torch.randint(0, len(x), (batch,), generator=gen)
        noise = torch.randn((batch, *x.shape[1:]), generator=gen)
        t = torch.randint(0, sched.config.num_train_timesteps, (batch,), generator=gen)
        if removed is not None:
            keep = ~removed[idx]
            if not keep.any():
                lr.step()  # the schedule stays aligned with the original run's
                continue
            idx, noise, t = idx[keep], noise[keep], t[keep]
        x0, labels = x[idx], y[idx]
        pred = unet(sched.add_noise(x0, noise, t), t, class_labels=labels).sample
        loss = torch.nn.functional.mse_loss(pred, noise)
        opt.zero_grad()
        loss.backward()
        opt.step()
        lr.step()
        if log and step % 100 == 0:
            print(f"step {step} loss {loss.item():.4f} {time.time() - start:.0f}s", flush=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--out", default="dmin/assets/digits-ddpm")
    ap.add_argument("--steps", type=int, default=1000)
    ap.add_argument("--batch", type=int, default=64)
    args = ap.parse_args()
    x, y = digits_tensor()
    unet, sched = new_model()
    start = time.time()
    train(unet, sched, list(unet.parameters()), x, y, args.steps, args.batch, max_lr=2e-3)
    DDPMPipeline(unet=unet, scheduler=sched).save_pretrained(args.out, safe_serialization=True)
    print(f"saved {args.out} ({sum(p.numel() for p in unet.parameters())} parameters, {time.time() - start:.0f}s)")


def new_model() -> tuple[UNet2DModel, DDPMScheduler]:
    """The demo's UNet, initialised from seed 0, and its training schedule."""
    torch.manual_seed(0)
    unet = UNet2DModel(
        sample_size=16,
        in_channels=1,
        out_channels=1,
        layers_per_block=1,
        block_out_channels=(32, 64),
        down_block_types=("DownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "UpBlock2D"),
        norm_num_groups=8,
        num_class_embeds=10,
    )
    return unet, DDPMScheduler(num_train_timesteps=200, beta_schedule="squaredcos_cap_v2")


if __name__ == "__main__":
    np.random.seed(0)
    main()
