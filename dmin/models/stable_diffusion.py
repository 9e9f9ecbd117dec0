"""Stable Diffusion 1.x/2.x and SDXL: UNet2DConditionModel over VAE latents, CLIP text encoders."""

from __future__ import annotations

import torch
from PIL import Image

from dmin.models.base import Condition, Pixels
from dmin.models.latent import LatentFamily


class SDFamily(LatentFamily):
    """StableDiffusionPipeline: one CLIP text encoder; epsilon or v_prediction."""

    name = "sd"
    needs_text = True

    def _denoiser(self) -> torch.nn.Module:
        return self.pipe.unet

    @torch.no_grad()
    def encode_condition(self, caption: str | None, label: int | None, pixels: Pixels | None = None) -> Condition:
        tok = self.pipe.tokenizer(
            caption or "",
            padding="max_length",
            max_length=self.pipe.tokenizer.model_max_length,
            truncation=True,
            return_tensors="pt",
        )
        emb = self.pipe.text_encoder(tok.input_ids.to(self.device))[0]
        return Condition({"encoder_hidden_states": emb})

    def predict(self, x_t: torch.Tensor, t: torch.Tensor, cond: Condition) -> torch.Tensor:
        return self.pipe.unet(x_t, t.long(), encoder_hidden_states=cond["encoder_hidden_states"]).sample

    def _generate(self, caption: str | None, label: int | None, gen: torch.Generator, steps: int) -> Image.Image:
        size = self.resolution
        return self.pipe(
            prompt=caption or "", generator=gen, num_inference_steps=steps, height=size, width=size
        ).images[0]


class SDXLFamily(SDFamily):
    """StableDiffusionXLPipeline: two text encoders (penultimate hidden states concatenated, pooled embedding of the
    second) and micro-conditioning `add_time_ids` = original size + crop top-left + target size, taken from what
    the image rule did to each image (as diffusers' SDXL training scripts do) and recorded per sample."""

    name = "sdxl"

    @torch.no_grad()
    def encode_condition(self, caption: str | None, label: int | None, pixels: Pixels | None = None) -> Condition:
        emb, _, pooled, _ = self.pipe.encode_prompt(
            prompt=caption or "", device=self.device, num_images_per_prompt=1, do_classifier_free_guidance=False
        )
        size = self.resolution
        original, crop = (pixels.original_size, pixels.crop_top_left) if pixels else ((size, size), (0, 0))
        time_ids = torch.tensor([[*original, *crop, size, size]], dtype=emb.dtype, device=self.device)
        return Condition({"encoder_hidden_states": emb, "text_embeds": pooled, "time_ids": time_ids})

    def record(self, pixels: Pixels) -> dict[str, str]:
        h, w = pixels.original_size
        top, left = pixels.crop_top_left
        return {"sdxl_time_ids": f"{h},{w},{top},{left},{self.resolution},{self.resolution}"}

    def predict(self, x_t: torch.Tensor, t: torch.Tensor, cond: Condition) -> torch.Tensor:
        return self.pipe.unet(
            x_t,
            t.long(),
            encoder_hidden_states=cond["encoder_hidden_states"],
            added_cond_kwargs={"text_embeds": cond["text_embeds"], "time_ids": cond["time_ids"]},
        ).sample
