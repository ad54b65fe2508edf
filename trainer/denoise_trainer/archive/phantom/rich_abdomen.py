"""Rich detail of a drawn abdomen: portal and hepatic vein trees in the liver, irregular bowel gas, and metal.

HU (approximate, 120 kVp): unenhanced blood ≈ 35–45 HU, a little below liver (50–70 HU); in the portal-venous phase
the portal and hepatic veins reach ≈ 150–200 HU, some 60–130 HU above the enhancing liver. The main portal vein is
≈ 12–13 mm across and divides into right and left branches at the porta hepatis; three hepatic veins join the
cava at the dome. Intraluminal gas is ≈ −1000 HU (−1000…−950 here; partial volume brings edges up). Surgical clips
and titanium pedicle screws read ≥ 3000 HU (saturating a 12-bit scale).
"""

from __future__ import annotations

import numpy as np

from denoise_trainer.archive.phantom.anatomy import Trunk
from denoise_trainer.archive.phantom.rich_chest import METAL_HU, named
from denoise_trainer.archive.phantom.shapes import Structure
from denoise_trainer.archive.phantom.vessels import TreeSpec, grow_tree, inside_any, segment, unit


def liver_trees(
    rng: np.random.Generator, t: Trunk, z0: float, structures: list[Structure], hu: float
) -> list[Structure]:
    """Portal tree from the porta hepatis (right and left branches) and three hepatic veins from the cava."""
    liver = named(structures, "liver right lobe") + named(structures, "liver left lobe")
    if not liver:
        return []
    right = liver[0]
    keep = inside_any(liver, 0.95)
    s = t.a / 150.0
    (lx, ly), (la, lb) = right.center, right.axes
    porta = np.array([lx + 0.55 * la, ly + 0.1 * lb, z0 + rng.uniform(-15.0, 5.0)])
    out: list[Structure] = []
    portal = TreeSpec("portal vein", hu * rng.uniform(0.95, 1.05), "liver", max_segments=140, length_per_radius=6.0)
    out += grow_tree(rng, portal, porta, unit(-1.0, rng.normal(0, 0.3), rng.uniform(0.1, 0.5)), 5.5 * s, keep)
    out += grow_tree(rng, portal, porta, unit(0.8, -0.6, rng.uniform(0.0, 0.4)), 4.0 * s, keep)
    ivc = named(structures, "inferior vena cava")
    cava = np.array([*ivc[0].center, 0.0]) if ivc else np.array([t.cx - 20.0, t.spine_y - t.vertebra_r - 8.0, 0.0])
    dome = cava + [0.0, -8.0, z0 + rng.uniform(45.0, 70.0)]
    hepatic = TreeSpec("hepatic vein", hu * rng.uniform(0.9, 1.0), "liver", max_segments=90, length_per_radius=7.0)
    for dx, dy in ((-1.0, -0.3), (-0.2, -1.0), (0.8, -0.8)):  # right, middle, left hepatic veins
        d = unit(dx + rng.normal(0, 0.15), dy + rng.normal(0, 0.15), -1.2)
        out += grow_tree(rng, hepatic, dome, d, rng.uniform(4.0, 5.0) * s, keep)
    return out


def gas_pockets(rng: np.random.Generator, structures: list[Structure], z0: float) -> list[Structure]:
    """Irregular gas in ~70 % of the bowel loops: 1–3 clusters of 3–6 overlapping lumps each, painted only over
    bowel, where the loop crosses the patient's slab (z0 ± 50 mm); the loop's drift carries them along it."""
    out: list[Structure] = []
    for loop in named(structures, "bowel loop"):
        if rng.uniform() >= 0.7 or loop.z_half is None:
            continue
        r = min(loop.axes)
        lo, hi = max(loop.z_center - 0.7 * loop.z_half, z0 - 50.0), min(loop.z_center + 0.7 * loop.z_half, z0 + 50.0)
        if lo >= hi:
            continue
        for zc in rng.uniform(lo, hi, int(rng.integers(1, 4))):
            sec = loop.section(float(zc))
            if sec is None:
                continue
            for _ in range(int(rng.integers(3, 7))):
                c = np.array([sec[0], sec[1], zc]) + rng.normal(0.0, 0.35, 3) * [r, r, 2 * r]
                d = rng.normal(size=3) * [1.0, 1.0, 2.0]  # lumps stretched along the loop's course
                d *= rng.uniform(0.3, 0.8) * r / np.linalg.norm(d)
                lump = rng.uniform(0.25, 0.55) * r
                hu = rng.uniform(-1000.0, -950.0)
                out.append(segment("bowel gas pocket", "bowel_gas", hu, c - d, c + d, lump, "bowel"))
    return out


def abdominal_metal(rng: np.random.Generator, t: Trunk, z0: float, structures: list[Structure]) -> list[Structure]:
    """Either 2–4 cholecystectomy clips by the liver's lower surface or two pairs of pedicle screws."""
    out: list[Structure] = []
    if rng.uniform() < 0.5:
        liver = named(structures, "liver right lobe")
        (lx, ly), (la, lb) = liver[0].center if liver else (t.cx - 60.0, t.cy), liver[0].axes if liver else (60, 80)
        base = np.array([lx + 0.35 * la, ly - 0.55 * lb, z0 + rng.uniform(-30.0, 30.0)])
        for _ in range(int(rng.integers(2, 5))):
            c = base + rng.normal(0.0, 6.0, 3)
            d = rng.normal(size=3)
            d *= rng.uniform(2.5, 4.0) / np.linalg.norm(d)  # clips are ~5–8 mm long, ~2 mm wide
            out.append(segment("surgical clip", "metal", METAL_HU, c - d, c + d, rng.uniform(0.9, 1.3), None))
        return out
    body = named(structures, "vertebral body")
    pitch, start, length = body[0].bands if body and body[0].bands else (27.0, z0, 22.0)
    k = np.round((z0 + rng.uniform(-20.0, 20.0) - start - 0.5 * length) / pitch)
    for level in (k, k + 1):
        z = start + 0.5 * length + level * pitch
        canal_y = t.spine_y + t.vertebra_r + 9.0
        for side in (-1.0, 1.0):
            entry = np.array([t.cx + side * 20.0, canal_y + 6.0, z])
            tip = np.array([t.cx + side * 5.0, t.spine_y - 0.35 * t.vertebra_r, z + rng.normal(0.0, 1.5)])
            out.append(segment("pedicle screw", "metal", rng.uniform(3000.0, METAL_HU), entry, tip, 3.0, None))
    return out
