"""Model fingerprints that cost nothing the second time: per-file digests cached by the file's stat.

A fingerprint is xxh3-128 over the sorted (relative name, file digest) pairs of the files that shape gradients. A
file digest (xxh3-128 of its bytes) is cached, keyed by the resolved path and (size, mtime_ns, ctime_ns, inode,
device): any write to a file changes its ctime, which no user tool can set back, so a changed weight file is always
read again, while an unchanged 5 GB model costs a few stat calls. The cache is one JSON file in
$DMIN_CACHE_DIR (default $XDG_CACHE_HOME/dmin, else ~/.cache/dmin); when it cannot be written, digests are simply
recomputed.
"""

from __future__ import annotations

import contextlib
import json
import os
import uuid
from pathlib import Path

import xxhash

_CHUNK = 1 << 24
Cache = dict[str, list[int | str]]


def cache_file() -> Path:
    base = os.environ.get("DMIN_CACHE_DIR") or os.path.join(
        os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache"), "dmin"
    )
    return Path(base) / "fingerprints.json"


def _load() -> Cache:
    try:
        raw = json.loads(cache_file().read_text())
    except (OSError, ValueError):
        return {}
    return raw if isinstance(raw, dict) else {}


def _save(cache: Cache) -> None:
    path = cache_file()
    with contextlib.suppress(OSError):  # a read-only home only costs re-reading next time
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.parent / f".tmp-{uuid.uuid4().hex[:8]}"
        tmp.write_text(json.dumps(cache))
        os.replace(tmp, path)


def file_digest(path: Path, cache: Cache) -> tuple[str, bool]:
    """(xxh3-128 of the file's bytes, whether it had to be read); `cache` is updated when it was."""
    real = path.resolve()
    st = real.stat()
    key: list[int | str] = [st.st_size, st.st_mtime_ns, st.st_ctime_ns, st.st_ino, st.st_dev]
    hit = cache.get(str(real))
    if hit is not None and hit[:5] == key:
        return str(hit[5]), False
    h = xxhash.xxh3_128()
    with open(real, "rb") as f:
        while block := f.read(_CHUNK):
            h.update(block)
    cache[str(real)] = [*key, h.hexdigest()]
    return h.hexdigest(), True


def fingerprint(paths: list[Path], root: Path, documents: dict[str, bytes] | None = None) -> str:
    """xxh3-128 over the sorted relative names and byte digests of `paths` (files under root) and of in-memory
    `documents` (name → bytes: a file's meaningful part, e.g. model_index.json without its scheduler entry)."""
    cache = _load()
    read_any = False
    digests = {}
    for p in paths:
        digests[p.relative_to(root).as_posix()], read = file_digest(p, cache)
        read_any |= read
    for name, body in (documents or {}).items():
        digests[name] = xxhash.xxh3_128_hexdigest(body)
    if read_any:
        _save(cache)
    h = xxhash.xxh3_128()
    for name in sorted(digests):
        h.update(f"{name}\0{digests[name]}\n".encode())
    return h.hexdigest()
