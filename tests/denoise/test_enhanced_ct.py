"""Enhanced CT in: every frame read through its own rescale, denoised, and written back as a derived Enhanced CT
(the same IOD) with its functional groups kept, each frame referencing its source frame; dciodvfy-clean."""

from __future__ import annotations

from pathlib import Path

import highdicom as hd
import numpy as np
import pytest
import torch
from pydicom import dcmread
from pydicom.uid import EnhancedCTImageStorage, ExplicitVRLittleEndian, LegacyConvertedEnhancedCTImageStorage
from torch import nn

from denoise_harness.enhanced_ct import write_enhanced_ct
from dicom_denoise_node.complete.routing import rule_failures
from dicom_denoise_node.config import DEFAULT_RULE, DeriveSettings, GuardSettings, ModelSettings, ReportSettings
from dicom_denoise_node.denoise.decode import iter_slices, scan_series
from dicom_denoise_node.denoise.derive import DerivationInfo, derived_series_uid, derived_sop_uid
from dicom_denoise_node.denoise.derive_enhanced import derive_enhanced_instance
from dicom_denoise_node.denoise.series import SeriesDenoiser
from dicom_denoise_node.model.registry import load_model
from tests.ct_cases import _enhanced_ct
from tests.peers import dciodvfy, require, write_ct_series

FRAMES = 5
# Each frame its own Pixel Value Transformation (per-frame functional groups), as a scanner may write them.
RESCALES = [(1.0, -1024.0), (0.5, -1024.0), (1.0, -1000.0), (2.0, -2048.0), (1.0, -1024.0)]
PER_FRAME_KEPT = ("PlanePositionSequence", "FrameContentSequence", "PixelValueTransformationSequence")
SHARED_KEPT = ("PixelMeasuresSequence", "PlaneOrientationSequence", "CTReconstructionSequence", "CTExposureSequence")


@pytest.fixture
def enhanced(tmp_path: Path) -> Path:
    return write_enhanced_ct(tmp_path / "source" / "enhanced.dcm", FRAMES, rows=64, columns=64, rescales=RESCALES)


class _Floor(nn.Module):
    """A "bad model": every pixel at the window's floor (the guard must flag every frame)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.full_like(x, -1.0)


def _denoise(model: Path, enhanced: Path, out: Path, network: nn.Module | None = None, **settings):  # noqa: ANN003
    loaded, info = load_model(model)
    denoiser = SeriesDenoiser(
        network or loaded,
        info,
        ModelSettings(tile_size=128, tile_overlap=16, strength=settings.pop("strength", 1.0)),
        DeriveSettings(),
        **settings,
    )
    uid = str(dcmread(enhanced, stop_before_pixels=True).SeriesInstanceUID)
    return denoiser, denoiser.denoise_series(uid, [enhanced], lambda s, o: out / s / f"{o}.dcm")


def test_frames_are_read_in_slice_order_each_through_its_own_rescale(enhanced):
    refs, skipped = scan_series([enhanced])
    assert skipped == []
    assert [r.frame for r in refs] == [4, 3, 2, 1, 0]  # frame i sits at z = -i mm: slice order is the reverse
    stored = dcmread(enhanced).pixel_array.astype(np.float32)
    for source in iter_slices(refs):
        slope, intercept = RESCALES[source.ref.frame]
        np.testing.assert_array_equal(source.hu, stored[source.ref.frame] * slope + intercept)


def test_an_enhanced_ct_without_its_functional_groups_is_skipped_with_the_reason(tmp_path):
    """The earlier stand-in: Enhanced CT's SOP class on a single-frame CT's attributes. Nothing places its frames."""
    refs, skipped = scan_series([_enhanced_ct(tmp_path)])
    assert refs == [] and "Per-Frame Functional Groups" in skipped[0].reason


def test_an_enhanced_ct_comes_back_as_a_derived_enhanced_ct_with_its_functional_groups(enhanced, tiny_model, tmp_path):
    """At strength 0 each frame's HU comes back exactly: written back through its own rescale, the stored values are
    the source's, frame by frame."""
    denoiser, result = _denoise(tiny_model, enhanced, tmp_path / "out", strength=0.0)
    assert (result.images, result.slices) == (1, FRAMES)
    (path,) = [Path(p) for _, src, p in result.written if src]
    derived, source = dcmread(path), dcmread(enhanced)
    key = denoiser.derivation.uid_key
    assert derived.SOPClassUID == EnhancedCTImageStorage and int(derived.NumberOfFrames) == FRAMES
    assert derived.SOPInstanceUID == derived_sop_uid(source.SOPInstanceUID, key)
    assert derived.SeriesInstanceUID == result.derived_series_uid == derived_series_uid(source.SeriesInstanceUID, key)
    assert (
        derived.StudyInstanceUID == source.StudyInstanceUID
        and derived.FrameOfReferenceUID == source.FrameOfReferenceUID
    )
    assert list(derived.ImageType) == ["DERIVED", "PRIMARY", "VOLUME", "NONE"]
    shared, source_shared = derived.SharedFunctionalGroupsSequence[0], source.SharedFunctionalGroupsSequence[0]
    assert list(shared.CTImageFrameTypeSequence[0].FrameType) == ["DERIVED", "PRIMARY", "VOLUME", "NONE"]
    for keyword in SHARED_KEPT:
        assert shared[keyword].value == source_shared[keyword].value, keyword
    assert derived.DimensionIndexSequence == source.DimensionIndexSequence
    for index, (frame, source_frame) in enumerate(
        zip(derived.PerFrameFunctionalGroupsSequence, source.PerFrameFunctionalGroupsSequence, strict=True)
    ):
        for keyword in PER_FRAME_KEPT:
            assert frame[keyword].value == source_frame[keyword].value, (index, keyword)
        (derivation,) = frame.DerivationImageSequence
        assert "strength 0" in derivation.DerivationDescription
        (ref,) = derivation.SourceImageSequence
        assert (ref.ReferencedSOPInstanceUID, ref.ReferencedFrameNumber) == (source.SOPInstanceUID, index + 1)
    np.testing.assert_array_equal(derived.pixel_array, source.pixel_array)
    require("dciodvfy")
    assert dciodvfy(enhanced)[0] == []
    errors, _ = dciodvfy(path)
    assert errors == [], errors


def test_the_guard_flags_each_frame_in_its_frame_comments_and_the_report_lists_every_frame(
    enhanced, tiny_model, tmp_path
):
    _, result = _denoise(
        tiny_model, enhanced, tmp_path / "out", network=_Floor(), guard=GuardSettings(), report=ReportSettings()
    )
    assert len(result.verdicts) == FRAMES and result.flagged == list(range(FRAMES))
    (path,) = [Path(p) for _, src, p in result.written if src]
    derived = dcmread(path)
    comments = [
        str(g.FrameContentSequence[0].get("FrameComments", "")) for g in derived.PerFrameFunctionalGroupsSequence
    ]
    assert all(c.startswith("Denoising guard flagged this slice") for c in comments), comments
    assert result.report_path is not None
    require("dciodvfy")
    errors, _ = dciodvfy(result.report_path)
    assert errors == [], errors
    assert str(derived.SOPInstanceUID) in str(dcmread(result.report_path).CurrentRequestedProcedureEvidenceSequence)


def test_a_frame_comment_goes_to_its_own_frame_only_and_frames_must_match(enhanced):
    source = dcmread(enhanced)
    info = DerivationInfo("m", "1.0", DeriveSettings())
    hu = np.zeros((FRAMES, 64, 64), np.float32)
    derived = derive_enhanced_instance(source, hu, "2.25.1", info, frame_comments={2: "flagged"})
    comments = [g.FrameContentSequence[0].get("FrameComments") for g in derived.PerFrameFunctionalGroupsSequence]
    assert comments == [None, None, "flagged", None, None]
    with pytest.raises(ValueError, match="do not match"):
        derive_enhanced_instance(source, hu[:-1], "2.25.1", info)


def test_a_legacy_converted_enhanced_ct_is_routed_and_comes_back_in_its_own_iod(tiny_model, tmp_path):
    sources = [dcmread(p) for p in write_ct_series(tmp_path / "ct", 3, rows=64, columns=64)]
    legacy = hd.legacy.LegacyConvertedEnhancedCTImage(
        sources, series_instance_uid=hd.UID(), series_number=5, sop_instance_uid=hd.UID(), instance_number=1
    )
    legacy.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    path = tmp_path / "legacy.dcm"
    legacy.save_as(path, enforce_file_format=True)
    assert rule_failures(DEFAULT_RULE, dcmread(path, stop_before_pixels=True)) == []
    _, result = _denoise(tiny_model, path, tmp_path / "out")
    (out,) = [Path(p) for _, src, p in result.written if src]
    derived = dcmread(out)
    assert derived.SOPClassUID == LegacyConvertedEnhancedCTImageStorage and int(derived.NumberOfFrames) == 3
    assert list(derived.ImageType)[0] == "DERIVED"
    require("dciodvfy")
    errors, _ = dciodvfy(out)
    assert errors == [], errors
