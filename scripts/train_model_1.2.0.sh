#!/usr/bin/env bash
# The commands that produced paired-ld2hd-synthetic 1.2.0 (2026-11-30, docs/model-card.md) on the 2-core CPU, from
# the work folder of scripts/train_model_1.0.0.sh (its archives and catalogs: train.sqlite = seed 202 with --vary,
# test.sqlite = seed 9001, never used for a choice):
#   stage 1: paired training from scratch, 48 filters × 10 layers, 1 600 steps (model-1.2.0/stage1.toml);
#   stage 2: stage 1's best.pt (step 1 600) continued to step 2 000 at a lower learning rate (stage2.toml);
#   best.pt = step 2 000, exported, scored once on the test archive.
# ≈ 25 min of training alone on this CPU (it ran for ≈ 50 min beside the test suite). Float sums on CPU depend on
# the thread count, so a rerun reaches the same curve to within a few hundredths of a HU, not bit for bit.
#   scripts/train_model_1.2.0.sh work/model-1.0.0
set -euo pipefail
# shellcheck source=scripts/model_work.sh
source "$(dirname "$0")/model_work.sh" "$@"
[ -f "$WORK/train.sqlite" ] || { echo "run scripts/train_model_1.0.0.sh $WORK first (archives and catalogs)" >&2; exit 2; }
$DN train --preset cpu --config "$HERE/model-1.2.0/stage1.toml" --catalog "$CAT" --run-dir "$WORK/paired7" \
  --device cpu --seed 1
$DN train --preset cpu --config "$HERE/model-1.2.0/stage2.toml" --catalog "$CAT" --run-dir "$WORK/paired8" \
  --device cpu --seed 1 --resume "$WORK/paired7/checkpoints/best.pt" --max-steps 2000
$DN model export "$WORK/paired8/checkpoints/best.pt" --name paired-ld2hd-synthetic --version 1.2.0 --out-dir "$WORK/models"
$DN evaluate --model "$WORK/models/paired-ld2hd-synthetic.json" --catalog "$TEST_CAT" --no-baselines \
  --reference REF --out-dir "$WORK/eval-paired-1.2.0" --device cpu
$DN model export "$WORK/paired8/checkpoints/best.pt" --name paired-ld2hd-synthetic --version 1.2.0 \
  --out-dir "$WORK/models" --evaluation "$WORK/eval-paired-1.2.0/evaluation.json"
