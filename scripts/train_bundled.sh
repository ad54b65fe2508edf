#!/usr/bin/env bash
# Reproduce the bundled model: a varied synthetic training archive and a fresh test archive (another seed) →
# catalogs → split → training (cpu preset: the unpaired CycleGAN) → checkpoint chosen on the validation patients →
# evaluation on the test archive, never used for a choice → export. Every step is a documented `denoise-node`
# command; sizes come from the environment, so the same script is a seconds-long smoke run (tests) or the run
# recorded in docs/model-card.md:
#   scripts/train_bundled.sh /work/bundled                               # 2-core CPU, ≈ 1 h 45 min
#   PAIRING=paired NAME=paired-ld2hd-synthetic scripts/train_bundled.sh /work/paired
#   PRESET=method ENGINE=fast DEVICE=cuda SYNTH_DEVICE=cuda scripts/train_bundled.sh /tmp/gpu   # scripts/train_gpu.sh
set -euo pipefail
WORK=${1:-work/bundled}
PATIENTS=${PATIENTS:-36}          # training archive: 16 + 16 training patients (LD / HD halves) and 4 validation
TEST_SLICES=${TEST_SLICES:-8}
SLICES=${SLICES:-6}
SIZE=${SIZE:-512}
SEED=${SEED:-202}
TEST_PATIENTS=${TEST_PATIENTS:-8}  # fresh test archive: quarter dose, one protocol, another seed
TEST_SEED=${TEST_SEED:-9001}
DEVICE=${DEVICE:-auto}
PRESET=${PRESET:-cpu}
PAIRING=${PAIRING:-unpaired}
ENGINE=${ENGINE:-standard}
TRAIN_SEED=${TRAIN_SEED:-1}
MAX_STEPS=${MAX_STEPS:-}
EVAL_SLICES=${EVAL_SLICES:-0}
VERSION=${VERSION:-1.0.0}
NAME=${NAME:-cyclegan-ld2hd-synthetic}
DN=${DENOISE_NODE:-denoise-node}
HERE=$(realpath -m "$WORK")
CAT="sqlite:///$HERE/train.sqlite"
TEST_CAT="sqlite:///$HERE/test.sqlite"
mkdir -p "$WORK"
step() { printf '\n== %s: %s\n' "$(date -u +%H:%M:%S)" "$*"; }

if [ ! -f "$WORK/train-archive/archive.json" ]; then
  step "synthesise the training archive: $PATIENTS patients × $SLICES slices of ${SIZE}², varied acquisitions"
  $DN synth "$WORK/train-archive" --patients "$PATIENTS" --slices "$SLICES" --size "$SIZE" --seed "$SEED" --vary \
    --device "${SYNTH_DEVICE:-cpu}"
fi
if [ ! -f "$WORK/test-archive/archive.json" ]; then
  step "synthesise the test archive: $TEST_PATIENTS patients, quarter dose, seed $TEST_SEED"
  $DN synth "$WORK/test-archive" --patients "$TEST_PATIENTS" --slices "$TEST_SLICES" --size "$SIZE" --seed "$TEST_SEED" \
    --device "${SYNTH_DEVICE:-cpu}"
fi
step "catalogs and splits (training archive: train + val; test archive: test only)"
$DN catalog scan "$WORK/train-archive" --catalog "$CAT" > /dev/null
$DN catalog split --catalog "$CAT" --seed 0 --test 0 --val 0.12
$DN catalog scan "$WORK/test-archive" --catalog "$TEST_CAT" > /dev/null
$DN catalog split --catalog "$TEST_CAT" --seed 0 --test 1 --val 0
$DN catalog list --catalog "$CAT" | tail -n 1
step "train (preset $PRESET, $PAIRING, engine $ENGINE, device $DEVICE)"
$DN train --preset "$PRESET" --pairing "$PAIRING" --engine "$ENGINE" --catalog "$CAT" --run-dir "$WORK/run" \
  --device "$DEVICE" --seed "$TRAIN_SEED" ${MAX_STEPS:+--max-steps "$MAX_STEPS"}
CKPT="$WORK/run/checkpoints/best.pt"            # chosen on the validation patients (error vs REF)
# Never ship an unchosen last.pt (issue 29): without best.pt, validation chose nothing, and that needs a look.
[ -f "$CKPT" ] || { echo "no best.pt: validation chose no checkpoint; see $WORK/run/train.log" >&2; exit 1; }
step "evaluate $(basename "$CKPT") on the fresh test archive (scorecard vs REF; baselines tuned on the training archive's val patients)"
$DN evaluate --model "$CKPT" --catalog "$TEST_CAT" --val-catalog "$CAT" --out-dir "$WORK/eval" \
  --device "$DEVICE" --max-slices "$EVAL_SLICES" --reference REF
step "export it once, with the evaluation figures embedded"
$DN model export "$CKPT" --name "$NAME" --version "$VERSION" --out-dir "$WORK/model" \
  --evaluation "$WORK/eval/evaluation.json" --activate
step "done: $WORK/model"
