"""The anatomy of a drawn patient: trunk, spine, table, and the organs of a chest or an abdomen, each drawn from the
patient's seeded generator in a fixed order (the same seed gives the same patient; tests/trainer/test_synth.py
checks it).
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass

import numpy as np

from denoise_trainer.archive.phantom.shapes import (
    TWO_PI,
    Structure,
    Texture,
)

log = logging.getLogger(__name__)


def draw_texture(rng: np.random.Generator, components: int = 24) -> Texture:
    """Random smooth field with wavelengths 12–80 mm (organ-scale heterogeneity)."""
    wavelengths = rng.uniform(12.0, 80.0, components)
    directions = rng.normal(size=(components, 3))
    directions[:, 2] *= 0.7
    directions /= np.linalg.norm(directions, axis=1, keepdims=True)
    wavevectors = directions * (TWO_PI / wavelengths)[:, None]
    amplitudes = wavelengths / np.sqrt(np.sum(wavelengths**2) / 2.0)
    return Texture(wavevectors=wavevectors, phases=rng.uniform(0, TWO_PI, components), amplitudes=amplitudes)


@dataclass(frozen=True)
class _Trunk:
    cx: float
    cy: float
    a: float
    b: float
    fat: float
    muscle: float
    spine_y: float
    vertebra_r: float


def _trunk(
    rng: np.random.Generator,
    a_range: tuple[float, float],
    ratio: tuple[float, float],
    fat: tuple[float, float],
    muscle: tuple[float, float],
) -> tuple[_Trunk, list[Structure], dict[str, float]]:
    """Body outline, subcutaneous fat, muscle wall and the body cavity (shared wobble keeps them nested)."""
    a = rng.uniform(*a_range)
    b = a * rng.uniform(*ratio)
    cx, cy = rng.normal(0.0, 4.0), rng.uniform(-12.0, 2.0)
    f, m = rng.uniform(*fat), rng.uniform(*muscle)
    wob = {
        "wobble": rng.uniform(0.01, 0.025),
        "wobble_period": rng.uniform(180, 320),
        "wobble_phase": rng.uniform(0, TWO_PI),
    }
    vr = rng.uniform(14.0, 18.0)
    spine_y = cy + b - f - rng.uniform(40.0, 50.0) - vr
    t = _Trunk(cx, cy, a, b, f, m, spine_y, vr)
    layers = [
        Structure("body", "fat", rng.uniform(-110, -90), (cx, cy), (a, b), texture=4.0, **wob),
        Structure("muscle wall", "muscle", rng.uniform(45, 58), (cx, cy), (a - f, b - f), texture=3.0, **wob),
    ]
    return t, layers, wob


def _spine(rng: np.random.Generator, t: _Trunk, z0: float) -> list[Structure]:
    """Paraspinal muscles, vertebra (cortical rim, cancellous core) alternating with discs along z."""
    pitch = rng.uniform(24.0, 30.0)
    disc = rng.uniform(4.0, 6.0)
    start = z0 + rng.uniform(0, pitch)
    bone = (pitch, start + disc, pitch - disc)
    gap = (pitch, start, disc)
    vr, cx, sy = t.vertebra_r, t.cx, t.spine_y
    canal_y = sy + vr + 9.0
    pm = rng.uniform(45, 58)
    return [
        Structure(
            "paraspinal R",
            "muscle",
            pm,
            (cx - 30.0, canal_y + 12.0),
            (rng.uniform(22, 26), 17.0),
            0.25,
            texture=3.0,
        ),
        Structure(
            "paraspinal L",
            "muscle",
            pm,
            (cx + 30.0, canal_y + 12.0),
            (rng.uniform(22, 26), 17.0),
            -0.25,
            texture=3.0,
        ),
        Structure("neural arch", "bone", rng.uniform(600, 800), (cx, canal_y + 1.0), (13.0, 12.0)),
        Structure("spinous process", "bone", rng.uniform(600, 800), (cx, canal_y + 20.0), (4.5, 12.0), bands=bone),
        Structure("spinal canal", "canal", rng.uniform(5, 20), (cx, canal_y), (8.0, 7.0)),
        Structure("vertebral body", "bone", rng.uniform(950, 1100), (cx, sy), (vr * 1.12, vr), bands=bone),
        Structure(
            "cancellous bone",
            "marrow",
            rng.uniform(200, 300),
            (cx, sy),
            (vr * 1.12 - 2.2, vr - 2.2),
            texture=6.0,
            bands=bone,
        ),
        Structure("intervertebral disc", "disc", rng.uniform(70, 100), (cx, sy), (vr * 1.12, vr), bands=gap),
    ]


def _table(t: _Trunk) -> list[Structure]:
    """Patient table under the body (a flat carbon-fibre shell with a foam core)."""
    y = t.cy + t.b + 4.0
    return [
        Structure("table shell", "table", 150.0, (0.0, y + 12.0), (230.0, 9.0)),
        Structure("table core", "table", -850.0, (0.0, y + 12.0), (226.0, 6.5)),
    ]


def _in_ellipse(rng: np.random.Generator, n: int, cx: float, cy: float, a: float, b: float) -> np.ndarray:
    """Uniform random points inside an axis-aligned ellipse, shape (n, 2)."""
    r = np.sqrt(rng.uniform(0, 1, n))
    phi = rng.uniform(0, TWO_PI, n)
    return np.stack([cx + a * r * np.cos(phi), cy + b * r * np.sin(phi)], axis=1)


def draw_chest(rng: np.random.Generator, z0: float) -> tuple[list[Structure], _Trunk]:
    t, layers, wob = _trunk(rng, (140.0, 170.0), (0.62, 0.76), (6.0, 22.0), (10.0, 18.0))
    cx, cy = t.cx, t.cy
    ia, ib = t.a - t.fat - t.muscle, t.b - t.fat - t.muscle
    out = [
        *layers,
        Structure("thoracic cavity", "cavity", rng.uniform(-90, -60), (cx, cy), (ia, ib), texture=4.0, **wob),
    ]
    lung_hu = rng.uniform(-870, -820)
    lungs = []
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
    # pulmonary vessels: oblique tubes, so their sections move and stretch along z
    for lcx, lcy, la, lb in lungs:
        n = int(rng.integers(30, 50))
        pts = _in_ellipse(rng, n, lcx, lcy, 0.95 * la, 0.95 * lb)
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
    out += _spine(rng, t, z0)
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
    out += _table(t)
    return out, t


def draw_abdomen(rng: np.random.Generator, z0: float) -> tuple[list[Structure], _Trunk]:
    t, layers, wob = _trunk(rng, (135.0, 168.0), (0.68, 0.82), (10.0, 32.0), (8.0, 14.0))
    cx, cy = t.cx, t.cy
    ia, ib = t.a - t.fat - t.muscle, t.b - t.fat - t.muscle
    out = [
        *layers,
        Structure("peritoneal cavity", "cavity", rng.uniform(-95, -70), (cx, cy), (ia, ib), texture=5.0, **wob),
    ]
    # bowel loops (soft tissue) with gas pockets, short along z
    n_loops = int(rng.integers(8, 14))
    loops = _in_ellipse(rng, n_loops, cx + 0.1 * ia, cy - 0.1 * ib, 0.6 * ia, 0.55 * ib)
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
    out += _spine(rng, t, z0)
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
    out += _table(t)
    return out, t
