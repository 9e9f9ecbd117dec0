"""verify --deep reads each file once, past the page cache: the hash and the vector scan of that one read must be
what reading through the cache gives, whatever the block boundaries cut."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest

from dmin.store import direct
from dmin.store.atomic import file_checksum, write_parquet_atomic
from dmin.store.manifest import FileRef
from dmin.store.pages import value_spans
from dmin.store.schema import vec_type
from dmin.verify import NonfiniteScan

# (block, smallest file read past the cache): O_DIRECT's own 4 KiB blocks; and the cache's path with a block that
# is no multiple of a value's size, so values straddle every block boundary
READS = [(4096, 0), (4098, 1 << 40)]


@pytest.mark.parametrize(("block", "direct_from"), READS)
@pytest.mark.parametrize("size", [0, 1, 4095, 4096, 4097, 3 * 4096 + 5])
def test_checksum_read_past_the_cache_is_the_files_checksum(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, block: int, direct_from: int, size: int
) -> None:
    monkeypatch.setattr(direct, "BLOCK", block)
    monkeypatch.setattr(direct, "DIRECT_FROM", direct_from)
    path = tmp_path / "f.bin"
    path.write_bytes(np.random.default_rng(size).integers(0, 256, size, dtype=np.uint8).tobytes())
    seen: list[tuple[int, bytes]] = []
    assert direct.checksum(path, lambda offset, b: seen.append((offset, bytes(b)))) == file_checksum(path)
    assert b"".join(b for _, b in seen) == path.read_bytes()  # every byte once, in order, at its offset
    assert [o for o, _ in seen] == list(range(0, size, block))[: len(seen)]


def vector_file(path: Path, x: np.ndarray, dtype: str) -> FileRef:
    """A grads-like file of several row groups (70 rows each), as dmin writes it."""
    vec = pa.FixedSizeListArray.from_arrays(pa.array(x.reshape(-1).astype(dtype)), type=vec_type(x.shape[1], dtype))
    ones = pa.array(np.ones(len(x)))
    table = pa.table({"sample_id": [f"s{i:03d}" for i in range(len(x))], "vec": vec, "norm": ones, "loss": ones})
    write_parquet_atomic(path, table)
    return FileRef("grads/v=24/f.parquet", "grads", "24", len(x), path.stat().st_size, "")


@pytest.mark.parametrize("dtype", ["float32", "float16"])
@pytest.mark.parametrize(("block", "direct_from"), READS)
def test_scan_finds_a_bad_value_anywhere_even_split_between_blocks(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, dtype: str, block: int, direct_from: int
) -> None:
    import dmin.store.atomic as atomic

    monkeypatch.setattr(atomic, "_GROUP_BYTES", 70 * 24 * 4)
    monkeypatch.setattr(direct, "BLOCK", block)
    monkeypatch.setattr(direct, "DIRECT_FROM", direct_from)
    x = np.random.default_rng(0).standard_normal((400, 24)).astype(np.float32)
    path = tmp_path / "f.parquet"
    ref = vector_file(path, x, dtype)
    found = value_spans(path, "vec")
    assert found is not None and len(found[0]) == 6  # one page per row group
    spans, dt, _ = found
    scan = NonfiniteScan.of(ref, path)
    assert scan is not None and scan.rows == 400
    assert direct.checksum(path, scan) == file_checksum(path) and scan.clean
    # each value whose bytes cross a block boundary, and the first and last value of the file
    size = dt.itemsize
    where = [
        (start, i)
        for start, n in spans
        for i in range(n)
        if (start + i * size) // block != (start + i * size + size - 1) // block
    ]
    if block % size:
        assert where  # the case this test exists for
    where += [(spans[0][0], 0), (spans[-1][0], spans[-1][1] - 1)]
    for start, i in where:
        span = next(k for k, (s, _) in enumerate(spans) if s == start)
        flat = sum(n for _, n in spans[:span]) + i
        bad = x.copy()
        bad.reshape(-1)[flat] = np.inf if flat % 2 else np.nan
        ref = vector_file(path, bad, dtype)
        scan = NonfiniteScan.of(ref, path)
        assert scan is not None
        direct.checksum(path, scan)
        assert not scan.clean, (start, i)


def test_a_read_refused_midway_goes_on_through_the_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Some filesystems accept O_DIRECT at open and refuse a read later (EINVAL, e.g. after a short read left the
    offset unaligned): the rest of the file is read plainly from where it stopped, every byte once."""
    import errno
    import os

    monkeypatch.setattr(direct, "BLOCK", 4096)
    monkeypatch.setattr(direct, "DIRECT_FROM", 0)
    path = tmp_path / "f.bin"
    path.write_bytes(np.random.default_rng(1).integers(0, 256, 5 * 4096 + 7, dtype=np.uint8).tobytes())
    calls = []
    real = os.readv

    def readv(fd: int, buffers: list) -> int:
        calls.append(fd)
        if len(calls) == 3:
            raise OSError(errno.EINVAL, "Invalid argument")
        return real(fd, buffers)

    monkeypatch.setattr(direct.os, "readv", readv)
    seen: list[bytes] = []
    assert direct.checksum(path, lambda offset, b: seen.append(bytes(b))) == file_checksum(path)
    assert b"".join(seen) == path.read_bytes() and len(calls) == 7  # 2 direct, 1 refused, 4 plain
    monkeypatch.setattr(direct.os, "readv", lambda fd, buffers: (_ for _ in ()).throw(OSError(errno.EIO, "I/O")))
    with pytest.raises(OSError, match="I/O"):  # any other error is the caller's to report
        direct.checksum(path)


@pytest.mark.parametrize("damage", ["footer", "truncated", "magic", "footer length"])
def test_a_damaged_file_gets_no_scan_and_no_exception(tmp_path: Path, damage: str) -> None:
    """The scan's page spans are read before the checksum is known: damaged bytes must leave the file to the
    checksum (a defect naming it), never raise out of the file pass (which would leave every other file unchecked)."""
    path = tmp_path / "f.parquet"
    ref = vector_file(path, np.ones((30, 24), np.float32), "float32")
    b = path.read_bytes()
    intact = file_checksum(path)
    path.write_bytes(
        {
            "footer": b[:-12] + b"\0" * 8 + b[-4:],
            "truncated": b[: len(b) // 2],
            "magic": b[:-4] + b"XXXX",
            "footer length": b[:-8] + (10**6).to_bytes(4, "little") + b[-4:],
        }[damage]
    )
    assert NonfiniteScan.of(ref, path) is None
    assert direct.checksum(path) != intact
