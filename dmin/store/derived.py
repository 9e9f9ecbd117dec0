"""Vectors at every stored v from the ones at hand, by the rule `dmin compress` follows.

A v is derived from the smallest v at hand that is a multiple of it, by folding (exact), else from v=full, by
compressing with the project's compressor. Commits use this to write every stored v, not only the collected ones,
so a v derived once stays complete as samples and queries arrive (and equals what `compress` would write).
"""

from __future__ import annotations

from collections.abc import Iterable

import numpy as np

from dmin.errors import ProjectError
from dmin.store.identity import Identity


def source_v(have: Iterable[str], v: int) -> str | None:
    """Which v of `have` derives `v`: the smallest larger multiple, else 'full'; None when neither is there."""
    have = list(have)
    multiples = sorted(int(s) for s in have if s != "full" and int(s) > v and int(s) % v == 0)
    if multiples:
        return str(multiples[0])
    return "full" if "full" in have else None


def derive(vecs: np.ndarray, src: str, v: int, identity: Identity) -> np.ndarray:
    """(…, dim) float vectors at `src` → (…, v) float32 vectors at v."""
    import torch  # here, not at the top: the store (which `dmin --help` reaches) must not load torch

    from dmin.compress import Compressor, fold

    own = np.array(vecs, dtype=np.float32, order="C")  # a writable copy: stored vectors are read-only mapped pages
    if src != "full":
        return fold(torch.from_numpy(own), v).numpy()
    comp = Compressor(identity.n, identity.compress_seed)
    rows = torch.from_numpy(own).reshape(-1, vecs.shape[-1])
    out = torch.stack([comp.compress(row.double(), v) for row in rows]) if len(rows) else torch.zeros((0, v))
    return out.reshape(*vecs.shape[:-1], v).numpy()


def complete(vecs: dict[str, np.ndarray], want: Iterable[str], identity: Identity) -> dict[str, np.ndarray]:
    """`vecs` (v → (…, dim)) plus every v of `want` it lacks, larger v's first so each smaller one is derived from
    the same source `dmin compress` would pick."""
    out = dict(vecs)
    for v in sorted((w for w in want if w not in out and w != "full"), key=int, reverse=True):
        src = source_v(out, int(v))
        if src is None:
            raise ProjectError(f"v={v} is stored but cannot be derived from the v's at hand ({', '.join(out)})")
        out[v] = derive(out[src], src, int(v), identity)
    return out
