"""Scores against HD on validation patients that have LD/HD pairs but no noise-free REF: a site's own archive.

Why HD ranks checkpoints as the truth would: HD = truth + n_HD, and n_HD is independent of the LD the generator
sees, so pixel by pixel E[(G(LD) − HD)²] = E[(G(LD) − truth)²] + σ_HD². The error against HD is the error against
the truth offset by HD's noise variance, the same offset for every checkpoint. best.pt is kept by the offset-corrected
figure sqrt(max(0, err_HD² − σ_HD²)) (``val_error_est_hu``), an estimate of REF's figure that orders checkpoints as
err_HD does; σ_HD is HD's noise by the project's one definition (``conditioning_noise_hu``: flat soft-tissue windows),
which reads about −5…+20 % of the true level, so the corrected figure is an estimate while the ranking is not.

Soft tissue is taken on HD median-filtered over 3×3 px, not box-smoothed: an over-smoothing checkpoint errs most at
organ, body and bone borders, which REF's soft-tissue mask keeps; a 5-px box guide drops them, and on the project's
simulator its choice among blurs of LD then fell 40 % off REF's (with the median guide it agreed).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from scipy import ndimage
from torch import nn

from denoise_trainer.train.validation import (
    InsertedLesions,
    error_figures,
    evaluating,
    evenly,
    lesion_figures,
    model_inputs,
    output_hu,
    soft_tissue_mask,
)
from dicom_denoise_node.denoise.noise import conditioning_noise_hu

GUIDE_MEDIAN_PX = 3


def guide_mask(hu: np.ndarray) -> np.ndarray:
    """Soft tissue of a noisy slice: the window on its 3×3 median (edges kept, noise down about 1.5-fold)."""
    return soft_tissue_mask(ndimage.median_filter(np.asarray(hu, dtype=np.float32), GUIDE_MEDIAN_PX))


def corrected(errors: list[float], noise: list[float]) -> float:
    """sqrt(max(0, mean err² − mean σ²)): the error against HD less HD's own noise, HU."""
    return float(np.sqrt(max(0.0, float(np.mean(np.square(errors)) - np.mean(np.square(noise))))))


@dataclass
class PairedHDSet:
    """Validation LD slices with their HD partners, HD's noise per slice, and LD's own corrected error."""

    ld: list[torch.Tensor]
    hd_hu: list[np.ndarray]
    masks: list[np.ndarray]
    hd_noise: list[float]
    ld_error: float
    lesions: InsertedLesions | None = None

    criterion = "hd"
    key = "val_error_est_hu"

    @classmethod
    def build(
        cls,
        ld_hu: list[np.ndarray],
        hd_hu: list[np.ndarray],
        window: tuple[float, float],
        count: int,
        noise_conditioning: bool = False,
    ) -> PairedHDSet:
        """``count`` pairs evenly spread over the validation pairs."""
        if not hd_hu or len(hd_hu) != len(ld_hu):
            raise ValueError("the HD criterion needs an HD slice for every LD slice")
        pick = evenly(len(ld_hu), count)
        hds = [np.asarray(hd_hu[i], dtype=np.float32) for i in pick]
        masks = [guide_mask(hd) for hd in hds]
        noise = [conditioning_noise_hu(hd) for hd in hds]
        ld_errors = [error_figures(ld_hu[i], hd, m)[0] for i, hd, m in zip(pick, hds, masks, strict=True)]
        lds = model_inputs([ld_hu[i] for i in pick], window, noise_conditioning)
        lesions = InsertedLesions.build([x[0] for x in lds], masks, window)
        return cls(lds, hds, masks, noise, corrected(ld_errors, noise), lesions)

    @property
    def hd_level(self) -> float:
        """HD's noise, HU: about HD's own error against the truth, the ceiling a CycleGAN aims at."""
        return float(np.mean(self.hd_noise))

    @torch.inference_mode()
    def score(self, generator: nn.Module, window: tuple[float, float], device: torch.device) -> dict[str, float]:
        """Error against HD (std of G(LD) − HD in soft tissue), its offset-corrected estimate, / HD's level, bias."""
        errors, biases = [], []
        with evaluating(generator):
            for x, hd, mask in zip(self.ld, self.hd_hu, self.masks, strict=True):
                err, bias = error_figures(output_hu(generator, x, window, device), hd, mask)
                errors.append(err)
                biases.append(bias)
            lesion = lesion_figures(self.lesions, generator, device)
        est = corrected(errors, self.hd_noise)
        return {
            **lesion,
            "val_error_hd_hu": float(np.mean(errors)),
            "val_error_est_hu": est,
            "val_error_est_vs_hd": est / self.hd_level if self.hd_level > 0 else float("nan"),
            "val_bias_hu": float(np.mean(biases)),
        }

    def summary(self) -> str:
        return (
            f"{len(self.ld)} LD/HD pairs, no REF; criterion hd: error vs HD in soft tissue less HD's noise "
            f"({self.hd_level:.1f} HU): LD {self.ld_error:.1f} HU"
        )

    def line(self, step: int, scores: dict[str, float]) -> str:
        return (
            f"step {step}: validation error vs HD {scores['val_error_hd_hu']:.2f} HU, less HD's noise "
            f"{scores['val_error_est_hu']:.2f} HU ({scores['val_error_est_vs_hd']:.3f} × HD's {self.hd_level:.2f}), "
            f"bias {scores['val_bias_hu']:+.2f} HU, inserted lesions kept {scores.get('val_lesion_kept', np.nan):.2f}"
        )

    def header(self) -> dict[str, Any]:
        return {"hd_noise_hu": self.hd_level, "ld_error_est_hu": self.ld_error}
