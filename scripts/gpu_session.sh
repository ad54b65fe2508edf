#!/usr/bin/env bash
# One prepared run on a lent GPU machine (see docs/benchmarks.md and docs/model-card.md for what it produced):
#   1. inference and training benchmarks on the GPU;
#   2. the GPU recipe: scripts/train_gpu.sh (the method's preset, the fast engine), synthesis to evaluation.
# Prepare here first: bash scripts/gpu_wheels.sh (the packages the GPU image lacks, into .whl/), then on the device:
#   run(command='bash scripts/gpu_session.sh "$OUT"', carry=[".whl"])
# Time: synthesis has its own limit (SYNTH_LIMIT_S), so LIMIT_S (train_gpu.sh) is training plus evaluation only.
set -uo pipefail
OUT=${1:-/tmp/gpu-out}
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1
[ -n "$(ls .whl/*.whl 2>/dev/null)" ] || { echo "no .whl/: run scripts/gpu_wheels.sh here and carry .whl" >&2; exit 1; }
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl || exit 1
# The three parts (node, trainer, harness with the demo and bench's peers), without their dependencies: the image
# and .whl/ hold those.
python3 -m pip install -q --no-index --no-deps --no-build-isolation --no-compile --upgrade --target /tmp/site \
  . ./trainer ./harness || exit 1
export PYTHONPATH=/tmp/site:$PWD PATH=/tmp/site/bin:$PATH
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv | tee "$OUT/bench.log"
python3 -c 'import torch; print("torch", torch.__version__, torch.cuda.get_device_name(0))' | tee -a "$OUT/bench.log"
{
  timeout 120 python3 -m bench.inference --slices 32 --filters 32 64 --batch 4 16 --tile 272 --overlap 32 \
    --device cuda --json "$OUT/bench-inference.json"
  timeout 150 python3 -m bench.train --preset cpu method --steps 30 --device cuda --json "$OUT/bench-train.json"
} 2>&1 | tee -a "$OUT/bench.log"
# The GPU recipe: the method's preset and scale with the fast engine (scripts/train_gpu.sh). Its archives are made
# first, under their own limit, so that LIMIT_S bounds training and evaluation alone (train_bundled.sh skips an
# archive that exists).
export PATIENTS=${PATIENTS:-40} SLICES=${SLICES:-24} SIZE=${SIZE:-512} TEST_PATIENTS=${TEST_PATIENTS:-8}
timeout "${SYNTH_LIMIT_S:-240}" denoise-node synth /tmp/gpu/train-archive --patients "$PATIENTS" --slices "$SLICES" \
  --size "$SIZE" --seed 202 --vary --device cuda 2>&1 | tail -3 | tee "$OUT/synth.log"
timeout "${SYNTH_LIMIT_S:-240}" denoise-node synth /tmp/gpu/test-archive --patients "$TEST_PATIENTS" --slices 8 \
  --size "$SIZE" --seed 9001 --device cuda 2>&1 | tail -3 | tee -a "$OUT/synth.log"
DENOISE_NODE=denoise-node LIMIT_S=${LIMIT_S:-560} bash scripts/train_gpu.sh /tmp/gpu 2>&1 | tail -80 | tee "$OUT/train.log"
cp /tmp/gpu/model/*.safetensors /tmp/gpu/model/*.json /tmp/gpu/eval/scorecard.* /tmp/gpu/eval/evaluation.json \
  /tmp/gpu/run/validation.json /tmp/gpu/eval/montage.png "$OUT/" 2>/dev/null
ls -la "$OUT"
