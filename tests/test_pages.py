"""The zero-copy page reader must return exactly what Arrow decodes, or None — never something else."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from dmin.kernels.dot import count_nonfinite_rows, timestep_dots
from dmin.store.atomic import write_parquet_atomic
from dmin.store.pages import plain_values
from dmin.store.schema import vec_type
from dmin.store.vectors import VectorBlock, read_blocks


def read_all(path: Path, K: int) -> tuple[list[VectorBlock], list[str], np.ndarray, bool]:
    """A file's blocks, and their keys, vectors (rows, dim) and mapped flags taken together."""
    blocks = read_blocks(path, "sample_id", K)
    keys = [k for b in blocks for k in b.keys.to_pylist()]
    vecs = np.concatenate([b.vecs.reshape(-1, b.vecs.shape[-1]) for b in blocks])
    return blocks, keys, vecs, all(b.mapped for b in blocks)


def vec_table(rows: int, dim: int, dtype: str = "float32", seed: int = 0) -> tuple[pa.Table, np.ndarray]:
    x = np.random.default_rng(seed).standard_normal((rows, dim)).astype(dtype)
    ids = pa.array([f"s{i // 2:04d}" for i in range(rows)])
    vec = pa.FixedSizeListArray.from_arrays(pa.array(x.reshape(-1)), type=vec_type(dim, dtype))
    schema = pa.schema([pa.field("sample_id", pa.string(), nullable=False), pa.field("vec", vec.type, nullable=False)])
    return pa.table({"sample_id": ids, "vec": vec}, schema=schema), x


@pytest.mark.parametrize(
    "options",
    [
        {},  # dmin's own writer
        {"compression": "none", "use_dictionary": False, "data_page_version": "1.0"},
        {"compression": "none", "use_dictionary": False, "data_page_version": "2.0"},
        {"compression": "none", "use_dictionary": False, "data_page_size": 4096, "row_group_size": 7},
        {"compression": "none", "use_dictionary": False, "write_statistics": True, "write_page_checksum": True},
    ],
)
@pytest.mark.parametrize("dtype", ["float32", "float16"])
def test_plain_values_equal_arrow(tmp_path: Path, options: dict, dtype: str) -> None:
    table, x = vec_table(50, 24, dtype)
    path = tmp_path / "a.parquet"
    if options:
        pq.write_table(table, path, **options)
    else:
        write_parquet_atomic(path, table)
    got = plain_values(path, "vec")
    assert got is not None
    flat, dim = got
    assert dim == 24 and flat.dtype == np.dtype(dtype)
    if not options:  # dmin's layout: one page per group, so a read-only view of the mapping, not a copy
        assert not flat.flags.writeable and not flat.flags.owndata
    np.testing.assert_array_equal(flat.reshape(50, 24), x)
    _, keys, vecs, mapped = read_all(path, K=2)
    assert mapped == ("data_page_size" not in options)  # pages that split rows are joined into a copy
    assert keys == [f"s{i:04d}" for i in range(25)]
    np.testing.assert_array_equal(vecs, x)


@pytest.mark.parametrize("options", [{}, {"compression": "zstd"}, {"compression": "none"}])
def test_layouts_the_fast_path_cannot_map_fall_back(tmp_path: Path, options: dict) -> None:
    table, x = vec_table(20, 8)
    path = tmp_path / "b.parquet"
    pq.write_table(table, path, **options)  # dictionary encoding or compression: Arrow must decode
    assert plain_values(path, "vec") is None
    _, _, vecs, mapped = read_all(path, K=2)
    assert not mapped
    np.testing.assert_array_equal(vecs, x)


def test_unaligned_views_score_like_aligned_copies(tmp_path: Path) -> None:
    x = np.random.default_rng(3).standard_normal((6, 3, 40)).astype(np.float32)
    q = np.random.default_rng(4).standard_normal((3, 40)).astype(np.float32)
    want = np.einsum("nkd,kd->nk", x.astype(np.float64), q.astype(np.float64))
    for offset in range(4):
        raw = b"\0" * offset + x.tobytes()  # page values start wherever the header ends
        view = np.frombuffer(raw, dtype=np.float32, offset=offset).reshape(6, 3, 40)
        assert view.flags.aligned == (offset == 0)
        np.testing.assert_allclose(timestep_dots(view, q), want, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("dim", [255, 256, 600, 1000])
def test_long_vectors_sum_every_value_once(dim: int) -> None:
    """Runs of 256 in float32: a length that is not a multiple of the run ends inside the vector, never past it."""
    x = np.random.default_rng(5).standard_normal((4, 2, dim)).astype(np.float32)
    q = np.random.default_rng(6).standard_normal((2, dim)).astype(np.float32)
    want = np.einsum("nkd,kd->nk", x.astype(np.float64), q.astype(np.float64))
    np.testing.assert_allclose(timestep_dots(x, q), want, rtol=1e-5, atol=1e-4)


def test_damaged_page_headers_never_hang_or_crash(tmp_path: Path) -> None:
    table, vecs = vec_table(30, 16)
    good = tmp_path / "good.parquet"
    write_parquet_atomic(good, table)
    data = good.read_bytes()
    start = pq.ParquetFile(good).metadata.row_group(0).column(1).data_page_offset  # the vec page's header
    rng = np.random.default_rng(7)
    outcomes = set()
    for trial in range(80):
        bad = bytearray(data)
        at = start + int(rng.integers(0, 40))  # a flip here changes the header's sizes, types and counts
        bad[at] ^= int(rng.integers(1, 256))
        path = tmp_path / f"bad{trial}.parquet"
        path.write_bytes(bytes(bad))
        got = plain_values(path, "vec")  # returns None or values; must not raise, hang or read out of bounds
        outcomes.add(got is None)
        if got is not None:  # a flip it accepted left the layout intact: the values are the ones written, in place
            assert got[1] == 16 and got[0].size == 30 * 16
            moved = np.flatnonzero(got[0].view(np.uint32) != vecs.reshape(-1).view(np.uint32))
            assert len(moved) <= 1  # at most the float holding the flipped byte (the checksum's job), never shifted
    assert True in outcomes  # some damage was noticed (the rest left the values' layout intact)


def test_rows_too_big_for_one_page_use_split_pages(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """v=full of a large model: a row over the page budget is written as v1 pages that may split it."""
    import dmin.store.atomic as atomic

    monkeypatch.setattr(atomic, "_GROUP_BYTES", 64)  # rows of 24 floats (96 bytes) are now "too big"
    table, x = vec_table(50, 24)
    path = tmp_path / "big.parquet"
    write_parquet_atomic(path, table)
    meta = pq.ParquetFile(path).metadata
    assert meta.num_row_groups == 50  # one row per group
    _, keys, vecs, _ = read_all(path, K=2)
    assert keys == [f"s{i:04d}" for i in range(25)]
    np.testing.assert_array_equal(vecs, x)


def test_a_file_of_several_row_groups_is_read_in_place_group_by_group(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A merged file past 1 GiB holds several row groups whose sizes need not be multiples of K: each group is a
    view of the mapping (joining them copied the whole file on every read: 3.4 s an exact query at 10^6), and a
    sample whose K rows straddle two groups gets a block of its own."""
    import dmin.store.atomic as atomic

    monkeypatch.setattr(atomic, "_GROUP_BYTES", 7 * 24 * 4)  # groups of 7 rows: every other boundary splits a sample
    table, x = vec_table(50, 24)
    path = tmp_path / "groups.parquet"
    write_parquet_atomic(path, table)
    assert pq.ParquetFile(path).metadata.num_row_groups == 8
    blocks, keys, vecs, _ = read_all(path, K=2)
    assert keys == [f"s{i:04d}" for i in range(25)]  # every sample once, in order
    np.testing.assert_array_equal(vecs, x)
    whole = [b for b in blocks if len(b.keys) > 1]
    assert whole and all(b.mapped and not b.vecs.flags.owndata for b in whole)  # views, not copies
    straddled = [b.keys.to_pylist() for b in blocks if not b.mapped]  # rows 6-7, 20-21, 34-35, 48-49
    assert straddled == [["s0003"], ["s0010"], ["s0017"], ["s0024"]]
    query = np.random.default_rng(1).standard_normal((2, 24)).astype(np.float32)
    got = np.concatenate([timestep_dots(b.vecs, query) for b in blocks])
    want = np.einsum("nkd,kd->nk", x.reshape(25, 2, 24).astype(np.float64), query)
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)


def test_verify_scans_a_file_of_several_row_groups_in_place(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """`verify --deep`'s vector scan walks each row group's mapped values (joining them copied a 2.5 GB file) and
    still finds a NaN in any group."""
    import dmin.store.atomic as atomic
    from dmin.findings import Findings
    from dmin.store.manifest import FileRef
    from dmin.verify import check_vectors
    from tests.conftest import make_identity

    monkeypatch.setattr(atomic, "_GROUP_BYTES", 7 * 24 * 4)
    table, x = vec_table(50, 24)
    n = pa.array(np.ones(50))
    table = table.append_column("norm", n).append_column("loss", n)
    path = tmp_path / "groups.parquet"
    write_parquet_atomic(path, table)
    ref = FileRef("grads/v=24/groups.parquet", "grads", "24", 50, path.stat().st_size, "")
    found = Findings(True)
    check_vectors(make_identity(), ref, path, found)
    assert found.checked["vectors"] == 50 and not found.findings
    x[45, 3] = np.nan  # in the last group
    vec = pa.FixedSizeListArray.from_arrays(pa.array(x.reshape(-1)), type=vec_type(24, "float32"))
    bad = table.set_column(1, "vec", vec)
    write_parquet_atomic(path, bad)
    found = Findings(True)
    check_vectors(make_identity(), ref, path, found)
    assert [(f.check, f.message) for f in found.findings] == [("finite", "1 vector(s) hold NaN or infinity")]


def test_nonfinite_rows_are_counted_in_float32_float16_and_unaligned_views() -> None:
    """`verify --deep`'s vector scan judges the exponent bits: NaN, +inf and -inf anywhere in a row count once,
    the largest finite value does not; float16 vectors (which numba cannot load as floats) and unaligned mapped
    views are read the same way."""
    x = np.random.default_rng(0).standard_normal((100, 33)).astype(np.float32)
    x[60, 1] = np.finfo(np.float32).max
    assert count_nonfinite_rows(x) == 0
    x[3, 0], x[3, 5], x[50, 32], x[99, 7] = np.nan, np.inf, -np.inf, np.inf
    assert count_nonfinite_rows(x) == 3
    unaligned = np.frombuffer(b"\0" + x.tobytes(), np.float32, offset=1).reshape(100, 33)
    assert not unaligned.flags.aligned and count_nonfinite_rows(unaligned) == 3
    with np.errstate(over="ignore"):
        half = x.astype(np.float16)  # x[60, 1] overflows to inf in float16
    assert count_nonfinite_rows(half) == 4
    half[60, 1] = np.finfo(np.float16).max
    assert count_nonfinite_rows(half) == 3


def test_prefetch_asks_for_the_pages_of_exactly_the_rows_wanted(tmp_path: Path) -> None:
    """A kNN re-rank asks the kernel for its candidates' rows at once (MADV_WILLNEED): one page-aligned range per
    row that covers the row's bytes, nothing for a decoded copy or no rows."""
    import mmap

    from dmin.store.vectors import mapping_of, prefetch_rows

    table, _ = vec_table(4000, 24)  # 2000 samples of K = 2 rows: 192 bytes a sample
    path = tmp_path / "a.parquet"
    write_parquet_atomic(path, table)
    calls: list[tuple[int, int, int]] = []

    class Recording(mmap.mmap):
        def madvise(self, option: int, start: int = 0, length: int = -1) -> None:
            calls.append((option, start, length))
            super().madvise(option, start, length)

    view = read_blocks(path, "sample_id", 2)[0].vecs
    owner = mapping_of(view)
    assert owner is not None  # read_blocks hands out views of the mapped file
    offset = view.ctypes.data - np.frombuffer(owner, np.uint8, count=1).ctypes.data  # the values' place in the file
    with open(path, "rb") as f:
        mm = Recording(f.fileno(), 0, prot=mmap.PROT_READ)
    vecs = np.frombuffer(mm, np.float32, count=2000 * 2 * 24, offset=offset).reshape(2000, 2, 24)
    prefetch_rows(vecs, np.array([1999, 0, 7, 7]))
    assert len(calls) == 3  # each row once
    for (option, start, length), row in zip(calls, (0, 7, 1999), strict=True):
        first, last = offset + row * 192, offset + (row + 1) * 192
        assert option == mmap.MADV_WILLNEED and start % mmap.PAGESIZE == 0
        assert start <= first and start + length >= last and length < 192 + mmap.PAGESIZE
    calls.clear()
    prefetch_rows(np.array(vecs), np.array([3]))  # a decoded copy: nothing to ask the disk for
    prefetch_rows(vecs, np.array([], dtype=np.int64))
    assert calls == []
