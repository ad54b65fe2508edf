#!/usr/bin/env bash
# Issue 28: the noise-level conditioning ablation on the training span, and both test archives.
#   1. archives: the training span (train + validation patients), a fresh in-distribution span test archive and
#      the out-of-distribution archive (synth --ood: a kernel, geometry, pixel size and dose never trained);
#   2. arm A (paired-span.toml) and arm B (paired-span-cond.toml, noise_conditioning) trained alike, side by side,
#      then both continued with a warm restart (*-cont.toml);
#   3. the choice between them on the validation patients only (validation.json of each run);
#   4. the chosen arm exported and scored once on the in-distribution test archive and once on the OOD archive.
#      Nothing is ever chosen on either test archive.
#   scripts/train_span_ablation.sh work/m28            # 2-core CPU: ≈ 25 min of synthesis, then ≈ 45 min of training (both arms side by side)
# Sizes and steps come from the environment (MAX_STEPS, PATIENTS, SLICES), so a smoke run is seconds long.
set -euo pipefail
HERE=$(cd "$(dirname "$0")" && pwd)
# shellcheck source=scripts/span_archives.sh
source "$HERE/span_archives.sh" "${1:-work/m28}"
MAX_STEPS=${MAX_STEPS:-600}
MAX_STEPS2=${MAX_STEPS2:-1800}        # stage 2 (the -cont recipes' 12 epochs of 150 steps)
THREADS=${THREADS:-1}                 # per training arm: the two arms run side by side

archives

step "train arms A (no conditioning) and B (noise_conditioning), $MAX_STEPS steps each, side by side"
for arm in paired-span paired-span-cond; do
  OMP_NUM_THREADS=$THREADS $DN train --preset cpu --config "$HERE/model-2.0.0/$arm.toml" --device cpu --seed 1 \
    --catalog "sqlite:///$W/train.sqlite" --run-dir "$W/$arm" --max-steps "$MAX_STEPS" > "$W/$arm.log" 2>&1 &
done
wait

step "stage 2: both arms continued from step $MAX_STEPS with a warm restart (model-2.0.0/*-cont.toml) to $MAX_STEPS2"
for arm in paired-span paired-span-cond; do
  OMP_NUM_THREADS=$THREADS $DN train --preset cpu --config "$HERE/model-2.0.0/$arm-cont.toml" --device cpu --seed 1 \
    --catalog "sqlite:///$W/train.sqlite" --run-dir "$W/$arm-cont" --resume "$W/$arm/checkpoints/last.pt" \
    --max-steps "$MAX_STEPS2" > "$W/$arm-cont.log" 2>&1 &
done
wait

step "the choice, on the validation patients only (lowest validation error vs REF of each arm)"
python3 - "$W" <<'PY'
import json, sys, pathlib
w = pathlib.Path(sys.argv[1])
best = {}
for arm in ("paired-span-cont", "paired-span-cond-cont"):
    curve = json.loads((w / arm / "validation.json").read_text())["curve"]
    row = min(curve, key=lambda r: r["val_error_hu"])
    best[arm] = row["val_error_hu"]
    print(f"{arm}: best validation error {row['val_error_hu']:.2f} HU at step {row['step']} "
          f"(× HD's {row['val_error_vs_hd']:.3f}, bias {row['val_bias_hu']:+.2f} HU)")
chosen = min(best, key=best.get)
(w / "chosen").write_text(chosen + "\n")
print("chosen:", chosen)
PY
ARM=$(cat "$W/chosen")

step "export $ARM, then score it once on each test archive (never used for a choice)"
CKPT="$W/$ARM/checkpoints/best.pt"   # stage 2 writes best.pt only when it beats stage 1's best
[ -f "$CKPT" ] || CKPT="$W/${ARM%-cont}/checkpoints/best.pt"
$DN model export "$CKPT" --name paired-span --version 2.0.0-rc --out-dir "$W/models"
for test in span-test ood; do
  $DN evaluate --model "$W/models/paired-span.json" --catalog "sqlite:///$W/$test.sqlite" \
    --val-catalog "sqlite:///$W/train.sqlite" --reference REF --out-dir "$W/eval-$test" --device cpu
done
step "done"
