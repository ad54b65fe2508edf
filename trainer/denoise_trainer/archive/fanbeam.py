"""Fan-beam acquisition: ASTRA's CPU fan-beam projector, noise on the fan counts, rebinning to parallel, FBP.

Why: clinical scanners measure fan beams over 360°. Their noise sits on fan rays, and the rebinning to parallel
rays (which scanners do before filtering) interpolates between neighbouring noisy rays and averages conjugate
rays, so the texture differs from a parallel-beam acquisition's. A denoiser should have seen both.

Method: line integrals of the HU slice with astra-toolbox's ``line_fanflat`` projector (flat detector, geometry
in mm, views over 360°, detector columns covering the image diagonal, one column = one pixel at the isocentre) →
aperture blur → Poisson counts at I0/2 per fan ray plus electronic noise (every line is measured twice over 360°,
so the photons per line match a 180° parallel scan at I0) → log → rebinned bilinearly onto the parallel grid of
``physics`` (θ over 180°, the mean of each ray and its conjugate) → the parallel FBP with the named kernel.
ASTRA is GPL-3.0: an optional extra of the trainer (``pip install 'dicom-denoise-trainer[fanbeam]'``).
"""

from __future__ import annotations

import logging
import math
from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np
from scipy import ndimage

from denoise_trainer.archive import physics

log = logging.getLogger(__name__)

INSTALL_HINT = "fan-beam synthesis needs astra-toolbox (GPL-3.0): pip install 'dicom-denoise-trainer[fanbeam]'"


@dataclass(frozen=True)
class FanGeometry:
    """A third-generation scanner's fan: distances in mm from the focal spot."""

    name: str
    source_isocentre_mm: float
    source_detector_mm: float


# "fan-a" is used in training (a Siemens-like 595 / 1085.6 mm); "fan-b" only by the out-of-distribution archive
# (a GE-like 541 / 949 mm: a wider fan and a smaller magnification).
FAN_GEOMETRIES: dict[str, FanGeometry] = {
    g.name: g for g in (FanGeometry("fan-a", 595.0, 1085.6), FanGeometry("fan-b", 541.0, 949.0))
}


def _astra():  # type: ignore[no-untyped-def]
    try:
        import astra
    except ImportError as exc:
        raise RuntimeError(INSTALL_HINT) from exc
    return astra


def fan_project(mu: np.ndarray, pixel_spacing: float, geometry: FanGeometry, views: int) -> np.ndarray:
    """Fan-beam line integrals (views over 360° × columns, dimensionless) of an attenuation image in 1/mm."""
    astra = _astra()
    n = mu.shape[-1]
    half = n * pixel_spacing / 2.0
    columns = fan_columns(n, pixel_spacing, geometry)
    vol = astra.create_vol_geom(n, n, -half, half, -half, half)
    pitch = pixel_spacing * geometry.source_detector_mm / geometry.source_isocentre_mm
    angles = np.arange(views) * (2.0 * math.pi / views)
    src, det = geometry.source_isocentre_mm, geometry.source_detector_mm - geometry.source_isocentre_mm
    proj = astra.create_proj_geom("fanflat", pitch, columns, angles, src, det)
    projector = astra.create_projector("line_fanflat", proj, vol)
    try:
        sino_id, sino = astra.create_sino(np.asarray(mu, dtype=np.float32), projector)
        astra.data2d.delete(sino_id)
    finally:
        astra.projector.delete(projector)
    return np.asarray(sino, dtype=np.float32)


def fan_columns(size: int, pixel_spacing: float, geometry: FanGeometry) -> int:
    """Detector columns (odd, one pixel wide at the isocentre) so that the fan covers the image's circumscribed
    circle: nothing in the image is truncated, at the price of a wider fan than a 50 cm scan field needs."""
    radius = (size / math.sqrt(2.0) + 1.0) * pixel_spacing
    gamma = math.asin(min(radius / geometry.source_isocentre_mm, 0.99))
    half_columns = math.tan(gamma) * geometry.source_isocentre_mm / pixel_spacing  # in pixels at the isocentre
    return 2 * int(math.ceil(half_columns)) + 1


def rebin_to_parallel(
    fan: np.ndarray, pixel_spacing: float, geometry: FanGeometry, size: int, parallel_views: int
) -> np.ndarray:
    """Fan sinograms (… × views × columns, over 360°) → parallel sinograms on physics' grid (θ over 180°, bins of
    one pixel), each parallel ray the mean of its two conjugate fan rays (bilinear in view and column)."""
    fan = np.asarray(fan, dtype=np.float32)
    views, columns = fan.shape[-2:]
    p_views, bins = parallel_views, physics.detector_bins(size)
    theta = np.arange(p_views)[:, None] * (math.pi / p_views)
    t = (np.arange(bins)[None, :] - (bins - 1) / 2.0) * pixel_spacing  # mm at the isocentre
    gamma = np.arcsin(np.clip(t / geometry.source_isocentre_mm, -1.0, 1.0))
    pitch = pixel_spacing * geometry.source_detector_mm / geometry.source_isocentre_mm
    column = geometry.source_detector_mm * np.tan(gamma) / pitch
    # ASTRA's fanflat conventions, measured against physics.forward_project: β = π − θ − γ at column −u, and the
    # conjugate ray β = −θ + γ at column +u.
    rays = [(math.pi - theta - gamma, -column), (-theta + gamma, column)]
    flat = fan.reshape(-1, views, columns)
    wrapped = np.concatenate([flat, flat[:, :1]], axis=1)  # view 360° = view 0: interpolate across the seam
    out = np.zeros((flat.shape[0], p_views, bins), dtype=np.float32)
    for beta, u in rays:
        coords = [np.mod(beta, 2.0 * math.pi) * (views / (2.0 * math.pi)), u + (columns - 1) / 2.0]
        coords = [np.broadcast_to(c, (p_views, bins)) for c in coords]
        for i, sino in enumerate(wrapped):
            out[i] += ndimage.map_coordinates(sino, coords, order=1, mode="constant", cval=0.0)
    return (out / 2.0).reshape(*fan.shape[:-2], p_views, bins)


def simulate_doses_fan(
    hu_slice: np.ndarray,
    doses: Mapping[str, float],
    rng: np.random.Generator,
    *,
    geometry: FanGeometry,
    pixel_spacing: float = 0.7,
    views: int | None = None,
    electronic_noise: float = physics.DEFAULT_ELECTRONIC_NOISE,
    window: str = "standard",
    aperture: tuple[float, ...] = physics.DEFAULT_APERTURE,
    device: physics.Device = "cpu",
) -> dict[str, np.ndarray]:
    """physics.simulate_doses for a fan-beam scanner: "REF" and each dose (I0 of the equivalent 180° parallel scan).

    views: parallel views over 180° after rebinning (default physics.default_views); the fan has twice as many
    over 360°, the same angular step.
    """
    if "REF" in doses:
        raise ValueError('"REF" is reserved for the noise-free reconstruction')
    n = hu_slice.shape[-1]
    views = views or physics.default_views(n)
    mu = physics.hu_to_mu(hu_slice)
    fan = physics.blur_aperture(fan_project(mu, pixel_spacing, geometry, 2 * views), aperture)
    stack = [fan]
    for i0 in doses.values():  # each line is measured twice over 360°: half the photons per fan ray
        counts = physics.simulate_counts(fan, i0 / 2.0, electronic_noise, rng)
        stack.append(physics.counts_to_line_integrals(counts, i0 / 2.0))
    parallel = rebin_to_parallel(np.stack(stack), pixel_spacing, geometry, n, views)
    return physics.reconstruct_hu(parallel, ["REF", *doses], n, pixel_spacing, window, device)
