#!/usr/bin/env bash
# The GPU recipe: the method's preset and scale on one GPU in ≤ 10 min of training (`train --engine fast`: fp32 +
# TF32, channels_last, compiled, patches cut on the device, no per-step host syncs), from synthesis (on the GPU) to
# evaluation. Tested on a CPU first with the tiny preset:
#   PRESET=tiny DEVICE=cpu SYNTH_DEVICE=cpu PATIENTS=6 SLICES=2 SIZE=128 TEST_PATIENTS=2 scripts/train_gpu.sh /tmp/g
#   scripts/train_gpu.sh /tmp/gpu          # on a GPU machine
set -euo pipefail
export PRESET=${PRESET:-method} ENGINE=fast DEVICE=${DEVICE:-cuda} SYNTH_DEVICE=${SYNTH_DEVICE:-cuda}
export PATIENTS=${PATIENTS:-40} SLICES=${SLICES:-24} NAME=${NAME:-cyclegan-ld2hd-gpu}
exec timeout "${LIMIT_S:-1500}" "$(dirname "$0")/train_bundled.sh" "${1:-/tmp/gpu}"
