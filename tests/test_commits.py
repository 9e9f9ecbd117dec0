"""Commits without locks: put-if-absent manifest entries, writers racing with flock unavailable, and every stored v
complete whatever order a compress and a collect commit in."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from collections import Counter
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
import torch

from dmin.compressor import fold
from dmin.derive import derive_v
from dmin.store import Project, manifest, paths
from dmin.verify import verify
from tests.conftest import add_samples, make_identity

REPO = Path(__file__).resolve().parents[1]


def test_an_entry_is_created_only_if_absent(tmp_path: Path) -> None:
    final = tmp_path / "manifest" / "000000001.json"
    assert manifest.create_exclusive(final, b"first")
    assert not manifest.create_exclusive(final, b"second")
    assert final.read_bytes() == b"first"
    assert [p.name for p in final.parent.iterdir()] == ["000000001.json"]  # no temp file left behind


def invariants(root: Path) -> list[str]:
    """What concurrent writers must never break; the problems found (none when healthy)."""
    p = Project.open(root)
    entries = p.entries()
    problems = []
    samples = p.read_table("samples")
    ids = [] if samples is None else samples.column("sample_id").to_pylist()
    if len(ids) != len(set(ids)):
        problems.append(f"{len(ids) - len(set(ids))} duplicate sample_id(s)")
    ranges = [e.row_ids for e in entries if e.row_ids]
    if [lo for lo, _ in ranges] != [0] + [hi for _, hi in ranges[:-1]]:
        problems.append(f"row id ranges do not follow each other: {ranges}")
    live = {f.path for f in p.live_files("samples")}
    for e in entries:  # each commit's samples file holds exactly its range of row ids, in order
        for f in e.files:
            if f.table == "samples" and e.row_ids and f.path in live:
                rows = pq.read_table(root / f.path, columns=["row_id"]).column("row_id").to_pylist()
                if rows != list(range(*e.row_ids)):
                    problems.append(f"entry {e.seq}: row ids {rows} are not its range {e.row_ids}")
    named = Counter(f.path for e in entries for f in e.files)
    problems += [f"{path} named by {n} entries" for path, n in named.items() if n > 1]
    on_disk = {
        f.relative_to(root).as_posix() for top in paths.DATA_DIRS for f in (root / top).rglob("*") if f.is_file()
    }
    problems += [f"{path}: on disk, named by no entry" for path in sorted(on_disk - set(named))]
    report = verify(root, deep=True)
    problems += [f"{f.check}: {f.file}: {f.message}" for f in report.findings if f.severity == "defect"]
    return problems


RACER = textwrap.dedent("""
    import errno, fcntl, sys

    def no_locks(*args, **kwargs):
        raise OSError(errno.ENOLCK, "No locks available (NFS without a lock manager)")

    fcntl.flock = fcntl.lockf = no_locks
    sys.path.insert(0, {repo!r})
    from dmin.store import Project, manifest
    from tests.conftest import add_samples

    lost = 0
    publish = manifest.publish

    def counted(root, entry):
        global lost
        won = publish(root, entry)
        lost += not won
        return won

    manifest.publish = counted
    p = Project.open({root!r})
    print("ready", flush=True)
    sys.stdin.readline()
    for lo in range({start}, {start} + 24, 3):
        add_samples(p, lo, 3)
    print(lost, flush=True)
""")


@pytest.mark.slow
def test_writers_race_without_flock(tmp_path: Path) -> None:
    root = tmp_path / "proj"
    Project.create(root, make_identity())
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", RACER.format(repo=str(REPO), root=str(root), start=w * 6)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )
        for w in range(4)
    ]  # overlapping ranges: ids 0..41, most offered by two or three writers
    for proc in procs:
        assert proc.stdout is not None and proc.stdout.readline() == "ready\n"
    for proc in procs:  # all at once
        assert proc.stdin is not None
        proc.stdin.write("go\n")
        proc.stdin.flush()
    lost = [int(proc.communicate()[0]) for proc in procs]
    assert [proc.returncode for proc in procs] == [0, 0, 0, 0]
    assert sum(lost) > 0  # the writers did race: some lost an entry number and re-planned
    p = Project.open(root)
    assert p.sample_ids() == {f"id{i:05d}" for i in range(42)}
    assert sorted(p.read_table("samples").column("row_id").to_pylist()) == list(range(42))  # type: ignore[union-attr]
    assert invariants(root) == []


def _swap_in(monkeypatch: pytest.MonkeyPatch, kind: str, first: callable) -> list[str]:  # type: ignore[valid-type]
    """Make the first publication of a `kind` entry lose a race: just before it, `first()` commits through another
    Project. Returns the kinds published, in order."""
    real = manifest.publish
    order: list[str] = []
    pending = [first]

    def publish(root: Path, entry: manifest.Entry) -> bool:
        if entry.kind == kind and pending:
            pending.pop()()
        won = real(root, entry)
        if won:
            order.append(entry.kind)
        return won

    monkeypatch.setattr(manifest, "publish", publish)
    return order


def _vectors(p: Project, v: str) -> dict[str, np.ndarray]:
    """sample_id → (K, v) vectors of the live samples."""
    t = Project.open(p.root).read_table("grads", v)
    assert t is not None
    vec = t.column("vec").combine_chunks().values.to_numpy().reshape(len(t) // 2, 2, int(v))
    return dict(zip(t.column("sample_id").to_pylist()[::2], vec, strict=True))


def _complete_at(p: Project, v: str) -> set[str]:
    t = Project.open(p.root).read_table("grads", v)
    assert t is not None
    return set(t.column("sample_id").to_pylist())


def test_a_compress_that_loses_the_race_to_a_collect_derives_its_samples_too(
    small_project: Project, monkeypatch: pytest.MonkeyPatch
) -> None:
    other = Project.open(small_project.root)
    order = _swap_in(monkeypatch, "derive", lambda: add_samples(other, 20, 3))
    entry = derive_v(small_project, 64)
    assert order == ["samples", "derive"] and entry is not None
    assert _complete_at(small_project, "64") == _complete_at(small_project, "256") == {f"id{i:05d}" for i in range(23)}
    assert verify(small_project.root, deep=True).healthy


def test_a_collect_that_loses_the_race_to_a_compress_writes_the_new_v(
    small_project: Project, monkeypatch: pytest.MonkeyPatch
) -> None:
    other = Project.open(small_project.root)
    order = _swap_in(monkeypatch, "samples", lambda: derive_v(other, 64))
    add_samples(small_project, 20, 3)
    assert order == ["derive", "samples"]
    assert _complete_at(small_project, "64") == {f"id{i:05d}" for i in range(23)}
    va, vb = _vectors(small_project, "256"), _vectors(small_project, "64")
    for sid in ("id00020", "id00021", "id00022", "id00003"):  # written by the commit and by compress: one rule
        np.testing.assert_array_equal(vb[sid], fold(torch.from_numpy(va[sid].copy()), 64).numpy())
    assert verify(small_project.root, deep=True).healthy


def test_every_stored_v_stays_complete_and_compress_completes_an_old_gap(small_project: Project) -> None:
    derive_v(small_project, 64)
    add_samples(small_project, 20, 3)  # commits write every stored v, derived ones included
    assert _complete_at(small_project, "64") == {f"id{i:05d}" for i in range(23)}
    assert derive_v(small_project, 64) is None  # complete: nothing to do
    assert verify(small_project.root).healthy


WRITER = textwrap.dedent("""
    import sys
    sys.path.insert(0, {repo!r})
    from dmin.store import Project
    from tests.conftest import add_samples
    p = Project.open({root!r})
    for lo in range(100, 160, 4):
        add_samples(p, lo, 4)
""")


@pytest.mark.slow
def test_compress_racing_a_collecting_process(small_project: Project) -> None:
    proc = subprocess.Popen([sys.executable, "-c", WRITER.format(repo=str(REPO), root=str(small_project.root))])
    for v in (128, 64, 32, 16):  # each derive races the writer's commits
        derive_v(Project.open(small_project.root), v)
    assert proc.wait() == 0
    p = Project.open(small_project.root)
    assert set(p.identity.vs) == {"256", "128", "64", "32", "16"}
    want = p.sample_ids()
    assert len(want) == 80
    for v in p.identity.vs:
        assert _complete_at(p, v) == want, v
    assert invariants(p.root) == []
