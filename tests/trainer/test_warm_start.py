"""Warm start (train/warm_start.py): a run begins from an exported model, a new conditioning channel at zero."""

from __future__ import annotations

import pytest
import torch

from denoise_trainer.train.loop import TrainingRun
from denoise_trainer.train.recipe import CannotTrain, build_config
from denoise_trainer.train.warm_start import warm_start
from dicom_denoise_node.model.generator import ResidualCNNConfig, make_generator
from dicom_denoise_node.model.registry import save_model
from tests.trainer.test_train import tiny_slices

ARCH = dict(generator="residual_cnn", filters=8, layers=3, dilations=[1, 2, 1])


@pytest.fixture()
def exported(tmp_path):
    """An unconditioned residual CNN with non-trivial weights, exported through the node's registry."""
    torch.manual_seed(4)
    source = make_generator(ResidualCNNConfig(filters=8, layers=3, dilations=(1, 2, 1), head_init_std=0.1))
    with torch.no_grad():
        for p in source.parameters():
            p.add_(0.05 * torch.randn_like(p))
    save_model(source, tmp_path / "m", "src", "1.0.0", (-1024.0, 1024.0))
    return source, tmp_path / "m" / "src.json"


def _config(tmp_path, path, **extra):
    return build_config(
        "tiny",
        overrides={**ARCH, "hu_min": -1024.0, "hu_max": 1024.0, "init_from": path, "run_dir": tmp_path / "run"} | extra,
    )


def test_a_conditioned_run_starts_as_the_exported_model(tmp_path, exported):
    source, path = exported
    cfg = _config(tmp_path, path, noise_conditioning=True, pairing="paired", device="cpu", patch_size=48)
    run = TrainingRun(cfg, tiny_slices(n=2))  # the loop warm-starts its generator
    x = 0.05 * torch.randn(2, 1, 40, 40)
    for level in (0.0, 0.02, 0.5):  # whatever the noise-level map says: the new channel's weights are zero
        given = torch.cat([x, torch.full_like(x, level)], 1)
        torch.testing.assert_close(run.step_fn.generator(given), source(x), rtol=0, atol=1e-6)


def test_what_cannot_fit_is_refused_with_the_reason(tmp_path, exported):
    _, path = exported
    generator = make_generator(_config(tmp_path, path, filters=16).generator_config())
    with pytest.raises(CannotTrain, match="filters: model 8, recipe 16"):
        warm_start(generator, _config(tmp_path, path, filters=16))
    with pytest.raises(CannotTrain, match="window -1024…1024 HU is not the recipe's -1024…3071"):
        cfg = _config(tmp_path, path, hu_max=3071.0)
        warm_start(make_generator(cfg.generator_config()), cfg)
    with pytest.raises(CannotTrain, match="not found"):
        cfg = _config(tmp_path, tmp_path / "missing.json")
        warm_start(make_generator(cfg.generator_config()), cfg)
