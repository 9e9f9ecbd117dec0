#!/usr/bin/env python
"""Attribution quality on the digits demo: does DMin find training samples of the generated digit's class?

Generates `--per-class` digits per class with fixed seeds from the bundled model, computes every training
sample's and query's gradients once by the collection path (normalized and raw, uncompressed and compressed), then
reports the detection rate — the fraction of the top-k training samples whose label equals the generated digit's —
at k = 5 and 10 for:
  dmin exact at v ∈ {256, 1024, 4096, full}; dmin kNN (hnswlib over the concatenated K·v vectors) at each v;
  dmin without L2 normalization (ablation); random; pixel-space nearest neighbours (image-similarity baseline).
Plus the agreement of compressed with uncompressed scores: mean top-10 overlap and Spearman ρ per v.
JSON last. `--train N` uses the first N digits (the full 1797 takes ~10 minutes on 2 cores).
"""

from __future__ import annotations

import argparse
import json
import time
from typing import Any

import numpy as np
import torch

from dmin.collect import GradientEngine, prepare
from dmin.compress import fold
from dmin.demo import MODEL

VS = (256, 1024, 4096)


def spearman(a: np.ndarray, b: np.ndarray) -> float:
    ra = np.argsort(np.argsort(a))
    rb = np.argsort(np.argsort(b))
    return float(np.corrcoef(ra, rb)[0, 1])


def detection(scores: np.ndarray, train_labels: np.ndarray, query_labels: np.ndarray, k: int) -> float:
    """scores (N, Q) → mean fraction of each query's top-k whose label matches."""
    top = np.argsort(-scores, axis=0, kind="stable")[:k]
    return float((train_labels[top] == query_labels[None, :]).mean())


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--train", type=int, default=600, help="training digits used (first N of 1797)")
    ap.add_argument("--per-class", type=int, default=5, help="generated digits per class (≥ 50 queries in all)")
    ap.add_argument("--timesteps", type=int, default=5)
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    from sklearn.datasets import load_digits

    torch.manual_seed(0)
    start = time.perf_counter()
    setup = prepare(MODEL, timesteps=args.timesteps, vs=[str(VS[-1]), "full"])
    fam = setup.family
    engine = GradientEngine(setup)
    # queries: generated digits, their gradients (full, normalized and raw) and pixels
    q_labels, q_full, q_raw, q_pix = [], [], [], []
    for label in range(10):
        for seed in range(args.per_class):
            cond = fam.encode_condition(None, label)
            img = fam.generate(cond, seed=seed)
            x0 = fam.encode_image(img)
            vecs, norms, _ = engine.sample(x0, cond)
            q_labels.append(label)
            q_full.append(vecs["full"].astype(np.float32))
            q_raw.append((vecs["full"] * norms[:, None]).astype(np.float32))
            q_pix.append(x0.reshape(-1).numpy())
    qf = np.stack(q_full)  # (Q, K, n)
    qr = np.stack(q_raw)
    qf_flat, qr_flat = qf.reshape(len(qf), -1), qr.reshape(len(qr), -1)
    ql = np.asarray(q_labels)
    d = load_digits()
    N = min(args.train, len(d.images))
    labels = d.target[:N]
    Q = len(ql)
    s_full = np.zeros((N, Q))
    s_raw = np.zeros((N, Q))
    comp: dict[int, list[np.ndarray]] = {v: [] for v in VS}
    pix = []
    from PIL import Image

    for i in range(N):
        img = Image.fromarray((d.images[i] * 255 / 16).astype(np.uint8).repeat(2, 0).repeat(2, 1), "L")
        x0 = fam.encode_image(img)
        vecs, norms, _ = engine.sample(x0, fam.encode_condition(None, int(labels[i])))
        full = vecs["full"].astype(np.float32)
        s_full[i] = qf_flat @ full.reshape(-1)
        s_raw[i] = qr_flat @ (full * norms[:, None].astype(np.float32)).reshape(-1)
        big = torch.from_numpy(vecs[str(VS[-1])])
        for v in VS:
            comp[v].append(fold(big, v).numpy() if v != VS[-1] else vecs[str(v)])
        pix.append(x0.reshape(-1).numpy())
    engine.close()
    q_comp = {
        v: np.stack(
            [setup.compressor.compress(torch.from_numpy(r).double(), v).numpy() for q in qf for r in q]
        ).reshape(Q, args.timesteps, v)
        for v in VS
    }
    results: dict[str, Any] = {}
    methods: dict[str, np.ndarray] = {"dmin_exact_full": s_full, "dmin_no_normalization_full": s_raw}
    agreement = {}
    for v in VS:
        train_v = np.stack(comp[v])  # (N, K, v)
        s_v = np.einsum("nkv,qkv->nq", train_v, q_comp[v])
        methods[f"dmin_exact_v{v}"] = s_v
        overlap = np.mean(
            [len(set(np.argsort(-s_v[:, j])[:10]) & set(np.argsort(-s_full[:, j])[:10])) / 10 for j in range(Q)]
        )
        rho = np.mean([spearman(s_v[:, j], s_full[:, j]) for j in range(Q)])
        agreement[f"v{v}"] = {"top10_overlap": float(overlap), "spearman": float(rho)}
        import hnswlib

        index = hnswlib.Index(space="ip", dim=args.timesteps * v)
        index.init_index(max_elements=N, ef_construction=200, M=16, random_seed=0)
        index.add_items(train_v.reshape(N, -1), np.arange(N))
        index.set_ef(100)
        found, _ = index.knn_query(q_comp[v].reshape(Q, -1), k=10)
        knn_scores = np.full((N, Q), -np.inf)
        for j in range(Q):
            knn_scores[found[j], j] = s_v[found[j], j]
        methods[f"dmin_knn_v{v}"] = knn_scores
    rng = np.random.default_rng(0)
    methods["random"] = rng.random((N, Q))
    train_pix = np.stack(pix)
    qp = np.stack(q_pix)
    methods["pixel_nearest_neighbour"] = (train_pix / np.linalg.norm(train_pix, axis=1, keepdims=True)) @ (
        qp / np.linalg.norm(qp, axis=1, keepdims=True)
    ).T
    for name, scores in methods.items():
        results[name] = {f"top{k}": detection(scores, labels, ql, k) for k in (5, 10)}
    out = {
        "train": int(N),
        "queries": int(Q),
        "timesteps": args.timesteps,
        "n_params": setup.identity.n,
        "detection": results,
        "agreement_with_full": agreement,
        "seconds": round(time.perf_counter() - start, 1),
    }
    if not args.json:
        print(f"{'method':<30} {'top-5':>7} {'top-10':>7}")
        for name, r in results.items():
            print(f"{name:<30} {r['top5']:>7.3f} {r['top10']:>7.3f}")
        for v, a in agreement.items():
            print(f"agreement {v}: top-10 overlap {a['top10_overlap']:.3f}, Spearman {a['spearman']:.3f}")
    print(json.dumps(out))


if __name__ == "__main__":
    main()
