"""Noise, one definition for the whole project: the standard deviation in flat soft-tissue windows of the body.

Flat windows are found on a guide: the noise-free REF when it is known (the synthetic archive), else the image
itself box-smoothed (noise down about ``smooth``-fold), so that edges, organs' borders and lesions stay out of
the windows and the figure measures noise, not anatomy. The evaluation (trainer/metrics.py) scores image − REF in
them; the consistency guard and the quality report (denoise/guard.py) measure each slice before and after
denoising in the windows found on the input, with ``fill_with_flattest`` so that a noisy input whose smoothed
image passes no window still gets a figure from its flattest windows.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence

import numpy as np
from scipy import ndimage

log = logging.getLogger(__name__)

BODY_THRESHOLD_HU = -500.0
FLAT_SIZE = 15
FLAT_MAX_REGIONS = 8
FLAT_TOL_HU = 5.0
FLAT_SMOOTH = 5  # px box that smooths the image for the flatness test when there is no REF


def body_mask(hd_hu: np.ndarray) -> np.ndarray:
    """Pixels of the body: > -500 HU (excludes air and, deliberately, most of the lung)."""
    return np.asarray(hd_hu) > BODY_THRESHOLD_HU


def local_std(image: np.ndarray, size: int = FLAT_SIZE) -> np.ndarray:
    """Standard deviation over the size×size window centred on each pixel (box filter of x and x²)."""
    x = np.asarray(image, dtype=np.float64)
    mean = ndimage.uniform_filter(x, size, mode="reflect")
    mean_sq = ndimage.uniform_filter(x * x, size, mode="reflect")
    return np.sqrt(np.maximum(mean_sq - mean * mean, 0.0))


def flatness(
    hd: np.ndarray, ref: np.ndarray | None = None, size: int = FLAT_SIZE, smooth: int = FLAT_SMOOTH
) -> np.ndarray:
    """Per-pixel flatness statistic of the size×size window centred there, in HU: the local std of REF, or, with
    no REF, the local std of HD box-averaged over smooth×smooth px (noise down ~smooth-fold). Why a small box and
    not a wide Gaussian: a wide kernel smears a small lesion below the tolerance and drags distant air or bone
    into the window; the box reaches only smooth // 2 px past the window, so an edge just outside still counts."""
    if ref is not None:
        return local_std(ref, size)
    smooth = max(1, int(smooth))
    return local_std(ndimage.uniform_filter(np.asarray(hd, dtype=np.float64), smooth, mode="reflect"), size)


def find_flat_regions(
    hd: np.ndarray,
    ref: np.ndarray | None = None,
    *,
    size: int = FLAT_SIZE,
    max_regions: int = FLAT_MAX_REGIONS,
    tol_hu: float = FLAT_TOL_HU,
    smooth: int = FLAT_SMOOTH,
    seed: int = 0,
    fill_with_flattest: bool = False,
) -> list[tuple[int, int]]:
    """Top-left corners of up to `max_regions` non-overlapping size×size windows that lie wholly in the body
    (HD > -500 HU) and whose `flatness` is below `tol_hu`.

    Windows are drawn in a fixed pseudo-random order among the eligible ones rather than flattest first, so the
    choice neither clusters in one organ nor, without REF, favours windows where HD noise happened to be low.
    ``fill_with_flattest``: when fewer pass the tolerance (a noisy image without REF), the flattest of the other
    windows in the body fill up to ``max_regions``.
    """
    half = size // 2
    # Centres whose whole window is body: a box erosion, as a box mean (exactly 1 only when every pixel is body,
    # outside the image counting as not body), which is several times faster than binary_erosion with a full square.
    inside = ndimage.uniform_filter(body_mask(hd).astype(np.float32), size, mode="constant", cval=0.0) > 1.0 - 1e-4
    flat = flatness(hd, ref, size, smooth)
    centres = inside & (flat < tol_hu)
    ys, xs = np.nonzero(centres)
    order = np.random.default_rng(seed).permutation(len(ys))
    taken = np.zeros_like(centres)
    corners: list[tuple[int, int]] = []

    def take(cy: int, cx: int) -> None:
        corners.append((cy - half, cx - half))
        taken[max(0, cy - size + 1) : cy + size, max(0, cx - size + 1) : cx + size] = True  # centres that overlap

    for i in order:
        if len(corners) >= max_regions:
            break
        if not taken[ys[i], xs[i]]:
            take(int(ys[i]), int(xs[i]))
    if fill_with_flattest and len(corners) < max_regions:
        ys, xs = np.nonzero(inside & ~centres)
        values = flat[ys, xs]
        nearest = np.argpartition(values, min(len(values) - 1, 4000))[:4000] if len(values) > 4000 else None
        candidates = np.arange(len(values)) if nearest is None else nearest
        for i in candidates[np.argsort(values[candidates], kind="stable")]:
            if len(corners) >= max_regions:
                break
            if not taken[ys[i], xs[i]]:
                take(int(ys[i]), int(xs[i]))
    if not corners:
        log.warning("no flat %d×%d window in the body with flatness < %g HU: noise std is NaN here", size, size, tol_hu)
    return corners


def noise_std(
    image: np.ndarray, regions: Sequence[tuple[int, int]], size: int = FLAT_SIZE, ref: np.ndarray | None = None
) -> float:
    """Mean over flat windows of the std (ddof=1) of image − REF, or of the image itself when there is no REF."""
    if not regions:
        return math.nan
    x = np.asarray(image, dtype=np.float64)
    if ref is not None:
        x = x - np.asarray(ref, dtype=np.float64)
    return float(np.mean([x[y : y + size, xx : xx + size].std(ddof=1) for y, xx in regions]))
