#!/usr/bin/env bash
# The final figures of the bundled models (thirteenth session): a second fresh test archive, made with a new seed
# after every choice was made on the validation patients, scored once per bundled model. The first test archive
# (seed 9001) had scored six candidates over the sessions; this one has scored nothing else.
#   paired-ld2hd-synthetic 1.4.0 = 1.3.0's weights (paired 13, step 7 400) run at self-ensemble 8 (chosen on
#   validation: 6.2 → 5.8 HU, 41.46 → 42.03 dB, lesions lost 9/45 both).
#   cyclegan-ld2hd-synthetic 1.1.0 (unchanged), with the classical baselines tuned on the validation patients.
# Needs scripts/train_model_1.0.0.sh … scripts/train_paired_1.3.0.sh run first in the same work folder.
# Usage: scripts/score_test2.sh [WORK]   (≈ 40 min on a 2-core CPU: paired × 8 ≈ 20 min, CycleGAN + baselines ≈ 20)
set -euo pipefail
# shellcheck source=scripts/model_work.sh
source "$(dirname "$0")/model_work.sh" "$@"
[ -f "$WORK/paired13/checkpoints/best.pt" ] || { echo "run scripts/train_paired_1.3.0.sh $WORK first" >&2; exit 2; }
[ -f "$WORK/test2-archive/archive.json" ] || $DN synth "$WORK/test2-archive" --patients 8 --slices 8 --size 512 --seed 9101
$DN catalog scan "$WORK/test2-archive" --catalog "$TEST2_CAT" > /dev/null
$DN catalog split --catalog "$TEST2_CAT" --seed 0 --test 1 --val 0
$DN model export "$WORK/paired13/checkpoints/best.pt" --name paired-ld2hd-synthetic --version 1.4.0 \
  --out-dir "$WORK/models" --self-ensemble 8
$DN evaluate --model "$WORK/models/paired-ld2hd-synthetic.json" --catalog "$CAT" --role val --no-baselines \
  --reference REF --out-dir "$WORK/eval-val-paired-1.4.0" --device cpu
$DN evaluate --model "$WORK/models/paired-ld2hd-synthetic.json" --catalog "$TEST2_CAT" --no-baselines \
  --reference REF --out-dir "$WORK/eval2-paired-1.4.0" --device cpu
$DN model export "$WORK/paired13/checkpoints/best.pt" --name paired-ld2hd-synthetic --version 1.4.0 \
  --out-dir "$WORK/models" --self-ensemble 8 --evaluation "$WORK/eval2-paired-1.4.0/evaluation.json"
$DN evaluate --model "$WORK/models/cyclegan-ld2hd-synthetic.json" --catalog "$TEST2_CAT" --val-catalog "$CAT" \
  --reference REF --out-dir "$WORK/eval2-cyclegan-1.1.0" --device cpu
