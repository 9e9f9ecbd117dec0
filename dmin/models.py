"""Model loading: the only module that knows diffusers pipelines.

Each family implements one small interface — encode the image to x0, encode the condition, predict — so SDXL or
FLUX are additions, not rewrites. Models load through diffusers' own `from_pretrained` from a local directory with
`use_safetensors=True` and `local_files_only=True`: no network, no pickle, never remote code.
"""

from __future__ import annotations

import fnmatch
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import xxhash
from PIL import Image

from dmin.errors import DataError, ModelLoadError

LORA_FILES = ("pytorch_lora_weights.safetensors", "adapter_model.safetensors")


@dataclass
class Condition:
    """What conditions a prediction: a class label, text embeddings, or nothing."""

    label: int | None = None
    tensors: dict[str, torch.Tensor] = field(default_factory=dict)


class Family:
    """A model family: how x0, the condition and the prediction are computed, and which loss applies."""

    name = "base"
    needs_label = False
    needs_text = False

    def __init__(self, pipe: Any, root: Path) -> None:
        self.pipe = pipe
        self.root = root
        self.scheduler = pipe.scheduler
        self.denoiser: torch.nn.Module = self._denoiser()
        self.device = torch.device("cpu")
        self.dtype = torch.float32

    def _denoiser(self) -> torch.nn.Module:
        raise NotImplementedError

    # -- schedule and loss --------------------------------------------------------------------------------
    @property
    def loss_type(self) -> str:
        pred = getattr(self.scheduler.config, "prediction_type", "epsilon")
        if pred not in ("epsilon", "v_prediction"):
            raise ModelLoadError(f"prediction_type {pred!r} is not supported (epsilon, v_prediction, flow matching)")
        return str(pred)

    @property
    def num_train_timesteps(self) -> int:
        return int(self.scheduler.config.num_train_timesteps)

    def default_timesteps(self, K: int) -> list[float]:
        """K timesteps spread evenly over the training schedule (bin centres)."""
        T = self.num_train_timesteps
        return [float(int((k + 0.5) * T / K)) for k in range(K)]

    def noisy_and_target(self, x0: torch.Tensor, eps: torch.Tensor, t: float) -> tuple[torch.Tensor, torch.Tensor]:
        ts = torch.tensor([int(t)], dtype=torch.long, device=x0.device)
        x_t = self.scheduler.add_noise(x0, eps, ts)
        if self.loss_type == "v_prediction":
            return x_t, self.scheduler.get_velocity(x0, eps, ts)
        return x_t, eps

    # -- inputs -------------------------------------------------------------------------------------------------
    @property
    def sample_size(self) -> int:
        raise NotImplementedError

    @property
    def image_channels(self) -> int:
        return 3

    def latent_shape(self) -> tuple[int, ...]:
        raise NotImplementedError

    def pixels(self, img: Image.Image) -> torch.Tensor:
        """Resize the shorter side to sample_size (bicubic), centre-crop, convert channels, scale to [-1, 1]."""
        size = self.sample_size
        img = img.convert("L" if self.image_channels == 1 else "RGB")
        w, h = img.size
        scale = size / min(w, h)
        img = img.resize((max(size, round(w * scale)), max(size, round(h * scale))), Image.Resampling.BICUBIC)
        w, h = img.size
        left, top = (w - size) // 2, (h - size) // 2
        img = img.crop((left, top, left + size, top + size))
        data = torch.frombuffer(bytearray(img.tobytes()), dtype=torch.uint8).float()
        data = data.reshape(size, size, self.image_channels).permute(2, 0, 1)
        return (data / 127.5 - 1.0).unsqueeze(0)

    def encode_image(self, img: Image.Image) -> torch.Tensor:
        return self.pixels(img).to(self.device)

    def encode_condition(self, caption: str | None, label: int | None) -> Condition:
        return Condition(label=label)

    def predict(self, x_t: torch.Tensor, t: float, cond: Condition) -> torch.Tensor:
        raise NotImplementedError

    def to(self, device: torch.device, dtype: torch.dtype) -> None:
        self.device, self.dtype = device, dtype
        self.pipe.to(device)

    def generate(self, cond: Condition, seed: int, steps: int = 50) -> Image.Image:
        raise NotImplementedError


class DDPMFamily(Family):
    """UNet2DModel (DDPMPipeline): unconditional, or class-conditional through num_class_embeds."""

    name = "ddpm"

    def _denoiser(self) -> torch.nn.Module:
        return self.pipe.unet

    @property
    def needs_label(self) -> bool:  # type: ignore[override]
        return bool(self.pipe.unet.config.num_class_embeds)

    @property
    def sample_size(self) -> int:
        s = self.pipe.unet.config.sample_size
        return int(s[0] if isinstance(s, list | tuple) else s)

    @property
    def image_channels(self) -> int:
        return int(self.pipe.unet.config.in_channels)

    def latent_shape(self) -> tuple[int, ...]:
        return (self.image_channels, self.sample_size, self.sample_size)

    def predict(self, x_t: torch.Tensor, t: float, cond: Condition) -> torch.Tensor:
        labels = None
        if self.needs_label:
            labels = torch.tensor([cond.label], device=x_t.device)
        ts = torch.tensor([int(t)], device=x_t.device)
        return self.pipe.unet(x_t, ts, class_labels=labels).sample

    @torch.no_grad()
    def generate(self, cond: Condition, seed: int, steps: int = 50) -> Image.Image:
        gen = torch.Generator("cpu").manual_seed(seed)
        sched = self.scheduler.__class__.from_config(self.scheduler.config)
        sched.set_timesteps(steps)
        x = torch.randn((1, *self.latent_shape()), generator=gen).to(self.device)
        for t in sched.timesteps:
            out = self.predict(x, float(t), cond)
            x = sched.step(out, t, x, generator=gen).prev_sample
        return to_pil(x)


class LatentFamily(Family):
    """Families that denoise VAE latents: x0 = (VAE mode − shift) × scaling factor."""

    @property
    def config(self) -> Any:
        return self.denoiser.config

    @property
    def sample_size(self) -> int:
        return int(self.config.sample_size) * vae_scale(self.pipe.vae)

    def latent_shape(self) -> tuple[int, ...]:
        s = int(self.config.sample_size)
        return (int(self.config.in_channels), s, s)

    def encode_image(self, img: Image.Image) -> torch.Tensor:
        vae = self.pipe.vae
        with torch.no_grad():
            latent = vae.encode(self.pixels(img).to(self.device, vae.dtype)).latent_dist.mode()
        shift = getattr(vae.config, "shift_factor", None) or 0.0
        return ((latent - shift) * vae.config.scaling_factor).float()


class SDFamily(LatentFamily):
    """Stable Diffusion 1.x/2.x: UNet2DConditionModel + VAE + CLIP text encoder."""

    name = "sd"
    needs_text = True

    def _denoiser(self) -> torch.nn.Module:
        return self.pipe.unet

    @torch.no_grad()
    def encode_condition(self, caption: str | None, label: int | None) -> Condition:
        tok = self.pipe.tokenizer(
            caption or "",
            padding="max_length",
            max_length=self.pipe.tokenizer.model_max_length,
            truncation=True,
            return_tensors="pt",
        )
        emb = self.pipe.text_encoder(tok.input_ids.to(self.device))[0]
        return Condition(label=label, tensors={"encoder_hidden_states": emb})

    def predict(self, x_t: torch.Tensor, t: float, cond: Condition) -> torch.Tensor:
        ts = torch.tensor([int(t)], device=x_t.device)
        return self.pipe.unet(x_t, ts, encoder_hidden_states=cond.tensors["encoder_hidden_states"]).sample

    def generate(self, cond: Condition, seed: int, steps: int = 50) -> Image.Image:
        gen = torch.Generator("cpu").manual_seed(seed)
        return self.pipe(
            prompt_embeds=cond.tensors["encoder_hidden_states"], generator=gen, num_inference_steps=steps
        ).images[0]


class SD3Family(LatentFamily):
    """Stable Diffusion 3: SD3Transformer2DModel, flow matching (target ε − x0); text_encoder_3 may be absent."""

    name = "sd3"
    needs_text = True

    def _denoiser(self) -> torch.nn.Module:
        return self.pipe.transformer

    @property
    def loss_type(self) -> str:
        return "flow_matching"

    def noisy_and_target(self, x0: torch.Tensor, eps: torch.Tensor, t: float) -> tuple[torch.Tensor, torch.Tensor]:
        sigma = t / self.num_train_timesteps
        return (1.0 - sigma) * x0 + sigma * eps, eps - x0

    @torch.no_grad()
    def encode_condition(self, caption: str | None, label: int | None) -> Condition:
        prompt = caption or ""
        emb, _, pooled, _ = self.pipe.encode_prompt(
            prompt=prompt, prompt_2=prompt, prompt_3=prompt, device=self.device, do_classifier_free_guidance=False
        )
        return Condition(label=label, tensors={"encoder_hidden_states": emb, "pooled_projections": pooled})

    def predict(self, x_t: torch.Tensor, t: float, cond: Condition) -> torch.Tensor:
        ts = torch.tensor([t], device=x_t.device, dtype=x_t.dtype)
        return self.pipe.transformer(
            hidden_states=x_t,
            timestep=ts,
            return_dict=False,
            encoder_hidden_states=cond.tensors["encoder_hidden_states"],
            pooled_projections=cond.tensors["pooled_projections"],
        )[0]

    def generate(self, cond: Condition, seed: int, steps: int = 28) -> Image.Image:
        gen = torch.Generator("cpu").manual_seed(seed)
        return self.pipe(
            prompt_embeds=cond.tensors["encoder_hidden_states"],
            pooled_prompt_embeds=cond.tensors["pooled_projections"],
            generator=gen,
            num_inference_steps=steps,
            guidance_scale=1.0,
        ).images[0]


class DiTFamily(LatentFamily):
    """DiTPipeline: class-conditional DiTTransformer2DModel over VAE latents; learned-sigma output is split off."""

    name = "dit"
    needs_label = True

    def _denoiser(self) -> torch.nn.Module:
        return self.pipe.transformer

    def predict(self, x_t: torch.Tensor, t: float, cond: Condition) -> torch.Tensor:
        ts = torch.tensor([int(t)], device=x_t.device)
        labels = torch.tensor([cond.label], device=x_t.device)
        out = self.pipe.transformer(x_t, timestep=ts, class_labels=labels).sample
        return out[:, : x_t.shape[1]]

    def generate(self, cond: Condition, seed: int, steps: int = 25) -> Image.Image:
        gen = torch.Generator("cpu").manual_seed(seed)
        return self.pipe(
            class_labels=[cond.label], generator=gen, num_inference_steps=steps, guidance_scale=1.0, output_type="pil"
        ).images[0]


FAMILIES: dict[str, type[Family]] = {
    "DDPMPipeline": DDPMFamily,
    "StableDiffusionPipeline": SDFamily,
    "StableDiffusion3Pipeline": SD3Family,
    "DiTPipeline": DiTFamily,
}


def vae_scale(vae: Any) -> int:
    """Pixels per latent cell: 2^(number of VAE down blocks − 1)."""
    return int(2 ** (len(vae.config.block_out_channels) - 1))


def to_pil(x: torch.Tensor) -> Image.Image:
    """A (1, C, H, W) tensor in [-1, 1] as a PIL image."""
    arr = ((x[0].clamp(-1, 1) + 1) * 127.5).round().byte().permute(1, 2, 0).cpu().numpy()
    return Image.fromarray(arr[:, :, 0], "L") if arr.shape[2] == 1 else Image.fromarray(arr, "RGB")


def fingerprint(paths: list[Path], root: Path) -> str:
    """xxh3-128 over the relative names and bytes of config and weight files."""
    h = xxhash.xxh3_128()
    for p in sorted(paths):
        h.update(p.relative_to(root).as_posix().encode() + b"\0")
        with open(p, "rb") as f:
            while block := f.read(1 << 24):
                h.update(block)
    return h.hexdigest()


def _model_files(root: Path) -> list[Path]:
    return [p for p in root.rglob("*") if p.is_file() and p.suffix in (".json", ".safetensors", ".txt", ".model")]


def load_family(model_dir: str | Path) -> Family:
    """Load a local diffusers pipeline directory as a Family, or fail with one clear ModelLoadError."""
    root = Path(model_dir)
    index = root / "model_index.json"
    if not root.is_dir():
        raise ModelLoadError(f"--model {root}: no such directory")
    if not index.is_file():
        raise ModelLoadError(
            f"--model {root}: no model_index.json; point --model at a diffusers pipeline directory "
            f"(saved with save_pretrained)"
        )
    try:
        cls_name = json.loads(index.read_text()).get("_class_name")
    except (OSError, ValueError) as exc:
        raise ModelLoadError(f"{index}: unreadable ({exc})") from exc
    family = FAMILIES.get(cls_name)
    if family is None:
        raise ModelLoadError(
            f"--model {root}: pipeline {cls_name!r} is not supported (supported: {', '.join(FAMILIES)})"
        )
    weights = list(root.rglob("*.safetensors"))
    pickles = [p for p in root.rglob("*") if p.suffix in (".bin", ".pt", ".pth", ".ckpt", ".pkl")]
    if pickles and not weights:
        raise ModelLoadError(
            f"--model {root}: only pickle weights ({pickles[0].name}); dmin loads safetensors only "
            f"— convert with save_pretrained(safe_serialization=True)"
        )
    import diffusers

    diffusers.utils.logging.disable_progress_bar()
    diffusers.utils.logging.set_verbosity_error()
    pipe_cls = getattr(diffusers, cls_name)
    kwargs: dict[str, Any] = {"use_safetensors": True, "local_files_only": True}
    if family is SD3Family and not (root / "text_encoder_3").is_dir():
        kwargs.update(text_encoder_3=None, tokenizer_3=None)
    if family is SDFamily:
        kwargs.update(safety_checker=None, requires_safety_checker=False)
    try:
        pipe = pipe_cls.from_pretrained(str(root), **kwargs)
    except Exception as exc:  # diffusers raises many types; the user needs one line
        raise ModelLoadError(f"--model {root}: cannot load {cls_name}: {str(exc).splitlines()[0]}") from exc
    for module in pipe.components.values():
        if isinstance(module, torch.nn.Module):
            module.requires_grad_(False)
            module.eval()
    fam = family(pipe, root)
    fam.fingerprint = fingerprint(_model_files(root), root)  # type: ignore[attr-defined]
    return fam


# ---- adapters and parameter selection --------------------------------------------------------------------


def load_lora(fam: Family, lora_dir: str | Path) -> str:
    """Attach a LoRA (diffusers LoRA safetensors or a PEFT adapter directory); returns its fingerprint."""
    from peft import LoraConfig, inject_adapter_in_model, set_peft_model_state_dict
    from safetensors.torch import load_file, safe_open

    root = Path(lora_dir)
    if not root.exists():
        raise ModelLoadError(f"--lora {root}: no such file or directory")
    file = root if root.is_file() else next((root / n for n in LORA_FILES if (root / n).is_file()), None)
    if file is None:
        found = sorted(root.glob("*.safetensors"))
        if not found:
            raise ModelLoadError(f"--lora {root}: no LoRA safetensors file (expected one of {', '.join(LORA_FILES)})")
        file = found[0]
    state = load_file(str(file))
    denoiser = fam.denoiser
    prefix = "transformer." if fam.name in ("sd3", "dit") else "unet."
    config_path = file.parent / "adapter_config.json"
    if config_path.is_file():  # a PEFT adapter directory
        config = LoraConfig.from_pretrained(str(file.parent))
        state = {k.removeprefix("base_model.model."): v for k, v in state.items()}
    else:
        if any(k.startswith(prefix) for k in state):
            state = {k[len(prefix) :]: v for k, v in state.items() if k.startswith(prefix)}
        with safe_open(str(file), "pt") as f:
            meta = f.metadata() or {}
        ranks = {k: v.shape[0] for k, v in state.items() if "lora_A" in k}
        if not ranks:
            raise ModelLoadError(f"--lora {file}: no lora_A weights found; is it a diffusers/PEFT LoRA?")
        targets = sorted({k.split(".lora_A")[0] for k in ranks})
        rank = max(ranks.values())
        extra = json.loads(meta.get("lora_adapter_metadata", "{}") or "{}")
        alpha = extra.get("lora_alpha", rank)
        config = LoraConfig(r=rank, lora_alpha=alpha, target_modules=targets)
    names = {n for n, _ in denoiser.named_modules()}
    missing = [
        t
        for t in (config.target_modules or [])
        if isinstance(config.target_modules, list | set)
        and t not in names
        and not any(n.endswith("." + t) or n == t for n in names)
    ]
    if missing:
        raise ModelLoadError(
            f"--lora {file}: targets {missing[0]!r} which the model does not have; "
            f"the LoRA was trained for another model"
        )
    try:
        inject_adapter_in_model(config, denoiser, adapter_name="dmin")
        result = set_peft_model_state_dict(denoiser, state, adapter_name="dmin")
    except (RuntimeError, ValueError, KeyError) as exc:
        raise ModelLoadError(f"--lora {file}: does not fit the model: {str(exc).splitlines()[0]}") from exc
    unexpected = getattr(result, "unexpected_keys", []) or []
    if unexpected:
        raise ModelLoadError(
            f"--lora {file}: {len(unexpected)} weight(s) match no module (e.g. {unexpected[0]}); "
            f"the LoRA was trained for another model"
        )
    return fingerprint([p for p in file.parent.iterdir() if p.is_file()], file.parent)


def select_params(fam: Family, lora: bool, pattern: str | None) -> list[tuple[str, torch.nn.Parameter]]:
    """The parameters whose gradients are taken, sorted by name (the layout is part of the identity)."""
    params = []
    for name, p in sorted(fam.denoiser.named_parameters(), key=lambda kv: kv[0]):
        take = ("lora_" in name) if lora else True
        if pattern is not None:
            take = take and fnmatch.fnmatchcase(name, pattern)
        p.requires_grad_(take)
        if take:
            params.append((name, p))
    if not params:
        raise ModelLoadError(f"no parameters selected (--params {pattern!r} matches none)")
    return params


def check_condition(fam: Family, has_caption: bool, has_label: bool) -> None:
    if fam.needs_label and not has_label:
        raise DataError(
            f"the {fam.name} model is class-conditional but the data has no label column; add a "
            f"'label' column to the metadata"
        )
    if fam.needs_text and not has_caption:
        raise DataError(f"the {fam.name} model is text-conditional but the data has no text/prompt/caption column")
