"""Noise-level conditioning in the trainer: each patch with its slice's level, both objectives on both feeds, the
map in validation, export, and the node running the exported model; off by default."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from denoise_trainer.data.slices import TrainingData, noise_maps
from denoise_trainer.export import export_checkpoint
from denoise_trainer.train.checkpoint import load_checkpoint
from denoise_trainer.train.conditioning import add_to_image, as_input, image_part
from denoise_trainer.train.feeds import make_feed
from denoise_trainer.train.loop import train
from denoise_trainer.train.recipe import PRESETS, build_config
from denoise_trainer.train.validation import ValidationSet
from dicom_denoise_node.config import DeriveSettings, ModelSettings
from dicom_denoise_node.denoise.series import SeriesDenoiser
from dicom_denoise_node.model.registry import load_model
from tests.trainer.golden_runs import tiny_data

WINDOW = (-1024.0, 3071.0)  # the tiny preset's (the method's) window


@pytest.fixture(scope="module")
def data() -> TrainingData:
    return tiny_data()


def _cfg(tmp_path, **overrides):
    values = {"run_dir": tmp_path / "run", "device": "cpu", "noise_conditioning": True, "sample_every": 2}
    return build_config("tiny", overrides={**values, **overrides})


def test_off_in_every_preset_and_absent_from_unconditioned_metadata():
    for preset in PRESETS:
        cfg = build_config(preset)
        assert not cfg.noise_conditioning
        assert "noise_conditioning" not in cfg.generator_config().to_dict()
    for generator in ("resnet", "residual_cnn", "residual_unet"):
        cfg = build_config("tiny", overrides={"generator": generator, "layers": 8, "noise_conditioning": True})
        assert cfg.generator_config().to_dict()["noise_conditioning"] is True


@pytest.mark.parametrize("pairing", ["unpaired", "paired"])
@pytest.mark.parametrize("feed", ["host", "device"])
def test_every_patch_carries_its_slices_level(tmp_path, data, pairing, feed):
    cfg = _cfg(tmp_path, pairing=pairing, feed=feed, patch_size=48, batch_size=6)
    ld, hd = make_feed(cfg, data.ld, data.hd, torch.device("cpu"), 0).next()
    for batch, slices in ((ld, data.ld), (hd, data.hd)):
        assert batch.shape[1] == 2
        per_patch = batch[:, 1].flatten(1)
        assert torch.equal(per_patch.min(1).values, per_patch.max(1).values)  # constant over each patch
        levels = torch.tensor(noise_maps(slices, WINDOW))
        assert all(torch.isclose(levels, v).any() for v in per_patch[:, 0])  # one of its domain's slices' levels
    assert not torch.equal(ld[:, 1], hd[:, 1])  # LD patches have LD's levels, HD patches HD's


def test_helpers_leave_unconditioned_batches_alone():
    x, d = torch.randn(2, 1, 8, 8), torch.randn(2, 1, 8, 8)
    assert image_part(x) is x and as_input(x, x) is x
    assert torch.equal(add_to_image(x, d), x + d)
    conditioned = torch.cat([x, torch.full_like(x, 0.01)], 1)
    assert torch.equal(add_to_image(conditioned, d)[:, 1], conditioned[:, 1])  # a lesion changes the image only
    assert torch.equal(as_input(d, conditioned)[:, 1], conditioned[:, 1])


def test_validation_gives_the_network_its_map():
    data = tiny_data(n=2, size=128)  # room for the inserted lesions' 64² patches
    val = ValidationSet.build(data.val_ld, data.val_hd, data.val_ref, WINDOW, 2, noise_conditioning=True)
    maps = noise_maps(data.val_ld, WINDOW)
    for x, m in zip(val.ld, maps, strict=True):
        assert x.shape[1] == 2 and torch.allclose(x[0, 1], torch.tensor(m))
    assert val.lesions is not None and val.lesions.x.shape[1] == 2


@pytest.mark.parametrize("pairing", ["paired", "unpaired"])
def test_a_conditioned_model_trains_exports_and_denoises_in_the_node(tmp_path, data, pairing):
    cfg = _cfg(tmp_path, pairing=pairing, patch_size=48, lambda_lesion=0.5, ema_decay=0.5)
    result = train(cfg, data)
    assert result.steps == 4 and all(np.isfinite(v) for h in result.history for v in h.values())
    assert result.validation and np.isfinite(result.validation[-1]["val_error_hu"])
    state = load_checkpoint(result.checkpoint)
    assert state["generator_config"]["noise_conditioning"] is True
    info = export_checkpoint(result.checkpoint, tmp_path / "models", "conditioned", "0.0.1", self_ensemble=2)
    assert info.noise_conditioning
    network, info = load_model(tmp_path / "models" / "conditioned.json")
    settings = ModelSettings(tile_size=64, tile_overlap=8)  # self_ensemble 0: the model's own, 2
    denoiser = SeriesDenoiser(network, info, settings, DeriveSettings())
    assert denoiser.self_ensemble == 2
    (out,) = denoiser.denoise_hu(iter([data.val_ld[0]]))
    assert out.shape == data.val_ld[0].shape and np.isfinite(out).all()
    assert len(denoiser.noise_levels) == 1


def test_the_cycle_gives_each_fake_the_level_of_the_domain_it_imitates():
    from torch import nn

    from denoise_trainer.train.cyclegan import CycleGenerators
    from dicom_denoise_node.model.generator import ResidualCNNConfig

    seen: dict[str, list[torch.Tensor]] = {"g": [], "f": []}

    class Spy(nn.Module):
        def __init__(self, name: str) -> None:
            super().__init__()
            self.name = name

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            seen[self.name].append(x[:, 1].clone())
            return x[:, :1]

    gens = CycleGenerators(ResidualCNNConfig(filters=4, layers=2, dilations=(1, 1), noise_conditioning=True))
    gens.ld2hd, gens.hd2ld = Spy("g"), Spy("f")
    image = torch.randn(3, 1, 8, 8)
    ld, hd = torch.cat([image, torch.full_like(image, 0.03)], 1), torch.cat([image, torch.full_like(image, 0.01)], 1)
    gens(ld, hd)
    assert torch.all(seen["f"][1] == 0.01)  # F(G(LD)): G's output imitates HD, so it gets HD's level
    assert torch.all(seen["g"][1] == 0.03)  # G(F(HD)): F's output imitates LD
