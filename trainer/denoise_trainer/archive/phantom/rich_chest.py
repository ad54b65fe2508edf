"""Rich detail of a drawn chest: branching lung vessels from each hilum, mediastinal vessels, sternal wires.

HU (approximate, for 120 kVp): blood ≈ 40 HU unenhanced, 150–300 HU in contrast-enhanced pulmonary arteries and
aorta; thin peripheral vessels look fainter through partial volume alone. Lobar arteries are ≈ 8–10 mm across and
halve about every two generations (Murray's law, r_child ≈ 0.79 r); peripheral vessels fade out at ~1 mm within
~1 cm of the pleura. Steel sternal wires (≈ 1 mm) read ≥ 3000 HU (beyond the 12-bit scale of most scanners).
"""

from __future__ import annotations

import math

import numpy as np

from denoise_trainer.archive.phantom.anatomy import Trunk
from denoise_trainer.archive.phantom.shapes import Structure
from denoise_trainer.archive.phantom.vessels import TreeSpec, grow_tree, inside_any, segment, unit

TREES_PER_LUNG = 5
METAL_HU = 3071.0  # the top of a 12-bit CT scale (−1024 + 4095): steel and titanium saturate there


def named(structures: list[Structure], name: str) -> list[Structure]:
    """The structures of that name, in painter's order."""
    return [s for s in structures if s.name == name]


def lung_trees(
    rng: np.random.Generator, t: Trunk, zh: float, structures: list[Structure], hu: float
) -> list[Structure]:
    """Segmental trees from each lung's hilum at height zh, clipped to the lung (the plain phantom's straight
    vessels stay: together they give the density of vessel sections that a slice shows)."""
    ia, ib = t.a - t.fat - t.muscle, t.b - t.fat - t.muscle
    out: list[Structure] = []
    scale = t.a / 155.0  # vessel calibres follow the patient's size
    for lung_name, side in (("lung R", -1.0), ("lung L", 1.0)):
        lung = named(structures, lung_name)
        if not lung:
            continue
        keep = inside_any(lung, 0.97)
        hilum = np.array([t.cx + side * 0.25 * ia, t.cy - 0.05 * ib, zh])
        for _ in range(TREES_PER_LUNG):  # segmental trees fanning out laterally, up, down, front and back
            spec = TreeSpec("lung vessel", hu * rng.uniform(0.9, 1.1), "lung", max_segments=200)
            d = unit(side * rng.uniform(0.3, 1.0), rng.uniform(-0.8, 0.8), rng.uniform(-1.0, 1.0))
            out += grow_tree(rng, spec, hilum, d, rng.uniform(2.6, 3.4) * scale, keep)
    return out


def mediastinal_vessels(
    rng: np.random.Generator, t: Trunk, z0: float, zh: float, hu: float, vein_hu: float
) -> list[Structure]:
    """Pulmonary arteries from the trunk to each hilum, superior vena cava, azygos and internal mammary vessels,
    painted only over mediastinal fat (the cavity), so the heart and lungs keep their own outlines."""
    ia, ib = t.a - t.fat - t.muscle, t.b - t.fat - t.muscle
    cx, cy, s = t.cx, t.cy, t.a / 155.0
    trunk_top = np.array([cx + 0.05 * ia, cy - 0.12 * ib, zh])
    out = [
        segment("pulmonary trunk", "vessel", hu, trunk_top + [0.08 * ia, -0.2 * ib, -40.0], trunk_top, 12 * s, "cavity")
    ]
    for side in (-1.0, 1.0):
        hilum = np.array([cx + side * 0.25 * ia, cy - 0.05 * ib, zh + rng.uniform(-4, 4)])
        out.append(segment("pulmonary artery", "vessel", hu, trunk_top, hilum, 9 * s * rng.uniform(0.9, 1.1), "cavity"))
    for name, (x, y), r, v_hu in (
        ("superior vena cava", (cx - 0.22 * ia, cy - 0.2 * ib), 10 * s, vein_hu),
        ("azygos vein", (cx - 0.1 * ia, t.spine_y - t.vertebra_r - 2.0), 4 * s, vein_hu),
        ("internal mammary R", (cx - 0.12 * ia, cy - 0.92 * ib), 1.6 * s, hu),
        ("internal mammary L", (cx + 0.12 * ia, cy - 0.92 * ib), 1.6 * s, hu),
    ):
        p0 = np.array([x, y, z0 - 200.0])
        p1 = np.array([x + rng.normal(0, 3), y + rng.normal(0, 3), z0 + 200.0])
        out.append(segment(name, "vessel", v_hu * rng.uniform(0.95, 1.05), p0, p1, r, "cavity"))
    return out


def sternal_wires(rng: np.random.Generator, structures: list[Structure], z0: float) -> list[Structure]:
    """Steel cerclage wires round the sternum after a sternotomy: 4–6 loops of ~1 mm wire, 20–30 mm apart."""
    sternum = named(structures, "sternum")
    if not sternum:
        return []
    (sx, sy), (sa, sb) = sternum[0].center, sternum[0].axes
    out: list[Structure] = []
    n = int(rng.integers(4, 7))
    pitch = rng.uniform(20.0, 30.0)
    for k in range(n):
        z = z0 + (k - (n - 1) / 2) * pitch + rng.normal(0, 2)
        phis = np.linspace(0.0, 2.0 * math.pi, 13)
        pts = [np.array([sx + (sa + 2.5) * math.cos(p), sy + (sb + 2.5) * math.sin(p), z]) for p in phis]
        for p0, p1 in zip(pts[:-1], pts[1:], strict=True):
            out.append(segment("sternal wire", "metal", METAL_HU, p0, p1, rng.uniform(0.6, 0.8), None))
    return out
