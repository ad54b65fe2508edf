#!/usr/bin/env bash
# The commands that produced paired-ld2hd-synthetic 1.3.0 (2026-11-30, docs/model-card.md) on the 2-core CPU, from
# the work folder of scripts/train_model_1.2.0.sh (its archives, catalogs and 1.2.0's stage 2, paired8):
#   paired 12: 1.2.0 (step 2 000) continued to step 3 600 with a warm restart of the learning rate
#              (scripts/ablations/paired12-restart.toml);
#   paired 13: paired 12's last checkpoint (step 3 600) continued to step 7 600 with a second, longer restart
#              (scripts/ablations/paired13-longer.toml);
#   best.pt = paired 13's lowest validation error, compared with 1.2.0 on every validation slice, then scored once on
#   the test archive.
# ≈ 65 min of training alone on this CPU (0.67 s per step with the validations). Float sums on CPU depend on the thread count, so a rerun
# reaches the same curve to within a few hundredths of a HU, not bit for bit.
#   scripts/train_paired_1.3.0.sh work/model-1.0.0
set -euo pipefail
# shellcheck source=scripts/model_work.sh
source "$(dirname "$0")/model_work.sh" "$@"
[ -f "$WORK/paired8/checkpoints/best.pt" ] || { echo "run scripts/train_model_1.2.0.sh $WORK first (paired8)" >&2; exit 2; }
$DN train --preset cpu --config "$HERE/ablations/paired12-restart.toml" --catalog "$CAT" --run-dir "$WORK/paired12" \
  --device cpu --seed 1 --resume "$WORK/paired8/checkpoints/best.pt" --max-steps 3600
$DN train --preset cpu --config "$HERE/ablations/paired13-longer.toml" --catalog "$CAT" --run-dir "$WORK/paired13" \
  --device cpu --seed 1 --resume "$WORK/paired12/checkpoints/epoch-009.pt" --max-steps 7600
$DN model export "$WORK/paired13/checkpoints/best.pt" --name paired-ld2hd-synthetic --version 1.3.0 --out-dir "$WORK/models"
$DN evaluate --model "$WORK/models/paired-ld2hd-synthetic.json" --catalog "$CAT" --role val --no-baselines \
  --reference REF --out-dir "$WORK/eval-val-paired-1.3.0" --device cpu
$DN evaluate --model "$WORK/models/paired-ld2hd-synthetic.json" --catalog "$TEST_CAT" --no-baselines \
  --reference REF --out-dir "$WORK/eval-paired-1.3.0" --device cpu
$DN model export "$WORK/paired13/checkpoints/best.pt" --name paired-ld2hd-synthetic --version 1.3.0 \
  --out-dir "$WORK/models" --evaluation "$WORK/eval-paired-1.3.0/evaluation.json"
