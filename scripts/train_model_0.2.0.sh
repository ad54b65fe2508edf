#!/usr/bin/env bash
# The commands that produced the bundled model cyclegan-ld2hd-synthetic 0.2.0 (2026-11-26, docs/model-card.md):
# the whole of 0.1.0 (scripts/train_model_0.1.0.sh: synthesis, catalog, stages 1-3 to step 1350), then stage 4
# (run 8) from step 1350 to step 1536 = the end of epoch 8, with the schedule extended to 14 epochs. About 15 min
# more of training on a 2-core CPU. Every stage resumes exactly (models, optimizers, schedulers, pools, RNG), so
# stopping at step 1536 yields epoch-008.pt as the longer run 8 saved it (the script itself was not re-run end
# to end; epochs 9-11 were worse on the
# validation patients: docs/model-card.md).
#   scripts/train_model_0.2.0.sh work/model-0.2.0
set -euo pipefail
WORK=${1:-work/model-0.2.0}
DN=${DENOISE_NODE:-denoise-node}
HERE=$(cd "$(dirname "$0")" && pwd)
CAT="sqlite:///$(realpath -m "$WORK")/archive.sqlite"
RUN="$WORK/run"
"$HERE/train_model_0.1.0.sh" "$WORK"
# Stage 4 (run 8): stage 3's terms, 14 epochs planned (decay from epoch 11), kept at the end of epoch 8.
$DN train --preset resnet-cpu --config "$HERE/model-0.2.0/stage4.toml" --catalog "$CAT" --run-dir "$RUN" --seed 1 \
  --resume "$RUN/checkpoints/step-0001350.pt" --max-steps 1536 --device cpu
$DN model export "$RUN/checkpoints/epoch-008.pt" --name cyclegan-ld2hd-synthetic --version 0.2.0 \
  --out-dir "$WORK/model-0.2.0"
$DN evaluate --model "$WORK/model-0.2.0/cyclegan-ld2hd-synthetic.json" --catalog "$CAT" \
  --out-dir "$WORK/eval-0.2.0" --device cpu
$DN model export "$RUN/checkpoints/epoch-008.pt" --name cyclegan-ld2hd-synthetic --version 0.2.0 \
  --out-dir "$WORK/model-0.2.0" --evaluation "$WORK/eval-0.2.0/evaluation.json" --activate
