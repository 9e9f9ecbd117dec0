#!/usr/bin/env python
"""Attribution quality on the digits demo: does DMin find the training samples that made a generated digit?

Generates `--per-class` digits per class with fixed seeds, computes every training sample's and query's gradients
once by the collection path (normalized and raw, uncompressed and compressed), then reports the detection rate at
k = 5 and 10: the fraction of the top-k training samples in the generated digit's group, where the group is
  --setting base  the class: bundled DDPM, training set = the first `--train` digits;
  --setting lora  the subset ("base" or "inverted", read off the generated image's background): the bundled LoRA
                  (scripts/train_digits_lora.py) over its mixed training set of 299 + 300 digits, gradients of the
                  LoRA weights only — the paper's LoRA setting in miniature; also reported: the stricter match
                  of subset and class together.
Methods:
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

from dmin.compressor import fold
from dmin.demo import LORA, MODEL, digit_pixels, lora_samples, style
from dmin.gradients import GradientEngine, prepare

VS = (256, 1024, 4096)  # the v's; --vs adds larger ones (each a power of two)


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
    ap.add_argument("--setting", choices=["base", "lora"], default="base")
    ap.add_argument("--vs", type=int, nargs="+", default=list(VS), help="compressed v's (powers of two)")
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    from PIL import Image
    from sklearn.datasets import load_digits

    torch.manual_seed(0)
    start = time.perf_counter()
    lora = args.setting == "lora"
    vs = tuple(sorted(set(args.vs)))
    setup = prepare(MODEL, lora=LORA if lora else None, timesteps=args.timesteps, vs=[str(vs[-1]), "full"])
    fam = setup.family
    engine = GradientEngine(setup)
    if lora:
        train = [(digit_pixels(i, sub == "inverted"), label, sub) for i, label, sub in lora_samples()]
    else:
        target = load_digits().target
        train = [(digit_pixels(i), int(target[i]), "") for i in range(min(args.train, len(target)))]
    # queries: generated digits, their gradients (full, normalized and raw) and pixels
    q_groups, q_classes, q_full, q_raw, q_pix = [], [], [], [], []
    for label in range(10):
        for seed in range(args.per_class):
            cond = fam.encode_condition(None, label)
            img = fam.generate(None, label, seed=seed)
            x0 = fam.encode_image(fam.pixels(img))
            vecs, norms, _ = engine.sample(x0, cond)
            # LoRA setting: the style shows in the background (inverted digits are drawn on white)
            q_groups.append(style(img) if lora else str(label))
            q_classes.append(f"{q_groups[-1]}/{label}")
            q_full.append(vecs["full"].astype(np.float32))
            q_raw.append((vecs["full"] * norms[:, None]).astype(np.float32))
            q_pix.append(x0.reshape(-1).numpy())
    qf = np.stack(q_full)  # (Q, K, n)
    qr = np.stack(q_raw)
    qf_flat, qr_flat = qf.reshape(len(qf), -1), qr.reshape(len(qr), -1)
    ql = np.asarray(q_groups)
    N = len(train)
    labels = np.asarray([sub if lora else str(label) for _, label, sub in train])
    classes = np.asarray([f"{sub if lora else label}/{label}" for _, label, sub in train])
    qc = np.asarray(q_classes)
    Q = len(ql)
    s_full = np.zeros((N, Q))
    s_raw = np.zeros((N, Q))
    comp: dict[int, list[np.ndarray]] = {v: [] for v in vs}
    pix = []
    for i, (pixels, label, _) in enumerate(train):
        x0 = fam.encode_image(fam.pixels(Image.fromarray(pixels, "L")))
        vecs, norms, _ = engine.sample(x0, fam.encode_condition(None, label))
        full = vecs["full"].astype(np.float32)
        s_full[i] = qf_flat @ full.reshape(-1)
        s_raw[i] = qr_flat @ (full * norms[:, None].astype(np.float32)).reshape(-1)
        big = torch.from_numpy(vecs[str(vs[-1])])
        for v in vs:
            comp[v].append(fold(big, v).numpy() if v != vs[-1] else vecs[str(v)])
        pix.append(x0.reshape(-1).numpy())
    engine.close()
    q_comp = {
        v: np.stack(
            [setup.compressor.compress(torch.from_numpy(r).double(), v).numpy() for q in qf for r in q]
        ).reshape(Q, args.timesteps, v)
        for v in vs
    }
    results: dict[str, Any] = {}
    methods: dict[str, np.ndarray] = {"dmin_exact_full": s_full, "dmin_no_normalization_full": s_raw}
    agreement = {}
    for v in vs:
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
        if lora:  # stricter: the same subset and the same class
            results[name].update({f"top{k}_subset_and_class": detection(scores, classes, qc, k) for k in (5, 10)})
    out = {
        "setting": args.setting,
        "train": int(N),
        "query_groups": {g: int((ql == g).sum()) for g in sorted(set(ql.tolist()))} if lora else None,
        "queries": int(Q),
        "timesteps": args.timesteps,
        "n_params": setup.identity.n,
        "detection": results,
        "agreement_with_full": agreement,
        "seconds": round(time.perf_counter() - start, 1),
    }
    if not args.json:
        extra = "  subset+class top-5 / top-10" if lora else ""
        print(f"{'method':<30} {'top-5':>7} {'top-10':>7}{extra}")
        for name, r in results.items():
            both = f"  {r['top5_subset_and_class']:>7.3f} {r['top10_subset_and_class']:>7.3f}" if lora else ""
            print(f"{name:<30} {r['top5']:>7.3f} {r['top10']:>7.3f}{both}")
        for v, a in agreement.items():
            print(f"agreement {v}: top-10 overlap {a['top10_overlap']:.3f}, Spearman {a['spearman']:.3f}")
    print(json.dumps(out))


if __name__ == "__main__":
    main()
