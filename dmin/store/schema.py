"""Table schemas: the single source of truth. `schemas/*.json` is generated from here (`python -m
dmin.store.schema schemas/`), and a test fails when the two drift apart. Writers build tables with exactly these
fields; `verify` checks committed files against them.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import pyarrow as pa

from dmin.store.paths import SCHEMA_VERSION

VEC_DTYPES = {"float32": pa.float32(), "float16": pa.float16()}

SAMPLES_BASE = pa.schema(
    [
        pa.field("sample_id", pa.string(), nullable=False),
        pa.field("row_id", pa.int64(), nullable=False),
        pa.field("source", pa.string(), nullable=False),
        pa.field("caption", pa.string()),
        pa.field("label", pa.int64()),
    ]
)

QUERIES = pa.schema(
    [
        pa.field("query_id", pa.string(), nullable=False),
        pa.field("image", pa.string()),
        pa.field("prompt", pa.string()),
        pa.field("label", pa.int64()),
        pa.field("seed", pa.int64()),
        pa.field("created_at", pa.timestamp("us", tz="UTC"), nullable=False),
    ]
)

RESULTS = pa.schema(
    [
        pa.field("query_id", pa.string(), nullable=False),
        pa.field("sample_id", pa.string(), nullable=False),
        pa.field("rank", pa.int32(), nullable=False),
        pa.field("score", pa.float64(), nullable=False),
        pa.field("scores", pa.list_(pa.float64()), nullable=False),
        pa.field("method", pa.string(), nullable=False),
        pa.field("v", pa.string(), nullable=False),
        pa.field("created_at", pa.timestamp("us", tz="UTC"), nullable=False),
    ]
)

FAILURES = pa.schema(
    [
        pa.field("source", pa.string(), nullable=False),
        pa.field("reason", pa.string(), nullable=False),
        pa.field("created_at", pa.timestamp("us", tz="UTC"), nullable=False),
    ]
)


TOMBSTONES = pa.schema([pa.field("sample_id", pa.string(), nullable=False)])


def vec_type(dim: int, dtype: str) -> pa.DataType:
    """fixed_size_list<non-null float>[dim]: non-null items spare Parquet a definition level per float (2.6× faster
    reads than nullable items)."""
    return pa.list_(pa.field("element", VEC_DTYPES[dtype], nullable=False), dim)


def grads_schema(dim: int, dtype: str, key: str = "sample_id") -> pa.Schema:
    """grads/v=V (key sample_id) and queries/grads/v=V (key query_id): one row per (key, t_idx)."""
    return pa.schema(
        [
            pa.field(key, pa.string(), nullable=False),
            pa.field("t_idx", pa.int32(), nullable=False),
            pa.field("timestep", pa.float64(), nullable=False),
            pa.field("vec", vec_type(dim, dtype), nullable=False),
            pa.field("norm", pa.float64(), nullable=False),
            pa.field("loss", pa.float64(), nullable=False),
        ]
    )


def fixed_schema(table: str) -> pa.Schema:
    return {"queries": QUERIES, "results": RESULTS, "failures": FAILURES, "tombstones": TOMBSTONES}[table]


def schema_json(schema: pa.Schema) -> list[dict[str, Any]]:
    return [{"name": f.name, "type": str(f.type), "nullable": f.nullable} for f in schema]


IDENTITY_FIELDS: dict[str, str] = {
    "schema_version": "int: the dmin table/config schema this project was written with",
    "dmin_version": "str: the dmin release that created the project",
    "model_family": "str: ddpm | sd | sdxl | sd3 | flux | dit",
    "model_fingerprint": "str: xxh3-128 over the names and byte digests of model_index.json and the files of the "
    "components that shape gradients (not the scheduler)",
    "adapter_fingerprint": "str|null: xxh3-128 over the LoRA/PEFT adapter files",
    "param_filter": "str|null: the --params glob, if any",
    "layout_hash": "str: xxh3-128 of the parameter layout (names, shapes, order)",
    "n": "int: number of gradient entries",
    "D": "int: smallest power of two >= n",
    "loss_type": "str: epsilon | v_prediction | flow_matching",
    "timesteps": "list[float]: the K timesteps",
    "t_indices": "list[int]: their indices 0..K-1",
    "latent_shape": "list[int]: shape of x0 (and of the fixed noise)",
    "noise_seed": "int",
    "compress_seed": "int",
    "compressor": "str: which F and s compressed the vectors (runs8-spread; runs8-grouped before it was recorded)",
    "collect_vs": "list[str]: the v's collect writes ('full' for uncompressed)",
    "vs": "list[str]: the v's stored when dmin.json was written; later derived v's are recorded by their `derive` "
    "manifest entries, and readers take the union",
    "dtype": "str: float32 | float16 vector storage",
    "schedule": "str|null: the training forward process rebuilt from the scheduler config (null: schema 1)",
    "compute_dtype": "str|null: float32 | bfloat16 | float16, the dtype gradients were computed in (null: schema 1)",
    "conditioning": "str|null: a family's fixed inputs, e.g. FLUX's guidance and T5 length (null: schema 1)",
    "model_path": "str|null: a local directory or hub id collect loaded the model from (query's default; not "
    "compared)",
    "lora_path": "str|null: where collect loaded the adapter from (not compared)",
    "data_path": "str|null: the first --data collected; each samples entry records its own data_root (meta), and "
    "this serves entries written before roots were recorded (not compared)",
}

MANIFEST_ENTRY: dict[str, str] = {
    "seq": "int: commit order",
    "kind": "str: samples | failures | queries | derive | index | forget | compact | relocate",
    "writer": "str: host:pid of the writing process",
    "created_at": "str: ISO-8601 UTC",
    "identity_hash": "str: xxh3-128 of the identity's comparable fields",
    "files": "list[{path, table, v, rows, bytes, xxh3}]",
    "supersedes": "list[str]: files this entry replaces (readers ignore them; compact deletes them)",
    "row_ids": "[lo, hi) | null: row_ids assigned by this commit (each commit's range follows the last)",
    "meta": "object: kind-specific details (samples: data_root; derive: v, from; relocate: from, to; compact: "
    "data_roots of rewritten samples files)",
    "checksum": "str: xxh3-128 of the entry's canonical JSON without this field",
}


def all_schemas() -> dict[str, Any]:
    """Every versioned schema, as written to schemas/."""
    return {
        "samples": {
            "version": SCHEMA_VERSION,
            "fields": schema_json(SAMPLES_BASE),
            "extra_columns": "string: the data set's other metadata columns",
        },
        "grads": {
            "version": SCHEMA_VERSION,
            "fields": schema_json(grads_schema(4096, "float32")),
            "notes": "vec is fixed_size_list<float32|float16>[v]; v=full stores the normalized gradient",
        },
        "query_grads": {"version": SCHEMA_VERSION, "fields": schema_json(grads_schema(4096, "float32", "query_id"))},
        "queries": {"version": SCHEMA_VERSION, "fields": schema_json(QUERIES)},
        "results": {"version": SCHEMA_VERSION, "fields": schema_json(RESULTS)},
        "failures": {"version": SCHEMA_VERSION, "fields": schema_json(FAILURES)},
        "tombstones": {
            "version": SCHEMA_VERSION,
            "fields": schema_json(TOMBSTONES),
            "notes": "a forget entry's sample_ids: forgotten in every file committed before it (the suppression list)",
        },
        "dmin.json": {"version": SCHEMA_VERSION, "fields": IDENTITY_FIELDS},
        "manifest": {"version": SCHEMA_VERSION, "fields": MANIFEST_ENTRY},
    }


def write_schema_files(folder: Path) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    for name, body in all_schemas().items():
        (folder / f"{name}.schema.json").write_text(json.dumps(body, indent=2, sort_keys=True) + "\n")


if __name__ == "__main__":
    write_schema_files(Path(sys.argv[1] if len(sys.argv) > 1 else "schemas"))
