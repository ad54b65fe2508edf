"""A rule's forward_originals, end to end: storescu → `denoise-node serve` → Orthanc as the PACS, which gets the
low-dose series as it was sent (same UIDs, same transfer syntax, a JPEG Lossless instance included), the derived
series, and the scanner's dose report, which the node accepts only because a rule forwards originals."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest
from pydicom import dcmread
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian, JPEGLosslessSV1, XRayRadiationDoseSRStorage, generate_uid

from denoise_harness.node import NodeProcess
from dicom_denoise_node.store.catalog import SeriesState
from tests.peers import require, storescu, write_ct_series

pytestmark = pytest.mark.e2e

RULE = '[[rules]]\nname = "ct"\nforward_originals = ["PACS"]\n'


def dose_report(path: Path, ct_file: Path) -> Path:
    """A CT scanner's X-Ray Radiation Dose SR (its header and root container) for the study of ``ct_file``."""
    ct = dcmread(ct_file, stop_before_pixels=True)
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.SOPClassUID, ds.SOPInstanceUID = XRayRadiationDoseSRStorage, generate_uid()
    for keyword in ("PatientName", "PatientID", "PatientBirthDate", "PatientSex", "StudyInstanceUID", "StudyDate",
                    "StudyTime", "StudyID", "AccessionNumber", "ReferringPhysicianName"):  # fmt: skip
        setattr(ds, keyword, ct.get(keyword, ""))
    ds.Modality, ds.SeriesInstanceUID, ds.SeriesNumber, ds.InstanceNumber = "SR", generate_uid(), 997, 1
    ds.Manufacturer, ds.ContentDate, ds.ContentTime = "", "20240101", "120000"
    ds.ValueType, ds.ContinuityOfContent = "CONTAINER", "SEPARATE"
    ds.CompletionFlag, ds.VerificationFlag = "COMPLETE", "UNVERIFIED"
    title = Dataset()
    title.CodeValue, title.CodingSchemeDesignator, title.CodeMeaning = "113701", "DCM", "X-Ray Radiation Dose Report"
    ds.ConceptNameCodeSequence = [title]
    template = Dataset()
    template.MappingResource, template.TemplateIdentifier = "DCMR", "10011"
    ds.ContentTemplateSequence = [template]
    ds.save_as(path, enforce_file_format=True)
    return path


def test_originals_and_the_dose_report_reach_the_pacs_beside_the_derived_series(tmp_path, tiny_model, orthanc_factory):
    ct = write_ct_series(tmp_path / "ct", 2, rows=32, columns=32)
    jpeg = tmp_path / "jpeg.dcm"  # one instance JPEG Lossless, as scanners send them
    subprocess.run([require("dcmcjpeg"), "+e1", str(ct[1]), str(jpeg)], check=True, timeout=30)
    jpeg.replace(ct[1])
    sr = dose_report(tmp_path / "dose.dcm", ct[0])
    orthanc = orthanc_factory()
    pacs = {"ae_title": orthanc.aet, "port": orthanc.dicom_port, "name": "PACS"}
    node = NodeProcess(tmp_path, tiny_model, [pacs], extra=RULE).start()
    ct_uid, sr_uid = str(dcmread(ct[0]).SeriesInstanceUID), str(dcmread(sr).SeriesInstanceUID)
    try:
        result = storescu([*ct, sr], node.port, "DENOISE")
        assert result.returncode == 0, result.stdout + result.stderr
        assert node.wait_state(ct_uid, SeriesState.SENT, timeout=180), node.log()[-3000:]
        assert node.wait_state(sr_uid, SeriesState.SKIPPED, timeout=60)  # never denoised …
        originals = orthanc.wait_for_series(ct_uid, 2, timeout=60)  # … but passed on, as is the CT series
        dose = orthanc.wait_for_series(sr_uid, 1, timeout=60)
        derived = [s for s in orthanc.series() if s["MainDicomTags"]["SeriesInstanceUID"] not in (ct_uid, sr_uid)]
        assert node.alive()
    finally:
        assert node.stop() == 0
    assert len(derived) == 1 and len(derived[0]["Instances"]) == 2
    got = {}
    for instance in orthanc.series_instances(originals["ID"]) + orthanc.series_instances(dose["ID"]):
        path = tmp_path / f"orthanc-{instance['ID']}.dcm"
        path.write_bytes(orthanc.instance_file(instance["ID"]))
        ds = dcmread(path)
        got[str(ds.SOPInstanceUID)] = ds
    for path in [*ct, sr]:  # the same instances, in the transfer syntax they came in, pixels unchanged
        sent = dcmread(path)
        kept = got[str(sent.SOPInstanceUID)]
        assert kept.file_meta.TransferSyntaxUID == sent.file_meta.TransferSyntaxUID
        if "PixelData" in sent:
            assert kept.PixelData == sent.PixelData
    assert dcmread(ct[1]).file_meta.TransferSyntaxUID == JPEGLosslessSV1
    log = node.log()
    assert "only to pass them on" in log and "originals passed on to PACS" in log and "Traceback" not in log
