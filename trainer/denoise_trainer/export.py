"""Checkpoint → model registry entry (safetensors + JSON metadata) that the node loads.

Only the LD→HD generator is exported. The metadata records the training provenance (preset, every setting, steps,
data fingerprint, checkpoint checksum) and, when given, the evaluation figures, so a physicist can see in one file
what the node is running and why it was trusted.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from denoise_trainer.train.averaging import exported_weights
from denoise_trainer.train.checkpoint import load_checkpoint
from dicom_denoise_node.model.generator import build_generator
from dicom_denoise_node.model.registry import ModelInfo, save_model, sha256_file

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
) -> ModelInfo:
    """Write NAME.safetensors + NAME.json from a training checkpoint; returns the registry entry.

    ``self_ensemble`` > 1 records that the model is meant to run averaged over that many flips/turns of each tile
    (the setting its evaluation used; the node's ``[model] self_ensemble = 0`` takes it). ``target_noise_hu`` > 0
    records the noise level the model is meant to leave (denoise/noise_target.py; unset ``[model] target_noise_hu``
    takes it)."""
    if self_ensemble not in (1, 2, 4, 8):
        raise ValueError(f"self_ensemble={self_ensemble} must be 1, 2, 4 or 8")
    if target_noise_hu < 0:
        raise ValueError(f"target_noise_hu={target_noise_hu:g} must be 0 (none) or a level in HU")
    state = load_checkpoint(checkpoint)
    cfg = state["config"]
    generator = build_generator(state["generator_config"])
    weights, which = exported_weights(state)
    generator.load_state_dict(weights, strict=True)
    training = {
        "preset": cfg["preset"],
        "config": cfg,
        "epochs": state["epoch"],
        "steps": state["step"],
        "weights": which if which == "raw" else f"EMA of the weights, decay {state.get('average_decay')}",
        "world_size": state.get("world_size", 1),
        "data": state.get("data", {}),
        "last_losses": state.get("last_losses", {}),
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
    )
    log.info("exported %s %s to %s", name, version, out_dir)
    return info
