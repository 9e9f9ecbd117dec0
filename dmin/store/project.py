"""A project directory: identity, manifest (the commit log), committed Parquet files, and the commit protocol.

Commit protocol (docs/database.md): optimistic, with no lock. A writer plans its commit against the newest manifest
it has read (which samples are new, their row ids, which v's are stored, the current index), stages its files under
names no other writer uses (temp, fsync, rename), then publishes entry N+1 put-if-absent (`manifest.publish`). When
another writer published N+1 first, it re-reads the manifest and plans again, keeping the staged files that still
fit. Hence, with no flock: sample_ids de-duplicated exactly across concurrent writers, row ids assigned in
contiguous ranges that follow each other, every file named by exactly one entry, readers seeing a file only once an
entry names it. A writer killed at any instant leaves the project as it was plus unnamed files (`compact` sweeps
them).
"""

from __future__ import annotations

import contextlib
import functools
import os
import random
import socket
import time
import uuid
from collections.abc import Callable, Hashable, Iterator, Sequence
from dataclasses import dataclass, field, replace
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from dmin.errors import IntegrityError, ProjectError
from dmin.store import manifest, paths
from dmin.store.atomic import file_checksum, write_parquet_atomic
from dmin.store.identity import Identity
from dmin.store.keys import KeySet
from dmin.store.liveness import Liveness
from dmin.store.manifest import Entry, FileRef, parse_entry
from dmin.store.state import Live, State, checkpoint_name
from dmin.store.tables import SampleBatch, grads_table, samples_table

MAX_ATTEMPTS = 1000  # re-plans before a writer gives up (each one means another commit landed first)
SAMPLE_KEYED = ("samples", "grads", "results")  # tables whose rows name a training sample (forgettable)
# Completes v → vectors to every v of a list for an identity (`dmin.vs.complete`): derived v's stay complete.
Completer = Callable[[dict[str, np.ndarray], Sequence[str], Identity], dict[str, np.ndarray]]


@dataclass
class Commit:
    """What a plan asks to publish: files staged through a `Stage`, and the entry's other fields."""

    kind: str
    files: list[FileRef]
    meta: dict[str, Any] = field(default_factory=dict)
    supersedes: Sequence[str] = ()
    row_ids: tuple[int, int] | None = None


class Stage:
    """Files written for one commit not yet published, under names unique to this writer. Each is kept under a key
    that says what it holds, so a lost race costs a re-plan, not a rewrite; those no entry names are removed."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.token = uuid.uuid4().hex[:12]
        self._files: dict[Hashable, FileRef] = {}
        self._count = 0

    def table(
        self, key: Hashable, table: str, v: str | None, folder: str, data: pa.Table | Callable[[], pa.Table]
    ) -> FileRef:
        """The staged file for `key`, written the first time from `data` (or the table `data()` makes)."""
        ref = self._files.get(key)
        if ref is None:
            rel = f"{folder}/{paths.part_name(self.token, self._count)}"
            self._count += 1
            if callable(data):
                data = data()
            checksum = write_parquet_atomic(self.root / rel, data)
            ref = FileRef(rel, table, v, len(data), (self.root / rel).stat().st_size, checksum)
            self._files[key] = ref
        return ref

    def adopt(self, key: Hashable, table: str, v: str | None, path: Path) -> FileRef:
        """A file the caller wrote itself (an index binary, a generated query image)."""
        ref = self._files.get(key)
        if ref is None:
            rel = path.relative_to(self.root.resolve() if path.is_absolute() else self.root).as_posix()
            rows = pq.read_metadata(path).num_rows if path.suffix == ".parquet" else 0
            ref = FileRef(rel, table, v, rows, path.stat().st_size, file_checksum(path))
            self._files[key] = ref
        return ref

    def has(self, key: Hashable) -> bool:
        return key in self._files

    def name(self) -> str:
        """A file name no other writer uses, for a file the caller places itself (then `record`s)."""
        self._count += 1
        return paths.part_name(self.token, self._count - 1)

    def record(self, key: Hashable, ref: FileRef) -> FileRef:
        """A file the caller placed under a `name` with its manifest record known (a file linked from another
        project keeps its size, rows and xxh3)."""
        return self._files.setdefault(key, ref)

    def get(self, key: Hashable) -> FileRef:
        return self._files[key]

    def vanished(self) -> bool:
        """Forget staged files that are gone (swept by a concurrent `compact --orphan-grace 0`); True if any were."""
        gone = [k for k, ref in self._files.items() if not (self.root / ref.path).is_file()]
        for k in gone:
            del self._files[k]
        return bool(gone)

    def discard(self, keep: set[str]) -> None:
        for ref in self._files.values():
            if ref.path not in keep:
                (self.root / ref.path).unlink(missing_ok=True)
        self._files.clear()


def now_utc() -> datetime:
    return datetime.now(timezone.utc)


class Project:
    """A gradient database on disk. Cheap to open: the newest checkpoint and the entries after it (`store.state`);
    reads only what it is asked for, and keeps what it read (mappings, keys) for later calls."""

    def __init__(self, root: Path, identity: Identity) -> None:
        self.root = root
        self._base = identity  # as dmin.json holds it; `identity` adds the v's derived later
        self.identity = identity
        self._identity_hash = identity.hash()
        self._state: State | None = None
        self._pinned: State | None = None
        self._verified: set[str] = set()
        self._ids_of_file: dict[str, frozenset[str]] = {}
        self._liveness: tuple[tuple[str, ...], Liveness] | None = None
        self._keys: tuple[int, KeySet] | None = None
        self._maintaining = False
        self.blocks: dict[str, Any] = {}  # committed path -> its vectors.VectorBlocks, filled by vectors.iter_blocks
        # samples files opened by `samples_by_row`, with each row group's row_id range
        self._footers: dict[str, tuple[pq.ParquetFile, np.ndarray, np.ndarray]] = {}
        self.indexes: dict[str, Any] = {}  # v -> index.LoadedIndex, the current build with its graph once loaded
        self.preconditioners: dict[str, Any] = {}  # v -> precondition.Preconditioner, the current build

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
        project = cls(root, identity)
        with contextlib.suppress(IntegrityError):  # a damaged manifest is reported by whichever reader needs it
            project.state()  # identity.vs then includes the v's derived since dmin.json was written
        return project

    @classmethod
    def create(cls, root: str | Path, identity: Identity) -> Project:
        """Open the project at root, creating it with `identity` when it does not exist yet (concurrent creators
        agree: dmin.json is created put-if-absent, and the others open it)."""
        root = Path(root)
        if cls.exists(root):
            return cls.open(root, expect=identity)
        if root.exists() and not root.is_dir():
            raise ProjectError(f"{root} is a file; choose a new directory for the project")
        if root.exists() and any(p for p in root.iterdir() if not p.name.startswith(".")):
            raise ProjectError(f"{root} exists and is not empty, and is not a dmin project; choose a new directory")
        root.mkdir(parents=True, exist_ok=True)
        if not manifest.create_exclusive(root / paths.IDENTITY, identity.to_json().encode()):
            return cls.open(root, expect=identity)
        return cls(root, identity)

    # ---- the manifest --------------------------------------------------------------------------------------
    def manifest_names(self) -> list[str]:
        return manifest.entry_names(self.root)

    def read_entry(self, seq: int) -> Entry:
        """Entry `seq`, checked (checksum, number, identity); IntegrityError names it when anything is off."""
        where = paths.manifest_name(seq)
        try:
            text = (self.root / where).read_text(errors="replace")
        except FileNotFoundError as exc:
            raise IntegrityError(f"{where}: manifest entry missing (sequence gap); run `dmin verify`") from exc
        entry = parse_entry(text, where)
        if entry.seq != seq:
            raise IntegrityError(f"{where}: holds entry {entry.seq} (renamed); run `dmin verify`")
        if entry.identity_hash != self._identity_hash:
            raise IntegrityError(
                f"{where}: written under a different identity than dmin.json (dmin.json replaced, or files from "
                f"another project); run `dmin verify`"
            )
        return entry

    def entries(self) -> list[Entry]:
        """Every committed entry in commit order, read from disk (the whole history: `verify --deep` and tools;
        readers use `state()`, which sums them)."""
        names = self.manifest_names()
        _check_names(names)
        return [self.read_entry(seq) for seq in range(1, len(names) + 1)]

    def state(self) -> State:
        """What the manifest adds up to (inside a commit's plan: the snapshot it plans against). The first call reads
        the newest valid checkpoint and the entries after it; later calls fold in only entries published since.
        IntegrityError when an entry is damaged (run `dmin verify`)."""
        if self._pinned is not None:
            return self._pinned
        if self._state is None:
            names = self.manifest_names()
            _check_names(names)
            state = self.checkpoint(len(names)) or State()
            self._fold(state, len(names))
            self._state = state
        else:
            seq = self._state.seq
            while (self.root / paths.manifest_name(seq + 1)).is_file():
                seq += 1
            self._fold(self._state, seq)
        derived = tuple(v for v in self._state.derived_vs if v not in self._base.vs)
        vs = (*self._base.vs, *derived)
        if vs != self.identity.vs:
            self.identity = replace(self._base, vs=vs)
        return self._state

    def _fold(self, state: State, upto: int) -> None:
        for seq in range(state.seq + 1, upto + 1):
            state.apply(self.read_entry(seq))

    def _checkpoint_seqs(self, newest: int) -> list[int]:
        """The seqs of the checkpoint files at or before entry `newest`, newest first."""
        folder = self.root / paths.CHECKPOINTS
        stems = (p.name.split(".")[0] for p in folder.glob("*.json")) if folder.is_dir() else ()
        return sorted((seq for stem in stems if stem.isdigit() and 0 < (seq := int(stem)) <= newest), reverse=True)

    def checkpoint(self, newest: int) -> State | None:
        """The newest checkpoint at or before entry `newest` that agrees with its entry; None when there is none
        (readers then fold every entry: a damaged checkpoint costs time, never correctness)."""
        for seq in self._checkpoint_seqs(newest):
            where = checkpoint_name(seq)
            try:
                state = State.from_json((self.root / where).read_text(errors="replace"), where, self._identity_hash)
                if state.seq == seq and state.checksum == self.read_entry(seq).checksum:
                    self._verified.add(where)  # verify's checkpoint check need not parse it again
                    return state
            except (IntegrityError, OSError):
                continue
        return None

    def checkpoint_seq(self, newest: int) -> int | None:
        """The seq of the checkpoint `checkpoint(newest)` returns, without parsing it again where this process
        has (a million samples' checkpoint takes ~0.2 s to parse)."""
        seqs = self._checkpoint_seqs(newest)
        if seqs and self.vouched(checkpoint_name(seqs[0])):
            return seqs[0]
        state = self.checkpoint(newest)
        return state.seq if state is not None else None

    def live(self, path: str) -> Live:
        """A live committed file with its entry's seq, time, data root or build."""
        return self.state().files[path]

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

    def vouched(self, path: str) -> bool:
        """Whether this process has checked a file's bytes already (a committed file, or the checkpoint it opened
        with)."""
        return path in self._verified

    def vouch(self, ref: FileRef) -> None:
        """Record that a committed file's bytes were just checked against its manifest entry (verify's file pass),
        so this process's readers do not hash it a second time."""
        self._verified.add(ref.path)

    def live_files(self, table: str, v: str | None = None) -> list[FileRef]:
        """Committed files of a table (and v), minus those a later entry superseded, in commit order."""
        return [live.ref for live in self.state().live_files(table, v)]

    # ---- forgotten samples and data roots ----------------------------------------------------------------------
    def liveness(self) -> Liveness:
        """Which rows of which committed file are forgotten (`store.liveness`)."""
        state = self.state()
        tombs = tuple(live.ref.path for live in state.live_files("tombstones"))
        if self._liveness is None or self._liveness[0] != tombs:
            self._liveness = (tombs, Liveness.of(state, self.ids_in))
        return self._liveness[1]

    def ids_in(self, ref: FileRef) -> frozenset[str]:
        """The sample_ids a (small) file holds, e.g. a tombstone (read once per process)."""
        ids = self._ids_of_file.get(ref.path)
        if ids is None:
            col = pq.read_table(self.checked(ref), columns=["sample_id"]).column("sample_id")
            ids = self._ids_of_file[ref.path] = frozenset(col.to_pylist())
        return ids

    def dead_rows(self, ref: FileRef) -> np.ndarray | None:
        """Which rows of a committed sample-keyed file are forgotten (a bool mask), None when none can be."""
        dead = self.liveness().dead(ref)
        if not dead:
            return None
        ids = pq.read_table(self.checked(ref), columns=["sample_id"]).column("sample_id")
        return pc.is_in(ids, value_set=pa.array(sorted(dead), pa.string())).to_numpy(zero_copy_only=False)

    def sample_keys(self) -> KeySet:
        """Every live sample's id → row_id, as 128-bit keys (`store.keys`): built once per process from the samples
        files' key columns, then kept current entry by entry (a samples commit adds its ids, a forget removes)."""
        state = self.state()
        if self._keys is not None and self._keys[0] == state.seq:
            return self._keys[1]
        if self._keys is None or self._keys[0] > state.seq:
            keys = KeySet()
            for ref in self.live_files("samples"):
                ids, rows = self._sample_rows(ref)
                keys.add(ids, rows)
        else:
            seen, keys = self._keys
            for seq in (s for s in state.sample_events if s > seen):  # other commits leave the live set as it is
                e = self.read_entry(seq)
                for f in e.files:  # a tombstone forgets earlier rows; samples files (not rewritten ones) add theirs
                    if f.table == "tombstones":
                        keys.remove(sorted(self.ids_in(f)))
                for f in e.files:
                    if f.table == "samples":
                        keys.add(*self._sample_rows(f))
        self._keys = (state.seq, keys)
        return keys

    def _sample_rows(self, ref: FileRef) -> tuple[pa.Array, np.ndarray]:
        """(sample_id, row_id) of the live rows of a samples file."""
        t = pq.read_table(self.checked(ref), columns=["sample_id", "row_id"])
        dead = self.dead_rows(ref)
        if dead is not None:
            t = t.filter(pa.array(~dead))
        return t.column("sample_id").combine_chunks(), t.column("row_id").to_numpy()

    def sample_ids(self) -> set[str]:
        """sample_ids of every live sample, as Python strings (for small projects and tests; `sample_keys` scales)."""
        out: set[str] = set()
        for ref in self.live_files("samples"):
            out.update(self._sample_rows(ref)[0].to_pylist())
        return out

    def forgotten(self) -> set[str]:
        """The suppression list: forgotten sample_ids that were not collected again since. A forgotten id can be
        live again only in a samples file its tombstone does not apply to (committed, or compacted, after it), so
        only those files' ids are read, not a million-key set."""
        liveness = self.liveness()
        ids = liveness.forgotten
        if not ids:
            return set()
        if self._keys is not None and self._keys[0] == self.state().seq:  # built already: one lookup
            order = sorted(ids)
            return {s for s, again in zip(order, self._keys[1].contains(order), strict=True) if not again}
        again: set[str] = set()
        for ref in self.live_files("samples"):
            could = ids - liveness.dead(ref)  # rows of these in this file would be live
            if could:
                col = pq.read_table(self.checked(ref), columns=["sample_id"]).column("sample_id")
                found = pc.filter(col, pc.is_in(col, value_set=pa.array(sorted(could), pa.string())))
                again.update(found.to_pylist())
        return set(ids) - again

    def committed(self, sample_ids: Sequence[str] | pa.Array, include_forgotten: bool = False) -> np.ndarray:
        """Which of `sample_ids` a collect must not commit: live ones, and forgotten ones unless `include_forgotten`
        (a bool mask; vectorized, so deciding a million samples takes a fraction of a second)."""
        done = self.sample_keys().contains(sample_ids)
        forgotten = self.liveness().forgotten
        if forgotten and not include_forgotten:
            ids = sample_ids.to_pylist() if isinstance(sample_ids, pa.Array) else sample_ids
            done |= np.fromiter((s in forgotten for s in ids), bool, len(ids))
        return done

    def data_root(self, ref: FileRef) -> str | None:
        """Where a samples file's sources resolve: the data root its commit recorded (for commits made before roots
        were recorded, dmin.json's data_path), re-pointed by later `relocate` entries."""
        state = self.state()
        return state.root_of(state.files[ref.path], self._base.data_path)

    def sample_root(self, sample_id: str) -> str | None:
        """The data root a live sample's source resolves against."""
        row = int(self.sample_keys().lookup([sample_id])[0])
        found = self.samples_by_row(np.asarray([row])) if row >= 0 else []
        return found[0][0] if found else None

    def samples_version(self) -> tuple[int, int]:
        """Changes whenever the set of live samples may have (a samples or forget commit): for readers' caches."""
        state = self.state()
        return (id(state), len(state.sample_events))

    def samples_by_row(self, row_ids: np.ndarray) -> list[tuple[str | None, pa.Table]]:
        """The samples rows with these row ids, as (data root, rows) per file that holds some: only the row groups
        whose row_id statistics span a wanted id are decoded (1024 rows each), so a query's top-k metadata costs a
        few milliseconds however many samples the project holds."""
        want = np.unique(np.asarray(row_ids, dtype=np.int64))
        out = []
        refs = self.live_files("samples")
        live = {ref.path for ref in refs}
        if not self._footers.keys() <= live:  # files merged or compacted away: let their handles go
            self._footers = {path: found for path, found in self._footers.items() if path in live}
        for ref in refs:
            found = self._footers.get(ref.path)
            if found is None:
                found = self._footers[ref.path] = _row_groups(pq.ParquetFile(self.checked(ref), memory_map=True))
            pf, lo, hi = found
            groups = np.flatnonzero(((want[:, None] >= lo) & (want[:, None] <= hi)).any(axis=0))
            if len(groups):
                t = pf.read_row_groups(groups.tolist(), use_threads=False)  # a few rows: no thread pool
                t = t.filter(pc.is_in(t.column("row_id"), value_set=pa.array(want)))
                if len(t):
                    out.append((self.data_root(ref), t))
        return out

    # ---- writing ---------------------------------------------------------------------------------------------
    @contextlib.contextmanager
    def _snapshot(self) -> Iterator[State]:
        """Pin the newest state: every read inside sees the same entries (a plan's consistent view)."""
        self._pinned = None
        state = self.state()
        self._pinned = state
        try:
            yield state
        finally:
            self._pinned = None

    def transact(self, plan: Callable[[Stage], Commit | None]) -> Entry | None:
        """Publish what `plan` returns as the next manifest entry, planned against the newest manifest; re-plan when
        another writer published first. None when the plan finds nothing to commit. After a commit, the writer
        keeps the project tidy (`store.upkeep`): a checkpoint every CHECKPOINT_EVERY entries, small files merged."""
        stage = Stage(self.root)
        published: Entry | None = None
        try:
            for attempt in range(MAX_ATTEMPTS):
                with self._snapshot() as snapshot:
                    commit = plan(stage)
                    if commit is None:
                        return None
                    if stage.vanished():
                        continue
                    entry = Entry(
                        seq=snapshot.seq + 1,
                        kind=commit.kind,
                        files=tuple(commit.files),
                        identity_hash=self._identity_hash,
                        writer=f"{socket.gethostname()}:{os.getpid()}",
                        created_at=now_utc().isoformat(),
                        supersedes=tuple(commit.supersedes),
                        row_ids=commit.row_ids,
                        meta=commit.meta,
                    ).sealed()
                if manifest.publish(self.root, entry):
                    published = entry
                    if self._state is not None and self._state.seq == entry.seq - 1:
                        self._state.apply(entry)
                    break
                time.sleep(random.uniform(0, min(0.05, 0.0005 * 2 ** min(attempt, 10))))  # let the winner finish
            else:
                raise ProjectError(
                    f"{self.root}: could not commit after {MAX_ATTEMPTS} attempts (other writers kept committing "
                    f"first); run the command again"
                )
        finally:
            stage.discard(keep={f.path for f in published.files} if published else set())
        if not self._maintaining:
            from dmin.store.upkeep import after_commit  # merges commit through this method: imported when needed

            self._maintaining = True
            try:
                after_commit(self, published)
            finally:
                self._maintaining = False
        return published

    def commit(
        self,
        kind: str,
        tables: Sequence[tuple[str, str | None, str, pa.Table]],
        meta: dict[str, Any] | None = None,
        supersedes: Sequence[str] = (),
        extra_files: Sequence[tuple[str, str | None, Path]] = (),
    ) -> Entry:
        """Write `tables` [(table, v, folder, data)] and commit them with `extra_files` [(table, v, already-written
        path)] in one manifest entry, whatever else was committed meanwhile."""

        def plan(stage: Stage) -> Commit:
            files = [stage.table(("t", j), t, v, folder, data) for j, (t, v, folder, data) in enumerate(tables)]
            files += [stage.adopt(("x", j), t, v, path) for j, (t, v, path) in enumerate(extra_files)]
            return Commit(kind, files, meta or {}, supersedes)

        entry = self.transact(plan)
        assert entry is not None  # this plan always commits
        return entry

    def commit_samples(
        self,
        batch: SampleBatch,
        data_root: str | None = None,
        include_forgotten: bool = False,
        complete: Completer | None = None,
    ) -> Entry | None:
        """Commit new samples with their gradients at every stored v; samples committed already (by anyone) are
        dropped, and forgotten ones unless `include_forgotten`. `data_root`: the folder or file their sources resolve
        against. `complete` (`dmin.vs.complete`) derives the stored v's the batch lacks, planned against the newest
        manifest so a v derived meanwhile is included; without it, a missing v is an error."""
        vecs = dict(batch.vecs)  # grows with the derived v's, computed once however many times we re-plan
        K = len(batch.timesteps)
        kept: list[str] = []

        def grads_at(v: str, keep: list[int]) -> pa.Table:
            vec = vecs[v] if len(keep) == len(batch) else vecs[v][keep]
            return grads_table(
                "sample_id", kept, batch.timesteps, vec, batch.norms[keep], batch.losses[keep], self.identity.dtype
            )

        def plan(stage: Stage) -> Commit | None:
            skip = self.committed(batch.sample_ids, include_forgotten)
            keep, seen = [], set()
            for i, sid in enumerate(batch.sample_ids):
                if not skip[i] and sid not in seen:
                    keep.append(i)
                    seen.add(sid)
            if not keep:
                return None
            kept[:] = [batch.sample_ids[i] for i in keep]
            lo = self.next_row_id()
            rows = tuple(keep)
            files = [
                stage.table(
                    ("samples", lo, rows),
                    "samples",
                    None,
                    paths.FOLDERS["samples"],
                    lambda: samples_table(batch, keep, lo),
                )
            ]
            missing = [v for v in self.identity.vs if v not in vecs]
            if missing and complete is None:
                raise ProjectError(f"the batch lacks stored v's {', '.join(missing)}; pass complete=dmin.vs.complete")
            if missing and complete is not None:
                vecs.update(complete(vecs, self.identity.vs, self.identity))
            for v in self.identity.vs:
                files.append(
                    stage.table(
                        ("grads", v, rows),
                        "grads",
                        v,
                        paths.grads_dir(v),
                        functools.partial(grads_at, v, keep),
                    )
                )
            meta: dict[str, Any] = {"samples": len(keep), "K": K}
            if data_root is not None:
                meta["data_root"] = data_root
            return Commit("samples", files, meta, row_ids=(lo, lo + len(keep)))

        return self.transact(plan)

    def next_row_id(self) -> int:
        """Row ids are assigned in contiguous ranges, each commit's following the last (forgotten rows leave gaps;
        ids are never reused, as hnswlib labels are row ids)."""
        return self.state().next_row_id

    # ---- reading ---------------------------------------------------------------------------------------------
    def read_table(
        self, table: str, v: str | None = None, columns: list[str] | None = None, live: bool = True
    ) -> pa.Table | None:
        """All committed rows of a table as one Arrow table (schemas unified by column name), or None if empty.
        `live`: without the rows of forgotten samples. For small tables and tools: a grads table is read whole."""
        files = self.live_files(table, v)
        if not files:
            return None
        parts = []
        for f in files:
            dead = self.dead_rows(f) if live and table in SAMPLE_KEYED else None
            t = pq.read_table(self.checked(f), columns=columns, memory_map=True)
            if dead is not None:
                t = t.filter(pa.array(~dead))
            parts.append(t)
        return pa.concat_tables(parts, promote_options="default")

    def path(self, rel: str) -> Path:
        return self.root / rel


def _check_names(names: list[str]) -> None:
    """Entry files are numbered 1..N without a gap; a missing one is damage (a deleted commit)."""
    for expected, name in enumerate(names, 1):
        if name != paths.manifest_name(expected).split("/")[1]:
            raise IntegrityError(
                f"{paths.manifest_name(expected)}: manifest entry missing or renamed (sequence gap); run `dmin verify`"
            )


def _row_groups(pf: pq.ParquetFile) -> tuple[pq.ParquetFile, np.ndarray, np.ndarray]:
    """A samples file with the (min, max) row_id of each row group, read once from the footer: a lookup is then one
    vectorized comparison, not a Python loop over a million samples' thousand row groups on every query. A group
    without statistics spans every row id (read, then filtered)."""
    col = pf.schema_arrow.get_field_index("row_id")
    n = pf.metadata.num_row_groups
    lo, hi = np.full(n, -1, np.int64), np.full(n, 1 << 62, np.int64)
    for g in range(n):
        stats = pf.metadata.row_group(g).column(col).statistics
        if stats is not None and stats.has_min_max:
            lo[g], hi[g] = stats.min, stats.max
    return pf, lo, hi
