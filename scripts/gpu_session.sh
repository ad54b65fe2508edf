#!/usr/bin/env bash
# One prepared run on a lent GPU machine (see docs/benchmarks.md and docs/model-card.md for what it produced):
#   1. inference and training benchmarks on the GPU;
#   2. the bundled model: scripts/train_bundled.sh with the cpu preset on the GPU (same commands as on a CPU).
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
if [ -z "${EPOCHS:-}" ]; then
{
  timeout 120 python3 -m bench.inference --slices 32 --filters 32 64 --batch 4 16 --tile 272 --overlap 32 \
    --device cuda --json "$OUT/bench-inference.json"
  timeout 150 python3 -m bench.train --preset cpu method --steps 30 --device cuda --json "$OUT/bench-train.json"
} 2>&1 | tee -a "$OUT/bench.log"
# Epochs for the bundled model: as many as ~170 s of training allow at the measured rate (recorded in the model's
# metadata and the model card; the same --epochs reproduces it anywhere).
EPOCHS=$(python3 - "$OUT/bench-train.json" <<'PY'
import json, sys
rows = {r["preset"]: r for r in json.load(open(sys.argv[1]))["rows"]}
rate = rows["cpu"]["trainer_samples_per_s"]
iters = (10 * 24 * 16) // 8          # ≈ LD training slices × patches_per_slice / batch for 24 patients × 24 slices
print(max(3, min(20, int(170 * rate / (iters * 8)))))
PY
)
fi
echo "epochs for the bundled model: $EPOCHS" | tee -a "$OUT/bench.log"
PATIENTS=24 SLICES=24 SIZE=512 DEVICE=cuda SYNTH_DEVICE=cuda EPOCHS=$EPOCHS EVAL_SLICES=48 \
  DENOISE_NODE=denoise-node timeout 500 bash scripts/train_bundled.sh /tmp/bundled 2>&1 | tail -60 | tee "$OUT/train.log"
cp /tmp/bundled/model/cyclegan-ld2hd-synthetic.safetensors /tmp/bundled/model/cyclegan-ld2hd-synthetic.json \
  /tmp/bundled/eval/evaluation.json /tmp/bundled/eval/montage.png "$OUT/" 2>/dev/null
ls -la "$OUT"
