"""The classical baselines, Gaussian filter and non-local means, each tuned on validation slices against the same
reference and in the same window it is scored in: a fair opponent, not a straw man.

BM3D (``bm3d`` package) would be the stronger classical baseline but is left out for its licence; it could be
added as one more ``Denoiser`` where a site may use it.
"""

import functools
import logging
import math
from collections.abc import Callable, Iterable, Sequence

import numpy as np
from scipy import ndimage
from skimage.restoration import denoise_nl_means, estimate_sigma

from denoise_trainer.evaluate.image_metrics import MODEL_HU_WINDOW, SCORES, EvalSlice, HUWindow

log = logging.getLogger(__name__)

Denoiser = Callable[[list[np.ndarray]], list[np.ndarray]]
GAUSSIAN_SIGMAS: tuple[float, ...] = (0.3, 0.4, 0.5, 0.6, 0.75, 1.0, 1.25, 1.5, 2.0, 3.0)
NLM_H_FACTORS: tuple[float, ...] = (0.4, 0.6, 0.8, 1.0, 1.2, 1.5, 2.0, 2.5, 3.0, 4.0, 5.0, 6.5, 8.0, 10.0)


def _described(fn: Denoiser, description: str) -> Denoiser:
    """Attach a human-readable description that `evaluate` copies into the report (tuned parameters included)."""
    fn.description = description  # type: ignore[attr-defined]
    return fn


def describe(method: Denoiser) -> str:
    """A method's description: the one attached by the factories here, else its name."""
    return str(getattr(method, "description", getattr(method, "__qualname__", type(method).__name__)))


def identity(slices: list[np.ndarray]) -> list[np.ndarray]:
    """The "LD" method: no denoising at all."""
    return list(slices)


def gaussian_denoiser(sigma: float) -> Denoiser:
    """Gaussian smoothing of the HU image, sigma in pixels."""

    def run(slices: list[np.ndarray]) -> list[np.ndarray]:
        return [ndimage.gaussian_filter(np.asarray(s, dtype=np.float32), sigma) for s in slices]

    return _described(run, f"gaussian_filter sigma={sigma:g} px")


def haar_sigma(image: np.ndarray) -> float:
    """Donoho's noise estimate, median(|HH|) / 0.6745 over the finest orthonormal Haar diagonal detail.

    Why: skimage's `estimate_sigma` does the same with a db2 wavelet but needs PyWavelets, an optional dependency;
    this keeps NLM usable without it (the tuned h factor absorbs the small difference between the two).
    """
    x = np.asarray(image, dtype=np.float64)
    h, w = (x.shape[0] // 2) * 2, (x.shape[1] // 2) * 2
    x = x[:h, :w]
    hh = (x[0::2, 0::2] - x[0::2, 1::2] - x[1::2, 0::2] + x[1::2, 1::2]) / 2.0
    hh = hh[hh != 0]
    return float(np.median(np.abs(hh)) / 0.6744897501960817) if hh.size else 0.0


@functools.cache
def _have_pywavelets() -> bool:
    try:
        import pywt  # noqa: F401  (only probing: skimage.estimate_sigma needs it)
    except ImportError:
        log.warning("PyWavelets missing: NLM sigma from the Haar MAD estimate instead of skimage estimate_sigma")
        return False
    return True


def noise_sigma(image: np.ndarray) -> float:
    """Noise level for NLM: skimage `estimate_sigma` when PyWavelets is installed, else `haar_sigma`."""
    if _have_pywavelets():
        return float(estimate_sigma(np.asarray(image, dtype=np.float64), channel_axis=None))
    return haar_sigma(image)


def nlm_denoiser(h_factor: float = 0.8, patch_size: int = 5, patch_distance: int = 6) -> Denoiser:
    """Non-local means on the HU image, h = h_factor · sigma with sigma estimated per slice (wavelet MAD)."""

    def run(slices: list[np.ndarray]) -> list[np.ndarray]:
        out = []
        for s in slices:
            image = np.asarray(s, dtype=np.float64)
            sigma = noise_sigma(image)
            den = denoise_nl_means(
                image,
                h=h_factor * sigma,
                sigma=sigma,
                patch_size=patch_size,
                patch_distance=patch_distance,
                fast_mode=True,
                channel_axis=None,
            )
            out.append(den.astype(np.float32))
        return out

    estimator = "estimate_sigma" if _have_pywavelets() else "haar_sigma"
    text = f"denoise_nl_means h={h_factor:g}·sigma ({estimator}), patch {patch_size}, distance {patch_distance}, fast"
    return _described(run, text)


def reference_image(s: EvalSlice, reference: str) -> np.ndarray:
    """The image a slice is scored against: HD (the method's protocol) or the noise-free REF."""
    if reference == "HD":
        return s.hd
    if reference == "REF":
        if s.ref is None:
            raise ValueError(f"reference REF asked but slice {s.patient_id}/{s.instance_number} has no REF image")
        return s.ref
    raise ValueError(f"reference must be 'HD' or 'REF', got {reference!r}")


def _tune(
    name: str,
    make: Callable[[float], Denoiser],
    grid: Iterable[float],
    val_slices: Sequence[EvalSlice],
    hu_window: HUWindow,
    reference: str,
    metric: str,
) -> float:
    if not val_slices:
        raise ValueError(f"tuning {name} needs at least one validation slice")
    if metric not in SCORES:
        raise ValueError(f"tuning metric must be one of {sorted(SCORES)}, got {metric!r}")
    score = SCORES[metric]
    lds = [s.ld for s in val_slices]
    grid = list(grid)
    best, best_score = math.nan, -math.inf
    for value in grid:
        outs = make(value)(lds)
        mean = float(
            np.mean([score(o, reference_image(s, reference), hu_window) for o, s in zip(outs, val_slices, strict=True)])
        )
        log.info("tune %s: %g → mean %s %.4f over %d slices", name, value, metric, mean, len(val_slices))
        if mean > best_score:
            best, best_score = float(value), mean
    log.info("tune %s: chose %g (mean %s %.4f)", name, best, metric, best_score)
    if len(grid) > 1 and best in (min(grid), max(grid)):
        log.warning(
            "tune %s: best value %g is at the edge of the grid %s; widen it for a fair baseline", name, best, grid
        )
    return best


def tune_gaussian(
    val_slices: Sequence[EvalSlice],
    sigmas: Iterable[float] = GAUSSIAN_SIGMAS,
    *,
    hu_window: HUWindow = MODEL_HU_WINDOW,
    reference: str = "HD",
    metric: str = "psnr",
) -> float:
    """Sigma (px) maximising the mean metric vs the reference on validation slices: a fair, not a straw-man,
    baseline. Tuning against noisy HD is sound: HD noise is independent of LD, so it only adds a constant to MSE."""
    return _tune("gaussian sigma", gaussian_denoiser, sigmas, val_slices, hu_window, reference, metric)


def tune_nlm(
    val_slices: Sequence[EvalSlice],
    h_factors: Iterable[float] = NLM_H_FACTORS,
    *,
    hu_window: HUWindow = MODEL_HU_WINDOW,
    reference: str = "HD",
    metric: str = "psnr",
) -> float:
    """h factor (h = factor · estimated sigma) maximising the mean metric on validation slices."""
    return _tune("nlm h factor", nlm_denoiser, h_factors, val_slices, hu_window, reference, metric)


def classical_baselines(
    val_slices: Sequence[EvalSlice] | None = None,
    *,
    hu_window: HUWindow = MODEL_HU_WINDOW,
    reference: str = "HD",
    metric: str = "psnr",
) -> dict[str, Denoiser]:
    """The "gaussian" and "nlm" baselines, tuned on `val_slices` when given, else with defaults (sigma 1 px, h 0.8σ)."""
    if not val_slices:
        log.warning("no validation slices: classical baselines use untuned defaults (sigma 1 px, h = 0.8 sigma)")
        return {"gaussian": gaussian_denoiser(1.0), "nlm": nlm_denoiser(0.8)}
    sigma = tune_gaussian(val_slices, hu_window=hu_window, reference=reference, metric=metric)
    h_factor = tune_nlm(val_slices, hu_window=hu_window, reference=reference, metric=metric)
    return {"gaussian": gaussian_denoiser(sigma), "nlm": nlm_denoiser(h_factor)}
