"""`dmin compress`: store a new v derived from a stored one, with no model and no recomputation, and keep it complete.

From the smallest stored v that is a multiple of the new one, by folding (exact); else from v=full, by compressing
the stored normalized gradients with the project's compressor (`dmin.vs`). The derive entry records the v
(stored v's are the collected ones plus those of derive entries). Incremental: a later run derives only the samples
and queries the v lacks, so a project whose v was left incomplete (by a dmin before every commit wrote every stored
v, or by a compress racing a collect) is repaired; a run on a complete v does nothing.
"""

from __future__ import annotations

import functools
from collections.abc import Callable

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from dmin.store import paths
from dmin.store.keys import KeySet
from dmin.store.manifest import Entry, FileRef
from dmin.store.project import Commit, Project, Stage
from dmin.store.schema import grads_schema, vec_type
from dmin.store.vectors import read_rows, vec_values
from dmin.vs import derive, source_for

_TABLES = (("grads", "sample_id", paths.grads_dir), ("query_grads", "query_id", paths.query_grads_dir))


_DERIVE_ROWS = 65536  # rows derived at a time


def _keys_at(project: Project, table: str, key: str, v: str) -> KeySet:
    """Keys with live rows at v (`store.keys`: a million of them are 24 MB, not a million Python strings)."""
    have = KeySet()
    for ref in project.live_files(table, v):
        keys = pq.read_table(project.checked(ref), columns=[key]).column(key)
        dead = project.dead_rows(ref) if key == "sample_id" else None
        have.add(keys if dead is None else keys.filter(pa.array(~dead)))
    return have


def _derived_rows(project: Project, ref: FileRef, key: str, rows: np.ndarray, src: str, v: int) -> pa.Table:
    """The rows `rows` of a stored file at src, re-expressed at v."""
    ident = project.identity
    keep = np.zeros(ref.rows, bool)
    keep[rows] = True
    table = read_rows(project.checked(ref), keep)
    dim = table.schema.field("vec").type.list_size
    src_vecs = vec_values(table.column("vec")).reshape(-1, dim)
    np_dtype = np.float16 if ident.dtype == "float16" else np.float32
    out = np.empty((len(src_vecs), v), np_dtype)
    # in slices, so derive's copies stay small: whole, the 2.5 GB files of a 10^6 project took 14.6 GB
    for lo in range(0, len(src_vecs), _DERIVE_ROWS):
        out[lo : lo + _DERIVE_ROWS] = derive(src_vecs[lo : lo + _DERIVE_ROWS], src, v, ident)
    vec_col = pa.FixedSizeListArray.from_arrays(pa.array(out.reshape(-1)), type=vec_type(v, ident.dtype))
    new = table.set_column(table.schema.get_field_index("vec"), "vec", vec_col)
    return new.cast(grads_schema(v, ident.dtype, key))


def derive_v(project: Project, v: int, progress: Callable[[int, int], None] | None = None) -> Entry | None:
    """Store v (or complete it); None when it is stored and holds every live sample and query already.
    `progress(rows done, rows to derive)` follows the work file by file."""
    target = str(v)

    def plan(stage: Stage) -> Commit | None:
        src = source_for(project, v)
        work = []
        for table, key, folder in _TABLES:
            have = _keys_at(project, table, key, target)
            for ref in project.live_files(table, src):
                keys = pq.read_table(project.checked(ref), columns=[key]).column(key)
                todo = ~have.contains(keys)
                dead = project.dead_rows(ref) if key == "sample_id" else None
                rows = np.flatnonzero(todo if dead is None else todo & ~dead)
                if len(rows):
                    work.append((ref, table, key, folder(target), rows))
        total, done = sum(len(rows) for *_, rows in work), 0
        files = []
        for ref, table, key, folder_v, rows in work:
            files.append(
                stage.table(
                    (ref.path, target, rows.tobytes()),
                    table,
                    target,
                    folder_v,
                    functools.partial(_derived_rows, project, ref, key, rows, src, v),
                )
            )
            done += len(rows)
            if progress:
                progress(done, total)
        if not files and target in project.identity.vs:
            return None
        return Commit("derive", files, {"v": target, "from": src})

    return project.transact(plan)
