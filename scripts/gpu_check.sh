#!/usr/bin/env bash
# The GPU checks, for a lent CUDA machine whose python already has torch + triton (diffusers may come as wheels
# in .whl/). Runs the gpu-marked tests, then the compression benchmark and the collection benchmark of the real-size
# presets (bf16; LoRA rank 16 and full parameters); JSON to $OUT. Each step is bounded so one slow preset cannot
# eat the device time of the others.
set -uo pipefail
OUT="${OUT:-/tmp/dmin-gpu}"; mkdir -p "$OUT"
if ls .whl/*.whl >/dev/null 2>&1; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target /tmp/site .whl/*.whl
  export PYTHONPATH=/tmp/site:$PWD
else
  export PYTHONPATH=$PWD
fi
export PYTHONUNBUFFERED=1
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv
python3 -c "import torch, triton; print('torch', torch.__version__, 'triton', triton.__version__)"
timeout 300 python3 -m pytest -p no:cacheprovider -q -m gpu -o addopts="" tests/test_gpu.py 2>&1 | tail -15
timeout 120 python3 scripts/bench_compress.py --device cuda --n 1000000000 --v 4096 --json | tail -1 \
  | tee "$OUT/bench_compress_cuda.json"
for preset in sd15 sdxl sd3m flux; do
  for lora in 16 0; do
    timeout 600 python3 scripts/bench_collect.py --preset "$preset" --lora "$lora" --device cuda --dtype bfloat16 \
      --timesteps 4 --rounds 1 --json | tail -1 | tee "$OUT/bench_collect_${preset}_lora${lora}.json"
  done
done
