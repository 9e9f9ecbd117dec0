"""Several data roots: each sample's image resolves against the folder it was collected from; a moved folder is
re-pointed only after every sample checks out against its stored content hash."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageOps

from dmin.data import Dataset, load_dataset
from dmin.errors import DataError
from dmin.query import QueryResult, load_training_image
from dmin.relocate import relocate, roots
from dmin.sheet import TILE, contact_sheet
from dmin.store import Project
from dmin.store.tables import SampleBatch
from tests import tiny
from tests.conftest import make_identity

DMIN = [sys.executable, "-m", "dmin_cli"]


def commit_dataset(p: Project, ds: Dataset) -> None:
    """Commit a data set's records as collect would (synthetic vectors: only where images resolve matters here)."""
    n, K = len(ds.records), p.identity.K
    p.commit_samples(
        SampleBatch(
            [r.sample_id for r in ds.records],
            [r.source for r in ds.records],
            [r.caption for r in ds.records],
            [r.label for r in ds.records],
            {},
            p.identity.timesteps,
            {"256": np.random.default_rng(n).standard_normal((n, K, 256)).astype(np.float32)},
            np.ones((n, K)),
            np.ones((n, K)),
        ),
        data_root=str(ds.path.resolve()),
    )


def inverted_folder(path: Path, count: int) -> Path:
    """The same file names as digits_folder, other images (and so other sample_ids)."""
    tiny.digits_folder(path, count=count)
    for png in path.glob("*.png"):
        ImageOps.invert(Image.open(png).convert("L")).save(png)
    return path


def pixels(img: Image.Image | None) -> np.ndarray:
    assert img is not None
    return np.asarray(img.convert("L"))


def test_samples_of_two_folders_resolve_against_their_own(tmp_path: Path) -> None:
    a = load_dataset(tiny.digits_folder(tmp_path / "a", count=4))
    b = load_dataset(inverted_folder(tmp_path / "b", count=4))
    p = Project.create(tmp_path / "proj", make_identity())
    commit_dataset(p, a)
    commit_dataset(p, b)  # a second --data: sources 0000.png… again, other images
    for ds in (a, b):
        for rec in ds.records:
            want = pixels(Image.open(ds.path / rec.source))
            np.testing.assert_array_equal(pixels(load_training_image(p, rec.sample_id, rec.source)), want)
    assert {(r.root, r.samples, r.exists) for r in roots(p)} == {
        (str(a.path.resolve()), 4, True),
        (str(b.path.resolve()), 4, True),
    }
    # the contact sheet shows each sample from its own folder (the #14 bug: #1 wrong, #2–#4 "image missing")
    picks = [b.records[0], a.records[1], b.records[2], a.records[3]]
    result = QueryResult(
        "q",
        "exact",
        "256",
        None,
        [{"rank": i + 1, "score": 1.0, "sample_id": r.sample_id, "source": r.source} for i, r in enumerate(picks)],
    )
    sheet = Image.open(contact_sheet(p, result, Image.new("L", (8, 8)), tmp_path / "sheet.png")).convert("RGB")
    for i, (rec, ds) in enumerate(zip(picks, (b, a, b, a), strict=True), 1):
        tile = sheet.crop((i * TILE + 2, 2, i * TILE + TILE - 2, TILE - 2))
        want = Image.open(ds.path / rec.source).convert("RGB").resize((TILE - 4, TILE - 4), Image.Resampling.NEAREST)
        np.testing.assert_array_equal(np.asarray(tile), np.asarray(want))


def test_a_moved_folder_is_repointed_only_to_matching_content(tmp_path: Path) -> None:
    a = load_dataset(tiny.digits_folder(tmp_path / "a", count=4))
    b = load_dataset(inverted_folder(tmp_path / "b", count=4))
    p = Project.create(tmp_path / "proj", make_identity())
    commit_dataset(p, a)
    commit_dataset(p, b)
    old_b = str(b.path.resolve())
    shutil.move(b.path, tmp_path / "moved")
    rec = b.records[1]
    assert load_training_image(p, rec.sample_id, rec.source) is None
    assert [r.exists for r in roots(p) if r.root == old_b] == [False]
    entries = len(p.entries())
    with pytest.raises(DataError, match="4 of 4 sample"):  # folder a holds other images under the same names
        relocate(p, old_b, a.path)
    (tmp_path / "moved" / "0002.png").unlink()
    with pytest.raises(DataError, match=r"1 of 4 .*0002.png"):
        relocate(p, old_b, tmp_path / "moved")
    assert len(p.entries()) == entries  # refused: nothing changed
    inverted_folder(tmp_path / "again", count=4)
    cli = subprocess.run(
        [*DMIN, "roots", str(p.root), "--from", old_b, "--to", str(tmp_path / "again"), "--json"],
        capture_output=True,
        text=True,
    )
    assert cli.returncode == 0, cli.stderr
    assert json.loads(cli.stdout)["samples"] == 4
    p = Project.open(p.root)
    np.testing.assert_array_equal(
        pixels(load_training_image(p, rec.sample_id, rec.source)),
        pixels(Image.open(tmp_path / "again" / rec.source)),
    )
    # a later collect from a new folder at the old path is not redirected
    c = load_dataset(tiny.digits_folder(Path(old_b), count=6))
    commit_dataset(p, c)
    new = c.records[5]
    assert p.sample_root(new.sample_id) == old_b and p.sample_root(rec.sample_id) == str(tmp_path / "again")
    listed = json.loads(subprocess.run([*DMIN, "roots", str(p.root), "--json"], capture_output=True, text=True).stdout)
    assert sorted((r["root"], r["samples"]) for r in listed) == sorted(
        [(str(a.path.resolve()), 4), (str(tmp_path / "again"), 4), (old_b, 2)]
    )
