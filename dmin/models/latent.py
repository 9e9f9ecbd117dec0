"""Families that denoise VAE latents (x0 = (VAE mode − shift) × scaling), and DiTPipeline."""

from __future__ import annotations

from typing import Any

import torch
from PIL import Image

from dmin.models.base import Condition, Family, Pixels


def vae_scale(vae: Any) -> int:
    """Pixels per latent cell: 2^(number of VAE down blocks − 1)."""
    return int(2 ** (len(vae.config.block_out_channels) - 1))


class LatentFamily(Family):
    """x0 = (vae.encode(pixels).latent_dist.mode() − shift_factor) × scaling_factor, a missing shift being 0."""

    @property
    def config(self) -> Any:
        return self.denoiser.config

    @property
    def latent_channels(self) -> int:
        return int(self.pipe.vae.config.latent_channels)

    def native_resolution(self) -> int:
        return int(self.config.sample_size) * vae_scale(self.pipe.vae)

    def resolution_step(self) -> int:
        return vae_scale(self.pipe.vae) * super().resolution_step()

    def latent_shape(self) -> tuple[int, ...]:
        s = self.resolution // vae_scale(self.pipe.vae)
        return (self.latent_channels, s, s)

    def encode_image(self, pixels: Pixels) -> torch.Tensor:
        vae = self.pipe.vae
        with torch.no_grad():
            latent = vae.encode(pixels.tensor.to(self.device, vae.dtype)).latent_dist.mode()
        shift = getattr(vae.config, "shift_factor", None) or 0.0
        return ((latent.float() - shift) * vae.config.scaling_factor).float()


class DiTFamily(LatentFamily):
    """DiTPipeline: class-conditional DiTTransformer2DModel; the learned-sigma half of its output is split off."""

    name = "dit"
    default_steps = 25

    def _denoiser(self) -> torch.nn.Module:
        return self.pipe.transformer

    @property
    def num_classes(self) -> int | None:
        return int(self.config.num_embeds_ada_norm)

    @property
    def latent_channels(self) -> int:
        return int(self.config.in_channels)

    def predict(self, x_t: torch.Tensor, t: torch.Tensor, cond: Condition) -> torch.Tensor:
        out = self.pipe.transformer(x_t, timestep=t.long(), class_labels=cond["class_labels"]).sample
        return out[:, : x_t.shape[1]]

    def _generate(self, caption: str | None, label: int | None, gen: torch.Generator, steps: int) -> Image.Image:
        return self.pipe(
            class_labels=[int(label or 0)], generator=gen, num_inference_steps=steps, guidance_scale=1.0,
            output_type="pil",
        ).images[0]
