"""Purging is crash-safe: a crash between deleting files and rows never brings a series back."""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path

import pytest
from pydicom import dcmread

from dicom_denoise_node.config import NodeSettings
from dicom_denoise_node.receive.scp import start_scp
from dicom_denoise_node.store import retention
from dicom_denoise_node.store.catalog import Catalog, DerivedRecord, InstanceMeta, SeriesState, utcnow
from dicom_denoise_node.store.spool import Spool, write_atomic
from dicom_denoise_node.store.spool_check import check_spool
from tests.peers import LOOPBACK, free_port, storescu, write_ct_series


class Crash(BaseException):
    """Stands for the process dying mid-purge (kill -9, power cut)."""


def _sent_series(tmp_path: Path) -> tuple[Spool, Catalog, str, list[Path]]:
    spool = Spool(tmp_path / "data")
    catalog = Catalog(f"sqlite:///{tmp_path / 'data' / 'catalog.sqlite'}")
    files = []
    for source in write_ct_series(tmp_path / "in", 3, rows=16, columns=16):
        ds = dcmread(source)
        path = spool.incoming_path(str(ds.StudyInstanceUID), str(ds.SeriesInstanceUID), str(ds.SOPInstanceUID))
        write_atomic(path, source.read_bytes())
        files.append(path)
        catalog.intake.record_instance(
            InstanceMeta("P", str(ds.StudyInstanceUID), str(ds.SeriesInstanceUID), str(ds.SOPInstanceUID),
                         str(ds.SOPClassUID), "1.2.840.10008.1.2.1", "CT", "LD", None, str(path), 1)
        )  # fmt: skip
    uid = str(dcmread(files[0]).SeriesInstanceUID)
    catalog.completion.complete_quiet_series(0, now=utcnow() + timedelta(seconds=1))
    claim = catalog.queue.claim_for_processing()
    assert claim is not None
    derived = spool.derived_path("9.9", "9.9.1")
    write_atomic(derived, b"derived")
    files.append(derived)
    catalog.queue.finish_processing(claim, "9.9", "1", [DerivedRecord("9.9.1", claim.series_uid + ".1", str(derived))])
    send = catalog.deliveries.claim_for_sending(0.0, now=utcnow() + timedelta(seconds=2))
    assert send is not None and catalog.deliveries.send_succeeded(send)
    return spool, catalog, uid, files


def test_a_crash_after_the_first_file_of_a_purge_never_brings_the_series_back(tmp_path, monkeypatch):
    spool, catalog, uid, files = _sent_series(tmp_path)
    real_unlink = Path.unlink
    deleted: list[Path] = []

    def unlink_then_die(self: Path, missing_ok: bool = False) -> None:
        if deleted:
            raise Crash
        real_unlink(self, missing_ok=missing_ok)
        deleted.append(self)

    monkeypatch.setattr(Path, "unlink", unlink_then_die)
    with pytest.raises(Crash):
        retention.purge_series(spool, catalog, uid)
    monkeypatch.undo()
    assert len(deleted) == 1 and sum(p.exists() for p in files) == len(files) - 1

    report = check_spool(spool, catalog)  # what the next start does
    assert report.finished_purges == [uid] and report.indexed_orphans == [] and report.affected_series == []
    assert catalog.views.series_state(uid) is SeriesState.SENT  # not RECEIVING again: nothing is denoised or sent again
    assert catalog.views.pending_series() == 0
    assert not any(p.exists() for p in files)
    assert catalog.housekeeping.spool_rows() == ({}, {})
    assert check_spool(spool, catalog).clean
    catalog.close()


@pytest.fixture
def sent_series_and_scp(tmp_path):
    """A SENT series in a spool, and the node's SCP on that spool and catalog (dcmtk storescu sends to it)."""
    spool, catalog, uid, files = _sent_series(tmp_path)
    settings = NodeSettings(ae_title="DENOISE", host=LOOPBACK, port=free_port(), data_dir=tmp_path / "data")
    server = start_scp(settings, spool, catalog)
    try:
        yield spool, catalog, uid, settings.port, sorted((tmp_path / "in").glob("*.dcm"))
    finally:
        server.shutdown()
        catalog.close()


def _store(port: int, path: Path) -> str:
    result = storescu([path], port, "DENOISE", extra_args=["-v"])
    return "Success" if result.returncode == 0 else result.stdout + result.stderr


def test_a_resend_during_a_purge_is_refused_and_one_after_it_is_kept(sent_series_and_scp, monkeypatch):
    """Retention tombstones a SENT series, then deletes its files and rows. An instance sent again in between must
    not get Success (the purge would delete it next): Out of Resources, nothing kept. Once the purge is over, the
    same instance is accepted, kept, and its series lives again (no tombstone, so start-up does not purge it)."""
    spool, catalog, uid, port, sources = sent_series_and_scp
    answers: list[str] = []
    real_delete = retention.delete_files

    def resend_then_delete(spool_: Spool, paths: list[str]) -> int:
        answers.append(_store(port, sources[0]))  # arrives after the tombstone, before the files go
        return real_delete(spool_, paths)

    monkeypatch.setattr(retention, "delete_files", resend_then_delete)
    assert retention.purge_sent(spool, catalog, 0.0) == [uid]
    assert len(answers) == 1 and "OutOfResources" in answers[0], answers
    assert not list(spool.incoming.rglob("*.dcm"))  # the purge removed everything, the refused resend left nothing
    monkeypatch.setattr(retention, "delete_files", real_delete)

    assert _store(port, sources[0]) == "Success"  # after the purge: a new life for the series
    ds = dcmread(sources[0])
    kept = spool.incoming_path(str(ds.StudyInstanceUID), uid, str(ds.SOPInstanceUID))
    assert kept.exists() and catalog.views.series_state(uid) is SeriesState.RECEIVING
    assert [i.path for i in catalog.queue.instances(catalog.housekeeping.series_id(uid))] == [str(kept)]
    assert check_spool(spool, catalog).finished_purges == []  # not taken for an interrupted purge at start-up
    assert kept.exists()


def test_a_series_that_received_an_instance_before_its_tombstone_is_not_purged(sent_series_and_scp):
    spool, catalog, uid, port, sources = sent_series_and_scp
    chosen = catalog.housekeeping.finished_before(
        utcnow() + timedelta(seconds=5)
    )  # retention picks the SENT series ...
    assert [u for _, u in chosen] == [uid]
    assert _store(port, sources[1]) == "Success"  # ... an instance arrives before its tombstone ...
    series_id = chosen[0][0]
    assert retention.purge(spool, catalog, series_id, (SeriesState.SENT, SeriesState.SKIPPED)) is None  # ... kept
    assert catalog.views.series_state(uid) is SeriesState.RECEIVING
    kept = sorted(Path(i.path) for i in catalog.queue.instances(series_id))
    assert len(kept) == 3 and kept == sorted(spool.incoming.rglob("*.dcm"))  # every file, every row


def test_the_startup_check_leaves_derived_files_alone_while_another_node_processes(tmp_path):
    """A shared spool: a derived file without a row may be another worker's, written right now; the start-up check
    deletes such files only when no other node holds a live processing claim."""
    spool = Spool(tmp_path / "data")
    url = f"sqlite:///{tmp_path / 'data' / 'catalog.sqlite'}"
    other, starting = Catalog(url, node_id="host-b:/data"), Catalog(url, node_id="host-a:/data")
    other.intake.record_instance(InstanceMeta("P", "1.2", "1.2.3", "1.2.3.1", "1.2.840.10008.5.1.4.1.1.2",
                                       "1.2.840.10008.1.2.1", "CT", "LD", 1, str(tmp_path / "x.dcm"), 1))  # fmt: skip
    (tmp_path / "x.dcm").write_bytes(b"x")
    other.completion.complete_quiet_series(0, now=utcnow() + timedelta(seconds=1))
    claim = other.queue.claim_for_processing(lease_s=60)
    assert claim is not None
    in_progress = spool.derived_path("9.9", "9.9.1")
    write_atomic(in_progress, b"derived, being written by host-b")
    assert check_spool(spool, starting).kept_orphans == [str(in_progress)]
    assert in_progress.exists()
    assert other.queue.requeue(claim)  # host-b is done with it (or its lease ran out): now the file is an orphan
    assert check_spool(spool, starting).removed_orphans == [str(in_progress)]
    assert not in_progress.exists()
    other.close()
    starting.close()
