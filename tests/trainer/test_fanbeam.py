"""Fan-beam acquisition (ASTRA projector, noise on fan counts, rebinning): unbiased, Poisson-driven, its own texture."""

from __future__ import annotations

import importlib.util
import os
import sys

import numpy as np
import pytest
from scipy import ndimage

from denoise_trainer.archive import fanbeam, physics

N = 128
SPACING = 0.7
FAN = fanbeam.FAN_GEOMETRIES["fan-a"]


@pytest.fixture(autouse=True)
def _astra_installed() -> None:
    """Skip without astra-toolbox (the trainer's `fanbeam` extra), except under CI=true: `make venv` installs it."""
    if importlib.util.find_spec("astra") is None:
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail("CI=true and astra-toolbox (trainer extra `fanbeam`) is missing")
        pytest.skip(fanbeam.INSTALL_HINT)


def _water_cylinder() -> np.ndarray:
    xs = np.arange(N) - (N - 1) / 2.0
    return np.where(xs[None] ** 2 + xs[:, None] ** 2 < (0.42 * N) ** 2, 0.0, -1000.0)


def _inside() -> np.ndarray:
    return ndimage.binary_erosion(_water_cylinder() > -500, iterations=6)


def _scan(geometry: str, doses: dict[str, float], seed: int = 1) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    if geometry == "parallel":
        return physics.simulate_doses(_water_cylinder(), doses, rng, pixel_spacing=SPACING, window="standard")
    return fanbeam.simulate_doses_fan(
        _water_cylinder(), doses, rng, geometry=fanbeam.FAN_GEOMETRIES[geometry], pixel_spacing=SPACING
    )


@pytest.mark.parametrize("geometry", ["parallel", "fan-a", "fan-b"])
def test_a_noise_free_water_cylinder_is_zero_hu(geometry: str) -> None:
    ref = _scan(geometry, {})["REF"]
    assert abs(float(ref[_inside()].mean())) < 3.0, geometry
    assert float(np.abs(ref[_inside()]).max()) < 25.0, geometry  # no rebinning streaks or rings


def test_rebinned_fan_rays_are_the_parallel_rays() -> None:
    """The rebinning's ASTRA conventions: the rebinned fan sinogram of an off-centre object is physics' own."""
    image = np.zeros((N, N), np.float32)
    image[20:34, 80:96], image[60:100, 30:44] = 1.0, 0.5
    parallel = physics.forward_project(image)
    fan = fanbeam.fan_project(image / SPACING, SPACING, FAN, 2 * parallel.shape[0])
    rebinned = fanbeam.rebin_to_parallel(fan, SPACING, FAN, N, parallel.shape[0])
    assert np.abs(rebinned - parallel).mean() < 0.01 * np.abs(parallel).mean()


def test_fan_noise_is_poisson_driven() -> None:
    """Quarter dose doubles the noise std (variance ∝ 1/dose), within 15 %."""
    images = _scan("fan-a", {"HD": 4.0e5, "LD": 1.0e5})
    hd, ld = ((images[k] - images["REF"])[_inside()].std() for k in ("HD", "LD"))
    assert ld / hd == pytest.approx(2.0, rel=0.15), (hd, ld)


def _periphery_to_centre_noise(geometry: str) -> float:
    """Noise std 28–34 mm from the centre ÷ within 8 mm of it, from the pixel-wise std over 12 realisations."""
    images = _scan(geometry, {f"n{i}": 2.0e5 for i in range(12)})
    std = np.stack([images[f"n{i}"] - images["REF"] for i in range(12)]).std(axis=0)
    ys, xs = np.mgrid[:N, :N] - (N - 1) / 2.0
    radius = np.hypot(xs, ys) * SPACING
    return float(std[(radius > 28) & (radius < 34)].mean() / std[radius < 8].mean())


def test_fan_and_parallel_noise_textures_differ() -> None:
    """Rebinning interpolates between noisy fan rays with weights and ray densities that change across the field:
    the fan's noise falls off towards the periphery faster than the parallel beam's."""
    parallel, fan = _periphery_to_centre_noise("parallel"), _periphery_to_centre_noise("fan-a")
    assert fan < parallel - 0.05, (parallel, fan)


def test_without_astra_the_fan_beam_says_how_to_install_it(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "astra", None)
    with pytest.raises(RuntimeError, match=r"pip install 'dicom-denoise-trainer\[fanbeam\]'"):
        _scan("fan-a", {})
