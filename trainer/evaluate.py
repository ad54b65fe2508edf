"""Paired evaluation of denoisers on aligned LD / HD (/ REF) HU slices: the figures a physicist signs off on.

Why this shape: every method (the identity "LD", the model, classical baselines) goes through the same code path
and is scored against the same reference image, in the same windows, over the same flat regions, so the rows of
the table differ only by the method. PSNR / SSIM / MS-SSIM come from torchmetrics (not hand-written) so that they
match what others report. Metrics compare each output with HD by default (the paper's protocol on real data);
`reference="REF"` scores against the noise-free reconstruction of the synthetic archive instead.

Baselines: a Gaussian filter and non-local means, each tuned on validation slices so the model is compared with
a fair opponent, not a straw man. BM3D (`bm3d` package) would be the stronger classical baseline but is left out
for its licence; it could be added as one more `Denoiser` where a site may use it.
"""

from __future__ import annotations

import csv
import functools
import json
import logging
import math
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from rich.console import JustifyMethod
from rich.table import Table
from scipy import ndimage
from skimage.restoration import denoise_nl_means, estimate_sigma
from torchmetrics.functional.image import (
    multiscale_structural_similarity_index_measure,
    peak_signal_noise_ratio,
    structural_similarity_index_measure,
)

log = logging.getLogger(__name__)

Denoiser = Callable[[list[np.ndarray]], list[np.ndarray]]
HUWindow = tuple[float, float]

MODEL_HU_WINDOW: HUWindow = (-1024.0, 3071.0)  # the seed's normalisation window (HU → [-1, 1])
SOFT_TISSUE_WINDOW: HUWindow = (-160.0, 240.0)  # W400 / L40, scaled to [0, 1]
BODY_THRESHOLD_HU = -500.0
SSIM_KERNEL = 11  # Gaussian window, sigma 1.5, K1 0.01, K2 0.03 (Wang et al. 2004)
SSIM_SIGMA = 1.5
MS_SSIM_BETAS: tuple[float, ...] = (0.0448, 0.2856, 0.3001, 0.2363, 0.1333)  # Wang et al. 2003, five scales
FLAT_SIZE = 15
FLAT_MAX_REGIONS = 8
FLAT_TOL_HU = 5.0
FLAT_SMOOTH = 5  # px box that smooths HD for the flatness test when there is no REF
GAUSSIAN_SIGMAS: tuple[float, ...] = (0.3, 0.4, 0.5, 0.6, 0.75, 1.0, 1.25, 1.5, 2.0, 3.0)
NLM_H_FACTORS: tuple[float, ...] = (0.4, 0.6, 0.8, 1.0, 1.2, 1.5, 2.0, 2.5, 3.0, 4.0, 5.0, 6.5, 8.0, 10.0)

METRIC_KEYS: tuple[str, ...] = (
    "psnr",
    "ssim",
    "ms_ssim",
    "psnr_soft",
    "ssim_soft",
    "ms_ssim_soft",
    "hu_bias_hd",
    "hu_bias_ref",
    "noise_std",
    "noise_std_hd",
    "seconds",
)
ROW_KEYS: tuple[str, ...] = (
    "patient_id",
    "body_part",
    "instance_number",
    "method",
    *METRIC_KEYS,
    "flat_regions",
    "ms_ssim_scales",
)


@dataclass
class EvalSlice:
    """One aligned test slice in HU; REF (noise-free reconstruction) exists only for synthetic data."""

    patient_id: str
    body_part: str
    instance_number: int
    ld: np.ndarray
    hd: np.ndarray
    ref: np.ndarray | None = None


# --------------------------------------------------------------------------------------------------- metrics


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


_SCORES: dict[str, Callable[[np.ndarray, np.ndarray, HUWindow], float]] = {
    "psnr": lambda o, t, w: psnr(to_unit_range(o, w), to_unit_range(t, w), 2.0),
    "ssim": lambda o, t, w: ssim(to_unit_range(o, w), to_unit_range(t, w), 2.0),
    "psnr_soft": lambda o, t, w: psnr(to_soft_tissue(o), to_soft_tissue(t), 1.0),
    "ssim_soft": lambda o, t, w: ssim(to_soft_tissue(o), to_soft_tissue(t), 1.0),
}


def body_mask(hd_hu: np.ndarray) -> np.ndarray:
    """Pixels of the body: HD > -500 HU (excludes air and, deliberately, most of the lung)."""
    return np.asarray(hd_hu) > BODY_THRESHOLD_HU


def hu_bias(output_hu: np.ndarray, target_hu: np.ndarray, mask: np.ndarray) -> float:
    """Mean of output − target over the mask, in HU: a denoiser must not shift CT numbers."""
    if not mask.any():
        return math.nan
    diff = np.asarray(output_hu, dtype=np.float64) - np.asarray(target_hu, dtype=np.float64)
    return float(diff[mask].mean())


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
) -> list[tuple[int, int]]:
    """Top-left corners of up to `max_regions` non-overlapping size×size windows that lie wholly in the body
    (HD > -500 HU) and whose `flatness` is below `tol_hu`.

    Windows are drawn in a fixed pseudo-random order among the eligible ones rather than flattest first, so the
    choice neither clusters in one organ nor, without REF, favours windows where HD noise happened to be low.
    """
    half = size // 2
    inside = ndimage.binary_erosion(body_mask(hd), structure=np.ones((size, size), bool), border_value=0)
    centres = inside & (flatness(hd, ref, size, smooth) < tol_hu)
    ys, xs = np.nonzero(centres)
    order = np.random.default_rng(seed).permutation(len(ys))
    taken = np.zeros_like(centres)
    corners: list[tuple[int, int]] = []
    for i in order:
        if len(corners) >= max_regions:
            break
        cy, cx = int(ys[i]), int(xs[i])
        if taken[cy, cx]:
            continue
        corners.append((cy - half, cx - half))
        taken[max(0, cy - size + 1) : cy + size, max(0, cx - size + 1) : cx + size] = True  # centres that overlap
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


# --------------------------------------------------------------------------------------------------- baselines


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


def _target(s: EvalSlice, reference: str) -> np.ndarray:
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
    if metric not in _SCORES:
        raise ValueError(f"tuning metric must be one of {sorted(_SCORES)}, got {metric!r}")
    score = _SCORES[metric]
    lds = [s.ld for s in val_slices]
    grid = list(grid)
    best, best_score = math.nan, -math.inf
    for value in grid:
        outs = make(value)(lds)
        mean = float(
            np.mean([score(o, _target(s, reference), hu_window) for o, s in zip(outs, val_slices, strict=True)])
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


# --------------------------------------------------------------------------------------------------- report


def _mean_std(values: Sequence[float]) -> tuple[float, float]:
    """Mean and sample std over slices; NaN entries (e.g. no REF) are skipped; +inf (identical images) is kept
    as mean inf with std 0 when every value is inf."""
    arr = np.asarray([v for v in values if v is not None and not math.isnan(v)], dtype=np.float64)
    if arr.size == 0:
        return math.nan, math.nan
    if np.isinf(arr).any():
        return (float(arr[0]), 0.0) if np.all(arr == arr[0]) else (float(np.sum(arr)), math.nan)
    return float(arr.mean()), float(arr.std(ddof=1)) if arr.size > 1 else 0.0


def _to_json_value(v: Any) -> Any:
    if isinstance(v, float) and not math.isfinite(v):
        return None if math.isnan(v) else ("inf" if v > 0 else "-inf")
    if isinstance(v, dict):
        return {k: _to_json_value(x) for k, x in v.items()}
    if isinstance(v, list | tuple):
        return [_to_json_value(x) for x in v]
    return v


def _from_json_row(row: dict[str, Any]) -> dict[str, Any]:
    out = dict(row)
    for key in METRIC_KEYS:
        v = out.get(key)
        out[key] = math.nan if v is None else float(v)  # float("inf") parses the "inf" marker
    return out


@dataclass
class EvalReport:
    """Per-slice, per-method metric rows plus the settings needed to reproduce them."""

    reference: str
    hu_window: HUWindow
    methods: list[str]
    rows: list[dict[str, Any]]
    ms_ssim_betas: dict[str, list[float]] = field(default_factory=dict)
    settings: dict[str, Any] = field(default_factory=dict)

    def method_rows(self, method: str) -> list[dict[str, Any]]:
        """The per-slice rows of one method, in slice order."""
        return [r for r in self.rows if r["method"] == method]

    def summary_rows(self) -> list[dict[str, Any]]:
        """One row per method: n_slices and `<metric>_mean` / `<metric>_std` across slices."""
        summary = []
        for method in self.methods:
            rows = self.method_rows(method)
            entry: dict[str, Any] = {"method": method, "n_slices": len(rows)}
            for key in METRIC_KEYS:
                entry[f"{key}_mean"], entry[f"{key}_std"] = _mean_std([r[key] for r in rows])
            summary.append(entry)
        return summary

    def to_json(self, path: Path | str) -> None:
        """Strict JSON (no NaN/Infinity tokens): NaN → null, ±inf → "inf"/"-inf"; `from_json` restores them."""
        doc = {
            "reference": self.reference,
            "hu_window": list(self.hu_window),
            "soft_tissue_window": list(SOFT_TISSUE_WINDOW),
            "methods": self.methods,
            "ms_ssim_betas": self.ms_ssim_betas,
            "settings": self.settings,
            "summary": self.summary_rows(),
            "slices": self.rows,
        }
        Path(path).write_text(json.dumps(_to_json_value(doc), indent=2, allow_nan=False) + "\n")

    @classmethod
    def from_json(cls, path: Path | str) -> EvalReport:
        """Read back a report written by `to_json` (inf and NaN restored), e.g. to compare two models."""
        doc = json.loads(Path(path).read_text())
        return cls(
            reference=doc["reference"],
            hu_window=(float(doc["hu_window"][0]), float(doc["hu_window"][1])),
            methods=list(doc["methods"]),
            rows=[_from_json_row(r) for r in doc["slices"]],
            ms_ssim_betas={k: [float(b) for b in v] for k, v in doc["ms_ssim_betas"].items()},
            settings=dict(doc.get("settings", {})),
        )

    def to_csv(self, path: Path | str) -> None:
        """One row per (slice, method); floats as repr so they round-trip, inf/nan as "inf"/"nan"."""
        with Path(path).open("w", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=list(ROW_KEYS))
            writer.writeheader()
            for row in self.rows:
                writer.writerow({k: row[k] for k in ROW_KEYS})


def _check_outputs(method: str, outs: list[np.ndarray], inputs: list[np.ndarray]) -> None:
    if len(outs) != len(inputs):
        raise ValueError(f"method {method!r} returned {len(outs)} slices for {len(inputs)} inputs")
    for o, i in zip(outs, inputs, strict=True):
        if np.shape(o) != np.shape(i):
            raise ValueError(f"method {method!r} changed a slice's shape from {np.shape(i)} to {np.shape(o)}")


def evaluate(
    slices: list[EvalSlice],
    methods: dict[str, Denoiser],
    hu_window: HUWindow = MODEL_HU_WINDOW,
    reference: str = "HD",
    *,
    include_hd: bool = False,
    batch_size: int = 8,
    flat_size: int = FLAT_SIZE,
    flat_max_regions: int = FLAT_MAX_REGIONS,
    flat_tol_hu: float = FLAT_TOL_HU,
    per_output: Callable[[str, int, np.ndarray], None] | None = None,
) -> EvalReport:
    """Score "LD" (identity, always), each method, and optionally "HD" (sanity row) against the reference.

    Seconds per slice are the wall time of each batched call divided by the batch length (0 for LD and HD).
    ``per_output(method, slice index, output HU)`` sees every output, for scores beyond these (trainer/lesions.py).
    """
    if not slices:
        raise ValueError("evaluate needs at least one slice")
    reserved = {"LD", "HD"} & set(methods)
    if reserved:
        raise ValueError(f"method names {sorted(reserved)} are reserved (LD is always scored, HD via include_hd)")
    targets = [_target(s, reference) for s in slices]
    names = ["LD", *methods] + (["HD"] if include_hd else [])
    regions = [
        find_flat_regions(s.hd, s.ref, size=flat_size, max_regions=flat_max_regions, tol_hu=flat_tol_hu) for s in slices
    ]
    bodies = [body_mask(s.hd) for s in slices]
    hd_noise = [noise_std(s.hd, r, flat_size, s.ref) for s, r in zip(slices, regions, strict=True)]
    betas = {f"{s.hd.shape[0]}x{s.hd.shape[1]}": list(ms_ssim_betas(s.hd.shape)) for s in slices}
    for shape, b in betas.items():
        if len(b) < len(MS_SSIM_BETAS):
            log.info("MS-SSIM on %s slices uses %d scales, betas %s", shape, len(b), [round(x, 4) for x in b])

    rows: list[dict[str, Any]] = []
    for name in names:
        outputs: list[np.ndarray] = []
        seconds: list[float] = []
        for start in range(0, len(slices), batch_size):
            batch = slices[start : start + batch_size]
            inputs = [s.ld for s in batch]
            if name == "LD":
                outs, elapsed = inputs, 0.0
            elif name == "HD":
                outs, elapsed = [s.hd for s in batch], 0.0
            else:
                copies = [np.array(x, copy=True) for x in inputs]  # a method that works in place cannot spoil LD
                t0 = time.perf_counter()
                outs = [np.asarray(o) for o in methods[name](copies)]
                elapsed = time.perf_counter() - t0
                _check_outputs(name, outs, inputs)
            outputs.extend(outs)
            seconds.extend([elapsed / len(batch)] * len(batch))
        for i, (s, out) in enumerate(zip(slices, outputs, strict=True)):
            if per_output is not None:
                per_output(name, i, out)
            row: dict[str, Any] = {
                "patient_id": s.patient_id,
                "body_part": s.body_part,
                "instance_number": s.instance_number,
                "method": name,
            }
            row.update(image_metrics(out, targets[i], hu_window))
            row["hu_bias_hd"] = hu_bias(out, s.hd, bodies[i])
            row["hu_bias_ref"] = hu_bias(out, s.ref, bodies[i]) if s.ref is not None else math.nan
            row["noise_std"] = noise_std(out, regions[i], flat_size, s.ref)
            row["noise_std_hd"] = hd_noise[i]
            row["seconds"] = seconds[i]
            row["flat_regions"] = len(regions[i])
            row["ms_ssim_scales"] = len(ms_ssim_betas(np.shape(out)))
            rows.append(row)
        log.info("evaluated %s on %d slices (%.3f s/slice)", name, len(slices), float(np.mean(seconds)))
    settings = {
        "body_threshold_hu": BODY_THRESHOLD_HU,
        "ssim_kernel": SSIM_KERNEL,
        "ssim_sigma": SSIM_SIGMA,
        "flat_size": flat_size,
        "flat_max_regions": flat_max_regions,
        "flat_tol_hu": flat_tol_hu,
        "flat_guide": "REF" if all(s.ref is not None for s in slices) else "box-smoothed HD where no REF",
        "flat_smooth_px": FLAT_SMOOTH,
        "batch_size": batch_size,
        "methods": {name: describe(fn) for name, fn in methods.items()},
    }
    return EvalReport(reference, (float(hu_window[0]), float(hu_window[1])), names, rows, betas, settings)


# --------------------------------------------------------------------------------------------------- table


def _fmt(mean: float, std: float, digits: int, signed: bool = False) -> str:
    if math.isnan(mean):
        return "–"
    if math.isinf(mean):
        return "inf" if mean > 0 else "-inf"
    sign = "+" if signed else ""
    text = f"{mean:{sign}.{digits}f}"
    return text if math.isnan(std) or std == 0.0 else f"{text} ± {std:.{digits}f}"


def _table_cells(report: EvalReport) -> tuple[list[tuple[str, JustifyMethod]], list[list[str]], str, str]:
    """Columns, rows (mean ± std over slices), title and caption shared by the console and Markdown tables."""
    summary = report.summary_rows()
    has_ref = any(not math.isnan(r["hu_bias_ref"]) for r in report.rows)
    hd_noise = summary[0]["noise_std_hd_mean"] if summary else math.nan
    betas = "; ".join(f"{k}: {len(v)} scales" for k, v in report.ms_ssim_betas.items())
    title = f"Denoising vs {report.reference} ({summary[0]['n_slices'] if summary else 0} slices)"
    caption = (
        f"window {report.hu_window[0]:g}…{report.hu_window[1]:g} HU; soft tissue W400/L40; "
        f"MS-SSIM {betas}; HD noise {_fmt(hd_noise, math.nan, 1)} HU"
    )
    columns: list[tuple[str, JustifyMethod]] = [
        ("Method", "left"),
        ("PSNR dB", "right"),
        ("SSIM", "right"),
        ("MS-SSIM", "right"),
        ("PSNR soft dB", "right"),
        ("SSIM soft", "right"),
        ("HU bias vs HD", "right"),
    ]
    if has_ref:
        columns.append(("HU bias vs REF", "right"))
    columns += [("noise std HU", "right"), ("s/slice", "right")]
    rows = []
    for e in summary:
        cells = [
            e["method"],
            _fmt(e["psnr_mean"], e["psnr_std"], 2),
            _fmt(e["ssim_mean"], e["ssim_std"], 4),
            _fmt(e["ms_ssim_mean"], e["ms_ssim_std"], 4),
            _fmt(e["psnr_soft_mean"], e["psnr_soft_std"], 2),
            _fmt(e["ssim_soft_mean"], e["ssim_soft_std"], 4),
            _fmt(e["hu_bias_hd_mean"], e["hu_bias_hd_std"], 1, signed=True),
        ]
        if has_ref:
            cells.append(_fmt(e["hu_bias_ref_mean"], e["hu_bias_ref_std"], 1, signed=True))
        cells += [_fmt(e["noise_std_mean"], e["noise_std_std"], 1), f"{e['seconds_mean']:.3g}"]
        rows.append(cells)
    return columns, rows, title, caption


def render_table(report: EvalReport) -> Table:
    """Methods as rows, mean ± std over slices as cells (rich Table, for the console or a notebook)."""
    columns, rows, title, caption = _table_cells(report)
    table = Table(title=title, caption=caption)
    for name, justify in columns:
        table.add_column(name, justify=justify)
    for cells in rows:
        table.add_row(*cells)
    return table


def markdown_table(report: EvalReport) -> str:
    """The same table as Markdown (model cards, issue notes)."""
    columns, rows, title, caption = _table_cells(report)
    lines = [f"{title}; {caption}.", "", "| " + " | ".join(c for c, _ in columns) + " |"]
    lines.append("|" + "|".join("---:" if j == "right" else "---" for _, j in columns) + "|")
    lines += ["| " + " | ".join(cells) + " |" for cells in rows]
    return "\n".join(lines) + "\n"
