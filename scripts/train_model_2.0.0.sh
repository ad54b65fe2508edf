#!/usr/bin/env bash
# Model 2.0.0 (issue 28): one network trained across the training span, bundled twice (docs/model-card.md):
#   1. archives as in scripts/train_span_ablation.sh (the training span, the in-distribution span test and the
#      out-of-distribution archive; the last two for scoring only, never for a choice);
#   2. paired 1.4.0 (taken from git, commit a1889cc, so that this runs after 2.0.0 replaced it) warm-started with a
#      zero-initialised noise-level channel and trained across the span (model-2.0.0/paired-span-warm.toml);
#   3. best.pt on the validation patients, exported; the noise targets of both bundled models chosen on the
#      validation patients (scripts/choose_noise_target.py);
#   4. each bundled model scored once on each test archive (denoise-node evaluate), and the dose sweep.
#   PATH=.venv/bin:$PATH scripts/train_model_2.0.0.sh work/m28   # 2-core CPU: ≈ 25 min of synthesis, ≈ 45 min of training alone, ≈ 30 min of scoring
# MAX_STEPS bounds the training (a smoke run is seconds long with PATIENTS=3 SLICES=2 SIZE=128 MAX_STEPS=2).
set -euo pipefail
HERE=$(cd "$(dirname "$0")" && pwd)
# shellcheck source=scripts/span_archives.sh
source "$HERE/span_archives.sh" "${1:-work/m28}"
MAX_STEPS=${MAX_STEPS:-3500}
mkdir -p "$W/init"

archives

step "paired 1.4.0, the warm start, from git"
for ext in json safetensors; do
  git -C "$HERE/.." show "a1889cc:dicom_denoise_node/model/bundled/paired-ld2hd-synthetic.$ext" \
    > "$W/init/paired-ld2hd-synthetic.$ext"
done

step "train across the span from 1.4.0 ($MAX_STEPS steps at most)"
RESUME=()
[ -f "$W/paired-span-warm/checkpoints/last.pt" ] && RESUME=(--resume "$W/paired-span-warm/checkpoints/last.pt")
$DN train --preset cpu --config "$HERE/model-2.0.0/paired-span-warm.toml" --device cpu --seed 1 \
  --catalog "sqlite:///$W/train.sqlite" --run-dir "$W/paired-span-warm" --max-steps "$MAX_STEPS" \
  --init "$W/init/paired-ld2hd-synthetic.json" "${RESUME[@]}"

step "export best.pt (chosen on the validation patients) and choose both noise targets on them"
$DN model export "$W/paired-span-warm/checkpoints/best.pt" --name span-net --version 2.0.0-rc1 --out-dir "$W/models" \
  --force > /dev/null
"${PYTHON:-python3}" "$HERE/choose_noise_target.py" "$W/models/span-net.json" --catalog "sqlite:///$W/train.sqlite" \
  --self-ensemble 1 --out "$W/targets.json"
read -r T_DEFAULT T_PAIRED < <("${PYTHON:-python3}" -c "import json,sys; c=json.load(open(sys.argv[1]))['chosen']; \
print(c['default'] or 0, c['paired'] or 0)" "$W/targets.json")
$DN model export "$W/paired-span-warm/checkpoints/best.pt" --name span-default --version 2.0.0-rc1 \
  --out-dir "$W/models" --target-noise-hu "$T_DEFAULT" --force > /dev/null
$DN model export "$W/paired-span-warm/checkpoints/best.pt" --name span-paired --version 2.0.0-rc1 \
  --out-dir "$W/models" --target-noise-hu "$T_PAIRED" --force > /dev/null

step "score each once on the in-distribution span test and on the OOD archive (baselines tuned on validation)"
for archive in span-test ood; do
  OMP_NUM_THREADS=1 $DN evaluate --model "$W/models/span-default.json" --catalog "sqlite:///$W/$archive.sqlite" \
    --val-catalog "sqlite:///$W/train.sqlite" --reference REF --out-dir "$W/eval-default-$archive" --device cpu \
    > "$W/eval-default-$archive.log" 2>&1 &
  OMP_NUM_THREADS=1 $DN evaluate --model "$W/models/span-paired.json" --catalog "sqlite:///$W/$archive.sqlite" \
    --no-baselines --reference REF --out-dir "$W/eval-paired-$archive" --device cpu \
    > "$W/eval-paired-$archive.log" 2>&1 &
  wait
done

step "dose sweep of both (the bundled models' sweep protocol)"
$DN evaluate --dose-sweep --model "$W/models/span-default.json" --model "$W/models/span-paired.json" \
  --sweep-size 512 --sweep-patients 2 --sweep-slices 2 --sweep-nlm-h 5 --device cpu --out-dir "$W/dose-sweep-2.0.0"
