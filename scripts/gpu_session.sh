#!/usr/bin/env bash
# One prepared run on a lent GPU machine (see docs/benchmarks.md and docs/model-card.md for what it produced):
#   1. inference and training benchmarks on the GPU;
#   2. the GPU recipe: scripts/train_gpu.sh (the method's preset, the fast engine), synthesis to evaluation.
# Usage there: bash scripts/gpu_session.sh "$OUT"
set -uo pipefail
OUT=${1:-/tmp/gpu-out}
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl || exit 1
python3 -m pip install -q --no-index --no-deps --no-build-isolation --no-compile --upgrade --target /tmp/site . || exit 1
export PYTHONPATH=/tmp/site:$PWD PATH=/tmp/site/bin:$PATH
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv | tee "$OUT/bench.log"
python3 -c 'import torch; print("torch", torch.__version__, torch.cuda.get_device_name(0))' | tee -a "$OUT/bench.log"
{
  timeout 120 python3 -m bench.inference --slices 32 --filters 32 64 --batch 4 16 --tile 272 --overlap 32 \
    --device cuda --json "$OUT/bench-inference.json"
  timeout 150 python3 -m bench.train --preset cpu method --steps 30 --device cuda --json "$OUT/bench-train.json"
} 2>&1 | tee -a "$OUT/bench.log"
# The GPU recipe: the method's preset and scale with the fast engine, synthesis to evaluation (scripts/train_gpu.sh).
DENOISE_NODE=denoise-node LIMIT_S=${LIMIT_S:-560} bash scripts/train_gpu.sh /tmp/gpu 2>&1 | tail -80 | tee "$OUT/train.log"
cp /tmp/gpu/model/*.safetensors /tmp/gpu/model/*.json /tmp/gpu/eval/scorecard.* /tmp/gpu/eval/evaluation.json \
  /tmp/gpu/run/validation.json /tmp/gpu/eval/montage.png "$OUT/" 2>/dev/null
ls -la "$OUT"
