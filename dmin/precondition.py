"""Preconditioned scoring: the inverse Gram matrix of the stored vectors (TRAK's and D-TRAK's ingredient).

Per timestep k the stored vectors Φ_k (one unit row of length v per sample) give the Gram matrix G_k = Φ_kᵀΦ_k and
the preconditioner P_k = (G_k + λ·μ_k·I)⁻¹, where μ_k = tr(G_k) / v is G_k's mean eigenvalue: λ is relative, so one
value damps alike at any N or v. A query's vector q_k becomes P_k q_k and is scored as usual, since
⟨P_k q_k, φ_k(i)⟩ = q_kᵀ P_k φ_k(i): exact scoring, the hnswlib index and the stored vectors stay as they are.
Directions that many samples share are damped, so a sample scores high for what it alone shares with the query.

G is a sum over samples, so a build costs what changed: it adds the samples committed since the last build and
subtracts the forgotten ones (their vectors lie in the grads files until `compact`, which updates every
preconditioner before it drops them, so no forgotten sample's bytes stay in G). Each build is a folder
precondition/v=V/<token>/ committed through the manifest (kind `precondition`), superseding the previous one:
gram.npy (K, v, v) float64, inverse.npy (K, v, v) float32, samples.parquet (the sample_ids in G) and
precondition.json.
"""

from __future__ import annotations

import json
import shutil
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from dmin.errors import IndexStale, IntegrityError, UsageError
from dmin.findings import Findings
from dmin.store import paths
from dmin.store.atomic import write_atomic, write_bytes_atomic, write_parquet_atomic
from dmin.store.builds import commit_build
from dmin.store.keys import KeySet
from dmin.store.manifest import Entry, FileRef
from dmin.store.project import Project
from dmin.store.vectors import iter_blocks
from dmin.vs import resolve_v

MAX_V = 4096  # G and its inverse take K·v²·12 bytes: 2 GB at v = 4096, K = 10; 8 GB at 8192
DEFAULT_LAMBDA = 1.0  # chosen by scripts/eval_counterfactual.py over {0.1, 1} (README "Attribution quality")
TABLES = tuple(paths.PRECONDITION_FILES)


@dataclass
class Preconditioner:
    """One committed build for v: its metadata and the sample_ids in G; the matrices load when first used."""

    files: dict[str, FileRef]  # TABLES → the build's committed files
    meta: dict[str, Any]
    held: pa.Array  # sample_ids whose vectors are summed in G
    inverse: np.ndarray | None = None  # (K, v, v) float32, loaded by `apply`
    missing: tuple[tuple[int, int], int] | None = None  # (samples_version, stale count) once computed

    def apply(self, project: Project, query: np.ndarray) -> np.ndarray:
        """(K, v) query vectors → P_k q_k for each timestep k."""
        if self.inverse is None:
            self.inverse = np.load(project.checked(self.files["precondition"]), allow_pickle=False)
        q = np.asarray(query, dtype=np.float32)
        return np.einsum("kij,kj->ki", self.inverse, q).astype(np.float32)


def current(project: Project, v: str) -> Preconditioner | None:
    """The latest committed build for v (kept by the Project while it stays current), or None."""
    metas = project.live_files("precondition_meta", v)
    if not metas:
        return None
    meta_ref = metas[-1]
    folder = meta_ref.path.rsplit("/", 1)[0]
    cached = project.preconditioners.get(v)
    if cached is not None and cached.files["precondition_meta"].path == meta_ref.path:
        return cached
    files = {f.table: f for t in TABLES for f in project.live_files(t, v) if f.path.rsplit("/", 1)[0] == folder}
    if set(files) != set(TABLES):
        raise IntegrityError(f"{folder}: preconditioner build is incomplete; run `dmin precondition --v {v} --rebuild`")
    try:
        meta = json.loads(project.checked(meta_ref).read_text(errors="replace"))
        held = pq.read_table(project.checked(files["precondition_samples"])).column("sample_id").combine_chunks()
    except (OSError, ValueError, pa.ArrowException) as exc:
        raise IntegrityError(
            f"preconditioner for v={v} is unreadable ({exc}); run `dmin precondition --v {v} --rebuild`"
        ) from exc
    if meta.get("identity_hash") != project.identity.hash():
        raise IntegrityError(
            f"preconditioner for v={v} was built for a different identity; run `dmin precondition --v {v} --rebuild`"
        )
    project.preconditioners[v] = Preconditioner(files, meta, held)
    return project.preconditioners[v]


def stale_count(project: Project, pre: Preconditioner) -> int:
    """Samples committed since the build plus samples forgotten since: how far G is from the live samples'."""
    version = project.samples_version()
    if pre.missing is None or pre.missing[0] != version:
        keys = project.sample_keys()
        kept = int(keys.contains(pre.held).sum())
        pre.missing = (version, (len(pre.held) - kept) + (len(keys) - kept))
    return pre.missing[1]


def for_query(project: Project, v: str, allow_stale: bool = False) -> Preconditioner:
    """The preconditioner a `--precondition` query uses; refused when missing, or stale unless allowed."""
    pre = current(project, v)
    if pre is None:
        raise UsageError(f"no preconditioner for v={v}; build one with `dmin precondition {project.root} --v {v}`")
    stale = stale_count(project, pre)
    if stale and not allow_stale:
        raise IndexStale(
            f"the preconditioner for v={v} is stale ({stale} sample(s) committed or forgotten since it was built); "
            f"run `dmin precondition {project.root} --v {v}`, or pass --allow-stale"
        )
    return pre


def build_preconditioner(
    project: Project,
    v: str | int,
    lam: float | None = None,
    rebuild: bool = False,
    progress: Callable[[int, int], None] | None = None,
) -> tuple[Entry | None, dict[str, Any]]:
    """Build (or bring up to date) the preconditioner for v; returns the new manifest entry (None when already
    current) and {added, removed, count, lambda}. `lam` defaults to the current build's, else DEFAULT_LAMBDA; a
    new λ only re-inverts G."""
    v = _check_v(project, v)
    if lam is not None and not (lam > 0 and np.isfinite(lam)):
        raise UsageError(f"--lambda {lam}: expected a positive number such as {DEFAULT_LAMBDA}")
    while True:
        old = current(project, v)
        prev = None if rebuild else old
        lam_now = lam if lam is not None else float(prev.meta["lambda"]) if prev else DEFAULT_LAMBDA
        if prev is not None and not stale_count(project, prev) and float(prev.meta["lambda"]) == lam_now:
            return None, {"added": 0, "removed": 0, "count": len(prev.held), "lambda": lam_now}
        built = write_update(project, v, prev, lam_now, add=True, progress=progress)
        if built is None:
            raise UsageError(f"no committed samples at v={v}: collect some before `dmin precondition`")
        folder, written, info = built
        meta = {"v": v, "count": info["count"], "lambda": info["lambda"]}
        entry = commit_build(project, "precondition", v, lambda: current(project, v), old, folder, written, meta)
        if entry is not None:
            return entry, info
        # another build for v was committed first: redo on top of it


def _check_v(project: Project, v: str | int) -> str:
    if str(v).strip().lower() == "full":
        raise UsageError("precondition a compressed v (e.g. --v 256): v=full's Gram matrix would be D × D")
    v = resolve_v(project, v)
    if v == "full" or int(v) > MAX_V:
        raise UsageError(
            f"--v {v}: a preconditioner holds K Gram matrices of v × v float64 plus their inverses "
            f"({project.identity.K * int(v) ** 2 * 12 / 2**30:.1f} GiB here); use v ≤ {MAX_V} (derive one with "
            f"`dmin compress --v {MAX_V}`)"
        )
    return v


def write_update(
    project: Project,
    v: str,
    prev: Preconditioner | None,
    lam: float,
    add: bool = True,
    progress: Callable[[int, int], None] | None = None,
) -> tuple[Path, list[tuple[str, Path]], dict[str, Any]] | None:
    """Write a new build for v into a new folder, not committed: prev's G minus the samples no longer live, plus
    (when `add`) the live samples it lacks; with no prev, G over every live sample. None when G would hold no
    sample. A forgotten sample whose vectors are gone already (a compact without this module) forces a full sum."""
    K, dim = project.identity.K, int(v)
    keys = project.sample_keys()
    if prev is not None:
        held = KeySet.of(prev.held)
        gone = ~keys.contains(prev.held)
        gram = np.load(project.checked(prev.files["precondition_gram"]), allow_pickle=False)
    else:
        held, gone, gram = KeySet(), np.zeros(0, bool), np.zeros((K, dim, dim), np.float64)
    removing = KeySet.of(prev.held.filter(pa.array(gone))) if prev is not None else KeySet()
    added_ids: list[pa.Array] = []
    removed = 0
    total = len(keys) if prev is None else int(gone.sum()) + max(0, len(keys) - (len(prev.held) - int(gone.sum())))
    for block in iter_blocks(project, v, keep=False):
        live = keys.contains(block.keys)
        if block.alive is not None:
            live &= block.alive
        if len(removing):
            out = ~live & removing.contains(block.keys)
            if out.any():
                at = np.flatnonzero(out)
                _accumulate(gram, block.vecs[at], -1.0)
                removing.remove(block.keys.take(pa.array(at)))  # once per sample, however many rows held it
                removed += len(at)
        if add:
            new = live & ~held.contains(block.keys) if len(held) else live
            if new.any():
                at = np.flatnonzero(new)
                _accumulate(gram, block.vecs[at], 1.0)
                added_ids.append(block.keys.take(pa.array(at)))
        if progress:
            progress(removed + sum(len(a) for a in added_ids), total)
    if len(removing):  # vectors no longer on disk: G cannot be corrected, so it is summed again
        return write_update(project, v, None, lam, add=True, progress=progress) if prev is not None else None
    kept = prev.held.filter(pa.array(~gone)) if prev is not None else pa.array([], pa.string())
    samples = pa.concat_arrays([kept.cast(pa.string()), *[a.cast(pa.string()) for a in added_ids]])
    if not len(samples):
        return None
    inverse = invert(gram, lam)
    meta = {
        "v": v,
        "K": K,
        "lambda": lam,
        "lambda_relative_to": "mean eigenvalue tr(G_k)/v",
        "count": len(samples),
        "identity_hash": project.identity.hash(),
    }
    folder, written = _save(project, v, gram, inverse, samples, meta)
    info = {"added": sum(len(a) for a in added_ids), "removed": removed, "count": len(samples), "lambda": lam}
    return folder, written, info


def _accumulate(gram: np.ndarray, vecs: np.ndarray, sign: float) -> None:
    """gram[k] += sign · Σ_i x_ik x_ikᵀ over the rows of vecs (n, K, v), in float64 so a later subtraction of the
    same rows cancels to rounding."""
    x = np.asarray(vecs, dtype=np.float64)
    for k in range(x.shape[1]):
        xk = x[:, k, :]
        gram[k] += sign * (xk.T @ xk)


def invert(gram: np.ndarray, lam: float) -> np.ndarray:
    """(G_k + λ·tr(G_k)/v·I)⁻¹ for each k, float32 (symmetric positive definite: solved by Cholesky)."""
    K, dim, _ = gram.shape
    out = np.empty((K, dim, dim), np.float32)
    eye = np.eye(dim)
    for k in range(K):
        mu = max(float(np.trace(gram[k])) / dim, 1e-12)
        a = gram[k] + lam * mu * eye
        chol = np.linalg.cholesky(a)
        inv_l = np.linalg.solve(chol, eye)
        out[k] = inv_l.T @ inv_l
    return out


def _save(
    project: Project, v: str, gram: np.ndarray, inverse: np.ndarray, samples: pa.Array, meta: dict[str, Any]
) -> tuple[Path, list[tuple[str, Path]]]:
    folder = project.root / paths.precondition_dir(v, uuid.uuid4().hex[:12])
    folder.mkdir(parents=True, exist_ok=True)
    names = paths.PRECONDITION_FILES
    try:
        write_atomic(folder / names["precondition_gram"], lambda tmp: _save_npy(tmp, gram))
        write_atomic(folder / names["precondition"], lambda tmp: _save_npy(tmp, inverse))
        write_parquet_atomic(folder / names["precondition_samples"], pa.table({"sample_id": samples}))
        text = json.dumps(meta, indent=2, sort_keys=True) + "\n"
        write_bytes_atomic(folder / names["precondition_meta"], text.encode())
    except BaseException:
        shutil.rmtree(folder, ignore_errors=True)
        raise
    return folder, [(table, folder / name) for table, name in names.items()]


def _save_npy(path: Path, array: np.ndarray) -> None:
    with open(path, "wb") as f:
        np.save(f, array, allow_pickle=False)


Build = tuple[Path, list[tuple[str, Path]], dict[str, Any]]  # a written, uncommitted build: folder, files, info


def erase_forgotten(project: Project, pre: Preconditioner) -> Build | None:
    """For `compact`: a new build without the forgotten samples (their vectors subtracted while the grads files
    still hold them), adding nothing; None when G holds no forgotten sample."""
    if not (~project.sample_keys().contains(pre.held)).any():
        return None
    return write_update(project, str(pre.meta["v"]), pre, float(pre.meta["lambda"]), add=False)


def check_preconditioners(project: Project, ver: Findings) -> None:
    """`verify`'s checks: each build readable, for this identity, its sample list as long as it says; stale warned.
    (Sizes and checksums are the file checks' job.)"""
    for v in project.identity.vs:
        if v == "full" or not project.live_files("precondition_meta", v):
            continue
        try:
            pre = current(project, v)
        except IntegrityError as exc:
            ver.defect("precondition", f"precondition/v={v}", str(exc))
            continue
        if pre is None:
            continue
        ver.checked["preconditioners"] += 1
        if int(pre.meta.get("count", -1)) != len(pre.held):
            ver.defect("precondition", pre.files["precondition_samples"].path, "sample count differs from its json")
            continue
        if ver.deep:
            try:
                inverse = np.load(project.checked(pre.files["precondition"]), allow_pickle=False)
                ok = inverse.shape == (project.identity.K, int(v), int(v)) and bool(np.isfinite(inverse).all())
            except (OSError, ValueError) as exc:
                ok = False
                ver.defect("precondition", pre.files["precondition"].path, f"unreadable: {exc}")
                continue
            if not ok:
                ver.defect("precondition", pre.files["precondition"].path, "inverse is not K finite v × v matrices")
                continue
        stale = stale_count(project, pre)
        if stale:
            ver.warn(
                "precondition", f"precondition/v={v}", f"stale: {stale} sample(s) changed; run `dmin precondition`"
            )
