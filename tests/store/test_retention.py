"""Purging is crash-safe: a crash between deleting files and rows never brings a series back."""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path

import pytest
from pydicom import dcmread

from dicom_denoise_node.store import retention
from dicom_denoise_node.store.catalog import Catalog, DerivedRecord, InstanceMeta, SeriesState, utcnow
from dicom_denoise_node.store.spool import Spool, write_atomic
from dicom_denoise_node.store.spool_check import check_spool
from tests.peers import write_ct_series


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
        catalog.record_instance(
            InstanceMeta("P", str(ds.StudyInstanceUID), str(ds.SeriesInstanceUID), str(ds.SOPInstanceUID),
                         str(ds.SOPClassUID), "1.2.840.10008.1.2.1", "CT", "LD", None, str(path), 1)
        )  # fmt: skip
    uid = str(dcmread(files[0]).SeriesInstanceUID)
    catalog.complete_quiet_series(0, now=utcnow() + timedelta(seconds=1))
    claim = catalog.claim_for_processing()
    assert claim is not None
    derived = spool.derived_path("9.9", "9.9.1")
    write_atomic(derived, b"derived")
    files.append(derived)
    catalog.finish_processing(claim, "9.9", "1", [DerivedRecord("9.9.1", claim.series_uid + ".1", str(derived))])
    send = catalog.claim_for_sending(0.0, now=utcnow() + timedelta(seconds=2))
    assert send is not None and catalog.send_succeeded(send)
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
    assert catalog.series_state(uid) is SeriesState.SENT  # not RECEIVING again: nothing is denoised or sent again
    assert catalog.pending_series() == 0
    assert not any(p.exists() for p in files)
    assert catalog.spool_rows() == ({}, {})
    assert check_spool(spool, catalog).clean
    catalog.close()
