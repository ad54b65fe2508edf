"""Per-rule strength and model: in the rule, in `rules test`, checked at load and at start; rules that fall through
make one derived series each."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys

import pytest

from dicom_denoise_node.complete.routing import series_rules
from dicom_denoise_node.config import ConfigError, DeriveSettings, ModelSettings, load_settings
from dicom_denoise_node.denoise.rule_denoisers import RuleDenoisers, load_rule_models
from dicom_denoise_node.denoise.series import SeriesDenoiser
from dicom_denoise_node.model.registry import ModelError, load_model
from tests.peers import write_ct_series

RULES = """
[[rules]]
name = "soft"
strength = 0.5
fall_through = true
[[rules]]
name = "never"
series_description = "no such series"
strength = 0.7
[[rules]]
name = "full"
strength = 1.0
[[rules]]
name = "after-full"
strength = 0.2
"""


@pytest.fixture
def series(tmp_path):
    return [(p, "CT") for p in write_ct_series(tmp_path / "ct", 2)]


def test_a_rule_that_falls_through_adds_the_later_rules_that_match(tmp_path, series):
    cfg = tmp_path / "node.toml"
    cfg.write_text(RULES)
    settings = load_settings(cfg)
    # "never" does not match; "full" does and does not fall through, so "after-full" is not tried.
    assert [r.name for r in series_rules(settings, "soft", series)] == ["soft", "full"]
    assert [r.name for r in series_rules(settings, "full", series)] == ["full"]
    gone = series_rules(settings, "removed-since", series)  # a rule no longer in the config: [model] settings
    assert [(r.name, r.strength, r.model) for r in gone] == [("removed-since", None, "")]


def test_rule_strength_beside_a_noise_target_or_out_of_range_is_refused_naming_rule_and_file(tmp_path):
    cfg = tmp_path / "node.toml"
    cfg.write_text('[model]\ntarget_noise_hu = 12.0\n[[rules]]\nname = "a"\n[[rules]]\nname = "b"\nstrength = 0.5\n')
    with pytest.raises(ConfigError) as err:
        load_settings(cfg)
    assert "rules[1].strength" in str(err.value) and "'b'" in str(err.value) and str(cfg) in str(err.value)
    cfg.write_text('[[rules]]\nname = "b"\nstrength = 1.5\n')
    with pytest.raises(ConfigError) as err:
        load_settings(cfg)
    assert "rules[0].strength" in str(err.value) and str(cfg) in str(err.value)


def test_rules_test_shows_each_rules_strength_and_refuses_an_unknown_model(tmp_path, series):
    cfg = tmp_path / "node.toml"
    cfg.write_text(RULES)
    folder = series[0][0].parent
    run = [sys.executable, "-m", "dicom_denoise_node", "rules", "test", str(folder), "-c", str(cfg)]
    result = subprocess.run(run, capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    assert "rule soft: s0.5, default model; rule full: s1, default model" in result.stdout
    cfg.write_text(RULES + 'model = "no-such-model"\n')  # on "after-full"
    result = subprocess.run(run, capture_output=True, text=True, timeout=60)
    assert result.returncode == 3
    assert "rule 'after-full'" in result.stderr and "no-such-model" in result.stderr


def test_one_denoiser_per_derivation_and_a_reprocess_strength_wins(tmp_path, tiny_model, series):
    cfg = tmp_path / "node.toml"
    cfg.write_text(RULES.replace("strength = 1.0", "strength = 0.5"))  # "full" now makes what "soft" makes
    settings = load_settings(cfg)
    network, info = load_model(tiny_model)
    default = SeriesDenoiser(network, info, ModelSettings(), DeriveSettings())
    denoisers = RuleDenoisers(default, {}, lambda rule, instances: series_rules(settings, rule, instances))
    (same,) = denoisers.for_series("soft", series)  # two rules, one derivation: made once
    assert same.derivation.rule == "soft" and same.strength == 0.5
    cfg.write_text(RULES)
    settings = load_settings(cfg)
    soft, full = denoisers.for_series("soft", series)
    assert (soft.strength, full.strength) == (0.5, 1.0) and soft.derivation.uid_key != full.derivation.uid_key
    (again,) = denoisers.for_series("soft", series, strength=0.8)  # `reprocess --strength 0.8`: that one only
    assert again.strength == 0.8 and again.derivation.rule == "soft"


def test_a_rules_model_is_loaded_at_start_and_an_unknown_one_names_the_rule(tmp_path, tiny_model):
    registry = tmp_path / "registry"
    registry.mkdir()
    for suffix in (".json", ".safetensors"):
        shutil.copy(tiny_model.with_suffix(suffix), registry / f"tiny-random{suffix}")
    (registry / "ACTIVE").write_text("tiny-random\n")
    network, info = load_model(registry)
    cfg = tmp_path / "node.toml"
    cfg.write_text(f'[model]\npath = "{registry}"\n[[rules]]\nname = "other"\nmodel = "tiny-random"\n')
    settings = load_settings(cfg)
    default = SeriesDenoiser(network, info, settings.model, settings.derive)
    assert load_rule_models(settings, default, "cpu", None) == {}  # the default model by its name: not reloaded
    meta = json.loads(tiny_model.read_text())
    (registry / "tiny-b.json").write_text(json.dumps({**meta, "name": "tiny-b"}))
    shutil.copy(tiny_model.with_suffix(".safetensors"), registry / "tiny-b.safetensors")
    cfg.write_text(f'[model]\npath = "{registry}"\n[[rules]]\nname = "other"\nmodel = "tiny-b"\n')
    settings = load_settings(cfg)
    loaded = load_rule_models(settings, default, "cpu", None)
    assert list(loaded) == ["tiny-b"] and loaded["tiny-b"].info.name == "tiny-b"
    (other,) = RuleDenoisers(default, loaded, lambda rule, instances: settings.rules).for_series("other", [])
    assert other.info.name == "tiny-b" and other.derivation.uid_key.endswith("@model=tiny-b")
    cfg.write_text(f'[model]\npath = "{registry}"\n[[rules]]\nname = "other"\nmodel = "missing"\n')
    with pytest.raises(ModelError, match="rule 'other': model 'missing'.*tiny-random"):
        load_rule_models(load_settings(cfg), default, "cpu", None)
