"""④ The derived instance: attributes a PACS expects, HU written back through the source encoding, dciodvfy-clean."""

from __future__ import annotations

import numpy as np
import pytest
from pydicom import dcmread

from dicom_denoise_node.config import DeriveSettings, ModelSettings
from dicom_denoise_node.denoise.derive import (
    DerivationInfo,
    derivation_key,
    derive_instance,
    derived_series_uid,
    derived_sop_uid,
    encode,
    hu_to_stored,
)
from dicom_denoise_node.denoise.rule_denoisers import for_rule
from dicom_denoise_node.denoise.series import SeriesDenoiser
from dicom_denoise_node.model.registry import BUNDLED_DIR, load_model, read_metadata
from tests.peers import dciodvfy, require, write_ct_series

NOTICE = "Denoised by software; not for primary diagnosis"
INFO = DerivationInfo("cyclegan-test", "1.2.3", DeriveSettings(notice=NOTICE))
GEOMETRY = (
    "ImagePositionPatient",
    "ImageOrientationPatient",
    "PixelSpacing",
    "SliceThickness",
    "FrameOfReferenceUID",
    "Rows",
    "Columns",
    "StudyInstanceUID",
    "PatientID",
)


@pytest.fixture
def source(tmp_path):
    (path,) = write_ct_series(tmp_path, 1, rows=32, columns=48)
    return dcmread(path)


def test_derived_attributes(source, tmp_path):
    hu = source.pixel_array.astype(np.float32) - 1024 + 5
    series_uid = derived_series_uid(source.SeriesInstanceUID, INFO.model_version)
    before = source.SeriesDescription if "SeriesDescription" in source else None
    ds = derive_instance(source, hu, series_uid, INFO)
    assert ds.SeriesInstanceUID == series_uid != source.SeriesInstanceUID
    assert ds.SOPInstanceUID == derived_sop_uid(source.SOPInstanceUID, "1.2.3") != source.SOPInstanceUID
    assert list(ds.ImageType)[:2] == ["DERIVED", "SECONDARY"] and ds.ImageType[2] == "AXIAL"
    assert "cyclegan-test 1.2.3" in ds.DerivationDescription and "not for primary diagnosis" in ds.ImageComments
    assert ds.SeriesDescription == f"{source.get('SeriesDescription') or 'CT'} DN cyclegan-test 1.2.3 s1"
    ref = ds.SourceImageSequence[0]
    assert ref.ReferencedSOPInstanceUID == source.SOPInstanceUID
    assert ref.PurposeOfReferenceCodeSequence[0].CodeValue == "121322"
    equipment = ds.ContributingEquipmentSequence[-1]
    assert equipment.ManufacturerModelName == "cyclegan-test" and "model 1.2.3" in equipment.SoftwareVersions
    for kw in GEOMETRY:
        assert ds[kw].value == source[kw].value, kw
    assert ds.SeriesNumber == source.SeriesNumber + 1000
    # The source dataset is untouched.
    assert (source.SeriesDescription if "SeriesDescription" in source else None) == before
    assert list(source.ImageType)[0] == "ORIGINAL"
    # HU written back exactly through the source rescale.
    out = tmp_path / "d.dcm"
    out.write_bytes(encode(ds))
    back = dcmread(out)
    np.testing.assert_array_equal(back.pixel_array * float(back.RescaleSlope) + float(back.RescaleIntercept), hu)


KINDS = [
    ("paired-ld2hd-synthetic", "paired-trained generator", "CycleGAN"),
    ("cyclegan-ld2hd-synthetic", "CycleGAN generator", "paired"),
]


@pytest.mark.parametrize(("name", "kind", "not_kind"), KINDS)
def test_the_derived_series_names_the_models_real_kind(name, kind, not_kind, source):
    """The bundled paired model is not a CycleGAN: its training pairing (the metadata) names it in the output."""
    network, info = load_model(BUNDLED_DIR / f"{name}.json")
    denoiser = SeriesDenoiser(network, info, ModelSettings(), DeriveSettings())
    ds = derive_instance(source, source.pixel_array.astype(np.float32) - 1024, "2.25.1", denoiser.derivation)
    assert kind in ds.DerivationDescription and not_kind not in ds.DerivationDescription
    # Only the words change: the derived UIDs still come from the derivation key alone.
    assert denoiser.derivation.uid_key == derivation_key(info.version, 1.0, info.self_ensemble)


def test_a_model_whose_metadata_does_not_say_how_it_was_trained_is_a_cyclegan(tmp_path):
    info = read_metadata(BUNDLED_DIR / "paired-ld2hd-synthetic.json")
    assert (info.pairing, info.kind) == ("paired", "paired-trained generator")
    older = type(info)(**{**info.__dict__, "training": {}})
    assert (older.pairing, older.kind) == ("unpaired", "CycleGAN generator")


def test_uids_are_deterministic_per_model_version():
    assert derived_series_uid("1.2.3", "v1") == derived_series_uid("1.2.3", "v1")
    assert derived_series_uid("1.2.3", "v1") != derived_series_uid("1.2.3", "v2")
    assert derived_sop_uid("1.2.3.4", "v1") != derived_sop_uid("1.2.3.5", "v1")
    assert len(derived_sop_uid("1." * 31 + "1", "v1")) <= 64


def test_dciodvfy_clean(source, tmp_path):
    require("dciodvfy")
    ds = derive_instance(source, source.pixel_array.astype(np.float32) - 1024, "2.25.1234", INFO)
    out = tmp_path / "d.dcm"
    out.write_bytes(encode(ds))
    errors, _ = dciodvfy(out)
    assert errors == []


@pytest.mark.parametrize(
    "signed,bits,slope,intercept",
    [(False, 12, 1.0, -1024.0), (True, 16, 1.0, 0.0), (False, 16, 0.5, -1024.0), (True, 12, 2.0, -10.0)],
)
def test_hu_to_stored_respects_representation_and_range(source, signed, bits, slope, intercept):
    source.PixelRepresentation = int(signed)
    source.BitsStored = bits
    source.RescaleSlope, source.RescaleIntercept = slope, intercept
    hu = np.array([[-90000.0, -1000.0, 0.0, 40.4, 3000.0, 90000.0]], dtype=np.float32)
    stored = hu_to_stored(hu, source)
    assert stored.dtype == (np.int16 if signed else np.uint16)
    lo, hi = (-(1 << (bits - 1)), (1 << (bits - 1)) - 1) if signed else (0, (1 << bits) - 1)
    assert stored.min() >= lo and stored.max() <= hi
    assert stored[0, 0] == lo and stored[0, -1] == hi  # clipped, not wrapped
    inside = stored[0, 1:5].astype(np.float64) * slope + intercept
    np.testing.assert_allclose(inside, hu[0, 1:5], atol=slope / 2 + 1e-6)


def test_a_long_source_description_is_cut_never_the_model_or_the_strength(source):
    """SeriesDescription is 64 characters at most: the source's part gives way (it used to be the suffix)."""
    source.SeriesDescription = "Thorax routine 1.0 B30f low dose follow-up protocol, 54 chars"  # 61 characters
    info = DerivationInfo("cyclegan-ld2hd-synthetic", "1.1.0", DeriveSettings(), strength=0.5)
    ds = derive_instance(source, source.pixel_array.astype(np.float32) - 1024, "2.25.1", info)
    assert len(ds.SeriesDescription) <= 64
    assert ds.SeriesDescription.endswith(" DN cyclegan-ld2hd-synthetic 1.1.0 s0.5")
    assert ds.SeriesDescription.startswith("Thorax routine")
    assert "cyclegan-ld2hd-synthetic 1.1.0 at strength 0.5" in ds.DerivationDescription
    noise = DerivationInfo("m", "2", DeriveSettings(series_description="{kind}/{noise}/{level}"), target_noise_hu=12)
    assert noise.series_description(source) == "CycleGAN/12/n12HU"


def test_the_notice_is_the_models_own_unless_the_site_sets_one(source):
    """Both bundled models were trained on simulated CT only: their output says so by default; a site may word it
    otherwise or turn it off with an explicit empty notice."""
    network, info = load_model(BUNDLED_DIR / "cyclegan-ld2hd-synthetic.json")
    assert info.simulated_only and "simulated CT" in info.default_notice
    hu = source.pixel_array.astype(np.float32) - 1024
    for settings, expected in (
        (DeriveSettings(), info.default_notice),
        (DeriveSettings(notice="Site text"), "Site text"),
        (DeriveSettings(notice=""), None),
    ):
        denoiser = SeriesDenoiser(network, info, ModelSettings(), settings)
        ds = derive_instance(source, hu, "2.25.1", denoiser.derivation)
        assert ds.get("ImageComments") == expected
        assert (expected or "") in ds.DerivationDescription
    untrained = type(info)(**{**info.__dict__, "training": {"data": {"simulated": False}}})
    assert untrained.default_notice == ""


def test_a_rules_strength_and_model_make_another_derivation(tiny_model):
    """Per-rule strength: its own key (so its own UIDs), named in the description; a model a rule names by name
    joins the key, so two models that share a version never share UIDs."""
    network, info = load_model(tiny_model)
    base = SeriesDenoiser(network, info, ModelSettings(), DeriveSettings())
    half = for_rule(base, "chest-soft", 0.5)
    assert half.inferer is base.inferer and base.strength == 1.0  # shares the network; the base is unchanged
    assert half.derivation.uid_key == derivation_key(info.version, 0.5, 1) != base.derivation.uid_key
    assert "at strength 0.5 for routing rule chest-soft" in half.derivation.description
    named = for_rule(base, "other", None, named_model=True)
    assert named.derivation.uid_key == f"{info.version}@model={info.name}"
    target = SeriesDenoiser(network, info, ModelSettings(target_noise_hu=10), DeriveSettings())
    assert for_rule(target, "r", None).derivation.target_noise_hu == 10
