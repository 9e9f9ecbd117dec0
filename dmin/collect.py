"""Per-sample gradients streamed through the compressor into the database (DESIGN §1.1–1.6).

For each sample and each of the K timesteps: the loss with the fixed noise ε_k, one backward pass, and a
post-accumulate-grad hook on every selected parameter that feeds its gradient to `Compressor.stream` and frees it
at once — so memory never holds K×n, nor a flattened copy of the gradient unless v=full is asked. The norm comes
from the same pass. The largest v is computed; smaller ones are folded from it.
"""

from __future__ import annotations

import math
import os
import time
from collections.abc import Callable, Sequence
from contextlib import nullcontext
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import torch
import xxhash

from dmin.compress import Compressor, fold
from dmin.data import Dataset, Record, load_dataset, shard
from dmin.errors import DataError, UsageError
from dmin.models import Condition, Family, check_condition, load_family, load_lora, select_params
from dmin.store import Identity, Project
from dmin.store.project import SampleBatch, now_utc
from dmin.store.schema import FAILURES

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def fixed_noise(shape: Sequence[int], noise_seed: int, k: int) -> torch.Tensor:
    """ε_k: the same Gaussian tensor for every sample and query, on every device (drawn on the CPU)."""
    gen = torch.Generator("cpu").manual_seed(noise_seed * 1_000_003 + k)
    return torch.randn((1, *shape), generator=gen)


@dataclass
class Setup:
    """A loaded model with its selected parameters, compressor and identity: what collect and query share."""

    family: Family
    params: list[tuple[str, torch.nn.Parameter]]
    identity: Identity
    compressor: Compressor
    device: torch.device
    autocast: torch.dtype | None


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


def prepare(
    model: str | Path,
    lora: str | Path | None = None,
    params: str | None = None,
    timesteps: int = 10,
    timestep_list: Sequence[float] | None = None,
    vs: Sequence[str | int] = (),
    noise_seed: int = 0,
    compress_seed: int = 0,
    device: str = "cpu",
    dtype: str = "float32",
    storage_dtype: str = "float32",
) -> Setup:
    """Load the model (and adapter), choose parameters, and build the identity a project must have."""
    if dtype not in DTYPES:
        raise UsageError(f"--dtype {dtype!r}: choose float32, bfloat16 or float16")
    dev = torch.device(device)
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise UsageError("--device cuda: no CUDA device is available; use --device cpu")
    fam = load_family(model)
    adapter = load_lora(fam, lora) if lora else None
    chosen = select_params(fam, lora is not None, params)
    n = sum(p.numel() for _, p in chosen)
    comp = Compressor(n, compress_seed)
    want = parse_vs(vs)
    caps = [v if v == "full" else str(min(int(v), comp.D)) for v in want]
    for v in caps:
        if v != "full":
            comp.check_v(int(v))
    ts = list(timestep_list) if timestep_list else fam.default_timesteps(timesteps)
    if not ts or any(t < 0 or t >= fam.num_train_timesteps for t in ts):
        raise UsageError(f"timesteps must lie in [0, {fam.num_train_timesteps}); got {ts}")
    fam.to(dev, DTYPES[dtype])
    ident = Identity(
        model_family=fam.name,
        model_fingerprint=fam.fingerprint,  # type: ignore[attr-defined]
        adapter_fingerprint=adapter,
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
        model_path=str(Path(model).resolve()),
        lora_path=str(Path(lora).resolve()) if lora else None,
    )
    autocast = DTYPES[dtype] if dtype != "float32" else None
    return Setup(fam, chosen, ident, comp, dev, autocast)


class GradientEngine:
    """Computes one sample's K compressed, normalized gradients with hooks that stream into the compressor."""

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
        self._acc: Any = None
        self._full: torch.Tensor | None = None
        self._sumsq = 0.0
        self._handles = [p.register_post_accumulate_grad_hook(self._hook(name)) for name, p in setup.params]
        self.noise = [fixed_noise(ident.latent_shape, ident.noise_seed, k) for k in range(ident.K)]

    def _hook(self, name: str) -> Callable[[torch.Tensor], None]:
        offset = self.offsets[name]

        def hook(p: torch.Tensor) -> None:
            g = p.grad
            if g is None:
                return
            if self._acc is not None:
                self._acc.add(offset, g)
            else:
                self._sumsq += float(g.double().pow(2).sum())
            if self._full is not None:
                self._full[offset : offset + g.numel()] = g.reshape(-1).to(self._full.dtype)
            p.grad = None  # freed at once: never K×n, never a full copy

        return hook

    def close(self) -> None:
        for h in self._handles:
            h.remove()

    def sample(self, x0: torch.Tensor, cond: Condition) -> tuple[dict[str, np.ndarray], np.ndarray, np.ndarray]:
        """({v: (K, v)}, norms (K,), losses (K,)) for one sample; vectors normalized by the raw norm."""
        s = self.setup
        K = s.identity.K
        out: dict[str, list[np.ndarray]] = {v: [] for v in s.identity.collect_vs}
        norms, losses = np.zeros(K), np.zeros(K)
        for k, t in enumerate(s.identity.timesteps):
            eps = self.noise[k].to(s.device)
            x_t, target = s.family.noisy_and_target(x0, eps, t)
            self._acc = s.compressor.stream(self.vmax, device=s.device) if self.vmax else None
            self._sumsq = 0.0
            self._full = torch.zeros(s.identity.n, dtype=torch.float32, device=s.device) if self.want_full else None
            ctx = torch.autocast(s.device.type, dtype=s.autocast) if s.autocast else nullcontext()
            with ctx:
                pred = s.family.predict(x_t, t, cond)
            loss = torch.nn.functional.mse_loss(pred.float(), target.float())
            loss.backward()
            sumsq = self._acc.sumsq if self._acc is not None else self._sumsq
            norm = math.sqrt(sumsq)
            norms[k], losses[k] = norm, float(loss.detach())
            scale = 1.0 / norm if norm > 0 and math.isfinite(norm) else float("nan")
            if self._acc is not None:
                big = self._acc.finish() * scale
                out[str(self.vmax)].append(big.cpu().numpy())
                for v in self.folds:
                    out[str(v)].append(fold(big, v).cpu().numpy())
            if self._full is not None:
                out["full"].append((self._full * scale).cpu().numpy())
        self._acc, self._full = None, None
        return {v: np.stack(rows) for v, rows in out.items()}, norms, losses


@dataclass
class CollectSummary:
    done: int = 0
    skipped: int = 0
    failed: int = 0
    seconds: float = 0.0
    bytes_written: int = 0
    total: int = 0
    shard: str = "0/1"
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
    batch_size: int = 16,
    strict: bool = False,
    progress: Callable[[CollectSummary], None] | None = None,
    include_forgotten: bool = False,
) -> CollectSummary:
    """Collect gradients of every not-yet-committed sample of this shard into the project (resumable); forgotten
    samples are skipped unless `include_forgotten`."""
    ds = data if isinstance(data, Dataset) else load_dataset(data)
    check_condition(setup.family, ds.has_caption, ds.has_label)
    if batch_size < 1:
        raise UsageError("--batch-size must be at least 1")
    data_path = str(ds.path.resolve())
    project = Project.create(project_dir, replace(setup.identity, data_path=data_path))
    index, count = shard_from_env(shard_arg)
    records = ds.records[:limit] if limit is not None else ds.records
    mine = [r for _, r in shard(records, index, count)]
    summary = CollectSummary(total=len(mine), shard=f"{index}/{count}")
    start = time.perf_counter()
    done_ids = project.skip_ids(include_forgotten)
    engine = GradientEngine(setup)
    pending: list[tuple[Record, dict[str, np.ndarray], np.ndarray, np.ndarray]] = []
    failures: list[tuple[str, str]] = []

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
        for rec in mine:
            sid = rec.sample_id
            if sid in done_ids:
                summary.skipped += 1
            else:
                try:
                    x0 = setup.family.encode_image(rec.image())
                    cond = setup.family.encode_condition(rec.caption, rec.label)
                    vecs, norms, losses = engine.sample(x0, cond)
                    if not (np.isfinite(norms).all() and np.isfinite(losses).all()) or (norms == 0).any():
                        raise DataError(
                            f"{rec.source}: non-finite or zero gradient norm/loss (NaN weights or a degenerate sample)"
                        )
                    pending.append((rec, vecs, norms, losses))
                    done_ids.add(sid)
                    summary.done += 1
                except DataError as exc:
                    if strict:
                        raise
                    failures.append((rec.source, str(exc)))
                    summary.failed += 1
                    summary.failures.append({"source": rec.source, "reason": str(exc)})
                if len(pending) >= batch_size:
                    flush()
            summary.seconds = time.perf_counter() - start
            if progress:
                progress(summary)
        flush()
    finally:
        engine.close()
    summary.seconds = time.perf_counter() - start
    return summary


def _batch(pending: list[tuple[Record, dict[str, np.ndarray], np.ndarray, np.ndarray]], ident: Identity) -> SampleBatch:
    keys = sorted({k for rec, *_ in pending for k in rec.extra})
    return SampleBatch(
        sample_ids=[rec.sample_id for rec, *_ in pending],
        sources=[rec.source for rec, *_ in pending],
        captions=[rec.caption for rec, *_ in pending],
        labels=[rec.label for rec, *_ in pending],
        extra={k: [rec.extra.get(k) for rec, *_ in pending] for k in keys},
        timesteps=ident.timesteps,
        vecs={v: np.stack([vecs[v] for _, vecs, _, _ in pending]) for v in ident.collect_vs},
        norms=np.stack([n for *_, n, _ in pending]),
        losses=np.stack([ls for *_, ls in pending]),
    )


def query_gradients(
    setup: Setup, image: Any, caption: str | None, label: int | None
) -> tuple[dict[str, np.ndarray], np.ndarray, np.ndarray]:
    """A query image's gradients by exactly the collection path (same identity, noise, compressor)."""
    check_condition(setup.family, caption is not None, label is not None)
    engine = GradientEngine(setup)
    try:
        x0 = setup.family.encode_image(image)
        return engine.sample(x0, setup.family.encode_condition(caption, label))
    finally:
        engine.close()


__all__ = ["CollectSummary", "GradientEngine", "Setup", "collect", "fixed_noise", "prepare", "query_gradients"]
