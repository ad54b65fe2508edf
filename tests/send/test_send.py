"""The C-STORE SCU against dcmtk storescp: every instance arrives, with Nagle off while the association's reactor is
held (pynetdicom_patches.py), and no response is lost even when the reactor is preempted at its checkpoint."""

from __future__ import annotations

import logging
import socket
import threading
import time

import pytest
from pydicom import dcmread
from pynetdicom import AE

from dicom_denoise_node import pynetdicom_patches as requestor
from dicom_denoise_node.config import Destination
from dicom_denoise_node.send import scu as send
from tests import peers
from tests.peers import write_ct_series
from tests.send.derived import derived_series, node_sends, send_attempts

storescp_factory = peers.storescp_factory
dcmtk_pacs = peers.dcmtk_pacs


def _nodelay(assoc) -> int:
    return assoc.dul.socket.socket.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY)


class _PreemptedCheckpoint(threading.Event):
    """A reactor that loses the CPU just after passing its checkpoint (still marked paused): the window of
    pynetdicom's pause race, widened from nanoseconds to milliseconds."""

    def wait(self, timeout: float | None = None) -> bool:
        was_set = self.is_set()
        signalled = super().wait(timeout)
        if was_set:
            time.sleep(0.008)
        return signalled


def _preempting_ae(record: list[tuple[int, bool]]) -> type[AE]:
    """An AE whose associations have a preempted reactor and a sender that is slow to collect each response."""

    class PreemptingAE(AE):
        def associate(self, *args, **kwargs):
            assoc = super().associate(*args, **kwargs)
            checkpoint = _PreemptedCheckpoint()
            checkpoint.set()
            assoc._reactor_checkpoint = checkpoint
            send_msg = assoc.dimse.send_msg
            store = assoc.send_c_store

            def slow_send(*a, **k):
                send_msg(*a, **k)
                time.sleep(0.015)  # the response is back and queued before send_c_store asks for it

            def spy_store(ds):
                record.append((_nodelay(assoc), isinstance(assoc._reactor_checkpoint, requestor.ReactorGate)))
                return store(ds)

            assoc.dimse.send_msg = slow_send
            assoc.send_c_store = spy_store
            return assoc

    return PreemptingAE


def test_send_files_delivers_every_instance_without_nagle_while_the_reactor_is_held(tmp_path, dcmtk_pacs, monkeypatch):
    files = write_ct_series(tmp_path / "series", 4, rows=64, columns=64)
    seen: list[tuple[int, bool]] = []
    after: list[int] = []

    class SpyAE(AE):
        def associate(self, *args, **kwargs):
            assoc = super().associate(*args, **kwargs)
            store = assoc.send_c_store
            assoc.send_c_store = lambda ds: (
                seen.append((_nodelay(assoc), isinstance(assoc._reactor_checkpoint, requestor.ReactorGate))),
                store(ds),
            )[1]
            release = assoc.release
            assoc.release = lambda: (after.append(isinstance(assoc._reactor_checkpoint, threading.Event)), release())[1]
            return assoc

    monkeypatch.setattr(send, "AE", SpyAE)
    dest = Destination(name="pacs", ae_title="PACS", host="127.0.0.1", port=dcmtk_pacs.port)
    assert send.send_files(files, dest, "DENOISE") == 4
    assert seen == [(1, True)] * 4  # Nagle off, reactor held, for every C-STORE
    assert after == [True]  # pynetdicom's own checkpoint is back before release
    received = {str(dcmread(p).SOPInstanceUID) for p in dcmtk_pacs.wait_for_files(4, timeout=30)}
    assert received == {str(dcmread(p).SOPInstanceUID) for p in files}


def test_no_response_is_lost_when_the_reactor_is_preempted_at_its_checkpoint(
    tmp_path, storescp_factory, monkeypatch, caplog
):
    """With pynetdicom's own pause this set-up loses responses (work/race probe: 4 of 5 rounds of 20 failed with
    "Received unexpected C-STORE service message"); with the reactor held, none may be lost."""
    fast_pacs = storescp_factory(ae_title="PACS", extra_args=["--ignore"])  # answers at once, stores nothing
    files = write_ct_series(tmp_path / "series", 10, rows=64, columns=64)
    record: list[tuple[int, bool]] = []
    monkeypatch.setattr(send, "AE", _preempting_ae(record))
    dest = Destination(name="pacs", ae_title="PACS", host="127.0.0.1", port=fast_pacs.port)
    caplog.set_level(logging.WARNING, logger="pynetdicom")
    for _ in range(3):
        assert send.send_files(files, dest, "DENOISE", timeout_s=5) == 10
    assert record == [(1, True)] * 30
    assert not [r for r in caplog.records if "unexpected" in r.getMessage()]


def test_reactor_not_held_keeps_nagle_on(tmp_path, dcmtk_pacs, monkeypatch):
    """A pynetdicom without the private checkpoint (or a reactor that never pauses) falls back to Nagle."""
    files = write_ct_series(tmp_path / "series", 2, rows=64, columns=64)
    seen: list[int] = []

    class NoCheckpointAE(AE):
        def associate(self, *args, **kwargs):
            assoc = super().associate(*args, **kwargs)
            store = assoc.send_c_store
            assoc.send_c_store = lambda ds: (seen.append(_nodelay(assoc)), store(ds))[1]
            return assoc

    monkeypatch.setattr(send, "AE", NoCheckpointAE)
    monkeypatch.setattr(
        requestor.ReactorGate, "wait_until_blocked", lambda self, timeout: False
    )  # as if the reactor never reached its checkpoint
    dest = Destination(name="pacs", ae_title="PACS", host="127.0.0.1", port=dcmtk_pacs.port)
    assert send.send_files(files, dest, "DENOISE") == 2
    assert seen == [0, 0]


def test_gate_opens_when_the_association_is_killed():
    """kill() calls set() before it raises its flag: the gate must still let the reactor out."""

    class FakeAssoc:
        _kill = False

    assoc = FakeAssoc()
    gate = requestor.ReactorGate(assoc)  # type: ignore[arg-type]
    out = threading.Event()
    reactor = threading.Thread(target=lambda: (gate.wait(), out.set()), daemon=True)
    reactor.start()
    assert gate.wait_until_blocked(2.0)
    gate.set()  # the send_* methods' unpause: ignored
    assert not out.wait(0.2)
    assoc._kill = True
    assert out.wait(2.0)


def test_a_peer_abort_while_the_reactor_is_held_fails_the_send_and_ends_the_association(tmp_path, storescp_factory):
    """storescp aborts after the first C-STORE request: SendError (the DIMSE queue gets pynetdicom's abort marker),
    and the association's threads end although its reactor was held."""
    aborting = storescp_factory(ae_title="PACS", extra_args=["--abort-after"])
    files = write_ct_series(tmp_path / "series", 3, rows=64, columns=64)
    before = {t.ident for t in threading.enumerate()}
    dest = Destination(name="pacs", ae_title="PACS", host="127.0.0.1", port=aborting.port)
    with pytest.raises(send.SendError, match="no C-STORE response"):
        send.send_files(files, dest, "DENOISE", timeout_s=20)
    assert peers.wait_until(lambda: not ({t.ident for t in threading.enumerate()} - before), timeout=10)


def test_pynetdicom_is_a_version_the_patches_were_checked_on_and_has_what_they_touch():
    """Fails loudly when the installed pynetdicom leaves the checked range or drops a patched private attribute:
    re-read dicom_denoise_node/pynetdicom_patches.py against the new release, then widen CHECKED_VERSIONS."""
    import inspect
    from importlib.metadata import version

    from pynetdicom.association import Association
    from pynetdicom.dul import DULServiceProvider

    installed = version("pynetdicom")
    assert installed in requestor.CHECKED_VERSIONS, (installed, str(requestor.CHECKED_VERSIONS))
    assert requestor.check_version()
    init = inspect.getsource(Association.__init__)
    assert "_reactor_checkpoint" in init and "_is_paused" in init and "_kill" in init
    assert "_run_loop_delay" in inspect.getsource(DULServiceProvider)
    from pynetdicom import AE
    from pynetdicom.transport import ThreadedAssociationServer

    assert "_servers" in inspect.getsource(AE.__init__)
    assert "wrap_socket" in inspect.getsource(ThreadedAssociationServer.get_request)  # what the deferred one moves
    assert hasattr(ThreadedAssociationServer, "process_request_thread")
    from pynetdicom import dimse_messages

    decode = inspect.getsource(dimse_messages.DIMSEMessage.decode_msg)  # where the chunked receive opens its file
    assert "NamedTemporaryFile(" in decode and "STORE_RECV_CHUNKED_DATASET" in decode
    assert isinstance(DULServiceProvider.assoc, property)  # how the file finds its AE (the DUL thread's assoc)


def test_a_pacs_for_images_only_gets_the_images_and_another_pacs_still_gets_everything(
    tmp_path, tiny_model, storescp_factory
):
    """The quality report's SR is refused by one PACS (no presentation context): the images reach it, the refusal
    is logged once rather than retried, and the other destination gets the images and the SR."""
    from pydicom.uid import CTImageStorage

    ct_only = storescp_factory("CTONLY", accept_only=[CTImageStorage])
    full = storescp_factory("FULL")
    files = write_ct_series(tmp_path / "in", 3, rows=32, columns=32)
    destinations = [{"ae_title": "CTONLY", "port": ct_only.port, "name": "ct"}, {"ae_title": "FULL", "port": full.port}]
    log = node_sends(tmp_path, tiny_model, destinations, files, report=True)
    assert len(ct_only.wait_for_files(3, timeout=30)) == 3
    assert len(full.wait_for_files(4, timeout=30)) == 4  # three images and the SR
    assert {p.name.split(".")[0] for p in ct_only.files()} == {"CT"}
    assert log.count("does not accept the quality report (SR)") == 1


def test_any_send_failure_counts_an_attempt_and_the_other_destinations_are_served(tmp_path, monkeypatch):
    """Not only SendError: an unexpected exception from one destination is an attempt with its reason, the other
    destination still gets the series, and the series ends FAILED after max_attempts instead of looping."""
    from dicom_denoise_node.config import Settings
    from dicom_denoise_node.send import deliver
    from dicom_denoise_node.store.catalog import SeriesState

    catalog = derived_series(tmp_path, 1)
    settings = Settings(
        destinations=[
            {"ae_title": "BROKEN", "host": "127.0.0.1", "port": 1, "name": "broken"},
            {"ae_title": "GOOD", "host": "127.0.0.1", "port": 2, "name": "good"},
        ],
        send={"max_attempts": 2, "backoff_s": 0.001, "backoff_max_s": 0.001},
    )
    sent: list[str] = []

    def fake_send(files, dest, calling_aet, timeout_s, on_stored=None):
        if dest.key == "broken":
            raise ValueError("No presentation context for 'Comprehensive SR Storage' has been accepted")
        sent.append(dest.key)
        return len(files)

    monkeypatch.setattr(deliver, "send_files", fake_send)
    send_attempts(catalog, settings, 2)
    assert sent == ["good"]  # delivered once, skipped on the retry
    row = catalog.views.series_overview()[0]
    assert row["state"] == SeriesState.FAILED and row["attempts"] == 2
    assert "ValueError" in str(row["last_error"]) and "presentation context" in str(row["last_error"])
    catalog.close()


def test_a_send_that_fails_midway_resumes_with_what_the_pacs_has_not_confirmed(tmp_path, monkeypatch):
    """Delivery is recorded per instance: the retry after a failure midway sends only the unconfirmed instances."""
    from dicom_denoise_node.config import Settings
    from dicom_denoise_node.send import deliver
    from dicom_denoise_node.store.catalog import SeriesState

    catalog = derived_series(tmp_path, 5)
    settings = Settings(
        destinations=[{"ae_title": "PACS", "host": "127.0.0.1", "port": 1}],
        send={"max_attempts": 3, "backoff_s": 0.001, "backoff_max_s": 0.001},
    )
    asked: list[list[str]] = []

    def flaky_send(files, dest, calling_aet, timeout_s, on_stored=None):
        asked.append([f.name for f in files])
        for f in files[: 3 if len(asked) == 1 else len(files)]:
            on_stored(f"9.9.{f.stem[1:]}")
        if len(asked) == 1:
            raise deliver.SendError("association aborted after 3 responses")
        return len(files)

    monkeypatch.setattr(deliver, "send_files", flaky_send)
    send_attempts(catalog, settings, 2)
    assert asked == [["d1.dcm", "d2.dcm", "d3.dcm", "d4.dcm", "d5.dcm"], ["d4.dcm", "d5.dcm"]]
    assert catalog.views.series_state("1.2.3") is SeriesState.SENT
    catalog.close()
