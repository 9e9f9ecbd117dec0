"""How tests/data/legacy-v1 was made: a project written by dmin before lock-free commits, tombstones and roots per
commit (commit 9ddacdb), with that era's flaw: v=64 derived, then samples added that v=64 lacks.

Run with a checkout of that commit first on the path (its dmin and tests/conftest.py): `PYTHONPATH=/path/to/9ddacdb
python tests/data/make_legacy_v1.py tests/data/legacy-v1`.
"""

from __future__ import annotations

import sys
from datetime import datetime, timezone
from pathlib import Path

import numpy as np

from dmin.derive import derive_v
from dmin.index import IndexParams, build_index
from dmin.store import Project
from dmin.store.project import grads_table
from dmin.store.schema import QUERIES, RESULTS
from tests.conftest import add_samples, make_identity


def main(root: Path) -> None:
    import pyarrow as pa

    p = Project.create(root, make_identity(data_path="/data/legacy-images"))
    add_samples(p, 0, 12)
    derive_v(p, 64)
    build_index(Project.open(root), "64", IndexParams())
    p = Project.open(root)
    add_samples(p, 12, 3)  # after the derive: v=64 lacks these three (the flaw issue #14 §2 names)
    q = np.random.default_rng(9).standard_normal((1, 2, 256)).astype(np.float32)
    ts = pa.array([datetime(2025, 1, 1, tzinfo=timezone.utc)], pa.timestamp("us", tz="UTC"))
    queries = pa.table(
        {
            "query_id": ["q1"],
            "image": [None],
            "prompt": [None],
            "label": pa.array([3], pa.int64()),
            "seed": pa.array([None], pa.int64()),
            "created_at": ts,
        },
        schema=QUERIES,
    )
    results = pa.table(
        {
            "query_id": ["q1"],
            "sample_id": ["id00003"],
            "rank": pa.array([1], pa.int32()),
            "score": pa.array([1.5]),
            "scores": pa.array([[0.7, 0.8]]),
            "method": ["exact"],
            "v": ["256"],
            "created_at": ts,
        },
        schema=RESULTS,
    )
    p.commit(
        "queries",
        [
            ("queries", None, "queries/meta", queries),
            ("results", None, "results", results),
            (
                "query_grads",
                "256",
                "queries/grads/v=256",
                grads_table("query_id", ["q1"], (10.0, 500.0), q, np.ones((1, 2)), np.ones((1, 2)), "float32"),
            ),
        ],
    )


if __name__ == "__main__":
    main(Path(sys.argv[1]))
