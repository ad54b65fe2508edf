"""STOW-RS destinations against a real Orthanc with its DICOMweb plugin on loopback: every instance's status is read
from the store-instances response, and only what the server confirmed reaches the per-instance ledger."""

from __future__ import annotations

import http.server
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
from pydicom import Dataset, dcmread

from dicom_denoise_node.config import Destination, Settings
from dicom_denoise_node.send import stow
from dicom_denoise_node.send.scu import SendError
from dicom_denoise_node.store.catalog import SeriesState
from tests import peers
from tests.peers import LOOPBACK, free_port, write_ct_series
from tests.send.derived import derived_series, node_sends, send_attempts

orthanc_factory = peers.orthanc_factory
storescp_factory = peers.storescp_factory

SEND = {"max_attempts": 3, "backoff_s": 0.001, "backoff_max_s": 0.001}


def _web(orthanc: peers.Orthanc, **keys: object) -> dict[str, object]:
    return {"kind": "stow-rs", "name": "web", "url": orthanc.dicomweb_url, **keys}


def _uids(files: list[Path]) -> list[str]:
    return [str(dcmread(f, stop_before_pixels=True).SOPInstanceUID) for f in files]


def _stored_uids(orthanc: peers.Orthanc) -> set[str]:
    """SOP Instance UIDs Orthanc holds, read over its REST API."""
    return {orthanc.get(f"/instances/{i}")["MainDicomTags"]["SOPInstanceUID"] for i in orthanc.get("/instances")}


@pytest.fixture
def orthanc_web(orthanc_factory) -> peers.Orthanc:
    return orthanc_factory(dicomweb=True)


def test_a_derived_series_sent_by_stow_rs_arrives_and_every_instance_is_in_the_ledger(tmp_path, orthanc_web):
    files = write_ct_series(tmp_path / "derived", 5, rows=32, columns=32)
    catalog = derived_series(tmp_path, files=files)
    settings = Settings(destinations=[_web(orthanc_web)], send=SEND)
    claim = send_attempts(catalog, settings, 1)
    assert catalog.views.series_state("1.2.3") is SeriesState.SENT
    assert _stored_uids(orthanc_web) == set(_uids(files))
    assert catalog.deliveries.confirmed_instances(claim, "web") == set(_uids(files))
    catalog.close()


def test_instances_go_in_batches(tmp_path, orthanc_web, monkeypatch):
    """A series is not one request: BATCH_SIZE instances per POST, and every batch's confirmations count."""
    files = write_ct_series(tmp_path / "derived", 5, rows=32, columns=32)
    batches: list[int] = []
    store = stow.DICOMwebClient.store_instances

    def counting_store(client, datasets, *args, **kwargs):
        batches.append(len(datasets))
        return store(client, datasets, *args, **kwargs)

    monkeypatch.setattr(stow, "BATCH_SIZE", 2)
    monkeypatch.setattr(stow.DICOMwebClient, "store_instances", counting_store)
    confirmed: list[str] = []
    assert stow.stow_files(files, Destination(**_web(orthanc_web)), 30, confirmed.append) == 5
    assert batches == [2, 2, 1]
    assert confirmed == _uids(files) and _stored_uids(orthanc_web) == set(confirmed)


def test_basic_auth_right_credentials_deliver_wrong_ones_are_a_401_and_nothing_is_recorded(tmp_path, orthanc_factory):
    orthanc = orthanc_factory(dicomweb=True, users={"node": "s3cret"})
    files = write_ct_series(tmp_path / "derived", 2, rows=32, columns=32)
    recorded: list[str] = []
    wrong = Destination(**_web(orthanc, username="node", password="wrong"))
    with pytest.raises(SendError, match="HTTP 401") as err:
        stow.stow_files(files, wrong, 30, recorded.append)
    assert "wrong" not in str(err.value)
    anonymous = Destination(**_web(orthanc))
    with pytest.raises(SendError, match="HTTP 401"):
        stow.stow_files(files, anonymous, 30, recorded.append)
    assert recorded == [] and _stored_uids(orthanc) == set()
    right = Destination(**_web(orthanc, username="node", password="s3cret"))
    assert stow.stow_files(files, right, 30, recorded.append) == 2
    assert recorded == _uids(files) and _stored_uids(orthanc) == set(recorded)


def test_echo_probes_a_stow_rs_destination_with_its_credentials(tmp_path, orthanc_factory):
    """`denoise-node echo` on a DICOMweb destination: one QIDO-RS search, so wrong credentials show before a send."""
    import subprocess
    import sys

    orthanc = orthanc_factory(dicomweb=True, users={"node": "s3cret"})
    config = tmp_path / "n.toml"
    for password, code in (("s3cret", 0), ("wrong", 1)):
        config.write_text(
            f'[node]\ndata_dir = "{tmp_path / "d"}"\n\n[[destinations]]\nkind = "stow-rs"\nname = "web"\n'
            f'url = "{orthanc.dicomweb_url}"\nusername = "node"\npassword = "{password}"\n'
        )
        result = subprocess.run([sys.executable, "-m", "dicom_denoise_node", "echo", "-c", str(config)],
                                capture_output=True, text=True, timeout=120)  # fmt: skip
        assert result.returncode == code, result.stdout + result.stderr
        assert ("credentials accepted" in result.stdout) == (code == 0)
        assert code == 0 or "HTTP 401" in result.stdout
        assert password not in result.stdout + result.stderr


def test_an_instance_the_server_fails_is_reported_and_the_others_are_in_the_ledger(tmp_path, orthanc_web):
    """One instance names another study: Orthanc refuses it (409, FailedSOPSequence, 0x0110) and stores the others;
    the attempt fails naming that instance, and only the others are confirmed, so a retry resends just it."""
    files = write_ct_series(tmp_path / "derived", 4, rows=32, columns=32)
    odd = dcmread(files[2])
    odd.StudyInstanceUID = "1.2.826.0.1.3680043.8.498.1"
    odd.save_as(files[2])
    uids = _uids(files)
    catalog = derived_series(tmp_path, files=files)
    settings = Settings(destinations=[_web(orthanc_web)], send={**SEND, "max_attempts": 1})
    claim = send_attempts(catalog, settings, 1)
    row = catalog.views.series_overview()[0]
    assert row["state"] == SeriesState.FAILED
    assert f"{uids[2]} failed with 0x0110 processing failure" in str(row["last_error"])
    assert "did not store 1 of 4 instances" in str(row["last_error"])
    assert catalog.deliveries.confirmed_instances(claim, "web") == set(uids) - {uids[2]}
    assert _stored_uids(orthanc_web) == set(uids) - {uids[2]}
    catalog.close()


def test_an_instance_the_server_cannot_understand_is_reported_from_a_400_answer(tmp_path, orthanc_web):
    """Orthanc answers 400 when a part lacks a mandatory attribute, listing it as failed (0xC000): the answer's
    body is still read, and the other instance of the request is confirmed."""
    files = write_ct_series(tmp_path / "derived", 2, rows=32, columns=32)
    broken = dcmread(files[1])
    del broken.SeriesInstanceUID
    broken.save_as(files[1])
    confirmed: list[str] = []
    with pytest.raises(SendError, match=r"failed with 0xC000 cannot understand"):
        stow.stow_files(files, Destination(**_web(orthanc_web)), 30, confirmed.append)
    assert confirmed == _uids(files)[:1]


def test_an_instance_missing_from_the_response_is_not_confirmed():
    """A server that answers without naming an instance has not confirmed it (no ledger entry: it is resent)."""
    response = Dataset()
    item = Dataset()
    item.ReferencedSOPInstanceUID = "1.1"
    item.WarningReason = 0xB000
    response.ReferencedSOPSequence = [item]
    response.FailedSOPSequence = []
    dest = Destination(kind="stow-rs", url="http://127.0.0.1:1/dicom-web")
    confirmed, problems = stow._statuses(response, ["1.1", "1.2"], dest)
    assert confirmed == ["1.1"]
    assert problems == ["1.2 has no status in the response"]


def test_a_mixed_rule_sends_to_a_dimse_and_a_stow_rs_destination_and_the_series_ends_sent(
    tmp_path, tiny_model, orthanc_web, storescp_factory
):
    """A running node: the rule routes to a C-STORE SCP and a DICOMweb service (not to a third, dead destination);
    both get every derived instance and the series is SENT."""
    pacs = storescp_factory("PACS")
    files = write_ct_series(tmp_path / "in", 3, rows=32, columns=32)
    stow_block = f'[[destinations]]\nkind = "stow-rs"\nname = "web"\nurl = "{orthanc_web.dicomweb_url}"\n\n'
    rule = '[[rules]]\nname = "ct"\ndestinations = ["pacs", "web"]\n'
    dimse = [
        {"ae_title": "PACS", "port": pacs.port, "name": "pacs"},
        {"ae_title": "X", "port": free_port(), "name": "x"},
    ]
    node_sends(tmp_path, tiny_model, dimse, files, extra=stow_block + rule)
    received = {str(dcmread(p).SOPInstanceUID) for p in pacs.wait_for_files(3, timeout=30)}
    assert len(received) == 3
    assert _stored_uids(orthanc_web) == received  # the same derived instances, by both routes


class _Answering(http.server.BaseHTTPRequestHandler):
    """A loopback HTTP peer that answers every POST with ``status`` (or never, until released)."""

    status = 503
    release: threading.Event | None = None
    posts: list[str] = []

    def do_POST(self) -> None:  # noqa: N802 (http.server's name)
        self.posts.append(self.path)
        self.rfile.read(int(self.headers.get("Content-Length", 0) or 0))
        if self.release is not None:
            self.release.wait(30)
        self.send_response(self.status)
        self.send_header("Content-Length", "0")
        self.end_headers()

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def http_peer() -> Iterator[tuple[http.server.ThreadingHTTPServer, type[_Answering]]]:
    handler = type("Handler", (_Answering,), {"posts": [], "release": None})
    server = http.server.ThreadingHTTPServer((LOOPBACK, 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield server, handler
    finally:
        if handler.release is not None:
            handler.release.set()
        server.shutdown()
        server.server_close()
        thread.join(10)


def _dest_at(server: http.server.ThreadingHTTPServer) -> Destination:
    return Destination(kind="stow-rs", name="web", url=f"http://{LOOPBACK}:{server.server_address[1]}/dicom-web")


def test_a_server_error_is_one_request_and_a_send_error(tmp_path, http_peer):
    """HTTP 503 ends the attempt at once (dicomweb-client's own retries are off: the catalog schedules retries)."""
    server, handler = http_peer
    files = write_ct_series(tmp_path / "derived", 1, rows=32, columns=32)
    with pytest.raises(SendError, match="HTTP 503"):
        stow.stow_files(files, _dest_at(server), 30)
    assert len(handler.posts) == 1 and handler.posts[0].startswith("/dicom-web/studies/")


def test_a_server_that_does_not_answer_is_a_send_error_after_the_timeout(tmp_path, http_peer):
    server, handler = http_peer
    handler.release = threading.Event()
    files = write_ct_series(tmp_path / "derived", 1, rows=32, columns=32)
    with pytest.raises(SendError, match="no STOW-RS answer within 0.5 s"):
        stow.stow_files(files, _dest_at(server), 0.5)


def test_connection_refused_and_a_wrong_url_are_send_errors(tmp_path, orthanc_web):
    files = write_ct_series(tmp_path / "derived", 1, rows=32, columns=32)
    nobody = Destination(kind="stow-rs", url=f"http://{LOOPBACK}:{free_port()}/dicom-web")
    with pytest.raises(SendError, match="cannot reach .*Connection refused"):
        stow.stow_files(files, nobody, 30)
    wrong_root = Destination(kind="stow-rs", url=orthanc_web.url + "/not-dicom-web")
    with pytest.raises(SendError, match=r"HTTP 404 .*service root"):
        stow.stow_files(files, wrong_root, 30)
