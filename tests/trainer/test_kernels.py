"""Reconstruction kernels, measured: noise-power peaks ordered smooth → sharp, and an edge kernel that overshoots."""

from __future__ import annotations

import numpy as np
import pytest

from denoise_trainer.archive import kernels, physics

N = 160
HALF_ROI = 40
SPACING = 0.7


def _water_disc() -> np.ndarray:
    xs = np.arange(N) - (N - 1) / 2.0
    return np.where(xs[None] ** 2 + xs[:, None] ** 2 < (0.45 * N) ** 2, 0.0, -1000.0)


def nps_peak(window: str, realisations: int = 12) -> float:
    """Frequency (cycles/pixel) where the radial noise power spectrum of a water disc peaks (smoothed over ±2 bins)."""
    doses = {f"n{i}": 2.0e5 for i in range(realisations)}
    images = physics.simulate_doses(
        _water_disc(), doses, np.random.default_rng(0), pixel_spacing=SPACING, window=window
    )
    c, h = N // 2, HALF_ROI
    rois = [(images[k] - images["REF"])[c - h : c + h, c - h : c + h] for k in doses]
    power = np.mean([np.abs(np.fft.fft2(r - r.mean())) ** 2 for r in rois], axis=0)
    f = np.fft.fftfreq(2 * h)
    ring = np.round(np.hypot(f[None], f[:, None]) * 2 * h).astype(int)
    radial = (np.bincount(ring.ravel(), power.ravel()) / np.bincount(ring.ravel()))[: h + 1]
    smoothed = np.convolve(radial, np.ones(5) / 5.0, mode="same")
    return float(np.argmax(smoothed) / (2 * h))


def mtf(window: str) -> np.ndarray:
    """Horizontal MTF (normalised at DC) of a noise-free point reconstruction, up to Nyquist."""
    point = np.zeros((N, N))
    point[N // 2, N // 2] = 1.0
    sino = physics.blur_aperture(physics.forward_project(point), physics.DEFAULT_APERTURE)
    spectrum = np.abs(np.fft.fft2(physics.fbp(sino, N, window=window)))
    return spectrum[0, : N // 2] / spectrum[0, 0]


def test_noise_power_peaks_rise_from_smooth_to_sharp_and_differ_for_every_kernel() -> None:
    peaks = {k.name: nps_peak(k.name) for k in (*kernels.TRAINING_KERNELS, *kernels.OOD_KERNELS)}
    training = [peaks[k.name] for k in kernels.TRAINING_KERNELS]
    assert len(kernels.TRAINING_KERNELS) >= 4 and kernels.OOD_KERNELS, peaks
    assert all(a < b for a, b in zip(training, training[1:], strict=False)), peaks
    assert len(set(peaks.values())) == len(peaks), peaks


def test_the_edge_kernel_overshoots_and_the_ramp_does_not() -> None:
    assert mtf("edge").max() > 1.15
    assert mtf("sharp")[2:].max() < 1.02  # the plain ramp only rolls off (aperture and interpolation)


def test_ood_kernels_are_never_training_kernels_and_names_fit_dicom() -> None:
    assert not {k.name for k in kernels.OOD_KERNELS} & {k.name for k in kernels.TRAINING_KERNELS}
    assert all(len(k.dicom_name) <= 16 and k.dicom_name.replace("_", "").isalnum() for k in kernels.KERNELS.values())
    with pytest.raises(ValueError, match="known"):
        kernels.kernel("B70f")
