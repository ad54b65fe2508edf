"""Lesions for a drawn patient: how many, of which kind, size and contrast per organ, and where each goes (well
inside its organ, apart from the others, at a random z of the patient's extent)."""

from __future__ import annotations

import logging

import numpy as np
from scipy import ndimage

from denoise_trainer.archive.phantom.shapes import (
    LABEL_IDS,
    PLACEMENT_SIZE,
    PLACEMENT_SPACING_MM,
    Lesion,
    PatientAnatomy,
    grid_mm,
    render_slice_with_labels,
)

log = logging.getLogger(__name__)

LesionSpec = tuple[str, str, float, float]  # organ, kind, radius mm, contrast HU


def draw_lesion_specs(rng: np.random.Generator, body_part: str, organ_hu: dict[str, float]) -> list[LesionSpec]:
    """(organ, kind, radius_mm, contrast_hu) for each lesion to place."""
    specs: list[LesionSpec] = []

    def signed(lo: float, hi: float) -> float:
        return float(rng.choice([-1.0, 1.0]) * rng.uniform(lo, hi))

    if body_part == "chest":
        for _ in range(int(rng.integers(2, 5))):
            hu = rng.uniform(-20, 60)
            specs.append(("lung", "solid nodule", rng.uniform(1.5, 6.0), hu - organ_hu["lung"]))
        for _ in range(int(rng.integers(0, 3))):
            specs.append(("lung", "ground-glass nodule", rng.uniform(3.0, 6.0), rng.uniform(250, 400)))
    else:
        for _ in range(int(rng.integers(3, 7))):
            c = signed(5, 30)
            specs.append(("liver", "hypodense" if c < 0 else "hyperdense", rng.uniform(1.5, 6.0), c))
        for _ in range(int(rng.integers(0, 3))):
            c = signed(10, 30)
            specs.append(("kidney", "cyst" if c < 0 else "hyperdense", rng.uniform(2.0, 6.0), c))
        if rng.uniform() < 0.5:
            c = signed(5, 25)
            specs.append(("spleen", "hypodense" if c < 0 else "hyperdense", rng.uniform(2.0, 6.0), c))
    return specs


def place_lesions(rng: np.random.Generator, anatomy: PatientAnatomy, specs: list[LesionSpec]) -> tuple[Lesion, ...]:
    """Put each lesion well inside its organ at a random z of the extent (why: truth must be unambiguous)."""
    organ_hu = {s.label: s.hu for s in reversed(anatomy.structures)}
    coords = grid_mm(PLACEMENT_SIZE, PLACEMENT_SPACING_MM)
    placed: list[Lesion] = []
    z_lo, z_hi = anatomy.z_extent_mm
    for organ, kind, radius, contrast in specs:
        for _attempt in range(20):
            z = float(rng.uniform(z_lo, z_hi))
            labels = render_slice_with_labels(
                anatomy, z, PLACEMENT_SIZE, PLACEMENT_SPACING_MM, with_hu=False, with_lesions=False
            ).labels
            ok = labels == LABEL_IDS[organ]
            for other in placed:
                dz = abs(z - other.center_mm[2])
                if dz < other.radius_mm + radius + 2.0:
                    d2 = (coords[None, :] - other.center_mm[0]) ** 2 + (coords[:, None] - other.center_mm[1]) ** 2
                    ok &= d2 > (other.radius_mm + radius + 2.0) ** 2
            depth = ndimage.distance_transform_edt(ok) * PLACEMENT_SPACING_MM
            rows, cols = np.nonzero(depth >= radius + 3.0)
            if rows.size:
                k = int(rng.integers(rows.size))
                placed.append(
                    Lesion(
                        index=len(placed),
                        organ=organ,
                        kind=kind,
                        center_mm=(float(coords[cols[k]]), float(coords[rows[k]]), z),
                        radius_mm=float(radius),
                        contrast_hu=float(contrast),
                        hu=float(organ_hu[organ] + contrast),
                    )
                )
                break
        else:
            log.debug("no room for a %.1f mm %s lesion in %s; skipped", radius, kind, organ)
    return tuple(placed)
