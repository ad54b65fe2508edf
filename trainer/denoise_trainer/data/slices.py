"""Slices decoded to HU: the one way the trainer reads archive pixels (1-channel, 16-bit-safe, never 8-bit)."""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from dicom_denoise_node.denoise.decode import SliceRef, read_hu
from dicom_denoise_node.denoise.noise import conditioning_noise_hu, noise_map_value

log = logging.getLogger(__name__)


@dataclass
class TrainingData:
    """Training slices (HU) per domain (aligned pairs in paired mode); validation slices: LD/HD pairs with their REF
    where the archive has one, and the slices of validation patients with one dose only (``*_unpaired``), which
    choose the checkpoint when there is no pair (train/selection.py)."""

    ld: list[np.ndarray]
    hd: list[np.ndarray]
    val_ld: list[np.ndarray] = field(default_factory=list)
    val_hd: list[np.ndarray] = field(default_factory=list)
    val_ref: list[np.ndarray] = field(default_factory=list)
    description: dict[str, Any] = field(default_factory=dict)
    val_ld_unpaired: list[np.ndarray] = field(default_factory=list)
    val_hd_unpaired: list[np.ndarray] = field(default_factory=list)


def load_slices(paths: Sequence[Path], progress: Callable[[int, int], None] | None = None) -> list[np.ndarray]:
    """Decode each file to HU (float32) through its own rescale, as the node's worker does."""
    out = []
    for k, path in enumerate(paths, start=1):
        out.append(read_hu(SliceRef(Path(path), "", 0.0, 0)).hu)
        if progress:
            progress(k, len(paths))
    return out


def noise_maps(slices_hu: Sequence[np.ndarray], window: tuple[float, float]) -> list[float]:
    """Each slice's noise-level map value (model units), measured once on the slice itself with the node's
    ``conditioning_noise_hu``: what a noise-conditioned generator is given with every patch of that slice (an LD
    patch gets its LD slice's level, an HD patch its HD slice's), as the node gives it with every tile."""
    levels = [conditioning_noise_hu(hu) for hu in slices_hu]
    if levels:
        log.info("noise levels of %d slices: %.1f…%.1f HU", len(levels), min(levels), max(levels))
    return [noise_map_value(level, *window) for level in levels]
