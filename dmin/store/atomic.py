"""Atomic file writes (temp file in the same folder, fsync, rename, fsync the folder) and file checksums.

A process killed at any instant leaves either the old file or the new one, plus at most a `.tmp-*` file that no
manifest entry names (an orphan `verify --deep` reports).
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Callable
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import xxhash

from dmin.store import plain_parquet
from dmin.store.paths import TMP_PREFIX

_GROUP_BYTES = 1 << 30
_CHUNK = 1 << 22
_SMALL_GROUP_ROWS = 1024


def fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_atomic(path: Path, write: Callable[[Path], None]) -> None:
    """Run `write(tmp)` then move tmp to `path` durably; on any failure remove tmp and leave `path` untouched."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.parent / f"{TMP_PREFIX}{uuid.uuid4().hex[:12]}-{path.name}"
    try:
        write(tmp)
        fd = os.open(tmp, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    fsync_dir(path.parent)


def write_bytes_atomic(path: Path, data: bytes) -> None:
    def write(tmp: Path) -> None:
        tmp.write_bytes(data)

    write_atomic(path, write)


def write_parquet_atomic(path: Path, table: pa.Table) -> str:
    """Parquet tuned for vectors: uncompressed PLAIN float pages read at memory speed (docs/format.md).
    Returns the file's xxh3-128 checksum (computed while writing when dmin writes the pages itself)."""
    vec_cols = [f.name for f in table.schema if pa.types.is_fixed_size_list(f.type)]
    # One data page (v2: levels apart from values) per row group for the vectors, so a reader maps each group's
    # values as one contiguous view (`pages.plain_values`); groups stay under 1 GiB, as a page must stay under
    # 2 GiB. A row bigger than that (v=full of a large model) cannot be one page: v1 pages of 16 MiB may split a
    # row, and readers join them (a copy; v=full serves exact checks, not browsing).
    row_bytes = sum(table.column(c).type.list_size * 4 for c in vec_cols)
    one_page = row_bytes <= _GROUP_BYTES
    # Tables without vectors: row groups of 1024 rows, whose row_id statistics let a reader fetch a few rows by id
    # (a query's top-k metadata) without decoding the rest.
    group_rows = max(1, min(len(table), _GROUP_BYTES // row_bytes if row_bytes else _SMALL_GROUP_ROWS))
    checksum = ""

    def write_plain(tmp: Path) -> None:  # grads tables: vectors go from their buffer to the file (~6× Arrow's writer)
        nonlocal checksum
        h = xxhash.xxh3_128()
        with open(tmp, "wb") as f:

            def out(piece: memoryview) -> None:
                f.write(piece)
                h.update(piece)

            plain_parquet.write(out, table, group_rows)
        meta = pq.read_metadata(tmp)  # the footer parses to the table given, or nothing is committed
        if meta.num_rows != table.num_rows or not meta.schema.to_arrow_schema().equals(table.schema):
            raise RuntimeError(f"dmin's Parquet writer wrote {path.name} unreadably (a dmin bug: please report it)")
        checksum = h.hexdigest()

    def write_arrow(tmp: Path) -> None:
        nonlocal checksum
        pq.write_table(
            table,
            tmp,
            compression={c: ("none" if c in vec_cols else "zstd") for c in table.column_names},
            use_dictionary=[c for c in table.column_names if c not in vec_cols],
            write_statistics=[c for c in table.column_names if c not in vec_cols],
            data_page_size=group_rows * max(row_bytes, 1) + (1 << 20) if one_page else 1 << 24,
            row_group_size=group_rows,
            data_page_version="2.0" if one_page else "1.0",
        )
        checksum = file_checksum(tmp)

    write_atomic(path, write_plain if one_page and plain_parquet.supports(table) else write_arrow)
    return checksum


def file_checksum(path: Path) -> str:
    """xxh3-128 of a file's bytes, hex."""
    h = xxhash.xxh3_128()
    with open(path, "rb") as f:
        while block := f.read(_CHUNK):
            h.update(block)
    return h.hexdigest()
