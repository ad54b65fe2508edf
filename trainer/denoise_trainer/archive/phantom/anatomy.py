"""What every drawn patient has: organ texture, the trunk (body outline, fat, muscle wall), spine and table.

The organs of a chest (``chest.py``) or an abdomen (``abdomen.py``) are drawn inside it. Everything comes from the
patient's seeded generator in a fixed order (the same seed gives the same patient; tests/trainer/test_synth.py
checks it).
"""

from __future__ import annotations

import logging
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
class Trunk:
    """Where the trunk lies (mm): centre, half-axes, fat and muscle thickness, and the spine's depth and size."""

    cx: float
    cy: float
    a: float
    b: float
    fat: float
    muscle: float
    spine_y: float
    vertebra_r: float


def draw_trunk(
    rng: np.random.Generator,
    a_range: tuple[float, float],
    ratio: tuple[float, float],
    fat: tuple[float, float],
    muscle: tuple[float, float],
) -> tuple[Trunk, list[Structure], dict[str, float]]:
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
    t = Trunk(cx, cy, a, b, f, m, spine_y, vr)
    layers = [
        Structure("body", "fat", rng.uniform(-110, -90), (cx, cy), (a, b), texture=4.0, **wob),
        Structure("muscle wall", "muscle", rng.uniform(45, 58), (cx, cy), (a - f, b - f), texture=3.0, **wob),
    ]
    return t, layers, wob


def draw_spine(rng: np.random.Generator, t: Trunk, z0: float) -> list[Structure]:
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


def table_structures(t: Trunk) -> list[Structure]:
    """Patient table under the body (a flat carbon-fibre shell with a foam core)."""
    y = t.cy + t.b + 4.0
    return [
        Structure("table shell", "table", 150.0, (0.0, y + 12.0), (230.0, 9.0)),
        Structure("table core", "table", -850.0, (0.0, y + 12.0), (226.0, 6.5)),
    ]


def points_in_ellipse(rng: np.random.Generator, n: int, cx: float, cy: float, a: float, b: float) -> np.ndarray:
    """Uniform random points inside an axis-aligned ellipse, shape (n, 2)."""
    r = np.sqrt(rng.uniform(0, 1, n))
    phi = rng.uniform(0, TWO_PI, n)
    return np.stack([cx + a * r * np.cos(phi), cy + b * r * np.sin(phi)], axis=1)
