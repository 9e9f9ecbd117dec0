"""The preconditioner: (ΦᵀΦ + λ·μ·I)⁻¹ per timestep, kept equal to the live samples' sum through collect, forget
and compact, and scored through by `query --precondition`."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from dmin.compact import compact
from dmin.errors import IndexStale, UsageError
from dmin.forget import Selection, forget
from dmin.info import project_info
from dmin.precondition import build_preconditioner, current, stale_count
from dmin.query import QuerySpec, attribute
from dmin.store import Project
from dmin.store.vectors import iter_blocks
from dmin.verify import verify
from dmin_cli.app import app
from tests.conftest import add_samples, make_identity

V = "16"


def live_vectors(p: Project) -> dict[str, np.ndarray]:
    out = {}
    for block in iter_blocks(p, V):
        for i in block.live_rows():
            out[block.keys[int(i)].as_py()] = np.asarray(block.vecs[i], np.float64)
    return out


def direct_gram(p: Project) -> np.ndarray:
    x = np.stack(list(live_vectors(p).values()))  # (N, K, v)
    return np.einsum("nki,nkj->kij", x, x)


def stored_gram(p: Project) -> np.ndarray:
    pre = current(p, V)
    assert pre is not None
    return np.load(p.root / pre.files["precondition_gram"].path)


@pytest.fixture
def project(tmp_path: Path) -> Project:
    p = Project.create(tmp_path / "proj", make_identity(collect_vs=(V,)))
    add_samples(p, 0, 30, v=V)
    add_samples(p, 30, 20, v=V)
    return p


def test_the_inverse_is_the_damped_gram_of_the_stored_vectors(project: Project) -> None:
    entry, info = build_preconditioner(project, V, lam=0.5)
    assert entry is not None and info["count"] == 50 and info["added"] == 50
    gram = direct_gram(project)
    np.testing.assert_allclose(stored_gram(project), gram, rtol=1e-9, atol=1e-9)
    pre = current(project, V)
    assert pre is not None
    inverse = np.load(project.root / pre.files["precondition"].path)
    for k in range(project.identity.K):
        mu = np.trace(gram[k]) / int(V)
        want = np.linalg.inv(gram[k] + 0.5 * mu * np.eye(int(V)))
        np.testing.assert_allclose(inverse[k], want, rtol=1e-4, atol=1e-6 * np.abs(want).max())
    assert build_preconditioner(project, V)[0] is None  # current: nothing to do, λ kept from the build


def test_a_preconditioned_query_scores_the_multiplied_query(project: Project) -> None:
    build_preconditioner(project, V, lam=0.1)
    pre = current(project, V)
    assert pre is not None
    K = project.identity.K
    q = np.random.default_rng(9).standard_normal((K, int(V))).astype(np.float32)
    spec = QuerySpec(seed=0, query_id="q1")
    res = attribute(project, "q1", spec, {V: q}, np.ones(K), np.zeros(K), k=5, v=V, method="exact", precondition=True)
    assert res.method == "exact+pre" and len(res.results) == 5
    inverse = np.load(project.root / pre.files["precondition"].path).astype(np.float64)
    pq_ = np.einsum("kij,kj->ki", inverse, q.astype(np.float64))
    vecs = live_vectors(project)
    want = sorted(((float(np.sum(pq_ * x)), sid) for sid, x in vecs.items()), reverse=True)[:5]
    assert [r["sample_id"] for r in res.results] == [sid for _, sid in want]
    np.testing.assert_allclose([r["score"] for r in res.results], [s for s, _ in want], rtol=1e-4)
    plain = attribute(project, "q1", spec, {V: q}, np.ones(K), np.zeros(K), k=5, v=V, method="exact")
    assert plain.method == "exact" and [r["score"] for r in plain.results] != [r["score"] for r in res.results]


def test_collect_and_forget_update_the_sum_and_compact_erases_what_was_forgotten(project: Project) -> None:
    build_preconditioner(project, V)
    add_samples(project, 50, 10, v=V, seed=4)
    pre = current(project, V)
    assert pre is not None and stale_count(project, pre) == 10
    assert project_info(project.root).preconditioners[0].state == "stale"
    with pytest.raises(IndexStale, match="dmin precondition"):
        attribute(project, "q", QuerySpec(seed=0), {V: np.ones((2, 16), np.float32)}, np.ones(2), np.zeros(2),
                  v=V, precondition=True)
    _, info = build_preconditioner(project, V)
    assert (info["added"], info["removed"], info["count"]) == (10, 0, 60)
    np.testing.assert_allclose(stored_gram(project), direct_gram(project), rtol=1e-9, atol=1e-9)

    gone = ["id00003", "id00041", "id00055"]
    forget(project, Selection([{"sample_id": s, "source": None, "caption": None} for s in gone]))
    _, info = build_preconditioner(project, V)
    assert (info["added"], info["removed"], info["count"]) == (0, 3, 57)
    np.testing.assert_allclose(stored_gram(project), direct_gram(project), rtol=1e-9, atol=1e-9)

    forget(project, Selection([{"sample_id": "id00007", "source": None, "caption": None}]))
    report = compact(project, orphan_grace=0)  # the preconditioner is stale: compact takes the sample out itself
    assert report.preconditioners_updated == [V]
    pre = current(project, V)
    assert pre is not None and stale_count(project, pre) == 0 and len(pre.held) == 56
    np.testing.assert_allclose(stored_gram(project), direct_gram(project), rtol=1e-9, atol=1e-9)
    for path in (project.root / "precondition").rglob("*.parquet"):  # no forgotten id left in any file
        assert not any(s.encode() in path.read_bytes() for s in [*gone, "id00007"])
    assert verify(project.root, deep=True).healthy


def test_refusals_name_the_fix(project: Project) -> None:
    with pytest.raises(UsageError, match="v=full's Gram"):
        build_preconditioner(project, "full")
    with pytest.raises(UsageError, match="--lambda"):
        build_preconditioner(project, V, lam=-1.0)
    with pytest.raises(UsageError, match="dmin precondition"):
        attribute(project, "q", QuerySpec(seed=0), {V: np.ones((2, 16), np.float32)}, np.ones(2), np.zeros(2),
                  v=V, precondition=True)
    big = Project.create(project.root.parent / "big", make_identity(collect_vs=("8192",)))
    with pytest.raises(UsageError, match="v ≤ 4096"):
        build_preconditioner(big, "8192")


def test_the_cli_builds_reports_and_verifies(project: Project) -> None:
    runner = CliRunner()
    out = runner.invoke(app, ["precondition", str(project.root), "--v", V, "--lambda", "0.2", "--json"])
    assert out.exit_code == 0, out.output
    got = json.loads(out.stdout)
    assert got == {"added": 50, "removed": 0, "count": 50, "lambda": 0.2, "changed": True}
    info = json.loads(runner.invoke(app, ["info", str(project.root), "--json"]).stdout)
    (pre,) = info["preconditioners"]
    assert (pre["v"], pre["state"], pre["samples"], pre["lambda"]) == (V, "fresh", 50, 0.2)
    gram = project.root / current(project, V).files["precondition_gram"].path  # type: ignore[union-attr]
    gram.write_bytes(gram.read_bytes()[:-8] + b"\0" * 8)
    out = runner.invoke(app, ["verify", str(project.root), "--deep"])
    assert out.exit_code == 1 and "gram.npy" in out.output


@pytest.mark.slow
def test_the_counterfactual_eval_runs(tmp_path: Path) -> None:
    """scripts/eval_counterfactual.py --quick: retrains reproduce the original bit for bit when nothing is removed,
    every method ranks every training item, and each retrain's result is recorded (resumable)."""
    import subprocess
    import sys

    script = Path(__file__).resolve().parents[1] / "scripts" / "eval_counterfactual.py"
    cmd = [sys.executable, str(script), "--quick", "--json", "--work", str(tmp_path)]
    r = subprocess.run(cmd, capture_output=True, text=True)
    assert r.returncode == 0, r.stderr[-3000:]
    out = json.loads(r.stdout)
    methods = {"random", "pixel", "dmin", "dmin_no_norm", "dmin_pre_0.1"}
    for setting in ("base", "lora"):
        res = out[setting]
        assert res["control_bitwise_equal"] is True
        ((_, table),) = res["by_k"].items()
        assert set(table) == methods
        for m in methods:
            assert table[m]["targets"] == 2 and np.isfinite(table[m]["loss_rise_mean"]), m
        ranks = json.loads((tmp_path / setting / "rankings.json").read_text())
        for target in ranks["targets"]:
            for order in target["order"].values():
                assert sorted(order) == list(range(res["train_items"]))
        lines = (tmp_path / setting / "results.jsonl").read_text().splitlines()
        assert len(lines) == 2 * len(methods)
    again = subprocess.run(cmd, capture_output=True, text=True)  # resumed: nothing retrained, same summary
    assert again.returncode == 0 and json.loads(again.stdout)["base"]["by_k"] == out["base"]["by_k"]
    assert len((tmp_path / "base" / "results.jsonl").read_text().splitlines()) == 2 * len(methods)
