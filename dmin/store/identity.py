"""dmin.json: what a project's gradients mean. A project never mixes gradients of different identities.

Like kronfluence's saved arguments: a later run whose identity differs refuses, showing the differing fields.
"""

from __future__ import annotations

import dataclasses
import json
import warnings
from dataclasses import dataclass
from typing import Any

import xxhash

from dmin.errors import DminWarning, IdentityMismatch, ProjectError, SchemaVersionError
from dmin.store.paths import SCHEMA_VERSION
from dmin.version import __version__

# The F and s of dmin.hashing. Projects written before dmin.json named its compressor used the grouped runs.
COMPRESSOR = "runs8-spread"
LEGACY_COMPRESSOR = "runs8-grouped"

# Fields that may change over a project's life without changing what its gradients mean.
_MUTABLE = ("dmin_version", "vs", "model_path", "lora_path", "data_path")
# Fields added after schema 1. A schema-1 project lacks them (None) and None is left out of the identity hash, so
# its manifest entries still verify; collecting into it or querying it with this dmin is refused with a field diff.
_SINCE_2 = ("schedule", "compute_dtype", "conditioning")


@dataclass(frozen=True)
class Identity:
    """Everything that must be equal for two gradients to be comparable (docs/method.md)."""

    model_family: str
    model_fingerprint: str
    layout_hash: str
    n: int
    D: int
    loss_type: str
    timesteps: tuple[float, ...]
    latent_shape: tuple[int, ...]
    collect_vs: tuple[str, ...]
    adapter_fingerprint: str | None = None
    param_filter: str | None = None
    noise_seed: int = 0
    compress_seed: int = 0
    dtype: str = "float32"
    compressor: str = COMPRESSOR
    vs: tuple[str, ...] = ()
    t_indices: tuple[int, ...] = ()
    model_path: str | None = None
    lora_path: str | None = None
    data_path: str | None = None
    schedule: str | None = None  # the training forward process (dmin.models.schedule), not the pipeline's scheduler
    compute_dtype: str | None = None  # float32, bfloat16 or float16: gradients differ with it
    conditioning: str | None = None  # a family's fixed inputs (FLUX guidance, T5 length)
    schema_version: int = SCHEMA_VERSION
    dmin_version: str = __version__

    def __post_init__(self) -> None:
        if not self.t_indices:
            object.__setattr__(self, "t_indices", tuple(range(len(self.timesteps))))
        if not self.vs:
            object.__setattr__(self, "vs", tuple(self.collect_vs))
        if self.dtype not in ("float32", "float16"):
            raise ProjectError(f"dtype must be float32 or float16, got {self.dtype!r}")

    @property
    def K(self) -> int:
        return len(self.timesteps)

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        return {k: list(v) if isinstance(v, tuple) else v for k, v in d.items()}

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2, sort_keys=True) + "\n"

    def comparable(self) -> dict[str, Any]:
        return {
            k: v for k, v in self.to_dict().items() if k not in _MUTABLE and not (k in _SINCE_2 and v is None)
        }

    def hash(self) -> str:
        """xxh3-128 of the comparable fields: manifest entries record it, so a swapped dmin.json is caught."""
        return xxhash.xxh3_128_hexdigest(json.dumps(self.comparable(), sort_keys=True).encode())

    @classmethod
    def from_json(cls, text: str, where: str = "dmin.json") -> Identity:
        try:
            raw = json.loads(text)
        except json.JSONDecodeError as exc:
            raise ProjectError(
                f"{where} is not valid JSON ({exc.msg} at line {exc.lineno}); "
                f"restore it from a backup or recreate the project"
            ) from exc
        if not isinstance(raw, dict):
            raise ProjectError(f"{where} does not hold a JSON object")
        version = raw.get("schema_version")
        if not isinstance(version, int):
            raise ProjectError(f"{where} has no schema_version; it was not written by dmin")
        if version > SCHEMA_VERSION:
            raise SchemaVersionError(
                f"{where} has schema version {version}, newer than this dmin reads ({SCHEMA_VERSION}); upgrade dmin"
            )
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(raw) - names)
        if unknown:  # kept in the file, never rewritten; said, not dropped silently
            warnings.warn(
                f"{where}: unknown key(s) {', '.join(unknown)} ignored (written by another dmin version, or edited)",
                DminWarning,
                stacklevel=2,
            )
        known = {k: v for k, v in raw.items() if k in names}
        known.setdefault("compressor", LEGACY_COMPRESSOR)
        for k in ("timesteps", "latent_shape", "collect_vs", "vs", "t_indices"):
            if k in known and isinstance(known[k], list):
                known[k] = tuple(known[k])
        try:
            return cls(**known)
        except TypeError as exc:
            raise ProjectError(f"{where} is missing fields ({exc}); it is damaged") from exc

    def check_matches(self, requested: Identity) -> None:
        """Raise IdentityMismatch listing each differing field, stored → requested."""
        mine, theirs = self.comparable(), requested.comparable()
        diff = [
            f"{k}: {_short(mine.get(k))} (project) ≠ {_short(theirs.get(k))} (requested)"
            for k in sorted(set(mine) | set(theirs))
            if mine.get(k) != theirs.get(k)
        ]
        if diff:
            legacy = self.schedule is None and requested.schedule is not None
            if legacy:
                fix = (
                    "The project was written by dmin 0.1, whose gradients used the pipeline's own scheduler and whose "
                    "fingerprint covered every file; collect into a new project directory"
                )
            else:
                hints = dict.fromkeys(
                    h for k in sorted(set(mine) | set(theirs)) if mine.get(k) != theirs.get(k) and (h := self._fix(k))
                )
                fix = "To match the project, " + "; ".join(hints) + "; or use a new project directory for this setup"
            raise IdentityMismatch("the project was built with a different setup — " + "; ".join(diff) + ". " + fix)

    def _fix(self, name: str) -> str:
        """The option that makes a run agree with this project on field `name`."""
        model = f"--model {self.model_path}" if self.model_path else "the project's --model"
        lora = f"--lora {self.lora_path}" if self.lora_path else "no --lora"
        steps = ", ".join(f"{t:g}" for t in self.timesteps)
        fixes = {
            "compute_dtype": f"pass --dtype {self.compute_dtype} (or leave --dtype out: queries use the project's)",
            "dtype": f"pass --storage-dtype {self.dtype}",
            "adapter_fingerprint": f"pass {lora} (the adapter the project was collected with)",
            "param_filter": f"pass --params {self.param_filter}" if self.param_filter else "leave --params out",
            "timesteps": f"pass --timestep-list {steps} (or --timesteps {self.K})",
            "t_indices": f"pass --timesteps {self.K}",
            "collect_vs": "pass " + " ".join(f"--v {v}" for v in self.collect_vs),
            "noise_seed": f"pass --noise-seed {self.noise_seed}",
            "compress_seed": f"pass --compress-seed {self.compress_seed}",
            "latent_shape": f"leave --resolution out or pass the project's (latent shape {list(self.latent_shape)})",
        }
        return fixes.get(name, f"pass {model} (the model the project was collected with)")


def _short(value: Any) -> str:
    text = json.dumps(value)
    return text if len(text) <= 48 else text[:45] + "…"
