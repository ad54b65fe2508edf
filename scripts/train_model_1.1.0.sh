#!/usr/bin/env bash
# The commands that produced paired-ld2hd-synthetic 1.1.0 (2026-11-30, docs/model-card.md), on the 2-core CPU, from
# the work folder of scripts/train_model_1.0.0.sh (its archives, catalogs and paired run paired1):
#   continue paired1's best.pt (step 600) with model-1.1.0/paired.toml (λ_lesion 0.1, EMA 0.995, adversarial 0.02)
#   to step 1 200; best.pt = step 800 (the lowest validation error; steps 900–1 200 were higher). The run that
#   produced it was stopped at ≈ 1 250; resuming is exact, so --max-steps 1200 gives the same best.pt.
#   scripts/train_model_1.1.0.sh work/model-1.0.0
set -euo pipefail
# shellcheck source=scripts/model_work.sh
source "$(dirname "$0")/model_work.sh" "$@"
[ -f "$WORK/paired1/checkpoints/best.pt" ] || { echo "run scripts/train_model_1.0.0.sh $WORK first" >&2; exit 2; }
$DN train --preset cpu --config "$HERE/model-1.1.0/paired.toml" --catalog "$CAT" --run-dir "$WORK/paired3" \
  --device cpu --seed 1 --resume "$WORK/paired1/checkpoints/best.pt" --max-steps 1200
$DN model export "$WORK/paired3/checkpoints/best.pt" --name paired-ld2hd-synthetic --version 1.1.0 --out-dir "$WORK/models"
$DN evaluate --model "$WORK/models/paired-ld2hd-synthetic.json" --catalog "$TEST_CAT" --no-baselines \
  --reference REF --out-dir "$WORK/eval-paired-1.1.0" --device cpu
$DN model export "$WORK/paired3/checkpoints/best.pt" --name paired-ld2hd-synthetic --version 1.1.0 \
  --out-dir "$WORK/models" --evaluation "$WORK/eval-paired-1.1.0/evaluation.json"
