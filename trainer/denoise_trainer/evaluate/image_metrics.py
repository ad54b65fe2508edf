"""Image metrics of the evaluation: PSNR, SSIM and MS-SSIM (torchmetrics) in the model's window and the soft-tissue
window, HU bias over the body; noise in flat windows is the project's one definition (denoise/noise.py).

The demo's report imports these, so that `make demo` and `denoise-node evaluate` say the same thing.
"""

import logging
import math
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch
from torchmetrics.functional.image import (
    multiscale_structural_similarity_index_measure,
    peak_signal_noise_ratio,
    structural_similarity_index_measure,
)

from dicom_denoise_node.denoise.noise import (  # noqa: F401  (re-exported: the one noise definition)
    BODY_THRESHOLD_HU,
    FLAT_MAX_REGIONS,
    FLAT_SIZE,
    FLAT_SMOOTH,
    FLAT_TOL_HU,
    body_mask,
    find_flat_regions,
    flatness,
    local_std,
    noise_std,
)

log = logging.getLogger(__name__)

HUWindow = tuple[float, float]

MODEL_HU_WINDOW: HUWindow = (-1024.0, 3071.0)  # the seed's normalisation window (HU → [-1, 1])
SOFT_TISSUE_WINDOW: HUWindow = (-160.0, 240.0)  # W400 / L40, scaled to [0, 1]
SSIM_KERNEL = 11  # Gaussian window, sigma 1.5, K1 0.01, K2 0.03 (Wang et al. 2004)
SSIM_SIGMA = 1.5
MS_SSIM_BETAS: tuple[float, ...] = (0.0448, 0.2856, 0.3001, 0.2363, 0.1333)  # Wang et al. 2003, five scales


@dataclass
class EvalSlice:
    """One aligned test slice in HU; REF (noise-free reconstruction) exists only for synthetic data."""

    patient_id: str
    body_part: str
    instance_number: int
    ld: np.ndarray
    hd: np.ndarray
    ref: np.ndarray | None = None


def to_unit_range(hu: np.ndarray, hu_window: HUWindow = MODEL_HU_WINDOW) -> np.ndarray:
    """HU → [-1, 1] exactly as the model sees it (clip to the window, then scale), float64 for the metrics."""
    lo, hi = hu_window
    return 2.0 * (np.clip(np.asarray(hu, dtype=np.float64), lo, hi) - lo) / (hi - lo) - 1.0


def to_soft_tissue(hu: np.ndarray, window: HUWindow = SOFT_TISSUE_WINDOW) -> np.ndarray:
    """HU → [0, 1] through the soft-tissue window, where a radiologist actually looks at noise."""
    lo, hi = window
    return (np.clip(np.asarray(hu, dtype=np.float64), lo, hi) - lo) / (hi - lo)


def _tensor(image: np.ndarray) -> torch.Tensor:
    return torch.as_tensor(np.asarray(image, dtype=np.float64))[None, None]


def psnr(pred: np.ndarray, target: np.ndarray, data_range: float) -> float:
    """PSNR in dB of already-normalised images; identical images give +inf explicitly (zero MSE)."""
    if np.array_equal(pred, target):
        return math.inf
    return float(peak_signal_noise_ratio(_tensor(pred), _tensor(target), data_range=data_range))


def ssim(pred: np.ndarray, target: np.ndarray, data_range: float) -> float:
    """SSIM with the literature's 11-px Gaussian window (sigma 1.5); identical images give exactly 1.0."""
    if np.array_equal(pred, target):
        return 1.0
    value = structural_similarity_index_measure(
        _tensor(pred),
        _tensor(target),
        gaussian_kernel=True,
        sigma=SSIM_SIGMA,
        kernel_size=SSIM_KERNEL,
        data_range=data_range,
    )
    return float(value)


def ms_ssim_betas(shape: tuple[int, ...], kernel_size: int = SSIM_KERNEL) -> tuple[float, ...]:
    """Scale weights usable for an image of this shape: the first k of Wang's five betas, renormalised to sum 1.

    Why: each scale halves the image and the 11-px window must still fit; torchmetrics also checks
    size // (k−1)² > kernel − 1. A 512² slice keeps all five scales, 128² keeps four, 96² three.
    """
    smallest = min(int(s) for s in shape[-2:])
    for k in range(len(MS_SSIM_BETAS), 0, -1):
        if smallest // max(1, k - 1) ** 2 > kernel_size - 1 and smallest // 2 ** (k - 1) > kernel_size - 1:
            if k == len(MS_SSIM_BETAS):
                return MS_SSIM_BETAS
            head = MS_SSIM_BETAS[:k]
            total = sum(head)
            return tuple(b / total for b in head)
    raise ValueError(f"image {tuple(shape)} is too small for MS-SSIM with an {kernel_size}-px window")


def ms_ssim(pred: np.ndarray, target: np.ndarray, data_range: float) -> float:
    """MS-SSIM (torchmetrics, relu-normalised contrast terms) with betas from `ms_ssim_betas` for this size."""
    if np.array_equal(pred, target):
        return 1.0
    value = multiscale_structural_similarity_index_measure(
        _tensor(pred),
        _tensor(target),
        gaussian_kernel=True,
        sigma=SSIM_SIGMA,
        kernel_size=SSIM_KERNEL,
        data_range=data_range,
        betas=ms_ssim_betas(np.shape(pred)),
    )
    return float(value)


def image_metrics(
    output_hu: np.ndarray, target_hu: np.ndarray, hu_window: HUWindow = MODEL_HU_WINDOW
) -> dict[str, float]:
    """PSNR / SSIM / MS-SSIM in the model's [-1, 1] normalisation (range 2) and in the soft-tissue window (range 1)."""
    out, tgt = to_unit_range(output_hu, hu_window), to_unit_range(target_hu, hu_window)
    out_soft, tgt_soft = to_soft_tissue(output_hu), to_soft_tissue(target_hu)
    return {
        "psnr": psnr(out, tgt, 2.0),
        "ssim": ssim(out, tgt, 2.0),
        "ms_ssim": ms_ssim(out, tgt, 2.0),
        "psnr_soft": psnr(out_soft, tgt_soft, 1.0),
        "ssim_soft": ssim(out_soft, tgt_soft, 1.0),
        "ms_ssim_soft": ms_ssim(out_soft, tgt_soft, 1.0),
    }


SCORES: dict[str, Callable[[np.ndarray, np.ndarray, HUWindow], float]] = {
    "psnr": lambda o, t, w: psnr(to_unit_range(o, w), to_unit_range(t, w), 2.0),
    "ssim": lambda o, t, w: ssim(to_unit_range(o, w), to_unit_range(t, w), 2.0),
    "psnr_soft": lambda o, t, w: psnr(to_soft_tissue(o), to_soft_tissue(t), 1.0),
    "ssim_soft": lambda o, t, w: ssim(to_soft_tissue(o), to_soft_tissue(t), 1.0),
}


def hu_bias(output_hu: np.ndarray, target_hu: np.ndarray, mask: np.ndarray) -> float:
    """Mean of output − target over the mask, in HU: a denoiser must not shift CT numbers."""
    if not mask.any():
        return math.nan
    diff = np.asarray(output_hu, dtype=np.float64) - np.asarray(target_hu, dtype=np.float64)
    return float(diff[mask].mean())
