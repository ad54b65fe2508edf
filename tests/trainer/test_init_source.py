"""`train --init` (train/init_source.py): a model JSON, a bundled model's name or `bundled`, and the recipe takes
the model's architecture where the config does not set it, so that `--init bundled` needs no config file."""

from __future__ import annotations

import pytest
import torch

from denoise_trainer.train.init_source import BUNDLED_BY_PAIRING, resolve_init
from denoise_trainer.train.loop import TrainingRun
from denoise_trainer.train.recipe import CannotTrain, build_config
from denoise_trainer.train.warm_start import warm_start
from dicom_denoise_node.model.generator import make_generator
from dicom_denoise_node.model.registry import BUNDLED_DIR, load_model, read_metadata
from tests.trainer.test_train import tiny_slices


def test_bundled_names_the_model_of_the_runs_pairing_and_names_and_paths_resolve():
    assert resolve_init("bundled", "paired") == BUNDLED_DIR / "paired-ld2hd-synthetic.json"
    assert resolve_init("bundled", "unpaired") == BUNDLED_DIR / "cyclegan-ld2hd-synthetic.json"
    for name in BUNDLED_BY_PAIRING.values():
        assert resolve_init(name, "paired") == BUNDLED_DIR / f"{name}.json"
        assert resolve_init(BUNDLED_DIR / f"{name}.json", "paired") == BUNDLED_DIR / f"{name}.json"
    with pytest.raises(CannotTrain, match="model not found.*bundled: cyclegan-ld2hd-synthetic, paired-ld2hd"):
        resolve_init("no-such-model", "paired")


def test_the_recipe_takes_the_models_architecture_unless_the_config_sets_it(tmp_path):
    paired = read_metadata(BUNDLED_DIR / "paired-ld2hd-synthetic.json").architecture
    # The method's preset is a 64-filter ResNet: the model's residual CNN replaces it.
    cfg = build_config("method", overrides={"init_from": "bundled", "pairing": "paired"})
    assert cfg.generator == "residual_cnn" and cfg.init_from == BUNDLED_DIR / "paired-ld2hd-synthetic.json"
    assert (cfg.filters, cfg.layers, cfg.dilations) == (paired["filters"], paired["layers"], paired["dilations"])
    assert (cfg.hu_min, cfg.hu_max) == (-1024.0, 1024.0)
    assert cfg.generator_config().to_dict() == paired
    # What the user wrote wins, and the warm start then says what does not fit.
    toml = tmp_path / "site.toml"
    toml.write_text('[train]\npairing = "paired"\nfilters = 16\n')
    cfg = build_config("cpu", toml, {"init_from": "bundled"})
    assert cfg.filters == 16 and cfg.layers == paired["layers"]
    with pytest.raises(CannotTrain, match="filters: model 48, recipe 16"):
        warm_start(make_generator(cfg.generator_config()), cfg)


def test_a_run_with_init_bundled_starts_as_the_bundled_model(tmp_path):
    cfg = build_config("tiny", overrides={"init_from": "bundled", "run_dir": tmp_path, "device": "cpu"})
    run = TrainingRun(cfg, tiny_slices(n=2))
    bundled, _ = load_model(BUNDLED_DIR / "cyclegan-ld2hd-synthetic.json")
    x = 0.05 * torch.randn(2, 1, 40, 40)
    torch.testing.assert_close(run.step_fn.generator(x), bundled(x), rtol=0, atol=1e-6)
