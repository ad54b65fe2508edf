"""The organs of a drawn chest, inside the trunk of ``anatomy.py``, in the patient generator's fixed order."""

from __future__ import annotations

import math

import numpy as np

from denoise_trainer.archive.phantom.anatomy import Trunk, draw_spine, draw_trunk, points_in_ellipse, table_structures
from denoise_trainer.archive.phantom.shapes import Structure

Ellipse = tuple[float, float, float, float]  # centre x, y and half-axes (mm)


def draw_chest(rng: np.random.Generator, z0: float) -> tuple[list[Structure], Trunk]:
    """A chest: lungs with their vessels, heart, spine, aorta, sternum and ribs inside the trunk."""
    t, layers, wob = draw_trunk(rng, (140.0, 170.0), (0.62, 0.76), (6.0, 22.0), (10.0, 18.0))
    cx, cy = t.cx, t.cy
    ia, ib = t.a - t.fat - t.muscle, t.b - t.fat - t.muscle
    out = [
        *layers,
        Structure("thoracic cavity", "cavity", rng.uniform(-90, -60), (cx, cy), (ia, ib), texture=4.0, **wob),
    ]
    lungs = _lungs(rng, t, z0, out)
    heart_hu = rng.uniform(35, 45)
    out.append(
        Structure(
            "heart",
            "heart",
            heart_hu,
            (cx + 0.12 * ia, cy - 0.33 * ib),
            (rng.uniform(0.32, 0.38) * ia, rng.uniform(0.36, 0.42) * ib),
            -rng.uniform(0.3, 0.7),
            z_center=z0 - rng.uniform(20, 45),
            z_half=rng.uniform(90, 120),
            texture=3.0,
        )
    )
    out += _pulmonary_vessels(rng, t, z0, lungs)
    out += draw_spine(rng, t, z0)
    out.append(
        Structure(
            "descending aorta",
            "aorta",
            rng.uniform(150, 250),
            (cx + t.vertebra_r + rng.uniform(6, 10), t.spine_y - 0.6 * t.vertebra_r),
            (rng.uniform(10, 14),) * 2,
            z_center=z0,
            drift=(rng.normal(0, 0.03), 0.0),
        )
    )
    out.append(
        Structure(
            "sternum",
            "bone",
            rng.uniform(450, 600),
            (cx, cy - (t.b - t.fat - 0.5 * t.muscle)),
            (rng.uniform(12, 16), 5.5),
        )
    )
    out += _ribs(rng, t, z0)
    out += table_structures(t)
    return out, t


def _lungs(rng: np.random.Generator, t: Trunk, z0: float, out: list[Structure]) -> list[Ellipse]:
    """Both lungs, appended to ``out``; their ellipses (centre, half-axes) for the vessels."""
    cx, cy = t.cx, t.cy
    ia, ib = t.a - t.fat - t.muscle, t.b - t.fat - t.muscle
    lung_hu = rng.uniform(-870, -820)
    lungs: list[Ellipse] = []
    for side, width in ((-1.0, rng.uniform(0.42, 0.46)), (1.0, rng.uniform(0.39, 0.43))):
        lcx, lcy = cx + side * 0.53 * ia, cy - 0.02 * ib
        la, lb = width * ia, rng.uniform(0.82, 0.9) * ib
        lungs.append((lcx, lcy, la, lb))
        out.append(
            Structure(
                f"lung {'R' if side < 0 else 'L'}",
                "lung",
                lung_hu,
                (lcx, lcy),
                (la, lb),
                side * rng.uniform(0.0, 0.12),
                z_center=z0,
                taper=-rng.uniform(0.0008, 0.0018),
                texture=18.0,
            )
        )
    return lungs


def _pulmonary_vessels(rng: np.random.Generator, t: Trunk, z0: float, lungs: list[Ellipse]) -> list[Structure]:
    """Oblique tubes in each lung, thicker towards the hilum."""
    cx, cy = t.cx, t.cy
    ia, ib = t.a - t.fat - t.muscle, t.b - t.fat - t.muscle
    out: list[Structure] = []
    # pulmonary vessels: oblique tubes, so their sections move and stretch along z
    for lcx, lcy, la, lb in lungs:
        n = int(rng.integers(30, 50))
        pts = points_in_ellipse(rng, n, lcx, lcy, 0.95 * la, 0.95 * lb)
        hilum = np.array([cx + np.sign(lcx - cx) * 0.25 * ia, cy - 0.05 * ib])
        closeness = 1.0 - np.clip(np.linalg.norm((pts - hilum) / [la, lb], axis=1), 0, 1)
        radii = rng.uniform(0.8, 1.5, n) + 3.0 * closeness**2
        slopes = rng.normal(0.0, 0.7, (n, 2))
        for (px, py), r, (sx, sy) in zip(pts, radii, slopes, strict=True):
            stretch = min(math.sqrt(1.0 + sx * sx + sy * sy), 4.0)
            out.append(
                Structure(
                    "pulmonary vessel",
                    "vessel",
                    rng.uniform(30, 50),
                    (px, py),
                    (r * stretch, r),
                    math.atan2(sy, sx),
                    z_center=z0,
                    drift=(sx, sy),
                    inside="lung",
                )
            )
    return out


def _ribs(rng: np.random.Generator, t: Trunk, z0: float) -> list[Structure]:
    """Rib sections (cortex and marrow) round the wall."""
    cx, cy = t.cx, t.cy
    out: list[Structure] = []
    # ribs: sections around the wall, each appearing periodically along z with its own phase
    half = np.linspace(0.45, np.pi - 0.4, 10)  # from beside the spine round to beside the sternum
    angles = np.concatenate([np.pi / 2 - half, np.pi / 2 + half]) + rng.normal(0.0, 0.04, 20)
    ra, rb = t.a - t.fat - 0.45 * t.muscle, t.b - t.fat - 0.45 * t.muscle
    pitch = rng.uniform(30, 36)
    for phi in angles:
        px, py = cx + ra * math.cos(phi), cy + rb * math.sin(phi)
        tangent = math.atan2(rb * math.cos(phi), -ra * math.sin(phi))
        bands = (pitch, z0 + rng.uniform(0, pitch), rng.uniform(0.45, 0.6) * pitch)
        ax, bx = rng.uniform(5.0, 7.0), rng.uniform(3.2, 4.2)
        out.append(Structure("rib", "bone", rng.uniform(700, 900), (px, py), (ax, bx), tangent, bands=bands))
        out.append(
            Structure(
                "rib marrow",
                "marrow",
                rng.uniform(200, 300),
                (px, py),
                (ax - 1.4, bx - 1.4),
                tangent,
                bands=bands,
            )
        )
    return out
