"""Protocols that span what sites send (``synth --span``) and protocols outside all of it (``synth --ood``).

Why: a model trained on one simulator's dose, kernel and geometry fails on the next scanner (issue 28). The span
draws, per patient, a reconstruction kernel (archive/kernels.py, smooth → sharp), a parallel or fan-beam
geometry (archive/fanbeam.py), pixel spacing 0.5–0.9 mm, a patient size, an LD dose at 10–50 % of HD and a
target noise level; the HD dose (I0) is then set so that the soft-tissue noise lands in the ranges sites show
(LD ≈ 15–70 HU, HD ≈ 8–35 HU; measured in docs/training.md). The out-of-distribution protocol uses a kernel, a
fan geometry, pixel sizes and LD doses that the span never draws, richer anatomy and other anatomy seeds.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from functools import cache

import numpy as np

from denoise_trainer.archive import kernels, physics
from denoise_trainer.archive.protocol import Acquisition

log = logging.getLogger(__name__)

# HD soft-tissue noise (HU, liver or heart) of the reference protocol: "standard" kernel, parallel beam, 0.7 mm,
# I0 = 8·10⁵, 806 views (512²); calibrated by measuring a span archive (docs/training.md). The chest attenuates
# less (lungs): half the abdomen's noise at the same dose.
REFERENCE_NOISE_HU = {"abdomen": 17.0, "chest": 9.0}
# Fewest photons per ray (HD and LD): below it electronic noise and photon starvation, not Poisson noise, set the
# noise (a smooth-kernel chest aimed at 35 HU came out at 70 HU with 1.7·10³ photons, an OOD abdomen's LD at 176 HU
# with 5.5·10³); such draws come out quieter than aimed.
MIN_I0 = 5.0e3
_REFERENCE_VIEWS = physics.default_views(512)
_REFERENCE_SPACING_MM = 0.7


@dataclass(frozen=True)
class ScanProtocol(Acquisition):
    """An Acquisition plus what the span varies beyond it: geometry, patient size and anatomy detail."""

    geometry: str = "parallel"  # "parallel" or a name in fanbeam.FAN_GEOMETRIES
    size_scale: float = 1.0
    detail: str = "plain"


@dataclass(frozen=True)
class ProtocolRanges:
    """What one kind of archive draws from: choices, or (low, high) ranges drawn uniformly."""

    name: str
    kernels: tuple[str, ...]
    geometries: tuple[str, ...]
    spacing_mm: tuple[float, float]
    spacing_choices: tuple[float, ...]  # when not empty, drawn from these instead of the range
    ld_fraction: tuple[float, float]
    ld_noise_hu: tuple[float, float]  # log-uniform, clipped so that HD noise stays in hd_noise_hu
    hd_noise_hu: tuple[float, float]
    size_scale: tuple[float, float]
    detail: str
    electronic_noise: tuple[float, float] = (5.0, 12.0)
    min_ld_photons: float = MIN_I0  # floor of LD photons per ray


SPAN = ProtocolRanges(
    name="span",
    kernels=tuple(k.name for k in kernels.TRAINING_KERNELS),
    geometries=("parallel", "fan-a"),
    spacing_mm=(0.5, 0.9),
    spacing_choices=(),
    ld_fraction=(0.10, 0.50),
    ld_noise_hu=(15.0, 70.0),
    hd_noise_hu=(8.0, 35.0),
    size_scale=(0.85, 1.15),
    detail="plain",
)
# Outside every training range: the OOD-only kernel and fan geometry, 0.4 or 1.0 mm pixels, LD at 5–8 % of HD
# (below the span's 10 %), so LD noise reaches past 70 HU; rich anatomy; other anatomy seeds (synth.py).
OOD = ProtocolRanges(
    name="ood",
    kernels=tuple(k.name for k in kernels.OOD_KERNELS),
    geometries=("fan-b",),
    spacing_mm=(0.4, 1.0),
    spacing_choices=(0.4, 1.0),
    ld_fraction=(0.05, 0.08),
    ld_noise_hu=(35.0, 90.0),
    hd_noise_hu=(8.0, 35.0),
    size_scale=(0.85, 1.15),
    detail="rich",
    min_ld_photons=4 * MIN_I0,  # at 5 % dose and 1 mm pixels, 5·10³ photons starved an abdomen's LD to 176 HU
)
PROTOCOL_RANGES = {r.name: r for r in (SPAN, OOD)}


@cache
def kernel_noise_gain(name: str) -> float:
    """Noise std of a kernel relative to "standard", from its filter response and the linear interpolation of the
    back-projection (noise power ∝ Σ |H(f)·sinc²(f)|²; within 10 % of the water-disc measurement)."""
    response = physics.ramp_filter(physics.detector_bins(512), name).double().numpy()
    reference = physics.ramp_filter(physics.detector_bins(512), "standard").double().numpy()
    interpolation = np.sinc(np.fft.rfftfreq(2 * (response.size - 1))) ** 2
    return math.sqrt(float(((response * interpolation) ** 2).sum() / ((reference * interpolation) ** 2).sum()))


def i0_for_noise(
    hd_noise_hu: float,
    kernel: str,
    spacing_mm: float,
    views: int,
    body_part: str,
    ld_fraction: float = 1.0,
    min_ld_photons: float = MIN_I0,
) -> float:
    """HD photons per ray that give about ``hd_noise_hu`` soft-tissue noise: noise ∝ gain / (spacing · √(I0·views))."""
    scale = REFERENCE_NOISE_HU[body_part] * kernel_noise_gain(kernel) / hd_noise_hu
    geometry = (_REFERENCE_SPACING_MM / spacing_mm) ** 2 * (_REFERENCE_VIEWS / views)
    return max(min_ld_photons / ld_fraction, physics.DEFAULT_I0_HD * scale**2 * geometry)


def _log_uniform(rng: np.random.Generator, low: float, high: float) -> float:
    return float(np.exp(rng.uniform(np.log(low), np.log(high))))


def draw_protocol(
    seq: np.random.SeedSequence, size: int, views: int | None, ranges: ProtocolRanges, body_part: str
) -> ScanProtocol:
    """One patient's protocol from ``ranges`` (SPAN or OOD); views as synthesize_archive's (None: the default)."""
    rng = np.random.default_rng(seq)
    kernel = str(rng.choice(ranges.kernels))
    geometry = str(rng.choice(ranges.geometries))
    if ranges.spacing_choices:
        spacing = float(rng.choice(ranges.spacing_choices))
    else:
        spacing = float(rng.uniform(*ranges.spacing_mm))
    fraction = float(rng.uniform(*ranges.ld_fraction))
    root = math.sqrt(fraction)  # LD noise = HD noise / √fraction
    low = max(ranges.ld_noise_hu[0], ranges.hd_noise_hu[0] / root)
    high = min(ranges.ld_noise_hu[1], ranges.hd_noise_hu[1] / root)
    ld_noise = _log_uniform(rng, low, max(low, high))
    size_scale = float(rng.uniform(*ranges.size_scale))
    i0 = i0_for_noise(
        ld_noise * root,
        kernel,
        spacing,
        views or physics.default_views(size),
        body_part,
        fraction,
        ranges.min_ld_photons,
    )
    return ScanProtocol(
        i0_hd=i0,
        ld_fraction=fraction,
        window=kernel,
        pixel_spacing_mm=spacing,
        electronic_noise=float(rng.uniform(*ranges.electronic_noise)),
        geometry=geometry,
        size_scale=size_scale,
        detail=ranges.detail,
    )
