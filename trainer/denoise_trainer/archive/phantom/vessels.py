"""Branching vessel trees for the rich phantom, built from ellipsoid segments.

Why ellipsoids: every axial section of a 3D ellipsoid of any orientation is an ellipse of fixed shape whose centre
moves linearly with z and whose size follows √(1 − (Δz/h)²), which is exactly a ``Structure`` with ``drift`` and
``z_half``. So a tree of overlapping prolate ellipsoids (a vessel segment each) renders with the plain phantom's
painter, is smooth along z, and is clipped to its organ by ``inside``.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np

from denoise_trainer.archive.phantom.shapes import Structure


def segment(
    name: str, label: str, hu: float, p0: np.ndarray, p1: np.ndarray, r: float, inside: str | None
) -> Structure:
    """A prolate ellipsoid of radius r from p0 to p1 (mm, x y z), lengthened by 0.6 r so that segments overlap."""
    axis = p1 - p0
    length = float(np.linalg.norm(axis))
    u = axis / max(length, 1e-9)
    a = 0.5 * length + 0.6 * r
    quad = np.eye(3) / r**2 + (1.0 / a**2 - 1.0 / r**2) * np.outer(u, u)
    app, apz, azz = quad[:2, :2], quad[:2, 2], quad[2, 2]
    drift = -np.linalg.solve(app, apz)
    h = 1.0 / math.sqrt(max(azz + float(apz @ drift), 1e-12))
    lam, vec = np.linalg.eigh(app)
    c = 0.5 * (p0 + p1)
    return Structure(
        name,
        label,
        float(hu),
        (float(c[0]), float(c[1])),
        (float(1.0 / math.sqrt(lam[0])), float(1.0 / math.sqrt(lam[1]))),
        float(math.atan2(vec[1, 0], vec[0, 0])),
        z_center=float(c[2]),
        z_half=float(h),
        drift=(float(drift[0]), float(drift[1])),
        inside=inside,
    )


@dataclass(frozen=True)
class TreeSpec:
    """How a tree branches: radius ratio of the children (Murray's law gives ≈ 0.79), length per radius, angles."""

    name: str
    hu: float
    inside: str | None
    min_radius: float = 0.5  # mm; vessels thinner than ~1 mm fade into partial volume at 0.7 mm pixels
    length_per_radius: float = 7.0
    max_segments: int = 400
    spread_deg: tuple[float, float] = (22.0, 42.0)


def _turn(rng: np.random.Generator, d: np.ndarray, angle: float) -> np.ndarray:
    """d rotated by angle (rad) about a random axis perpendicular to it."""
    perp = np.cross(d, rng.normal(size=3))
    perp /= max(float(np.linalg.norm(perp)), 1e-9)
    return math.cos(angle) * d + math.sin(angle) * perp


def grow_tree(
    rng: np.random.Generator,
    spec: TreeSpec,
    root: np.ndarray,
    direction: np.ndarray,
    radius: float,
    keep: Callable[[np.ndarray], bool] | None = None,
) -> list[Structure]:
    """A binary tree from root along direction, children thinner and shorter, until min_radius or the budget.

    keep(point) → bool, when given, stops a branch whose end leaves the region (the organ's outline).
    """
    out: list[Structure] = []
    stack = [(np.asarray(root, float), direction / np.linalg.norm(direction), radius)]
    while stack and len(out) < spec.max_segments:
        p0, d, r = stack.pop(0)  # breadth first: a budget cut trims the finest branches everywhere
        length = spec.length_per_radius * r * rng.uniform(0.7, 1.3)
        length = max(length, 6.0 * spec.min_radius)
        p1 = p0 + d * length
        out.append(segment(spec.name, "vessel", spec.hu, p0, p1, r, spec.inside))
        if keep is not None and not keep(p1):
            continue
        lo, hi = np.radians(spec.spread_deg)
        for ratio, angle in ((rng.uniform(0.74, 0.86), rng.uniform(0.5 * lo, lo)), (rng.uniform(0.6, 0.74), hi)):
            child = r * ratio
            if child >= spec.min_radius:
                stack.append((p1, _turn(rng, d, angle * rng.uniform(0.8, 1.2)), child))
    return out


def inside_any(structures: Sequence[Structure], margin: float = 1.0) -> Callable[[np.ndarray], bool]:
    """A keep(point) test: within any of the structures' sections at the point's z (scaled by margin)."""

    def keep(p: np.ndarray) -> bool:
        for st in structures:
            sec = st.section(float(p[2]))
            if sec is None:
                continue
            cx, cy, a, b, theta = sec
            c, s = math.cos(theta), math.sin(theta)
            dx, dy = p[0] - cx, p[1] - cy
            u, v = dx * c + dy * s, -dx * s + dy * c
            if (u / a) ** 2 + (v / b) ** 2 <= margin**2:
                return True
        return False

    return keep


def unit(x: float, y: float, z: float) -> np.ndarray:
    """(x, y, z) normalised."""
    v = np.array([x, y, z], dtype=np.float64)
    return v / np.linalg.norm(v)
