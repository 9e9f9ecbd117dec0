#!/usr/bin/env python
"""What fingerprinting a large model costs on the first and the second call, and whether a changed weight file is
still caught (JSON last).

Builds a pipeline-shaped directory (model_index.json, a UNet config and a sparse weight file of --gb GiB, so the
disk holds almost nothing), fingerprints it once (every byte read and hashed), again (the stat-keyed digest cache),
then rewrites one byte of the weights in place, sets the file's mtime back, and fingerprints a third time.
Reports fingerprint_first_s, fingerprint_second_s, second_vs_first, changed_detected, changed_s. Target: the second
call under 0.2 s for 5 GiB.
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from pathlib import Path

from dmin.models.load import model_fingerprint


def build(root: Path, gib: float) -> dict:
    index = {"_class_name": "StableDiffusionPipeline", "unet": ["diffusers", "UNet2DConditionModel"]}
    (root / "unet").mkdir(parents=True)
    (root / "model_index.json").write_text(json.dumps(index))
    (root / "unet" / "config.json").write_text(json.dumps({"sample_size": 64}))
    weights = root / "unet" / "diffusion_pytorch_model.safetensors"
    with open(weights, "wb") as f:
        f.write(os.urandom(1 << 20))
        f.truncate(int(gib * 2**30))
    return index


def timed(root: Path, index: dict) -> tuple[str, float]:
    t = time.perf_counter()
    fp = model_fingerprint(root, index)
    return fp, time.perf_counter() - t


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--gb", type=float, default=5.0, help="size of the weight file in GiB (sparse)")
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory(dir=os.environ.get("TMPDIR", "/tmp")) as tmp:
        os.environ["DMIN_CACHE_DIR"] = str(Path(tmp) / "cache")
        root = Path(tmp) / "model"
        index = build(root, args.gb)
        first, first_s = timed(root, index)
        second, second_s = timed(root, index)
        weights = root / "unet" / "diffusion_pytorch_model.safetensors"
        st = weights.stat()
        with open(weights, "r+b") as f:  # one byte changed in place; size and mtime kept as they were
            f.seek(12345)
            byte = f.read(1)
            f.seek(12345)
            f.write(bytes([byte[0] ^ 0xFF]))
        os.utime(weights, ns=(st.st_atime_ns, st.st_mtime_ns))
        changed, changed_s = timed(root, index)
    result = {
        "model_gb": args.gb,
        "fingerprint_first_s": round(first_s, 4),
        "fingerprint_second_s": round(second_s, 5),
        "second_vs_first": round(second_s / first_s, 6),
        "second_equal": first == second,
        "changed_detected": changed != first,
        "changed_s": round(changed_s, 4),
    }
    if not args.json:
        for k, v in result.items():
            print(f"{k:>22}: {v}")
    print(json.dumps(result))


if __name__ == "__main__":
    main()
