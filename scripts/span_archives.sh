# Sourced by scripts/train_span_ablation.sh and scripts/train_model_2.0.0.sh (issue 28): the training span, the
# in-distribution span test archive and the out-of-distribution archive, each made once, and their catalogs
# (train.sqlite: training + validation patients; span-test.sqlite and ood.sqlite: test patients only).
# Needs W, DN, SIZE, PATIENTS, SLICES, TEST_PATIENTS and a `step` function.
synth() {  # name, then synth options
  local name=$1; shift
  [ -f "$W/$name/archive.json" ] || $DN synth "$W/$name" --size "$SIZE" "$@"
}
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
