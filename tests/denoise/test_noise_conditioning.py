"""Noise-level conditioning in the node: the level measured on the input alone, the map through the tiler and the
self-ensemble, the conditioned generator built from its metadata; unconditioned models unchanged."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from dicom_denoise_node.config import DeriveSettings, ModelSettings
from dicom_denoise_node.denoise.ensemble import SelfEnsemble
from dicom_denoise_node.denoise.inference import TiledInferer
from dicom_denoise_node.denoise.noise import (
    FALLBACK_NOISE_HU,
    NOISE_FLOOR_HU,
    conditioning_noise_hu,
    noise_map_value,
    with_noise_map,
)
from dicom_denoise_node.denoise.series import SeriesDenoiser
from dicom_denoise_node.model.generator import (
    GeneratorConfig,
    ResidualCNNConfig,
    ResidualUNetConfig,
    build_generator,
    make_generator,
)
from dicom_denoise_node.model.registry import load_model, save_model

SIZE, SPACING = 256, 1.4  # mm: the project's phantom at a quarter of the node's pixel count
DOSES = {"d1": 8e5, "d2": 2e5, "d3": 8e4, "d4": 3e4}  # photons per ray: soft-tissue error ≈ 8 → 50 HU


@pytest.fixture(scope="module")
def scans() -> dict[str, np.ndarray]:
    """One abdomen slice at four doses and its noise-free REF, from the project's projection-domain simulator."""
    from denoise_trainer.archive.phantom import make_patient, render_slice
    from denoise_trainer.archive.physics import simulate_doses

    rng = np.random.default_rng(3)
    hu, _ = render_slice(make_patient(rng, "abdomen"), 0.0, size=SIZE, pixel_spacing=SPACING)
    return simulate_doses(hu, DOSES, rng, pixel_spacing=SPACING)


def test_level_tracks_the_true_noise_and_grows_with_falling_dose(scans):
    ref = scans["REF"]
    soft = (ref >= -160) & (ref <= 240)
    true = [float((scans[d] - ref)[soft].std()) for d in DOSES]
    measured = [conditioning_noise_hu(scans[d]) for d in DOSES]
    assert true == sorted(true) and true[-1] > 4 * true[0]  # the four doses span a wide range
    assert measured == sorted(measured), measured  # monotonic in dose
    for m, t in zip(measured, true, strict=True):
        assert abs(m / t - 1.0) < 0.25, (measured, true)


def test_level_has_a_fallback_without_soft_tissue_and_a_floor():
    air = np.full((128, 128), -1000.0, dtype=np.float32)
    assert conditioning_noise_hu(air) == FALLBACK_NOISE_HU
    assert conditioning_noise_hu(air, fallback_hu=33.0) == 33.0
    flat = np.full((128, 128), 40.0, dtype=np.float32)  # soft tissue without any noise (a padded region)
    assert conditioning_noise_hu(flat) == NOISE_FLOOR_HU
    assert noise_map_value(20.0, -1024.0, 1024.0) == pytest.approx(20.0 / 1024.0)


@pytest.mark.parametrize("config_type", [GeneratorConfig, ResidualCNNConfig, ResidualUNetConfig])
def test_each_architecture_takes_the_map_and_writes_the_key_only_when_on(config_type):
    plain = config_type(filters=8) if config_type is not GeneratorConfig else config_type(filters=8, blocks=1)
    assert "noise_conditioning" not in plain.to_dict()  # existing metadata, UIDs and digests unchanged
    conditioned = type(plain)(**{**plain.__dict__, "noise_conditioning": True})
    arch = conditioned.to_dict()
    assert arch["noise_conditioning"] is True
    network = build_generator(arch).eval()
    x = torch.zeros(1, 2, 32, 32)
    with torch.no_grad():
        assert network(x).shape == (1, 1, 32, 32)
        with pytest.raises(RuntimeError):
            network(torch.zeros(1, 1, 32, 32))  # a conditioned network needs its map


def test_tiler_runs_two_channel_slices_and_blends_one():
    rng = np.random.default_rng(1)
    image = rng.standard_normal((300, 170)).astype(np.float32)
    stack = with_noise_map(image, 0.25)

    class ImageOnly(nn.Module):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return x[:, :1]

    (out,) = TiledInferer(ImageOnly(), tile_size=128, overlap=24, batch_size=3, channels=2).run_all([stack])
    assert np.array_equal(out, image)  # bit-exact, like the identity through a 1-channel tiler
    with pytest.raises(ValueError, match="2 channel"):
        TiledInferer(ImageOnly(), tile_size=128, overlap=24, channels=2).run_all([image])


def test_self_ensemble_turns_every_channel_alike():
    """An elementwise product of the channels is exactly flip/turn-equivariant only when both are transformed alike."""

    class Product(nn.Module):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return x[:, :1] * x[:, 1:]

    x = torch.randn(2, 2, 16, 16)
    assert torch.allclose(SelfEnsemble(Product(), 8)(x), Product()(x), atol=1e-6)


class _MapReader(nn.Module):
    """A conditioned "generator" whose output is its noise-level map alone (it ignores the image)."""

    def __init__(self) -> None:
        super().__init__()
        self.config = ResidualCNNConfig(filters=4, layers=2, dilations=(1, 1), noise_conditioning=True)
        self.body = make_generator(self.config)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        assert x.shape[1] == 2
        return x[:, 1:2] * 10.0 - 1.0


def test_the_measured_map_reaches_the_network_through_the_tiler_and_the_ensemble(scans, tmp_path):
    reader = _MapReader()
    info = save_model(reader.body, tmp_path, "conditioned", "0.0.1", (-1024.0, 1024.0))
    assert info.noise_conditioning
    settings = ModelSettings(tile_size=128, tile_overlap=16, self_ensemble=2)
    denoiser = SeriesDenoiser(reader, info, settings, DeriveSettings())
    assert "noise level measured" in denoiser.derivation.description
    quiet, noisy = denoiser.denoise_hu(iter([scans["d1"], scans["d4"]]))
    levels = denoiser.noise_levels
    assert levels == [conditioning_noise_hu(scans["d1"]), conditioning_noise_hu(scans["d4"])]
    inside = (scans["d1"] > -1024) & (scans["d1"] < 1024) & (scans["d4"] > -1024) & (scans["d4"] < 1024)
    for out, level in ((quiet, levels[0]), (noisy, levels[1])):
        expected = info.denormalize(np.float32(noise_map_value(level, -1024.0, 1024.0) * 10.0 - 1.0))
        np.testing.assert_allclose(out[inside], expected, atol=0.05)
    assert noisy[inside].mean() > quiet[inside].mean() + 50  # two levels, two outputs


def test_a_conditioned_model_round_trips_the_registry(tmp_path):
    config = ResidualCNNConfig(filters=8, layers=3, dilations=(1, 2, 1), noise_conditioning=True)
    save_model(make_generator(config), tmp_path, "c", "0.1.0", (-1024.0, 1024.0))
    network, info = load_model(tmp_path / "c.json")
    assert info.noise_conditioning and info.architecture["noise_conditioning"] is True
    assert next(network.parameters()).shape[1] == 2  # the first layer sees the image and its map
    denoiser = SeriesDenoiser(network, info, ModelSettings(tile_size=64, tile_overlap=8), DeriveSettings())
    (out,) = denoiser.denoise_hu(iter([np.full((80, 72), 40.0, dtype=np.float32)]))
    assert out.shape == (80, 72) and np.isfinite(out).all()


def test_a_model_without_conditioning_runs_as_before(tmp_path):
    save_model(make_generator(ResidualCNNConfig(filters=8)), tmp_path, "p", "0.1.0", (-1024.0, 1024.0))
    network, info = load_model(tmp_path / "p.json")
    assert not info.noise_conditioning and "noise_conditioning" not in info.architecture
    denoiser = SeriesDenoiser(network, info, ModelSettings(tile_size=64, tile_overlap=8), DeriveSettings())
    image = np.random.default_rng(0).normal(40.0, 20.0, (80, 72)).astype(np.float32)
    (out,) = denoiser.denoise_hu(iter([image]))
    assert denoiser.noise_levels == [] and "noise level" not in denoiser.derivation.description
    tiler = TiledInferer(network, tile_size=64, overlap=8)
    (direct,) = tiler.run_all([info.normalize(image)])
    assert np.array_equal(out, info.denormalize(direct))
