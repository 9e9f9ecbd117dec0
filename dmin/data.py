"""Training data: an image folder with metadata.jsonl / metadata.csv (diffusers' imagefolder convention), or a
Parquet file with an image column (bytes, or Hugging Face's {bytes, path} struct) and caption/label columns.

Records carry the raw image bytes (hashed into sample_id) and are decoded lazily, so an unreadable image becomes a
`failures` row instead of stopping the run. File names must stay inside the data folder (no `..`, no absolute paths,
no symlinks out).
"""

from __future__ import annotations

import csv
import io
import json
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pyarrow.parquet as pq
import xxhash
from PIL import Image

from dmin.errors import DataError

CAPTION_COLUMNS = ("text", "prompt", "caption")
MAX_PIXELS = 64 * 1024 * 1024


@dataclass
class Record:
    source: str
    data: bytes | None
    caption: str | None
    label: int | None
    extra: dict[str, Any] = field(default_factory=dict)
    error: str | None = None

    @property
    def sample_id(self) -> str:
        """xxh3-128 of the image bytes and the condition: the same sample always has the same key."""
        cond = json.dumps({"caption": self.caption, "label": self.label}, sort_keys=True).encode()
        return xxhash.xxh3_128_hexdigest((self.data or b"") + b"\0" + cond)

    def image(self) -> Image.Image:
        if self.error:
            raise DataError(self.error)
        try:
            img = Image.open(io.BytesIO(self.data or b""))
            if img.width * img.height > MAX_PIXELS:
                raise DataError(f"{self.source}: image of {img.width}x{img.height} pixels exceeds the limit")
            img.load()
            return img
        except DataError:
            raise
        except Exception as exc:  # PIL raises many types for broken files
            raise DataError(f"{self.source}: unreadable image ({type(exc).__name__}: {exc})") from exc


@dataclass
class Dataset:
    path: Path
    records: list[Record]
    has_caption: bool
    has_label: bool

    def __len__(self) -> int:
        return len(self.records)


def _label(value: Any, where: str) -> int | None:
    if value is None or value == "":
        return None
    try:
        return int(value)
    except (TypeError, ValueError) as exc:
        raise DataError(f"{where}: label {value!r} is not an integer; labels are class indices (0, 1, …)") from exc


def _split(row: dict[str, Any], where: str) -> tuple[str | None, int | None, dict[str, Any], bool, bool]:
    cap_col = next((c for c in CAPTION_COLUMNS if c in row), None)
    caption = None if cap_col is None or row[cap_col] is None else str(row[cap_col])
    label = _label(row.get("label"), where)
    skip = {"file_name", "image", "label", *CAPTION_COLUMNS}
    extra = {k: v for k, v in row.items() if k not in skip}
    return caption, label, extra, cap_col is not None, "label" in row


def read_jsonl(path: Path, example: str) -> Iterator[tuple[str, dict[str, Any]]]:
    """(path:line, object) for each non-blank line of a JSONL file; anything else is a DataError naming the line
    (`example` shows what a line should look like)."""
    for n, line in enumerate(path.read_text(errors="replace").splitlines(), 1):
        if not line.strip():
            continue
        where = f"{path}:{n}"
        try:
            row = json.loads(line)
        except json.JSONDecodeError as exc:
            raise DataError(f"{where}: malformed JSON ({exc.msg}); fix the line") from exc
        if not isinstance(row, dict):
            raise DataError(f"{where}: each line must be a JSON object, e.g. {example}")
        yield where, row


def _read_metadata(folder: Path) -> list[dict[str, Any]]:
    jsonl, csv_path = folder / "metadata.jsonl", folder / "metadata.csv"
    if jsonl.is_file():
        return [row for _, row in read_jsonl(jsonl, '{"file_name": "0001.png", "text": "a photo of …"}')]
    if csv_path.is_file():
        with open(csv_path, newline="") as f:
            return list(csv.DictReader(f))
    raise DataError(
        f"--data {folder}: no metadata.jsonl or metadata.csv (diffusers' imagefolder convention: "
        f"file_name plus text/label columns)"
    )


def _folder(folder: Path) -> Dataset:
    rows = _read_metadata(folder)
    if not rows:
        raise DataError(
            f"--data {folder}: its metadata lists no images; write one row per image (file_name plus text and/or "
            f"label), e.g. {{\"file_name\": \"0001.png\", \"text\": \"a photo of …\"}}"
        )
    base = folder.resolve()
    records, any_cap, any_label = [], False, False
    for n, row in enumerate(rows, 1):
        name = row.get("file_name")
        if not isinstance(name, str) or not name:
            raise DataError(f"{folder}/metadata row {n}: missing file_name")
        caption, label, extra, has_cap, has_label = _split(row, f"{folder}/metadata row {n}")
        any_cap |= has_cap
        any_label |= has_label
        target = (folder / name).resolve()
        error = None
        data = None
        if Path(name).is_absolute() or not target.is_relative_to(base):
            error = f"{name}: file_name escapes the data folder (absolute path, '..' or a symlink out); refused"
        elif not target.is_file():
            error = f"{name}: no such file in {folder}"
        else:
            data = target.read_bytes()
        records.append(Record(name, data, caption, label, extra, error))
    return Dataset(folder, records, any_cap, any_label)


def _parquet(path: Path) -> Dataset:
    try:
        table = pq.read_table(path)
    except Exception as exc:
        raise DataError(f"--data {path}: unreadable Parquet ({exc})") from exc
    if "image" not in table.column_names:
        raise DataError(f"--data {path}: no 'image' column (raw bytes or a {{bytes, path}} struct)")
    records, any_cap, any_label = [], False, False
    for n, row in enumerate(table.to_pylist()):
        img = row.get("image")
        data = img.get("bytes") if isinstance(img, dict) else img
        caption, label, extra, has_cap, has_label = _split(row, f"{path} row {n}")
        any_cap |= has_cap
        any_label |= has_label
        src = f"{path.name}#{n}"
        error = None if isinstance(data, bytes | bytearray) else f"{src}: image column holds no bytes"
        records.append(Record(src, bytes(data) if data else None, caption, label, extra, error))
    return Dataset(path, records, any_cap, any_label)


def load_dataset(path: str | Path) -> Dataset:
    """Read a data set's records (metadata and raw bytes; images are decoded later, one at a time)."""
    p = Path(path)
    if p.is_dir():
        return _folder(p)
    if p.is_file() and p.suffix == ".parquet":
        return _parquet(p)
    if not p.exists():
        raise DataError(f"--data {p}: no such file or directory; pass an image folder or a .parquet file")
    raise DataError(f"--data {p}: expected an image folder with metadata.jsonl/csv or a .parquet file")


def shard(records: list[Record], index: int, count: int) -> Iterator[tuple[int, Record]]:
    """Records of shard index/count (round-robin by position, stable across runs)."""
    for i, r in enumerate(records):
        if i % count == index:
            yield i, r
