#!/usr/bin/env bash
# Wheels for a lent GPU machine (it reaches no registry; its image has torch, numpy, scipy, rich, typer, pillow,
# scikit-image, tensorboard, torchmetrics, …: /work/.library/device/KINDS.md), for its Python 3.12: every package
# the three parts need that the image lacks, at the versions constraints.txt pins. Run here, before the session:
#   bash scripts/gpu_wheels.sh            # → .whl/ (ignored by git; carried with `carry: [".whl"]`)
set -euo pipefail
cd "$(dirname "$0")/.."
MISSING="pydicom pynetdicom highdicom pylibjpeg pylibjpeg-openjpeg pylibjpeg-rle pyjpegls sqlalchemy alembic mako
apscheduler tzlocal pydantic pydantic-core pydantic-settings python-dotenv annotated-types typing-inspection
python-json-logger dicomweb-client retrying pytorch-msssim pywavelets"
pins=()
for name in $MISSING; do
  pin=$(grep -i -E "^${name//-/[-_]}==" constraints.txt || true)
  [ -n "$pin" ] || { echo "no pin for $name in constraints.txt" >&2; exit 1; }
  pins+=("$pin")
done
rm -rf .whl && mkdir -p .whl
python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
  --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 --platform manylinux_2_17_x86_64 \
  --platform manylinux2014_x86_64 -d .whl "${pins[@]}"
ls .whl | wc -l
du -sh .whl
