"""The noise target (denoise/noise_target.py): the blend leaves about the target's noise at every dose."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from pydantic import ValidationError
from torch import nn

from dicom_denoise_node.config import DeriveSettings, ModelSettings
from dicom_denoise_node.denoise.derive import derivation_key
from dicom_denoise_node.denoise.noise_target import resolve_target, target_strength
from dicom_denoise_node.denoise.series import SeriesDenoiser
from dicom_denoise_node.model.generator import ResidualCNNConfig, make_generator
from dicom_denoise_node.model.registry import save_model

SIZE, SPACING = 256, 1.4
DOSES = {"d1": 3e6, "d2": 4.5e5, "d3": 1.1e5, "d4": 3.8e4}  # photons per ray: soft-tissue noise ≈ 7 → 70 HU
TARGET_HU = 14.0


@pytest.fixture(scope="module")
def scans() -> dict[str, np.ndarray]:
    """One abdomen slice at four doses and its noise-free REF (the project's projection-domain simulator)."""
    from denoise_trainer.archive.phantom import make_patient, render_slice
    from denoise_trainer.archive.physics import simulate_doses

    rng = np.random.default_rng(5)
    hu, _ = render_slice(make_patient(rng, "abdomen"), 0.0, size=SIZE, pixel_spacing=SPACING)
    return simulate_doses(hu, DOSES, rng, pixel_spacing=SPACING)


class _Oracle(nn.Module):
    """A perfect denoiser for one slice: it answers the noise-free REF (one tile covers the slice), so that what is
    measured is the blend alone."""

    def __init__(self, ref_normalised: np.ndarray) -> None:
        super().__init__()
        self.body = make_generator(ResidualCNNConfig(filters=4, layers=2, dilations=(1, 1)))
        self.register_buffer("ref", torch.as_tensor(ref_normalised, dtype=torch.float32)[None, None])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        assert x.shape[-2:] == self.ref.shape[-2:], "one tile must cover the slice"
        return self.ref.expand(x.shape[0], 1, -1, -1)


def _noise(image: np.ndarray, ref: np.ndarray) -> float:
    soft = (ref >= -160) & (ref <= 240)
    return float((image - ref)[soft].std())


def _denoiser(tmp_path, settings: ModelSettings, ref: np.ndarray | None = None) -> SeriesDenoiser:
    oracle = _Oracle(np.zeros((SIZE, SIZE)) if ref is None else ref / 1024.0)
    folder = tmp_path / f"model{len(list(tmp_path.iterdir()))}"  # each its own: one version, one set of weights
    info = save_model(oracle.body, folder, "oracle", "0.0.1", (-1024.0, 1024.0))
    return SeriesDenoiser(oracle, info, settings, DeriveSettings())


def test_strength_leaves_the_target_share_and_passes_quiet_inputs():
    assert target_strength(40.0, 10.0) == pytest.approx(0.75)
    assert target_strength(8.0, 10.0) == 0.0  # already at or below the target: unchanged
    assert target_strength(40.0, 0.0) == 1.0  # no target: full strength
    assert resolve_target(None, 1.0, 12.0) == 12.0  # the model's own
    assert resolve_target(0.0, 1.0, 12.0) == 0.0  # switched off by the configuration
    assert resolve_target(None, 0.5, 12.0) == 0.0  # an explicit strength wins over the model's target
    assert resolve_target(9.0, 1.0, 12.0) == 9.0


def test_output_noise_follows_the_target_at_every_dose(scans, tmp_path):
    ref = scans["REF"]
    tiles = dict(tile_size=SIZE, tile_overlap=16)
    full = _denoiser(tmp_path, ModelSettings(**tiles), ref)
    aimed = _denoiser(tmp_path, ModelSettings(**tiles, target_noise_hu=TARGET_HU), ref)
    inputs = [scans[d] for d in DOSES]
    noise_in = [_noise(x, ref) for x in inputs]
    assert noise_in[0] < TARGET_HU < noise_in[1] and noise_in[-1] > 4 * TARGET_HU
    assert max(_noise(p, ref) for p in full.denoise_hu(iter(inputs))) < 0.5  # full strength: the oracle's REF
    blended = list(aimed.denoise_hu(iter(inputs)))
    np.testing.assert_array_equal(blended[0], inputs[0])  # below the target: the input itself
    out = [_noise(b, ref) for b in blended[1:]]
    for level, got in zip(noise_in[1:], out, strict=True):
        assert 0.8 * TARGET_HU < got < 1.1 * TARGET_HU, (level, got)
    assert max(out) / min(out) < 1.25  # flat across a 4-fold range of input noise
    assert len(aimed.noise_levels) == len(inputs) and not full.noise_levels


def test_the_target_names_the_derivation_and_refuses_a_strength_beside_it(tmp_path):
    aimed = _denoiser(tmp_path, ModelSettings(target_noise_hu=TARGET_HU))
    assert aimed.derivation.uid_key == derivation_key("0.0.1", target_noise_hu=TARGET_HU) == "0.0.1@noise=14"
    assert "leave about 14 HU of noise" in aimed.derivation.description
    assert _denoiser(tmp_path, ModelSettings()).derivation.uid_key == "0.0.1"  # earlier releases' UIDs kept
    with pytest.raises(ValidationError, match="strength=0.5 and target_noise_hu=14"):
        ModelSettings(strength=0.5, target_noise_hu=TARGET_HU)
