"""Reconstruction kernels: the apodisation that multiplies the ramp in filtered back-projection.

Why a table: sites reconstruct with kernels from smooth (soft-tissue, most noise power at low frequencies) to sharp
(bone, lung; noise power near Nyquist), and vendors' sharp kernels (e.g. "B70", "YC") boost mid frequencies so that
edges overshoot. A denoiser trained on one kernel learns that kernel's noise texture, so the training span draws
from the training kernels and the out-of-distribution archive uses a kernel the span never contains.

Frequencies are in cycles per detector bin (one bin = one pixel at the isocentre): 0.5 is Nyquist. Each kernel's
response is window(f / cutoff) × (1 + boost · bump(f)), where bump is a Gaussian around ``bump_centre``.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import numpy as np

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Kernel:
    """One named reconstruction kernel (name → window function, cutoff, edge boost)."""

    name: str
    window: str  # hann, hamming, shepp-logan, ram-lak or butterworth
    cutoff: float = 0.5  # cycles/bin: where hann/hamming/ram-lak end, shepp-logan's sinc scale, butterworth's −3 dB
    boost: float = 0.0  # edge enhancement: amplify mid frequencies by up to (1 + boost)
    bump_centre: float = 0.15  # cycles/bin
    bump_width: float = 0.06  # cycles/bin (Gaussian σ)
    order: int = 4  # butterworth order

    @property
    def dicom_name(self) -> str:
        """What goes into ConvolutionKernel (CS: upper case, digits, underscore, ≤ 16 characters)."""
        return self.name.upper().replace("-", "_")[:16]

    def response(self, freq: np.ndarray) -> np.ndarray:
        """Multiplier of the ramp at each frequency (cycles/bin)."""
        f = np.abs(np.asarray(freq, dtype=np.float64))
        x = f / self.cutoff
        if self.window == "hann":
            w = np.where(x < 1.0, 0.5 * (1.0 + np.cos(np.pi * x)), 0.0)
        elif self.window == "hamming":
            w = np.where(x < 1.0, 0.54 + 0.46 * np.cos(np.pi * x), 0.0)
        elif self.window == "shepp-logan":
            w = np.sinc(0.5 * x)
        elif self.window == "ram-lak":
            w = (x <= 1.0).astype(np.float64)
        elif self.window == "butterworth":
            w = 1.0 / np.sqrt(1.0 + x ** (2 * self.order))
        else:
            raise ValueError(f"kernel {self.name!r}: unknown window {self.window!r}")
        if self.boost:
            w = w * (1.0 + self.boost * np.exp(-0.5 * ((f - self.bump_centre) / self.bump_width) ** 2))
        return w


# Training kernels in the order of their measured noise-power peaks, smooth → sharp (tests/trainer/test_kernels.py):
# about 0.06, 0.14, 0.19, 0.21 and 0.29 cycles/pixel. "edge" is the noisiest although its peak lies below
# "standard": its bump lifts the MTF to about 1.3 around 0.13 cycles/pixel, so edges overshoot.
TRAINING_KERNELS: tuple[Kernel, ...] = (
    Kernel("smooth", "hann", cutoff=0.22),
    Kernel("soft", "hann", cutoff=0.5),
    Kernel("edge", "ram-lak", cutoff=0.5, boost=1.0, bump_centre=0.17, bump_width=0.06),
    Kernel("standard", "shepp-logan", cutoff=0.5),
    Kernel("sharp", "ram-lak", cutoff=0.5),
)
# Only the out-of-distribution archive uses these: a window shape the training span never saw (noise peak about
# 0.10 cycles/pixel, between "smooth" and "soft").
OOD_KERNELS: tuple[Kernel, ...] = (Kernel("ood-hamming", "hamming", cutoff=0.35),)
KERNELS: dict[str, Kernel] = {k.name: k for k in (*TRAINING_KERNELS, *OOD_KERNELS)}


def kernel(name: str) -> Kernel:
    """The named kernel, or a ValueError that lists the names."""
    try:
        return KERNELS[name]
    except KeyError:
        raise ValueError(f"unknown reconstruction kernel {name!r} (known: {', '.join(KERNELS)})") from None
