"""What detail="rich" and size_scale add to a drawn patient, from their own generator.

Why a separate generator: the plain patient of a seed must stay byte-identical (archives and tests depend on it),
so the rich detail never draws from the patient's generator; it draws from one seeded by a hash of that
generator's state, which reads the state without advancing it. A rich patient is the plain patient of the same
seed (same body, organs and lesion kinds) with the detail added.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, replace

import numpy as np

from denoise_trainer.archive.phantom.anatomy import Trunk
from denoise_trainer.archive.phantom.lesion_placement import LesionSpec
from denoise_trainer.archive.phantom.organ_texture import OrganTexture, draw_organ_textures
from denoise_trainer.archive.phantom.rich_abdomen import abdominal_metal, gas_pockets, liver_trees
from denoise_trainer.archive.phantom.rich_chest import lung_trees, mediastinal_vessels, sternal_wires
from denoise_trainer.archive.phantom.shapes import Structure

METAL_FRACTION = 0.2  # about one patient in five has metal (clips, wires, screws)
TABLE_GAP_MM = 16.0  # table centre below the body outline (anatomy.table_structures)


def side_generator(rng: np.random.Generator, purpose: str) -> np.random.Generator:
    """A generator seeded from rng's state and a purpose, without drawing from rng."""
    state = json.dumps(rng.bit_generator.state, sort_keys=True, default=str)
    digest = hashlib.sha256(f"{purpose}:{state}".encode()).digest()
    return np.random.default_rng(np.frombuffer(digest, dtype=np.uint32))


def scale_patient(structures: list[Structure], t: Trunk, s: float) -> tuple[list[Structure], Trunk]:
    """Scale the body and organs in-plane about the image centre (a smaller or larger patient); the table keeps its
    size and stays under the body. Lesions are placed afterwards, at their own drawn sizes."""
    if s == 1.0:
        return structures, t
    out = []
    for st in structures:
        if st.label == "table":
            y = st.center[1]
            out.append(replace(st, center=(st.center[0], s * (y - TABLE_GAP_MM) + TABLE_GAP_MM)))
            continue
        out.append(
            replace(
                st,
                center=(st.center[0] * s, st.center[1] * s),
                axes=(st.axes[0] * s, st.axes[1] * s),
                drift=(st.drift[0] * s, st.drift[1] * s),
            )
        )
    trunk = Trunk(*(getattr(t, f) * s for f in ("cx", "cy", "a", "b", "fat", "muscle", "spine_y", "vertebra_r")))
    return out, trunk


@dataclass(frozen=True)
class RichDetail:
    """The rich additions: structures to paint after the plain ones, organ textures and extra lesions to place."""

    structures: tuple[Structure, ...]
    textures: tuple[OrganTexture, ...]
    lesion_specs: tuple[LesionSpec, ...]
    enhanced: bool


def draw_rich(rng: np.random.Generator, body_part: str, structures: list[Structure], t: Trunk, z0: float) -> RichDetail:
    """Vessel trees, textures, extra nodules (chest), gas (abdomen) and, for ~1 patient in 5, metal."""
    enhanced = bool(rng.uniform() < 0.65)  # a contrast-enhanced (portal-venous / CTA) study or a plain one
    labels = {s.label for s in structures}
    textures = draw_organ_textures(rng, labels)
    extra: list[Structure] = []
    specs: list[LesionSpec] = []
    if body_part == "chest":
        blood = rng.uniform(150.0, 250.0) if enhanced else rng.uniform(35.0, 50.0)
        vein = rng.uniform(120.0, 180.0) if enhanced else blood
        zh = z0 + rng.uniform(-10.0, 10.0)
        extra += mediastinal_vessels(rng, t, z0, zh, blood, vein)
        extra += lung_trees(rng, t, zh, structures, blood)
        lung_hu = next(s.hu for s in structures if s.label == "lung")
        for _ in range(int(rng.integers(1, 4))):  # extra nodules: solid, or sub-solid (ground glass)
            if rng.uniform() < 0.6:
                specs.append(("lung", "solid nodule", rng.uniform(2.0, 5.0), rng.uniform(-20, 60) - lung_hu))
            else:
                specs.append(("lung", "ground-glass nodule", rng.uniform(3.0, 6.0), rng.uniform(250, 400)))
        if rng.uniform() < METAL_FRACTION:
            extra += sternal_wires(rng, structures, z0)
    else:
        liver_hu = next((s.hu for s in structures if s.label == "liver"), 60.0)
        vessel_hu = liver_hu + rng.uniform(60.0, 130.0) if enhanced else rng.uniform(35.0, 45.0)
        extra += liver_trees(rng, t, z0, structures, vessel_hu)
        extra += gas_pockets(rng, structures, z0)
        if rng.uniform() < METAL_FRACTION:
            extra += abdominal_metal(rng, t, z0, structures)
    return RichDetail(tuple(extra), textures, tuple(specs), enhanced)
