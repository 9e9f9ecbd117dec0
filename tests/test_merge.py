"""`dmin merge`: shards collected into projects of their own (one per machine, local disks) adopted into one equal
a one-project run, with no duplicate, nothing lost, opt-outs carried over, and a second merge adopting nothing."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from dmin.collect import collect
from dmin.derive import derive_v
from dmin.errors import IdentityMismatch, UsageError
from dmin.forget import forget, select
from dmin.gradients import prepare
from dmin.merge import merge
from dmin.query import QuerySpec, open_for_query, run_query
from dmin.store import Project
from dmin.verify import verify
from tests import tiny

DMIN = [sys.executable, "-m", "dmin_cli"]


@pytest.fixture(scope="module")
def shards(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("merge")
    model = tiny.ddpm(root / "model")
    tiny.digits_folder(root / "data", count=10)
    setup = prepare(model, timesteps=2, vs=["256", "64"])
    for i in range(2):
        assert collect(root / f"shard-{i}", setup, root / "data", shard_arg=f"{i}/2", commit_every=2).done == 5
    assert collect(root / "one", setup, root / "data").done == 10
    return root


def rows(p: Project, v: str) -> dict[tuple[str, int], np.ndarray]:
    t = p.read_table("grads", v)
    assert t is not None
    vec = t.column("vec").combine_chunks().values.to_numpy().reshape(len(t), -1)
    keys = zip(t.column("sample_id").to_pylist(), t.column("t_idx").to_pylist(), strict=True)
    return {k: vec[i] for i, k in enumerate(keys)}


def test_merged_shards_equal_a_one_project_run(shards: Path, tmp_path: Path) -> None:
    qsetup = open_for_query(shards / "shard-1")[1]
    shard1 = Project.open(shards / "shard-1")
    run_query(shard1, qsetup, QuerySpec(image=shards / "data" / "0003.png", label=3), k=3, method="exact")
    gone = forget(shard1, select(shard1, source="0005.png"))  # an opt-out that reached one node
    assert gone is not None
    r = subprocess.run([*DMIN, "merge", str(tmp_path / "all"), str(shards / "shard-0"), str(shards / "shard-1"),
                        "--json"], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    report = json.loads(r.stdout)
    assert (report["samples"], report["queries"], report["forgotten"]) == (9, 1, 1)
    merged, one = Project.open(tmp_path / "all"), Project.open(shards / "one")
    assert merged.sample_ids() == one.sample_ids() - {s["sample_id"] for s in select(one, source="0005.png").samples}
    for v in ("256", "64"):
        got, want = rows(merged, v), rows(one, v)
        assert len(got) == 2 * 9 and set(got) <= set(want)  # K rows of each live sample, once
        for key, vec in got.items():
            np.testing.assert_allclose(vec, want[key], rtol=1e-5, atol=1e-6)  # shards batch differently
    ids = merged.read_table("samples", columns=["row_id"]).column("row_id").to_pylist()
    assert sorted(ids) == list(range(9))  # dense row ids, no duplicate
    assert merged.forgotten() == {s["sample_id"] for s in select(one, source="0005.png").samples}
    assert merged.read_table("results") is not None and len(merged.read_table("results")) == 3
    report_v = verify(merged.root, deep=True)
    assert report_v.healthy, report_v.findings
    again = merge(tmp_path / "all", [shards / "shard-0", shards / "shard-1"])  # idempotent
    assert again.seq is None and merged.state().seq == Project.open(tmp_path / "all").state().seq
    assert merge(tmp_path / "all", [shards / "one"]).samples == 0  # overlapping: all held or forgotten already


def test_merge_refuses_other_settings_and_itself(shards: Path, tmp_path: Path) -> None:
    other = prepare(tiny.ddpm(tmp_path / "m2"), timesteps=3, vs=["256", "64"])
    assert collect(tmp_path / "other", other, shards / "data", limit=1).done == 1
    with pytest.raises(IdentityMismatch, match="timesteps"):
        merge(tmp_path / "x", [shards / "shard-0", tmp_path / "other"])
    with pytest.raises(UsageError, match="also a source"):
        merge(shards / "shard-0", [shards / "shard-0"])
    narrow = prepare(shards / "model", timesteps=2, vs=["256"])
    assert collect(tmp_path / "dest", narrow, shards / "data", limit=1).done == 1
    derive_v(Project.open(tmp_path / "dest"), 64)  # dest stores a v the source does not
    assert collect(tmp_path / "src", narrow, shards / "data", limit=2).done == 2
    with pytest.raises(UsageError, match="stores no v=64"):
        merge(tmp_path / "dest", [tmp_path / "src"])
