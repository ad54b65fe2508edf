#!/usr/bin/env bash
# Issue 15's suspected causes 1, 3 and 4, each as run 4 (stage 1 of cyclegan 1.0.0: the cpu preset, seed 1) with one
# change, 600 steps (200 discriminator warm-up + 400), scored on the validation patients every 100 steps. Compare
# each run's validation.json with run 4's (docs/model-card.md, "Ablations"). ≈ 7 min per run alone on the 2-core CPU (2026-11-30: the three in 21 min).
#   cause 1: instance norm in the generator (scripts/ablations/cause1-instance-norm.toml);
#   cause 3: a zero-initialised last layer (scripts/ablations/cause3-zero-head.toml);
#   cause 4: half the training patients (8 LD + 8 HD of 16 + 16): a copy of the catalog where the other half's
#            split role is 'test', which training never reads; the validation patients stay the same.
#   scripts/ablate_causes.sh work/model-1.0.0
set -euo pipefail
# shellcheck source=scripts/model_work.sh
source "$(dirname "$0")/model_work.sh" "$@"
[ -f "$WORK/train.sqlite" ] || { echo "run scripts/train_model_1.0.0.sh $WORK first (archives and catalogs)" >&2; exit 2; }
STEPS=${STEPS:-600}
$DN train --preset cpu --config "$HERE/ablations/cause1-instance-norm.toml" --catalog "$CAT" \
  --run-dir "$WORK/ablate-cause1" --device cpu --seed 1 --max-steps "$STEPS"
$DN train --preset cpu --config "$HERE/ablations/cause3-zero-head.toml" --catalog "$CAT" \
  --run-dir "$WORK/ablate-cause3" --device cpu --seed 1 --max-steps "$STEPS"
cp "$W/train.sqlite" "$W/train-half.sqlite"
for role in train_ld train_hd; do
  sqlite3 "$W/train-half.sqlite" "UPDATE splits SET role = 'test' WHERE id IN
    (SELECT id FROM splits WHERE role = '$role' ORDER BY patient_fk LIMIT 8)"
done
$DN catalog list --catalog "sqlite:///$W/train-half.sqlite" | tail -n 8
$DN train --preset cpu --catalog "sqlite:///$W/train-half.sqlite" --run-dir "$WORK/ablate-cause4" --device cpu \
  --seed 1 --max-steps "$STEPS"
