"""`dmin compress`: derive a new stored v from a stored one, with no model and no recomputation.

From the smallest stored v that is a multiple of the new one, by folding (exact); else from v=full, by compressing
the stored normalized gradients with the project's compressor. Committed in one manifest entry, then recorded in
dmin.json; a second run finds the v stored and does nothing.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import torch

from dmin.compress import Compressor, fold
from dmin.errors import UsageError
from dmin.store import paths
from dmin.store.project import Entry, Project
from dmin.store.schema import grads_schema, vec_type
from dmin.store.vectors import vec_values


def source_for(project: Project, v: int) -> str:
    """The stored v to derive `v` from: the smallest multiple of it, else 'full'."""
    ident = project.identity
    Compressor(ident.n, ident.compress_seed).check_v(v)
    multiples = sorted(int(s) for s in ident.vs if s != "full" and int(s) > v and int(s) % v == 0)
    if multiples:
        return str(multiples[0])
    if "full" in ident.vs:
        return "full"
    stored = ", ".join(ident.vs) or "none"
    largest = max((int(s) for s in ident.vs if s != "full"), default=16)
    raise UsageError(
        f"cannot derive v={v}: no stored v is a multiple of it (stored: {stored}); ask for a power of two up to "
        f"{largest}, or collect a larger --v (or --v full) into a new project"
    )


def derive_v(project: Project, v: int, progress: Callable[[int, int], None] | None = None) -> Entry | None:
    """Store v derived from a larger stored v; None when it is stored already. `progress(rows done, rows in all)`
    follows the work file by file."""
    if str(v) in project.identity.vs:
        return None
    src = source_for(project, v)
    ident = project.identity
    comp = Compressor(ident.n, ident.compress_seed)
    tables = []
    total = sum(f.rows for t in ("grads", "query_grads") for f in project.live_files(t, src))
    done = 0
    for table_name, key, folder in (
        ("grads", "sample_id", paths.grads_dir),
        ("query_grads", "query_id", paths.query_grads_dir),
    ):
        for ref in project.live_files(table_name, src):
            table = pq.read_table(project.root / ref.path, memory_map=True)
            dim = table.schema.field("vec").type.list_size
            vecs = torch.from_numpy(vec_values(table.column("vec")).reshape(-1, dim).astype(np.float32))
            out = torch.stack([comp.compress(row.double(), v) for row in vecs]) if src == "full" else fold(vecs, v)
            np_dtype = np.float16 if ident.dtype == "float16" else np.float32
            flat = out.numpy().astype(np_dtype).reshape(-1)
            vec_col = pa.FixedSizeListArray.from_arrays(pa.array(flat), type=vec_type(v, ident.dtype))
            new = table.set_column(table.schema.get_field_index("vec"), "vec", vec_col)
            tables.append((table_name, str(v), folder(v), new.cast(grads_schema(v, ident.dtype, key))))
            done += ref.rows
            if progress:
                progress(done, total)
    with project.lock():
        if str(v) in Project.open(project.root).identity.vs:
            return None
        entry = project.commit("derive", tables, meta={"v": str(v), "from": src})
        project.add_v(str(v))
    return entry
