"""A project directory: identity, manifest (the commit log), committed Parquet files, and the lock writers share.

Commit protocol (DESIGN §2): under the project lock, data files are written atomically (temp, fsync, rename), then
one manifest entry naming them — with size, row count and xxh3 — is written atomically. A file exists for readers
only once an entry names it, so a writer killed at any instant leaves the project as it was plus unnamed garbage.
The lock (flock on `.dmin.lock`) is held only while committing, so shards compute in parallel and contend only for
the short write; it also makes row_id assignment dense and sample_id de-duplication exact across shards.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import socket
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field, replace
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import xxhash

from dmin.errors import IntegrityError, ProjectError
from dmin.store import paths
from dmin.store.atomic import file_checksum, write_bytes_atomic, write_parquet_atomic
from dmin.store.identity import Identity
from dmin.store.schema import SAMPLES_BASE, grads_schema, vec_type


@dataclass(frozen=True)
class FileRef:
    """One committed file as its manifest entry names it."""

    path: str
    table: str
    v: str | None
    rows: int
    bytes: int
    xxh3: str


@dataclass(frozen=True)
class Entry:
    """One manifest entry: a commit."""

    seq: int
    kind: str
    files: tuple[FileRef, ...]
    identity_hash: str
    writer: str = ""
    created_at: str = ""
    supersedes: tuple[str, ...] = ()
    row_ids: tuple[int, int] | None = None
    meta: dict[str, Any] = field(default_factory=dict)

    def to_json(self) -> str:
        body = _entry_body(self)
        body["checksum"] = xxhash.xxh3_128_hexdigest(json.dumps(body, sort_keys=True).encode())
        return json.dumps(body, indent=1, sort_keys=True) + "\n"


def _entry_body(e: Entry) -> dict[str, Any]:
    return {
        "seq": e.seq,
        "kind": e.kind,
        "writer": e.writer,
        "created_at": e.created_at,
        "identity_hash": e.identity_hash,
        "supersedes": list(e.supersedes),
        "row_ids": list(e.row_ids) if e.row_ids else None,
        "meta": e.meta,
        "files": [
            {"path": f.path, "table": f.table, "v": f.v, "rows": f.rows, "bytes": f.bytes, "xxh3": f.xxh3}
            for f in e.files
        ],
    }


def parse_entry(text: str, where: str) -> Entry:
    """Parse and checksum-verify one manifest entry; IntegrityError names the file when anything is off."""
    try:
        raw = json.loads(text)
        checksum = raw.pop("checksum")
        if xxhash.xxh3_128_hexdigest(json.dumps(raw, sort_keys=True).encode()) != checksum:
            raise IntegrityError(f"{where}: manifest entry checksum mismatch (the entry was modified or damaged)")
        files = tuple(FileRef(**f) for f in raw["files"])
        row_ids = tuple(raw["row_ids"]) if raw.get("row_ids") else None
        return Entry(
            seq=int(raw["seq"]),
            kind=raw["kind"],
            files=files,
            identity_hash=raw["identity_hash"],
            writer=raw.get("writer", ""),
            created_at=raw.get("created_at", ""),
            supersedes=tuple(raw.get("supersedes", ())),
            row_ids=row_ids,  # type: ignore[arg-type]
            meta=raw.get("meta", {}),
        )
    except IntegrityError:
        raise
    except (ValueError, KeyError, TypeError, AttributeError) as exc:
        raise IntegrityError(f"{where}: manifest entry is unreadable ({type(exc).__name__}: {exc})") from exc


@dataclass
class SampleBatch:
    """Samples with their gradients for every stored v, ready to commit together (all K timesteps or nothing)."""

    sample_ids: list[str]
    sources: list[str]
    captions: list[str | None]
    labels: list[int | None]
    extra: dict[str, list[Any]]
    timesteps: Sequence[float]
    vecs: dict[str, np.ndarray]  # v -> (B, K, dim) float32
    norms: np.ndarray  # (B, K) raw gradient norms
    losses: np.ndarray  # (B, K)

    def __len__(self) -> int:
        return len(self.sample_ids)


def now_utc() -> datetime:
    return datetime.now(timezone.utc)


class Project:
    """A gradient database on local disk. Cheap to open; reads only what it is asked for."""

    def __init__(self, root: Path, identity: Identity) -> None:
        self.root = root
        self.identity = identity
        self._entry_cache: dict[str, Entry] = {}
        self._ids_seen: set[str] = set()
        self._ids: set[str] = set()
        self._lock_depth = 0
        self._lock_fd: int | None = None
        self._verified: set[str] = set()
        self.blocks: dict[str, Any] = {}  # committed path -> vectors.VectorBlock, filled by vectors.iter_blocks

    # ---- opening -------------------------------------------------------------------------------------------
    @staticmethod
    def exists(root: str | Path) -> bool:
        return (Path(root) / paths.IDENTITY).is_file()

    @staticmethod
    def require_dir(root: str | Path) -> Path:
        """root as a Path when it is an existing directory; else a ProjectError that says what it is."""
        root = Path(root)
        if not root.exists():
            raise ProjectError(f"{root}: no such directory; create a project with `dmin collect {root} …`")
        if not root.is_dir():
            raise ProjectError(f"{root} is a file, not a project directory; pass the project's directory")
        return root

    @classmethod
    def open(cls, root: str | Path, expect: Identity | None = None) -> Project:
        """Open an existing project; with `expect`, refuse when its identity differs (IdentityMismatch)."""
        root = cls.require_dir(root)
        ident_path = root / paths.IDENTITY
        if not ident_path.is_file():
            raise ProjectError(
                f"{root}: not a dmin project (no {paths.IDENTITY}); create one with `dmin collect {root} …`"
            )
        identity = Identity.from_json(ident_path.read_text(errors="replace"), where=str(ident_path))
        if expect is not None:
            identity.check_matches(expect)
        return cls(root, identity)

    @classmethod
    def create(cls, root: str | Path, identity: Identity) -> Project:
        """Open the project at root, creating it with `identity` when it does not exist yet."""
        root = Path(root)
        if cls.exists(root):
            return cls.open(root, expect=identity)
        if root.exists() and not root.is_dir():
            raise ProjectError(f"{root} is a file; choose a new directory for the project")
        if root.exists() and any(p for p in root.iterdir() if not p.name.startswith(".")):
            raise ProjectError(f"{root} exists and is not empty, and is not a dmin project; choose a new directory")
        root.mkdir(parents=True, exist_ok=True)
        (root / paths.MANIFEST).mkdir(exist_ok=True)
        write_bytes_atomic(root / paths.IDENTITY, identity.to_json().encode())
        return cls(root, identity)

    # ---- the manifest --------------------------------------------------------------------------------------
    def manifest_names(self) -> list[str]:
        folder = self.root / paths.MANIFEST
        if not folder.is_dir():
            return []
        return sorted(p.name for p in folder.iterdir() if p.suffix == ".json" and not p.name.startswith("."))

    def entries(self) -> list[Entry]:
        """Every committed entry in commit order; IntegrityError when one is damaged (run `dmin verify`)."""
        out = []
        want = self.identity.hash()
        for expected_seq, name in enumerate(self.manifest_names(), 1):
            where = f"{paths.MANIFEST}/{name}"
            entry = self._entry_cache.get(name)
            if entry is None:
                entry = parse_entry((self.root / where).read_text(errors="replace"), where)
                if entry.seq != expected_seq or name != paths.manifest_name(entry.seq).split("/")[1]:
                    raise IntegrityError(
                        f"{paths.manifest_name(expected_seq)}: manifest entry missing or renamed "
                        f"(sequence gap); run `dmin verify`"
                    )
                if entry.identity_hash != want:
                    raise IntegrityError(
                        f"{where}: written under a different identity than dmin.json (dmin.json "
                        f"replaced, or files from another project); run `dmin verify`"
                    )
                self._entry_cache[name] = entry
            out.append(entry)
        return out

    def checked(self, ref: FileRef) -> Path:
        """The path of a committed file after checking its size and xxh3 against the manifest (once per process):
        readers never use damaged bytes silently."""
        path = self.root / ref.path
        if ref.path not in self._verified:
            if not path.is_file():
                raise IntegrityError(f"{ref.path}: named by the manifest but missing; run `dmin verify`")
            if path.stat().st_size != ref.bytes or file_checksum(path) != ref.xxh3:
                raise IntegrityError(
                    f"{ref.path}: does not match its manifest checksum (damaged or replaced); run `dmin verify`"
                )
            self._verified.add(ref.path)
        return path

    def live_files(self, table: str, v: str | None = None) -> list[FileRef]:
        """Committed files of a table (and v), minus those a later entry superseded."""
        entries = self.entries()
        gone = {p for e in entries for p in e.supersedes}
        return [
            f for e in entries for f in e.files if f.table == table and (v is None or f.v == v) and f.path not in gone
        ]

    def latest(self, kind: str, **meta: Any) -> Entry | None:
        """The newest entry of a kind whose meta matches (e.g. the current index for a v)."""
        found = None
        for e in self.entries():
            if e.kind == kind and all(e.meta.get(k) == val for k, val in meta.items()):
                found = e
        return found

    # ---- writing ---------------------------------------------------------------------------------------------
    @contextlib.contextmanager
    def lock(self) -> Iterator[None]:
        """The project's writer lock (re-entrant within this object)."""
        if self._lock_depth == 0:
            fd = os.open(self.root / paths.LOCK, os.O_RDWR | os.O_CREAT, 0o644)
            fcntl.flock(fd, fcntl.LOCK_EX)
            self._lock_fd = fd
        self._lock_depth += 1
        try:
            yield
        finally:
            self._lock_depth -= 1
            if self._lock_depth == 0 and self._lock_fd is not None:
                fcntl.flock(self._lock_fd, fcntl.LOCK_UN)
                os.close(self._lock_fd)
                self._lock_fd = None

    def _next_seq(self) -> int:
        names = self.manifest_names()
        return int(names[-1].split(".")[0]) + 1 if names else 1

    def commit(
        self,
        kind: str,
        tables: Sequence[tuple[str, str | None, str, pa.Table]],
        meta: dict[str, Any] | None = None,
        supersedes: Sequence[str] = (),
        row_ids: tuple[int, int] | None = None,
        extra_files: Sequence[tuple[str, str | None, Path]] = (),
    ) -> Entry:
        """Write `tables` [(table, v, folder, data)] and `extra_files` [(table, v, already-written path)] and commit
        them in one manifest entry. Call with the lock held or not; it takes it."""
        with self.lock():
            seq = self._next_seq()
            refs = []
            for j, (table, v, folder, data) in enumerate(tables):
                rel = f"{folder}/{paths.part_name(seq, j)}"
                path = self.root / rel
                checksum = write_parquet_atomic(path, data)
                refs.append(FileRef(rel, table, v, len(data), path.stat().st_size, checksum))
            for table, v, path in extra_files:
                rel = path.relative_to(self.root.resolve() if path.is_absolute() else self.root).as_posix()
                rows = pq.read_metadata(path).num_rows if path.suffix == ".parquet" else 0
                refs.append(FileRef(rel, table, v, rows, path.stat().st_size, file_checksum(path)))
            entry = Entry(
                seq=seq,
                kind=kind,
                files=tuple(refs),
                identity_hash=self.identity.hash(),
                writer=f"{socket.gethostname()}:{os.getpid()}",
                created_at=now_utc().isoformat(),
                supersedes=tuple(supersedes),
                row_ids=row_ids,
                meta=meta or {},
            )
            write_bytes_atomic(self.root / paths.manifest_name(seq), entry.to_json().encode())
            self._entry_cache[paths.manifest_name(seq).split("/")[1]] = entry
            return entry

    def add_v(self, v: str) -> None:
        """Record a newly stored v in dmin.json (after its data is committed)."""
        with self.lock():
            if v in self.identity.vs:
                return
            self.identity = replace(self.identity, vs=(*self.identity.vs, v))
            write_bytes_atomic(self.root / paths.IDENTITY, self.identity.to_json().encode())

    def set_paths(self, data_path: str | None) -> None:
        """Update the non-identity data_path of dmin.json (contact sheets read training images from it)."""
        with self.lock():
            self.identity = replace(Project.open(self.root).identity, data_path=data_path)
            write_bytes_atomic(self.root / paths.IDENTITY, self.identity.to_json().encode())

    def commit_samples(self, batch: SampleBatch) -> Entry | None:
        """Commit new samples with all their gradients; samples already committed (by anyone) are dropped."""
        with self.lock():
            done = self.sample_ids()
            keep, seen = [], set()
            for i, sid in enumerate(batch.sample_ids):
                if sid not in done and sid not in seen:
                    keep.append(i)
                    seen.add(sid)
            if not keep:
                return None
            lo = self.next_row_id()
            rows = np.arange(lo, lo + len(keep), dtype=np.int64)
            ids = [batch.sample_ids[i] for i in keep]
            samples = {
                "sample_id": pa.array(ids, pa.string()),
                "row_id": pa.array(rows, pa.int64()),
                "source": pa.array([batch.sources[i] for i in keep], pa.string()),
                "caption": pa.array([batch.captions[i] for i in keep], pa.string()),
                "label": pa.array([batch.labels[i] for i in keep], pa.int64()),
            }
            fields = list(SAMPLES_BASE)
            for name, values in sorted(batch.extra.items()):
                samples[name] = pa.array([None if values[i] is None else str(values[i]) for i in keep], pa.string())
                fields.append(pa.field(name, pa.string()))
            tables: list[tuple[str, str | None, str, pa.Table]] = [
                ("samples", None, "samples", pa.table(samples, schema=pa.schema(fields)))
            ]
            K = len(batch.timesteps)
            for v, vec in batch.vecs.items():
                tables.append(
                    (
                        "grads",
                        v,
                        paths.grads_dir(v),
                        grads_table(
                            "sample_id",
                            ids,
                            batch.timesteps,
                            vec if len(keep) == len(batch) else vec[keep],
                            batch.norms[keep],
                            batch.losses[keep],
                            self.identity.dtype,
                        ),
                    )
                )
            entry = self.commit(
                "samples", tables, row_ids=(int(lo), int(lo + len(keep))), meta={"samples": len(keep), "K": K}
            )
            self._ids.update(ids)
            self._ids_seen.update(f.path for f in entry.files if f.table == "samples")  # no need to read it back
            return entry

    def next_row_id(self) -> int:
        return max((e.row_ids[1] for e in self.entries() if e.row_ids), default=0)

    # ---- reading ---------------------------------------------------------------------------------------------
    def sample_ids(self) -> set[str]:
        """sample_ids of every committed sample (read incrementally: only files not seen before)."""
        for f in self.live_files("samples"):
            if f.path not in self._ids_seen:
                col = pq.read_table(self.checked(f), columns=["sample_id"]).column("sample_id")
                self._ids.update(col.to_pylist())
                self._ids_seen.add(f.path)
        return self._ids

    def read_table(self, table: str, v: str | None = None, columns: list[str] | None = None) -> pa.Table | None:
        """All committed rows of a table as one Arrow table (schemas unified by column name), or None if empty."""
        files = self.live_files(table, v)
        if not files:
            return None
        parts = [pq.read_table(self.checked(f), columns=columns, memory_map=True) for f in files]
        return pa.concat_tables(parts, promote_options="default")

    def path(self, rel: str) -> Path:
        return self.root / rel


def grads_table(
    key: str,
    ids: Sequence[str],
    timesteps: Sequence[float],
    vec: np.ndarray,
    norms: np.ndarray,
    losses: np.ndarray,
    dtype: str,
) -> pa.Table:
    """Rows ordered (key, t_idx), all K timesteps of a key consecutive: readers rely on this order."""
    B, K, dim = vec.shape
    np_dtype = np.float16 if dtype == "float16" else np.float32
    flat = pa.array(np.ascontiguousarray(vec, dtype=np_dtype).reshape(-1))
    return pa.table(
        {
            key: pa.array(np.repeat(np.asarray(ids, dtype=object), K), pa.string()),
            "t_idx": pa.array(np.tile(np.arange(K, dtype=np.int32), B)),
            "timestep": pa.array(np.tile(np.asarray(timesteps, dtype=np.float64), B)),
            "vec": pa.FixedSizeListArray.from_arrays(flat, type=vec_type(dim, dtype)),
            "norm": pa.array(np.asarray(norms, dtype=np.float64).reshape(-1)),
            "loss": pa.array(np.asarray(losses, dtype=np.float64).reshape(-1)),
        },
        schema=grads_schema(dim, dtype, key),
    )
