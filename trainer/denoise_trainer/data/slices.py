"""Slices decoded to HU: the one way the trainer reads archive pixels (1-channel, 16-bit-safe, never 8-bit)."""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np

from dicom_denoise_node.denoise.decode import SliceRef, read_hu

log = logging.getLogger(__name__)


def load_slices(paths: Sequence[Path], progress: Callable[[int, int], None] | None = None) -> list[np.ndarray]:
    """Decode each file to HU (float32) through its own rescale, as the node's worker does."""
    out = []
    for k, path in enumerate(paths, start=1):
        out.append(read_hu(SliceRef(Path(path), "", 0.0, 0)).hu)
        if progress:
            progress(k, len(paths))
    return out
