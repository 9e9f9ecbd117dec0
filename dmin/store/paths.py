"""Every file name of a project, in one place."""

from __future__ import annotations

import re

IDENTITY = "dmin.json"
MANIFEST = "manifest"
CHECKPOINTS = "manifest/checkpoints"  # the manifest's sum every CHECKPOINT_EVERY entries (`store.state`)
TMP_PREFIX = ".tmp-"
TABLES = ("samples", "queries", "results", "failures")
TOMBSTONES = "tombstones"
# The folder of each row table's files (grads and query grads are per v: `grads_dir`, `query_grads_dir`).
FOLDERS = {"samples": "samples", "failures": "failures", "queries": "queries/meta", "results": "results",
           TOMBSTONES: TOMBSTONES}
QUERY_IMAGES = "queries/images"  # images `dmin query --seed` generated
# The files of one index build and of one preconditioner build, by the table the manifest names them under.
INDEX_FILES = {"index": "hnsw.bin", "index_labels": "labels.parquet", "index_meta": "index.json"}
PRECONDITION_FILES = {
    "precondition_gram": "gram.npy",
    "precondition": "inverse.npy",
    "precondition_samples": "samples.parquet",
    "precondition_meta": "precondition.json",
}
# Folders that hold committed files (and, after an interrupted write, unnamed ones that `compact` sweeps).
DATA_DIRS = ("samples", "grads", "queries", "results", "failures", "index", "precondition", TOMBSTONES)
# An unnamed file under a data folder is swept by `compact` only once older than this: far longer than a writer
# takes from staging its files to publishing its entry.
ORPHAN_GRACE = 600.0  # seconds
SCHEMA_VERSION = 2  # 2: dmin.json records the training schedule, compute dtype and conditioning


def v_name(v: int | str) -> str:
    """'4096' or 'full': how a v appears in paths, views and dmin.json."""
    return str(v)


def grads_dir(v: int | str) -> str:
    return f"grads/v={v_name(v)}"


def query_grads_dir(v: int | str) -> str:
    return f"queries/grads/v={v_name(v)}"


def index_dir(v: int | str, build: int, token: str) -> str:
    """One index build's folder; the token keeps two racing builds of the same number apart."""
    return f"index/v={v_name(v)}/b{build:06d}-{token}"


def precondition_dir(v: int | str, token: str) -> str:
    """One preconditioner build's folder (`dmin.precondition`)."""
    return f"precondition/v={v_name(v)}/{token}"


def build_of(path: str) -> int:
    """The build number in an index file's path (b000003 or b000003-<token>)."""
    found = re.search(r"/b(\d{6})(?:-[0-9a-f]+)?/", path)
    return int(found.group(1)) if found else 0


def part_name(token: str, j: int = 0) -> str:
    """File j of one writer's staged commit. Names are unique per writer (not per sequence number): a writer
    stages its files before it knows which manifest entry will name them."""
    return f"part-{token}-{j:03d}.parquet"


def manifest_name(seq: int) -> str:
    return f"{MANIFEST}/{seq:09d}.json"
