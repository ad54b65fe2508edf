"""Routing rules: header conditions, the first-match order, series routed by any instance, and `rules test`."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from pydicom import dcmread
from pydicom.uid import MRImageStorage

from denoise_harness.enhanced_ct import write_enhanced_ct
from dicom_denoise_node.complete.routing import classify_series, match_dataset, rule_failures
from dicom_denoise_node.config import DEFAULT_RULE, Rule, load_settings
from tests.peers import write_ct_series


@pytest.fixture()
def ct(tmp_path):
    path = write_ct_series(tmp_path / "ct", 1)[0]
    ds = dcmread(path)
    ds.SeriesDescription, ds.ProtocolName = "Chest LOW DOSE 1.0 B30f", "LDCT screening"
    ds.Exposure, ds.CTDIvol = 40, 2.1
    return ds


def test_default_rule_takes_original_axial_ct(ct):
    assert rule_failures(DEFAULT_RULE, ct) == []


@pytest.mark.parametrize(
    ("change", "reason"),
    [
        (lambda ds: setattr(ds, "ImageType", ["ORIGINAL", "PRIMARY", "LOCALIZER"]), "ImageType"),
        (lambda ds: setattr(ds, "ImageType", ["DERIVED", "SECONDARY", "AXIAL"]), "ImageType"),
        (lambda ds: delattr(ds, "ImageType"), "ImageType missing"),
        (lambda ds: setattr(ds, "Modality", "MR"), "Modality MR"),
        (lambda ds: setattr(ds, "SOPClassUID", MRImageStorage), "not CT Image Storage"),
    ],
)
def test_default_rule_refuses_what_is_not_original_axial_ct(ct, change, reason):
    change(ct)
    why = rule_failures(DEFAULT_RULE, ct)
    assert why and any(reason in w for w in why), why


def test_patterns_thresholds_and_calling_ae(ct):
    rule = Rule(
        name="ld",
        series_description="low.?dose",
        protocol_name="^LDCT",
        max_exposure_mas=50,
        max_ctdivol=3,
        calling_aets=["CT1"],
    )
    assert rule_failures(rule, ct, "CT1") == []
    assert any("calling AE CT2" in w for w in rule_failures(rule, ct, "CT2"))
    ct.Exposure = 200
    assert any("Exposure 200 mAs above 50" in w for w in rule_failures(rule, ct, "CT1"))
    del ct.Exposure
    assert any("no Exposure" in w for w in rule_failures(rule, ct, "CT1"))
    ct.Exposure, ct.CTDIvol, ct.SeriesDescription = 40, 9.5, "Abdomen 5.0 routine"
    why = rule_failures(rule, ct, "CT1")
    assert any("CTDIvol 9.5 mGy above 3" in w for w in why) and any("SeriesDescription" in w for w in why)


def test_first_matching_rule_wins_and_reasons_name_each_rule(ct):
    rules = [Rule(name="hd", series_description="routine"), Rule(name="ld", max_exposure_mas=50), DEFAULT_RULE]
    match = match_dataset(rules, ct)
    assert match.rule is not None and match.rule.name == "ld"
    assert list(match.reasons) == ["hd"]
    ct.ImageType = ["ORIGINAL", "PRIMARY", "LOCALIZER"]
    miss = match_dataset(rules, ct)
    assert miss.rule is None and set(miss.reasons) == {"hd", "ld", "default"}
    assert "rule 'ld'" in miss.explain()


def test_series_is_routed_by_any_instance_so_a_leading_localizer_does_not_skip_it(tmp_path):
    files = write_ct_series(tmp_path / "s", 3)
    ds = dcmread(files[0])
    ds.ImageType = ["ORIGINAL", "PRIMARY", "LOCALIZER"]
    ds.save_as(files[0])
    match = classify_series([DEFAULT_RULE], [(f, "SCANNER") for f in files])
    assert match.rule is DEFAULT_RULE
    only_localizer = classify_series([DEFAULT_RULE], [(files[0], "SCANNER")])
    assert only_localizer.rule is None and "LOCALIZER" in only_localizer.explain()


def test_rules_test_command_shows_decision_per_series(tmp_path):
    ld = write_ct_series(tmp_path / "in" / "ld", 2)
    hd = write_ct_series(tmp_path / "in" / "hd", 2)
    for path, (desc, mas) in [(p, ("Quarter dose", 50)) for p in ld] + [(p, ("Regular dose", 200)) for p in hd]:
        ds = dcmread(path)
        ds.SeriesDescription, ds.Exposure = desc, mas
        ds.save_as(path)
    (tmp_path / "in" / "notes.txt").write_text("not DICOM")
    cfg = tmp_path / "rules.toml"
    cfg.write_text('[[rules]]\nname = "low-dose"\nmax_exposure_mas = 100\n')
    assert [r.name for r in load_settings(cfg).active_rules] == ["low-dose"]
    result = subprocess.run(
        [sys.executable, "-m", "dicom_denoise_node", "rules", "test", str(tmp_path / "in"), "-c", str(cfg)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    ld_uid, hd_uid = str(dcmread(ld[0]).SeriesInstanceUID), str(dcmread(hd[0]).SeriesInstanceUID)
    ld_line = next(line for line in lines if ld_uid in line)
    hd_line = next(line for line in lines if hd_uid in line)
    assert "denoise (rule low-dose: s1, default model)" in ld_line
    assert "SKIPPED" in hd_line and "Exposure 200 mAs above 100" in result.stdout
    assert "1 file(s) are not DICOM" in result.stdout


def test_rules_test_without_files_fails(tmp_path):
    (tmp_path / "empty").mkdir()
    result = subprocess.run(
        [sys.executable, "-m", "dicom_denoise_node", "rules", "test", str(tmp_path / "empty")],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 1 and "no files" in result.stderr


def test_example_config_rule_path_is_documented():
    text = (Path(__file__).parents[2] / "etc" / "denoise-node.toml").read_text()
    assert "denoise-node rules test" in text


def test_default_and_example_rules_take_an_enhanced_ct_volume(tmp_path):
    """A real Enhanced CT says ORIGINAL\\PRIMARY\\VOLUME\\NONE, not AXIAL: the default rule (and the example
    config's, which is the same) must route it; its localizer must still be skipped."""
    ds = dcmread(write_enhanced_ct(tmp_path / "enh.dcm", 2, rows=16, columns=16), stop_before_pixels=True)
    assert list(ds.ImageType) == ["ORIGINAL", "PRIMARY", "VOLUME", "NONE"]
    example = load_settings(Path(__file__).parents[2] / "etc" / "denoise-node.toml").rules
    for rule in (DEFAULT_RULE, *example):
        assert rule_failures(rule, ds) == [], rule.name
    axial_only = Rule(name="axial", image_type=["ORIGINAL", "PRIMARY", "AXIAL"])
    assert any("VOLUME\\NONE does not start with ORIGINAL\\PRIMARY\\AXIAL" in w for w in rule_failures(axial_only, ds))
    ds.ImageType = ["ORIGINAL", "PRIMARY", "LOCALIZER", "NONE"]
    assert any("LOCALIZER\\NONE does not start with" in w for w in rule_failures(DEFAULT_RULE, ds))
