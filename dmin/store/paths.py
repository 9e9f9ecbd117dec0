"""Every file name of a project, in one place."""

from __future__ import annotations

IDENTITY = "dmin.json"
MANIFEST = "manifest"
LOCK = ".dmin.lock"
TMP_PREFIX = ".tmp-"
TABLES = ("samples", "queries", "results", "failures")
SCHEMA_VERSION = 2  # 2: dmin.json records the training schedule, compute dtype and conditioning


def v_name(v: int | str) -> str:
    """'4096' or 'full': how a v appears in paths, views and dmin.json."""
    return str(v)


def grads_dir(v: int | str) -> str:
    return f"grads/v={v_name(v)}"


def query_grads_dir(v: int | str) -> str:
    return f"queries/grads/v={v_name(v)}"


def index_dir(v: int | str, build: int) -> str:
    return f"index/v={v_name(v)}/b{build:06d}"


def part_name(seq: int, j: int = 0) -> str:
    """File j of commit seq in one table folder."""
    return f"part-{seq:09d}-{j:03d}.parquet"


def manifest_name(seq: int) -> str:
    return f"{MANIFEST}/{seq:09d}.json"
