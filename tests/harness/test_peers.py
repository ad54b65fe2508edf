"""Smoke tests for tests/peers.py, so the real-peer helpers cannot rot silently."""

import subprocess
from collections.abc import Callable
from pathlib import Path

import pytest
from pydicom import dcmread
from pydicom.uid import JPEG2000Lossless, JPEGLosslessSV1, JPEGLSLossless, RLELossless

from tests import peers
from tests.peers import (
    Orthanc,
    StoreSCP,
    dciodvfy,
    echoscu,
    pid_alive,
    require,
    sop_instance_uid,
    storescu,
    wait_until,
    write_ct_series,
)

pytestmark = pytest.mark.timeout(120)

# Fixtures are looked up by name in the module namespace.
dcmtk_pacs = peers.dcmtk_pacs
storescp_factory = peers.storescp_factory
orthanc_factory = peers.orthanc_factory


@pytest.fixture
def ct_files(tmp_path: Path) -> list[Path]:
    return write_ct_series(tmp_path / "ct", 3)


def test_wait_until_is_bounded() -> None:
    assert wait_until(lambda: True, timeout=0)
    assert not wait_until(lambda: False, timeout=0.05, interval=0.01)


def test_generated_files_are_valid(ct_files: list[Path]) -> None:
    errors, _ = dciodvfy(ct_files[0])
    assert errors == []


def test_dciodvfy_reports_errors(ct_files: list[Path], tmp_path: Path) -> None:
    ds = dcmread(ct_files[0])
    del ds.Modality
    bad = tmp_path / "bad.dcm"
    ds.save_as(bad)
    errors, warnings = dciodvfy(bad)
    assert any("Modality" in line for line in errors)
    assert any("Modality" in line for line in warnings)


def test_echoscu_against_storescp(dcmtk_pacs: StoreSCP) -> None:
    result = echoscu(dcmtk_pacs.port, dcmtk_pacs.ae_title)
    assert result.returncode == 0, result.stdout + result.stderr


def test_storescu_directory_to_storescp(dcmtk_pacs: StoreSCP, ct_files: list[Path]) -> None:
    result = storescu(ct_files[0].parent, dcmtk_pacs.port, dcmtk_pacs.ae_title)
    assert result.returncode == 0, result.stdout + result.stderr
    assert len(dcmtk_pacs.files()) == 3
    assert dcmtk_pacs.sop_instance_uids() == {sop_instance_uid(p) for p in ct_files}


def test_storescu_sends_compressed_files_as_they_are(dcmtk_pacs: StoreSCP, tmp_path: Path) -> None:
    src = write_ct_series(tmp_path / "plain", 4, rows=64, columns=64)
    out = tmp_path / "compressed"
    out.mkdir()
    for tool, path in zip(("dcmcjpeg", "dcmcjpls", "dcmcrle"), src, strict=False):
        subprocess.run([require(tool), str(path), str(out / path.name)], check=True, timeout=30)
    ds = dcmread(src[3])
    ds.compress(JPEG2000Lossless)
    ds.save_as(out / src[3].name)
    expected = {JPEGLosslessSV1, JPEGLSLossless, RLELossless, JPEG2000Lossless}
    assert {dcmread(p).file_meta.TransferSyntaxUID for p in out.iterdir()} == expected

    result = storescu(out, dcmtk_pacs.port, dcmtk_pacs.ae_title)
    assert result.returncode == 0, result.stdout + result.stderr
    assert {dcmread(p).file_meta.TransferSyntaxUID for p in dcmtk_pacs.files()} == expected


def test_storescp_stop_start_same_port(dcmtk_pacs: StoreSCP, ct_files: list[Path]) -> None:
    port, first_pid = dcmtk_pacs.port, dcmtk_pacs.pid
    assert first_pid is not None
    dcmtk_pacs.stop()
    assert not dcmtk_pacs.running and not pid_alive(first_pid)
    refused = storescu(ct_files[:1], port, "PACS", timeout=5)
    assert refused.returncode != 0

    dcmtk_pacs.start()
    assert dcmtk_pacs.port == port and dcmtk_pacs.pid != first_pid
    result = storescu(ct_files, port, "PACS")
    assert result.returncode == 0, result.stdout + result.stderr
    assert len(dcmtk_pacs.files()) == 3


def test_orthanc_round_trip_and_no_leftover_processes(
    request: pytest.FixtureRequest, ct_files: list[Path], tmp_path: Path
) -> None:
    pids: list[int] = []
    # Registered before the fixtures are created, so it runs after their teardown.
    request.addfinalizer(lambda: _assert_dead(pids))
    make_scp: Callable[..., StoreSCP] = request.getfixturevalue("storescp_factory")
    make_orthanc: Callable[..., Orthanc] = request.getfixturevalue("orthanc_factory")
    pacs = make_scp("PACS")
    orthanc = make_orthanc({"pacs": ["PACS", "127.0.0.1", pacs.port]})
    pids += [p for p in (pacs.pid, orthanc.pid) if p is not None]
    assert len(pids) == 2 and all(pid_alive(p) for p in pids)

    uploaded = [orthanc.upload(p) for p in ct_files]
    assert {u["Status"] for u in uploaded} == {"Success"}
    series_uid = dcmread(ct_files[0]).SeriesInstanceUID
    series = orthanc.find_series_by_uid(series_uid)
    assert series is not None and series in orthanc.series()
    instances = orthanc.series_instances(series["ID"])
    sent = {sop_instance_uid(p) for p in ct_files}
    assert {i["MainDicomTags"]["SOPInstanceUID"] for i in instances} == sent
    assert orthanc.instance_file(instances[0]["ID"])[128:132] == b"DICM"

    answer = orthanc.store_to_modality("pacs", [series["ID"]])
    assert answer["InstancesCount"] == 3 and answer["FailedInstancesCount"] == 0
    assert pacs.sop_instance_uids() == sent

    # A modality added at runtime, and C-STORE into Orthanc's own DICOM port.
    assert not orthanc.echo("late")
    orthanc.add_modality("late", "PACS", pacs.port)
    assert orthanc.modalities()["late"]["Port"] == pacs.port
    assert orthanc.echo("late")
    other = write_ct_series(tmp_path / "other", 2)
    result = storescu(other, orthanc.dicom_port, orthanc.aet)
    assert result.returncode == 0, result.stdout + result.stderr
    assert len(orthanc.wait_for_series(dcmread(other[0]).SeriesInstanceUID, 2, timeout=30)["Instances"]) == 2


def _assert_dead(pids: list[int]) -> None:
    assert pids, "no process was recorded"
    assert not [p for p in pids if pid_alive(p)], "peer processes survived teardown"


def test_a_missing_peer_skips_locally_and_fails_under_ci(monkeypatch):
    from tests import peers as fixtures

    def outcome() -> BaseException | None:
        try:
            fixtures.require("no-such-dicom-peer-xyz")
        except BaseException as exc:  # noqa: BLE001  (skip and fail are BaseExceptions: caught to be compared)
            return exc
        return None

    monkeypatch.delenv("CI", raising=False)
    assert isinstance(outcome(), pytest.skip.Exception)
    monkeypatch.setenv("CI", "true")
    failed = outcome()
    assert isinstance(failed, pytest.fail.Exception) and "CI=true" in str(failed)
