"""Warm start: a new run's generator begins from an exported model's weights (``train --init``, recipe ``init_from``).

Why: a 2-core CPU cannot train a generator across the whole training span from scratch in one session (issue 28:
600 steps closed a third of the gap to regular dose), while a model already trained on one dose has learnt most of
what denoising needs. Starting from it and training across the span teaches what differs, at a fraction of the
cost. The model is read through the node's registry (checksum verified, no pickle). Its architecture must match
the recipe's, except that a recipe with ``noise_conditioning`` may start from an unconditioned model: the first
layer's weights for the noise-level channel then start at zero, so the warm-started network computes exactly what
the exported one did until training moves them.
"""

from __future__ import annotations

import logging
from pathlib import Path

import torch
from torch import nn

from denoise_trainer.train.recipe import CannotTrain, TrainConfig
from dicom_denoise_node.model.registry import ModelError, load_model

log = logging.getLogger(__name__)

# Keys of an architecture that may differ between the exported model and the recipe (the conditioning channel).
_MAY_DIFFER = {"noise_conditioning", "head_init_std"}


def warm_start(generator: nn.Module, cfg: TrainConfig) -> None:
    """Copy ``cfg.init_from``'s weights into ``generator`` (in place); CannotTrain when they cannot fit."""
    if cfg.init_from is None:
        return
    try:
        source, info = load_model(Path(cfg.init_from))
    except ModelError as exc:
        raise CannotTrain(f"init_from: {exc}") from exc
    if (info.hu_min, info.hu_max) != (cfg.hu_min, cfg.hu_max):
        raise CannotTrain(
            f"init_from {cfg.init_from}: its window {info.hu_min:g}…{info.hu_max:g} HU is not the recipe's "
            f"{cfg.hu_min:g}…{cfg.hu_max:g} HU (set hu_min/hu_max to match)"
        )
    wanted = cfg.generator_config().to_dict()
    keys = (set(wanted) | set(info.architecture)) - _MAY_DIFFER
    differs = sorted(k for k in keys if wanted.get(k) != info.architecture.get(k))
    if differs:
        detail = ", ".join(f"{k}: model {info.architecture.get(k)!r}, recipe {wanted.get(k)!r}" for k in differs)
        raise CannotTrain(f"init_from {cfg.init_from}: architecture differs ({detail})")
    target = generator.state_dict()
    with torch.no_grad():
        for name, value in source.state_dict().items():
            if name not in target:
                raise CannotTrain(f"init_from {cfg.init_from}: weight {name} has no place in the recipe's generator")
            slot = target[name]
            if slot.shape == value.shape:
                slot.copy_(value)
            elif slot.dim() == 4 and slot.shape[0] == value.shape[0] and slot.shape[1] > value.shape[1]:
                slot.zero_()  # the first layer: the extra (noise-level) input channels start at zero
                slot[:, : value.shape[1]].copy_(value)
            else:
                shapes = f"{tuple(value.shape)}, the recipe's {tuple(slot.shape)}"
                raise CannotTrain(f"init_from {cfg.init_from}: weight {name} is {shapes}")
    log.info("generator warm-started from %s", info.label)
