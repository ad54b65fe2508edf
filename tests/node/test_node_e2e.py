"""End to end with real peers: dcmtk storescu → `denoise-node serve` → dcmtk storescp / Orthanc as the PACS."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from pydicom import dcmread

from denoise_harness.node import NodeProcess
from denoise_trainer.archive.synth import synthesize_archive
from dicom_denoise_node.denoise.derive import derived_series_uid, derived_sop_uid
from dicom_denoise_node.model.registry import read_metadata
from dicom_denoise_node.store.catalog import SeriesState
from tests.peers import StoreSCP, dciodvfy, require, storescu, wait_until

pytestmark = pytest.mark.e2e
SLICES = 16
GEOMETRY = ("ImagePositionPatient", "ImageOrientationPatient", "PixelSpacing", "SliceThickness", "FrameOfReferenceUID")


@pytest.fixture(scope="session")
def ld_series(tmp_path_factory) -> list[Path]:
    """One synthetic patient: 16 LD slices of 512×512 (Poisson noise on projections, FBP)."""
    out = tmp_path_factory.mktemp("archive")
    (patient,) = synthesize_archive(out, patients=1, slices=SLICES, size=512, seed=11, views=360)
    files = sorted((patient.directory / "LD").glob("*.dcm"))
    assert len(files) == SLICES
    return files


def _check_derived(derived: list[Path], sources: list[Path], version: str) -> None:
    src = {str(d.SOPInstanceUID): d for d in (dcmread(p) for p in sources)}
    src_series = next(iter(src.values())).SeriesInstanceUID
    assert len(derived) == len(sources)
    for path in derived:
        ds = dcmread(path)
        ref = ds.SourceImageSequence[0].ReferencedSOPInstanceUID
        s = src[ref]
        assert ds.SOPInstanceUID == derived_sop_uid(ref, version)
        assert ds.SeriesInstanceUID == derived_series_uid(src_series, version) != src_series
        assert ds.StudyInstanceUID == s.StudyInstanceUID and ds.PatientID == s.PatientID
        assert list(ds.ImageType)[:2] == ["DERIVED", "SECONDARY"]
        for kw in GEOMETRY:
            assert ds[kw].value == s[kw].value, kw
        assert (ds.Rows, ds.Columns) == (s.Rows, s.Columns)
        stored = ds.pixel_array
        lo, hi = (0, (1 << int(ds.BitsStored)) - 1)
        if int(ds.PixelRepresentation):
            lo, hi = -(1 << (int(ds.BitsStored) - 1)), (1 << (int(ds.BitsStored) - 1)) - 1
        assert lo <= stored.min() and stored.max() <= hi
        hu = stored * float(ds.RescaleSlope) + float(ds.RescaleIntercept)
        assert -1100 < hu.min() and hu.max() < 4000
        assert not np.array_equal(stored, s.pixel_array)  # it was processed, not passed through


def test_storescu_to_node_to_dcmtk_pacs(tmp_path, ld_series, tiny_model):
    version = read_metadata(tiny_model).version
    with StoreSCP(tmp_path / "pacs") as pacs:
        node = NodeProcess(tmp_path, tiny_model, [{"ae_title": pacs.ae_title, "port": pacs.port}]).start()
        try:
            result = storescu(ld_series, node.port, "DENOISE")
            assert result.returncode == 0, result.stderr
            series_uid = str(dcmread(ld_series[0]).SeriesInstanceUID)
            assert node.wait_state(series_uid, SeriesState.SENT, timeout=300), node.log()[-4000:]
            received = pacs.wait_for_files(SLICES, timeout=30)
        finally:
            assert node.stop() == 0
    _check_derived(received, ld_series, version)
    require("dciodvfy")
    for path in received:
        errors, _ = dciodvfy(path)
        assert errors == [], (path, errors)
    log = node.log()
    assert "state=COMPLETE" in log and "state=DERIVED" in log and "state=SENT" in log


def test_orthanc_routes_to_node_and_receives_derived(tmp_path, ld_series, tiny_model, orthanc_factory):
    version = read_metadata(tiny_model).version
    orthanc = orthanc_factory()
    node = NodeProcess(tmp_path, tiny_model, [{"ae_title": orthanc.aet, "port": orthanc.dicom_port}]).start()
    try:
        orthanc.add_modality("node", "DENOISE", node.port)
        ids = [orthanc.upload(p)["ID"] for p in ld_series]
        orthanc.store_to_modality("node", ids)  # Orthanc's own C-STORE SCU → the node
        src_uid = str(dcmread(ld_series[0]).SeriesInstanceUID)
        target = derived_series_uid(src_uid, version)
        series = orthanc.wait_for_series(target, SLICES, timeout=300)
        instances = orthanc.series_instances(series["ID"])
        files = []
        for i, inst in enumerate(instances):
            path = tmp_path / f"orthanc-{i}.dcm"
            path.write_bytes(orthanc.instance_file(inst["ID"]))
            files.append(path)
    finally:
        node.stop()
    _check_derived(files, ld_series, version)
    study = {s["ParentStudy"] for s in orthanc.series()}
    assert len(study) == 1  # the derived series sits in the source study


def test_pacs_down_fails_after_max_attempts_then_retry_delivers(tmp_path, tiny_model):
    from tests.peers import free_port, write_ct_series

    port = free_port()
    pacs = StoreSCP(tmp_path / "pacs", port=port)  # not started: the PACS is down
    node = NodeProcess(tmp_path, tiny_model, [{"ae_title": "PACS", "port": port}]).start()
    try:
        files = write_ct_series(tmp_path / "in", 3, rows=64, columns=64)
        assert storescu(files, node.port, "DENOISE").returncode == 0
        uid = str(dcmread(files[0]).SeriesInstanceUID)
        assert node.wait_state(uid, SeriesState.FAILED, timeout=120), node.log()[-3000:]
        status = subprocess.run(
            [sys.executable, "-m", "dicom_denoise_node", "status", "-c", str(node.config)],
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert "FAILED" in status.stdout and "3" in status.stdout
        pacs.start()
        retry = subprocess.run(
            [sys.executable, "-m", "dicom_denoise_node", "retry", uid, "-c", str(node.config)],
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert retry.returncode == 0 and "DERIVED" in retry.stdout
        assert node.wait_state(uid, SeriesState.SENT, timeout=60), node.log()[-3000:]
        assert len(pacs.wait_for_files(3, timeout=30)) == 3
    finally:
        node.stop()
        pacs.stop()
    assert "send attempt 3/3 failed" in node.log()


def test_restart_resumes_unfinished_series(tmp_path, tiny_model):
    from tests.peers import free_port, write_ct_series

    port = free_port()
    pacs = StoreSCP(tmp_path / "pacs", port=port)
    node = NodeProcess(tmp_path, tiny_model, [{"ae_title": "PACS", "port": port}], extra="").start()
    try:
        files = write_ct_series(tmp_path / "in", 4, rows=64, columns=64)
        assert storescu(files, node.port, "DENOISE").returncode == 0
        uid = str(dcmread(files[0]).SeriesInstanceUID)
        assert node.wait_state(uid, SeriesState.DERIVED, timeout=60)
        node.stop()  # stopped while the PACS is down and the series is unsent
        pacs.start()
        node.start()
        assert node.wait_state(uid, SeriesState.SENT, timeout=60), node.log()[-3000:]
        assert len(pacs.wait_for_files(4, timeout=30)) == 4
    finally:
        node.stop()
        pacs.stop()


def test_serve_refuses_to_start_without_a_model(tmp_path):
    node = NodeProcess(tmp_path, tmp_path / "missing.json", [])
    node.start(wait=False)
    assert node.proc is not None
    assert node.proc.wait(timeout=60) == 3
    assert "does not exist" in node.log()
    assert wait_until(lambda: "cannot start" in node.log(), timeout=5)


def test_serve_with_bad_config_names_key_and_file(tmp_path):
    cfg = tmp_path / "bad.toml"
    cfg.write_text("[node]\nae_titel = 'X'\n")
    result = subprocess.run(
        [sys.executable, "-m", "dicom_denoise_node", "serve", "--config", str(cfg)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 2
    assert "node.ae_titel" in result.stderr and str(cfg) in result.stderr.replace("\n", "")
