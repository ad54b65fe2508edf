"""④a The consistency guard: does the denoised slice keep what the input had, and add nothing?

A GAN denoiser can paint out a small lesion or invent a structure. Removing noise only takes away something
zero-mean, unstructured and independent of anatomy, so each slice's residual ``r = input − output`` is tested
for exactly that. Three statistics per slice, each with a threshold in ``[guard]``:

1. **Low-pass content** — ``mean_shift_hu``: the largest |mean(output) − mean(input)| over ``block_px`` blocks
   inside the body. Noise averages out in a block, anatomy does not: a shifted organ, a bias or a large removed
   structure moves a block mean.
2. **Structured residual** — ``blobs``: the residual is low-passed (Gaussians of ``blob_sigmas_px``, matched
   filters for lesions a few to ten pixels across) and scaled by its robust spread (1.4826 × MAD over the body).
   Connected regions where a low-passed residual exceeds both ``blob_z`` robust standard deviations and
   ``blob_min_hu`` HU, over at least ``blob_min_area_px`` pixels, are structures the model removed (positive) or
   added (negative). Pixels on an edge that both input and output show (gradient above ``edge_hu_per_px``) are left
   out: blurring a kept edge slightly is not a lost structure, while an edge the output lost is kept in.
   ``edge_correlation`` (Pearson, |low-passed residual| vs the input's gradient magnitude over the body) is
   reported too: near 0 for noise removal, high when the model erodes anatomy.
3. **Physical range** — output HU below ``hu_floor`` or above the input's maximum + ``hu_margin``.

Limits, stated: the blob test finds a removed or added structure of about ``blob_min_hu`` HU and a few pixels
radius when the residual noise, low-passed, is below ``blob_min_hu / blob_z`` (measured in
tests/denoise/test_guard_report.py: a removed 22 HU lesion of 7 px radius in quarter-dose noise is found); fainter
changes are missed, and a
change along an edge kept by both images is not tested. The statistics are computed per slice; they do not see
z-consistency. The noise figures (``noise_before``/``noise_after``) are the project's one noise definition
(denoise/noise.py): the standard deviation in flat windows of the body found on the smoothed input.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field

import numpy as np
from scipy import ndimage

from dicom_denoise_node.config import GuardSettings
from dicom_denoise_node.denoise.noise import find_flat_regions, noise_std

log = logging.getLogger(__name__)

BODY_HU = -950.0  # inside the patient, lungs included


@dataclass(frozen=True)
class SliceVerdict:
    """The guard's figures for one slice and why it was flagged (empty reasons: passed)."""

    mean_shift_hu: float
    blobs: int
    largest_blob_hu: float
    edge_correlation: float
    hu_out_of_range: int
    noise_before: float
    noise_after: float
    reasons: list[str] = field(default_factory=list)

    @property
    def flagged(self) -> bool:
        return bool(self.reasons)

    def summary(self) -> str:
        return "; ".join(self.reasons) if self.reasons else "passed"


def _blocks(image: np.ndarray, size: int) -> np.ndarray:
    """(rows, cols, size, size) view of the image's whole size × size blocks (the remainder is left out)."""
    h, w = (image.shape[0] // size) * size, (image.shape[1] // size) * size
    return image[:h, :w].reshape(h // size, size, w // size, size).swapaxes(1, 2)


def _gradient(image: np.ndarray) -> np.ndarray:
    """Gradient magnitude (HU per pixel) of the image smoothed at 1.5 px (noise would dominate otherwise)."""
    gy, gx = np.gradient(ndimage.gaussian_filter(image, 1.5))
    return np.hypot(gx, gy)


def check_slice(hu_in: np.ndarray, hu_out: np.ndarray, settings: GuardSettings) -> SliceVerdict:
    """Compare one input slice with its denoised output; see the module docstring for each statistic."""
    x = hu_in.astype(np.float32)
    y = hu_out.astype(np.float32)
    residual = x - y
    body = x > BODY_HU
    reasons: list[str] = []

    # 1. low-pass content
    b = settings.block_px
    inside = _blocks(body, b).mean(axis=(2, 3))
    summed = _blocks(np.where(body, residual, 0.0), b).sum(axis=(2, 3))
    counted = _blocks(body, b).sum(axis=(2, 3))
    shifts = np.abs(summed / np.maximum(counted, 1))[inside >= 0.5]
    shift = float(shifts.max()) if shifts.size else 0.0
    if shift > settings.max_mean_shift_hu:
        reasons.append(f"mean HU moved {shift:.1f} HU in a {b}-px block (limit {settings.max_mean_shift_hu:g})")

    # 2. structured residual
    grad_in, grad_out = _gradient(x), _gradient(y)
    kept_edge = ndimage.binary_dilation(
        (grad_in > settings.edge_hu_per_px) & (grad_out > settings.edge_hu_per_px), iterations=2
    )
    region = body & ~kept_edge
    blobs, largest, corr = 0, 0.0, 0.0
    if region.sum() > 100:
        lows = {sigma: ndimage.gaussian_filter(residual, sigma) for sigma in settings.blob_sigmas_px}
        for low in lows.values():
            values = low[region]
            spread = 1.4826 * float(np.median(np.abs(values - np.median(values))))
            threshold = max(settings.blob_z * spread, settings.blob_min_hu)
            hot = region & (np.abs(low) > threshold)
            labels, n = ndimage.label(hot)
            if not n:
                continue
            sizes = ndimage.sum_labels(hot, labels, index=np.arange(1, n + 1))
            peaks = ndimage.maximum(np.abs(low), labels, index=np.arange(1, n + 1))
            big = sizes >= settings.blob_min_area_px
            if big.any():
                blobs = max(blobs, int(big.sum()))
                largest = max(largest, float(np.max(peaks[big])))
        mag = np.abs(lows[settings.blob_sigmas_px[0]][body])
        g = grad_in[body]
        if mag.std() > 0 and g.std() > 0:
            corr = float(np.corrcoef(mag, g)[0, 1])
    if blobs:
        reasons.append(
            f"{blobs} structure(s) in the residual (largest {largest:.0f} HU; limit {settings.blob_min_hu:g} HU "
            f"over {settings.blob_min_area_px} px)"
        )
    if corr > settings.max_edge_correlation:
        reasons.append(f"residual follows anatomy edges (correlation {corr:.2f} > {settings.max_edge_correlation:g})")

    # 3. physical range
    ceiling = max(float(x.max()), 3071.0) + settings.hu_margin
    outside = int(np.count_nonzero((y < settings.hu_floor) | (y > ceiling)))
    if outside:
        reasons.append(f"{outside} pixel(s) outside {settings.hu_floor:g}…{ceiling:g} HU")

    regions = find_flat_regions(x, fill_with_flattest=True)
    return SliceVerdict(
        mean_shift_hu=shift,
        blobs=blobs,
        largest_blob_hu=largest,
        edge_correlation=corr,
        hu_out_of_range=outside,
        noise_before=noise_std(x, regions),
        noise_after=noise_std(y, regions),
        reasons=reasons,
    )
