"""Lesion preservation and HU fidelity per tissue, scored on the synthetic archive where the truth is known.

Every synthetic patient has ``truth.json`` (``archive/synth.py``): each lesion's centre, radius and inserted contrast
where it cuts each slice. For an image (LD, a denoiser's output, the noise-free REF) and each lesion:

- **measured contrast** = mean HU in the lesion core (a disk of 0.6 × its radius, at least 1 px, so partial volume at
  the rim does not count) − mean HU of a ring around it (from radius + 2 px, 4 px or one radius wide); the ring
  leaves out the other lesions and, with the noise-free image, every pixel more than 25 HU from the ring's median
  there (a neighbouring organ, vessel or fat is not the background of the lesion);
- **contrast kept** = measured / inserted contrast (≈ 1 in the noise-free image: the check of the method itself);
- **CNR** = |measured contrast| / standard deviation in the ring; the CNR gain of a method = its CNR / LD's CNR;
- **lost**: measured contrast below half the inserted one, or of the wrong sign.

HU fidelity: the mean of (image − REF) in each tissue of the REF image (air, lung, fat, soft tissue, bone, by HU
ranges, eroded by 2 px so that edges do not count).
"""

from __future__ import annotations

import json
import logging
import math
from collections import defaultdict
from collections.abc import Iterable
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any

import numpy as np
from scipy import ndimage

log = logging.getLogger(__name__)

SIZE_CLASSES = ((0.0, 3.0, "< 3 mm"), (3.0, 5.0, "3–5 mm"), (5.0, math.inf, "≥ 5 mm"))
CONTRAST_CLASSES = ((0.0, 15.0, "< 15 HU"), (15.0, 50.0, "15–50 HU"), (50.0, math.inf, "≥ 50 HU"))
RING_TOL_HU = 25.0
TISSUES = {  # REF HU ranges
    "air": (-math.inf, -950.0),
    "lung": (-950.0, -500.0),
    "fat": (-150.0, -50.0),
    "soft tissue": (0.0, 100.0),
    "bone": (300.0, math.inf),
}


@dataclass(frozen=True)
class LesionTruth:
    patient_id: str
    slice_index: int
    lesion_index: int
    kind: str
    organ: str
    center_px: tuple[float, float]  # column, row
    radius_px: float
    radius_mm: float
    contrast_hu: float

    @property
    def key(self) -> tuple[str, int, int]:
        """The same lesion cut in every method's image."""
        return (self.patient_id, self.slice_index, self.lesion_index)

    @property
    def size_class(self) -> str:
        return next(name for lo, hi, name in SIZE_CLASSES if lo <= self.radius_mm < hi)

    @property
    def contrast_class(self) -> str:
        return next(name for lo, hi, name in CONTRAST_CLASSES if lo <= abs(self.contrast_hu) < hi)


@dataclass(frozen=True)
class LesionScore:
    method: str
    truth: LesionTruth
    contrast_hu: float
    ring_std: float

    @property
    def contrast_kept(self) -> float:
        return self.contrast_hu / self.truth.contrast_hu

    @property
    def cnr(self) -> float:
        return abs(self.contrast_hu) / self.ring_std if self.ring_std > 0 else math.inf

    @property
    def lost(self) -> bool:
        return self.contrast_kept < 0.5


def load_truth(patient_dir: Path) -> dict[int, list[LesionTruth]]:
    """Lesions per slice index (1-based InstanceNumber) from a synthetic patient's truth.json."""
    data = json.loads((Path(patient_dir) / "truth.json").read_text(encoding="utf-8"))
    out: dict[int, list[LesionTruth]] = {}
    for s in data["slices"]:
        out[int(s["slice_index"])] = [
            LesionTruth(
                patient_id=str(data["patient_id"]),
                slice_index=int(s["slice_index"]),
                lesion_index=int(les["lesion_index"]),
                kind=str(les["kind"]),
                organ=str(les["organ"]),
                center_px=(float(les["center_px"][0]), float(les["center_px"][1])),
                radius_px=float(les["radius_px"]),
                radius_mm=float(les["radius_mm"]),
                contrast_hu=float(les["contrast_hu"]),
            )
            for les in s["lesions"]
        ]
    return out


def _distance(shape: tuple[int, int], center: tuple[float, float]) -> np.ndarray:
    yy, xx = np.mgrid[: shape[0], : shape[1]]
    return np.hypot(xx - center[0], yy - center[1])


def lesion_masks(
    shape: tuple[int, int], lesion: LesionTruth, others: Iterable[LesionTruth] = (), ref: np.ndarray | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """(core, ring) pixel masks of a lesion. With the noise-free REF, the ring keeps only pixels within
    ``RING_TOL_HU`` of its median there: the lesion's own organ, not a neighbouring organ, vessel or fat."""
    d = _distance(shape, lesion.center_px)
    core = d <= max(1.0, 0.6 * lesion.radius_px)
    inner = lesion.radius_px + 2.0
    ring = (d >= inner) & (d <= inner + max(4.0, lesion.radius_px))
    for other in others:
        if other.lesion_index != lesion.lesion_index:
            ring &= _distance(shape, other.center_px) > other.radius_px + 2.0
    if ref is not None and ring.any():
        ring &= np.abs(ref - np.median(ref[ring])) < RING_TOL_HU
    return core, ring


def measure(
    image: np.ndarray, lesion: LesionTruth, others: Iterable[LesionTruth] = (), ref: np.ndarray | None = None
) -> tuple[float, float]:
    """(core − ring contrast in HU, ring standard deviation) of one lesion in one image."""
    core, ring = lesion_masks(image.shape, lesion, others, ref)
    if not core.any() or ring.sum() < 8:
        return math.nan, math.nan
    return float(image[core].mean() - image[ring].mean()), float(image[ring].std())


def score_lesions(
    method: str, image: np.ndarray, lesions: list[LesionTruth], ref: np.ndarray | None = None
) -> list[LesionScore]:
    scores = []
    for lesion in lesions:
        contrast, std = measure(image, lesion, lesions, ref)
        if math.isfinite(contrast):
            scores.append(LesionScore(method, lesion, contrast, std))
    return scores


def tissue_bias(image: np.ndarray, ref: np.ndarray) -> dict[str, tuple[float, int]]:
    """(mean HU of image − REF, pixel count) per tissue of the REF image."""
    out = {}
    for name, (lo, hi) in TISSUES.items():
        mask = ndimage.binary_erosion((ref >= lo) & (ref < hi), iterations=2)
        n = int(mask.sum())
        out[name] = (float((image[mask] - ref[mask]).mean()) if n else math.nan, n)
    return out


class SafetyScores:
    """Accumulates lesion scores and tissue biases over the test slices, then summarises them per method."""

    def __init__(self) -> None:
        self.lesions: list[LesionScore] = []
        self._tissue: dict[tuple[str, str], list[tuple[float, int]]] = defaultdict(list)

    def add(self, method: str, image: np.ndarray, ref: np.ndarray | None, lesions: list[LesionTruth]) -> None:
        self.lesions += score_lesions(method, image, lesions, ref)
        if ref is not None:
            for tissue, value in tissue_bias(image, ref).items():
                if value[1]:
                    self._tissue[(method, tissue)].append(value)

    def lesion_table(self) -> list[dict[str, Any]]:
        """Per method, size class and contrast class: n, contrast kept, CNR gain over LD, lesions lost."""
        ld_cnr = {s.truth.key: s.cnr for s in self.lesions if s.method == "LD"}
        groups: dict[tuple[str, str, str], list[LesionScore]] = defaultdict(list)
        for s in self.lesions:
            groups[(s.method, s.truth.size_class, s.truth.contrast_class)].append(s)
        rows = []
        for (method, size, contrast), scores in sorted(groups.items()):
            gains = [
                s.cnr / ld_cnr[key]
                for s in scores
                if (key := s.truth.key) in ld_cnr and ld_cnr[key] > 0 and math.isfinite(s.cnr)
            ]
            rows.append(
                {
                    "method": method,
                    "size": size,
                    "contrast": contrast,
                    "lesions": len(scores),
                    "contrast_kept": float(np.mean([s.contrast_kept for s in scores])),
                    "cnr_gain": float(np.median(gains)) if gains else math.nan,
                    "lost": sum(s.lost for s in scores),
                }
            )
        return rows

    def tissue_table(self) -> list[dict[str, Any]]:
        """Per method and tissue: pixel-weighted mean HU bias against REF."""
        rows = []
        for (method, tissue), values in sorted(self._tissue.items()):
            total = sum(n for _, n in values)
            bias = sum(b * n for b, n in values if math.isfinite(b)) / total if total else math.nan
            rows.append({"method": method, "tissue": tissue, "bias_hu": bias, "pixels": total})
        return rows

    def to_json(self) -> dict[str, Any]:
        return {
            "lesion_table": self.lesion_table(),
            "tissue_table": self.tissue_table(),
            "lesions": [
                {"method": s.method, **asdict(s.truth), "measured_hu": s.contrast_hu, "ring_std": s.ring_std}
                for s in self.lesions
            ],
        }


def lesion_scores_from_json(data: dict[str, Any]) -> list[LesionScore]:
    """The lesion scores of a written safety.json (``SafetyScores.to_json``), to re-analyse a past evaluation."""
    names = [f.name for f in fields(LesionTruth)]
    scores = []
    for row in data["lesions"]:
        truth = {k: row[k] for k in names}
        truth["center_px"] = tuple(truth["center_px"])
        scores.append(LesionScore(row["method"], LesionTruth(**truth), row["measured_hu"], row["ring_std"]))
    return scores


def markdown_tables(data: dict[str, Any]) -> str:
    """The two tables of the model card."""
    header = "| method | lesion radius | contrast | lesions | contrast kept | CNR gain vs LD | lost |"
    lines = [header, "|---" * 7 + "|"]
    for r in data["lesion_table"]:
        lines.append(
            f"| {r['method']} | {r['size']} | {r['contrast']} | {r['lesions']} | {r['contrast_kept']:.2f} | "
            f"{r['cnr_gain']:.2f} | {r['lost']} |"
        )
    lines += ["", "| method | tissue | mean HU bias vs noise-free | pixels |", "|---" * 4 + "|"]
    for r in data["tissue_table"]:
        lines.append(f"| {r['method']} | {r['tissue']} | {r['bias_hu']:+.1f} | {r['pixels']} |")
    return "\n".join(lines) + "\n"
