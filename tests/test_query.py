"""`index` and `query`: exact vs numpy, kNN recall on clustered data, staleness, incremental builds, sheets."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from dmin import index_check
from dmin.compact import compact
from dmin.errors import IndexStale, IntegrityError, UsageError
from dmin.forget import forget, select
from dmin.index import IndexParams, build_index, current_index, knn, stored_queries
from dmin.index_check import exact_scores_many
from dmin.score import exact_scores
from dmin.store import Project
from dmin.store.tables import SampleBatch
from dmin.verify import verify
from tests import tiny
from tests.conftest import add_samples, make_identity

DMIN = [sys.executable, "-m", "dmin_cli"]


def clustered_project(
    root: Path, n: int = 1500, v: int = 1024, K: int = 2, clusters: int = 30
) -> tuple[Project, np.ndarray]:
    rng = np.random.default_rng(0)
    centers = rng.standard_normal((clusters, K, v))
    p = Project.create(root, make_identity(collect_vs=(str(v),), timesteps=tuple(float(t) for t in range(K))))
    vecs = centers[rng.integers(0, clusters, n)] + 0.6 * rng.standard_normal((n, K, v))
    vecs /= np.linalg.norm(vecs, axis=2, keepdims=True)
    for lo in range(0, n, 500):
        hi = min(n, lo + 500)
        p.commit_samples(
            SampleBatch(
                [f"s{i:05d}" for i in range(lo, hi)],
                [f"{i}.png" for i in range(lo, hi)],
                [None] * (hi - lo),
                [i % 10 for i in range(lo, hi)],
                {},
                p.identity.timesteps,
                {str(v): vecs[lo:hi].astype(np.float32)},
                np.ones((hi - lo, K)),
                np.ones((hi - lo, K)),
            )
        )
    queries = centers[rng.integers(0, clusters, 20)] + 0.6 * rng.standard_normal((20, K, v))
    return p, (queries / np.linalg.norm(queries, axis=2, keepdims=True)).astype(np.float32)


@pytest.fixture(scope="module")
def clustered(tmp_path_factory: pytest.TempPathFactory) -> tuple[Project, np.ndarray]:
    p, q = clustered_project(tmp_path_factory.mktemp("c") / "proj")
    build_index(p, "1024", IndexParams())
    return p, q


def test_knn_recall_against_exact_on_clustered_data(clustered: tuple[Project, np.ndarray]) -> None:
    p, queries = clustered
    idx = current_index(p, "1024")
    assert idx is not None and idx.meta["graph_v"] == 256  # graph over v=256 folds, exact re-rank at 1024
    recall = []
    for q in queries:
        ex = exact_scores(p, "1024", q)
        want = [ex.ids[i] for i in ex.top(10)]
        got, totals, per_t = knn(p, idx, q, 10)
        recall.append(len(set(want) & set(got)) / 10)
        # kNN scores are true inner products at v, equal to exact ones for the same samples
        pos = {s: i for i, s in enumerate(ex.ids)}
        np.testing.assert_allclose(totals, [ex.total[pos[s]] for s in got], rtol=1e-4, atol=1e-5)
        np.testing.assert_allclose(per_t.sum(1), totals, rtol=1e-6)
    assert float(np.mean(recall)) >= 0.95


def test_exact_scores_equal_numpy(clustered: tuple[Project, np.ndarray]) -> None:
    p, queries = clustered
    t = p.read_table("grads", "1024")
    assert t is not None
    vec = t.column("vec").combine_chunks().values.to_numpy().reshape(-1, 2, 1024).astype(np.float64)
    ex = exact_scores(p, "1024", queries[0])
    np.testing.assert_allclose(
        ex.per_t, np.einsum("nkd,kd->nk", vec, queries[0].astype(np.float64)), rtol=1e-4, atol=1e-5
    )


@pytest.mark.parametrize("dtype", ["float32", "float16"])
def test_exact_totals_and_per_timestep_terms_of_any_rows_with_forgotten_samples(tmp_path: Path, dtype: str) -> None:
    """A scan writes one total per sample; the per-timestep terms of the rows asked for (a query's top-k) are read
    again, from whichever file and row holds them, skipping forgotten samples, for float32 and float16 storage."""
    from dmin.forget import forget, select

    p = Project.create(tmp_path / "p", make_identity(dtype=dtype))
    for start in (0, 30, 70):  # three files
        add_samples(p, start, 30 if start < 70 else 5, seed=start)
    for source in ("img4.png", "img31.png", "img72.png"):  # one in each file
        forget(p, select(p, source=source))
    t = p.read_table("grads", "256")
    assert t is not None
    ids = t.column("sample_id").to_pylist()[::2]
    vec = t.column("vec").combine_chunks().values.to_numpy().reshape(-1, 2, 256).astype(np.float64)
    q = np.random.default_rng(9).standard_normal((2, 256)).astype(np.float32)
    want = dict(zip(ids, np.einsum("nkd,kd->nk", vec, q.astype(np.float64)), strict=True))
    ex = exact_scores(p, "256", q)
    assert set(ex.ids) == set(ids) and len(ex.ids) == 62 and not {"id00004", "id00031", "id00072"} & set(ex.ids)
    np.testing.assert_allclose(ex.total, [want[s].sum() for s in ex.ids], rtol=1e-5, atol=1e-4)
    pick = np.array([61, 0, 29, 30, 57, 27])  # every file, out of order
    np.testing.assert_allclose(ex.per_t_at(pick), [want[ex.ids[i]] for i in pick], rtol=1e-5, atol=1e-4)
    assert [ex.ids[i] for i in ex.top(3)] == sorted(want, key=lambda s: -want[s].sum())[:3]


def test_stale_index_incremental_equals_rebuilt(tmp_path: Path) -> None:
    p, queries = clustered_project(tmp_path / "a", n=1000)
    build_index(p, "1024", IndexParams())
    extra, _ = clustered_project(tmp_path / "b", n=1200)  # same generator: its last 200 are new samples
    t = extra.read_table("grads", "1024")
    assert t is not None
    ids = t.column("sample_id").to_pylist()[::2][1000:]
    vec = t.column("vec").combine_chunks().values.to_numpy().reshape(-1, 2, 1024)[1000:]
    p.commit_samples(
        SampleBatch(
            ids,
            ids,
            [None] * 200,
            [0] * 200,
            {},
            p.identity.timesteps,
            {"1024": vec},
            np.ones((200, 2)),
            np.ones((200, 2)),
        )
    )
    idx = current_index(p, "1024")
    assert idx is not None
    with pytest.raises(IndexStale, match="misses 200"):
        knn(p, idx, queries[0], 10)
    assert knn(p, idx, queries[0], 10, allow_stale=True)[0]
    assert any(f.check == "index" and "stale" in f.message for f in verify(p.root).findings)
    entry, info = build_index(p, "1024", IndexParams())
    assert entry is not None and info["added"] == 200 and info["count"] == 1200
    inc = current_index(p, "1024")
    assert build_index(p, "1024", IndexParams())[0] is None  # nothing new: nothing done
    build_index(p, "1024", IndexParams(), rebuild=True)
    full = current_index(p, "1024")
    assert inc is not None and full is not None
    assert sorted(inc.labels.tolist()) == sorted(full.labels.tolist())
    for q in queries[:10]:
        assert knn(p, inc, q, 5)[0] == knn(p, full, q, 5)[0]
    report = verify(p.root, deep=True)
    assert report.healthy and report.checked["index_self_test"] == 1  # the graph answered the self-test


def _self_test_exact(p: Project) -> tuple[list[list[str]], list[list[str]]]:
    """The self-test's stored answers of the current v=1024 build, and the same found by a scan of the vectors."""
    idx = current_index(p, "1024")
    assert idx is not None
    stored = idx.meta["self_test"]
    ids, vecs = stored_queries(p, idx, stored["queries"])
    held = np.zeros(p.next_row_id(), bool)
    held[idx.labels] = True
    scanned = exact_scores_many(p, "1024", vecs, held, k=stored["depth"])
    by_id = dict(zip(stored["queries"], stored["exact"], strict=True))
    return [by_id[i] for i in ids], scanned


def test_builds_keep_the_self_tests_exact_answers_so_deep_verify_scans_nothing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    p, _ = clustered_project(tmp_path / "a", n=1000)
    build_index(p, "1024", IndexParams())
    stored, scanned = _self_test_exact(p)
    assert len(stored) == 20 and stored == scanned  # a fresh build: its first 20 rows' exact top-40
    extra = clustered_project(tmp_path / "b", n=1300)[0]  # 300 more samples, committed as an incremental build adds
    t = extra.read_table("grads", v="1024", columns=["sample_id", "vec"])
    assert t is not None
    vecs = t.column("vec").combine_chunks().values.to_numpy().reshape(-1, 2, 1024)[1000:]
    ids = [f"s{i:05d}" for i in range(1000, 1300)]
    p.commit_samples(
        SampleBatch(ids, ids, [None] * 300, [0] * 300, {}, p.identity.timesteps, {"1024": vecs},
                    np.ones((300, 2)), np.ones((300, 2)))
    )
    assert build_index(p, "1024", IndexParams())[1]["added"] == 300
    stored_after, scanned = _self_test_exact(p)
    assert stored_after == scanned and stored_after != stored  # the new rows ranked into the carried answers
    # forget 5 of the first query's answers and compact (the graph erases them): the stored lists, less those,
    # are still the exact top-10, so deep verify's self-test needs no scan
    assert stored_after[0][0] == "s00000"  # each query's best answer is itself: forget the next five
    gone = ", ".join(f"'{s}'" for s in stored_after[0][1:6])
    forget(p, select(p, where=f"sample_id IN ({gone})"))
    compact(p)

    def no_scan(*args: object, **kwargs: object) -> None:
        raise AssertionError("deep verify scanned the vectors for answers the build stored")

    monkeypatch.setattr(index_check, "exact_scores_many", no_scan)
    report = verify(p.root, deep=True)
    assert report.healthy and report.checked["index_self_test"] == 1
    monkeypatch.undo()
    idx = current_index(p, "1024")
    assert idx is not None
    answered = index_check.self_test_answers(p, idx)
    assert answered is not None and not set(stored_after[0][1:6]) & {s for a in answered.answers for s in a}
    # forgetting 35 of one query's 40 leaves its top-10 unknown (erased from the stored list by compact, which must
    # not read as a list that held every sample): that query alone is scored by a scan
    gone = ", ".join(f"'{s}'" for s in stored_after[1][5:40])
    forget(p, select(p, where=f"sample_id IN ({gone})"))
    compact(p)
    left = current_index(p, "1024")
    assert left is not None and left.meta["self_test"]["queries"][1] == "s00001"
    assert len(left.meta["self_test"]["exact"][1]) == 5
    scans: list[int] = []
    real = index_check.exact_scores_many
    monkeypatch.setattr(
        index_check, "exact_scores_many", lambda p, v, q, among, k: scans.append(len(q)) or real(p, v, q, among, k)
    )
    report = verify(p.root, deep=True)
    assert report.healthy and scans == [1]
    # every stored query forgotten: the self-test still runs, on the first live rows
    queries = current_index(p, "1024").meta["self_test"]["queries"]  # type: ignore[union-attr]
    forget(p, select(p, where="sample_id IN ({})".format(", ".join(f"'{q}'" for q in queries))))
    idx = current_index(p, "1024")
    assert idx is not None
    answered = index_check.self_test_answers(p, idx)
    assert answered is not None and len(answered.ids) == 20 and not set(answered.ids) & set(queries)


def test_verify_catches_damaged_index(tmp_path: Path) -> None:
    p, queries = clustered_project(tmp_path / "a", n=300)
    build_index(p, "1024", IndexParams())
    idx = current_index(p, "1024")
    assert idx is not None
    binary = idx.dir / "hnsw.bin"
    data = bytearray(binary.read_bytes())
    data[len(data) // 3] ^= 0x5A
    binary.write_bytes(bytes(data))
    assert verify(p.root).healthy  # quick verify reads sizes and footers, never a whole file: its cost is per file
    report = verify(p.root, deep=True)
    assert any(f.file.endswith("hnsw.bin") and f.check == "checksum" for f in report.findings) and not report.healthy
    with pytest.raises(IntegrityError, match="rebuild"):
        knn(p, current_index(p, "1024"), queries[0], 5)  # type: ignore[arg-type]


@pytest.fixture(scope="module")
def digits_project(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("q")
    model = tiny.ddpm(root / "model")
    data = tiny.digits_folder(root / "data", count=24)
    r = subprocess.run(
        [
            *DMIN,
            "collect",
            str(root / "proj"),
            "--model",
            str(model),
            "--data",
            str(data),
            "--timesteps",
            "2",
            "--v",
            "256",
            "--v",
            "full",
            "--json",
        ],
        capture_output=True,
        text=True,
    )
    assert r.returncode == 0, r.stderr
    return root


def _query(root: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*DMIN, "query", str(root / "proj"), *args], capture_output=True, text=True)


def test_query_cli_exact_knn_sheet_and_sql(digits_project: Path) -> None:
    root = digits_project
    img = root / "data" / "0003.png"
    exact = _query(root, "--image", str(img), "--label", "3", "--k", "5", "--exact", "--json")
    assert exact.returncode == 0, exact.stderr
    ex = json.loads(exact.stdout)
    assert ex["method"] == "exact" and ex["v"] == "256" and len(ex["results"]) == 5
    assert [r["rank"] for r in ex["results"]] == [1, 2, 3, 4, 5]
    assert ex["results"][0]["source"] == "0003.png"  # a training sample is its own most influential sample
    assert subprocess.run([*DMIN, "index", str(root / "proj"), "--v", "256"], capture_output=True).returncode == 0
    sheet = root / "sheet.png"
    auto = _query(root, "--image", str(img), "--label", "3", "--k", "5", "--json", "--sheet", str(sheet))
    out = json.loads(auto.stdout)
    assert out["method"] == "knn"
    assert [r["sample_id"] for r in out["results"]] == [r["sample_id"] for r in ex["results"]]
    with Image.open(sheet) as s:
        assert s.format == "PNG" and s.width == 6 * 128
    sql = subprocess.run(
        [
            *DMIN,
            "sql",
            str(root / "proj"),
            "SELECT count(*) AS n FROM results r JOIN samples s "
            "USING (sample_id) WHERE r.query_id = ? AND method = 'knn'".replace("?", f"'{out['query_id']}'"),
            "--json",
        ],
        capture_output=True,
        text=True,
    )
    assert json.loads(sql.stdout) == [{"n": 5}]


def test_batch_queries_equal_single_queries(digits_project: Path) -> None:
    root = digits_project
    lines = [{"image": str(root / "data" / f"{i:04d}.png"), "label": i % 10, "query_id": f"b{i}"} for i in (1, 2)]
    (root / "batch.jsonl").write_text("".join(json.dumps(x) + "\n" for x in lines))
    batch = json.loads(_query(root, "--queries", str(root / "batch.jsonl"), "--exact", "--json", "--k", "4").stdout)
    for i, res in zip((1, 2), batch, strict=True):
        single = json.loads(
            _query(
                root,
                "--image",
                str(root / "data" / f"{i:04d}.png"),
                "--label",
                str(i % 10),
                "--exact",
                "--json",
                "--k",
                "4",
            ).stdout
        )
        assert res["query_id"] == f"b{i}"
        assert [r["sample_id"] for r in res["results"]] == [r["sample_id"] for r in single["results"]]
        np.testing.assert_allclose([r["score"] for r in res["results"]], [r["score"] for r in single["results"]])


def test_generated_query_is_deterministic(digits_project: Path) -> None:
    a = json.loads(_query(digits_project, "--label", "4", "--seed", "7", "--exact", "--json", "--k", "3").stdout)
    b = json.loads(_query(digits_project, "--label", "4", "--seed", "7", "--exact", "--json", "--k", "3").stdout)
    assert a["query_id"] == b["query_id"] and Path(a["image"]).is_file()
    assert a["results"] == b["results"]


def test_query_refuses_a_different_model(digits_project: Path, tmp_path: Path) -> None:
    other = tiny.ddpm(tmp_path / "other", conditional=False)
    r = _query(digits_project, "--image", str(digits_project / "data" / "0001.png"), "--model", str(other))
    assert r.returncode == 1 and "model_fingerprint" in r.stderr
    both = _query(digits_project, "--image", "x.png", "--exact", "--knn")
    assert both.returncode == 2 and "just one" in both.stderr


def odd_images(folder: Path) -> list[str]:
    """One image per mode `collect` accepts: palette, gray+alpha, 16-bit gray (I;16 and I), CMYK JPEG, RGBA, 1-bit,
    and an EXIF-rotated JPEG; with a metadata.jsonl labelling them."""
    folder.mkdir(parents=True)
    rng = np.random.default_rng(1)
    rgb = Image.fromarray((rng.random((20, 24, 3)) * 255).astype(np.uint8), "RGB")
    wide = Image.fromarray((rng.random((20, 24)) * 65535).astype(np.uint16))
    images = {
        "p.png": rgb.convert("P"),
        "la.png": rgb.convert("LA"),
        "i16.png": wide,
        "i32.tiff": wide.convert("I"),
        "cmyk.jpg": rgb.convert("CMYK"),
        "rgba.png": rgb.convert("RGBA"),
        "bit.png": rgb.convert("1"),
    }
    for name, img in images.items():
        img.save(folder / name)
    exif = Image.Exif()
    exif[0x0112] = 6  # orientation: rotate 90° when shown
    rgb.save(folder / "rotated.jpg", exif=exif)
    names = [*images, "rotated.jpg"]
    rows = [json.dumps({"file_name": n, "label": i % 10}) + "\n" for i, n in enumerate(names)]
    (folder / "metadata.jsonl").write_text("".join(rows))
    return names


def test_query_accepts_every_image_collect_accepts(digits_project: Path, tmp_path: Path) -> None:
    from dmin.collect import collect
    from dmin.gradients import prepare
    from dmin.query import QuerySpec, open_for_query, run_query
    from dmin.sheet import contact_sheet

    names = odd_images(tmp_path / "odd")
    setup = prepare(digits_project / "model", timesteps=1, vs=["64"])
    summary = collect(tmp_path / "p", setup, tmp_path / "odd")
    assert summary.done == len(names) and summary.failed == 0
    project, qsetup = open_for_query(tmp_path / "p")
    for i, name in enumerate(names):
        res = run_query(project, qsetup, QuerySpec(image=tmp_path / "odd" / name, label=i % 10), k=1, method="exact")
        assert res.results[0]["source"] == name, name  # each image is its own best match, as collected
        with Image.open(tmp_path / "odd" / name) as img:
            assert contact_sheet(project, res, img, tmp_path / f"sheet-{i}.png").is_file()


def test_sheet_writes_only_where_named(digits_project: Path, tmp_path: Path) -> None:
    from dmin.sheet import check_sheet_path

    root = digits_project
    img = root / "data" / "0005.png"
    before = img.read_bytes()
    with pytest.raises(UsageError, match="inside the project"):
        check_sheet_path(root / "proj", root / "proj" / "samples" / "x.png")
    with pytest.raises(UsageError, match="no such directory"):
        check_sheet_path(root / "proj", tmp_path / "no" / "such" / "s.png")
    with pytest.raises(UsageError, match="is a directory"):
        check_sheet_path(root / "proj", tmp_path)
    assert check_sheet_path(root / "proj", img, force=True) == img.resolve()
    base = ["--image", str(img), "--label", "5", "--k", "2", "--exact"]
    over = _query(root, *base, "--sheet", str(img))  # a training image: refused before the model loads
    assert over.returncode == 2 and "exists; pass --force" in over.stderr and img.read_bytes() == before
    stdout = subprocess.run([*DMIN, "query", str(root / "proj"), *base, "--sheet", "-"], capture_output=True)
    assert stdout.returncode == 0 and stdout.stdout.startswith(b"\x89PNG")
    lines = [{"image": str(root / "data" / f"{i:04d}.png"), "label": i % 10} for i in (1, 2)]
    (tmp_path / "b.jsonl").write_text("".join(json.dumps(x) + "\n" for x in lines))
    plain = _query(root, "--queries", str(tmp_path / "b.jsonl"), "--exact", "--sheet", str(tmp_path / "b.png"))
    assert plain.returncode == 2 and "pattern" in plain.stderr
    batch = _query(root, "--queries", str(tmp_path / "b.jsonl"), "--exact", "--sheet", str(tmp_path / "b-{i}.png"))
    assert batch.returncode == 0 and (tmp_path / "b-0.png").is_file() and (tmp_path / "b-1.png").is_file()
    again = _query(root, "--queries", str(tmp_path / "b.jsonl"), "--exact", "--sheet", str(tmp_path / "b-{i}.png"))
    assert again.returncode == 2  # both exist: refused before any query runs
    forced = _query(root, "--queries", str(tmp_path / "b.jsonl"), "--exact", "--sheet", str(tmp_path / "b-{i}.png"),
                    "--force")
    assert forced.returncode == 0
    assert sorted(p.name for p in tmp_path.iterdir()) == ["b-0.png", "b-1.png", "b.jsonl"]
    assert verify(root / "proj", deep=True).healthy  # nothing orphaned inside the project
