"""A rich phantom's lesion contrast, made relative to the lesion's local background.

Why: with organ texture and vessels round a lesion, "organ HU + contrast" no longer equals "what surrounds the lesion
+ contrast", and the scorer (``evaluate/lesions.py``) measures contrast as core mean − ring mean on the noise-free
image. So each lesion is painted at its surroundings' mean (the scorer's ring: from radius + 2 px, max(4 px, one
radius) wide, other lesions left out, pixels within 25 HU of the ring's median) + its inserted contrast; the truth's
contrast then stays what the scorer measures on the noise-free image.
"""

from __future__ import annotations

import math

import numpy as np

RING_TOL_HU = 25.0  # as evaluate/lesions.py
MAX_OFFSET_HU = 60.0


def background_offset(
    hu: np.ndarray,
    core_term: np.ndarray | None,
    circle: tuple[float, float, float],
    others: list[tuple[float, float, float]],
    nominal_hu: float,
) -> float:
    """HU to add to a lesion (cx, cy, r in px) so that its core mean − ring mean equals its inserted contrast.

    core_term: what the painter adds to the lesion's nominal HU per pixel (the smooth plain texture), or None.
    """
    cx, cy, r = circle
    outer = r + 2.0 + max(4.0, r)
    r0, r1 = max(0, int(cy - outer) - 1), min(hu.shape[0], int(cy + outer) + 2)
    c0, c1 = max(0, int(cx - outer) - 1), min(hu.shape[1], int(cx + outer) + 2)
    if r0 >= r1 or c0 >= c1:
        return 0.0
    yy, xx = np.mgrid[r0:r1, c0:c1]
    d = np.hypot(xx - cx, yy - cy)
    core = d <= max(1.0, 0.6 * r)
    ring = (d >= r + 2.0) & (d <= outer)
    for ox, oy, orad in others:
        ring &= np.hypot(xx - ox, yy - oy) > orad + 2.0
    box = hu[r0:r1, c0:c1]
    if ring.sum() < 8 or not core.any():
        return 0.0
    ring &= np.abs(box - np.median(box[ring])) < RING_TOL_HU
    if not ring.any():
        return 0.0
    extra = float(core_term[r0:r1, c0:c1][core].mean()) if core_term is not None else 0.0
    offset = float(box[ring].mean()) - nominal_hu - extra
    return float(np.clip(offset, -MAX_OFFSET_HU, MAX_OFFSET_HU)) if math.isfinite(offset) else 0.0
