#!/usr/bin/env python
"""Does removing what a method names change what the model makes? The counterfactual test (D-TRAK's protocol).

For each generated target (fixed seed and class) and each method, the method's top-k training samples for that
target are removed (k = 5% and 20% of the training set), the model is retrained from the same initialisation with
the same steps, and the target is measured again: (a) the rise of its denoising loss, averaged over 64 fixed
(t, ε) pairs — the primary measure: the target's own likelihood under the retrained model — and (b) the pixel L2
between the image the same seed generates before and after.

Training noise is controlled: a retrain draws every batch, noise and timestep exactly as the original did over the
full set and skips the removed items (`train_digits.train(removed=…)`), so it differs from the original only by
what was removed; a control retrain with nothing removed must reproduce the original weights bit for bit (the JSON
records it).

Settings (one retrain ≤ 60 s on the 2-core development machine with two threads, as the protocol asks):
- `base`: the demo's class-conditional DDPM trained from scratch on the first 600 digits, 300 steps of batch 32
  (~40 s a fit with two threads, ~75 s with one). The pilot's recipe, 400 steps of batch 64, took ~106 s a fit; 150
  steps of batch 64 (~43 s) drew digits of the wrong class, batch 32 × 300 steps (the same time) drew most of them
  right, so the setting takes it.
- `lora`: the bundled base model frozen, a LoRA trained on the demo's LoRA set (299 drawn + 300 inverted digits),
  300 steps of batch 32; only the LoRA is retrained, so what decides is style, not pixels.

Methods, the gradient ones over the same collected project (`dmin.collect`, K = 10, v = 4096, exact scoring through
`dmin.run_query`): `random` (one draw per target: comparisons are paired), `pixel` (L2 nearest neighbours of the
generated image), `dmin`, `dmin_no_norm` (the same per-timestep scores weighted by the gradients' norms: the
paper's scorer without its L2 normalization) and `dmin_pre_<λ>` (`dmin precondition`, `query --precondition`).

Every retrain's result is appended to <work>/<setting>/results.jsonl as it finishes and a rerun skips those done,
so the run is resumable; `--minutes M` starts no retrain after M minutes and reports what is done (targets in
order, each with both k and every method), with `retrains_left` for the rerun that finishes it.
The JSON printed (and written with --out) holds per setting and k: each method's mean ±
standard error of both measures, and paired win rates against random and pixel (the fraction of targets where the
method's removal raised the target's loss more). `--quick` (2 targets, 40 items, 8 training steps, v = 256, k = 20%
only) runs in the tests.

    python scripts/eval_counterfactual.py --work /tmp/cf --out scripts/results/eval_counterfactual.json --json
"""

from __future__ import annotations

import argparse
import json
import math
import shutil
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parent))
from train_digits import new_model, train
from train_digits_lora import lora_state, new_lora, save_lora

import dmin
from dmin.demo import MODEL, _digits, digit_pixels, lora_samples, write_digits

V = "4096"
PAIRS = 64  # (t, ε) pairs the target's loss is averaged over
FRACTIONS = (0.05, 0.20)


@dataclass(frozen=True)
class Setting:
    name: str
    steps: int
    batch: int
    max_lr: float
    items: list[tuple[int, int, str]]  # (digit index, label, subset) in training order
    fractions: tuple[float, ...]  # k as shares of the training set


def settings(quick: bool) -> list[Setting]:
    base = [(i, int(_digits().target[i]), "base") for i in range(600)]
    lora = sorted(lora_samples())  # the order write_digits(lora=True) writes them
    if quick:
        return [Setting("base", 8, 64, 2e-3, base[:40], (0.2,)), Setting("lora", 8, 64, 3e-3, lora[:40], (0.2,))]
    return [Setting("base", 300, 32, 2e-3, base, FRACTIONS), Setting("lora", 300, 32, 3e-3, lora, FRACTIONS)]


def tensors(setting: Setting) -> tuple[torch.Tensor, torch.Tensor]:
    x = torch.stack(
        [torch.from_numpy(digit_pixels(i, sub == "inverted")).float() / 127.5 - 1 for i, _, sub in setting.items]
    )
    return x.unsqueeze(1), torch.tensor([label for _, label, _ in setting.items])


def fit(setting: Setting, removed: np.ndarray | None) -> tuple[Any, Any, dict[str, torch.Tensor]]:
    """Train the setting's model (base: the whole UNet from seed 0; lora: the adapter only) without `removed`."""
    x, y = tensors(setting)
    if setting.name == "base":
        unet, sched = new_model()
        params = list(unet.parameters())
    else:
        unet, sched, params = new_lora()
    mask = None if removed is None else torch.from_numpy(removed)
    train(unet, sched, params, x, y, setting.steps, setting.batch, setting.max_lr, removed=mask, log=False)
    state = unet.state_dict() if setting.name == "base" else lora_state(unet)
    return unet, sched, {k: v.detach().clone() for k, v in state.items()}


def save(setting: Setting, unet: Any, sched: Any, folder: Path) -> tuple[str, str | None]:
    """Write the model where dmin loads it from; returns (model, lora) for `dmin.prepare`."""
    if setting.name == "base":
        from diffusers import DDPMPipeline

        DDPMPipeline(unet=unet, scheduler=sched).save_pretrained(folder, safe_serialization=True)
        return str(folder), None
    save_lora(unet, folder)
    return str(MODEL), str(folder)


def target_loss(unet: Any, sched: Any, image: Image.Image, label: int) -> float:
    """The target's denoising loss over PAIRS fixed (t, ε): the training objective at this one image."""
    x = torch.from_numpy(np.asarray(image.convert("L"), np.float32) / 127.5 - 1)[None, None].repeat(PAIRS, 1, 1, 1)
    gen = torch.Generator().manual_seed(1234)
    t = torch.randint(0, sched.config.num_train_timesteps, (PAIRS,), generator=gen)
    eps = torch.randn(x.shape, generator=gen)
    with torch.no_grad():
        pred = unet(sched.add_noise(x, eps, t), t, class_labels=torch.full((PAIRS,), label)).sample
    return float(torch.nn.functional.mse_loss(pred, eps))


def generate(model: str, lora: str | None, label: int, seed: int) -> np.ndarray:
    setup = dmin.prepare(model, lora=lora, timesteps=1, vs=["64"], device="cpu")
    return np.asarray(setup.family.generate(None, label, seed).convert("L"), np.float32) / 255.0


def rankings(
    setting: Setting, work: Path, targets: list[tuple[int, int]], lams: list[float], v: str
) -> dict[str, Any]:
    """Each method's ranking of the training items for each target (cached in rankings.json)."""
    cache = work / "rankings.json"
    if cache.is_file():
        return json.loads(cache.read_text())
    model, lora = (str(work / "orig"), None) if setting.name == "base" else (str(MODEL), str(work / "orig"))
    if setting.name == "base":
        data = write_digits(work / "data", limit=len(setting.items))  # the first digits, in training order
    else:
        data = _subset(write_digits(work / "data", lora=True), work / "data-used", len(setting.items))
    position = {f"{i:04d}.png": j for j, (i, _, _) in enumerate(setting.items)}
    setup = dmin.prepare(model, lora=lora, timesteps=10, vs=[v])
    dmin.collect(work / "project", setup, data)
    project, qsetup = dmin.open_for_query(work / "project")
    con = dmin.connect(project)
    rows = con.sql(f"SELECT s.source, g.t_idx, g.norm FROM grads_{v} g JOIN samples s USING (sample_id)").fetchall()
    norms = np.zeros((len(setting.items), 10))
    for source, t_idx, norm in rows:
        norms[position[source], t_idx] = norm
    pixels = np.stack([digit_pixels(i, sub == "inverted") / 255.0 for i, _, sub in setting.items])
    n = len(setting.items)
    out: dict[str, Any] = {"targets": []}
    for q, (label, seed) in enumerate(targets):
        res = dmin.run_query(project, qsetup, dmin.QuerySpec(label=label, seed=seed), k=n, v=v, method="exact")
        image = np.asarray(Image.open(res.image_path or "").convert("L"), np.float32) / 255.0
        by_item = {position[r["source"]]: r for r in res.results}
        qnorm = dmin.connect(project).sql(  # a connection sees the files committed when it opened
            f"SELECT norm FROM query_grads_{v} WHERE query_id = '{res.query_id}' ORDER BY t_idx"
        ).fetchnumpy()["norm"]
        per_t = np.array([by_item[j]["scores"] for j in range(n)])
        order = {
            "random": np.random.default_rng(q).permutation(n).tolist(),
            "pixel": np.argsort(((pixels - image) ** 2).sum((1, 2)), kind="stable").tolist(),
            "dmin": [position[r["source"]] for r in res.results],
            "dmin_no_norm": np.argsort(-(per_t * norms * qnorm).sum(1), kind="stable").tolist(),
        }
        out["targets"].append({"label": label, "seed": seed, "image": res.image_path, "order": order})
    for lam in lams:
        dmin.build_preconditioner(project, v, lam)
        for q, (label, seed) in enumerate(targets):
            spec = dmin.QuerySpec(label=label, seed=seed)
            res = dmin.run_query(project, qsetup, spec, k=n, v=v, method="exact", precondition=True)
            out["targets"][q]["order"][f"dmin_pre_{lam:g}"] = [position[r["source"]] for r in res.results]
    cache.write_text(json.dumps(out))
    return out


def _subset(src: Path, dst: Path, count: int) -> Path:
    """The first `count` items of a metadata.jsonl folder (all of them, or the quick run's few)."""
    if count >= len((src / "metadata.jsonl").read_text().splitlines()):
        return src
    if not (dst / "metadata.jsonl").is_file():
        dst.mkdir(parents=True, exist_ok=True)
        lines = (src / "metadata.jsonl").read_text().splitlines()[:count]
        for line in lines:
            name = json.loads(line)["file_name"]
            shutil.copy(src / name, dst / name)
        (dst / "metadata.jsonl").write_text("\n".join(lines) + "\n")
    return dst


def run_setting(
    setting: Setting, work: Path, q_count: int, lams: list[float], v: str, log: Any, deadline: float = math.inf
) -> dict[str, Any]:
    work.mkdir(parents=True, exist_ok=True)
    targets = [(label, 100 + q) for q, label in enumerate([0, 2, 3, 4, 5, 6, 8, 9][:q_count])]
    model, lora = (str(work / "orig"), None) if setting.name == "base" else (str(MODEL), str(work / "orig"))
    original = work / "original.json"  # a rerun skips the original's two fits (~7 min here) and its measurements
    if original.is_file():
        saved = json.loads(original.read_text())
        ranks = rankings(setting, work, targets, lams, v)
        fit_s, control = saved["fit_seconds"], saved["control_bitwise_equal"]
        before = [(loss, np.array(image, np.float32)) for loss, image in saved["before"]]
    else:
        start = time.time()
        unet, sched, weights = fit(setting, None)
        fit_s = time.time() - start
        shutil.rmtree(work / "orig", ignore_errors=True)
        save(setting, unet, sched, work / "orig")
        _, _, again = fit(setting, np.zeros(len(setting.items), bool))  # nothing removed, through the removal path
        control = all(torch.equal(weights[k], again[k]) for k in weights)
        ranks = rankings(setting, work, targets, lams, v)
        before = [
            (target_loss(unet, sched, Image.open(t["image"]), t["label"]), generate(model, lora, t["label"], t["seed"]))
            for t in ranks["targets"]
        ]
        saved = {"fit_seconds": fit_s, "control_bitwise_equal": control, "before": [[x, i.tolist()] for x, i in before]}
        original.write_text(json.dumps(saved))
    done_path = work / "results.jsonl"
    done = {}
    if done_path.is_file():
        for line in done_path.read_text().splitlines():
            r = json.loads(line)
            done[(r["method"], r["target"], r["k"])] = r
    n = len(setting.items)
    methods = list(ranks["targets"][0]["order"])
    todo = [  # target by target: a run stopped early has both k and every method for the targets it finished
        (q, t, max(1, round(frac * n)), method)
        for q, t in enumerate(ranks["targets"])
        for frac in setting.fractions
        for method in methods
    ]
    for q, t, k, method in todo:
        if (method, q, k) in done:
            continue
        if time.time() > deadline:
            break
        removed = np.zeros(n, bool)
        removed[t["order"][method][:k]] = True
        t0 = time.time()
        new_unet, new_sched, _ = fit(setting, removed)
        loss = target_loss(new_unet, new_sched, Image.open(t["image"]), t["label"])
        folder = work / "retrained"
        shutil.rmtree(folder, ignore_errors=True)
        m, lo = save(setting, new_unet, new_sched, folder)
        image = generate(m, lo, t["label"], t["seed"])
        row = {
            "method": method,
            "target": q,
            "k": k,
            "loss_before": before[q][0],
            "loss_after": loss,
            "loss_rise": loss - before[q][0],
            "pixel_l2": float(np.sqrt(((image - before[q][1]) ** 2).sum())),
            "seconds": time.time() - t0,
        }
        with open(done_path, "a") as f:
            f.write(json.dumps(row) + "\n")
        done[(method, q, k)] = row
        log(f"{setting.name} k={k} target {q} {method}: loss rise {row['loss_rise']:+.5f} ({row['seconds']:.0f}s)")
    left = sum((method, q, k) not in done for q, _, k, method in todo)
    return {
        "train_items": n,
        "steps": setting.steps,
        "targets": [{"label": t["label"], "seed": t["seed"]} for t in ranks["targets"]],
        "fit_seconds": fit_s,
        "control_bitwise_equal": control,
        "retrains_done": len(todo) - left,
        "retrains_left": left,  # > 0: stopped by --minutes; a rerun with the same --work finishes them
        "by_k": summarize(list(done.values()), methods, n, setting.fractions),
    }


def summarize(rows: list[dict[str, Any]], methods: list[str], n: int, fractions: tuple[float, ...]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for frac in fractions:
        k = max(1, round(frac * n))
        at = [r for r in rows if r["k"] == k]
        rise = {m: {r["target"]: r["loss_rise"] for r in at if r["method"] == m} for m in methods}
        l2 = {m: {r["target"]: r["pixel_l2"] for r in at if r["method"] == m} for m in methods}
        table = {}
        for m in methods:
            table[m] = {"targets": len(rise[m]), **_stats("loss_rise", rise[m]), **_stats("pixel_l2", l2[m])}
            for other in ("random", "pixel"):
                both = [q for q in rise[m] if q in rise.get(other, {})]
                if m != other and both:
                    table[m][f"wins_vs_{other}"] = sum(rise[m][q] > rise[other][q] for q in both) / len(both)
        out[f"k={k} ({frac:.0%})"] = table
    return out


def _stats(name: str, values: dict[int, float]) -> dict[str, float | None]:
    x = np.array(list(values.values()), np.float64)
    if not len(x):
        return {f"{name}_mean": None, f"{name}_se": None}
    se = float(x.std(ddof=1) / math.sqrt(len(x))) if len(x) > 1 else None
    return {f"{name}_mean": float(x.mean()), f"{name}_se": se}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--work", type=Path, required=True, help="models, projects and results.jsonl (resumable)")
    ap.add_argument("--settings", nargs="+", default=["base", "lora"], choices=["base", "lora"])
    ap.add_argument("--targets", type=int, default=8, help="generated targets per setting (classes spread)")
    ap.add_argument("--lambdas", type=float, nargs="+", default=[0.1], help="λ of the preconditioned scorers")
    ap.add_argument("--quick", action="store_true", help="2 targets, 40 items, 8 steps: the test suite's run")
    ap.add_argument("--out", type=Path, help="also write the JSON here")
    ap.add_argument(
        "--minutes", type=float, default=math.inf, help="start no retrain after this long; report what is done"
    )
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    q_count = 2 if args.quick else args.targets
    v = "256" if args.quick else V
    report: dict[str, Any] = {"v": v, "pairs": PAIRS, "quick": args.quick}
    for setting in settings(args.quick):
        if setting.name in args.settings:
            report[setting.name] = run_setting(
                setting,
                args.work / setting.name,
                q_count,
                args.lambdas,
                v,
                lambda m: print(m, file=sys.stderr),
                deadline=time.time() + args.minutes * 60,
            )
    text = json.dumps(report, indent=2)
    if args.out:
        args.out.write_text(text + "\n")
    print(text if args.json else f"wrote {args.out or 'nothing'}")


if __name__ == "__main__":
    main()
