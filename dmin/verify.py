"""`verify`: is the project what its manifest says, and is it consistent? Every finding names a file.

Quick checks read the manifest's newest checkpoint and the entries after it, each file's size and Parquet footer,
row counts, and the index labels: their cost follows the number of files, not of samples. `deep` adds every entry
(replayed and compared with the checkpoint), checksums, vector contents, key-level completeness and duplicates,
fold consistency, the index self-test and orphan files. A finding is a `defect` (exit 1) or a `warning` (reported,
exit 0).
"""

from __future__ import annotations

import contextlib
import multiprocessing
import os
import time
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor, ThreadPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from dmin.errors import DminError
from dmin.findings import Finding, Findings
from dmin.index import current_index
from dmin.index_check import SelfTest, self_test_answers, verify_indexes
from dmin.precondition import check_preconditioners
from dmin.store import direct, paths
from dmin.store.identity import Identity
from dmin.store.keys import KeySet
from dmin.store.manifest import Entry, FileRef, parse_entry, prefetch
from dmin.store.pages import plain_pieces, value_spans
from dmin.store.project import Project
from dmin.store.schema import SAMPLES_BASE, fixed_schema, grads_schema
from dmin.store.state import State, checkpoint_name
from dmin.store.vectors import read_blocks, vec_values

FOLD_SAMPLES = 8
CHECK_ERRORS = (DminError, OSError, ValueError, KeyError, RuntimeError, pa.ArrowException)  # a check that cannot finish


@dataclass
class Report:
    project: str
    deep: bool
    findings: list[Finding]
    checked: dict[str, int]
    seconds: dict[str, float] = field(default_factory=dict)  # per stage: where a slow check spends its time

    @property
    def healthy(self) -> bool:
        return not any(f.severity == "defect" for f in self.findings)

    def to_dict(self) -> dict[str, Any]:
        return {
            "project": self.project,
            "deep": self.deep,
            "healthy": self.healthy,
            "checked": self.checked,
            "defects": sum(f.severity == "defect" for f in self.findings),
            "warnings": sum(f.severity == "warning" for f in self.findings),
            "findings": [asdict(f) for f in self.findings],
            "seconds": {k: round(v, 3) for k, v in self.seconds.items()},
        }


class _Verifier(Findings):
    def __init__(self, root: Path, deep: bool, progress: Callable[[int, int], None] | None = None) -> None:
        super().__init__(deep)
        self.root = root
        self.progress = progress
        self.seconds: dict[str, float] = {}
        self.keys: KeyCheck | None = None  # (deep) fed each grads file's keys during the file pass

    def run(self) -> Report:
        start = time.perf_counter()
        try:
            project = Project.open(self.root)
        except DminError as exc:
            self.defect("identity", paths.IDENTITY, str(exc))
            return self.report()
        ident = project.identity
        self.checked["identity"] += 1
        try:
            refs = [live.ref for live in project.state().files.values()]
        except DminError as exc:
            self.entries(project, ident, self)
            self.defect("manifest", _file_of(exc), str(exc))
            return self.report()
        # The manifest's checks run beside the file pass, which spends its time in reads and hashing that release
        # the GIL. Deep verify replays every entry (tens of thousands of small files: Python's work), in a process
        # of its own: in a thread it held the GIL that each of the file pass's reads waits for, halving its speed.
        # Likewise the kNN half of the index self-test: loading a million-sample graph holds the GIL for seconds.
        answered: dict[str, SelfTest] = {}
        self.seconds["open"] = time.perf_counter() - start
        if self.deep:
            prefetch(self.root, project.manifest_names())  # queued before the file pass's large reads
            indexed = any(project.live_files("index_meta", v) for v in ident.vs)
            # one worker on a 2-core machine (the file pass's reads keep a core busy in the kernel), two with more
            workers = max(1, min(1 + indexed, len(os.sched_getaffinity(0)) - 1))
            with ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("spawn")) as pool:
                job = pool.submit(_manifest_apart, str(self.root))
                knn_job = pool.submit(_index_apart, str(self.root)) if indexed else None
                self.stage("files", lambda: self.check_files(project, refs))
                waited = time.perf_counter()
                try:
                    side, seconds, named = job.result()
                    self.seconds.update(seconds)
                    answered = knn_job.result() if knn_job is not None else {}
                except (BrokenProcessPool, OSError):  # no worker could start, or one died: the checks run here
                    side = Findings(True)
                    named = self.manifest(project, ident, side)
            self.seconds["workers_wait"] = time.perf_counter() - waited  # after the file pass, until both are done
        else:
            side = Findings(self.deep)
            with ThreadPoolExecutor(1) as manifest:
                thread_job = manifest.submit(self.manifest, project, ident, side)
                self.stage("files", lambda: self.check_files(project, refs))
                named = thread_job.result()
        self.findings[:0] = side.findings  # the manifest's findings first, as it was checked first
        self.checked.update(side.checked)
        stages = [
            ("complete", lambda: self.check_complete(project, ident)),
            ("index", lambda: verify_indexes(project, self, answered)),
            ("precondition", lambda: check_preconditioners(project, self)),
            ("forgotten", lambda: self.check_forgotten(project)),
            ("checkpoint", lambda: self.check_checkpoints(project)),
        ]
        if self.deep:
            stages += [
                ("duplicates", lambda: self.check_keys(project, ident)),
                ("fold", lambda: self.check_folds(project, ident, refs)),
                ("orphan", lambda: self.check_orphans(named)),
            ]
        for name, stage in stages:
            self.stage(name, stage)
        return self.report()

    def stage(self, name: str, check: Callable[[], None]) -> None:
        """Run one check, timed; an exception becomes a defect naming the stage (verify never crashes)."""
        start = time.perf_counter()
        try:
            check()
        except CHECK_ERRORS as exc:
            self.defect(name, _file_of(exc), f"check could not complete: {exc}")
        self.seconds[name] = self.seconds.get(name, 0.0) + time.perf_counter() - start

    def absorb(self, other: Findings) -> None:
        """Take over what a check run beside this one found, in the order it found it."""
        self.findings += other.findings
        self.checked.update(other.checked)

    def report(self) -> Report:
        return Report(str(self.root), self.deep, self.findings, dict(self.checked), dict(self.seconds))

    # -- manifest -----------------------------------------------------------------------------------------
    def manifest(self, project: Project, ident: Identity, found: Findings) -> set[str]:
        """The manifest's checks, run beside the file pass: its entries and (deep) their replay against the
        checkpoint. Returns every path an entry parsed names (the orphan check's list)."""
        entries = self.entries(project, ident, found)
        if self.deep:
            start = time.perf_counter()
            try:
                self.check_checkpoint(project, entries, found)
            except (DminError, OSError, ValueError, KeyError) as exc:
                found.defect("checkpoint", _file_of(exc), f"check could not complete: {exc}")
            self.seconds["checkpoint_replay"] = time.perf_counter() - start
        return {f.path for e in entries for f in e.files}

    def entries(self, project: Project, ident: Identity, found: Findings) -> list[Entry]:
        """Parse and check manifest entries: quick, those after the newest checkpoint (readers use nothing older);
        deep, every one. Findings go to `found` (this runs beside the file pass). Returns the entries parsed."""
        start = time.perf_counter()
        out = []
        want = ident.hash()
        names = project.manifest_names()
        for expected, name in enumerate(names, 1):
            if name != paths.manifest_name(expected).split("/")[1]:
                found.defect(
                    "manifest",
                    paths.manifest_name(expected),
                    "manifest entry missing (sequence gap): committed data was un-committed or deleted",
                )
                break
        first = 1
        if not self.deep:
            with contextlib.suppress(DminError):
                first = project.checkpoint_seq(len(names)) or 1
        mismatched: list[str] = []
        folder = os.fspath(self.root / paths.MANIFEST)
        for name in names[first - 1 :]:
            rel = f"{paths.MANIFEST}/{name}"
            try:
                with open(os.path.join(folder, name), encoding="utf-8", errors="replace") as f:  # not pathlib: 30k
                    entry = parse_entry(f.read(), rel)  # entries at 10^6 samples
            except DminError as exc:
                found.defect("manifest", rel, str(exc).removeprefix(f"{rel}: "))
                continue
            found.checked["manifest_entries"] += 1
            if entry.identity_hash != want:
                mismatched.append(rel)
            out.append(entry)
        if out and len(mismatched) == len(out):
            found.defect(
                "identity",
                paths.IDENTITY,
                "no manifest entry was written under this identity: dmin.json was replaced or edited",
            )
        else:
            for rel in mismatched:
                found.defect(
                    "identity",
                    rel,
                    "entry was written under a different identity than dmin.json (files from another project)",
                )
        with contextlib.suppress(DminError):
            committed = {live.ref.v for live in project.state().files.values() if live.ref.table == "grads"}
            for v in sorted(v for v in committed - set(ident.vs) if v):
                found.warn(
                    "identity",
                    paths.IDENTITY,
                    f"v={v} is committed but not listed in vs; `dmin compress` will record it",
                )
        self.seconds["manifest"] = time.perf_counter() - start
        return out

    def check_checkpoints(self, project: Project) -> None:
        """Each checkpoint file reads back and names the checksum of its entry; one that does not costs readers
        time (they skip it and fold more entries), never correctness: a warning."""
        folder = self.root / paths.CHECKPOINTS
        for path in sorted(folder.glob("*.json")) if folder.is_dir() else ():
            rel = path.relative_to(self.root).as_posix()
            if project.vouched(rel):  # the checkpoint this process opened with: read and matched already
                self.checked["checkpoints"] += 1
                continue
            try:
                state = State.from_json(path.read_text(errors="replace"), rel, project.identity.hash())
                if state.checksum != project.read_entry(state.seq).checksum:
                    raise DminError(f"{rel}: sums up entries up to {state.seq} but does not match that entry")
                self.checked["checkpoints"] += 1
            except DminError as exc:
                self.warn(
                    "checkpoint",
                    rel,
                    f"{str(exc).removeprefix(rel + ': ')}; readers skip it and fold the entries instead (delete it; "
                    f"the next checkpoint is written 64 commits on)",
                )

    def check_checkpoint(self, project: Project, entries: list[Entry], found: Findings) -> None:
        """(deep) The state readers open with — the newest checkpoint plus the entries after it — equals a replay
        of every entry from the first."""
        replay = State()
        for entry in entries:
            replay.apply(entry)
        checkpoint = project.checkpoint(len(entries))
        if checkpoint is None:
            return
        found.checked["checkpoint"] += 1
        state = project.state()
        if not replay.same_as(state):
            found.defect(
                "checkpoint",
                checkpoint_name(checkpoint.seq),
                "checkpoint disagrees with the entries it sums up (damaged or stale); delete it, readers then replay "
                "the entries",
            )

    # -- files ------------------------------------------------------------------------------------------------
    def check_files(self, project: Project, refs: list[FileRef]) -> None:
        """Every committed file, two at a time: reading, hashing (xxhash) and the vector scan release the GIL, so
        one file's checks run while the disk reads the other. Findings keep the manifest's file order. (deep) This
        thread, idle while the disk reads, compares each grads file's keys with the others' as it is done."""
        K = project.identity.K
        keys = self.keys = KeyCheck(project) if self.deep else None

        def one(ref: FileRef) -> tuple[Findings, Any]:
            found = check_file(project, ref, self.deep)
            if keys is not None and ref.table == "grads" and not found.findings:
                return found, grouped_firsts(project, ref, K)
            return found, None

        with ThreadPoolExecutor(2) as pool:
            for i, (ref, (found, firsts)) in enumerate(zip(refs, pool.map(one, refs), strict=True), 1):
                self.absorb(found)
                if keys is not None and firsts is not None:
                    try:
                        keys.add(ref, firsts)
                    except CHECK_ERRORS:  # e.g. the samples unreadable: the key check's own stage reports it
                        self.keys = keys = None
                if self.progress:
                    self.progress(i, len(refs))

    # -- completeness ---------------------------------------------------------------------------------------
    def check_complete(self, project: Project, ident: Identity) -> None:
        """Every stored v holds K rows of every live sample, both counted from the manifest's row counts minus the rows
        of forgotten samples (read only from files committed before a tombstone and not compacted since); `--deep`
        checks it key by key (`check_keys`)."""
        K = ident.K
        samples = sum(self.live_rows(project, ref) for ref in project.live_files("samples"))  # not a 1M-key set
        for v in ident.vs:
            rows = sum(self.live_rows(project, ref) for ref in project.live_files("grads", v))
            self.checked[f"samples_v={v}"] = rows // max(1, K)
            if rows < K * samples:
                self.defect(
                    "complete",
                    paths.grads_dir(v),
                    f"{K * samples - rows} row(s) missing at v={v}: {rows} live rows where {samples} live sample(s) "
                    f"× K={K} = {K * samples} are expected (`dmin compress --v {v}` derives what a stored v lacks; "
                    f"`verify --deep` names the samples)",
                )
            elif rows > K * samples:
                self.defect(
                    "complete",
                    paths.grads_dir(v),
                    f"{rows - K * samples} row(s) too many at v={v}: {rows} live rows where {samples} live sample(s) "
                    f"× K={K} = {K * samples} are expected (duplicates or rows of no sample: `verify --deep` names "
                    f"them)",
                )

    def live_rows(self, project: Project, ref: FileRef) -> int:
        """A file's rows by its manifest entry, minus those of forgotten samples (0 for a missing file: reported by
        check_file)."""
        if not (self.root / ref.path).is_file():
            return 0
        dead = project.dead_rows(ref)
        return ref.rows - (int(dead.sum()) if dead is not None else 0)

    def check_keys(self, project: Project, ident: Identity) -> None:
        """(deep) Key by key (`KeyCheck`): most files were compared during the file pass; a file it did not read
        whole (a finding of its own) is read here."""
        keys = self.keys or KeyCheck(project)
        for v in ident.vs:
            for ref in project.live_files("grads", v):
                if ref.path not in keys.fed:
                    keys.add(ref, grouped_firsts(project, ref, ident.K))
        keys.report(self)

    def check_forgotten(self, project: Project) -> None:
        """A warning while forgotten samples' bytes are still on disk: rows in live files, or superseded files not
        deleted yet (readers ignore both; `dmin compact` erases them)."""
        liveness = project.liveness()
        if not liveness.tombstones:
            return
        held = sum(
            int(dead.sum()) for ref in project.live_files("samples") if (dead := project.dead_rows(ref)) is not None
        )
        on_disk = _files_under(self.root, paths.DATA_DIRS)  # one listing, not a stat per superseded path (66k at
        left = [p for p in project.state().superseded if p in on_disk]  # 10^6 samples)
        self.checked["forgotten"] = len(liveness.forgotten)
        if held or left:
            self.warn(
                "forgotten",
                paths.TOMBSTONES,
                f"{held} forgotten sample(s) still have rows in live files and {len(left)} superseded file(s) "
                f"remain on disk; `dmin compact` erases them",
            )

    # -- deep ---------------------------------------------------------------------------------------------------
    def check_folds(self, project: Project, ident: Identity, live: list[FileRef]) -> None:
        """Sampled rows of each derived v must equal the fold (or compression) of a larger stored v: the first
        FOLD_SAMPLES samples of each v's first file, found in the parent v's files by key, read in place. A fold is
        a sum of runs, done here in numpy; torch (2 s to import) loads only to compress from v=full."""
        K = ident.K
        if len(ident.vs) < 2:
            return
        first: dict[str, tuple[list[str], np.ndarray]] = {}
        for v in ident.vs:
            refs = project.live_files("grads", v)
            if refs:
                block = read_blocks(self.root / refs[0].path, "sample_id", K)[0]
                first[v] = (block.keys.to_pylist()[:FOLD_SAMPLES], np.asarray(block.vecs[:FOLD_SAMPLES], np.float32))
        numeric = sorted((int(v) for v in first if v != "full"), reverse=True)
        tol = 2e-2 if ident.dtype == "float16" else 1e-4
        for small in numeric:
            parents = [str(b) for b in numeric if b > small] + (["full"] if "full" in first else [])
            if not parents:
                continue
            parent = parents[0]
            keys, child = first[str(small)]
            found = self._rows_of(project, parent, keys)
            for i, key in enumerate(keys):
                if key not in found:
                    continue
                want = compressed(ident, found[key], small) if parent == "full" else folded(found[key], small)
                self.checked["fold_checks"] += 1
                if not np.allclose(child[i], want, rtol=tol, atol=tol * max(1.0, float(np.abs(want).max()))):
                    self.defect(
                        "fold",
                        paths.grads_dir(small),
                        f"sample {key} is not the fold of its v={parent} rows (derived vectors inconsistent)",
                    )
                    break

    def _rows_of(self, project: Project, v: str, keys: list[str]) -> dict[str, np.ndarray]:
        """The (K, v) vectors of these samples at v, found by key in the live files."""
        out: dict[str, np.ndarray] = {}
        wanted = pa.array(keys, pa.string())
        for ref in project.live_files("grads", v):
            for block in read_blocks(self.root / ref.path, "sample_id", project.identity.K):
                at = pc.index_in(wanted, value_set=block.keys).to_numpy(zero_copy_only=False)
                for key, pos in zip(keys, at, strict=True):
                    if pos == pos and key not in out:  # NaN: not in this block
                        out[key] = np.array(block.vecs[int(pos)], np.float32)  # a copy: torch wants it writable
                if len(out) == len(keys):
                    return out
        return out

    def check_orphans(self, named: set[str]) -> None:
        """Files below the data folders that no entry names (`named`: every path any entry names)."""
        for top in paths.DATA_DIRS:
            folder = self.root / top
            if not folder.is_dir():
                continue
            for path in sorted(folder.rglob("*")):
                if path.is_file():
                    rel = path.relative_to(self.root).as_posix()
                    if rel not in named:
                        self.warn(
                            "orphan",
                            rel,
                            "not named by any manifest entry (left by an interrupted write); readers ignore it",
                        )


def folded(rows: np.ndarray, v: int) -> np.ndarray:
    """`compressor.fold` in numpy: each run of rows.shape[-1] / v values summed (in float64), as float32."""
    have = rows.shape[-1]
    return rows.reshape(*rows.shape[:-1], v, have // v).sum(-1, dtype=np.float64).astype(np.float32)


def compressed(ident: Identity, rows: np.ndarray, v: int) -> np.ndarray:
    """v=full rows compressed to v with the project's compressor (torch)."""
    import torch

    from dmin.compressor import Compressor

    return Compressor(ident.n, ident.compress_seed).compress(torch.from_numpy(rows), v).numpy()


def _manifest_apart(root: str) -> tuple[Findings, dict[str, float], set[str]]:
    """(deep) The manifest's checks in a process of their own: (findings, seconds per stage, every path an entry
    names). A project that does not open is reported by the parent."""
    ver = _Verifier(Path(root), deep=True)
    found = Findings(True)
    try:
        project = Project.open(root)
    except DminError:
        return found, {}, set()
    named = ver.manifest(project, project.identity, found)
    return found, ver.seconds, named


def _index_apart(root: str) -> dict[str, SelfTest]:
    """(deep) The kNN half of each index's self-test in a process of its own, by v; an index that fails here is
    left out, and the parent's own self-test reports why. The vector files it reads are not hashed again here: the
    parent's file pass checks every one of them at the same time (hashing 10 GB twice, from two processes, cost
    seconds at 10^6 samples), and the page reader refuses bytes out of its layout. The graph file is still checked
    before hnswlib loads it."""
    out: dict[str, SelfTest] = {}
    try:
        project = Project.open(root)
        for live in project.state().files.values():
            if live.ref.table != "index":
                project.vouch(live.ref)
        for v in project.identity.vs:
            with contextlib.suppress(DminError, OSError, RuntimeError, ValueError):
                idx = current_index(project, v) if project.live_files("index_meta", v) else None
                answers = self_test_answers(project, idx) if idx is not None else None
                if answers is not None:
                    out[v] = answers
    except DminError:
        pass
    return out


class KeyCheck:
    """(deep) Each stored v's grads files, key by key: rows come K at a time (t_idx 0..K-1 of one sample), no sample
    has rows in two files, and the samples are exactly the live samples. Fed one file at a time (`add`), so the
    file pass compares keys while the disk reads; what it finds waits for `report`, so the report's order does not
    depend on which file finished first."""

    def __init__(self, project: Project) -> None:
        self.project = project
        self.live: KeySet | None = None  # the live samples, read at the first file
        self.seen: dict[str, KeySet] = {v: KeySet() for v in project.identity.vs}
        self.fed: set[str] = set()
        self.found: list[tuple[str, str, str]] = []  # (check, path, message)

    def add(self, ref: FileRef, firsts: Any) -> None:
        """One grads file's `grouped_firsts`."""
        self.fed.add(ref.path)
        K = self.project.identity.K
        if firsts is _UNREADABLE or ref.v not in self.seen:
            return  # reported by check_file
        if firsts is None:
            message = f"rows do not come K={K} at a time (t_idx 0..{K - 1} of one sample)"
            self.found.append(("complete", ref.path, message))
            return
        if self.live is None:
            self.live = self.project.sample_keys()
        seen = self.seen[ref.v]
        if seen.contains(firsts).any() or len(KeySet.of(firsts)) < len(firsts):
            self.found.append(("duplicates", ref.path, "sample(s) with rows in another file or twice in this one"))
        seen.add(firsts)
        missing_live = ~self.live.contains(firsts)
        if missing_live.any():
            example = firsts[int(np.flatnonzero(missing_live)[0])].as_py()
            message = f"{int(missing_live.sum())} gradient sample_id(s) are not in samples (e.g. {example})"
            self.found.append(("complete", ref.path, message))

    def report(self, found: Findings) -> None:
        """What the files fed showed, then the live samples each v lacks."""
        live = self.live if self.live is not None else self.project.sample_keys()
        for check, path, message in self.found:
            found.defect(check, path, message)
        for v, seen in self.seen.items():
            if len(seen) < len(live):
                message = f"{len(live) - len(seen)} live sample(s) have no rows at v={v}"
                found.defect("complete", paths.grads_dir(v), message)
            found.checked["key_checks"] += 1


_UNREADABLE: Any = object()  # grouped_firsts of a file that cannot be read (check_file reports why)


def grouped_firsts(project: Project, ref: FileRef, K: int) -> pa.Array | None:
    """The sample_id of each K-row group of a grads file's live rows; None when its rows do not come K at a time
    (t_idx 0..K-1 of one sample), _UNREADABLE when the file cannot be read."""
    try:
        t = pq.read_table(project.root / ref.path, columns=["sample_id", "t_idx"])
    except (OSError, pa.ArrowException, KeyError):
        return _UNREADABLE
    dead = project.dead_rows(ref)
    if dead is not None:
        t = t.filter(pa.array(~dead))
    ids, t_idx = t.column("sample_id").combine_chunks(), t.column("t_idx").to_numpy()
    firsts = ids.take(pa.array(np.arange(0, len(ids), K))) if len(ids) else ids
    grouped = len(ids) % K == 0 and bool((t_idx == np.tile(np.arange(K), len(ids) // K)).all())
    if grouped and K > 1:
        spread = firsts.take(pa.array(np.repeat(np.arange(len(firsts)), K)))
        grouped = bool(pc.all(pc.equal(ids, spread)).as_py())
    return firsts if grouped else None


def check_file(project: Project, ref: FileRef, deep: bool) -> Findings:
    """One committed file against its manifest entry: presence, size, (deep) checksum, Parquet footer, rows, schema,
    (deep) vector contents. A file whose bytes match is vouched for, so the index self-test does not hash it again."""
    found = Findings(deep)
    path = project.root / ref.path
    found.checked["files"] += 1
    if not path.is_file():
        found.defect("presence", ref.path, "named by the manifest but missing")
        return found
    size = path.stat().st_size
    if size != ref.bytes:
        found.defect("size", ref.path, f"{size} bytes, the manifest says {ref.bytes} (truncated or rewritten)")
        return found
    scan = NonfiniteScan.of(ref, path) if deep else None
    if deep:
        found.checked["checksums"] += 1
        # One read serves the vector scan too, past the page cache: but the index self-test loads the graph through
        # the cache at the same time, and read past it here, the graph came off the disk twice.
        if direct.checksum(path, scan, past_cache=ref.table != "index") != ref.xxh3:
            found.defect("checksum", ref.path, "xxh3 checksum differs from the manifest (bytes changed)")
            return found
        project.vouch(ref)
    if not ref.path.endswith(".parquet"):
        return found
    try:
        meta = pq.read_metadata(path)
        schema = meta.schema.to_arrow_schema()
    except (OSError, pa.ArrowException) as exc:
        found.defect("parquet", ref.path, f"unreadable Parquet: {exc}")
        return found
    if meta.num_rows != ref.rows:
        found.defect("rows", ref.path, f"{meta.num_rows} rows, the manifest says {ref.rows}")
    problem = schema_problem(project.identity, ref, schema)
    if problem:
        found.defect("schema", ref.path, problem)
        return found
    found.checked["schemas"] += 1
    if deep and ref.table in ("grads", "query_grads"):
        check_vectors(project.identity, ref, path, found, scan if scan is not None and scan.clean else None)
    return found


class NonfiniteScan:
    """(deep) The vector pages of a file judged as its blocks stream past `direct.checksum`: the one read that hashes
    a file also finds whether any value is NaN or infinite. A value split by a block's end is kept aside and judged
    when its rest arrives. Only whether the file is clean counts: a file that is not is scanned again row by row
    (`check_vectors`), which names how many vectors are bad."""

    def __init__(self, spans: list[tuple[int, int]], dtype: np.dtype, rows: int) -> None:
        self.spans, self.dtype, self.rows = sorted(spans), dtype, rows
        self.bad = 0
        self.carry = b""  # the first bytes of a value that the last block's end split
        self.seen = 0  # values judged

    @classmethod
    def of(cls, ref: FileRef, path: Path) -> NonfiniteScan | None:
        """A scan for a vector file whose pages it can place; None for v=full (its rows' norms are checked too, from
        the mapped rows) and for any other file."""
        if ref.table not in ("grads", "query_grads") or ref.v == "full":
            return None
        found = value_spans(path, "vec")
        if found is None:
            return None
        spans, dtype, dim = found
        return cls(spans, dtype, sum(n for _, n in spans) // max(1, dim))

    @property
    def clean(self) -> bool:
        """Every value of every page seen, none of them NaN or infinite."""
        return not self.bad and self.seen == sum(n for _, n in self.spans)

    def __call__(self, offset: int, block: memoryview) -> None:
        size, end = self.dtype.itemsize, offset + len(block)
        for start, n in self.spans:
            lo, hi = max(start, offset), min(start + n * size, end)
            if lo >= hi:
                continue
            first = min(hi, lo + (start - lo) % size)  # the first value that begins in this block
            if first > lo:  # the rest of a value the previous block's end split
                self.judge(np.frombuffer(self.carry + bytes(block[lo - offset : first - offset]), self.dtype))
            whole = (hi - first) // size
            self.judge(np.frombuffer(block, self.dtype, count=whole, offset=first - offset))
            tail = first + whole * size
            self.carry = bytes(block[tail - offset : hi - offset])

    def judge(self, values: np.ndarray) -> None:
        from dmin.kernels.dot import count_nonfinite_rows  # numba: only a deep check loads it

        self.seen += len(values)
        width = 1024 if len(values) >= 1024 else max(1, len(values))
        rows = len(values) // width
        self.bad += count_nonfinite_rows(values[: rows * width].reshape(rows, width))
        if len(values) > rows * width:
            self.bad += count_nonfinite_rows(values[rows * width :].reshape(1, -1))


def check_vectors(
    ident: Identity, ref: FileRef, path: Path, found: Findings, scanned: NonfiniteScan | None = None
) -> None:
    """(deep) Every vector finite (judged while the file was hashed, `scanned`, or read in place from the mapped
    pages), norms and losses finite, v=full rows of unit length."""
    from dmin.kernels.dot import count_nonfinite_rows  # numba: only a deep check loads it

    # each row group's values in place, never joined into a copy; none at all where the hash's read judged them
    fast = plain_pieces(path, "vec", populate=True) if scanned is None else None
    if fast is not None and not fast[0]:
        fast = None
    try:
        table = pq.read_table(path, columns=["norm", "loss"] if fast or scanned else ["vec", "norm", "loss"])
    except (OSError, pa.ArrowException) as exc:
        found.defect("parquet", ref.path, f"unreadable Parquet: {exc}")
        return
    if scanned is not None:  # every value already judged finite
        found.checked["vectors"] += scanned.rows
        check_columns(ref, table, found)
        return
    pieces, dim = fast or ([vec_values(table.column("vec"))], table.schema.field("vec").type.list_size)
    if any(piece.size % dim for piece in pieces):  # pages that split a row (v=full rows past 16 MiB): join them
        pieces = [np.concatenate(pieces)]
    parts = [piece.reshape(-1, dim) for piece in pieces]
    found.checked["vectors"] += sum(len(part) for part in parts)
    bad = sum(count_nonfinite_rows(part) for part in parts)
    if bad:
        found.defect("finite", ref.path, f"{bad} vector(s) hold NaN or infinity")
        return
    check_columns(ref, table, found)
    if ref.v == "full" and any(len(part) for part in parts):
        tol = 1e-2 if ident.dtype == "float16" else 1e-4
        worst = max(float(np.abs(np.linalg.norm(part.astype(np.float64), axis=1) - 1).max(initial=0)) for part in parts)
        if worst > tol:
            found.defect("norm", ref.path, f"v=full rows must be unit vectors; the worst norm is off by {worst:.3g}")


def check_columns(ref: FileRef, table: pa.Table, found: Findings) -> None:
    """(deep) A vector file's norms and losses finite."""
    for col in ("norm", "loss"):
        if not np.isfinite(table.column(col).to_numpy()).all():
            found.defect("finite", ref.path, f"column {col} holds NaN or infinity")


def _files_under(root: Path, tops: tuple[str, ...] | list[str]) -> set[str]:
    """Every file below these top folders of a project, as paths relative to the root with forward slashes."""
    found: set[str] = set()
    for top in tops:
        for folder, _, names in os.walk(root / top):
            rel = Path(folder).relative_to(root).as_posix()
            found.update(f"{rel}/{name}" for name in names)
    return found


def _file_of(exc: BaseException) -> str:
    text = str(exc)
    return text.split(": ", 1)[0] if ": " in text else ""


def type_name(t: pa.DataType) -> str:
    """A type's name with list child names dropped (Parquet renames `item` to `element`)."""
    if pa.types.is_fixed_size_list(t):
        return f"fixed_size_list<{t.value_type}>[{t.list_size}]"
    if pa.types.is_list(t):
        return f"list<{t.value_type}>"
    return str(t)


def schema_problem(ident: Identity, ref: FileRef, schema: pa.Schema) -> str | None:
    """A readable description of how a file's schema departs from its table's, or None."""
    if ref.table in ("grads", "query_grads"):
        dim = ident.n if ref.v == "full" else int(ref.v or 0)
        want = grads_schema(dim, ident.dtype, "query_id" if ref.table == "query_grads" else "sample_id")
        fields = list(schema)
    elif ref.table == "samples":
        want = SAMPLES_BASE
        fields = list(schema)[: len(SAMPLES_BASE)]
        extras = [f for f in list(schema)[len(SAMPLES_BASE) :] if not pa.types.is_string(f.type)]
        if extras:
            return f"metadata column {extras[0].name} has type {extras[0].type}, expected string"
    elif ref.table in ("queries", "results", "failures", "tombstones"):
        want = fixed_schema(ref.table)
        fields = list(schema)
    else:
        return None
    got = [(f.name, type_name(f.type)) for f in fields]
    exp = [(f.name, type_name(f.type)) for f in want]
    if got != exp:
        diff = [f"{g[0]}:{g[1]} (expected {e[0]}:{e[1]})" for g, e in zip(got, exp, strict=False) if g != e]
        if len(got) != len(exp):
            diff.append(f"{len(got)} columns (expected {len(exp)})")
        return "schema differs from schemas/: " + "; ".join(diff[:3])
    return None


def verify(root: str | Path, deep: bool = False, progress: Callable[[int, int], None] | None = None) -> Report:
    """Check a project; never modifies it. `progress(files checked, files committed)` follows the file checks.
    A path that is no directory at all is a ProjectError (a wrong argument), not a finding."""
    Project.require_dir(root)
    return _Verifier(Path(root), deep, progress).run()
