"""How a synthetic patient is scanned: the three series of a study (HD, LD, REF) and the acquisition's dose,
kernel, field of view and detector noise, fixed or drawn per patient (``vary``)."""

from __future__ import annotations

import logging
from dataclasses import dataclass

import numpy as np

from denoise_trainer.archive import physics

log = logging.getLogger(__name__)

HD_MAS = 200.0
EXPOSURE_TIME_MS = 500  # one 0.5 s rotation per slice
CTDI_PER_MAS = 0.065  # mGy per mAs at 120 kVp, 32 cm body phantom (typical order of magnitude)
FOV_MM = 0.7 * 512  # default reconstruction field of view


@dataclass(frozen=True)
class SeriesSpec:
    """What distinguishes one of the three series of a study."""

    kind: str
    number: int
    description: str
    mas: float | None  # None: REF is not a physical acquisition


def series_specs(ld_fraction: float = 0.25, hd_mas: float = HD_MAS) -> dict[str, SeriesSpec]:
    """HD, LD and REF series descriptions; LD mAs follows the dose fraction."""
    ld_mas = round(hd_mas * ld_fraction, 1)
    hd_mas = round(hd_mas, 1)
    return {
        "HD": SeriesSpec("HD", 2, f"Regular dose (HD) {hd_mas:g} mAs", hd_mas),
        "LD": SeriesSpec(
            "LD",
            3,
            f"Quarter dose (LD) {ld_mas:g} mAs" if ld_fraction == 0.25 else f"Low dose (LD) {ld_mas:g} mAs",
            ld_mas,
        ),
        "REF": SeriesSpec("REF", 4, "Noise-free reference (REF) for evaluation only", None),
    }


@dataclass(frozen=True)
class Acquisition:
    """How one patient was scanned: dose, LD fraction, reconstruction kernel and field of view."""

    i0_hd: float
    ld_fraction: float
    window: str
    pixel_spacing_mm: float
    electronic_noise: float

    @property
    def hd_mas(self) -> float:
        return HD_MAS * self.i0_hd / physics.DEFAULT_I0_HD


# Ranges of ``vary``: what differs between scanners, protocols and patients on a real archive. Why: a model trained
# on one dose, one kernel and one field of view learns that simulator, not low-dose CT (docs/training.md).
# The ranges are kept narrow enough that a patch's noise level still tells LD from HD (the LD/HD noise ratio is
# about 2): with a 2× dose range, the Ram-Lak kernel and 300–420 mm, HD patches of noisy protocols were as noisy as
# LD patches of quiet ones, and unpaired discriminators could not learn the domains (docs/model-card.md, run 3).
VARY_I0_FACTOR = (0.75, 1.33)  # HD dose relative to the default, log-uniform (patient size and protocol)
VARY_LD_FRACTION = (0.2, 0.33)  # LD dose as a fraction of HD
VARY_WINDOWS = ("shepp-logan", "hann")  # standard and smooth kernels
VARY_FOV_MM = (320.0, 400.0)  # reconstruction field of view
VARY_ELECTRONIC_NOISE = (5.0, 12.0)  # detector noise, counts


def draw_acquisition(seq: np.random.SeedSequence, size: int) -> Acquisition:
    """A random, plausible acquisition for one patient (``synthesize_archive(vary=True)``)."""
    rng = np.random.default_rng(seq)
    lo, hi = np.log(VARY_I0_FACTOR)
    return Acquisition(
        i0_hd=float(physics.DEFAULT_I0_HD * np.exp(rng.uniform(lo, hi))),
        ld_fraction=float(rng.uniform(*VARY_LD_FRACTION)),
        window=str(rng.choice(VARY_WINDOWS)),
        pixel_spacing_mm=float(rng.uniform(*VARY_FOV_MM) / size),
        electronic_noise=float(rng.uniform(*VARY_ELECTRONIC_NOISE)),
    )
