"""DDPMPipeline: a UNet2DModel over pixels, unconditional or class-conditional (num_class_embeds)."""

from __future__ import annotations

import inspect

import torch
from PIL import Image

from dmin.models.base import Condition, Family, to_pil


class DDPMFamily(Family):
    name = "ddpm"

    def _denoiser(self) -> torch.nn.Module:
        return self.pipe.unet

    @property
    def num_classes(self) -> int | None:
        n = self.pipe.unet.config.num_class_embeds
        return int(n) if n else None

    def native_resolution(self) -> int:
        s = self.pipe.unet.config.sample_size
        return int(s[0] if isinstance(s, list | tuple) else s)

    @property
    def image_channels(self) -> int:
        return int(self.pipe.unet.config.in_channels)

    def latent_shape(self) -> tuple[int, ...]:
        return (self.image_channels, self.resolution, self.resolution)

    def predict(self, x_t: torch.Tensor, t: torch.Tensor, cond: Condition) -> torch.Tensor:
        labels = cond.tensors.get("class_labels")
        return self.pipe.unet(x_t, t.long(), class_labels=labels).sample

    def _generate(self, caption: str | None, label: int | None, gen: torch.Generator, steps: int) -> Image.Image:
        """DDPMPipeline takes no labels, so the loop is written here, with the pipeline's scheduler class."""
        cond = self.encode_condition(caption, label)
        sched = self.pipe.scheduler.__class__.from_config(self.pipe.scheduler.config)
        sched.set_timesteps(steps)
        takes_generator = "generator" in inspect.signature(sched.step).parameters
        x = torch.randn((1, *self.latent_shape()), generator=gen).to(self.device) * sched.init_noise_sigma
        for t in self.pipe.progress_bar(sched.timesteps):
            out = self.predict(sched.scale_model_input(x, t), t.reshape(1).to(self.device), cond)
            x = sched.step(out, t, x, **({"generator": gen} if takes_generator else {})).prev_sample
        return to_pil(x)
