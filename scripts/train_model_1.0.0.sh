#!/usr/bin/env bash
# The commands that produced the bundled models 1.0.0 (2026-11-30, docs/model-card.md), on the 2-core CPU:
#   cyclegan-ld2hd-synthetic 1.0.0: stage 1 = the cpu preset to step 1000 (run 4); stage 2 = resumed with the cycle
#     and identity weights halved (stage2.toml) to step 2200 (run 5); best.pt (lowest error vs REF on the
#     validation patients) = step 2200.
#   paired-ld2hd-synthetic 1.0.0: paired mode (paired.toml), best.pt = step 600.
# Run 5 itself went on to step 2800 and was stopped; resuming is exact, so stopping at 2200 gives the same best.pt.
#   scripts/train_model_1.0.0.sh work/model-1.0.0
set -euo pipefail
# shellcheck source=scripts/model_work.sh
source "$(dirname "$0")/model_work.sh" "$@"
mkdir -p "$WORK"
[ -f "$WORK/train-archive/archive.json" ] || $DN synth "$WORK/train-archive" --patients 36 --slices 6 --size 512 --seed 202 --vary
[ -f "$WORK/test-archive/archive.json" ] || $DN synth "$WORK/test-archive" --patients 8 --slices 8 --size 512 --seed 9001
$DN catalog scan "$WORK/train-archive" --catalog "$CAT" > /dev/null
$DN catalog split --catalog "$CAT" --seed 0 --test 0 --val 0.12
$DN catalog scan "$WORK/test-archive" --catalog "$TEST_CAT" > /dev/null
$DN catalog split --catalog "$TEST_CAT" --seed 0 --test 1 --val 0
$DN train --preset cpu --catalog "$CAT" --run-dir "$WORK/run4" --device cpu --seed 1 --max-steps 1000
$DN train --preset cpu --config "$HERE/model-1.0.0/stage2.toml" --catalog "$CAT" --run-dir "$WORK/run5" --device cpu \
  --seed 1 --resume "$WORK/run4/checkpoints/epoch-001.pt" --max-steps 2200
$DN train --preset cpu --config "$HERE/model-1.0.0/paired.toml" --catalog "$CAT" --run-dir "$WORK/paired1" \
  --device cpu --seed 1 --max-steps 600
for m in cyclegan:run5 paired:paired1; do
  name=${m%%:*}-ld2hd-synthetic run=${m#*:}
  $DN model export "$WORK/$run/checkpoints/best.pt" --name "$name" --version 1.0.0 --out-dir "$WORK/models"
done
$DN evaluate --model "$WORK/models/cyclegan-ld2hd-synthetic.json" --catalog "$TEST_CAT" --val-catalog "$CAT" \
  --reference REF --out-dir "$WORK/eval-cyclegan" --device cpu
$DN evaluate --model "$WORK/models/paired-ld2hd-synthetic.json" --catalog "$TEST_CAT" --no-baselines \
  --reference REF --out-dir "$WORK/eval-paired" --device cpu
$DN model export "$WORK/run5/checkpoints/best.pt" --name cyclegan-ld2hd-synthetic --version 1.0.0 \
  --out-dir "$WORK/models" --evaluation "$WORK/eval-cyclegan/evaluation.json" --activate
$DN model export "$WORK/paired1/checkpoints/best.pt" --name paired-ld2hd-synthetic --version 1.0.0 \
  --out-dir "$WORK/models" --evaluation "$WORK/eval-paired/evaluation.json"
