#!/usr/bin/env python
"""Fault injection: does dmin lose nothing and let nothing wrong through? Prints one JSON object (last line):
for each fault kind, {"trials": N, "passed": M, "detail": …}. `--trials` sets the kill trials (50 by default).

kill_collect      kill -9 during collect at random instants, resume; final project == an uninterrupted run
kill_other        kill -9 during index, compress and query: the previous index/tables stay valid and usable
shards            4 concurrent `--shard i/4` processes with flock unavailable (it raises ENOLCK, as on NFS without a
                  lock manager), twice over the same data: complete, no duplicates, dense row ids
forget            kill -9 at a random instant of a forget: the old or the new state, valid; a rerun completes it
compact           kill -9 at a random instant of a compact: the old or the new state, valid, forgotten samples
                  absent either way; a rerun completes it and no file holds a byte of them
corruption        truncate / flip bytes / delete / swap-from-another-project for every file kind: verify exits 1
                  naming the file (which of quick or deep catches it is in detail); query refuses cleanly
hostile_input     broken images, metadata, escaping paths, pickle weights, remote code, NaN weights, identity
                  mismatch, newer schema: one clear line, exit 1 or 2, nothing lost
disk_full         writes fail part-way (RLIMIT_FSIZE): clean error, project unchanged and valid
"""

from __future__ import annotations

import argparse
import fnmatch
import json
import os
import random
import resource
import shutil
import signal
import subprocess
import sys
import tempfile
import textwrap
import time
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from dmin.store import Project  # noqa: E402
from dmin.verify import verify  # noqa: E402
from tests import tiny  # noqa: E402

DMIN = [sys.executable, "-m", "dmin_cli"]
# dmin with flock and lockf failing as they do on NFS without a lock manager: commits must not need them
NO_FLOCK = textwrap.dedent("""
    import errno, fcntl
    def no_locks(*args, **kwargs):
        raise OSError(errno.ENOLCK, "No locks available")
    fcntl.flock = fcntl.lockf = no_locks
    from dmin_cli.app import main
    main()
""")
DMIN_NO_FLOCK = [sys.executable, "-c", NO_FLOCK]
# Batched passes of 3 samples (6 examples), a commit after every pass: kills land inside passes and between them.
COLLECT = ["--timesteps", "2", "--v", "64", "--v", "16", "--batch-size", "3", "--commit-every", "1"]
FORGET = "000[35].png"  # the sources the forget and compact kinds forget


def run(args: list[str], **kw: Any) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*DMIN, *args], capture_output=True, text=True, **kw)


def snapshot(root: Path) -> dict[tuple[str, str, int], bytes]:
    """(v, sample_id, t_idx) → vector bytes of every committed row."""
    p = Project.open(root)
    out = {}
    for v in p.identity.vs:
        t = p.read_table("grads", v)
        if t is None:
            continue
        dim = t.schema.field("vec").type.list_size
        vec = t.column("vec").combine_chunks().values.to_numpy().reshape(len(t), dim)
        for i, (s, k) in enumerate(zip(t.column("sample_id").to_pylist(), t.column("t_idx").to_pylist(), strict=True)):
            key = (v, s, k)
            if key in out:
                raise AssertionError(f"duplicate row {key}")
            out[key] = vec[i].tobytes()
    return out


def same_rows(got: dict[tuple[str, str, int], bytes], ref: dict[tuple[str, str, int], bytes], rtol: float) -> bool:
    """The same rows as `ref`, each vector within `rtol` (relative L2) of its reference: for runs whose batched
    passes group samples differently (shards), which changes float32 rounding, never a value."""
    if got.keys() != ref.keys():
        return False
    for key, want in ref.items():
        a = np.frombuffer(want, np.float32).astype(np.float64)
        b = np.frombuffer(got[key], np.float32).astype(np.float64)
        if np.linalg.norm(a - b) > rtol * np.linalg.norm(a):
            return False
    return True


def one_line_error(r: subprocess.CompletedProcess[str], codes: tuple[int, ...] = (1,)) -> bool:
    return r.returncode in codes and "Traceback" not in r.stderr and len(r.stderr.strip().splitlines()) == 1


class Env:
    def __init__(self, root: Path) -> None:
        self.root = root
        self.model = tiny.ddpm(root / "model")
        self.other_model = tiny.ddpm(root / "other", conditional=False)
        self.data = tiny.digits_folder(root / "data", count=12)
        self.ref = root / "ref"
        start = time.perf_counter()
        proc = subprocess.Popen(
            [*DMIN, "collect", str(self.ref), "--model", str(self.model), "--data", str(self.data), *COLLECT],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
        )
        self.first_commit_seconds = 0.0  # when the first entry appeared: kill instants are drawn from there on
        self.last_commit_seconds = 0.0  # when the newest entry appeared: the end of the commit phase
        entries = 0
        while proc.poll() is None:
            if not self.first_commit_seconds and (self.ref / "manifest" / "000000001.json").exists():
                self.first_commit_seconds = time.perf_counter() - start
            now = len(list((self.ref / "manifest").glob("*.json"))) if (self.ref / "manifest").is_dir() else 0
            if now > entries:
                entries, self.last_commit_seconds = now, time.perf_counter() - start
            time.sleep(0.002)
        self.collect_seconds = time.perf_counter() - start
        assert proc.returncode == 0, proc.stderr.read() if proc.stderr else ""
        self.ref_rows = snapshot(self.ref)

    def fresh(self, name: str) -> Path:
        dst = self.root / name
        shutil.rmtree(dst, ignore_errors=True)
        return dst

    def collect(self, project: Path, *extra: str) -> subprocess.CompletedProcess[str]:
        return run(["collect", str(project), "--model", str(self.model), "--data", str(self.data), *COLLECT, *extra])


def kill_collect(env: Env, trials: int, rng: random.Random) -> dict[str, Any]:
    """Three trials in four wait for the killed run's own first commit, then kill it at an instant drawn over the
    reference run's commit phase (its first to its last manifest entry); the fourth kills at an instant drawn before
    the reference's first commit. (Instants drawn over the whole reference run landed inside the commit phase in 1 of
    50 trials: loading the model takes most of a small run; drawn over the rest of the run after the first commit,
    still 1 of 40, as the run's exit is slower than its commits.) Where each kill landed is read off the killed
    project: before its first commit, after some commits (inside the run), or after every sample was committed."""
    passed, fails, landed = 0, [], Counter()
    total = len({sid for _, sid, _ in env.ref_rows})
    for trial in range(trials):
        project = env.fresh(f"kill{trial}")
        proc = subprocess.Popen(
            [*DMIN, "collect", str(project), "--model", str(env.model), "--data", str(env.data), *COLLECT],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        if trial % 4:
            first = project / "manifest" / "000000001.json"
            deadline = time.perf_counter() + 10 * env.collect_seconds
            while not first.exists() and proc.poll() is None and time.perf_counter() < deadline:
                time.sleep(0.005)
            time.sleep(rng.uniform(0, max(0.01, env.last_commit_seconds - env.first_commit_seconds)))
        else:
            time.sleep(rng.uniform(0, env.first_commit_seconds))
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        ok = True
        committed = len(Project.open(project).sample_ids()) if Project.exists(project) else 0
        landed["before the first commit" if not committed else "after every sample" if committed >= total
               else "after a first commit, before the last"] += 1
        if Project.exists(project):
            ok &= verify(project, deep=True).healthy
        r = env.collect(project)
        ok &= r.returncode == 0 and verify(project, deep=True).healthy
        try:
            ok &= snapshot(project) == env.ref_rows
        except AssertionError as exc:
            ok = False
            fails.append(str(exc))
        passed += ok
        if not ok:
            fails.append(f"trial {trial}")
        shutil.rmtree(project, ignore_errors=True)
    return {
        "trials": trials,
        "passed": passed,
        "landed": dict(landed),
        "commit_phase_s": [round(env.first_commit_seconds, 3), round(env.last_commit_seconds, 3)],
        "detail": fails[:5] or "identical to an uninterrupted run",
    }


def kill_other(env: Env, trials: int, rng: random.Random) -> dict[str, Any]:
    """index --rebuild, compress and query, each killed once its first file appears, after a delay drawn over the
    time an uninterrupted run of the same command takes from its first file to its commit (timed once per command),
    so that kills land inside the writing rather than in the interpreter's start-up, whatever that costs. Where each
    kill landed is read off the killed project against its copy's origin: "before any write" (no new file), "while
    writing" (new files but no new manifest entry: the work a commit would have published) or "after the commit"."""
    passed, fails, landed = 0, [], Counter()
    base = env.fresh("other-base")
    shutil.copytree(env.ref, base)
    assert run(["index", str(base), "--v", "64"]).returncode == 0
    img = env.data / "0000.png"
    before = _files_of(base)
    cmds = [
        ["index", "{p}", "--v", "64", "--rebuild"],
        ["compress", "{p}", "--v", "32"],
        ["query", "{p}", "--image", str(img), "--label", "0", "--exact"],
    ]
    windows = {}
    for cmd in cmds:
        project = env.fresh("other-project")  # not "other": that is the other model's folder
        shutil.copytree(base, project)
        windows[cmd[0]] = _write_window([*DMIN, *(a.format(p=project) for a in cmd)], project, before)
    for trial in range(trials):
        cmd = cmds[trial % 3]
        project = env.fresh("other-project")
        shutil.copytree(base, project)
        proc = subprocess.Popen(
            [*DMIN, *(a.format(p=project) for a in cmd)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
        )
        while proc.poll() is None and not _files_of(project) - before:  # its first write, however long start-up took
            time.sleep(0.002)
        time.sleep(rng.uniform(0, windows[cmd[0]]))
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        new = _files_of(project) - before
        where = "after the commit" if _commits(new) else "while writing" if new else "before any write"
        landed[f"{cmd[0]}: {where}"] += 1
        q = run(["query", str(project), "--image", str(img), "--label", "0", "--knn", "--json"])
        ok = verify(project, deep=True).healthy and q.returncode == 0
        passed += ok
        if not ok:
            fails.append(f"{cmd[0]} trial {trial}: {q.stderr.strip()[:200]}")
    return {
        "trials": trials,
        "passed": passed,
        "landed": dict(sorted(landed.items())),
        "kill_window_after_first_write_s": {name: round(w, 3) for name, w in windows.items()},
        "detail": fails[:5] or "index, compress and query survive kill -9",
    }


def _write_window(argv: list[str], project: Path, before: set[str]) -> float:
    """Seconds from the first new file under `project` to the first new manifest entry (the commit; the
    process's exit when none is seen), polled every 2 ms: how long after its first write a kill still interrupts."""
    proc = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    first = commit = None
    while proc.poll() is None and commit is None:
        new = _files_of(project) - before
        if first is None and new:
            first = time.perf_counter()
        if _commits(new):
            commit = time.perf_counter()
        time.sleep(0.002)
    assert proc.wait() == 0, argv
    end = commit if commit is not None else time.perf_counter()
    return end - (first if first is not None else end)


def _commits(new: set[str]) -> bool:
    """Whether new files under a project include a manifest entry (a commit; checkpoints are not one)."""
    return any(path.startswith("manifest/") and not path.startswith("manifest/checkpoints") for path in new)


def _files_of(root: Path) -> set[str]:
    """Every file below a project, relative to it."""
    return {path.relative_to(root).as_posix() for path in root.rglob("*") if path.is_file()}


def shards(env: Env, trials: int, rounds: int = 2) -> dict[str, Any]:
    """4 shard processes racing without flock, `rounds` times over the same data (a second round adds nothing)."""
    passed, fails = 0, []
    for trial in range(trials):
        project = env.fresh(f"shards{trial}")
        assert env.collect(project, "--limit", "1").returncode == 0  # the project exists before the race
        for _round in range(rounds):
            procs = [
                subprocess.Popen(
                    [
                        *DMIN_NO_FLOCK,
                        "collect",
                        str(project),
                        "--model",
                        str(env.model),
                        "--data",
                        str(env.data),
                        *COLLECT,
                        "--shard",
                        f"{i}/4",
                    ],
                    stdout=subprocess.DEVNULL,
                    stderr=subprocess.PIPE,
                    text=True,
                )
                for i in range(4)
            ]
            codes = [p.wait() for p in procs]
            if any(codes):
                fails.append(f"round exit codes {codes}")
        try:
            rows = Project.open(project).read_table("samples", columns=["row_id"])
            dense = rows is not None and sorted(rows.column("row_id").to_pylist()) == list(range(len(rows)))
            # each shard batches its own samples, so rows match the one-process run to float32 rounding
            ok = same_rows(snapshot(project), env.ref_rows, 1e-5) and verify(project, deep=True).healthy and dense
        except AssertionError as exc:
            ok = False
            fails.append(str(exc))
        passed += ok
    return {
        "trials": trials,
        "passed": passed,
        "detail": fails[:5] or "without flock: complete, no duplicates, no lost rows, dense row ids, vectors within "
        "1e-5 of one process",
    }


DRIVER = textwrap.dedent("""
    import sys, time
    sys.path.insert(0, {repo!r})
    from dmin.compact import compact
    from dmin.forget import forget, select
    from dmin.store import Project
    Project.open({root!r}).read_table("samples")  # warm: imports and first reads happen before the clock starts
    print("ready", flush=True)
    sys.stdin.readline()
    print("start", flush=True)
    start = time.perf_counter()
    p = Project.open({root!r})
    if {kind!r} == "forget":
        forget(p, select(p, source={glob!r}))
    else:
        compact(p, orphan_grace=0)
    print(f"done {{time.perf_counter() - start}}", flush=True)
""")


def _drive(kind: str, project: Path, kill_after: float | None) -> tuple[float, str]:
    """Run a forget or compact in a process that has imported dmin and read the project already, so the kill lands
    in the operation itself; kill -9 it `kill_after` seconds after it is told to go (None: let it finish). Returns
    the operation's seconds (as the process measured it; when killed, until the kill) and where the kill landed, as
    the process reported it on stdout: "before" the operation started, "inside" it, "after" it ended (or
    "uninterrupted")."""
    proc = subprocess.Popen(
        [sys.executable, "-c", DRIVER.format(repo=str(REPO), root=str(project), kind=kind, glob=FORGET)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    assert proc.stdin is not None and proc.stdout is not None
    assert proc.stdout.readline() == "ready\n"
    proc.stdin.write("go\n")
    proc.stdin.flush()
    if kill_after is None:
        lines = proc.stdout.read().split()
        proc.wait()
        return float(lines[-1]), "uninterrupted"
    time.sleep(kill_after)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    said = proc.stdout.read()  # what the process had reported before it died stays in the pipe
    return kill_after, "after" if "done" in said else "inside" if "start" in said else "before"


def _op_seconds(kind: str, base: Path, env: Env, runs: int = 3) -> float:
    """The median duration of an uninterrupted operation on copies of base: kill instants are drawn over it."""
    times = []
    for _ in range(runs):
        ref = env.fresh(f"{kind}-timing")
        shutil.copytree(base, ref)
        times.append(_drive(kind, ref, None)[0])
    return float(np.median(times))


def _killed_copy(kind: str, base: Path, env: Env, kill_after: float, states: Counter[str]) -> Path:
    """A fresh copy of base with a `kind` run on it killed after `kill_after` s; counts whether the kill landed."""
    project = env.fresh(f"{kind}-trial")
    shutil.copytree(base, project)
    _, landed = _drive(kind, project, kill_after)
    states[f"kill {landed} the operation"] += 1
    return project


def _lifecycle_base(env: Env) -> tuple[Path, set[str], set[str]]:
    """A copy of the reference project with an index and a query, its live sample_ids, and those FORGET selects."""
    built = env.root / "lifecycle-built"  # made once per Env: the forget and compact kinds start from copies
    if not built.exists():
        shutil.copytree(env.ref, built)
        assert run(["index", str(built), "--v", "64"]).returncode == 0
        query = ["query", str(built), "--image", str(env.data / "0000.png"), "--label", "0", "--exact"]
        assert run(query).returncode == 0
    base = env.fresh("lifecycle-base")
    shutil.copytree(built, base)
    p = Project.open(base)
    samples = p.read_table("samples", columns=["sample_id", "source"])
    assert samples is not None
    pairs = dict(zip(samples.column("source").to_pylist(), samples.column("sample_id").to_pylist(), strict=True))
    return base, set(pairs.values()), {sid for src, sid in pairs.items() if fnmatch.fnmatchcase(src, FORGET)}


def _answers_without(project: Path, env: Env, gone: set[str], image: str = "0003.png", label: str = "3") -> bool:
    """A kNN and an exact query (k above the sample count: every live sample ranks) answer, naming none of `gone`.
    The forget kind asks about a forgotten image (its own best match, were it there); the compact kind about a kept
    one, as a query's own vectors are the query's, and one made from a forgotten image would hold its bytes."""
    for method in ("--knn", "--exact"):
        args = ["query", str(project), "--image", str(env.data / image), "--label", label, "--k", "20", "--json"]
        r = run([*args, method])
        if r.returncode != 0 or gone & {x["sample_id"] for x in json.loads(r.stdout)["results"]}:
            return False
    return True


def kill_forget(env: Env, trials: int, rng: random.Random) -> dict[str, Any]:
    base, everyone, gone = _lifecycle_base(env)
    seconds = _op_seconds("forget", base, env, 3 if trials >= 5 else 1)
    passed, fails, states = 0, [], Counter()
    for trial in range(trials):
        project = _killed_copy("forget", base, env, rng.uniform(0, seconds), states)
        live = Project.open(project).sample_ids()
        state = "new" if live == everyone - gone else "old" if live == everyone else "neither"
        states[state] += 1
        ok = state != "neither" and verify(project, deep=True).healthy
        ok &= _answers_without(project, env, gone if state == "new" else set())
        r = run(["forget", str(project), "--source", FORGET, "--yes", "--json"])
        ok &= r.returncode == 0 and Project.open(project).sample_ids() == everyone - gone
        ok &= verify(project, deep=True).healthy
        passed += ok
        if not ok:
            fails.append(f"trial {trial} ({state} state): {r.stderr.strip()[:200]}")
    return {
        "trials": trials,
        "passed": passed,
        "detail": fails[:5]
        or f"after the kill: {dict(states)} (uninterrupted forget {seconds:.2f} s); rerun completes",
    }


def _holders(project: Path, text: list[str], binary: list[bytes]) -> list[str]:
    """Files under project holding any needle: text raw or in a decoded Parquet string (pages may be compressed),
    binary (vector bytes, stored uncompressed) raw."""
    out = []
    for path in sorted(f for f in project.rglob("*") if f.is_file()):
        raw = path.read_bytes()
        strings: list[str] = []
        if path.suffix == ".parquet":
            strings = [s for c in pq.read_table(path).columns if pa.types.is_string(c.type) for s in c.to_pylist() if s]
        if any(n.encode() in raw or any(n in s for s in strings) for n in text) or any(n in raw for n in binary):
            out.append(path.relative_to(project).as_posix())
    return out


def kill_compact(env: Env, trials: int, rng: random.Random) -> dict[str, Any]:
    base, everyone, gone = _lifecycle_base(env)
    assert run(["forget", str(base), "--source", FORGET, "--yes"]).returncode == 0
    p = Project.open(base)
    sources = ["0003.png", "0005.png"]
    vectors = []
    for v in ("64", "16"):
        t = p.read_table("grads", v, live=False)
        assert t is not None
        vec = t.column("vec").combine_chunks().values.to_numpy().reshape(len(t), -1)
        vectors += [vec[i].tobytes() for i, s in enumerate(t.column("sample_id").to_pylist()) if s in gone]
    assert _holders(base, sources, []) and _holders(base, [], vectors)  # findable before compacting
    ref = env.fresh("compact-ref")
    shutil.copytree(base, ref)
    _drive("compact", ref, None)
    seconds = _op_seconds("compact", base, env, 3 if trials >= 5 else 1)
    passed, fails, states = 0, [], Counter()
    for trial in range(trials):
        project = _killed_copy("compact", base, env, rng.uniform(0, seconds), states)
        p = Project.open(project)
        state = "new" if any(e.kind == "compact" for e in p.entries()) else "old"
        states[state] += 1
        ok = p.sample_ids() == everyone - gone and verify(project, deep=True).healthy
        ok &= _answers_without(project, env, gone, "0000.png", "0")
        r = run(["compact", str(project), "--orphan-grace", "0", "--json"])
        left = _holders(project, sources, vectors)
        ok &= r.returncode == 0 and not left and verify(project, deep=True).healthy
        ok &= snapshot(project) == snapshot(ref)
        passed += ok
        if not ok:
            fails.append(f"trial {trial} ({state} state): {left[:3]} {r.stderr.strip()[:200]}")
    return {
        "trials": trials,
        "passed": passed,
        "detail": fails[:5]
        or f"kills: {dict(states)} (median uninterrupted compact {seconds:.3f} s); forgotten samples absent in "
        f"old and new state; a rerun leaves no file holding their source or vector bytes",
    }


def _damage(path: Path, how: str, donor: Path | None, rng: random.Random) -> None:
    if how == "truncate":
        data = path.read_bytes()
        path.write_bytes(data[: max(0, len(data) // 2)])
    elif how == "flip":
        data = bytearray(path.read_bytes())
        for _ in range(3):
            i = rng.randrange(len(data))
            data[i] ^= 0xFF
        path.write_bytes(bytes(data))
    elif how == "delete":
        path.unlink()
    elif how == "swap" and donor is not None:
        shutil.copyfile(donor, path)


HOWS = ("truncate", "flip", "delete", "swap")


def corruption(env: Env, rng: random.Random, only: set[tuple[str, str]] | None = None) -> dict[str, Any]:
    """Every (file kind, damage) pair, or just those in `only`."""
    base = env.fresh("corrupt-base")
    shutil.copytree(env.ref, base)
    img = env.data / "0001.png"
    assert run(["index", str(base), "--v", "64"]).returncode == 0
    assert run(["query", str(base), "--image", str(img), "--label", "1", "--exact"]).returncode == 0
    donor = env.fresh("donor")  # another project: a different model, same layout of files (for swaps)
    if only is None or any(how == "swap" for _, how in only):
        r = run(["collect", str(donor), "--model", str(env.other_model), "--data", str(env.data), *COLLECT])
        assert r.returncode == 0, r.stderr
        assert run(["index", str(donor), "--v", "64"]).returncode == 0
        assert run(["query", str(donor), "--image", str(img), "--exact"]).returncode == 0

    def files(p: Path) -> dict[str, Path]:
        proj = Project.open(p)
        pick = {}
        for kind, table in (
            ("grads", "grads"),
            ("samples", "samples"),
            ("queries", "queries"),
            ("results", "results"),
            ("index binary", "index"),
            ("index labels", "index_labels"),
            ("index metadata", "index_meta"),
        ):
            refs = proj.live_files(table)
            if refs:
                pick[kind] = p / refs[0].path
        pick["manifest"] = p / "manifest" / proj.manifest_names()[0]
        pick["dmin.json"] = p / "dmin.json"
        return pick

    def answer(p: Path, *extra: str) -> subprocess.CompletedProcess[str]:
        return run(["query", str(p), "--image", str(img), "--label", "1", "--k", "3", "--json", *extra])

    def results(r: subprocess.CompletedProcess[str]) -> list[Any]:
        return [(x["sample_id"], round(x["score"], 5), x.get("label")) for x in json.loads(r.stdout)["results"]]

    want = {m: results(answer(base, m)) for m in ("--knn", "--exact")}
    trials = passed = 0
    detail: dict[str, str] = {}
    for kind in files(base):
        for how in HOWS:
            if only is not None and (kind, how) not in only:
                continue
            project = env.fresh("corrupt")
            shutil.copytree(base, project)
            target = files(project)[kind]
            rel = target.relative_to(project).as_posix()
            donor_file = files(donor).get(kind) if donor.exists() else None
            if how == "swap" and (donor_file is None or donor_file.read_bytes() == target.read_bytes()):
                detail[f"{kind}/{how}"] = "no-op: the other project's file is byte-identical (same data)"
                continue
            _damage(target, how, donor_file, rng)
            trials += 1
            quick = verify(project)
            deep = verify(project, deep=True)
            named = any(rel in f.file or f.file == "dmin.json" for f in deep.findings if f.severity == "defect")
            caught = "quick" if not quick.healthy else "deep" if not deep.healthy else "missed"
            cli = run(["verify", str(project), "--deep"])
            # a query either refuses with one clear line or answers exactly as before the damage
            safe = True
            for m in ("--knn", "--exact"):
                q = answer(project, m)
                safe &= (q.returncode == 0 and results(q) == want[m]) or one_line_error(q)
            ok = caught != "missed" and named and cli.returncode == 1 and safe
            passed += ok
            detail[f"{kind}/{how}"] = (
                f"caught by {caught} verify"
                if ok
                else f"FAILED ({caught}, named={named}, cli={cli.returncode}, query safe={safe})"
            )
    return {"trials": trials, "passed": passed, "detail": detail}


def hostile_input(env: Env) -> dict[str, Any]:
    root = env.fresh("hostile")
    root.mkdir()
    cases: dict[str, tuple[list[str], tuple[int, ...], str]] = {}
    bad = tiny.digits_folder(root / "bad", count=3)
    (bad / "0000.png").write_bytes(b"")
    (bad / "0001.png").write_bytes(b"\x89PNG garbage")
    from PIL import Image

    Image.new("CMYK", (16, 16)).save(bad / "0002.jpg")
    Image.new("L", (20000, 20000)).save(bad / "huge.png")
    os.symlink("/etc/hostname", bad / "link.png")
    with open(bad / "metadata.jsonl", "a") as f:
        for name in ("0002.jpg", "huge.png", "../outside.png", "/etc/passwd", "link.png"):
            f.write(json.dumps({"file_name": name, "label": 1}) + "\n")
    project = root / "p"
    r = run(["collect", str(project), "--model", str(env.model), "--data", str(bad), *COLLECT, "--json"])
    ok_broken = r.returncode == 0 and json.loads(r.stdout)["failed"] == 6 and json.loads(r.stdout)["done"] == 2
    malformed = root / "malformed"
    malformed.mkdir()
    (malformed / "metadata.jsonl").write_text('{"file_name": "a.png"\n')
    missing = root / "missing"
    missing.mkdir()
    pickled = root / "pickled"
    (pickled / "unet").mkdir(parents=True)
    (pickled / "model_index.json").write_text(json.dumps({"_class_name": "DDPMPipeline"}))
    (pickled / "unet" / "diffusion_pytorch_model.bin").write_bytes(b"x")
    remote = root / "remote"
    shutil.copytree(env.model, remote)
    (remote / "model_index.json").write_text(json.dumps({"_class_name": "EvilPipeline", "unet": ["evil", "Evil"]}))
    nan = root / "nan"
    shutil.copytree(env.model, nan)
    from safetensors.torch import load_file, save_file

    wfile = nan / "unet" / "diffusion_pytorch_model.safetensors"
    state = load_file(str(wfile))
    state = {k: v * float("nan") if k.endswith("conv_out.weight") else v for k, v in state.items()}
    save_file(state, str(wfile))
    newer = env.fresh("newer")
    shutil.copytree(env.ref, newer)
    ident = json.loads((newer / "dmin.json").read_text())
    ident["schema_version"] = 99
    (newer / "dmin.json").write_text(json.dumps(ident))
    keep = env.fresh("keep")
    shutil.copytree(env.ref, keep)
    cases = {
        "malformed metadata": (
            ["collect", str(root / "x"), "--model", str(env.model), "--data", str(malformed)],
            (1,),
            "malformed JSON",
        ),
        "missing metadata": (
            ["collect", str(root / "x"), "--model", str(env.model), "--data", str(missing)],
            (1,),
            "no metadata.jsonl",
        ),
        "pickle-only weights": (
            ["collect", str(root / "x"), "--model", str(pickled), "--data", str(env.data)],
            (1,),
            "safetensors only",
        ),
        "remote-code pipeline": (
            ["collect", str(root / "x"), "--model", str(remote), "--data", str(env.data)],
            (1,),
            "not supported",
        ),
        "identity mismatch": (
            ["collect", str(keep), "--model", str(env.other_model), "--data", str(env.data), *COLLECT],
            (1,),
            "different setup",
        ),
        "newer schema": (["verify", str(newer)], (1,), "newer"),
        "bad usage": (["query", str(keep), "--exact", "--knn", "--image", "x.png"], (2,), "just one"),
    }
    trials, passed, detail = (
        1,
        int(ok_broken),
        {
            "broken images/escaping paths": "6 failures rows; the 2 readable images (one CMYK, converted) done"
            if ok_broken
            else f"FAILED: {r.stdout[-300:]} {r.stderr[-300:]}"
        },
    )
    for name, (args, codes, text) in cases.items():
        before = snapshot(keep)
        res = run(args)
        out = res.stderr + res.stdout
        ok = res.returncode in codes and text in out and "Traceback" not in out and snapshot(keep) == before
        trials += 1
        passed += ok
        detail[name] = "one clear line" if ok else f"FAILED rc={res.returncode}: {out.strip()[:200]}"
    r = run(["collect", str(root / "nanp"), "--model", str(nan), "--data", str(env.data), *COLLECT, "--json"])
    lines = r.stderr.strip().splitlines()
    ok = (  # nothing collected and everything failed: exit 1 with the count, and no half-made project left behind
        r.returncode == 1
        and len(lines) == 1
        and "none of the 12 sample(s) could be collected" in lines[0]
        and not Project.exists(root / "nanp")
    )
    trials += 1
    passed += ok
    detail["NaN weights"] = "exit 1 naming the 12 failures, no project left" if ok else f"FAILED {r.stderr[-200:]}"
    return {"trials": trials, "passed": passed, "detail": detail}


def _limit_fsize(limit: int) -> None:
    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
    resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))


def disk_full(env: Env) -> dict[str, Any]:
    trials = passed = 0
    detail = {}
    # collect goes into its own project with v=512: its grads files (~5 KB) outgrow the samples file (~2 KB), so
    # 500 B fails in the samples writer (Arrow), 2,000 B in the vector writer (dmin's own), larger limits complete.
    collect = ["collect", "--model", str(env.model), "--data", str(env.data), *COLLECT, "--v", "512"]
    for limit in (500, 2_000, 40_000, 200_000):
        project = env.fresh("full")
        for name, args in (
            ("collect", [*collect, str(project)]),
            ("compress", ["compress", str(project), "--v", "32"]),
            ("index", ["index", str(project), "--v", "64"]),
        ):
            shutil.rmtree(project, ignore_errors=True)
            if name == "collect":  # one sample committed unhindered first: it must survive the failed rest
                run([*collect, str(project), "--limit", "1"]).check_returncode()
            else:
                shutil.copytree(env.ref, project)
            before = snapshot(project)
            r = subprocess.run(
                [*DMIN, *args], capture_output=True, text=True, preexec_fn=lambda lim=limit: _limit_fsize(lim)
            )  # type: ignore[misc]
            trials += 1
            ok = verify(project, deep=True).healthy and (r.returncode == 0 or one_line_error(r))
            after = snapshot(project)
            ok &= all(after.get(k) == v for k, v in before.items())
            passed += ok
            detail[f"{name}@{limit}B"] = (
                (r.stderr.strip()[:100] or "completed") if ok else f"FAILED rc={r.returncode}: {r.stderr.strip()[:200]}"
            )
    return {"trials": trials, "passed": passed, "detail": detail}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--trials", type=int, default=50, help="kill trials for collect (others scale down)")
    ap.add_argument("--only", nargs="*", help="run only these fault kinds")
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    rng = random.Random(0)
    np.random.seed(0)
    out: dict[str, Any] = {}
    with tempfile.TemporaryDirectory() as tmp:
        env = Env(Path(tmp))
        kinds = {
            "kill_collect": lambda: kill_collect(env, args.trials, rng),
            "kill_other": lambda: kill_other(env, max(3, args.trials // 5), rng),
            "shards": lambda: shards(env, max(1, args.trials // 25)),
            "forget": lambda: kill_forget(env, max(1, args.trials // 2), rng),
            "compact": lambda: kill_compact(env, max(1, args.trials // 2), rng),
            "corruption": lambda: corruption(env, rng),
            "hostile_input": lambda: hostile_input(env),
            "disk_full": lambda: disk_full(env),
        }
        for name, fn in kinds.items():
            if args.only and name not in args.only:
                continue
            t = time.perf_counter()
            try:
                out[name] = fn()
            except Exception as exc:  # a harness failure is a failed line, never a lost run
                out[name] = {"trials": 1, "passed": 0, "detail": f"harness error: {type(exc).__name__}: {exc}"}
            out[name]["seconds"] = round(time.perf_counter() - t, 1)
            print(f"{name}: {out[name]['passed']}/{out[name]['trials']} {json.dumps(out[name])}", file=sys.stderr)
    print(json.dumps(out))


if __name__ == "__main__":
    main()
