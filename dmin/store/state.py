"""What the manifest adds up to: the live files and the facts readers need, folded entry by entry, and checkpoints.

Readers never need the whole history, only its sum: which files are live (named and not superseded), the entry that
named each (its seq decides which tombstones apply; a samples file keeps its data root, an index file its build),
the files superseded and not yet deleted, relocations, derived v's, the next row id, and which (query, method, v)
were answered. `State.apply` folds one entry in. Every `CHECKPOINT_EVERY` entries a writer stores the state as a
checkpoint (`manifest/checkpoints/NNNNNNNNN.json`, as Delta Lake's log does), so opening a project reads the newest
checkpoint and at most that many entries after it, however long the project has lived. A checkpoint is derived
data: it names the checksum of the entry it sums up, carries its own, and a reader that finds it damaged or out of
step replays the entries instead (`dmin verify --deep` replays them all and compares).
"""

from __future__ import annotations

import heapq
import json
from dataclasses import dataclass, field, replace
from datetime import datetime
from typing import Any

import xxhash

from dmin.errors import IntegrityError
from dmin.store import paths
from dmin.store.manifest import Entry, FileRef

CHECKPOINT_EVERY = 64
FORGET_SUPERSEDED_AFTER = 2 * paths.ORPHAN_GRACE  # seconds
CHECKPOINT_FORMAT = 1


@dataclass(frozen=True)
class Live:
    """A committed file no later entry superseded, with what readers need of the entry that named it."""

    ref: FileRef
    seq: int
    created_at: str
    root: str | None = None  # samples files: the data root their commit recorded (None: dmin.json's data_path)
    build: int | None = None  # index files: the build number
    clean: int = 0  # seq of the last compact that found it free of forgotten rows: older tombstones do not apply


@dataclass
class State:
    """The sum of entries 1..seq."""

    seq: int = 0
    checksum: str = ""  # of entry `seq`: a checkpoint is valid only next to that entry
    files: dict[str, Live] = field(default_factory=dict)  # live files, in commit order
    by_table: dict[tuple[str, str | None], dict[str, None]] = field(default_factory=dict)
    superseded: dict[str, tuple[int, str]] = field(default_factory=dict)  # path → (seq, created_at) superseding it
    relocations: list[tuple[int, str, str]] = field(default_factory=list)  # (seq, from, to)
    derived_vs: list[str] = field(default_factory=list)
    next_row_id: int = 0
    max_build: dict[str, int] = field(default_factory=dict)
    answered: set[tuple[str, str, str]] = field(default_factory=set)  # (query_id, method, v) committed
    queried: set[str] = field(default_factory=set)  # the query_ids of `answered` (derived, not stored)
    sample_events: list[int] = field(default_factory=list)  # seqs of samples and forget entries folded in this
    # process (not stored): what a reader's caches of the live samples must catch up on
    last_commit_at: str | None = None
    # `superseded` by time, (timestamp, path): pruning pops the old ones instead of parsing every entry's time
    # (an all-entries scan every 64 commits cost 14 s of a 30,000-entry replay)
    by_time: list[tuple[float, str]] = field(default_factory=list, compare=False, repr=False)

    def __post_init__(self) -> None:
        if self.superseded and not self.by_time:  # read from a checkpoint
            self.by_time = [(_timestamp(at), path) for path, (_, at) in self.superseded.items()]
            heapq.heapify(self.by_time)

    # ---- folding --------------------------------------------------------------------------------------------
    def apply(self, e: Entry) -> None:
        """Fold entry e (which must be entry seq + 1) into the state."""
        if e.seq != self.seq + 1:
            raise IntegrityError(f"{paths.manifest_name(self.seq + 1)}: entry {e.seq} follows {self.seq}")
        for path in e.supersedes:
            self._drop(path)
            self.supersede(path, e.seq, e.created_at)
        roots = e.meta.get("data_roots", {})
        for f in e.files:
            root = (roots.get(f.path) or e.meta.get("data_root")) if f.table == "samples" else None
            build = None
            if f.table in ("index", "index_labels", "index_meta"):
                build = paths.build_of(f.path) or int(e.meta.get("build", 0))
                if f.v is not None:
                    self.max_build[f.v] = max(self.max_build.get(f.v, 0), build)
            self._add(Live(f, e.seq, e.created_at, root, build))
        for path in e.meta.get("clean", ()) if e.kind == "compact" else ():
            if path in self.files:
                self.files[path] = replace(self.files[path], clean=e.seq)
        if e.kind == "derive" and e.meta.get("v") and e.meta["v"] not in self.derived_vs:
            self.derived_vs.append(e.meta["v"])
        if e.kind in ("samples", "forget", "adopt"):  # the kinds that change which samples are live
            self.sample_events.append(e.seq)
        if e.kind == "relocate":
            self.relocations.append((e.seq, e.meta["from"], e.meta["to"]))
        if e.kind == "queries" and e.meta.get("query_id"):
            self.answered.add((e.meta["query_id"], e.meta.get("method", ""), e.meta.get("v", "")))
            self.queried.add(e.meta["query_id"])
        for query_id, method, v in e.meta.get("answered", ()) if e.kind == "adopt" else ():
            self.answered.add((query_id, method, v))
            self.queried.add(query_id)
        if e.row_ids:
            self.next_row_id = max(self.next_row_id, e.row_ids[1])
        self.seq, self.checksum, self.last_commit_at = e.seq, e.checksum, e.created_at
        if e.seq % CHECKPOINT_EVERY == 0:
            self._forget_old_supersedes(e.created_at)

    def supersede(self, path: str, seq: int, at: str) -> None:
        """Track a file superseded by entry `seq` at time `at` until it is old enough to forget."""
        self.superseded[path] = (seq, at)
        heapq.heappush(self.by_time, (_timestamp(at), path))

    def _forget_old_supersedes(self, now: str) -> None:
        """Stop tracking files superseded long before `now` (entry time, so a replay prunes the same): by then they
        were deleted (`upkeep.sweep_superseded`), and any left are older than the orphan grace, so `compact` sweeps
        them as unnamed files."""
        cutoff = _timestamp(now) - FORGET_SUPERSEDED_AFTER
        # by time over all of them, not from the front of the dict: a state read from a checkpoint holds them in path
        # order, and stopping at the first young one there left a checkpoint's sum disagreeing with a replay
        while self.by_time and self.by_time[0][0] < cutoff:
            at, path = heapq.heappop(self.by_time)
            if path in self.superseded and _timestamp(self.superseded[path][1]) == at:
                del self.superseded[path]

    def _add(self, live: Live) -> None:
        self.files[live.ref.path] = live
        self.by_table.setdefault((live.ref.table, live.ref.v), {})[live.ref.path] = None

    def _drop(self, path: str) -> None:
        live = self.files.pop(path, None)
        if live is not None:
            self.by_table[(live.ref.table, live.ref.v)].pop(path, None)

    # ---- reading --------------------------------------------------------------------------------------------
    def live_files(self, table: str, v: str | None = None) -> list[Live]:
        """Live files of a table (at v; every v when None), in commit order."""
        if v is not None:
            return [self.files[p] for p in self.by_table.get((table, v), ())]
        return [live for live in self.files.values() if live.ref.table == table]

    def root_of(self, live: Live, default: str | None) -> str | None:
        """Where a samples file's sources resolve: its recorded root (else `default`), re-pointed by every later
        relocation of that root."""
        root = live.root or default
        for seq, old, new in self.relocations:
            if seq > live.seq and old == root:
                root = new
        return root

    # ---- checkpoints ------------------------------------------------------------------------------------------
    def to_json(self, identity_hash: str) -> str:
        body = {
            "format": CHECKPOINT_FORMAT,
            "seq": self.seq,
            "entry_checksum": self.checksum,
            "identity_hash": identity_hash,
            "files": [_live_row(live) for live in self.files.values()],
            "superseded": sorted([p, s, at] for p, (s, at) in self.superseded.items()),
            "relocations": [list(r) for r in self.relocations],
            "derived_vs": self.derived_vs,
            "next_row_id": self.next_row_id,
            "max_build": self.max_build,
            "answered": sorted(list(a) for a in self.answered),
            "last_commit_at": self.last_commit_at,
        }
        body["checksum"] = xxhash.xxh3_128_hexdigest(json.dumps(body, sort_keys=True).encode())
        return json.dumps(body, sort_keys=True, separators=(",", ":")) + "\n"

    @classmethod
    def from_json(cls, text: str, where: str, identity_hash: str) -> State:
        """A checkpoint's state; IntegrityError when it is damaged or of another identity."""
        try:
            raw = json.loads(text)
            checksum = raw.pop("checksum")
            if xxhash.xxh3_128_hexdigest(json.dumps(raw, sort_keys=True).encode()) != checksum:
                raise IntegrityError(f"{where}: checkpoint checksum mismatch (damaged or modified)")
            if raw["format"] != CHECKPOINT_FORMAT or raw["identity_hash"] != identity_hash:
                raise IntegrityError(f"{where}: checkpoint of another format or identity")
            state = cls(
                seq=int(raw["seq"]),
                checksum=raw["entry_checksum"],
                superseded={p: (int(s), at) for p, s, at in raw["superseded"]},
                relocations=[(int(s), a, b) for s, a, b in raw["relocations"]],
                derived_vs=list(raw["derived_vs"]),
                next_row_id=int(raw["next_row_id"]),
                max_build={k: int(v) for k, v in raw["max_build"].items()},
                answered={(q, m, v) for q, m, v in raw["answered"]},
                queried={q for q, _, _ in raw["answered"]},
                last_commit_at=raw["last_commit_at"],
            )
            for row in raw["files"]:
                state._add(_live_of(row))
            return state
        except IntegrityError:
            raise
        except (ValueError, KeyError, TypeError, AttributeError) as exc:
            raise IntegrityError(f"{where}: checkpoint is unreadable ({type(exc).__name__}: {exc})") from exc

    def same_as(self, other: State) -> bool:
        """Whether two states say the same (a checkpoint against a replay, in `verify --deep`)."""
        return self.to_json("") == other.to_json("")


def _timestamp(iso: str) -> float:
    return datetime.fromisoformat(iso).timestamp()


def _live_row(live: Live) -> list[Any]:
    f = live.ref
    row = [f.path, f.table, f.v, f.rows, f.bytes, f.xxh3, live.seq, live.created_at, live.root, live.build]
    return [*row, live.clean] if live.clean else row


def _live_of(row: list[Any]) -> Live:
    path, table, v, rows, size, xxh3, seq, created_at, root, build, *clean = row
    ref = FileRef(path, table, v, int(rows), int(size), xxh3)
    return Live(ref, int(seq), created_at, root, build, int(clean[0]) if clean else 0)


def checkpoint_name(seq: int) -> str:
    return f"{paths.CHECKPOINTS}/{seq:09d}.json"
