"""Where a `--model` or `--lora` argument lives: a local path, or a Hugging Face Hub id `org/name[@revision]`
resolved as diffusers resolves it — the local cache first, the network only when allowed and needed.

Offline (HF_HUB_OFFLINE=1) a hub id must be in the cache; online, a missing one is downloaded as diffusers would
download it (safetensors only, no variants). Either way the answer is a local directory, and a model that cannot be
had is one clear line naming how to get it.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

from dmin.errors import ModelLoadError

_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+(@[\w./-]+)?$")


def cache_dir() -> str:
    """The hub cache huggingface_hub uses, read from the environment now (not at import time)."""
    if os.environ.get("HF_HUB_CACHE"):
        return os.environ["HF_HUB_CACHE"]
    home = os.environ.get("HF_HOME") or os.path.join(
        os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache"), "huggingface"
    )
    return os.path.join(home, "hub")


def offline() -> bool:
    return os.environ.get("HF_HUB_OFFLINE", "").strip().lower() in ("1", "true", "yes", "on")


def is_hub_id(spec: str) -> bool:
    return bool(_HUB_ID.match(spec)) and not Path(spec).exists()


def split_id(spec: str) -> tuple[str, str | None]:
    repo, _, rev = spec.partition("@")
    return repo, rev or None


def _missing(what: str, spec: str, detail: str) -> ModelLoadError:
    how = "download it on a machine with network (`hf download " + split_id(spec)[0] + "`)"
    reason = "HF_HUB_OFFLINE=1 is set" if offline() else detail
    return ModelLoadError(
        f"{what} {spec}: no such local path, nor in the local Hugging Face cache ({cache_dir()}), and {reason}; "
        f"{how}, or pass a local directory"
    )


def resolve_model(spec: str | Path) -> Path:
    """A local pipeline directory for a path or a hub id."""
    path = Path(spec).expanduser()
    if path.exists() or not is_hub_id(str(spec)):
        return path
    from diffusers import DiffusionPipeline

    repo, rev = split_id(str(spec))
    kwargs = {"revision": rev, "cache_dir": cache_dir(), "use_safetensors": True}
    try:
        return Path(DiffusionPipeline.download(repo, local_files_only=True, **kwargs))
    except Exception as exc:  # huggingface_hub raises several types for "not cached"
        if offline():
            raise _missing("--model", str(spec), "offline") from exc
    try:
        return Path(DiffusionPipeline.download(repo, **kwargs))
    except Exception as exc:
        raise _missing("--model", str(spec), f"the Hub cannot be reached ({type(exc).__name__})") from exc


def resolve_lora(spec: str | Path) -> Path:
    """A local LoRA file or directory for a path or a hub id (its safetensors and JSON files only)."""
    path = Path(spec).expanduser()
    if path.exists() or not is_hub_id(str(spec)):
        return path
    from huggingface_hub import snapshot_download

    repo, rev = split_id(str(spec))
    patterns = ["*.safetensors", "*.json"]
    try:
        return Path(
            snapshot_download(repo, revision=rev, cache_dir=cache_dir(), allow_patterns=patterns, local_files_only=True)
        )
    except Exception as exc:
        if offline():
            raise _missing("--lora", str(spec), "offline") from exc
    try:
        return Path(snapshot_download(repo, revision=rev, cache_dir=cache_dir(), allow_patterns=patterns))
    except Exception as exc:
        raise _missing("--lora", str(spec), f"the Hub cannot be reached ({type(exc).__name__})") from exc
