"""A Parquet writer for dmin's vector tables that copies the vectors straight from their numpy buffer to the file.

Arrow's writer encodes a fixed_size_list column value by value (repetition and definition levels for every float):
304 MB/s into tmpfs where np.save writes the same vectors at 2.4 GB/s (`scripts/bench_store.py`). The grads tables
are a narrow case — every column non-null, flat scalars or strings plus fixed-size float vectors — so this module
writes them itself (1.7–2.2 GB/s there), in the layout `pages.plain_values` maps back: per row group and column one
v2 data page; vector values uncompressed and PLAIN (the raw little-endian floats, written from the array's own
memory); a vector's levels as one run-length pattern per row; scalar and string columns PLAIN then zstd (pyarrow's
codec). The footer carries the Arrow schema, so every reader (Arrow, DuckDB, `pages`) sees exactly the table that
was given. `supports` says which tables qualify; the rest go through Arrow (`atomic.write_parquet_atomic` chooses),
and the tests hold both writers' files equal.
"""

from __future__ import annotations

import base64
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import pyarrow as pa

from dmin.version import __version__

# Thrift compact protocol wire types.
_BOOL, _I16, _I32, _I64, _BINARY, _LIST, _STRUCT = 1, 4, 5, 6, 8, 9, 12
# parquet.thrift enums.
_INT32, _INT64, _FLOAT, _DOUBLE, _BYTE_ARRAY, _FLBA = 1, 2, 4, 5, 6, 7
_REQUIRED, _REPEATED = 0, 2
_UTF8, _LIST_CONVERTED = 0, 3
_PLAIN, _RLE = 0, 3
_UNCOMPRESSED, _ZSTD = 0, 6
_DATA_PAGE_V2 = 3
_LOGICAL_STRING, _LOGICAL_LIST, _LOGICAL_FLOAT16 = 1, 3, 15

_SCALARS: dict[pa.DataType, tuple[int, str]] = {
    pa.int32(): (_INT32, "<i4"),
    pa.int64(): (_INT64, "<i8"),
    pa.float32(): (_FLOAT, "<f4"),
    pa.float64(): (_DOUBLE, "<f8"),
}
_VEC_ITEMS: dict[pa.DataType, str] = {pa.float32(): "<f4", pa.float16(): "<f2"}

Field = tuple[int, int, Any]  # (field id, wire type, value); a struct is a list of fields, a list (item type, items)


def _varint(n: int) -> bytes:
    out = bytearray()
    while n > 0x7F:
        out.append(n & 0x7F | 0x80)
        n >>= 7
    out.append(n)
    return bytes(out)


def _zigzag(n: int) -> bytes:
    return _varint((n << 1) ^ (n >> 63))


def _value(kind: int, value: Any) -> bytes:
    if kind in (_I16, _I32, _I64):
        return _zigzag(value)
    if kind == _BINARY:
        data = value.encode() if isinstance(value, str) else value
        return _varint(len(data)) + data
    if kind == _STRUCT:
        return _struct(value)
    if kind == _LIST:
        item, items = value
        head = bytes([len(items) << 4 | item]) if len(items) < 15 else bytes([0xF0 | item]) + _varint(len(items))
        return head + b"".join(_value(item, x) for x in items)
    raise ValueError(f"thrift type {kind}")


def _struct(fields: Sequence[Field]) -> bytes:
    """Thrift compact encoding of a struct; fields with value None are left out (optional, unset)."""
    out, last = bytearray(), 0
    for fid, kind, value in fields:
        if value is None:
            continue
        wire = (1 if value else 2) if kind == _BOOL else kind  # a field's bool lives in its type nibble
        delta = fid - last
        out += bytes([delta << 4 | wire]) if 0 < delta <= 15 else bytes([wire]) + _zigzag(fid)
        if kind != _BOOL:
            out += _value(kind, value)
        last = fid
    out.append(0)
    return bytes(out)


def _vector_items(field: pa.Field) -> pa.DataType | None:
    t = field.type
    if pa.types.is_fixed_size_list(t) and not t.value_field.nullable and t.value_type in _VEC_ITEMS:
        return t.value_type
    return None


def supports(table: pa.Table) -> bool:
    """Tables this writer handles: non-empty, every column non-null and a string, int32/int64, float32/float64 or
    a fixed_size_list of non-null float32/float16 (at least one such vector column, else Arrow does as well)."""
    if table.num_rows == 0 or any(table.column(f.name).null_count for f in table.schema):
        return False
    kinds = []
    for f in table.schema:
        if f.nullable:
            return False
        if f.type == pa.string() or f.type in _SCALARS:
            kinds.append("scalar")
        elif _vector_items(f) is not None and f.type.list_size > 0:
            kinds.append("vector")
        else:
            return False
    return "vector" in kinds


def _schema_elements(schema: pa.Schema) -> list[list[Field]]:
    elements: list[list[Field]] = [[(4, _BINARY, "schema"), (5, _I32, len(schema))]]
    for f in schema:
        if f.type == pa.string():
            elements.append(
                [
                    (1, _I32, _BYTE_ARRAY),
                    (3, _I32, _REQUIRED),
                    (4, _BINARY, f.name),
                    (6, _I32, _UTF8),
                    (10, _STRUCT, [(_LOGICAL_STRING, _STRUCT, [])]),
                ]
            )
        elif f.type in _SCALARS:
            elements.append([(1, _I32, _SCALARS[f.type][0]), (3, _I32, _REQUIRED), (4, _BINARY, f.name)])
        else:
            item = f.type.value_type
            leaf: list[Field] = [(3, _I32, _REQUIRED), (4, _BINARY, f.type.value_field.name)]
            if item == pa.float16():
                leaf = [(1, _I32, _FLBA), (2, _I32, 2), *leaf, (10, _STRUCT, [(_LOGICAL_FLOAT16, _STRUCT, [])])]
            else:
                leaf = [(1, _I32, _FLOAT), *leaf]
            elements += [
                [
                    (3, _I32, _REQUIRED),
                    (4, _BINARY, f.name),
                    (5, _I32, 1),
                    (6, _I32, _LIST_CONVERTED),
                    (10, _STRUCT, [(_LOGICAL_LIST, _STRUCT, [])]),
                ],
                [(3, _I32, _REPEATED), (4, _BINARY, "list"), (5, _I32, 1)],
                leaf,
            ]
    return elements


def _plain_strings(arr: pa.Array) -> bytes:
    """PLAIN BYTE_ARRAY: each value's 4-byte little-endian length, then its bytes."""
    offsets = np.frombuffer(arr.buffers()[1], dtype="<i4")[arr.offset : arr.offset + len(arr) + 1].astype(np.int64)
    data = np.frombuffer(arr.buffers()[2] or b"", dtype=np.uint8)[offsets[0] : offsets[-1]]
    lengths = np.diff(offsets)
    out = np.empty(4 * len(arr) + data.size, dtype=np.uint8)
    heads = (np.arange(len(arr)) * 4 + offsets[:-1] - offsets[0])[:, None] + np.arange(4)
    out[heads] = lengths.astype("<u4").view(np.uint8).reshape(-1, 4)
    body = np.ones(out.size, dtype=bool)
    body[heads.ravel()] = False
    out[body] = data
    return out.tobytes()


def _rle(value: int, count: int) -> bytes:
    """One RLE run of the hybrid encoding at bit width 1 or 2 (the value fits one byte)."""
    return _varint(count << 1) + bytes([value])


@dataclass
class _Chunk:
    """One column chunk — a single v2 data page — as the pieces to write and what its metadata records."""

    pieces: list[Any]
    column: list[Field]  # ColumnMetaData, less the page's offset
    size: int  # bytes uncompressed, header included

    def meta(self, offset: int) -> list[Field]:
        """The ColumnChunk of this chunk written at `offset`."""
        return [(2, _I64, 0), (3, _STRUCT, [*self.column, (9, _I64, offset)])]


def _page(
    path: list[str],
    ptype: int,
    codec: int,
    values: Any,
    raw_size: int,
    count: int,
    rows: int,
    rep: bytes = b"",
    dfn: bytes = b"",
) -> _Chunk:
    stored = len(rep) + len(dfn) + len(memoryview(values).cast("B"))
    v2 = [
        (1, _I32, count),
        (2, _I32, 0),  # nulls
        (3, _I32, rows),
        (4, _I32, _PLAIN),
        (5, _I32, len(dfn)),
        (6, _I32, len(rep)),
        (7, _BOOL, codec != _UNCOMPRESSED),
    ]
    raw = len(rep) + len(dfn) + raw_size
    header = _struct([(1, _I32, _DATA_PAGE_V2), (2, _I32, raw), (3, _I32, stored), (8, _STRUCT, v2)])
    column = [
        (1, _I32, ptype),
        (2, _LIST, (_I32, [_PLAIN, _RLE] if rep else [_PLAIN])),
        (3, _LIST, (_BINARY, path)),
        (4, _I32, codec),
        (5, _I64, count),
        (6, _I64, len(header) + raw),
        (7, _I64, len(header) + stored),
    ]
    return _Chunk([header, rep, dfn, values], column, len(header) + raw)


def _chunk(field: pa.Field, arr: pa.Array) -> _Chunk:
    rows = len(arr)
    if field.type == pa.string() or field.type in _SCALARS:
        if field.type == pa.string():
            raw, ptype = _plain_strings(arr), _BYTE_ARRAY
        else:
            ptype, dtype = _SCALARS[field.type]
            raw = np.ascontiguousarray(arr.to_numpy(zero_copy_only=False), dtype=dtype).tobytes()
        packed = pa.compress(raw, codec="zstd", asbytes=True)
        return _page([field.name], ptype, _ZSTD, packed, len(raw), rows, rows)
    dim, item = field.type.list_size, field.type.value_type
    values = np.ascontiguousarray(arr.flatten().to_numpy(zero_copy_only=False), dtype=_VEC_ITEMS[item])
    # Repetition level 0 opens each row, 1 continues it; every value is present (definition level 1).
    rep = (_rle(0, 1) + _rle(1, dim - 1)) * rows if dim > 1 else _rle(0, rows)
    path = [field.name, "list", field.type.value_field.name]
    ptype = _FLBA if item == pa.float16() else _FLOAT
    return _page(path, ptype, _UNCOMPRESSED, values, values.nbytes, rows * dim, rows, rep, _rle(1, rows * dim))


def write(out: Callable[[Any], None], table: pa.Table, group_rows: int) -> None:
    """Write `table` (one `supports` accepts) as a Parquet file through `out(bytes-like)`, `group_rows` rows per
    row group."""
    table = table.combine_chunks()
    offset = 0

    def emit(piece: Any) -> None:
        nonlocal offset
        view = memoryview(piece).cast("B")
        out(view)
        offset += len(view)

    emit(b"PAR1")
    groups: list[list[Field]] = []
    for lo in range(0, table.num_rows, group_rows):
        part = table.slice(lo, group_rows)
        start, columns, size = offset, [], 0
        for f in table.schema:
            chunk = _chunk(f, part.column(f.name).chunk(0))
            columns.append(chunk.meta(offset))
            size += chunk.size
            for piece in chunk.pieces:
                emit(piece)
        groups.append(
            [
                (1, _LIST, (_STRUCT, columns)),
                (2, _I64, size),
                (3, _I64, part.num_rows),
                (5, _I64, start),
                (6, _I64, offset - start),
                (7, _I16, len(groups)),
            ]
        )
    arrow_schema = base64.b64encode(table.schema.serialize().to_pybytes()).decode()
    footer = _struct(
        [
            (1, _I32, 2),
            (2, _LIST, (_STRUCT, _schema_elements(table.schema))),
            (3, _I64, table.num_rows),
            (4, _LIST, (_STRUCT, groups)),
            (5, _LIST, (_STRUCT, [[(1, _BINARY, "ARROW:schema"), (2, _BINARY, arrow_schema)]])),
            (6, _BINARY, f"dmin version {__version__}"),
        ]
    )
    emit(footer)
    emit(len(footer).to_bytes(4, "little"))
    emit(b"PAR1")
