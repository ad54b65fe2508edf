"""Issue 30's "Done when" for Enhanced CT: a 120-frame 512² Enhanced CT, built to the standard, goes from dcmtk
storescu through `denoise-node serve` to Orthanc as a derived Enhanced CT, and dciodvfy reports no error on it."""

from __future__ import annotations

import numpy as np
import pytest
from pydicom import dcmread
from pydicom.uid import EnhancedCTImageStorage

from denoise_harness.enhanced_ct import write_enhanced_ct
from denoise_harness.node import NodeProcess
from dicom_denoise_node.denoise.derive import derived_series_uid, derived_sop_uid
from dicom_denoise_node.model.registry import read_metadata
from dicom_denoise_node.store.catalog import SeriesState
from tests.conftest import export_two_layer_model
from tests.peers import dciodvfy, require, storescu

pytestmark = pytest.mark.e2e
FRAMES, SIZE = 120, 512


def test_a_120_frame_enhanced_ct_goes_through_the_node_to_orthanc_as_a_derived_enhanced_ct(tmp_path, orthanc_factory):
    require("dciodvfy")
    source_path = write_enhanced_ct(tmp_path / "scanner" / "enhanced.dcm", FRAMES, rows=SIZE, columns=SIZE)
    errors, _ = dciodvfy(source_path)
    assert errors == [], errors  # the source itself is built to the standard
    model = export_two_layer_model(tmp_path / "model")  # the node's whole path without a real model's CPU time
    orthanc = orthanc_factory()
    # One tile per frame, and the guard off: its per-frame work is tested in tests/denoise/test_enhanced_ct.py.
    destination = {"ae_title": orthanc.aet, "port": orthanc.dicom_port}
    node = NodeProcess(tmp_path, model, [destination], tile=(SIZE, 0, 1), extra="[guard]\nenabled = false\n").start()
    source = dcmread(source_path)
    try:
        result = storescu([source_path], node.port, "DENOISE")
        assert result.returncode == 0, result.stderr
        assert node.wait_state(str(source.SeriesInstanceUID), SeriesState.SENT, timeout=300), node.log()[-4000:]
        key = read_metadata(model).version
        series = orthanc.wait_for_series(derived_series_uid(str(source.SeriesInstanceUID), key), 1, timeout=60)
        (instance,) = orthanc.series_instances(series["ID"])
        derived_path = tmp_path / "from-orthanc.dcm"
        derived_path.write_bytes(orthanc.instance_file(instance["ID"]))
    finally:
        assert node.stop() == 0
    derived = dcmread(derived_path)
    assert derived.SOPClassUID == EnhancedCTImageStorage and int(derived.NumberOfFrames) == FRAMES
    assert derived.SOPInstanceUID == derived_sop_uid(str(source.SOPInstanceUID), key)
    assert list(derived.ImageType)[0] == "DERIVED" and derived.StudyInstanceUID == source.StudyInstanceUID
    frames = derived.PerFrameFunctionalGroupsSequence
    assert len(frames) == FRAMES
    for index, (frame, source_frame) in enumerate(zip(frames, source.PerFrameFunctionalGroupsSequence, strict=True)):
        assert frame.PlanePositionSequence == source_frame.PlanePositionSequence, index
        assert frame.FrameContentSequence[0].DimensionIndexValues == [1, index + 1]
        (ref,) = frame.DerivationImageSequence[0].SourceImageSequence
        assert (ref.ReferencedSOPInstanceUID, ref.ReferencedFrameNumber) == (source.SOPInstanceUID, index + 1)
    denoised, original = derived.pixel_array, source.pixel_array
    assert denoised.shape == original.shape == (FRAMES, SIZE, SIZE)
    assert all(not np.array_equal(denoised[i], original[i]) for i in range(FRAMES))  # every frame was processed
    errors, warnings = dciodvfy(derived_path)
    assert errors == [], errors
    assert not [w for w in warnings if "not present in standard DICOM IOD" in w], warnings
