# Sourced by scripts/train_span_ablation.sh and scripts/train_model_2.0.0.sh (issue 28): the training span, the
# in-distribution span test archive and the out-of-distribution archive, each made once, and their catalogs
# (train.sqlite: training + validation patients; span-test.sqlite and ood.sqlite: test patients only).
# Sourced with the work folder as $1; sizes from the environment (PATIENTS, SLICES, TEST_PATIENTS, SIZE).
WORK=${1:-work/m28}
DN=${DENOISE_NODE:-denoise-node}
W=$(realpath -m "$WORK")
PATIENTS=${PATIENTS:-24}
SLICES=${SLICES:-6}
TEST_PATIENTS=${TEST_PATIENTS:-6}
SIZE=${SIZE:-512}
step() { printf '\n== %s: %s\n' "$(date -u +%H:%M:%S)" "$*"; }
mkdir -p "$W"

synth() {  # name, then synth options
  local name=$1; shift
  [ -f "$W/$name/archive.json" ] || $DN synth "$W/$name" --size "$SIZE" "$@"
}
archives() {  # made once each; their catalogs once each
  step "archives"
  synth span-archive --patients "$PATIENTS" --slices "$SLICES" --seed 202 --span
  synth span-test --patients "$TEST_PATIENTS" --slices "$SLICES" --seed 9001 --span
  synth ood-archive --patients "$TEST_PATIENTS" --slices "$SLICES" --seed 9201 --ood

  step "catalogs: training span (train + val), span test and OOD (test only)"
  for pair in "span-archive train 0 0.15" "span-test span-test 1 0" "ood-archive ood 1 0"; do
    set -- $pair
    [ -f "$W/$2.sqlite" ] && continue
    $DN catalog scan "$W/$1" --catalog "sqlite:///$W/$2.sqlite" > /dev/null
    $DN catalog split --catalog "sqlite:///$W/$2.sqlite" --seed 0 --test "$3" --val "$4"
  done
}
