#!/usr/bin/env bash
# The GPU checks, for a lent CUDA machine whose python already has torch + triton (diffusers may come as wheels
# in .whl/). Runs the gpu-marked tests, then the compression and collection benchmarks on CUDA; JSON to $OUT.
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
python3 -m pytest -p no:cacheprovider -q -m gpu -o addopts="" tests/test_gpu.py 2>&1 | tail -15
python3 scripts/bench_compress.py --device cuda --n 1000000000 --v 4096 --json | tail -1 | tee "$OUT/bench_compress_cuda.json"
python3 scripts/bench_collect.py --preset sd15 --device cuda --dtype bfloat16 --timesteps 4 --json | tail -1 \
  | tee "$OUT/bench_collect_sd15.json"
python3 scripts/bench_collect.py --preset sd3m --device cuda --dtype bfloat16 --timesteps 4 --json | tail -1 \
  | tee "$OUT/bench_collect_sd3m.json"
