"""dmin's own writer for vector tables must produce files every reader sees exactly as Arrow's writer would."""

from __future__ import annotations

import io
from pathlib import Path

import duckdb
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from dmin.store import plain_parquet
from dmin.store.atomic import file_checksum, write_parquet_atomic
from dmin.store.pages import _Compact, plain_values
from dmin.store.tables import grads_table


def grads(rows: int, K: int, dim: int, dtype: str, seed: int = 0) -> pa.Table:
    rng = np.random.default_rng(seed)
    ids = [f"s{i}" + "é" * (i % 3) for i in range(rows)]  # uneven, non-ASCII lengths
    return grads_table(
        "sample_id",
        ids,
        [10.0 * k for k in range(K)],
        rng.standard_normal((rows, K, dim)),
        rng.random((rows, K)),
        rng.random((rows, K)),
        dtype,
    )


def write(table: pa.Table, path: Path, group_rows: int) -> None:
    buf = io.BytesIO()
    plain_parquet.write(buf.write, table, group_rows)
    path.write_bytes(buf.getvalue())


@pytest.mark.parametrize("dtype", ["float32", "float16"])
@pytest.mark.parametrize("dim", [1, 3, 257])
@pytest.mark.parametrize("group_rows", [1, 4, 1000])
def test_readers_see_the_table_that_was_written(tmp_path: Path, dtype: str, dim: int, group_rows: int) -> None:
    table = grads(7, 3, dim, dtype)
    table = pa.concat_tables([table.slice(6), table.slice(0, 6)])  # several chunks, sliced buffers
    ours, arrows = tmp_path / "ours.parquet", tmp_path / "arrow.parquet"
    write(table, ours, group_rows)
    pq.write_table(table, arrows)
    back = pq.read_table(ours)
    assert back.schema == table.schema  # the Arrow schema travels in the footer: fixed_size_list, float16, non-null
    assert back.equals(table.combine_chunks())
    assert pq.ParquetFile(ours).schema.equals(pq.ParquetFile(arrows).schema)
    assert pq.ParquetFile(ours).metadata.num_row_groups == -(-21 // group_rows)
    got = plain_values(ours, "vec")  # the zero-copy reader maps every page (no Arrow fallback)
    assert got is not None and got[1] == dim
    want = table.column("vec").combine_chunks().flatten().to_numpy()
    np.testing.assert_array_equal(got[0], want)
    rows = duckdb.sql(f"SELECT sample_id, t_idx, vec, loss FROM read_parquet('{ours}')").fetchall()
    assert [r[0] for r in rows] == table.column("sample_id").to_pylist()
    assert [r[1] for r in rows] == table.column("t_idx").to_pylist()
    np.testing.assert_allclose(np.array([r[2] for r in rows], dtype=np.float64).reshape(-1), want.astype(np.float64))
    assert [r[3] for r in rows] == table.column("loss").to_pylist()


def test_write_parquet_atomic_uses_it_for_vectors_and_returns_the_file_checksum(tmp_path: Path) -> None:
    table = grads(5, 2, 64, "float32")
    path = tmp_path / "g.parquet"
    assert write_parquet_atomic(path, table) == file_checksum(path)
    assert pq.ParquetFile(path).metadata.created_by.startswith("dmin")
    other = pa.table({"sample_id": ["a", None], "label": [1, 2]})  # nullable: Arrow writes it
    path2 = tmp_path / "s.parquet"
    assert write_parquet_atomic(path2, other) == file_checksum(path2)
    assert pq.ParquetFile(path2).metadata.created_by.startswith("parquet-cpp")
    assert pq.read_table(path2).equals(other)


def test_supports_only_non_null_flat_tables_with_a_vector() -> None:
    table = grads(3, 2, 4, "float32")
    assert plain_parquet.supports(table)
    assert not plain_parquet.supports(table.slice(0, 0))
    assert not plain_parquet.supports(table.drop_columns(["vec"]))  # nothing to gain without vectors
    nullable = table.schema.set(0, pa.field("sample_id", pa.string(), nullable=True))
    assert not plain_parquet.supports(table.cast(nullable))
    listed = table.append_column("scores", pa.array([[1.0]] * 6, pa.list_(pa.float64())))
    assert not plain_parquet.supports(listed)
    with_nulls = pa.table({"k": pa.array(["a", None]), "vec": table.column("vec").slice(0, 2)})
    assert not plain_parquet.supports(with_nulls)


def test_thrift_encoding_reads_back_with_the_independent_decoder() -> None:
    fields = [
        (1, plain_parquet._I32, -5),
        (2, plain_parquet._BOOL, False),
        (20, plain_parquet._I64, 1 << 40),  # a jump over 15 ids: the long field header
        (21, plain_parquet._LIST, (plain_parquet._I32, list(range(20)))),  # a long list header
        (22, plain_parquet._BINARY, "x" * 200),
        (23, plain_parquet._STRUCT, [(3, plain_parquet._I16, 7)]),
        (24, plain_parquet._I32, None),  # unset optional: left out
    ]
    data = plain_parquet._struct(fields)
    reader = _Compact(memoryview(data), 0)
    got = reader.struct()
    assert reader.pos == len(data)
    assert got[1] == -5 and got[2] is False and got[20] == 1 << 40 and got[23] == {3: 7} and 24 not in got


def test_a_file_that_reads_back_wrong_is_never_committed(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    real = plain_parquet.write
    monkeypatch.setattr(plain_parquet, "write", lambda out, table, rows: real(out, table.slice(1), rows))  # a bug
    path = tmp_path / "g.parquet"
    with pytest.raises(RuntimeError, match="dmin bug"):
        write_parquet_atomic(path, grads(3, 2, 8, "float32"))
    assert list(tmp_path.iterdir()) == []  # neither the file nor its temp is left
