"""Attaching a LoRA: through diffusers' own loader wherever the pipeline has one, so every format diffusers reads
(PEFT keys, the older `lora.down`/`lora.up` keys of `convert_state_dict_to_diffusers`, kohya files, per-component
`unet.lora_alpha` metadata) is read exactly as diffusers reads it.

- A PEFT adapter directory (adapter_config.json + adapter_model.safetensors): PEFT's own config and loader.
- A pipeline with `load_lora_weights` (SD, SDXL, SD3, FLUX): diffusers. Text-encoder LoRA weights in the same file
  are applied to the conditioning (the fine-tuned model encodes prompts with them), but gradients are taken over
  the denoiser's adapter only; a note says so.
- Pipelines without a LoRA loader (DDPMPipeline, DiTPipeline): the file's PEFT or `lora.down/up` keys under `unet.`
  or `transformer.`, rank from the weights, alpha from the per-component metadata diffusers writes
  (`unet.lora_alpha`), else the unprefixed one, else the rank.

Weights that fit no module are an error, never a silent partial adapter.
"""

from __future__ import annotations

import contextlib
import json
import logging
import re
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from dmin.errors import ModelLoadError
from dmin.models.base import Family
from dmin.models.fingerprint import fingerprint
from dmin.models.hub import resolve_lora
from dmin.models.load import freeze

LORA_FILES = ("pytorch_lora_weights.safetensors", "adapter_model.safetensors")
ADAPTER = "dmin"


@dataclass
class Adapter:
    """An attached LoRA: its fingerprint (for dmin.json) and notes worth telling the user."""

    fingerprint: str
    notes: list[str] = field(default_factory=list)


def lora_file(spec: str | Path) -> Path:
    root = resolve_lora(spec)
    if not root.exists():
        raise ModelLoadError(f"--lora {spec}: no such file or directory")
    if root.is_file():
        return root
    file = next((root / n for n in LORA_FILES if (root / n).is_file()), None)
    if file is None:
        found = sorted(root.glob("*.safetensors"))
        if len(found) != 1:
            raise ModelLoadError(
                f"--lora {spec}: expected {' or '.join(LORA_FILES)} (or a single .safetensors file) in the directory"
            )
        file = found[0]
    return file


def prefix_of(fam: Family) -> str:
    return "unet" if hasattr(fam.pipe, "unet") else "transformer"


def _lora_tensors(module: torch.nn.Module) -> int:
    return sum(1 for n, _ in module.named_parameters() if "lora_" in n)


@contextlib.contextmanager
def _diffusers_warnings() -> Iterator[list[str]]:
    """Collect what diffusers logs while loading (it reports unmatched LoRA keys as warnings) without printing."""
    logger = logging.getLogger("diffusers")
    caught: list[str] = []

    class Catch(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            caught.append(record.getMessage())

    saved = logger.handlers[:], logger.level, logger.propagate
    logger.handlers, logger.propagate = [Catch(logging.WARNING)], False
    logger.setLevel(logging.WARNING)
    try:
        yield caught
    finally:
        logger.handlers, logger.level, logger.propagate = saved[0], saved[1], saved[2]


def attach_lora(fam: Family, spec: str | Path) -> Adapter:
    """Attach the LoRA at `spec` (file, directory or hub id) to the family's denoiser as adapter 'dmin'."""
    file = lora_file(spec)
    notes: list[str] = []
    peft_config = file.parent / "adapter_config.json"
    if peft_config.is_file():
        _attach_peft_dir(fam, file)
    elif hasattr(fam.pipe, "load_lora_weights"):
        notes += _attach_with_diffusers(fam, file, spec)
    else:
        _attach_by_keys(fam, file)
    if _lora_tensors(fam.denoiser) == 0:
        raise ModelLoadError(
            f"--lora {spec}: none of its weights fit this {type(fam.pipe).__name__}'s {prefix_of(fam)}; "
            f"the LoRA was trained for another model"
        )
    freeze(fam.pipe)  # adapters loaded into text encoders must not build graphs; the denoiser's are selected later
    files = [file] + ([peft_config] if peft_config.is_file() else [])
    return Adapter(fingerprint(files, file.parent), notes)


# Cross-attention widths (the text embedding a UNet attends to) of the families people fine-tune.
_WIDTHS = {768: "SD 1.x", 1024: "SD 2.x", 2048: "SDXL", 4096: "a T5-conditioned model (SD3, FLUX)"}


def _misfit(error: str, pipeline: str) -> str:
    """One line for a LoRA whose tensors do not fit the model: the first mismatching tensor, and whose model a
    width like that belongs to (an SDXL LoRA on SD 1.5: 2048 against 768)."""
    found = re.search(
        r"size mismatch for (\S+): copying a param with shape torch\.Size\(\[([\d, ]*)\]\) from checkpoint, "
        r"the shape in current model is torch\.Size\(\[([\d, ]*)\]\)",
        error,
    )
    if not found:
        return f"does not fit this {pipeline}: {error.splitlines()[0][:200]}"
    name, theirs, ours = found.group(1), found.group(2), found.group(3)
    pairs = [(int(a), int(b)) for a, b in zip(theirs.split(", "), ours.split(", "), strict=False) if a != b]
    width = ""
    if pairs:
        a, b = pairs[0]
        width = f" (a width of {a} where this model has {b}"
        width += f": {_WIDTHS[a]}'s against {_WIDTHS[b]}'s)" if a in _WIDTHS and b in _WIDTHS else ")"
    return (
        f"made for another model: {name} is [{theirs}] in the LoRA but [{ours}] in this {pipeline}{width}; "
        f"use the LoRA with the model it was trained on"
    )


def _attach_with_diffusers(fam: Family, file: Path, spec: str | Path) -> list[str]:
    with _diffusers_warnings() as caught:
        try:
            fam.pipe.load_lora_weights(str(file.parent), weight_name=file.name, adapter_name=ADAPTER)
        except (ValueError, RuntimeError, KeyError, TypeError) as exc:
            raise ModelLoadError(f"--lora {spec}: {_misfit(str(exc), type(fam.pipe).__name__)}") from exc
    unmatched = [m for m in caught if "unexpected keys" in m]
    if unmatched and _lora_tensors(fam.denoiser):
        raise ModelLoadError(
            f"--lora {spec}: some of its weights fit no module of this {type(fam.pipe).__name__} "
            f"({unmatched[0].splitlines()[0][:160]}); the LoRA was trained for another model"
        )
    notes = []
    for name, module in fam.pipe.components.items():
        if isinstance(module, torch.nn.Module) and module is not fam.denoiser and _lora_tensors(module):
            notes.append(
                f"the LoRA also adapts {name}: applied to prompt encoding; gradients cover the "
                f"{prefix_of(fam)}'s adapter only"
            )
    return notes


def _attach_peft_dir(fam: Family, file: Path) -> None:
    from peft import LoraConfig
    from safetensors.torch import load_file

    config = LoraConfig.from_pretrained(str(file.parent))
    state = {k.removeprefix("base_model.model."): v for k, v in load_file(str(file)).items()}
    _inject(fam, config, state, file)


def _attach_by_keys(fam: Family, file: Path) -> None:
    from peft import LoraConfig
    from safetensors import safe_open
    from safetensors.torch import load_file

    prefix = prefix_of(fam) + "."
    state = load_file(str(file))
    if any(k.startswith(prefix) for k in state):
        state = {k.removeprefix(prefix): v for k, v in state.items() if k.startswith(prefix)}
    state = {k.replace(".lora.down.", ".lora_A.").replace(".lora.up.", ".lora_B."): v for k, v in state.items()}
    ranks = {k.split(".lora_A")[0]: v.shape[0] for k, v in state.items() if ".lora_A" in k}
    if not ranks:
        raise ModelLoadError(
            f"--lora {file}: no LoRA weights for the {prefix_of(fam)} (keys like {prefix}…lora_A.weight or "
            f"…lora.down.weight); is it a diffusers or PEFT LoRA for this model?"
        )
    with safe_open(str(file), "pt") as f:
        meta = json.loads((f.metadata() or {}).get("lora_adapter_metadata") or "{}")
    own = {k.removeprefix(prefix): v for k, v in meta.items() if k.startswith(prefix)} or meta
    rank = int(own.get("r") or max(ranks.values()))
    config = LoraConfig(
        r=rank,
        lora_alpha=own.get("lora_alpha", rank),
        target_modules=sorted(ranks),
        rank_pattern={k: v for k, v in ranks.items() if v != rank},
        alpha_pattern=own.get("alpha_pattern") or {},
    )
    _inject(fam, config, state, file)


def _inject(fam: Family, config: Any, state: dict[str, torch.Tensor], file: Path) -> None:
    from peft import inject_adapter_in_model, set_peft_model_state_dict

    names = {n for n, _ in fam.denoiser.named_modules()}
    targets = config.target_modules if isinstance(config.target_modules, list | set) else []
    missing = [t for t in targets if t not in names and not any(n.endswith("." + t) for n in names)]
    if missing:
        raise ModelLoadError(
            f"--lora {file}: targets {missing[0]!r}, which this {type(fam.pipe).__name__} does not have; "
            f"the LoRA was trained for another model"
        )
    try:
        inject_adapter_in_model(config, fam.denoiser, adapter_name=ADAPTER)
        result = set_peft_model_state_dict(fam.denoiser, state, adapter_name=ADAPTER)
    except (RuntimeError, ValueError, KeyError) as exc:
        raise ModelLoadError(f"--lora {file}: does not fit the model: {str(exc).splitlines()[0][:200]}") from exc
    unexpected = getattr(result, "unexpected_keys", []) or []
    if unexpected:
        raise ModelLoadError(
            f"--lora {file}: {len(unexpected)} weight(s) match no module (e.g. {unexpected[0]}); "
            f"the LoRA was trained for another model"
        )
