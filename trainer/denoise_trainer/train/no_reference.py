"""Scores of a checkpoint on validation patients that have LD alone: no noise-free REF, no HD of the same slices.

What a site's archive gives when its validation patients were scanned at one dose each. The site's HD level comes
from HD slices of other patients (validation HD-only patients, else the training HD patients).

best.pt is kept by ``val_score_hu`` (lower is better): an estimate of the soft-tissue error against the truth, the
figure the REF criterion ranks by, times a penalty for each guard figure outside its tolerance.

* ``val_error_est_hu``: Stein's unbiased estimate of the error (train/noise_probe.py), as a std like REF's (the mean
  bias taken out), in soft tissue of the LD's 3×3 median (train/hd_validation.py says why not a box guide). It
  weighs the noise a checkpoint leaves against what it takes from the input by the input's own noise, as the error
  against the truth does. On three 512-px slices of the project's simulator it chose among Gaussian blurs, blends
  and total-variation denoisings of LD within 0, 3 and 5 % of REF's best error (REF's own curve over the last is not
  monotone), where flat-region noise plus the RMS of the low-pass deviation (which cannot see fine structure lost)
  chose 40-140 % off.
* the guards, each 0 within its tolerance; beyond it, its excess adds to the penalty factor (1 + Σ excess):
  - ``val_lesion_kept`` < 0.9: median contrast kept of lesions inserted in the LD (the issue's bar for lesions);
  - |``val_bias_hu``| > 3 HU: the mean of the Gaussian low-pass (2 px) of output − input in soft tissue, a HU shift
    (the issue's bar), counted per 10 HU;
  - ``val_edges_kept`` < 0.9: the share of the input's edge strength the output keeps (least-squares slope of the
    gradient magnitudes of the low-passed output on the input's, in the body). A slope, not a correlation: a
    checkpoint that halves every edge keeps their correlation at 1;
  - ``val_texture`` outside 0.5-1.5: the high-frequency share of the output's noise power spectrum in the flat
    windows / HD's (as the scorecard's texture, evaluate/scorecard.py): plastic (low) or grainy (high) output.
* reported, not scored: ``val_noise_hu``, the output's flat-region noise (the project's noise definition, in the
  windows found on the input), and ``val_noise_vs_hd``, the same / the site's HD level: the error estimate holds it.

Why these weights: within every tolerance the score is the error estimate alone, so the choice is the one the error
against the truth would make. A guard 0.1 beyond its tolerance (lesions kept 0.8, edges 0.8, 1 HU past the bias bar)
costs 10 % of the error, about the spread of the error between one run's checkpoints (the CycleGAN curve swings
±2 HU at 15-20 HU): a clear failure outweighs a small gain in error, a marginal one does not. The tolerances are the
issue's bars where it has one; for edges and texture they are wide enough that the best denoisings by REF in those
families pass them (edges 0.97-0.98, texture 0.6-1.0).
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from scipy import ndimage
from torch import nn

from denoise_trainer.evaluate.scorecard import hf_share
from denoise_trainer.train.hd_validation import GUIDE_MEDIAN_PX, guide_mask
from denoise_trainer.train.noise_probe import correlated_noise, noise_autocovariance, sure_mse, window_nps
from denoise_trainer.train.validation import (
    InsertedLesions,
    evaluating,
    evenly,
    lesion_figures,
    model_inputs,
    output_hu,
)
from dicom_denoise_node.denoise.noise import (
    BODY_THRESHOLD_HU,
    CONDITIONING_SIZE,
    conditioning_noise_hu,
    noise_std,
    soft_tissue_regions,
)

log = logging.getLogger(__name__)

SIZE = CONDITIONING_SIZE  # px: the project's flat windows (noise, texture and the noise model are measured in them)
MODEL_REGIONS = 64  # windows per slice for the noise model: more than the noise figure's 16, outliers are dropped
LOWPASS_PX = 2.0  # Gaussian σ below which an LD image is mostly noise: bias and edges are compared above it
PROBE_EPS = 0.1  # the probe's size relative to the input's noise: small for Stein's derivative, far above rounding
LESION_MIN, BIAS_MAX_HU, BIAS_PER_HU, EDGES_MIN, TEXTURE_RANGE = 0.9, 3.0, 10.0, 0.9, (0.5, 1.5)


@contextmanager
def exact_arithmetic() -> Iterator[None]:
    """No TF32 on CUDA for the block: the probe's effect on the output is a thousandth of it, under TF32's rounding."""
    matmul, cudnn = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
    try:
        yield
    finally:
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = matmul, cudnn


def edge_strength(hu: np.ndarray) -> np.ndarray:
    """Gradient magnitude (HU/px) of the image low-passed at LOWPASS_PX."""
    smooth = ndimage.gaussian_filter(np.asarray(hu, dtype=np.float64), LOWPASS_PX)
    return np.hypot(ndimage.sobel(smooth, 0), ndimage.sobel(smooth, 1)) / 8.0


def penalty(scores: dict[str, float]) -> float:
    """Σ of the guards' excesses beyond their tolerances (0 when every guard is within); NaN figures count 0."""
    lo, hi = TEXTURE_RANGE
    terms = (
        LESION_MIN - scores.get("val_lesion_kept", LESION_MIN),
        (abs(scores["val_bias_hu"]) - BIAS_MAX_HU) / BIAS_PER_HU,
        EDGES_MIN - scores["val_edges_kept"],
        lo - scores["val_texture"],
        scores["val_texture"] - hi,
    )
    return float(sum(max(0.0, t) for t in terms if np.isfinite(t)))


def hd_reference(hd_hu: list[np.ndarray], count: int) -> tuple[float, float]:
    """The site's HD level over ``count`` slices: (noise by the project's definition, HU; high-frequency share of
    its noise power in the same windows)."""
    noise, nps = [], np.zeros((SIZE, SIZE))
    for i in evenly(len(hd_hu), count):
        hd = np.asarray(hd_hu[i], dtype=np.float64)
        noise.append(conditioning_noise_hu(hd))
        nps += window_nps(hd, soft_tissue_regions(hd), SIZE)
    return (float(np.mean(noise)) if noise else float("nan")), hf_share(nps)


@dataclass
class NoReferenceSet:
    """Validation LD slices with what scoring them needs: soft tissue, body, flat windows, a noise probe each."""

    ld: list[torch.Tensor]
    ld_hu: list[np.ndarray]
    masks: list[np.ndarray]
    bodies: list[np.ndarray]
    regions: list[list[tuple[int, int]]]
    probes: list[np.ndarray]
    variances: list[float]
    edges: list[np.ndarray]
    hd_noise: float
    hd_hf: float
    lesions: InsertedLesions | None = None

    criterion = "no-reference"
    key = "val_score_hu"

    @classmethod
    def build(
        cls,
        ld_hu: list[np.ndarray],
        hd_hu: list[np.ndarray],
        window: tuple[float, float],
        count: int,
        noise_conditioning: bool = False,
    ) -> NoReferenceSet:
        """``count`` LD slices evenly spread, those with a flat soft-tissue window (the noise model needs one);
        the HD level from up to ``count`` HD slices of other patients."""
        kept: list[np.ndarray] = []
        masks, bodies, regions, probes, variances, edges = [], [], [], [], [], []
        for k, i in enumerate(evenly(len(ld_hu), count)):
            ld = np.asarray(ld_hu[i], dtype=np.float32)
            acov = noise_autocovariance(ld, soft_tissue_regions(ld, SIZE, MODEL_REGIONS), SIZE)
            if acov is None:
                continue
            kept.append(ld)
            masks.append(guide_mask(ld))
            bodies.append(ndimage.median_filter(ld, GUIDE_MEDIAN_PX) > BODY_THRESHOLD_HU)
            regions.append(soft_tissue_regions(ld))
            probes.append(correlated_noise(acov, ld.shape, np.random.default_rng(k)))
            variances.append(float(acov[acov.shape[0] // 2, acov.shape[1] // 2]))
            edges.append(edge_strength(ld))
        if not kept:
            raise ValueError("no validation LD slice has a flat soft-tissue window: no noise model to score with")
        hd_noise, hd_hf = hd_reference(hd_hu, count)
        lds = model_inputs(kept, window, noise_conditioning)
        lesions = InsertedLesions.build([x[0] for x in lds], masks, window)
        return cls(lds, kept, masks, bodies, regions, probes, variances, edges, hd_noise, hd_hf, lesions)

    @torch.inference_mode()
    def score(self, generator: nn.Module, window: tuple[float, float], device: torch.device) -> dict[str, float]:
        """The figures of the module docstring, averaged over the slices, and the score they combine into."""
        to_model = 2.0 / (window[1] - window[0])
        mse, bias, edges, noise, nps = [], [], [], [], np.zeros((SIZE, SIZE))
        with evaluating(generator), exact_arithmetic():
            for k, x in enumerate(self.ld):
                y, mask, probe = self.ld_hu[k], self.masks[k], self.probes[k]
                out = output_hu(generator, x, window, device)
                probed = x.clone()
                probed[:, 0] += torch.from_numpy(probe * (PROBE_EPS * to_model))
                out_probed = output_hu(generator, probed, window, device)
                shift = float((out - y)[mask].mean())
                mse.append(sure_mse(y, out, out_probed, probe, PROBE_EPS, self.variances[k], mask) - shift**2)
                bias.append(float(ndimage.gaussian_filter(out - y, LOWPASS_PX)[mask].mean()))
                gain = self.edges[k][self.bodies[k]]
                edges.append(float((edge_strength(out)[self.bodies[k]] * gain).sum() / max((gain**2).sum(), 1e-12)))
                noise.append(noise_std(out, self.regions[k], SIZE))
                nps += window_nps(out, self.regions[k], SIZE)
            lesion = lesion_figures(self.lesions, generator, device)
        scores = {
            **lesion,
            "val_error_est_hu": float(np.sqrt(max(0.0, float(np.mean(mse))))),
            "val_bias_hu": float(np.mean(bias)),
            "val_edges_kept": float(np.mean(edges)),
            "val_texture": hf_share(nps) / self.hd_hf,
            "val_noise_hu": float(np.mean(noise)),
            "val_noise_vs_hd": float(np.mean(noise)) / self.hd_noise,
        }
        scores["val_penalty"] = penalty(scores)
        scores["val_score_hu"] = scores["val_error_est_hu"] * (1.0 + scores["val_penalty"])
        return scores

    def summary(self) -> str:
        return (
            f"{len(self.ld)} LD slices, no REF, no HD pairs; criterion no-reference: Stein's error estimate in soft "
            f"tissue × guards (lesions, bias, edges, texture); the site's HD: noise {self.hd_noise:.1f} HU, "
            f"high-frequency share {self.hd_hf:.2f}"
        )

    def line(self, step: int, scores: dict[str, float]) -> str:
        return (
            f"step {step}: validation score {scores['val_score_hu']:.2f} HU = error estimate "
            f"{scores['val_error_est_hu']:.2f} HU × (1 + {scores['val_penalty']:.2f}); noise "
            f"{scores['val_noise_vs_hd']:.2f} × HD's, texture {scores['val_texture']:.2f}, bias "
            f"{scores['val_bias_hu']:+.2f} HU, edges kept {scores['val_edges_kept']:.2f}, inserted lesions kept "
            f"{scores.get('val_lesion_kept', np.nan):.2f}"
        )

    def header(self) -> dict[str, Any]:
        return {"hd_noise_hu": self.hd_noise, "hd_hf_share": self.hd_hf}
