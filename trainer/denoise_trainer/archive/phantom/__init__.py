"""Analytic axial CT phantoms in HU, with known lesions, for the synthetic LD/HD archive.

Why analytic: every structure is a smooth 3D shape whose axial cross-section is an ellipse, so slices vary
smoothly along z, a patient is reproducible from a seeded generator, and lesion positions, sizes and contrasts
are known exactly for scoring. Coordinates are patient millimetres in DICOM LPS orientation: x towards the
patient's left, y posterior, z superior; the image centre is x = y = 0.
"""

from __future__ import annotations

import logging
from dataclasses import replace
from typing import Literal

import numpy as np

from denoise_trainer.archive.phantom.abdomen import draw_abdomen
from denoise_trainer.archive.phantom.anatomy import draw_texture
from denoise_trainer.archive.phantom.chest import draw_chest
from denoise_trainer.archive.phantom.lesion_placement import draw_lesion_specs, place_lesions
from denoise_trainer.archive.phantom.rich import draw_rich, scale_patient, side_generator
from denoise_trainer.archive.phantom.shapes import (
    AIR_HU,
    BODY_PARTS,
    LABEL_IDS,
    LABELS,
    Lesion,
    LesionOnSlice,
    PatientAnatomy,
    SliceRender,
    Structure,
    render_slice,
    render_slice_with_labels,
)

log = logging.getLogger(__name__)

__all__ = [
    "AIR_HU",
    "BODY_PARTS",
    "DETAILS",
    "LABELS",
    "LABEL_IDS",
    "Lesion",
    "LesionOnSlice",
    "PatientAnatomy",
    "SliceRender",
    "Structure",
    "make_patient",
    "render_slice",
    "render_slice_with_labels",
]


Detail = Literal["plain", "rich"]
DETAILS: tuple[str, ...] = ("plain", "rich")


def make_patient(
    rng: np.random.Generator,
    body_part: str,
    z_extent_mm: tuple[float, float] = (-60.0, 60.0),
    *,
    detail: Detail = "plain",
    size_scale: float = 1.0,
) -> PatientAnatomy:
    """Draw one patient (body size, organ sizes and positions, lesions) for slices within z_extent_mm.

    detail="plain" with size_scale=1 draws exactly what earlier versions drew from the same rng (archives stay the
    same); "rich" adds finer anatomy and size_scale scales the body in-plane (small to large patients).
    """
    if body_part not in BODY_PARTS:
        raise ValueError(f"body_part must be one of {BODY_PARTS}, not {body_part!r}")
    if detail not in DETAILS:
        raise ValueError(f"detail must be one of {DETAILS}, not {detail!r}")
    if not 0.3 <= size_scale <= 2.0:
        raise ValueError(f"size_scale must be within 0.3-2.0, not {size_scale!r}")
    side = side_generator(rng, "rich") if detail == "rich" else None  # reads rng's state, draws nothing from it
    z0 = 0.5 * (z_extent_mm[0] + z_extent_mm[1])
    structures, trunk = (draw_chest if body_part == "chest" else draw_abdomen)(rng, z0)
    structures, trunk = scale_patient(structures, trunk, float(size_scale))
    anatomy = PatientAnatomy(
        body_part=body_part,
        structures=tuple(structures),
        lesions=(),
        texture=draw_texture(rng),
        z_extent_mm=(float(z_extent_mm[0]), float(z_extent_mm[1])),
        body_axes_mm=(trunk.a, trunk.b),
    )
    organ_hu = {s.label: s.hu for s in reversed(structures)}
    specs = draw_lesion_specs(rng, body_part, organ_hu)
    if side is not None:
        rich = draw_rich(side, body_part, structures, trunk, z0)
        specs += rich.lesion_specs
        anatomy = replace(
            anatomy,
            structures=(*structures, *rich.structures),
            organ_textures=rich.textures,
            local_contrast=True,
        )
    lesions = place_lesions(rng, anatomy, specs)
    log.debug("patient %s: %d structures, %d lesions", body_part, len(anatomy.structures), len(lesions))
    return replace(anatomy, lesions=lesions)
