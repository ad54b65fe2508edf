"""Bad input never crashes the node (docs/conformance.md): every case gets its named answer, the node still
answers C-ECHO, the log says why, and a series that cannot be processed ends FAILED with the reason."""

from __future__ import annotations

from pathlib import Path

import pytest
from pydicom import dcmread
from pydicom.filereader import read_file_meta_info
from pynetdicom import AE, _config

from denoise_harness.node import NodeProcess
from dicom_denoise_node.store.catalog import SeriesState
from tests import peers
from tests.ct_cases import Case, build_cases
from tests.peers import LOOPBACK, echoscu, j2k_noise_slice, wait_until, write_ct_series

pytestmark = pytest.mark.e2e
dcmtk_pacs = peers.dcmtk_pacs


def send_raw(files: list[Path], port: int, called: str = "DENOISE") -> list[int]:
    """C-STORE each file's bytes exactly as they are on disk (broken files stay broken); one status per file."""
    ae = AE(ae_title="BADINPUT")
    pairs = set()
    for path in files:
        meta = read_file_meta_info(path)
        pairs.add((str(meta.MediaStorageSOPClassUID), str(meta.TransferSyntaxUID)))
    for sop_class, syntax in sorted(pairs):  # one context per pair: the SCP accepts one syntax per context
        ae.add_requested_context(sop_class, [syntax])
    chunked = _config.STORE_SEND_CHUNKED_DATASET
    _config.STORE_SEND_CHUNKED_DATASET = True  # send the file's bytes, do not decode and re-encode them
    try:
        assoc = ae.associate(LOOPBACK, port, ae_title=called)
        assert assoc.is_established
        try:
            return [int(assoc.send_c_store(path).Status) for path in files]
        finally:
            assoc.release()
    finally:
        _config.STORE_SEND_CHUNKED_DATASET = chunked


@pytest.fixture(scope="module")
def cases(tmp_path_factory: pytest.TempPathFactory) -> list[Case]:
    return build_cases(tmp_path_factory.mktemp("cases"))


def test_every_bad_input_gets_its_answer_and_the_node_stays_up(tmp_path, tiny_model, dcmtk_pacs, cases):
    node = NodeProcess(tmp_path, tiny_model, [{"ae_title": "PACS", "port": dcmtk_pacs.port}]).start()
    try:
        statuses = {case.name: send_raw(case.files, node.port) for case in cases}
        # Answers at the DIMSE level.
        for case in cases:
            assert statuses[case.name] == [case.status] * len(case.files), case.name
        assert echoscu(node.port, "DENOISE").returncode == 0, "the node must still answer C-ECHO"
        # End states: processed and sent, or FAILED with the reason; never silently dropped.
        cat = node.catalog()
        try:
            expected = {c.series_uid: c for c in cases if c.end_state}

            def settled() -> bool:
                return (
                    all(cat.views.series_state(uid) in (SeriesState.SENT, SeriesState.FAILED) for uid in expected)
                    or not node.proc
                    or node.proc.poll() is not None
                )

            assert wait_until(settled, timeout=300, interval=0.5), cat.views.series_overview()
            assert node.proc is not None and node.proc.poll() is None, node.log()[-3000:]
            rows = {r["series_uid"]: r for r in cat.views.series_overview(200)}
        finally:
            cat.close()
        for uid, case in expected.items():
            row = rows[uid]
            assert row["state"] == case.end_state, (case.name, row)
            if case.end_state == "SENT":
                assert row["derived"] == case.derived, (case.name, row)
            else:
                assert case.reason in (row["last_error"] or ""), (case.name, row)
        # Rejected instances left nothing behind, and the log names each reason.
        log = node.log()
        for case in cases:
            if case.end_state is None:
                assert case.reason in log, case.name
        received = dcmtk_pacs.wait_for_files(sum(c.derived for c in cases if c.end_state == "SENT"), timeout=60)
        assert len(received) == sum(c.derived for c in cases if c.end_state == "SENT")
        assert "skipping" in log and "localizer" in log
    finally:
        node.stop()


def test_no_patient_identifiers_in_logs_at_info_and_above(tmp_path, tiny_model, dcmtk_pacs):
    """PHI hygiene: the node's INFO+ log lines carry UIDs, never the patient's name, ID or birth date."""
    canaries = {"PatientName": "Canary^Phinella", "PatientID": "PHI-CANARY-42", "PatientBirthDate": "19450704"}
    good = write_ct_series(tmp_path / "good", 2)
    bad = write_ct_series(tmp_path / "bad", 1)
    for path in [*good, *bad]:
        ds = dcmread(path)
        for keyword, value in canaries.items():
            setattr(ds, keyword, value)
        if path in bad:
            del ds.PixelData  # a rejection logs too
        ds.save_as(path, enforce_file_format=True)
    node = NodeProcess(tmp_path, tiny_model, [{"ae_title": "PACS", "port": dcmtk_pacs.port}], log_level="INFO")
    node.start()
    try:
        assert send_raw(good, node.port) == [0, 0]
        assert send_raw(bad, node.port) == [0xA900]
        series_uid = str(dcmread(good[0]).SeriesInstanceUID)
        assert node.wait_state(series_uid, SeriesState.SENT, timeout=120)
    finally:
        node.stop()
    log = node.log()
    assert series_uid in log and "rejected" in log
    for value in canaries.values():
        assert value not in log and value.split("^")[0] not in log


def test_a_decoder_that_hangs_or_dies_fails_its_series_and_not_the_node(tmp_path, tiny_model, dcmtk_pacs):
    """Pixels are decoded in a child process (denoise/decode_process.py). A slice that decodes for longer than
    decode_timeout_s (a 3072² JPEG 2000 of noise: ≈ 2 s here, against 0.5 s) has its child killed: the series ends
    FAILED with the reason, the SCP answers throughout, and the next series is decoded by a fresh child and sent."""
    slow = j2k_noise_slice(tmp_path / "slow", 3072)
    node = NodeProcess(
        tmp_path, tiny_model, [{"ae_title": "PACS", "port": dcmtk_pacs.port}], series_extra="decode_timeout_s = 0.5"
    ).start()
    try:
        assert send_raw([slow], node.port) == [0]
        slow_uid = str(dcmread(slow).SeriesInstanceUID)
        assert node.wait_state(slow_uid, SeriesState.FAILED, timeout=120), node.log()[-3000:]
        cat = node.catalog()
        try:
            error = next(r["last_error"] for r in cat.views.series_overview() if r["series_uid"] == slow_uid)
        finally:
            cat.close()
        assert "DecoderFailed" in str(error) and "decode_timeout_s=0.5" in str(error), error
        assert node.proc is not None and node.proc.poll() is None
        assert echoscu(node.port, "DENOISE").returncode == 0
        good = write_ct_series(tmp_path / "good", 2, rows=32, columns=32)
        assert send_raw(good, node.port) == [0, 0]
        assert node.wait_state(str(dcmread(good[0]).SeriesInstanceUID), SeriesState.SENT, timeout=120)
        assert "decoding process" in node.log() and "stopped" in node.log()
    finally:
        node.stop()
