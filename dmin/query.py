"""Attribute a generated image: its gradients by the collection path, then exact or kNN top-k, stored for SQL.

The query's gradients use the project's identity (model, adapter, timesteps, noise, compressor); a model that
differs from the project's is refused. Query vectors go to `queries/grads`, metadata to `queries`, and the top-k
to `results`, all in one commit.
"""

from __future__ import annotations

import io
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import xxhash
from PIL import Image

from dmin.data import read_jsonl
from dmin.errors import DataError, DminError, UsageError
from dmin.gradients import PrepareOptions, Setup, prepare, query_gradients
from dmin.index import current_index, knn, stale_count
from dmin.models import StepCallback, check_condition
from dmin.precondition import for_query
from dmin.score import exact_scores
from dmin.store import Project, paths
from dmin.store.atomic import write_atomic
from dmin.store.project import Commit, Stage, now_utc
from dmin.store.tables import grads_table, queries_table, results_table
from dmin.vs import complete, resolve_v


@dataclass
class QuerySpec:
    """One query: an image (path or PIL) or a seed to generate one, and its condition. Checked on construction, so
    a bad query fails before any model is loaded."""

    image: str | Path | Image.Image | None = None
    prompt: str | None = None
    label: int | None = None
    seed: int | None = None
    query_id: str | None = None

    def __post_init__(self) -> None:
        if self.image is not None and not isinstance(self.image, str | Path | Image.Image):
            raise UsageError(f"image must be a file path or a PIL image, got {type(self.image).__name__}")
        for name in ("prompt", "query_id"):
            value = getattr(self, name)
            if value is not None and not isinstance(value, str):
                raise UsageError(f"{name} must be a string, got {type(value).__name__} {value!r}")
        for name, what in (("label", "a class index (0, 1, …)"), ("seed", "a non-negative integer")):
            value = getattr(self, name)
            if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 0):
                raise UsageError(f"{name} must be {what}, got {value!r}")
        if self.image is None and self.seed is None:
            raise UsageError("a query needs an image to attribute (--image), or a seed to generate one (--seed)")
        if self.image is not None and self.seed is not None:
            raise UsageError("a query takes an image or a seed, not both: the seed generates the image to attribute")


QUERY_KEYS = ("image", "prompt", "label", "seed", "query_id")
PNG_MODES = frozenset({"1", "L", "LA", "P", "RGB", "RGBA", "I;16"})  # the query_id hashes PNG bytes; others as RGB


def read_queries(path: str | Path) -> list[QuerySpec]:
    """Queries from a JSONL file, one object per line with keys from QUERY_KEYS; relative image paths are taken
    from the file's folder. Every problem is a DataError naming the file and line."""
    path = Path(path)
    if not path.is_file():
        what = "is a directory" if path.is_dir() else "no such file"
        raise DataError(f"--queries {path}: {what}; pass a JSONL file with one query object per line")
    specs = []
    for where, row in read_jsonl(path, '{"image": "gen.png", "label": 3}'):
        unknown = sorted(set(row) - set(QUERY_KEYS))
        if unknown:
            raise DataError(f"{where}: unknown key {unknown[0]!r}; the keys are {', '.join(QUERY_KEYS)}")
        image = row.get("image")
        if isinstance(image, str) and image and not Path(image).is_absolute():
            image = str(path.parent / image)
        try:
            specs.append(QuerySpec(image=image, **{k: row.get(k) for k in QUERY_KEYS[1:]}))
        except UsageError as exc:
            raise DataError(f"{where}: {exc}") from exc
    if not specs:
        raise DataError(f"--queries {path}: holds no queries; write one JSON object per line")
    return specs


@dataclass
class QueryResult:
    query_id: str
    method: str
    v: str
    image_path: str | None
    results: list[dict[str, Any]] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return {
            "query_id": self.query_id,
            "method": self.method,
            "v": self.v,
            "image": self.image_path,
            "results": self.results,
        }


def open_for_query(
    project_dir: str | Path,
    model: str | None = None,
    lora: str | None = None,
    device: str = "auto",
    dtype: str | None = None,
) -> tuple[Project, Setup]:
    """Open the project and load its model; refuse when the model's identity differs from the project's.

    The compute dtype defaults to the one the project was collected with; another one is refused with the field
    diff (bfloat16 and float32 gradients differ by far more than compression error)."""
    project = Project.open(project_dir)
    ident = project.identity
    model = model or ident.model_path
    if not model:
        raise UsageError("the project records no model path; pass --model DIR")
    options = PrepareOptions(
        lora=lora or ident.lora_path,
        params=ident.param_filter,
        timestep_list=ident.timesteps,
        vs=ident.collect_vs,
        noise_seed=ident.noise_seed,
        compress_seed=ident.compress_seed,
        device=device,
        dtype=dtype or ident.compute_dtype or "float32",
        storage_dtype=ident.dtype,
        latent_shape=ident.latent_shape,
    )
    setup = prepare(model, options)
    ident.check_matches(setup.identity)
    return project, setup


def run_query(
    project: Project,
    setup: Setup,
    spec: QuerySpec,
    k: int = 10,
    v: str | None = None,
    method: str = "auto",
    ef: int = 100,
    allow_stale: bool = False,
    on_step: StepCallback | None = None,
    precondition: bool = False,
) -> QueryResult:
    """Attribute one query; `on_step(done, total)` follows image generation when the spec asks for it.
    `precondition` scores with the project's preconditioner for v (`dmin.precondition`)."""
    v = _check(project, k, v, method)
    image, image_path = _query_image(project, setup, spec, on_step)
    buf = io.BytesIO()
    image.save(buf, format="PNG") if image.mode in PNG_MODES else image.convert("RGB").save(buf, format="PNG")
    cond = json.dumps({"prompt": spec.prompt, "label": spec.label}, sort_keys=True).encode()
    query_id = spec.query_id or "q-" + xxhash.xxh3_64_hexdigest(buf.getvalue() + b"\0" + cond)
    if image_path is None and spec.seed is not None:
        image_path = _save_generated(project, query_id, image)
    vecs, norms, losses = query_gradients(setup, image, spec.prompt, spec.label)
    return attribute(
        project, query_id, spec, vecs, norms, losses, image_path, k, v, method, ef, allow_stale, precondition
    )


def _check(project: Project, k: int, v: str | None, method: str) -> str:
    """The stored v a query uses, after checking its settings (before any model work)."""
    if method not in ("auto", "exact", "knn"):
        raise UsageError(f"method {method!r}: choose auto, exact or knn")
    if k < 1:
        raise UsageError("--k must be at least 1")
    v = resolve_v(project, v)
    if method == "knn" and v == "full":
        raise UsageError("v=full is scored exactly (indexes hold compressed v's); drop --knn or pass a compressed --v")
    return v


def attribute(
    project: Project,
    query_id: str,
    spec: QuerySpec,
    vecs: dict[str, np.ndarray],
    norms: np.ndarray,
    losses: np.ndarray,
    image_path: str | None = None,
    k: int = 10,
    v: str | None = None,
    method: str = "auto",
    ef: int = 100,
    allow_stale: bool = False,
    precondition: bool = False,
) -> QueryResult:
    """Everything a query does once it has its gradients (v → (K, dim) vectors, with their norms and losses):
    score every live sample exactly or search the index, read the top-k's metadata, commit the query. With
    `precondition`, the query's vectors at v are multiplied by the preconditioner first (method `exact+pre` or
    `knn+pre`); the stored query vectors stay the raw ones."""
    v = _check(project, k, v, method)
    if precondition and v == "full":
        raise UsageError("v=full has no preconditioner; pass a compressed --v")
    pre = for_query(project, v, allow_stale) if precondition else None
    if not np.isfinite(norms).all():
        raise DataError("the query's gradient is not finite; check the image and the model weights")
    vecs = complete(vecs, [v], project.identity)  # the commit then derives only the other stored v's
    q = pre.apply(project, vecs[v]) if pre is not None else vecs[v]
    idx = current_index(project, v) if v != "full" else None
    use = method
    if method == "auto":
        use = "knn" if idx is not None and stale_count(project, idx) == 0 else "exact"
    if use == "knn":
        if idx is None:
            raise UsageError(f"no index for v={v}; build one with `dmin index {project.root} --v {v}` or use --exact")
        ids, totals, per_t = knn(project, idx, q, k, ef=ef, allow_stale=allow_stale)
    else:
        scores = exact_scores(project, v, q)
        top = scores.top(k)
        ids, totals, per_t = scores.ids_at(top), scores.total[top], scores.per_t_at(top)
    if pre is not None:
        use += "+pre"
    meta = _sample_meta(project, ids)
    results = []
    for rank, (sid, score, row) in enumerate(zip(ids, totals, per_t, strict=True), 1):
        results.append(
            {
                "rank": rank,
                "sample_id": sid,
                "score": float(score),
                "scores": [float(x) for x in row],
                **meta.get(sid, {}),
            }
        )
    _commit(project, query_id, spec, image_path, vecs, norms, losses, results, use, v)
    return QueryResult(query_id, use, v, image_path, results)


def _query_image(
    project: Project, setup: Setup, spec: QuerySpec, on_step: StepCallback | None = None
) -> tuple[Image.Image, str | None]:
    if spec.image is not None:
        if isinstance(spec.image, Image.Image):
            return spec.image, None
        path = Path(spec.image)
        if path.is_dir():
            raise DataError(f"--image {path}: is a directory; pass the image file to attribute")
        if not path.is_file():
            raise DataError(f"--image {path}: no such file; pass the image to attribute, or --seed S to generate one")
        try:
            img = Image.open(path)
            img.load()
        except Exception as exc:  # PIL raises many types for files it cannot decode
            raise DataError(f"--image {path}: not a readable image ({exc}); pass a PNG or JPEG file") from exc
        return img, str(path)
    assert spec.seed is not None  # QuerySpec guarantees an image or a seed
    check_condition(setup.family, spec.prompt is not None, spec.label is not None, query=True)
    return setup.family.generate(spec.prompt, spec.label, spec.seed, on_step=on_step), None


def _save_generated(project: Project, query_id: str, image: Image.Image) -> str:
    folder = project.root / paths.QUERY_IMAGES
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{query_id}.png"
    if not path.exists():  # same id, same pixels: never rewrite a committed file
        write_atomic(path, lambda tmp: image.save(tmp, format="PNG"))
    return str(path)


def _sample_meta(project: Project, ids: list[str]) -> dict[str, dict[str, Any]]:
    """The samples rows of a query's top-k, read by row id (`Project.samples_by_row`), keyed by sample_id."""
    if not ids:
        return {}
    rows = project.sample_keys().lookup(ids)
    out = {}
    for _, table in project.samples_by_row(rows[rows >= 0]):
        for row in table.to_pylist():
            out[row.pop("sample_id")] = row
    return out


def _commit(
    project: Project,
    query_id: str,
    spec: QuerySpec,
    image_path: str | None,
    vecs: dict[str, np.ndarray],
    norms: np.ndarray,
    losses: np.ndarray,
    results: list[dict[str, Any]],
    method: str,
    v: str,
) -> None:
    """One commit: the query's metadata, its top-k, and its vectors at every stored v (planned against the newest
    manifest, so a v derived meanwhile is included)."""
    ident = project.identity
    now = now_utc()
    queries = queries_table(query_id, image_path, spec.prompt, spec.label, spec.seed, now)
    res = results_table(query_id, results, method, v, now)
    image = Path(image_path).resolve() if image_path is not None else None
    in_project = image is not None and image.is_relative_to(project.root.resolve())

    def plan(stage: Stage) -> Commit | None:
        state = project.state()
        if (query_id, method, v) in state.answered:
            return None  # the same query, method and v are stored already: a rerun adds no duplicates
        is_new = query_id not in state.queried
        files = [
            stage.table("queries", "queries", None, paths.FOLDERS["queries"], queries),
            stage.table("results", "results", None, paths.FOLDERS["results"], res),
        ]
        every = complete(vecs, project.identity.vs, ident)
        for sv in project.identity.vs:
            files.append(
                stage.table(
                    ("query_grads", sv),
                    "query_grads",
                    sv,
                    paths.query_grads_dir(sv),
                    grads_table(
                        "query_id", [query_id], ident.timesteps, every[sv][None], norms[None], losses[None], ident.dtype
                    ),
                )
            )
        if is_new and in_project and image is not None:
            files.append(stage.adopt("image", "query_images", None, image))
        return Commit("queries", files, {"query_id": query_id, "method": method, "v": v})

    project.transact(plan)


def load_training_image(project: Project, sample_id: str, source: str) -> Image.Image | None:
    """A training sample's image from the data root it was collected from (None when it is no longer there)."""
    data = project.sample_root(sample_id)
    if not data:
        return None
    root = Path(data)
    try:
        if "#" in source and root.is_file():
            import pyarrow.parquet as pq

            row = int(source.rsplit("#", 1)[1])
            pf = pq.ParquetFile(root)
            for g in range(pf.metadata.num_row_groups):  # decode only the row group that holds the row
                size = pf.metadata.row_group(g).num_rows
                if row < size:
                    break
                row -= size
            img = pf.read_row_group(g, columns=["image"]).column("image")[row].as_py()
            raw = img.get("bytes") if isinstance(img, dict) else img
            return Image.open(io.BytesIO(raw)) if isinstance(raw, bytes) else None
        return Image.open(root / source)
    except (OSError, ValueError, IndexError, DminError):
        return None
