"""Where a warm start comes from (``train --init``): a model JSON, a bundled model's name, or ``bundled``.

Why a name and ``bundled``: fine-tuning a bundled model is the recommended start for a site, and a physicist should
not have to find the installed package's files. Why the model's architecture fills the recipe: the weights fit only
the network they were trained in, so a recipe that starts from a model must be that network; the preset's own
architecture (or the method's) would not fit. What the user wrote (the training TOML, the command line) still wins,
and warm_start.py then says which key does not fit.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from denoise_trainer.train.recipe import CannotTrain
from dicom_denoise_node.model.registry import BUNDLED_DIR, ModelError, read_metadata

log = logging.getLogger(__name__)

BUNDLED = "bundled"
# The bundled model a run of each pairing starts from with `--init bundled`.
BUNDLED_BY_PAIRING = {"unpaired": "cyclegan-ld2hd-synthetic", "paired": "paired-ld2hd-synthetic"}


def resolve_init(spec: str | Path, pairing: str | None) -> Path:
    """The model JSON that ``spec`` names: ``bundled`` (the run's pairing's), a file, or a bundled model's name."""
    text = str(spec)
    if text == BUNDLED:
        pairing = pairing or "unpaired"
        if pairing not in BUNDLED_BY_PAIRING:
            raise CannotTrain(f"init 'bundled': pairing {pairing!r} has no bundled model (unpaired or paired)")
        return BUNDLED_DIR / f"{BUNDLED_BY_PAIRING[pairing]}.json"
    path = Path(text).expanduser()
    if path.exists():
        return path
    named = BUNDLED_DIR / f"{text}.json"
    if path.name == text and named.exists():
        return named
    known = ", ".join(sorted(p.stem for p in BUNDLED_DIR.glob("*.json"))) or "none installed"
    raise CannotTrain(
        f"init {text!r}: model not found (no such file, and no bundled model of that name; "
        f"bundled: {known}; or 'bundled' for the run's pairing)"
    )


def recipe_from_model(path: Path) -> dict[str, Any]:
    """The recipe keys (generator, its size, HU window, conditioning) that rebuild the network of the model at
    ``path``; CannotTrain when its metadata cannot be read."""
    try:
        info = read_metadata(path)
    except ModelError as exc:
        raise CannotTrain(f"init: {exc}") from exc
    arch = info.architecture
    kind = arch.get("type", "resnet_generator")
    values: dict[str, Any] = {
        "hu_min": info.hu_min,
        "hu_max": info.hu_max,
        "noise_conditioning": bool(arch.get("noise_conditioning", False)),
    }
    try:
        if kind == "residual_cnn":
            values |= {
                "generator": "residual_cnn",
                "filters": arch["filters"],
                "layers": arch["layers"],
                "dilations": list(arch["dilations"]),
                "head_init_std": arch["head_init_std"],
                "residual_norm": arch.get("norm", "none"),
            }
        elif kind == "residual_unet":
            values |= {
                "generator": "residual_unet",
                "filters": arch["filters"],
                "bottleneck_layers": arch["bottleneck_layers"],
                "head_init_std": arch["head_init_std"],
            }
        else:
            values |= {
                "generator": "resnet",
                "filters": arch["filters"],
                "blocks": arch["blocks"],
                "upsample": arch.get("upsample", "resize_conv"),
                "residual": arch.get("residual", False),
            }
    except KeyError as exc:
        raise CannotTrain(f"init {path}: its architecture metadata lacks {exc}") from exc
    log.info("init %s (%s): the recipe takes its architecture where the config does not set it", path, info.label)
    return values
