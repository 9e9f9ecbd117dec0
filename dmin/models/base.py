"""What every model family shares: the image rule, batched conditions, the training schedule, quiet generation.

A family answers four questions for its pipeline class — what x0 is for an image, what conditions a prediction,
what the denoiser predicts for a batch of noisy inputs, and how to generate an image — so a new pipeline is an
addition, not a rewrite. Everything is batched on dim 0: collection stacks B samples × K timesteps into one pass.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from contextlib import nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from PIL import Image

from dmin.errors import DataError
from dmin.models.schedule import TrainingSchedule, training_schedule

StepCallback = Callable[[int, int], None]  # (steps done, steps in all)


@dataclass
class Condition:
    """What conditions the predictions of a batch: named tensors whose dim 0 runs over the examples."""

    tensors: dict[str, torch.Tensor] = field(default_factory=dict)

    def repeat(self, k: int) -> Condition:
        """Each example k times in a row (one sample's K timesteps)."""
        return Condition({n: t.repeat_interleave(k, dim=0) for n, t in self.tensors.items()})

    @staticmethod
    def cat(conds: Sequence[Condition]) -> Condition:
        if not conds:
            return Condition()
        return Condition({n: torch.cat([c.tensors[n] for c in conds]) for n in conds[0].tensors})

    def select(self, rows: Sequence[int]) -> Condition:
        index = torch.as_tensor(list(rows), dtype=torch.long)
        return Condition({n: t[index.to(t.device)] for n, t in self.tensors.items()})

    def to(self, device: torch.device) -> Condition:
        return Condition({n: t.to(device) for n, t in self.tensors.items()})

    def __getitem__(self, name: str) -> torch.Tensor:
        return self.tensors[name]


@dataclass(frozen=True)
class Pixels:
    """An image after the image rule, and what the rule did (SDXL conditions on it)."""

    tensor: torch.Tensor  # (1, C, S, S) in [-1, 1]
    original_size: tuple[int, int]  # (height, width) before resizing
    crop_top_left: tuple[int, int]  # (top, left) of the centre crop, in resized pixels


def image_rule(img: Image.Image, size: int, channels: int) -> Pixels:
    """Resize the shorter side to `size` (bicubic), centre-crop a square, convert channels, scale to [-1, 1].
    16-bit grayscale (mode I;16 or I, as 16-bit PNGs open) is scaled to 8 bits first; PIL would clip it at 255."""
    if img.mode.startswith("I"):
        img = img.point(lambda v: v / 257).convert("L")  # type: ignore[operator, attr-defined]
    img = img.convert("L" if channels == 1 else "RGB")
    w, h = img.size
    scale = size / min(w, h)
    img = img.resize((max(size, round(w * scale)), max(size, round(h * scale))), Image.Resampling.BICUBIC)
    rw, rh = img.size
    left, top = (rw - size) // 2, (rh - size) // 2
    img = img.crop((left, top, left + size, top + size))
    data = torch.frombuffer(bytearray(img.tobytes()), dtype=torch.uint8).float()
    data = data.reshape(size, size, channels).permute(2, 0, 1)
    return Pixels((data / 127.5 - 1.0).unsqueeze(0), (h, w), (top, left))


def to_pil(x: torch.Tensor) -> Image.Image:
    """A (1, C, H, W) tensor in [-1, 1] as a PIL image."""
    arr = ((x[0].float().clamp(-1, 1) + 1) * 127.5).round().byte().permute(1, 2, 0).cpu().numpy()
    return Image.fromarray(arr[:, :, 0], "L") if arr.shape[2] == 1 else Image.fromarray(arr, "RGB")


class _Steps:
    """Stands in for the tqdm bar a diffusers pipeline opens while sampling: reports steps, prints nothing."""

    def __init__(self, iterable: Any, total: int | None, on_step: StepCallback | None) -> None:
        self.iterable = iterable
        self.total = total if total is not None else len(iterable)
        self.done = 0
        self.on_step = on_step

    def update(self, n: int = 1) -> None:
        self.done += n
        if self.on_step:
            self.on_step(self.done, self.total)

    def __iter__(self) -> Iterator[Any]:
        for item in self.iterable:
            yield item
            self.update()

    def __enter__(self) -> _Steps:
        return self

    def __exit__(self, *exc: object) -> None:
        return None


def quiet_sampling(pipe: Any, on_step: StepCallback | None) -> None:
    """Route a pipeline's sampling progress to `on_step` instead of a tqdm bar on stderr."""
    pipe.progress_bar = lambda iterable=None, total=None: _Steps(iterable, total, on_step)


class Family:
    """A model family: x0 of an image, the condition, batched predictions, and generation."""

    name = "base"
    flow = False  # trained by flow matching whatever scheduler the pipeline ships
    needs_text = False
    default_steps = 50

    def __init__(self, pipe: Any, root: Path, resolution: int | None = None) -> None:
        self.pipe = pipe
        self.root = root
        self.denoiser: torch.nn.Module = self._denoiser()
        self.schedule: TrainingSchedule = training_schedule(
            type(pipe.scheduler).__name__, pipe.scheduler.config, flow=self.flow
        )
        self.device = torch.device("cpu")
        self.resolution = resolution or self.native_resolution()
        self.fingerprint = ""  # set by load_family (models.fingerprint)
        self.compute_dtype = torch.float32  # set by load_family: frozen weights' dtype (selected ones stay float32)

    def _denoiser(self) -> torch.nn.Module:
        raise NotImplementedError

    # -- schedule ----------------------------------------------------------------------------------------------
    @property
    def loss_type(self) -> str:
        return self.schedule.loss_type

    @property
    def num_train_timesteps(self) -> int:
        return self.schedule.num_train_timesteps

    def default_timesteps(self, K: int) -> list[float]:
        """K timesteps spread evenly over the training schedule (bin centres)."""
        T = self.num_train_timesteps
        return [float(int((k + 0.5) * T / K)) for k in range(K)]

    def noisy_and_target(
        self, x0: torch.Tensor, eps: torch.Tensor, t: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        return self.schedule.noisy_and_target(x0, eps, t)

    # -- conditions ---------------------------------------------------------------------------------------------
    @property
    def num_classes(self) -> int | None:
        """How many class labels the model takes (None: not class-conditional)."""
        return None

    @property
    def needs_label(self) -> bool:
        return self.num_classes is not None

    def conditioning(self) -> str:
        """Fixed inputs besides image, caption and label that shape the loss (recorded in dmin.json)."""
        return ""

    def check_label(self, label: int | None) -> None:
        classes = self.num_classes
        if classes is not None and label is not None and not 0 <= label < classes:
            raise DataError(f"label {label} is outside this {self.name} model's classes 0–{classes - 1}")

    def encode_condition(self, caption: str | None, label: int | None, pixels: Pixels | None = None) -> Condition:
        """The condition of one example (dim 0 of size 1)."""
        self.check_label(label)
        if self.needs_label:
            return Condition({"class_labels": torch.tensor([int(label or 0)], device=self.device)})
        return Condition()

    # -- images -------------------------------------------------------------------------------------------------
    def native_resolution(self) -> int:
        raise NotImplementedError

    def resolution_step(self) -> int:
        """What an image size must be a multiple of: the denoiser halves its input once per down block (UNets), or
        cuts it into patches (transformers); latent families first divide by the VAE's factor."""
        cfg = self.denoiser.config
        blocks = getattr(cfg, "down_block_types", None)
        return int(2 ** (len(blocks) - 1)) if blocks else int(getattr(cfg, "patch_size", None) or 1)

    @property
    def image_channels(self) -> int:
        return 3

    def latent_shape(self) -> tuple[int, ...]:
        raise NotImplementedError

    def pixels(self, img: Image.Image) -> Pixels:
        return image_rule(img, self.resolution, self.image_channels)

    def record(self, pixels: Pixels) -> dict[str, str]:
        """What the image rule decided for a sample that conditions the model, stored with the sample."""
        return {}

    def encode_image(self, pixels: Pixels) -> torch.Tensor:
        """x0 of one image: (1, *latent_shape), float32."""
        return pixels.tensor.to(self.device)

    # -- prediction and generation --------------------------------------------------------------------------------
    def predict(self, x_t: torch.Tensor, t: torch.Tensor, cond: Condition) -> torch.Tensor:
        """The denoiser's output for a batch (N, *latent_shape) at timesteps t (N,), in the target's layout."""
        raise NotImplementedError

    def generate(
        self, caption: str | None, label: int | None, seed: int, steps: int | None = None,
        on_step: StepCallback | None = None,
    ) -> Image.Image:
        """Sample an image with the pipeline's own (inference) scheduler; progress goes to `on_step`, never stderr.
        In the compute dtype under autocast, as gradients are taken: frozen weights in bfloat16 or float16, selected
        ones and the VAE in float32 would not multiply otherwise."""
        self.check_label(label)
        quiet_sampling(self.pipe, on_step)
        mixed = self.compute_dtype != torch.float32
        with torch.no_grad(), torch.autocast(self.device.type, dtype=self.compute_dtype) if mixed else nullcontext():
            return self._generate(caption, label, torch.Generator("cpu").manual_seed(seed), steps or self.default_steps)

    def _generate(self, caption: str | None, label: int | None, gen: torch.Generator, steps: int) -> Image.Image:
        raise NotImplementedError

    def to(self, device: torch.device) -> None:
        self.device = device
        self.pipe.to(device)
