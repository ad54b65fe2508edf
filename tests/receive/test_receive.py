"""① The SCP against real peers (dcmtk and a pynetdicom SCU) over loopback; catalog and spool are real files."""

from __future__ import annotations

import errno
import os
import socket
import subprocess
from pathlib import Path

import pytest
from pydicom import dcmread
from pydicom.uid import (
    CTImageStorage,
    ExplicitVRLittleEndian,
    MRImageStorage,
)
from pynetdicom import AE, _config

from dicom_denoise_node.codecs import decodable_transfer_syntaxes
from dicom_denoise_node.config import NodeSettings
from dicom_denoise_node.receive.scp import StoreStatus, start_scp
from dicom_denoise_node.store.catalog import Catalog, SeriesState
from dicom_denoise_node.store.spool import Spool
from tests.peers import LOOPBACK, echoscu, free_port, require, storescu, write_ct_series


@pytest.fixture
def scp_server(tmp_path):
    """The node's SCP on a loopback port: (settings, spool, catalog, the pynetdicom server)."""
    settings = NodeSettings(
        ae_title="DENOISE",
        host=LOOPBACK,
        port=free_port(),
        data_dir=tmp_path / "data",
        allowed_calling_aets=["SCANNER", "PYSCU"],
    )
    spool = Spool(settings.data_dir)
    catalog = Catalog(f"sqlite:///{settings.data_dir / 'catalog.sqlite'}")
    server = start_scp(settings, spool, catalog)
    yield settings, spool, catalog, server
    server.shutdown()
    catalog.close()


@pytest.fixture
def scp(scp_server):
    return scp_server[:3]


def _send_raw(
    port: int, path: Path, calling: str = "PYSCU", sop_class: str = CTImageStorage, syntax: str = ExplicitVRLittleEndian
) -> int:
    """C-STORE a file's bytes exactly as they are: pynetdicom's chunked mode streams the file, never parses it."""
    _config.STORE_SEND_CHUNKED_DATASET = True
    ae = AE(ae_title=calling)
    ae.add_requested_context(sop_class, syntax)
    assoc = ae.associate(LOOPBACK, port, ae_title="DENOISE")
    assert assoc.is_established
    try:
        status = assoc.send_c_store(path)
        return int(status.Status)
    finally:
        assoc.release()
        _config.STORE_SEND_CHUNKED_DATASET = False


def test_storescu_series_is_durable_and_cataloged_before_success(scp, tmp_path):
    settings, spool, catalog = scp
    files = write_ct_series(tmp_path / "in", 5)
    result = storescu(files, settings.port, "DENOISE")
    assert result.returncode == 0, result.stderr
    series_uid = str(dcmread(files[0]).SeriesInstanceUID)
    # storescu has its Success answers: each instance must already be in the catalog and on disk.
    assert catalog.views.series_state(series_uid) is SeriesState.RECEIVING
    rows = catalog.views.series_overview()
    assert rows[0]["instances"] == 5
    for f in files:
        sop = str(dcmread(f).SOPInstanceUID)
        stored = spool.incoming_path(str(dcmread(f).StudyInstanceUID), series_uid, sop)
        assert stored.exists()
        assert stored.stat().st_mode & 0o077 == 0  # owner-only
        # Bytes as received, not re-encoded: same pixel data and transfer syntax.
        assert dcmread(stored).PixelData == dcmread(f).PixelData
    assert not list(spool.root.rglob("*.tmp"))


def test_accepted_associations_have_tcp_nodelay(scp_server):
    settings, _, _, server = scp_server
    ae = AE(ae_title="PYSCU")
    ae.add_requested_context("1.2.840.10008.1.1")
    assoc = ae.associate(LOOPBACK, settings.port, ae_title="DENOISE")
    assert assoc.is_established
    try:
        (accepted,) = server.active_associations
        sock = accepted.dul.socket.socket
        assert sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY) == 1
    finally:
        assoc.release()


def test_echo_and_calling_ae_allowlist(scp):
    settings, _, _ = scp
    assert echoscu(settings.port, "DENOISE", "SCANNER").returncode == 0
    assert echoscu(settings.port, "DENOISE", "INTRUDER").returncode != 0


def test_unknown_called_ae_is_rejected(scp):
    settings, _, _ = scp
    assert echoscu(settings.port, "SOMEONE_ELSE", "SCANNER").returncode != 0


def test_undecodable_dataset_cannot_understand(scp, tmp_path):
    settings, _, catalog = scp
    (good,) = write_ct_series(tmp_path / "in", 1)
    raw = good.read_bytes()
    at = raw.index(b"\x08\x00\x18\x00UI")  # SOP Instance UID: keep it so the SCU can send the file
    end = at + 8 + int.from_bytes(raw[at + 6 : at + 8], "little")
    # Then a sequence of undefined length whose item runs past the end of the data.
    tail = b"\x08\x00\x20\x00SQ\x00\x00\xff\xff\xff\xff\xfe\xff\x00\xe0\x10\x00\x00\x00abc"
    bad = tmp_path / "bad.dcm"
    bad.write_bytes(raw[:end] + tail)
    assert _send_raw(settings.port, bad) == StoreStatus.CANNOT_UNDERSTAND
    assert catalog.views.series_overview() == []
    assert echoscu(settings.port, "DENOISE", "SCANNER").returncode == 0  # still up


def test_path_traversal_uid_is_refused(scp, tmp_path):
    settings, spool, catalog = scp
    (f,) = write_ct_series(tmp_path / "in", 1)
    ds = dcmread(f)
    ds.SeriesInstanceUID = "../../../../tmp/evil"
    ds.save_as(f)
    assert _send_raw(settings.port, f) == StoreStatus.CANNOT_UNDERSTAND
    assert not Path("/tmp/evil").exists()
    assert catalog.views.series_overview() == []
    assert not list(spool.incoming.rglob("*.dcm"))


def test_missing_pixel_data_does_not_match_sop_class(scp, tmp_path):
    settings, _, catalog = scp
    (f,) = write_ct_series(tmp_path / "in", 1)
    ds = dcmread(f)
    del ds.PixelData
    ds.save_as(f)
    assert _send_raw(settings.port, f) == StoreStatus.DATA_SET_DOES_NOT_MATCH_SOP_CLASS
    assert catalog.views.series_overview() == []


def test_mr_is_not_negotiated(scp, tmp_path):
    settings, _, _ = scp
    ae = AE(ae_title="PYSCU")
    ae.add_requested_context(MRImageStorage)
    assoc = ae.associate(LOOPBACK, settings.port, ae_title="DENOISE")
    try:
        # The association may be accepted for nothing or rejected; MR storage is never accepted.
        assert not assoc.is_established or not assoc.accepted_contexts
    finally:
        if assoc.is_established:
            assoc.release()


def test_disk_full_is_out_of_resources_and_leaves_nothing(scp, tmp_path, monkeypatch):
    settings, spool, catalog = scp
    (f,) = write_ct_series(tmp_path / "in", 1)
    real_write = os.write

    def full(fd, data):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(os, "write", full)
    try:
        status = _send_raw(settings.port, f)
    finally:
        monkeypatch.setattr(os, "write", real_write)
    assert status == StoreStatus.OUT_OF_RESOURCES
    assert catalog.views.series_overview() == []
    assert not [
        p
        for p in spool.root.rglob("*")
        if p.is_file() and p.name != "catalog.sqlite" and not p.name.startswith("catalog.sqlite")
    ]


@pytest.mark.parametrize(
    "tool,args",
    [("dcmcjpeg", ["+e1"]), ("dcmcjpls", ["+el"]), ("dcmcrle", []), ("j2k", [])],
)
def test_compressed_transfer_syntaxes_are_accepted_as_sent(scp, tmp_path, tool, args):
    settings, spool, catalog = scp
    (src,) = write_ct_series(tmp_path / "in", 1, rows=64, columns=64)
    out = tmp_path / "c.dcm"
    if tool == "j2k":
        ds = dcmread(src)
        ds.compress("1.2.840.10008.1.2.4.90")  # JPEG 2000 lossless, through pylibjpeg-openjpeg
        ds.save_as(out)
    else:
        subprocess.run([require(tool), *args, str(src), str(out)], check=True, capture_output=True)
    ts = str(dcmread(out).file_meta.TransferSyntaxUID)
    assert ts in decodable_transfer_syntaxes()
    result = storescu([out], settings.port, "DENOISE")
    assert result.returncode == 0, result.stderr
    stored = next(spool.incoming.rglob("*.dcm"))
    back = dcmread(stored)
    assert str(back.file_meta.TransferSyntaxUID) == ts
    assert (back.pixel_array == dcmread(src).pixel_array).all()


def test_partial_writes_are_removed_only_from_the_spool_folders(tmp_path):
    spool = Spool(tmp_path / "data")
    left = [spool.incoming / "s" / ".a.dcm.1.tmp", spool.derived / "d" / ".b.dcm.2.tmp"]
    other = spool.root / "inductor-cache" / "kernel.tmp"  # another tenant of the data directory
    for path in [*left, other]:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(b"x")
    assert spool.remove_partial_writes() == 2
    assert not any(p.exists() for p in left)
    assert other.exists()


def test_a_shared_spool_keeps_the_partial_writes_of_live_writers(tmp_path):
    """Several nodes share one spool: a node starting up deletes the temporary files of writers that are gone (a dead
    pid of this host, another host's after a day), never those another live process is writing."""
    import os
    import socket
    import subprocess
    import time

    dead = subprocess.Popen(["true"])
    dead.wait()
    host = socket.gethostname()
    spool = Spool(tmp_path / "data")
    folder = spool.incoming / ".receiving"
    folder.mkdir()
    live_here = folder / f"a.dcm~{os.getppid()}@{host}.tmp"  # our parent: alive
    dead_here = folder / f"b.dcm~{dead.pid}@{host}.tmp"
    live_there = folder / "c.dcm~1@another-host.tmp"
    old_there = folder / "d.dcm~1@another-host.tmp"
    for path in (live_here, dead_here, live_there, old_there):
        path.write_bytes(b"x")
    day_ago = time.time() - 25 * 3600
    os.utime(old_there, (day_ago, day_ago))
    assert spool.remove_partial_writes() == 2
    assert live_here.exists() and live_there.exists()
    assert not dead_here.exists() and not old_there.exists()


def test_a_failed_catalog_write_on_a_resend_keeps_the_acknowledged_copy(scp, tmp_path, monkeypatch):
    settings, spool, catalog = scp
    (f,) = write_ct_series(tmp_path / "in", 1)
    assert _send_raw(settings.port, f) == StoreStatus.SUCCESS
    (stored,) = [p for p in spool.incoming.rglob("*.dcm")]
    acknowledged = stored.read_bytes()
    ds = dcmread(f)
    ds.InstanceNumber = 99  # the resend differs, so that a replaced file would show
    ds.save_as(f)

    def broken(meta):
        raise RuntimeError("catalog unavailable")

    monkeypatch.setattr(catalog.intake, "record_instance", broken)
    assert _send_raw(settings.port, f) == StoreStatus.PROCESSING_FAILURE
    assert stored.read_bytes() == acknowledged  # what the scanner got Success for is still there
    assert [p.name for p in stored.parent.iterdir()] == [stored.name]  # and the staged copy is gone
    monkeypatch.undo()
    assert _send_raw(settings.port, f) == StoreStatus.SUCCESS  # a later resend replaces it once recorded
    assert dcmread(stored).InstanceNumber == 99


def test_success_comes_after_file_fsync_rename_directory_fsyncs_and_the_commit(scp, tmp_path, monkeypatch):
    """The order that makes Success durable, recorded as it happens: the file's data fsynced, renamed into place,
    its folder fsynced, each folder this store created made durable in its parent, then the catalog commit
    (SQLite synchronous=FULL), and only then the Success status."""
    settings, spool, catalog = scp
    (f,) = write_ct_series(tmp_path / "in", 1)
    ds = dcmread(f)
    final = spool.incoming_path(str(ds.StudyInstanceUID), str(ds.SeriesInstanceUID), str(ds.SOPInstanceUID))
    events: list[tuple[str, str]] = []
    real_fsync, real_replace, real_record = os.fsync, os.replace, catalog.intake.record_instance

    def fsync(fd: int) -> None:
        real_fsync(fd)
        events.append(("fsync", os.readlink(f"/proc/self/fd/{fd}")))

    def replace(src, dst) -> None:
        real_replace(src, dst)
        events.append(("rename", str(dst)))

    def record(meta) -> None:
        real_record(meta)
        events.append(("commit", meta.path))

    monkeypatch.setattr(os, "fsync", fsync)
    monkeypatch.setattr(os, "replace", replace)
    monkeypatch.setattr(catalog.intake, "record_instance", record)
    status = _send_raw(settings.port, f)
    events.append(("success", ""))
    assert status == StoreStatus.SUCCESS
    staged = next(i for i, (kind, what) in enumerate(events) if kind == "fsync" and what.endswith(".tmp"))
    order = [
        events.index(("rename", str(final))),
        events.index(("fsync", str(final.parent))),  # the series folder: the new file's entry
        events.index(("fsync", str(final.parent.parent))),  # the study folder: the new series folder's entry
        events.index(("fsync", str(spool.incoming))),  # incoming/: the new study folder's entry
        events.index(("commit", str(final))),
        events.index(("success", "")),
    ]
    assert staged < order[0] and order == sorted(order), events
    with catalog.db.engine.connect() as conn:
        assert conn.exec_driver_sql("PRAGMA synchronous").scalar() == 2  # FULL


def test_a_small_compressed_file_declaring_a_huge_image_is_refused_before_decoding(scp, tmp_path):
    """A few KB of RLE may declare 65535² pixels (8 GB decoded): refused from the header, nothing stored or decoded."""
    from pydicom.uid import RLELossless

    settings, spool, catalog = scp
    (f,) = write_ct_series(tmp_path / "in", 1, rows=64, columns=64)
    ds = dcmread(f)
    ds.compress(RLELossless)
    ds.Rows = ds.Columns = 65535  # the fragments stay those of a 64² image
    ds.save_as(f)
    assert f.stat().st_size < 64 * 1024
    assert _send_raw(settings.port, f, syntax=RLELossless) == StoreStatus.CANNOT_UNDERSTAND
    assert catalog.views.series_overview() == [] and not list(spool.incoming.rglob("*.dcm"))
    assert echoscu(settings.port, "DENOISE", calling_aet="PYSCU").returncode == 0  # and the node still answers


def test_the_default_max_pdu_is_finite_and_offered(scp):
    """Unlimited by default once let one PDU be as large as a peer wished: the default is 256 KiB, offered in the
    A-ASSOCIATE-AC."""
    settings, _, _ = scp
    assert settings.max_pdu == NodeSettings().max_pdu == 262144
    ae = AE(ae_title="PYSCU")
    ae.add_requested_context("1.2.840.10008.1.1")
    assoc = ae.associate(LOOPBACK, settings.port, ae_title="DENOISE")
    try:
        assert assoc.is_established and assoc.acceptor.maximum_length == 262144
    finally:
        assoc.release()
