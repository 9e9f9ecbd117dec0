"""Loading a diffusers pipeline as a Family: diffusers' own `from_pretrained`, safetensors only, never remote code.

The fingerprint covers what shapes gradients — model_index.json and the denoiser, VAE, text encoders and tokenizers
— but not the scheduler: the training schedule rebuilt from its config is recorded in dmin.json instead, so the same
weights saved with PNDM, DDIM, Euler or DDPM are one model to dmin.
"""

from __future__ import annotations

import json
import re
import warnings
from pathlib import Path
from typing import Any

import torch

from dmin.errors import ModelLoadError
from dmin.models.base import Family
from dmin.models.fingerprint import fingerprint
from dmin.models.flow import FluxFamily, SD3Family
from dmin.models.hub import resolve_model
from dmin.models.latent import DiTFamily
from dmin.models.pixel import DDPMFamily
from dmin.models.stable_diffusion import SDFamily, SDXLFamily

FAMILIES: dict[str, type[Family]] = {
    "DDPMPipeline": DDPMFamily,
    "StableDiffusionPipeline": SDFamily,
    "StableDiffusionXLPipeline": SDXLFamily,
    "StableDiffusion3Pipeline": SD3Family,
    "FluxPipeline": FluxFamily,
    "DiTPipeline": DiTFamily,
}
# Components that play no part in the training loss (the scheduler is recorded as its training schedule).
NOT_FINGERPRINTED = ("scheduler", "safety_checker", "feature_extractor", "image_encoder")
_MODEL_SUFFIXES = (".json", ".safetensors", ".txt", ".model")
_PICKLES = (".bin", ".pt", ".pth", ".ckpt", ".pkl")


def shaping_components(index: dict[str, Any]) -> dict[str, Any]:
    """model_index.json's entries for the components that shape gradients, with the pipeline class."""
    return {
        name: value
        for name, value in index.items()
        if name == "_class_name"
        or (not name.startswith("_") and name not in NOT_FINGERPRINTED and isinstance(value, list) and value[0])
    }


def model_files(root: Path, index: dict[str, Any]) -> list[Path]:
    """The files of the components that shape gradients (non-variant weights only)."""
    files = []
    for name in sorted(shaping_components(index)):
        if name == "_class_name":
            continue
        found = sorted(p for p in (root / name).rglob("*") if p.is_file() and p.suffix in _MODEL_SUFFIXES)
        plain = [p for p in found if p.suffix == ".safetensors" and "." not in p.stem]
        if plain:  # `model.fp16.safetensors` and friends are variants diffusers does not load by default
            found = [p for p in found if p.suffix != ".safetensors" or p in plain]
        files += found
    return files


def model_fingerprint(root: Path, index: dict[str, Any]) -> str:
    """The model's fingerprint: model_index.json's shaping entries and the shaping components' files."""
    components = json.dumps(shaping_components(index), sort_keys=True).encode()
    return fingerprint(model_files(root, index), root, {"model_index.json": components})


def _quiet_libraries() -> None:
    """diffusers' and transformers' loading bars and warnings would reach stderr; dmin reports its own progress."""
    import diffusers
    import transformers

    diffusers.utils.logging.disable_progress_bar()
    diffusers.utils.logging.set_verbosity_error()
    transformers.utils.logging.disable_progress_bar()
    transformers.utils.logging.set_verbosity_error()


def read_index(root: Path, spec: str | Path) -> dict[str, Any]:
    index = root / "model_index.json"
    if not root.is_dir():
        raise ModelLoadError(
            f"--model {spec}: no such directory; pass a diffusers pipeline directory or a Hub id (org/name)"
        )
    if not index.is_file():
        raise ModelLoadError(
            f"--model {spec}: no model_index.json; point --model at a diffusers pipeline directory (saved with "
            f"save_pretrained) or a Hub id such as stabilityai/stable-diffusion-xl-base-1.0"
        )
    try:
        raw = json.loads(index.read_text())
    except (OSError, ValueError) as exc:
        raise ModelLoadError(f"{index}: unreadable ({exc})") from exc
    if not isinstance(raw, dict):
        raise ModelLoadError(f"{index}: not a JSON object")
    return raw


def load_family(model: str | Path, dtype: torch.dtype = torch.float32, resolution: int | None = None) -> Family:
    """Load a diffusers pipeline (local directory or hub id) as a Family, or fail with one clear ModelLoadError.

    Frozen weights are loaded in `dtype`; the VAE stays float32 (SDXL's VAE overflows in float16)."""
    _quiet_libraries()
    root = resolve_model(model)
    index = read_index(root, model)
    cls_name = index.get("_class_name")
    family = FAMILIES.get(str(cls_name))
    if family is None:
        raise ModelLoadError(
            f"--model {model}: pipeline {cls_name!r} is not supported (supported: {', '.join(FAMILIES)})"
        )
    weights = list(root.rglob("*.safetensors"))
    pickles = [p for p in root.rglob("*") if p.suffix in _PICKLES]
    if pickles and not weights:
        raise ModelLoadError(
            f"--model {model}: only pickle weights ({pickles[0].name}); dmin loads safetensors only "
            f"— convert with save_pretrained(safe_serialization=True)"
        )
    import diffusers

    kwargs: dict[str, Any] = {"use_safetensors": True, "local_files_only": True, "torch_dtype": dtype}
    if family is SD3Family and not (root / "text_encoder_3").is_dir():
        kwargs.update(text_encoder_3=None, tokenizer_3=None)
    if family is SDFamily:
        kwargs.update(safety_checker=None, requires_safety_checker=False)
    for name, value in index.items():  # a component model_index.json names must be there, and say so if not
        named = not name.startswith("_") and isinstance(value, list) and value[0] and name not in kwargs
        if named and not (root / name).is_dir():
            raise ModelLoadError(
                f"--model {model}: model_index.json names component '{name}' ({value[1]}) but there is no "
                f"{name}/ folder; copy the pipeline's {name}/ in, or download the pipeline again"
            )
    quiet = diffusers.utils.logging.get_verbosity()
    diffusers.utils.logging.set_verbosity(diffusers.utils.logging.CRITICAL)  # it logs what it then raises
    try:
        with warnings.catch_warnings():  # deprecation notices about diffusers' own arguments are not the user's
            warnings.simplefilter("ignore", FutureWarning)
            pipe = getattr(diffusers, str(cls_name)).from_pretrained(str(root), **kwargs)
    except Exception as exc:  # diffusers raises many types; the user needs one line
        text = str(exc).splitlines()[0]
        missing = re.search(r"no file named (\S+) found in directory (\S+?)\.?$", text)
        if missing:
            part = Path(missing.group(2)).name
            raise ModelLoadError(
                f"--model {model}: component '{part}' has no weights ({missing.group(1)} is missing in "
                f"{missing.group(2)}); restore the file, or download the pipeline again"
            ) from exc
        raise ModelLoadError(f"--model {model}: cannot load {cls_name}: {text}") from exc
    finally:
        diffusers.utils.logging.set_verbosity(quiet)
    pipe.set_progress_bar_config(disable=True)
    vae = getattr(pipe, "vae", None)
    if vae is not None:
        vae.to(torch.float32)
        if "shift_factor" in vae.config and vae.config.shift_factor is None:
            vae.register_to_config(shift_factor=0.0)  # a missing shift is 0 (SD3/FLUX pipelines add it unguarded)
    freeze(pipe)
    fam = family(pipe, root, resolution)
    fam.fingerprint = model_fingerprint(root, index)
    fam.compute_dtype = dtype
    return fam


def freeze(pipe: Any) -> None:
    """No gradients anywhere until parameters are selected; inference mode for dropout and the like."""
    for module in pipe.components.values():
        if isinstance(module, torch.nn.Module):
            module.requires_grad_(False)
            module.eval()
