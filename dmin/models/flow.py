"""Flow-matching transformers: Stable Diffusion 3 / 3.5 and FLUX.1 (target ε − x0, σ = t / T).

SD 3.5 loads as SD3: qk-norm and 3.5-medium's dual-attention blocks come from the transformer's config.
"""

from __future__ import annotations

import torch
from PIL import Image

from dmin.models.base import Condition, Pixels
from dmin.models.latent import LatentFamily

SD3_T5_TOKENS = 256  # StableDiffusion3Pipeline's and its training scripts' default max_sequence_length
FLUX_T5_TOKENS = 512  # FluxPipeline's and train_dreambooth_lora_flux.py's default
FLUX_GUIDANCE = 3.5  # the guidance input of guidance-distilled FLUX (dev), as diffusers' FLUX training scripts use


class FlowFamily(LatentFamily):
    """A text-conditioned transformer trained by flow matching (whatever scheduler its pipeline ships)."""

    flow = True
    needs_text = True
    default_steps = 28

    def _denoiser(self) -> torch.nn.Module:
        return self.pipe.transformer


class SD3Family(FlowFamily):
    """StableDiffusion3Pipeline: SD3Transformer2DModel; text_encoder_3 (T5) may be absent (its tokens are zeros)."""

    name = "sd3"

    def conditioning(self) -> str:
        return f"t5_tokens={SD3_T5_TOKENS}" + ("" if self.pipe.text_encoder_3 is not None else " t5=absent")

    @torch.no_grad()
    def encode_condition(self, caption: str | None, label: int | None, pixels: Pixels | None = None) -> Condition:
        prompt = caption or ""
        emb, _, pooled, _ = self.pipe.encode_prompt(
            prompt=prompt, prompt_2=prompt, prompt_3=prompt, device=self.device, do_classifier_free_guidance=False,
            max_sequence_length=SD3_T5_TOKENS,
        )
        return Condition({"encoder_hidden_states": emb, "pooled_projections": pooled})

    def predict(self, x_t: torch.Tensor, t: torch.Tensor, cond: Condition) -> torch.Tensor:
        return self.pipe.transformer(
            hidden_states=x_t,
            timestep=t.to(x_t.dtype),
            encoder_hidden_states=cond["encoder_hidden_states"],
            pooled_projections=cond["pooled_projections"],
            return_dict=False,
        )[0]

    def _generate(self, caption: str | None, label: int | None, gen: torch.Generator, steps: int) -> Image.Image:
        size = self.resolution
        return self.pipe(
            prompt=caption or "", generator=gen, num_inference_steps=steps, height=size, width=size,
            max_sequence_length=SD3_T5_TOKENS,
        ).images[0]


class FluxFamily(FlowFamily):
    """FluxPipeline: FluxTransformer2DModel over 2×2-packed latents with image/text position ids; the guidance
    input only when the transformer has `guidance_embeds` (dev, not schnell). The model takes t / T."""

    name = "flux"

    @property
    def guidance(self) -> float | None:
        return FLUX_GUIDANCE if self.config.guidance_embeds else None

    def resolution_step(self) -> int:
        return super().resolution_step() * 2  # latents are packed 2×2 into tokens

    def native_resolution(self) -> int:
        return int(self.pipe.default_sample_size) * self.pipe.vae_scale_factor

    def conditioning(self) -> str:
        return f"t5_tokens={FLUX_T5_TOKENS} guidance={self.guidance}"

    @torch.no_grad()
    def encode_condition(self, caption: str | None, label: int | None, pixels: Pixels | None = None) -> Condition:
        prompt = caption or ""
        emb, pooled, _ = self.pipe.encode_prompt(
            prompt=prompt, prompt_2=prompt, device=self.device, max_sequence_length=FLUX_T5_TOKENS
        )
        return Condition({"encoder_hidden_states": emb, "pooled_projections": pooled})

    def predict(self, x_t: torch.Tensor, t: torch.Tensor, cond: Condition) -> torch.Tensor:
        n, c, h, w = x_t.shape
        packed = x_t.view(n, c, h // 2, 2, w // 2, 2).permute(0, 2, 4, 1, 3, 5).reshape(n, (h // 2) * (w // 2), c * 4)
        img_ids = torch.zeros(h // 2, w // 2, 3, device=x_t.device)
        img_ids[..., 1] += torch.arange(h // 2, device=x_t.device)[:, None]
        img_ids[..., 2] += torch.arange(w // 2, device=x_t.device)[None, :]
        emb = cond["encoder_hidden_states"]
        guidance = None if self.guidance is None else torch.full((n,), self.guidance, device=x_t.device)
        out = self.pipe.transformer(
            hidden_states=packed,
            timestep=(t / self.num_train_timesteps).to(x_t.dtype),
            guidance=guidance,
            pooled_projections=cond["pooled_projections"],
            encoder_hidden_states=emb,
            txt_ids=torch.zeros(emb.shape[1], 3, device=x_t.device, dtype=x_t.dtype),
            img_ids=img_ids.reshape(-1, 3).to(x_t.dtype),
            return_dict=False,
        )[0]
        return out.view(n, h // 2, w // 2, c, 2, 2).permute(0, 3, 1, 4, 2, 5).reshape(n, c, h, w)

    def _generate(self, caption: str | None, label: int | None, gen: torch.Generator, steps: int) -> Image.Image:
        size = self.resolution
        return self.pipe(
            prompt=caption or "", generator=gen, num_inference_steps=steps if self.guidance else min(steps, 4),
            guidance_scale=self.guidance or 0.0, height=size, width=size, max_sequence_length=FLUX_T5_TOKENS,
        ).images[0]
