# Sourced by scripts/train_model_*.sh: the work folder (first argument), the CLI, and the two catalogs of
# scripts/train_model_1.0.0.sh (train.sqlite: the varied training archive; test.sqlite: the fresh test archive),
# and test2.sqlite: the second fresh test archive (scripts/score_test2.sh).
WORK=${1:-work/model-1.0.0}
HERE=$(cd "$(dirname "${BASH_SOURCE[1]}")" && pwd)
DN=${DENOISE_NODE:-denoise-node}
W=$(realpath -m "$WORK")
CAT="sqlite:///$W/train.sqlite"
TEST_CAT="sqlite:///$W/test.sqlite"
TEST2_CAT="sqlite:///$W/test2.sqlite"
export WORK HERE DN W CAT TEST_CAT TEST2_CAT
