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
    quiet: bool = False,
) -> list[tuple[int, int]]:
    """Top-left corners of up to `max_regions` non-overlapping size×size windows that lie wholly in the body
    (HD > -500 HU) and whose `flatness` is below `tol_hu`.

    Windows are drawn in a fixed pseudo-random order among the eligible ones rather than flattest first, so the
    choice neither clusters in one organ nor, without REF, favours windows where HD noise happened to be low.
    ``fill_with_flattest``: when fewer pass the tolerance (a noisy image without REF), the flattest of the other
    windows in the body fill up to ``max_regions``. ``quiet``: no warning when none is found (the caller has a
    fallback).
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
    if not corners and not quiet:
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


# The conditioning level (a noise-conditioned generator's second input, model/generator.py): one figure per slice.
CONDITIONING_SIZE = 11  # px windows: more fit between organs than the evaluation's 15, and at coarser pixels
CONDITIONING_SMOOTH = 9  # px box for the flatness test: at high noise a 5-px box leaves the noise to pick windows
CONDITIONING_TOL_HU = 10.0
CONDITIONING_REGIONS = 16
SOFT_TISSUE_GUIDE_HU = (-160.0, 240.0)  # the soft-tissue window; outside it a pixel is no candidate
NOISE_FLOOR_HU = 2.0
FALLBACK_NOISE_HU = 20.0  # about the soft-tissue noise of the project's quarter-dose archive


def conditioning_noise_hu(hu_slice: np.ndarray, fallback_hu: float = FALLBACK_NOISE_HU) -> float:
    """The noise level of one slice from the slice alone (no REF): std in flat soft-tissue windows, in HU.

    The project's definition (``find_flat_regions`` + ``noise_std``) with three choices for a figure that must be
    measurable on every slice a node receives, at any dose:

    * candidate windows lie in soft tissue (the 5-px box mean in −160…240 HU), not merely in the body, so that lung,
      bone and fat/air edges never enter the figure;
    * ``fill_with_flattest``: a noisy slice whose smoothed image passes no window still gets its flattest soft-tissue
      windows (ranked on a 9-px box, so that at high noise the anatomy, not the noise, decides which are flattest:
      with a 5-px box the choice fell on windows where the noise happened to be low, up to 30 % low);
    * a slice with no soft-tissue window (air, a thin lung apex, a slice of the table) gets ``fallback_hu`` (the
      node passes the previous slice's level: one series has one dose), and the figure is floored at
      ``NOISE_FLOOR_HU``, because a padded or synthetic flat region would read 0, a level no training slice had.

    On the project's simulator (chest and abdomen, 512² at 0.7 mm, soft-tissue error 9–100 HU) it reads within
    −5…+20 % of the std of image − REF in soft tissue, monotonic in dose (tests/denoise/test_noise_conditioning.py);
    it reads 20–30 % low at ≈ 180 HU, far beyond what sites send, where no window is flat any more.
    """
    hu = np.asarray(hu_slice, dtype=np.float64)
    regions = soft_tissue_regions(hu)
    if not regions:
        log.debug("no soft-tissue window on this slice: noise level %.1f HU (fallback)", fallback_hu)
        return max(float(fallback_hu), NOISE_FLOOR_HU)
    return max(noise_std(hu, regions, CONDITIONING_SIZE), NOISE_FLOOR_HU)


def soft_tissue_regions(
    hu_slice: np.ndarray, size: int = CONDITIONING_SIZE, max_regions: int = CONDITIONING_REGIONS
) -> list[tuple[int, int]]:
    """The flat soft-tissue windows ``conditioning_noise_hu`` measures in (top-left corners; see its docstring).

    Public so that a figure measured on another image of the same slice (a denoiser's output, trainer/no_reference)
    is taken in the windows found on the input: the same pixels for every output compared.
    """
    hu = np.asarray(hu_slice, dtype=np.float64)
    smooth = ndimage.uniform_filter(hu, FLAT_SMOOTH, mode="reflect")
    soft = (smooth >= SOFT_TISSUE_GUIDE_HU[0]) & (smooth <= SOFT_TISSUE_GUIDE_HU[1])
    guide = np.where(soft, hu, BODY_THRESHOLD_HU - 500.0)  # not body: no window may touch it
    return find_flat_regions(
        guide,
        size=size,
        max_regions=max_regions,
        tol_hu=CONDITIONING_TOL_HU,
        smooth=CONDITIONING_SMOOTH,
        fill_with_flattest=True,
        quiet=True,
    )


def noise_map_value(sigma_hu: float, hu_min: float, hu_max: float) -> float:
    """A noise level in the model's units: σ_HU × 2 / (hu_max − hu_min), the scale of ``normalize_hu``.

    The map a conditioned generator gets is this value, constant over the slice. Why constant: CT noise varies across
    the field (more behind dense structures and at the body's centre), but one level per slice is what a node can
    estimate robustly from the flat windows of the input alone; a spatial map is a possible next step.
    """
    return float(sigma_hu) * 2.0 / (hu_max - hu_min)


def with_noise_map(image: np.ndarray, map_value: float) -> np.ndarray:
    """(2, H, W) float32: a normalised slice and its constant noise-level map, the conditioned generator's input."""
    x = np.asarray(image, dtype=np.float32)
    return np.stack([x, np.full_like(x, np.float32(map_value))])
