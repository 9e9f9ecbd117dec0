"""Per-sample gradients streamed through the compressor into the database (docs/method.md).

For each sample and each of the K timesteps: the loss with the fixed noise ε_k, one backward pass, and a
post-accumulate-grad hook on every selected parameter that feeds its gradient to `Compressor.stream` and frees it
at once — so memory never holds K×n, nor a flattened copy of the gradient unless v=full is asked. The norm comes
from the same pass. The largest v is computed; smaller ones are folded from it.
"""

from __future__ import annotations

import contextlib
import os
import time
from collections.abc import Callable, Mapping, Sequence
from contextlib import nullcontext
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import torch
import xxhash

from dmin.batching import (
    Footprint,
    activation_bytes,
    choose_batch_size,
    free_memory,
    is_out_of_memory,
    parse_batch_size,
)
from dmin.compress import BatchAccumulator, Compressor, fold
from dmin.data import Dataset, Record, load_dataset, shard
from dmin.errors import CompressionError, DataError, UsageError
from dmin.models import Condition, Family, Pixels, attach_lora, check_condition, load_family, select_params
from dmin.models.hub import is_hub_id
from dmin.per_example import PerExampleGrads
from dmin.store import Identity, Project, paths
from dmin.store.project import SampleBatch, now_utc
from dmin.store.schema import FAILURES

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


def parse_vs(vs: Sequence[str | int]) -> tuple[str, ...]:
    out = []
    for v in vs or ("4096", "65536"):
        s = str(v).strip().lower()
        if s != "full" and not s.isdigit():
            raise UsageError(f"--v {v!r}: expected a power of two (e.g. 4096) or 'full'")
        out.append(s)
    return tuple(dict.fromkeys(out))


def _where(spec: str | Path) -> str:
    """How dmin.json records a model or adapter: a hub id as given, a local path made absolute."""
    return str(spec) if is_hub_id(str(spec)) else str(Path(spec).expanduser().resolve())


def prepare(
    model: str | Path,
    lora: str | Path | None = None,
    params: str | None = None,
    timesteps: int = 10,
    timestep_list: Sequence[float] | None = None,
    vs: Sequence[str | int] = (),
    noise_seed: int = 0,
    compress_seed: int = 0,
    device: str = "auto",
    dtype: str = "float32",
    storage_dtype: str = "float32",
    resolution: int | None = None,
    latent_shape: Sequence[int] | None = None,
) -> Setup:
    """Load the model (and adapter), choose parameters, and build the identity a project must have."""
    dtype = parse_dtype(dtype)
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


# A computed sample waiting for its commit: record, its samples-table extras, {v: (K, dim)}, norms, losses.
Pending = tuple[Record, dict[str, Any], dict[str, np.ndarray], np.ndarray, np.ndarray]


@dataclass
class CollectSummary:
    done: int = 0
    skipped: int = 0
    failed: int = 0
    seconds: float = 0.0
    bytes_written: int = 0
    total: int = 0
    shard: str = "0/1"
    batch_size: int = 0
    failures: list[dict[str, str]] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return {
            "done": self.done,
            "skipped": self.skipped,
            "failed": self.failed,
            "seconds": round(self.seconds, 3),
            "bytes_written": self.bytes_written,
            "total": self.total,
            "shard": self.shard,
            "batch_size": self.batch_size,
            "failures": self.failures[:20],
        }


def shard_from_env(shard_arg: str | None) -> tuple[int, int]:
    """--shard i/N, else torchrun's RANK/WORLD_SIZE, else 0/1."""
    if shard_arg:
        try:
            i, n = (int(x) for x in shard_arg.split("/"))
        except ValueError as exc:
            raise UsageError(f"--shard {shard_arg!r}: expected i/N, e.g. 0/4") from exc
        if not 0 <= i < n:
            raise UsageError(f"--shard {shard_arg}: need 0 ≤ i < N")
        return i, n
    if "RANK" in os.environ and "WORLD_SIZE" in os.environ:
        return int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"])
    return 0, 1


def collect(
    project_dir: str | Path,
    setup: Setup,
    data: str | Path | Dataset,
    limit: int | None = None,
    shard_arg: str | None = None,
    batch_size: int | str = "auto",
    commit_every: int = 64,
    strict: bool = False,
    progress: Callable[[CollectSummary], None] | None = None,
    on_note: Callable[[str], None] | None = None,
    include_forgotten: bool = False,
) -> CollectSummary:
    """Collect gradients of every not-yet-committed sample of this shard into the project (resumable).

    Samples go through in fixed windows of `batch_size` over the shard's records (the not-yet-committed ones of a
    window form one pass), and commits happen only between windows, so a run killed at any instant and resumed
    computes exactly the passes an uninterrupted run would: the project ends bit-identical. A sample that fails
    (unreadable, a label the model lacks, a non-finite gradient) becomes a failures row; the rest of its pass is
    committed. Out of memory in a pass halves it and goes on (`on_note` says so). Forgotten samples are skipped
    unless `include_forgotten`."""
    ds = data if isinstance(data, Dataset) else load_dataset(data)
    check_condition(setup.family, ds.has_caption, ds.has_label)
    requested = parse_batch_size(batch_size)
    if commit_every < 1:
        raise UsageError(f"--commit-every {commit_every}: commit at least every 1 sample")
    if limit is not None and limit < 0:
        raise UsageError(f"--limit {limit}: expected a number of samples ≥ 0")
    index, count = shard_from_env(shard_arg)  # before anything is created: a bad --shard leaves no project behind
    data_path = str(ds.path.resolve())
    created = not Project.exists(project_dir)
    project = Project.create(project_dir, replace(setup.identity, data_path=data_path))
    records = ds.records[:limit] if limit is not None else ds.records
    mine = [r for _, r in shard(records, index, count)]
    summary = CollectSummary(total=len(mine), shard=f"{index}/{count}")
    start = time.perf_counter()
    ids = [r.sample_id for r in mine]  # content hashes: reading and hashing the data is the floor of a rerun
    skip = project.committed(ids, include_forgotten)  # one vectorized lookup, however many samples
    done_now: set[str] = set()  # collected by this run (a data set's duplicates are stored once)
    engine = GradientEngine(setup)
    pending: list[Pending] = []
    failures: list[tuple[str, str]] = []

    def fail(rec: Record, exc: DataError) -> None:
        if strict:
            raise exc
        failures.append((rec.source, str(exc)))
        summary.failed += 1
        summary.failures.append({"source": rec.source, "reason": str(exc)})

    def flush() -> None:
        if pending:
            entry = project.commit_samples(_batch(pending, setup.identity), data_path, include_forgotten)
            if entry is not None:
                summary.bytes_written += sum(f.bytes for f in entry.files)
            pending.clear()
        if failures:
            table = pa.table(
                {
                    "source": [s for s, _ in failures],
                    "reason": [r for _, r in failures],
                    "created_at": pa.array([now_utc()] * len(failures), FAILURES.field("created_at").type),
                },
                schema=FAILURES,
            )
            entry = project.commit("failures", [("failures", None, "failures", table)])
            summary.bytes_written += sum(f.bytes for f in entry.files)
            failures.clear()

    try:
        size = requested or 1
        if skip.all():  # every sample is committed already: nothing to load, probe or pass
            summary.skipped = len(mine)
        else:
            probe = engine.footprint(*_blank(setup))
            size = choose_batch_size(requested, probe, setup.identity.K, setup.device)
        summary.batch_size = size
        step = size  # shrinks when a pass runs out of memory; the windows stay fixed
        for lo in range(0, len(mine) if not skip.all() else 0, size):
            ready: list[tuple[Record, Pixels, torch.Tensor, Condition]] = []
            for i in range(lo, min(lo + size, len(mine))):
                rec = mine[i]
                if skip[i] or ids[i] in done_now:
                    summary.skipped += 1
                    continue
                try:
                    pixels = setup.family.pixels(rec.image())
                    cond = setup.family.encode_condition(rec.caption, rec.label, pixels)
                    ready.append((rec, pixels, setup.family.encode_image(pixels), cond))
                except DataError as exc:
                    fail(rec, exc)
            at = 0
            while at < len(ready):
                part = ready[at : at + step]
                try:
                    vecs, norms, losses = engine.run(
                        torch.cat([x0 for _, _, x0, _ in part]), Condition.cat([c for *_, c in part])
                    )
                except Exception as exc:
                    if not is_out_of_memory(exc) or step == 1:
                        raise
                    step = max(1, len(part) // 2)
                    if setup.device.type == "cuda":
                        torch.cuda.empty_cache()
                    if on_note:
                        on_note(f"out of memory with {len(part)} samples per pass; going on with {step}")
                    continue
                for j, (rec, pixels, _, _) in enumerate(part):
                    if not (np.isfinite(norms[j]).all() and np.isfinite(losses[j]).all()) or (norms[j] == 0).any():
                        fail(rec, DataError(
                            f"{rec.source}: non-finite or zero gradient norm/loss (NaN weights or a degenerate sample)"
                        ))
                        continue
                    sample = {v: rows[j] for v, rows in vecs.items()}
                    pending.append((rec, {**rec.extra, **setup.family.record(pixels)}, sample, norms[j], losses[j]))
                    done_now.add(rec.sample_id)
                    summary.done += 1
                at += len(part)
            if len(pending) >= commit_every:
                flush()
            summary.seconds = time.perf_counter() - start
            if progress:
                progress(summary)
        if progress and skip.all():
            progress(summary)
        if summary.failed and not summary.done and not summary.skipped:
            raise DataError(
                f"none of the {summary.total} sample(s) could be collected: {summary.failed} failed "
                f"(e.g. {summary.failures[0]['reason']}); fix the data and run again"
            )
        flush()
    except Exception:
        if created and not project.state().seq:  # a project this run made, nothing committed: leave no shell
            _unmake(project.root)
        elif failures:
            flush()  # what failed stays on record in the project that existed
        raise
    finally:
        engine.close()
    summary.seconds = time.perf_counter() - start
    return summary


def _unmake(root: Path) -> None:
    """Remove the empty project a failed first run created: its dmin.json and empty folders only, never a file
    another writer may have staged meanwhile (then the project stays, valid and empty)."""
    (root / paths.IDENTITY).unlink(missing_ok=True)
    for folder in sorted((p for p in root.rglob("*") if p.is_dir()), key=lambda p: -len(p.parts)):
        with contextlib.suppress(OSError):
            folder.rmdir()
    with contextlib.suppress(OSError):
        root.rmdir()


def _blank(setup: Setup) -> tuple[torch.Tensor, Condition]:
    """An x0 and condition of the model's shapes, for measuring a pass (contents do not change its memory)."""
    fam = setup.family
    x0 = torch.zeros((1, *setup.identity.latent_shape), device=setup.device)
    return x0, fam.encode_condition("", 0 if fam.needs_label else None)


def _batch(pending: list[Pending], ident: Identity) -> SampleBatch:
    keys = sorted({k for _, extra, *_ in pending for k in extra})
    return SampleBatch(
        sample_ids=[rec.sample_id for rec, *_ in pending],
        sources=[rec.source for rec, *_ in pending],
        captions=[rec.caption for rec, *_ in pending],
        labels=[rec.label for rec, *_ in pending],
        extra={k: [extra.get(k) for _, extra, *_ in pending] for k in keys},
        timesteps=ident.timesteps,
        vecs={v: np.stack([vecs[v] for _, _, vecs, _, _ in pending]) for v in ident.collect_vs},
        norms=np.stack([n for *_, n, _ in pending]),
        losses=np.stack([ls for *_, ls in pending]),
    )


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


__all__ = ["CollectSummary", "GradientEngine", "Setup", "collect", "fixed_noise", "prepare", "query_gradients"]
