"""Checkpoint → model registry entry (safetensors + JSON metadata) that the node loads.

Only the LD→HD generator is exported. The metadata records the training provenance (preset, every setting, steps,
data fingerprint, checkpoint checksum) and, when given, the evaluation figures, so a physicist can see in one file
what the node is running and why it was trusted.
"""

from __future__ import annotations

import logging
import pickle
from pathlib import Path
from typing import Any

from torch import nn

from denoise_trainer.train.averaging import exported_weights
from denoise_trainer.train.checkpoint import load_checkpoint
from dicom_denoise_node.model.generator import build_generator
from dicom_denoise_node.model.registry import ModelError, ModelInfo, save_model, sha256_file

log = logging.getLogger(__name__)


def export_checkpoint(
    checkpoint: Path,
    out_dir: Path,
    name: str,
    version: str,
    evaluation: dict[str, Any] | None = None,
    activate: bool = False,
    command: str = "",
    self_ensemble: int = 1,
    target_noise_hu: float = 0.0,
    force: bool = False,
) -> ModelInfo:
    """Write NAME.safetensors + NAME.json from a training checkpoint; returns the registry entry.

    ``self_ensemble`` > 1 records that the model is meant to run averaged over that many flips/turns of each tile
    (the setting its evaluation used; the node's ``[model] self_ensemble = 0`` takes it). ``target_noise_hu`` > 0
    records the noise level the model is meant to leave (denoise/noise_target.py; unset ``[model] target_noise_hu``
    takes it). An existing NAME of this version with other weights is refused unless ``force`` (``save_model``)."""
    if self_ensemble not in (1, 2, 4, 8):
        raise ValueError(f"self_ensemble={self_ensemble} must be 1, 2, 4 or 8")
    if target_noise_hu < 0:
        raise ValueError(f"target_noise_hu={target_noise_hu:g} must be 0 (none) or a level in HU")
    state = load_checkpoint(checkpoint)
    cfg = state["config"]
    generator, which = checkpoint_generator(state)
    training = {
        "preset": cfg["preset"],
        "config": cfg,
        "epochs": state["epoch"],
        "steps": state["step"],
        "weights": which if which == "raw" else f"EMA of the weights, decay {state.get('average_decay')}",
        "world_size": state.get("world_size", 1),
        "data": state.get("data", {}),
        "last_losses": state.get("last_losses", {}),
        "selection": state.get("selection", {}),  # how the checkpoint was chosen: ref, hd or no-reference
        "checkpoint": str(checkpoint),
        "checkpoint_sha256": sha256_file(checkpoint),
        "torch": state.get("torch", ""),
        "trained_at": state.get("created_at", ""),
        "command": command,
    }
    inference = {"self_ensemble": self_ensemble} if self_ensemble > 1 else {}
    if target_noise_hu > 0:
        inference["target_noise_hu"] = float(target_noise_hu)
    info = save_model(
        generator,
        out_dir,
        name,
        version,
        (cfg["hu_min"], cfg["hu_max"]),
        training,
        evaluation or {},
        activate,
        inference,
        force=force,
    )
    log.info("exported %s %s to %s", name, version, out_dir)
    return info


def checkpoint_generator(state: dict[str, Any]) -> tuple[nn.Module, str]:
    """The LD→HD generator a checkpoint ships (its weight average when it has one), and which weights they are."""
    generator = build_generator(state["generator_config"])
    weights, which = exported_weights(state)
    generator.load_state_dict(weights, strict=True)
    return generator, which


def checkpoint_model(checkpoint: Path) -> tuple[nn.Module, ModelInfo]:
    """The generator and metadata that exporting this checkpoint would give, in memory (on the CPU).

    Why: `evaluate` scores a checkpoint before it is exported, so that a model is exported once, with its figures.
    The name is the checkpoint's file name, the version its step, the checksum the checkpoint file's (the one
    ``model export`` records as ``checkpoint_sha256``)."""
    try:
        state = load_checkpoint(checkpoint)
        generator, which = checkpoint_generator(state)
        cfg, step = state["config"], int(state["step"])
        window = (float(cfg["hu_min"]), float(cfg["hu_max"]))
    except (OSError, EOFError, KeyError, TypeError, RuntimeError, pickle.UnpicklingError) as exc:
        raise ModelError(f"{checkpoint} is not a training checkpoint of this trainer: {exc}") from exc
    info = ModelInfo(
        name=checkpoint.name,
        version=f"step {step}",
        architecture=generator.config.to_dict(),  # type: ignore[union-attr]
        hu_min=window[0],
        hu_max=window[1],
        sha256=sha256_file(checkpoint),
        weights_path=checkpoint,
        training={"config": cfg, "steps": step, "weights": which, "checkpoint": str(checkpoint)},
    )
    return generator, info
