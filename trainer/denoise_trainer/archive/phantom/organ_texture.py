"""Organ texture for the rich phantom: spatially correlated HU fluctuations inside parenchymal organs and muscle.

Why: real liver, spleen, kidney and muscle are not flat; their fine texture (a few to ~15 HU, correlated over a
few mm) is anatomy a denoiser must keep, unlike noise, which is uncorrelated at this scale. Each organ's field is a
sum of random-phase cosines whose 3D wavevectors are drawn from a Gaussian spectrum (random Fourier features), so
its covariance is ≈ σ² exp(−r² / 2ℓ²): smooth along z as well as in-plane, the same patient gives the same field at
any z, and a slice costs two small matrix products per organ.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

COMPONENTS = 40  # enough for a Gaussian-looking field; the cost of a slice grows with it
SINGLE_THREAD_MNK = 200_000  # OpenBLAS runs a product of M·N·K below 65536 × 4 on one thread

# label → (σ in HU, correlation length ℓ in mm). Approximate values: texture studies of unenhanced / portal-venous CT
# report parenchymal heterogeneity of a few HU in liver and spleen (σ ≈ 4–8 HU over lobules of ~1–3 mm), larger in
# the kidney (cortex vs medulla, tens of HU at enhancement; ~8–12 HU kept here), ~3–6 HU in muscle (fibre bundles
# and fat streaks, short correlation).
ORGAN_TEXTURE: dict[str, tuple[float, float]] = {
    "liver": (5.0, 3.5),
    "spleen": (4.0, 2.5),
    "kidney": (9.0, 2.5),
    "muscle": (4.0, 1.6),
    "heart": (3.0, 3.0),
}


@dataclass(frozen=True, eq=False)
class OrganTexture:
    """One organ's correlated field: σ · √(2/K) Σ cos(k·r + φ) over K wavevectors k (rad/mm)."""

    label: str
    sigma_hu: float
    correlation_mm: float
    wavevectors: np.ndarray  # (K, 3)
    phases: np.ndarray  # (K,)

    def evaluate(self, xs: np.ndarray, ys: np.ndarray, z: float) -> np.ndarray:
        """Field (HU) on the grid ys × xs at height z: Re(C @ R), C over (y, z, phase) and R over x.

        The product runs in blocks of rows small enough that OpenBLAS keeps each to one thread: a threaded product
        of this size spends more CPU spinning than computing (3-5× the CPU time on a shared machine)."""
        kx, ky, kz = self.wavevectors.T
        col = ys[:, None] * ky[None, :] + (kz * z + self.phases)[None, :]
        row = kx[:, None] * xs[None, :]
        left = np.concatenate([np.cos(col), -np.sin(col)], axis=1)
        right = np.concatenate([np.cos(row), np.sin(row)], axis=0)
        out = np.empty((ys.size, xs.size), dtype=np.float64)
        step = max(1, SINGLE_THREAD_MNK // right.size)
        for i in range(0, ys.size, step):
            np.matmul(left[i : i + step], right, out=out[i : i + step])
        return out * (self.sigma_hu * np.sqrt(2.0 / self.phases.size))


def draw_organ_textures(rng: np.random.Generator, labels: set[str]) -> tuple[OrganTexture, ...]:
    """A field for each textured organ present, with its σ jittered ±25 % per patient."""
    out = []
    for label, (sigma, ell) in ORGAN_TEXTURE.items():
        if label not in labels:
            continue
        wavevectors = rng.normal(0.0, 1.0 / ell, (COMPONENTS, 3))
        phases = rng.uniform(0.0, 2.0 * np.pi, COMPONENTS)
        out.append(OrganTexture(label, sigma * rng.uniform(0.75, 1.25), ell, wavevectors, phases))
    return tuple(out)


def add_organ_textures(
    hu: np.ndarray, labels: np.ndarray, coords: np.ndarray, z: float, textures: tuple[OrganTexture, ...], ids: dict
) -> None:
    """Add each organ's field to the pixels labelled with that organ (evaluated only in its bounding box)."""
    for tex in textures:
        mask = labels == ids[tex.label]
        rows = np.flatnonzero(mask.any(axis=1))
        if rows.size == 0:
            continue
        cols = np.flatnonzero(mask.any(axis=0))
        r0, r1, c0, c1 = rows[0], rows[-1] + 1, cols[0], cols[-1] + 1
        field = tex.evaluate(coords[c0:c1], coords[r0:r1], z)
        box = mask[r0:r1, c0:c1]
        hu[r0:r1, c0:c1][box] += field[box]
