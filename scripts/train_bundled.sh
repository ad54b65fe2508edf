#!/usr/bin/env bash
# Reproduce the bundled model: synthetic archive → catalog → split → CycleGAN (cpu preset) → evaluate → export.
# Every step is a documented `denoise-node` command; sizes come from the environment so the same script runs as a
# seconds-long smoke (tests) or the full run recorded in docs/model-card.md.
#   PATIENTS=24 SLICES=24 SIZE=512 DEVICE=cpu scripts/train_bundled.sh work/bundled
set -euo pipefail
WORK=${1:-work/bundled}
PATIENTS=${PATIENTS:-24}
SLICES=${SLICES:-24}
SIZE=${SIZE:-512}
SEED=${SEED:-0}
DEVICE=${DEVICE:-auto}
PRESET=${PRESET:-cpu}
EPOCHS=${EPOCHS:-}
EVAL_SLICES=${EVAL_SLICES:-0}
VERSION=${VERSION:-1.0.0}
NAME=${NAME:-cyclegan-ld2hd-synthetic}
DN=${DENOISE_NODE:-denoise-node}
CAT="sqlite:///$(realpath -m "$WORK")/archive.sqlite"
mkdir -p "$WORK"
step() { printf '\n== %s: %s\n' "$(date -u +%H:%M:%S)" "$*"; }

step "synthesise $PATIENTS patients × $SLICES slices of ${SIZE}²"
$DN synth "$WORK/archive" --patients "$PATIENTS" --slices "$SLICES" --size "$SIZE" --seed "$SEED" --device "${SYNTH_DEVICE:-cpu}"
step "catalog scan + split"
$DN catalog scan "$WORK/archive" --catalog "$CAT"
$DN catalog split --catalog "$CAT" --seed "$SEED"
step "train (preset $PRESET, device $DEVICE)"
$DN train --preset "$PRESET" --catalog "$CAT" --run-dir "$WORK/run" --device "$DEVICE" --seed "$SEED" \
  ${EPOCHS:+--epochs "$EPOCHS"}
step "export (without figures) so that evaluate can load it"
$DN model export "$WORK/run/checkpoints/last.pt" --name "$NAME" --version "$VERSION" --out-dir "$WORK/model"
step "evaluate on the paired test split (model through the node's tiler; Gaussian and NLM baselines)"
$DN evaluate --model "$WORK/model/$NAME.json" --catalog "$CAT" --out-dir "$WORK/eval" --device "$DEVICE" \
  --max-slices "$EVAL_SLICES"
step "export again with the evaluation figures embedded"
$DN model export "$WORK/run/checkpoints/last.pt" --name "$NAME" --version "$VERSION" --out-dir "$WORK/model" \
  --evaluation "$WORK/eval/evaluation.json" --activate
step "done: $WORK/model"
