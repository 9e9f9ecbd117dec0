"""The gradient engine: a sample's K compressed, normalized per-timestep gradients (docs/method.md).

For each sample and each of the K timesteps: the loss with the fixed noise ε_k, one backward pass, and a
post-accumulate-grad hook on every selected parameter that feeds its gradient to the compressor and frees it at
once — so memory never holds K×n, nor a flattened copy of the gradient unless v=full is asked. The norm comes from
the same pass. The largest v is computed; smaller ones are folded from it. `prepare` loads a model into a `Setup`
(model, selected parameters, compressor, identity); `collect` streams a dataset through the engine into a project
and `query` takes a query image's gradients through exactly the same path.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from contextlib import nullcontext
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
import xxhash

from dmin.batching import (
    Footprint,
    activation_bytes,
    free_memory,
)
from dmin.compressor import BatchAccumulator, Compressor, fold
from dmin.errors import CompressionError, UsageError
from dmin.models import Condition, Family, attach_lora, check_condition, load_family, select_params
from dmin.models.hub import is_hub_id
from dmin.per_example import PerExampleGrads
from dmin.store import Identity
from dmin.vs import parse_vs

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
DTYPE_ALIASES = {"fp32": "float32", "bf16": "bfloat16", "fp16": "float16", "half": "float16"}


def fixed_noise(shape: Sequence[int], noise_seed: int, k: int) -> torch.Tensor:
    """ε_k: the same Gaussian tensor for every sample and query, on every device (drawn on the CPU)."""
    gen = torch.Generator("cpu").manual_seed(noise_seed * 1_000_003 + k)
    return torch.randn((1, *shape), generator=gen)


def parse_dtype(name: str) -> str:
    """float32 / bfloat16 / float16, accepting fp32 / bf16 / fp16."""
    canon = DTYPE_ALIASES.get(name.strip().lower(), name.strip().lower())
    if canon not in DTYPES:
        raise UsageError(f"--dtype {name!r}: choose float32, bfloat16 or float16 (or fp32, bf16, fp16)")
    return canon


def choose_device(device: str, environ: Mapping[str, str] = os.environ) -> torch.device:
    """The device a process computes on: `cuda` means cuda:$LOCAL_RANK under torchrun (one GPU per rank), `auto`
    means that when CUDA is available, else the CPU."""
    name = device.strip().lower()
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    if name == "cuda" and environ.get("LOCAL_RANK", "").isdigit():
        name = f"cuda:{int(environ['LOCAL_RANK'])}"
    try:
        dev = torch.device(name)
    except RuntimeError as exc:
        raise UsageError(f"--device {device!r}: choose auto, cpu, cuda or cuda:N") from exc
    if dev.type not in ("cpu", "cuda"):
        raise UsageError(f"--device {device!r}: choose auto, cpu, cuda or cuda:N")
    return dev


def resolve_device(device: str) -> torch.device:
    """`choose_device`, refusing a CUDA device that is not there."""
    dev = choose_device(device)
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise UsageError(f"--device {device}: no CUDA device is available; use --device cpu")
        if dev.index is not None and dev.index >= torch.cuda.device_count():
            raise UsageError(f"--device {dev}: only {torch.cuda.device_count()} CUDA device(s) are visible")
    return dev


@dataclass
class Setup:
    """A loaded model with its selected parameters, compressor and identity: what collect and query share."""

    family: Family
    params: list[tuple[str, torch.nn.Parameter]]
    identity: Identity
    compressor: Compressor
    device: torch.device
    autocast: torch.dtype | None
    notes: list[str] = field(default_factory=list)


def layout_hash(params: list[tuple[str, torch.nn.Parameter]]) -> str:
    return xxhash.xxh3_128_hexdigest("\n".join(f"{n}:{tuple(p.shape)}" for n, p in params).encode())


def _where(spec: str | Path) -> str:
    """How dmin.json records a model or adapter: a hub id as given, a local path made absolute."""
    return str(spec) if is_hub_id(str(spec)) else str(Path(spec).expanduser().resolve())


@dataclass(frozen=True)
class PrepareOptions:
    """Every choice `prepare` makes besides the model, by name: what the CLI's collect options and a project's
    identity (for a query) fill in."""

    lora: str | Path | None = None  # a LoRA file, directory or Hub id: its parameters only get gradients
    params: str | None = None  # a glob over parameter names
    timesteps: int = 10  # K, spread over the schedule by the family
    timestep_list: Sequence[float] | None = None  # the K timesteps themselves (instead of `timesteps`)
    vs: Sequence[str | int] = ()  # the v's to store (`vs.DEFAULT_VS` when empty)
    noise_seed: int = 0
    compress_seed: int = 0
    device: str = "auto"
    dtype: str = "float32"  # compute dtype
    storage_dtype: str = "float32"  # vector storage: float32 or float16
    resolution: int | None = None  # pixels (default: the model's native size)
    latent_shape: Sequence[int] | None = None  # a project's, which fixes the resolution for its queries


def prepare(model: str | Path, options: PrepareOptions | None = None, **by_name: Any) -> Setup:
    """Load the model (and adapter), choose parameters, and build the identity a project must have. Options come
    as a PrepareOptions or by name (`prepare(model, lora=…, timesteps=10, vs=[4096])`), by-name ones winning."""
    try:
        opts = replace(options or PrepareOptions(), **by_name)
    except TypeError as exc:
        names = ", ".join(f.name for f in fields(PrepareOptions))
        raise UsageError(f"prepare: {exc}; the options are {names}") from exc
    return _prepare(model, opts)


def _prepare(model: str | Path, o: PrepareOptions) -> Setup:
    lora, params, timesteps, timestep_list, vs = o.lora, o.params, o.timesteps, o.timestep_list, o.vs
    noise_seed, compress_seed, device, storage_dtype = o.noise_seed, o.compress_seed, o.device, o.storage_dtype
    resolution, latent_shape = o.resolution, o.latent_shape
    dtype = parse_dtype(o.dtype)
    if storage_dtype not in ("float32", "float16"):
        raise UsageError(f"--storage-dtype {storage_dtype!r}: choose float32 or float16")
    dev = resolve_device(device)
    want = parse_vs(vs)
    if resolution is not None and resolution < 8:
        raise UsageError(f"--resolution {resolution}: expected the image size in pixels, e.g. 512 or 1024")
    fam = load_family(model, DTYPES[dtype], resolution)
    step = fam.resolution_step()
    if resolution is not None and resolution % step:
        near = max(step, round(resolution / step) * step)
        raise UsageError(
            f"--resolution {resolution}: must be a multiple of {step} for this {fam.name} model (its VAE's and "
            f"denoiser's downsampling), e.g. {near}"
        )
    if latent_shape is not None and tuple(fam.latent_shape()) != tuple(latent_shape):  # a project's resolution
        fam.resolution = fam.resolution * int(latent_shape[-1]) // fam.latent_shape()[-1]
    adapter = attach_lora(fam, lora) if lora else None
    chosen = select_params(fam, lora is not None, params)
    n = sum(p.numel() for _, p in chosen)
    comp = Compressor(n, compress_seed)
    caps = [v if v == "full" else str(min(int(v), comp.D)) for v in want]
    for v in caps:
        if v != "full":
            try:
                comp.check_v(int(v))
            except CompressionError as exc:
                raise UsageError(f"--v {v}: {exc}") from exc
    ts = list(timestep_list) if timestep_list else fam.default_timesteps(timesteps)
    if not ts or any(t < 0 or t >= fam.num_train_timesteps for t in ts):
        raise UsageError(f"timesteps must lie in [0, {fam.num_train_timesteps}); got {ts}")
    fam.to(dev)
    ident = Identity(
        model_family=fam.name,
        model_fingerprint=fam.fingerprint,
        adapter_fingerprint=adapter.fingerprint if adapter else None,
        param_filter=params,
        layout_hash=layout_hash(chosen),
        n=n,
        D=comp.D,
        loss_type=fam.loss_type,
        timesteps=tuple(float(t) for t in ts),
        latent_shape=tuple(fam.latent_shape()),
        collect_vs=tuple(dict.fromkeys(caps)),
        noise_seed=noise_seed,
        compress_seed=compress_seed,
        dtype=storage_dtype,
        schedule=fam.schedule.describe(),
        compute_dtype=dtype,
        conditioning=fam.conditioning(),
        model_path=_where(model),
        lora_path=_where(lora) if lora else None,
    )
    autocast = DTYPES[dtype] if dtype != "float32" else None
    return Setup(fam, chosen, ident, comp, dev, autocast, adapter.notes if adapter else [])


class GradientEngine:
    """The K compressed, normalized gradients of B samples from one batched pass over their B×K examples.

    Example r = b·K + k is sample b at timestep t_k with noise ε_k. Exact per-example gradients arrive parameter by
    parameter (`dmin.per_example`) and stream into one batched compressor accumulator (one hash per position for
    all R rows); the norms come from the same pass. The largest v is computed, smaller ones are folded from it."""

    def __init__(self, setup: Setup) -> None:
        self.setup = setup
        ident = setup.identity
        numeric = sorted((int(v) for v in ident.collect_vs if v != "full"), reverse=True)
        self.vmax = numeric[0] if numeric else None
        self.folds = numeric[1:]
        self.want_full = "full" in ident.collect_vs
        self.offsets = {}
        off = 0
        for name, p in setup.params:
            self.offsets[name] = off
            off += p.numel()
        self._acc: BatchAccumulator | None = None
        self._full: torch.Tensor | None = None
        self._sumsq: torch.Tensor | None = None
        self.grads = PerExampleGrads(setup.family.denoiser, setup.params, self._feed)
        self.noise = torch.cat([fixed_noise(ident.latent_shape, ident.noise_seed, k) for k in range(ident.K)])

    def _feed(self, name: str, g: torch.Tensor) -> None:
        """One parameter's per-example gradients (R, *shape): into the compressor (and v=full), then freed."""
        offset, rows = self.offsets[name], g.reshape(g.shape[0], -1)
        if self._acc is not None:
            self._acc.add(offset, rows)
        elif self._sumsq is not None:
            self._sumsq += rows.double().pow(2).sum(1)
        if self._full is not None:
            self._full[:, offset : offset + rows.shape[1]] = rows

    def close(self) -> None:
        self.grads.close()

    def run(
        self, x0: torch.Tensor, cond: Condition
    ) -> tuple[dict[str, np.ndarray], np.ndarray, np.ndarray]:
        """For B samples (x0: (B, *latent_shape), cond of B): ({v: (B, K, dim)}, norms (B, K), losses (B, K)),
        vectors normalized by each example's raw gradient norm."""
        s = self.setup
        K, B = s.identity.K, x0.shape[0]
        R = B * K
        t = torch.tensor(s.identity.timesteps, dtype=torch.float64, device=s.device).repeat(B)
        eps = self.noise.to(s.device).repeat(B, *([1] * (self.noise.dim() - 1)))
        x_t, target = s.family.noisy_and_target(x0.repeat_interleave(K, 0), eps, t)
        self._acc = s.compressor.stream_batch(self.vmax, R, device=s.device) if self.vmax else None
        self._sumsq = torch.zeros(R, dtype=torch.float64, device=s.device)
        self._full = torch.zeros(R, s.identity.n, dtype=torch.float32, device=s.device) if self.want_full else None
        try:
            ctx = torch.autocast(s.device.type, dtype=s.autocast) if s.autocast else nullcontext()
            with ctx:
                pred = s.family.predict(x_t, t, cond.repeat(K))
            losses = (pred.float() - target.float()).pow(2).flatten(1).mean(1)
            losses.sum().backward()
            self.grads.finish()
            sumsq = self._acc.sumsq if self._acc is not None else self._sumsq
            norms = sumsq.sqrt()
            scale = torch.where((norms > 0) & norms.isfinite(), 1.0 / norms, torch.full_like(norms, float("nan")))
            out: dict[str, np.ndarray] = {}
            if self._acc is not None:
                big = self._acc.finish() * scale[:, None].float()
                out[str(self.vmax)] = big.reshape(B, K, -1).cpu().numpy()
                for v in self.folds:
                    out[str(v)] = fold(big, v).reshape(B, K, v).cpu().numpy()
            if self._full is not None:
                out["full"] = (self._full * scale[:, None].float()).reshape(B, K, -1).cpu().numpy()
            return out, norms.reshape(B, K).cpu().numpy(), losses.detach().reshape(B, K).double().cpu().numpy()
        finally:
            self._acc, self._full, self._sumsq = None, None, None
            self.grads.reset()

    def footprint(self, x0: torch.Tensor, cond: Condition) -> Footprint:
        """Memory per sample of a pass, from a forward-only probe of one sample (`dmin.batching`)."""
        s = self.setup
        K = s.identity.K
        t = torch.tensor(s.identity.timesteps, dtype=torch.float64, device=s.device)
        x_t = x0.repeat_interleave(K, 0)
        ctx = torch.autocast(s.device.type, dtype=s.autocast) if s.autocast else nullcontext()

        def forward() -> None:
            with ctx:
                s.family.predict(x_t, t, cond.repeat(K))

        activations = activation_bytes(s.family.denoiser, forward)
        largest = max(p.numel() for _, p in s.params)
        return Footprint(2 * activations + 2 * K * largest * 4, free_memory(s.device))

    def sample(self, x0: torch.Tensor, cond: Condition) -> tuple[dict[str, np.ndarray], np.ndarray, np.ndarray]:
        """One sample (x0: (1, *latent_shape)): ({v: (K, dim)}, norms (K,), losses (K,))."""
        vecs, norms, losses = self.run(x0, cond)
        return {v: rows[0] for v, rows in vecs.items()}, norms[0], losses[0]


def query_gradients(
    setup: Setup, image: Any, caption: str | None, label: int | None
) -> tuple[dict[str, np.ndarray], np.ndarray, np.ndarray]:
    """A query image's gradients by exactly the collection path (same identity, noise, compressor)."""
    check_condition(setup.family, caption is not None, label is not None, query=True)
    engine = GradientEngine(setup)
    try:
        pixels = setup.family.pixels(image)
        return engine.sample(setup.family.encode_image(pixels), setup.family.encode_condition(caption, label, pixels))
    finally:
        engine.close()
