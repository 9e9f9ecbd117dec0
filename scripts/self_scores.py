#!/usr/bin/env python
"""What holds for compressed scores: the spread of self-scores Σ_k ‖c_k‖² at every v, from a project's stored vectors.

At v = full the stored vectors are unit vectors (normalized gradients), so a self-score is K and every score lies
in [−K, K]. A compressed vector keeps that norm only in expectation (E‖c_v(g)‖² = ‖g‖² for random-sign bucket sums),
so at a compressed v self-scores spread around K and a score can pass K a little; what holds at every v is
|score(a, b)| ≤ Σ_k ‖c_k(a)‖·‖c_k(b)‖ (Cauchy–Schwarz), with these norms. A query of a training image reproduces its
stored vectors exactly (tests/test_query.py), so these are the scores such a query gets.

Smaller v's are folded in memory from the largest stored one, exactly what `dmin compress` would store. Prints one
JSON object: {project: {v: {n, K, self_score: {min, p1, p50, p99, max, mean, std}, max_over_K, share_above_K}}}.
Figures in docs/database.md: `scripts/self_scores.py demo-out/project`, and a project of the demo's first 40 digits
collected with `--v 65536 --v 16384 --v full` (`--min-v 8192`); raw output in scripts/results/self_scores_cpu.json.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from dmin.compressor import fold
from dmin.store import Project
from dmin.store.vectors import iter_blocks


def stored(project: Project, v: str, limit: int | None) -> np.ndarray:
    """(N, K, v) float32 vectors of the live samples at a stored v."""
    parts = [np.asarray(b.vecs[b.live_rows()], dtype=np.float32) for b in iter_blocks(project, v)]
    vecs = np.concatenate(parts)
    return vecs[:limit] if limit else vecs


def spread(vecs: np.ndarray) -> dict[str, Any]:
    self_scores = (vecs.astype(np.float64) ** 2).sum(axis=(1, 2))
    K = vecs.shape[1]
    q = np.percentile(self_scores, [1, 50, 99])
    return {
        "n": len(vecs),
        "K": K,
        "self_score": {
            "min": round(float(self_scores.min()), 4),
            "p1": round(float(q[0]), 4),
            "p50": round(float(q[1]), 4),
            "p99": round(float(q[2]), 4),
            "max": round(float(self_scores.max()), 4),
            "mean": round(float(self_scores.mean()), 4),
            "std": round(float(self_scores.std()), 4),
        },
        "max_over_K": round(float(self_scores.max() / K), 4),
        "share_above_K": round(float((self_scores > K * (1 + 1e-5)).mean()), 4),  # beyond float32 rounding
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("projects", nargs="+", type=Path)
    ap.add_argument("--min-v", type=int, default=16, help="fold down to this v")
    ap.add_argument("--limit", type=int, default=None, help="only the first N samples")
    args = ap.parse_args()
    out: dict[str, Any] = {}
    for root in args.projects:
        p = Project.open(root)
        numeric = sorted((int(v) for v in p.identity.vs if v != "full"), reverse=True)
        per_v: dict[str, Any] = {}
        if "full" in p.identity.vs:
            per_v["full"] = spread(stored(p, "full", args.limit))
        if numeric:
            top = stored(p, str(numeric[0]), args.limit)
            v = numeric[0]
            while v >= args.min_v:
                vecs = top if v == numeric[0] else fold(torch.from_numpy(top), v).numpy()
                per_v[str(v)] = spread(vecs)
                v //= 2
        out[str(root)] = per_v
    print(json.dumps(out))


if __name__ == "__main__":
    main()
