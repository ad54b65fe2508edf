#!/usr/bin/env bash
# The commands that produced the bundled model cyclegan-ld2hd-synthetic 0.1.0 (2026-11-26, docs/model-card.md),
# in order. About 18 min of synthesis and 1 h 40 min of training on a 2-core CPU. Every stage resumes exactly from
# the previous checkpoint (models, optimizers, schedulers, pools, RNG), so the result is reproducible on CPU.
#   scripts/train_model_0.1.0.sh work/model-0.1.0
set -euo pipefail
WORK=${1:-work/model-0.1.0}
DN=${DENOISE_NODE:-denoise-node}
HERE=$(cd "$(dirname "$0")" && pwd)
CAT="sqlite:///$(realpath -m "$WORK")/archive.sqlite"
RUN="$WORK/run"
mkdir -p "$WORK"
$DN synth "$WORK/archive" --patients 40 --slices 6 --size 512 --seed 1
$DN catalog scan "$WORK/archive" --catalog "$CAT"
$DN catalog split --catalog "$CAT" --seed 1
# Stage 1 (run 7): the cpu preset (lambda_cycle 5), 8 epochs planned, 3 run (576 steps, ends with epoch-003.pt).
$DN train --preset resnet-cpu --catalog "$CAT" --run-dir "$RUN" --seed 1 --epochs 8 --max-steps 576 --device cpu
# Stage 2: smooth-L1 cycle term, 10 epochs planned, to step 680.
$DN train --preset resnet-cpu --config "$HERE/model-0.1.0/stage2.toml" --catalog "$CAT" --run-dir "$RUN" --seed 1 \
  --resume "$RUN/checkpoints/epoch-003.pt" --max-steps 680 --device cpu
# Stage 3 (run 7b): lambda_cycle 1, lambda_fidelity 0.2, to step 1350.
$DN train --preset resnet-cpu --config "$HERE/model-0.1.0/stage3.toml" --catalog "$CAT" --run-dir "$RUN" --seed 1 \
  --resume "$RUN/checkpoints/step-0000680.pt" --max-steps 1350 --device cpu
$DN model export "$RUN/checkpoints/step-0001350.pt" --name cyclegan-ld2hd-synthetic --version 0.1.0 \
  --out-dir "$WORK/model"
$DN evaluate --model "$WORK/model/cyclegan-ld2hd-synthetic.json" --catalog "$CAT" --out-dir "$WORK/eval" --device cpu
$DN model export "$RUN/checkpoints/step-0001350.pt" --name cyclegan-ld2hd-synthetic --version 0.1.0 \
  --out-dir "$WORK/model" --evaluation "$WORK/eval/evaluation.json" --activate
