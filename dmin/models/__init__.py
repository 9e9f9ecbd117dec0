"""Model loading: the only package that knows diffusers pipelines.

Each family (base.py) answers what x0 is for an image, what conditions a prediction, what the denoiser predicts for
a batch, and how to generate; the training schedule (schedule.py) gives x_t and the target. Pipelines load through
diffusers' own `from_pretrained` (load.py) from a local directory or the Hugging Face cache (hub.py), adapters
through diffusers' LoRA loaders (lora.py).
"""

from __future__ import annotations

import fnmatch

import torch

from dmin.errors import DataError, ModelLoadError
from dmin.models.base import Condition, Family, Pixels, StepCallback, to_pil
from dmin.models.load import FAMILIES, load_family
from dmin.models.lora import Adapter, attach_lora


def select_params(fam: Family, lora: bool, pattern: str | None) -> list[tuple[str, torch.nn.Parameter]]:
    """The parameters whose gradients are taken, sorted by name (the layout is part of the identity). They are
    kept in float32, as diffusers' training scripts keep trainable parameters, whatever the frozen weights' dtype."""
    params = []
    for name, p in sorted(fam.denoiser.named_parameters(), key=lambda kv: kv[0]):
        take = ("lora_" in name) if lora else True
        if pattern is not None:
            take = take and fnmatch.fnmatchcase(name, pattern)
        p.requires_grad_(take)
        if take:
            if p.dtype != torch.float32:
                p.data = p.data.float()
            params.append((name, p))
    if not params:
        raise ModelLoadError(
            f"no parameters selected (--params {pattern!r} matches none of the {fam.name} denoiser's parameter names)"
        )
    return params


def check_condition(fam: Family, has_caption: bool, has_label: bool, query: bool = False) -> None:
    """Refuse data (or a query) that lacks what the model is conditioned on, saying how to supply it."""
    if fam.needs_label and not has_label:
        fix = "pass --label N" if query else "add a 'label' column to the data's metadata"
        raise DataError(f"the {fam.name} model is class-conditional and needs a label; {fix}")
    if fam.needs_text and not has_caption:
        fix = "pass --prompt TEXT" if query else "add a text/prompt/caption column to the data's metadata"
        raise DataError(f"the {fam.name} model is text-conditional and needs a caption; {fix}")


__all__ = [
    "FAMILIES",
    "Adapter",
    "Condition",
    "Family",
    "Pixels",
    "StepCallback",
    "attach_lora",
    "check_condition",
    "load_family",
    "select_params",
    "to_pil",
]
