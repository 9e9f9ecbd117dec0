"""Zero-copy access to a Parquet vector column: numpy views straight into the memory-mapped data pages.

dmin writes vector columns uncompressed, PLAIN-encoded and without dictionary (`atomic.write_parquet_atomic`), so
each data page holds its repetition/definition levels followed by the float values as raw little-endian bytes.
Arrow would decode the nested list (~1 GB/s); here we walk the page headers (Thrift compact protocol, parsed just far
enough to find lengths), check every assumption, and hand out views of the value bytes — scoring then runs at
memory speed over the page cache. Anything unexpected (compression, another encoding, nulls, odd sizes) returns
None and the caller falls back to Arrow, so this is an optimisation that can never change a result.
"""

from __future__ import annotations

import mmap
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

# parquet.thrift enums
_DATA_PAGE, _DICTIONARY_PAGE, _DATA_PAGE_V2 = 0, 2, 3
_PLAIN = 0
_UNCOMPRESSED = "UNCOMPRESSED"
_DTYPES: dict[str, np.dtype] = {"FLOAT": np.dtype("<f4")}


class _Unsupported(Exception):
    """The file is not laid out the way the fast path needs; use Arrow."""


class _Compact:
    """Just enough of Thrift's compact protocol to read a PageHeader and skip what it does not need."""

    def __init__(self, buf: memoryview, pos: int) -> None:
        self.buf, self.pos = buf, pos

    def byte(self) -> int:
        b = self.buf[self.pos]
        self.pos += 1
        return b

    def varint(self) -> int:
        out = shift = 0
        while True:
            b = self.byte()
            out |= (b & 0x7F) << shift
            if not b & 0x80:
                return out
            shift += 7
            if shift > 63:
                raise _Unsupported("varint too long")

    def zigzag(self) -> int:
        n = self.varint()
        return (n >> 1) ^ -(n & 1)

    def struct(self) -> dict[int, object]:
        """Field id → value for ints and nested structs; other types are skipped."""
        fields: dict[int, object] = {}
        last = 0
        while True:
            head = self.byte()
            kind = head & 0x0F
            if kind == 0:
                return fields
            delta = head >> 4
            fid = last + delta if delta else self.zigzag()
            last = fid
            fields[fid] = self.value(kind)

    def value(self, kind: int, in_list: bool = False) -> object:
        if kind in (1, 2):  # a field's bool lives in its type nibble; a list's bools take a byte each
            return self.byte() == 1 if in_list else kind == 1
        if kind == 3:
            return self.byte()
        if kind in (4, 5, 6):
            return self.zigzag()
        if kind == 7:
            self.pos += 8
            return None
        if kind == 8:
            size = self.varint()  # read before moving: `self.pos += self.varint()` would add to the old position
            self.pos += size
            return None
        if kind in (9, 10):
            head = self.byte()
            size = head >> 4 if head >> 4 != 15 else self.varint()
            for _ in range(size):
                self.value(head & 0x0F, in_list=True)
            return None
        if kind == 11:
            size = self.varint()
            if size:
                types = self.byte()
                for _ in range(size):
                    self.value(types >> 4, in_list=True)
                    self.value(types & 0x0F, in_list=True)
            return None
        if kind == 12:
            return self.struct()
        raise _Unsupported(f"thrift type {kind}")


def _int(fields: dict[int, object], fid: int) -> int:
    v = fields.get(fid)
    if not isinstance(v, int) or isinstance(v, bool):
        raise _Unsupported(f"page header field {fid} missing")
    return v


def plain_values(path: Path, column: str, populate: bool = False) -> tuple[np.ndarray, int] | None:
    """(flat values, list size) of a fixed_size_list column as read-only views of the mapped file, or None when
    the file is not in the uncompressed-PLAIN layout (the caller then reads it through Arrow). `populate` maps
    every page at once (MAP_POPULATE) for a reader that will touch them all: one call instead of a fault per 4 KB
    page; a reader of a few rows (kNN re-ranking) leaves it off. A file of several pages (row groups) comes back
    joined, a copy: readers of whole tables use `plain_pieces`."""
    found = plain_pieces(path, column, populate)
    if found is None or not found[0]:
        return None
    pieces, dim = found
    return (pieces[0] if len(pieces) == 1 else np.concatenate(pieces)), dim


def plain_pieces(path: Path, column: str, populate: bool = False) -> tuple[list[np.ndarray], int] | None:
    """As `plain_values`, the values of each data page apart (views, never a copy)."""
    try:
        return _plain_pieces(path, column, populate)
    except (_Unsupported, IndexError, KeyError, ValueError, RecursionError):  # damaged bytes: let Arrow judge
        return None


def value_spans(path: Path, column: str) -> tuple[list[tuple[int, int]], np.dtype, int] | None:
    """Where a fixed_size_list column's values lie in the file: (byte offset, value count) of each data page, the
    value dtype and the list size; None where the layout is not uncompressed PLAIN. For a reader that streams the
    file's bytes itself rather than mapping them (`verify --deep` reads past the page cache): only the page headers
    are read here."""
    try:
        _, spans, dtype, dim = _spans(path, column, populate=False)
    except (_Unsupported, IndexError, KeyError, ValueError, RecursionError, OSError, pa.ArrowException):
        return None  # read before the file's checksum is known: damaged bytes are the checksum's to report
    return spans, dtype, dim


def _plain_pieces(path: Path, column: str, populate: bool) -> tuple[list[np.ndarray], int]:
    mm, spans, dtype, dim = _spans(path, column, populate)
    return [np.frombuffer(mm, dtype=dtype, count=n, offset=start) for start, n in spans], dim


def _spans(path: Path, column: str, populate: bool) -> tuple[mmap.mmap, list[tuple[int, int]], np.dtype, int]:
    """(the mapped file, (offset, value count) of each data page, dtype, list size), every assumption checked."""
    pf = pq.ParquetFile(path)
    arrow_type = pf.schema_arrow.field(column).type
    dim = getattr(arrow_type, "list_size", None)
    leaves = [i for i in range(pf.metadata.num_columns) if pf.schema.column(i).path.split(".")[0] == column]
    if dim is None or len(leaves) != 1:
        raise _Unsupported("not a fixed_size_list column")
    leaf = leaves[0]
    col = pf.schema.column(leaf)
    dtype = _DTYPES.get(col.physical_type)
    if col.physical_type == "FIXED_LEN_BYTE_ARRAY" and col.length == 2 and str(col.logical_type) == "Float16":
        dtype = np.dtype("<f2")  # PLAIN FIXED_LEN_BYTE_ARRAY values are the raw halves, back to back
    if dtype is None:
        raise _Unsupported("not float")
    size = path.stat().st_size
    if size == 0:
        raise _Unsupported("empty file")
    with open(path, "rb") as f:
        flags = mmap.MAP_SHARED | (getattr(mmap, "MAP_POPULATE", 0) if populate else 0)
        mm = mmap.mmap(f.fileno(), 0, flags=flags, prot=mmap.PROT_READ)
    buf = memoryview(mm)
    spans: list[tuple[int, int]] = []
    for rg in range(pf.metadata.num_row_groups):
        meta = pf.metadata.row_group(rg).column(leaf)
        if meta.compression != _UNCOMPRESSED or meta.has_dictionary_page:
            raise _Unsupported("compressed or dictionary-encoded")
        pos, end = meta.data_page_offset, meta.data_page_offset + meta.total_compressed_size
        count = 0
        while pos < end:
            reader = _Compact(buf, pos)
            header = reader.struct()
            body = reader.pos
            if any(fid > 8 for fid in header):  # PageHeader has fields 1–8: anything else is damage
                raise _Unsupported("unknown page header field")
            kind, length = _int(header, 1), _int(header, 3)
            if _int(header, 2) != length:
                raise _Unsupported("compressed page")
            if kind == _DATA_PAGE_V2:
                v2 = header.get(8)
                if not isinstance(v2, dict) or _int(v2, 4) != _PLAIN or _int(v2, 2) != 0 or v2.get(7, True):
                    raise _Unsupported("v2 page not plain, with nulls, or compressed")
                n = _int(v2, 1)
                start = body + _int(v2, 5) + _int(v2, 6)
            elif kind == _DATA_PAGE:
                v1 = header.get(5)
                if not isinstance(v1, dict) or _int(v1, 2) != _PLAIN:
                    raise _Unsupported("v1 page not plain")
                n = _int(v1, 1)
                start = body
                levels = (col.max_repetition_level > 0) + (col.max_definition_level > 0)
                for _ in range(levels):  # repetition then definition levels, each prefixed by its byte length
                    start += 4 + int.from_bytes(buf[start : start + 4], "little")
            else:
                raise _Unsupported("unexpected page type")
            if body + length - start != n * dtype.itemsize:
                raise _Unsupported("value bytes do not match the value count (nulls or empty lists)")
            spans.append((start, n))
            count += n
            pos = body + length
        if count != meta.num_values or pos != end:  # a damaged header that parsed would shift every value
            raise _Unsupported("pages do not add up to the column chunk")
    if sum(n for _, n in spans) != pf.metadata.num_rows * dim:
        raise _Unsupported("value count is not rows × list size")
    return mm, spans, dtype, dim
