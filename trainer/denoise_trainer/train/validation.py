"""Scores on the validation patients during training, against the noise-free REF: the curve and the checkpoint choice.

Why against REF and not HD: HD carries its own quantum noise, so a denoiser that removes more noise than HD has
scores worse against HD while being closer to the truth; a CycleGAN's objective is HD-like output, which against
REF means an error close to HD's own. Why soft tissue: that is where low-dose noise hides low-contrast lesions, and
where the −160…240 HU window a radiologist reads in shows it. Full slices, through the generator directly (the
node's tiler gives the same result for this translation-equivariant network up to blending, evaluate/comparison.py
scores through the tiler). A noise-conditioned generator gets each validation slice with its map, measured on the
LD slice as the node measures it (data/slices.py ``noise_maps``), so the curve scores what the node will run.

The ``Validator`` is the same for every criterion: this REF set, the error against HD where validation pairs lack
REF (train/hd_validation.py), no-reference figures where there are no pairs (train/no_reference.py);
train/selection.py chooses among them from the data.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import torch
from torch import nn

from denoise_trainer.data.slices import noise_maps
from denoise_trainer.train.conditioning import add_to_image
from dicom_denoise_node.model.registry import normalize_hu

log = logging.getLogger(__name__)

SOFT_TISSUE_HU = (-160.0, 240.0)
LESION_PATCH = 64


def soft_tissue_mask(ref_hu: np.ndarray) -> np.ndarray:
    """Pixels whose noise-free value lies in the soft-tissue window (fat, muscle, organs, lesions)."""
    return (ref_hu >= SOFT_TISSUE_HU[0]) & (ref_hu <= SOFT_TISSUE_HU[1])


def error_figures(out_hu: np.ndarray, ref_hu: np.ndarray, mask: np.ndarray) -> tuple[float, float]:
    """(std, mean) of out − REF over the mask, HU: the error std is the noise a reader sees, the mean a HU bias."""
    diff = (out_hu - ref_hu)[mask]
    return float(diff.std()), float(diff.mean())


@dataclass
class InsertedLesions:
    """Fixed LD patches of the validation slices, each with one inserted disk (trainer/lesion_term.py): the contrast
    the generator keeps of them is scored beside the error, so that a checkpoint that denoises by flattening faint
    lesions can be told apart (and ruled out by ``val_min_lesion_kept``)."""

    x: torch.Tensor
    d: torch.Tensor
    core: torch.Tensor
    ring: torch.Tensor
    amplitude: torch.Tensor

    @classmethod
    def build(
        cls, lds: list[torch.Tensor], masks: list[np.ndarray], window: tuple[float, float], per_slice: int = 8
    ) -> InsertedLesions | None:
        """``per_slice`` 64² patches centred on soft tissue of each (C, H, W) slice; the same every time (seed 0)."""
        from denoise_trainer.train.lesion_term import inserted_lesions

        rng = np.random.default_rng(0)
        half = LESION_PATCH // 2
        patches = []
        for ld, mask in zip(lds, masks, strict=True):
            h, w = mask.shape
            inner = np.zeros_like(mask)
            inner[half : h - half, half : w - half] = mask[half : h - half, half : w - half]
            ys, xs = np.nonzero(inner)
            if ys.size == 0:
                continue
            for k in rng.choice(ys.size, size=min(per_slice, ys.size), replace=False):
                y, x = int(ys[k]), int(xs[k])
                patches.append(ld[:, y - half : y + half, x - half : x + half])
        if not patches:
            return None
        x = torch.stack(patches).float()
        gen = torch.Generator().manual_seed(0)
        d, core, ring, amplitude = inserted_lesions(x.shape, 2.0 / (window[1] - window[0]), gen, x.device)
        return cls(x, d, core, ring, amplitude)

    def kept(self, generator: nn.Module, device: torch.device) -> np.ndarray:
        """Contrast kept of each inserted lesion (1 = all of it)."""
        from denoise_trainer.train.lesion_term import contrast_kept

        x = self.x.to(device)
        change = generator(add_to_image(x, self.d.to(device))).float() - generator(x).float()
        args = (t.to(device) for t in (self.core, self.ring, self.amplitude))
        return contrast_kept(change, *args).cpu().numpy()


def evenly(n: int, count: int) -> np.ndarray:
    """Indices of ``count`` items evenly spread over ``n`` (all when there are fewer): every patient represented."""
    return np.unique(np.linspace(0, n - 1, min(count, n)).round().astype(int))


def model_inputs(
    slices_hu: list[np.ndarray], window: tuple[float, float], noise_conditioning: bool
) -> list[torch.Tensor]:
    """(1, C, H, W) inputs in the model's window; with ``noise_conditioning`` each with its noise-level map."""
    xs = [torch.from_numpy(normalize_hu(hu, *window))[None, None] for hu in slices_hu]
    if noise_conditioning:
        maps = noise_maps(slices_hu, window)
        xs = [torch.cat([x, torch.full_like(x, m)], 1) for x, m in zip(xs, maps, strict=True)]
    return xs


class ValidationCriterion(Protocol):
    """What the Validator needs of a validation set: its scores, which of them best.pt minimises, and its words."""

    criterion: str  # "ref", "hd" or "no-reference": stored in checkpoints and exported models
    key: str  # the score best.pt is kept by (lower is better)

    def score(self, generator: nn.Module, window: tuple[float, float], device: torch.device) -> dict[str, float]: ...

    def summary(self) -> str: ...

    def line(self, step: int, scores: dict[str, float]) -> str: ...

    def header(self) -> dict[str, Any]: ...


@contextmanager
def evaluating(generator: nn.Module) -> Iterator[nn.Module]:
    """The generator in eval mode for the block, then back in the mode it was in."""
    was_training = generator.training
    generator.eval()
    try:
        yield generator
    finally:
        generator.train(was_training)


def output_hu(generator: nn.Module, x: torch.Tensor, window: tuple[float, float], device: torch.device) -> np.ndarray:
    """The generator's output for one (1, C, H, W) input, in HU (float32, H × W)."""
    lo, hi = window
    y = generator(x.to(device)).float().cpu().numpy()[0, 0]
    return (y + 1.0) * 0.5 * (hi - lo) + lo


def lesion_figures(lesions: InsertedLesions | None, generator: nn.Module, device: torch.device) -> dict[str, float]:
    """Median contrast kept of the inserted lesions, and the share of them that lost more than half."""
    if lesions is None:
        return {}
    kept = lesions.kept(generator, device)
    return {"val_lesion_kept": float(np.median(kept)), "val_lesion_lost": float(np.mean(kept < 0.5))}


@dataclass
class ValidationSet:
    """Validation slices in the model's window, their REF, and HD's own error (the ceiling a CycleGAN aims at)."""

    ld: list[torch.Tensor]
    ref_hu: list[np.ndarray]
    masks: list[np.ndarray]
    hd_error: float
    ld_error: float
    lesions: InsertedLesions | None = None

    @classmethod
    def build(
        cls,
        ld_hu: list[np.ndarray],
        hd_hu: list[np.ndarray],
        ref_hu: list[np.ndarray],
        window: tuple[float, float],
        count: int,
        noise_conditioning: bool = False,
    ) -> ValidationSet:
        """``count`` slices evenly spread over the validation slices (every validation patient is represented);
        ``noise_conditioning``: each LD slice with its noise-level map as a second channel."""
        if not ref_hu or len(ref_hu) != len(ld_hu):
            raise ValueError("validation needs a REF slice for every LD slice")
        pick = evenly(len(ld_hu), count)
        masks = [soft_tissue_mask(ref_hu[i]) for i in pick]
        refs = [ref_hu[i] for i in pick]
        hd_err = np.mean([error_figures(hd_hu[i], r, m)[0] for i, r, m in zip(pick, refs, masks, strict=True)])
        ld_err = np.mean([error_figures(ld_hu[i], r, m)[0] for i, r, m in zip(pick, refs, masks, strict=True)])
        lds = model_inputs([ld_hu[i] for i in pick], window, noise_conditioning)
        lesions = InsertedLesions.build([lds[k][0] for k in range(len(pick))], masks, window)
        return cls(lds, refs, masks, float(hd_err), float(ld_err), lesions)

    criterion = "ref"
    key = "val_error_hu"

    def score(self, generator: nn.Module, window: tuple[float, float], device: torch.device) -> dict[str, float]:
        return score(generator, self, window, device)

    def summary(self) -> str:
        return (
            f"{len(self.ld)} slices; criterion ref: error vs the noise-free REF in soft tissue: "
            f"LD {self.ld_error:.1f} HU, HD {self.hd_error:.1f} HU"
        )

    def line(self, step: int, scores: dict[str, float]) -> str:
        return (
            f"step {step}: validation error vs REF {scores['val_error_hu']:.2f} HU "
            f"({scores['val_error_vs_hd']:.3f} × HD's {self.hd_error:.2f}), bias {scores['val_bias_hu']:+.2f} HU, "
            f"inserted lesions kept {scores.get('val_lesion_kept', float('nan')):.2f}"
        )

    def header(self) -> dict[str, Any]:
        return {"hd_error_hu": self.hd_error, "ld_error_hu": self.ld_error}


@torch.inference_mode()
def score(
    generator: nn.Module, val: ValidationSet, window: tuple[float, float], device: torch.device
) -> dict[str, Any]:
    """Mean error std and bias (HU) of the generator's output on the validation slices, and error / HD's error.

    Pixels of the output outside the model window are replaced by the input, as the node does (denoise/series.py).
    """
    errors, biases = [], []
    with evaluating(generator):
        for x, ref, mask in zip(val.ld, val.ref_hu, val.masks, strict=True):
            err, bias = error_figures(output_hu(generator, x, window, device), ref, mask)
            errors.append(err)
            biases.append(bias)
        lesion = lesion_figures(val.lesions, generator, device)
    err = float(np.mean(errors))
    return {
        **lesion,
        "val_error_hu": err,
        "val_bias_hu": float(np.mean(biases)),
        "val_error_vs_hd": err / val.hd_error if val.hd_error > 0 else float("nan"),
    }


class Validator:
    """Scores a generator every ``every`` steps (and at step 1), keeps the curve and says when a score is the best.

    Shared by the unpaired and the paired trainer and by every criterion (``val.criterion``); its state (curve, best
    score, the criterion) goes into their checkpoints so a resumed run keeps choosing against the same best. With
    ``min_lesion_kept`` > 0, a score is eligible only when the median contrast kept of the inserted validation
    lesions reaches it: the lowest score among the checkpoints that keep lesions, not the lowest score.
    """

    def __init__(
        self,
        val: ValidationCriterion | None,
        window: tuple[float, float],
        device: torch.device,
        every: int,
        writer: Any = None,
        min_lesion_kept: float = 0.0,
    ) -> None:
        self.val, self.window, self.device, self.every, self.writer = val, window, device, every, writer
        self.min_lesion_kept = min_lesion_kept
        self.curve: list[dict[str, float]] = []
        self.best_error = float("inf")
        self.best_step = 0
        if val is not None:
            log.info("validation: %s; best.pt is the lowest %s", val.summary(), val.key)

    @property
    def criterion(self) -> str:
        return self.val.criterion if self.val is not None else "none"

    def selection(self) -> dict[str, Any]:
        """How best.pt is chosen, for the checkpoint and the exported model: the criterion, the score it minimises,
        and the best so far (a checkpoint whose step is ``best_step`` is the one chosen)."""
        if self.val is None:
            return {"criterion": "none", "why": "no validation slices: best.pt is not written"}
        best = self.best_error if np.isfinite(self.best_error) else None
        return {"criterion": self.val.criterion, "score": self.val.key, "best_step": self.best_step, "best": best}

    def state_dict(self) -> dict[str, Any]:
        return {"validation": self.curve, "best_val_error": self.best_error, "selection": self.selection()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """A checkpoint's curve and best; one written before criteria had names was chosen against REF. A best of
        another criterion is no yardstick for this one: it is dropped, with a warning, and the curve kept."""
        self.curve = list(state.get("validation", []))
        self.best_error = float(state.get("best_val_error", float("inf")))
        selection = state.get("selection", {})
        self.best_step = int(selection.get("best_step") or 0)
        before = selection.get("criterion", "ref")
        if np.isfinite(self.best_error) and before != self.criterion:
            log.warning(
                "resume: the checkpoint's best (%.3f) was chosen by criterion %s, this run validates by %s: "
                "best.pt is chosen afresh",
                self.best_error,
                before,
                self.criterion,
            )
            self.best_error, self.best_step = float("inf"), 0

    def __call__(self, step: int, generator: nn.Module, losses: dict[str, float], force: bool = False) -> bool:
        """Score when due (or ``force``: the run's last step, so that a run stopped between validations still lets
        its last weights compete for best.pt); adds the scores to ``losses``; True when this is the best so far."""
        if self.val is None or not (force or step % self.every == 0 or step == 1):
            return False
        scores = {"step": step, **self.val.score(generator, self.window, self.device)}
        self.curve.append(scores)
        losses.update({k: v for k, v in scores.items() if k != "step"})
        if self.writer is not None:
            for k, v in scores.items():
                if k != "step":
                    self.writer.add_scalar(f"val/{k}", v, step)
        log.info("%s", self.val.line(step, scores))
        if scores.get("val_lesion_kept", 1.0) < self.min_lesion_kept:
            return False
        if scores[self.val.key] < self.best_error:
            self.best_error, self.best_step = scores[self.val.key], step
            return True
        return False

    def write(self, path: Path) -> None:
        """validation.json: the criterion, the curve and the LD/HD ceilings (the model card plots it)."""
        if not self.curve or self.val is None:
            return
        doc = {**self.val.header(), "selection": self.selection(), "curve": self.curve}
        path.write_text(json.dumps(doc, indent=1))
