"""The organs of a drawn abdomen, inside the trunk of ``anatomy.py``, in the patient generator's fixed order."""

from __future__ import annotations

import math

import numpy as np

from denoise_trainer.archive.phantom.anatomy import Trunk, draw_spine, draw_trunk, points_in_ellipse, table_structures
from denoise_trainer.archive.phantom.shapes import Structure


def draw_abdomen(rng: np.random.Generator, z0: float) -> tuple[list[Structure], Trunk]:
    """An abdomen: bowel with gas, liver, spleen, kidneys, psoas, spine, aorta and vena cava inside the trunk."""
    t, layers, wob = draw_trunk(rng, (135.0, 168.0), (0.68, 0.82), (10.0, 32.0), (8.0, 14.0))
    cx, cy = t.cx, t.cy
    ia, ib = t.a - t.fat - t.muscle, t.b - t.fat - t.muscle
    out = [
        *layers,
        Structure("peritoneal cavity", "cavity", rng.uniform(-95, -70), (cx, cy), (ia, ib), texture=5.0, **wob),
    ]
    out += _bowel(rng, t, z0)
    out += _liver_and_spleen(rng, t, z0)
    out += _kidneys_and_psoas(rng, t, z0)
    out += draw_spine(rng, t, z0)
    out += _great_vessels(rng, t, z0)
    out += table_structures(t)
    return out, t


def _bowel(rng: np.random.Generator, t: Trunk, z0: float) -> list[Structure]:
    """Bowel loops (soft tissue), most with a gas pocket, short along z."""
    cx, cy = t.cx, t.cy
    ia, ib = t.a - t.fat - t.muscle, t.b - t.fat - t.muscle
    out: list[Structure] = []
    # bowel loops (soft tissue) with gas pockets, short along z
    n_loops = int(rng.integers(8, 14))
    loops = points_in_ellipse(rng, n_loops, cx + 0.1 * ia, cy - 0.1 * ib, 0.6 * ia, 0.55 * ib)
    for lx, ly in loops:
        r = rng.uniform(10, 20)
        zc, zh = z0 + rng.uniform(-60, 60), rng.uniform(40, 90)
        out.append(
            Structure(
                "bowel loop",
                "bowel",
                rng.uniform(20, 40),
                (lx, ly),
                (r * rng.uniform(1, 1.6), r),
                rng.uniform(0, math.pi),
                z_center=zc,
                z_half=zh,
                drift=tuple(rng.normal(0, 0.3, 2)),
                texture=5.0,
            )
        )
        if rng.uniform() < 0.6:
            g = r * rng.uniform(0.35, 0.7)
            out.append(
                Structure(
                    "bowel gas",
                    "bowel_gas",
                    rng.uniform(-980, -900),
                    (lx, ly - (r - g) * 0.6),
                    (g * rng.uniform(1.0, 1.5), g),
                    0.0,
                    z_center=zc,
                    z_half=0.8 * zh,
                    inside="bowel",
                )
            )
    return out


def _liver_and_spleen(rng: np.random.Generator, t: Trunk, z0: float) -> list[Structure]:
    """The liver's two lobes and the spleen."""
    cx, cy = t.cx, t.cy
    ia, ib = t.a - t.fat - t.muscle, t.b - t.fat - t.muscle
    out: list[Structure] = []
    liver_hu = rng.uniform(50, 70)
    lz = z0 + rng.uniform(30, 60)
    out.append(
        Structure(
            "liver right lobe",
            "liver",
            liver_hu,
            (cx - 0.42 * ia, cy - 0.04 * ib),
            (rng.uniform(0.48, 0.55) * ia, rng.uniform(0.68, 0.76) * ib),
            rng.uniform(-0.15, 0.3),
            z_center=lz,
            z_half=rng.uniform(120, 150),
            texture=4.0,
        )
    )
    out.append(
        Structure(
            "liver left lobe",
            "liver",
            liver_hu,
            (cx + rng.uniform(-0.05, 0.05) * ia, cy - 0.45 * ib),
            (rng.uniform(0.33, 0.4) * ia, rng.uniform(0.25, 0.3) * ib),
            rng.uniform(-0.3, 0.1),
            z_center=lz + 10.0,
            z_half=rng.uniform(80, 100),
            texture=4.0,
        )
    )
    out.append(
        Structure(
            "spleen",
            "spleen",
            rng.uniform(40, 50),
            (cx + 0.62 * ia, cy + 0.28 * ib),
            (rng.uniform(0.17, 0.22) * ia, rng.uniform(0.34, 0.4) * ib),
            -rng.uniform(0.4, 0.8),
            z_center=z0 + rng.uniform(0, 40),
            z_half=rng.uniform(60, 75),
            texture=4.0,
        )
    )
    return out


def _kidneys_and_psoas(rng: np.random.Generator, t: Trunk, z0: float) -> list[Structure]:
    """Kidneys with their sinus fat, and the psoas muscles beside the spine."""
    cx, ia = t.cx, t.a - t.fat - t.muscle
    out: list[Structure] = []
    kidney_hu = rng.uniform(30, 40)
    for side in (-1.0, 1.0):
        kx, ky = cx + side * rng.uniform(0.34, 0.4) * ia, t.spine_y + rng.uniform(-5, 8)
        zc, zh = z0 + rng.uniform(-30, 15), rng.uniform(50, 60)
        ka, kb, kt = rng.uniform(22, 28), rng.uniform(32, 40), side * rng.uniform(0.3, 0.6)
        out.append(
            Structure("kidney", "kidney", kidney_hu, (kx, ky), (ka, kb), kt, z_center=zc, z_half=zh, texture=3.0)
        )
        out.append(
            Structure(
                "renal sinus fat",
                "fat",
                rng.uniform(-90, -60),
                (kx - side * 0.55 * ka, ky),
                (0.35 * ka, 0.35 * kb),
                kt,
                z_center=zc,
                z_half=0.6 * zh,
            )
        )
    for side in (-1.0, 1.0):
        out.append(
            Structure(
                "psoas",
                "muscle",
                rng.uniform(45, 58),
                (cx + side * (t.vertebra_r + rng.uniform(14, 18)), t.spine_y + 2.0),
                (rng.uniform(11, 15), rng.uniform(13, 17)),
                z_center=z0,
                taper=-0.004,
                texture=3.0,
            )
        )
    return out


def _great_vessels(rng: np.random.Generator, t: Trunk, z0: float) -> list[Structure]:
    """Abdominal aorta and inferior vena cava in front of the spine."""
    cx = t.cx
    out: list[Structure] = []
    out.append(
        Structure(
            "abdominal aorta",
            "aorta",
            rng.uniform(150, 250),
            (cx + rng.uniform(8, 16), t.spine_y - t.vertebra_r - rng.uniform(8, 13)),
            (rng.uniform(9, 12),) * 2,
            z_center=z0,
        )
    )
    out.append(
        Structure(
            "inferior vena cava",
            "ivc",
            rng.uniform(70, 110),
            (cx - rng.uniform(18, 26), t.spine_y - t.vertebra_r - rng.uniform(4, 10)),
            (rng.uniform(10, 14), rng.uniform(7, 10)),
            z_center=z0,
        )
    )
    return out
