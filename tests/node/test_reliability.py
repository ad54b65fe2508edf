"""The node's promises (docs/reliability.md), each proven against the real `denoise-node serve` process:
crash safety (kill -9 while receiving and while denoising), PACS outage with backoff, disk pressure, load with
back-pressure and bounded memory, who gets in (peer allowlist, limits, DICOM TLS) and retention."""

from __future__ import annotations

import contextlib
import os
import shutil
import socket
import ssl
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import pytest
from pydicom import dcmread
from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian
from pynetdicom import AE, _config
from pynetdicom.sop_class import Verification

from denoise_harness.node import NodeProcess
from dicom_denoise_node.config import NodeSettings
from dicom_denoise_node.receive.admission import Admission
from dicom_denoise_node.receive.audit import association_rows
from dicom_denoise_node.store.catalog import SeriesState, open_readonly
from tests.conftest import export_two_layer_model
from tests.peers import (
    LOOPBACK,
    PeakWatch,
    StoreSCP,
    echoscu,
    free_port,
    peer_env,
    require,
    sop_instance_uid,
    storescu,
    wait_until,
)
from tests.peers import write_ct_series as _write

pytestmark = pytest.mark.e2e


def _cli(node: NodeProcess, *args: str) -> subprocess.CompletedProcess[str]:
    cmd = [sys.executable, "-m", "dicom_denoise_node", *args, "-c", str(node.config)]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=120)


def _ae(*contexts: str) -> AE:
    ae = AE(ae_title="SCANNER")
    for ctx in contexts:
        ae.add_requested_context(ctx, ExplicitVRLittleEndian)
    return ae


class Sender(threading.Thread):
    """Sends files over one pynetdicom association and records which ones got Success (what a scanner knows)."""

    def __init__(self, files: list[Path], port: int) -> None:
        super().__init__(daemon=True)
        self.files, self.port = files, port
        self.succeeded: list[str] = []

    def run(self) -> None:
        chunked = _config.STORE_SEND_CHUNKED_DATASET
        _config.STORE_SEND_CHUNKED_DATASET = True
        try:
            assoc = _ae(CTImageStorage).associate(LOOPBACK, self.port, ae_title="DENOISE")
            if not assoc.is_established:
                return
            for path in self.files:
                status = assoc.send_c_store(path)
                if not status or "Status" not in status:
                    return  # the node died: no answer for this one
                if int(status.Status) == 0:
                    self.succeeded.append(sop_instance_uid(path))
                time.sleep(0.01)
            assoc.release()
        except Exception:  # noqa: BLE001 - a killed peer may surface as any socket error
            return
        finally:
            _config.STORE_SEND_CHUNKED_DATASET = chunked


@pytest.fixture
def pacs(tmp_path: Path) -> Iterator[StoreSCP]:
    """A running dcmtk storescp as the PACS."""
    scp = StoreSCP(tmp_path / "pacs")
    scp.start()
    try:
        yield scp
    finally:
        scp.stop()


def _deliveries(pacs: StoreSCP) -> Counter[str]:
    """SOP Instance UID → how many times the PACS stored it (every C-STORE adds a ledger line)."""
    lines = [line for line in pacs.ledger_path.read_text().splitlines() if line]
    return Counter(sop_instance_uid(Path(line)) for line in lines)


# ---------------------------------------------------------------------------------------------- crash safety


def test_kill9_while_receiving_and_while_denoising_loses_nothing(tmp_path, tiny_model, pacs):
    node = NodeProcess(tmp_path, tiny_model, [{"ae_title": "PACS", "port": pacs.port}], quiet_period_s=1.5).start()
    try:
        # 1. kill -9 while a series is arriving.
        arriving = _write(tmp_path / "a", 60, rows=64, columns=64)
        sender = Sender(arriving, node.port)
        sender.start()
        assert wait_until(lambda: len(sender.succeeded) >= 15, timeout=60)
        node.kill9()
        sender.join(timeout=30)
        acknowledged = set(sender.succeeded)
        assert 15 <= len(acknowledged) < len(arriving)
        node.start()
        cat = node.catalog()
        try:
            series_a = str(dcmread(arriving[0]).SeriesInstanceUID)
            # Every instance the scanner got Success for survived the kill, before anything is resent.
            stored = {r.sop_uid for r in cat.queue.instances(cat.housekeeping.series_id(series_a))}
            assert acknowledged <= stored
        finally:
            cat.close()
        assert storescu(arriving, node.port, "DENOISE").returncode == 0  # the scanner resends the rest
        assert node.wait_state(series_a, SeriesState.SENT, timeout=180), node.log()[-3000:]

        # 2. kill -9 while a series is being denoised.
        big = _write(tmp_path / "b", 12, rows=512, columns=512)
        series_b = str(dcmread(big[0]).SeriesInstanceUID)
        assert storescu(big, node.port, "DENOISE").returncode == 0
        assert node.wait_state(series_b, SeriesState.PROCESSING, timeout=120), node.log()[-3000:]
        node.kill9()
        node.start()
        assert node.wait_state(series_b, SeriesState.SENT, timeout=300), node.log()[-3000:]
        assert "interrupted while PROCESSING" in node.log()

        # The PACS got each derived instance exactly once, and nothing else.
        pacs.wait_for_files(len(arriving) + len(big), timeout=60)
        sops = _deliveries(pacs)
        assert len(sops) == len(arriving) + len(big)
        assert set(sops.values()) == {1}
    finally:
        node.stop()
        pacs.stop()
    check = _cli(node, "check")
    assert check.returncode == 0, check.stdout + check.stderr


def test_startup_check_indexes_orphans_and_reports_missing_files(tmp_path, tiny_model):
    node = NodeProcess(tmp_path, tiny_model, []).start()
    try:
        files = _write(tmp_path / "in", 3, rows=32, columns=32)
        assert storescu(files, node.port, "DENOISE").returncode == 0
        uid = str(dcmread(files[0]).SeriesInstanceUID)
        assert node.wait_state(uid, SeriesState.DERIVED, timeout=60)  # no destination: waits in DERIVED
    finally:
        node.stop()
    spool = node.data_dir / "incoming"
    stored = sorted(spool.rglob("*.dcm"))
    # A crash between rename and commit leaves a complete file without a row; a person deletes another file.
    orphan = _write(tmp_path / "orphan", 1, rows=32, columns=32)[0]
    orphan_ds = dcmread(orphan)
    target = spool / orphan_ds.StudyInstanceUID / orphan_ds.SeriesInstanceUID / f"{orphan_ds.SOPInstanceUID}.dcm"
    target.parent.mkdir(parents=True)
    shutil.copy(orphan, target)
    stored[0].unlink()
    report = _cli(node, "check")
    assert report.returncode == 1 and "received files without a catalog row" in report.stdout
    node.start()
    try:
        assert wait_until(lambda: "indexed 1 received files" in node.log(), timeout=30)
        assert node.wait_state(uid, SeriesState.FAILED, timeout=30)
        assert node.wait_state(str(orphan_ds.SeriesInstanceUID), SeriesState.DERIVED, timeout=60)
    finally:
        node.stop()
    assert _cli(node, "check").returncode == 0


def test_a_second_node_on_the_same_data_directory_refuses_before_touching_it(tmp_path, tiny_model):
    node = NodeProcess(tmp_path, tiny_model, []).start()
    try:
        env = {k: v for k, v in os.environ.items() if not k.startswith("DENOISE_NODE_")}
        second = subprocess.run(
            [sys.executable, "-m", "dicom_denoise_node", "serve", "--config", str(node.config)],
            capture_output=True,
            text=True,
            timeout=120,
            env=env,
        )
        assert second.returncode == 4, second.stderr
        assert node.proc is not None and f"in use by another denoise-node (pid {node.proc.pid})" in second.stderr
        assert "starting" not in second.stderr  # refused before the catalog, the spool or recovery were touched
        assert echoscu(node.port, "DENOISE").returncode == 0  # the first node still serves
    finally:
        node.stop()


# ---------------------------------------------------------------------------------------------- PACS outage


def test_pacs_outage_waits_with_backoff_then_delivers(tmp_path, tiny_model):
    port = free_port()
    pacs = StoreSCP(tmp_path / "pacs", port=port)  # down at first
    node = NodeProcess(
        tmp_path, tiny_model, [{"ae_title": "PACS", "port": port}], extra="[retention]\nsent_days = 30\n"
    )
    node.config.write_text(node.config.read_text().replace("max_attempts = 3", "max_attempts = 20"))
    node.start()
    try:
        files = _write(tmp_path / "in", 3, rows=32, columns=32)
        assert storescu(files, node.port, "DENOISE").returncode == 0
        uid = str(dcmread(files[0]).SeriesInstanceUID)
        assert wait_until(lambda: "send attempt 2/20 failed" in node.log(), timeout=120), node.log()[-2000:]
        assert node.catalog().views.series_state(uid) is not SeriesState.FAILED
        pacs.start()  # the PACS comes back
        assert node.wait_state(uid, SeriesState.SENT, timeout=120), node.log()[-3000:]
        assert len(pacs.wait_for_files(3, timeout=30)) == 3
    finally:
        node.stop()
        pacs.stop()


# ---------------------------------------------------------------------------------------------- disk pressure


def test_disk_watermark_refuses_stores_and_pauses_processing_until_space_returns(tmp_path, tiny_model):
    free = {"bytes": 10 * 1024**3}
    settings = NodeSettings(min_free_mb=100, max_dataset_mb=1)
    admission = Admission(settings, tmp_path, free_bytes=lambda p: free["bytes"])
    assert admission.disk_refusal() is None
    free["bytes"] = 50 * 1024**2
    assert "below min_free_mb" in (admission.disk_refusal() or "")
    assert admission.association_refusal("SCANNER", LOOPBACK) is not None


@pytest.fixture
def small_disk(tmp_path):
    """A 64 MiB tmpfs: the node's data_dir on a disk that can really fill up (needs mount privileges)."""
    mnt = tmp_path / "disk"
    mnt.mkdir()
    result = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=64m", "tmpfs", str(mnt)], capture_output=True)
    if result.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {result.stderr.decode().strip()}")
    try:
        yield mnt
    finally:
        subprocess.run(["umount", "-l", str(mnt)], capture_output=True)


def test_full_disk_refuses_then_resumes_on_a_real_filesystem(tmp_path, tiny_model, pacs, small_disk):
    node = NodeProcess(
        tmp_path,
        tiny_model,
        [{"ae_title": "PACS", "port": pacs.port}],
        node_extra="min_free_mb = 24",
        quiet_period_s=2.0,
    )
    node.data_dir = small_disk / "node"
    node.config.write_text(node.config.read_text().replace(str(tmp_path / "node-data"), str(node.data_dir)))
    node.start()
    ballast = small_disk / "ballast"
    try:
        # Series A arrives while there is room; then the disk fills before it is processed.
        series_a = _write(tmp_path / "a", 3, rows=64, columns=64)
        uid_a = str(dcmread(series_a[0]).SeriesInstanceUID)
        with open(ballast, "wb") as fh:
            fh.write(b"\0" * (45 * 1024 * 1024))  # 64 − 45 < 24 MiB free
        assert storescu(series_a, node.port, "DENOISE").returncode != 0  # refused, not half-written
        assert "below min_free_mb" in node.log()
        assert not list((node.data_dir / "incoming").rglob("*.dcm"))
        assert not list(node.data_dir.rglob("*.tmp"))
        ballast.unlink()
        assert storescu(series_a, node.port, "DENOISE").returncode == 0
        with open(ballast, "wb") as fh:  # full again before the quiet period ends: processing must wait
            fh.write(b"\0" * (45 * 1024 * 1024))
        assert node.wait_state(uid_a, SeriesState.COMPLETE, timeout=30), node.log()[-2000:]
        assert wait_until(lambda: "processing paused" in node.log(), timeout=30)  # the worker saw the full disk
        assert node.catalog().views.series_state(uid_a) is SeriesState.COMPLETE  # and waits instead of writing
        ballast.unlink()
        assert node.wait_state(uid_a, SeriesState.SENT, timeout=60), node.log()[-3000:]
        assert "processing resumes" in node.log()
    finally:
        node.stop()
        pacs.stop()


# ---------------------------------------------------------------------------------------------- load


def _memory_kib(pid: int, field: str) -> int:
    status = Path(f"/proc/{pid}/status").read_text()
    return int(next(line.split()[1] for line in status.splitlines() if line.startswith(field + ":")))


def test_load_eight_concurrent_scanners_with_back_pressure_and_bounded_memory(tmp_path, pacs, request):
    """8 storescu × 100 slices of 512² at once (400 MiB of pixels). With max_pending_series=4 exactly four new
    series get in and exactly four scanners are turned away (Out of Resources on their first instance) in the first
    round; the catalog never shows more than four series waiting; the turned-away scanners retry (bounded) until
    everything is in and at the PACS; and the node's peak memory grows by less than three quarters of the data it
    received (it keeps no series in memory; one series being denoised and four arriving take ≈ 150–200 MiB here)."""
    scanners, slices, limit = 8, 100, 4
    node = NodeProcess(
        tmp_path,
        export_two_layer_model(tmp_path / "model"),
        [{"ae_title": "PACS", "port": pacs.port}],
        node_extra=f"max_pending_series = {limit}",
        log_level="INFO",
        tile=(256, 16, 4),
    ).start()
    series = [_write(tmp_path / f"s{i}", slices, rows=512, columns=512) for i in range(scanners)]
    uids = [str(dcmread(files[0]).SeriesInstanceUID) for files in series]
    data_mib = sum(f.stat().st_size for files in series for f in files) / 2**20
    rounds: list[list[int]] = []
    baseline_kib = _memory_kib(node.proc.pid, "VmRSS")
    queue = open_readonly(f"sqlite:///{node.catalog_path}")
    try:
        pending = list(range(scanners))
        with PeakWatch(queue.views.pending_series, interval=0.02) as watch:
            for _round in range(40):  # bounded: at most 40 rounds of retries
                procs = {
                    i: subprocess.Popen(
                        [
                            require("storescu"),
                            "-aet",
                            f"CT{i}",
                            "-aec",
                            "DENOISE",
                            "+sd",
                            LOOPBACK,
                            str(node.port),
                            str(tmp_path / f"s{i}"),
                        ],  # fmt: skip
                        env=peer_env(),
                        stdout=subprocess.DEVNULL,
                        stderr=subprocess.PIPE,
                    )
                    for i in pending
                }
                failed = []
                for i, proc in procs.items():
                    proc.communicate(timeout=300)
                    if proc.returncode != 0:
                        failed.append(i)
                rounds.append(failed)
                pending = failed
                if not pending:
                    break
                # Retry once the worker has taken a series off the queue (an event in the catalog, not a timer).
                assert wait_until(lambda: queue.views.pending_series() < limit, timeout=300), node.log()[-3000:]
            assert not pending, f"scanners {pending} never got in"
            for uid in uids:
                assert node.wait_state(uid, SeriesState.SENT, timeout=600), node.log()[-3000:]
        assert len(pacs.wait_for_files(scanners * slices, timeout=300)) == scanners * slices
        peak_kib = _memory_kib(node.proc.pid, "VmHWM")
    finally:
        queue.close()
        node.stop()
        pacs.stop()
    assert len(rounds[0]) == scanners - limit, rounds  # exactly the limit got in at first
    assert watch.peak == limit, (watch.peak, watch.samples)  # reached, never passed
    assert "waiting for the worker" in node.log()
    grown_mib = (peak_kib - baseline_kib) / 1024
    request.node.user_properties.append(("peak_rss_growth_mib", grown_mib))
    print(  # noqa: T201
        f"\nnode memory: {baseline_kib / 1024:.0f} MiB at start, peak {peak_kib / 1024:.0f} MiB "
        f"(+{grown_mib:.0f} MiB) for {scanners}×{slices} slices of 512² ({data_mib:.0f} MiB)"
    )
    assert grown_mib < 0.75 * data_mib, f"peak memory grew by {grown_mib:.0f} MiB for {data_mib:.0f} MiB received"


# ---------------------------------------------------------------------------------------------- who gets in


def _echo(
    port: int, calling: str = "SCANNER", ssl_context: ssl.SSLContext | None = None, timeout: float | None = None
) -> bool:
    ae = _ae(Verification)
    ae.ae_title = calling
    if timeout is not None:
        ae.connection_timeout = ae.acse_timeout = ae.network_timeout = timeout
    tls_args = (ssl_context, LOOPBACK) if ssl_context is not None else None
    assoc = ae.associate(LOOPBACK, port, ae_title="DENOISE", tls_args=tls_args)
    if not assoc.is_established:
        return False
    status = assoc.send_c_echo()
    assoc.release()
    return bool(status) and int(status.Status) == 0


def test_peer_allowlist_limits_and_dataset_size(tmp_path, tiny_model):
    node = NodeProcess(
        tmp_path,
        tiny_model,
        [],
        node_extra="max_associations = 1\nmax_dataset_mb = 0.004\nmax_pdu = 16384\n"
        'allowed_peers = { SCANNER = ["10.9.9.9"], LOCALCT = ["127.0.0.0/8"] }',
    ).start()
    try:
        assert not _echo(node.port, "SCANNER")  # listed, but not from this address
        # max_associations = 1: the previous association may still be closing, so positive checks may retry.
        assert wait_until(lambda: _echo(node.port, "LOCALCT"), timeout=10)  # listed and from its network
        assert wait_until(lambda: _echo(node.port, "OTHER"), timeout=10)  # not listed: no address rule
        assert "SCANNER is not allowed from 127.0.0.1" in node.log()
        # Association limit: one open association, a second one is turned away; the first still works. Wait until
        # the audit has closed every earlier association (the node's own record of it), not for a fixed time.
        audit = node.catalog()
        try:
            assert wait_until(lambda: all(r["ended_at"] for r in association_rows(audit)), timeout=10)
        finally:
            audit.close()
        holder = _ae(Verification)
        holder.ae_title = "OTHER"
        held = holder.associate(LOOPBACK, node.port, ae_title="DENOISE")
        assert held.is_established
        assert held.acceptor.maximum_length == 16384  # the node's max PDU
        assert not _echo(node.port, "OTHER")
        assert int(held.send_c_echo().Status) == 0
        held.release()
        assert wait_until(lambda: _echo(node.port, "OTHER"), timeout=10)
        # Dataset size: 4 KiB allowed; a 64×64 slice (8 KiB of pixels) gets Out of Resources and is not kept.
        (small,) = _write(tmp_path / "small", 1, rows=16, columns=16)
        (large,) = _write(tmp_path / "large", 1, rows=64, columns=64)
        assert storescu([small], node.port, "DENOISE", calling_aet="OTHER").returncode == 0
        result = storescu([large], node.port, "DENOISE", calling_aet="OTHER")
        assert "0xa700" in (result.stdout + result.stderr).lower() or result.returncode != 0
        assert "exceeds max_dataset_mb" in node.log()
        assert echoscu(node.port, "DENOISE", calling_aet="OTHER").returncode == 0
    finally:
        node.stop()


def test_dicom_tls_with_client_certificates(tmp_path, tiny_model, pki):
    node = NodeProcess(
        tmp_path,
        tiny_model,
        [],
        node_extra=f'[node.tls]\nenabled = true\ncert_file = "{pki / "server.pem"}"\n'
        f'key_file = "{pki / "server.key"}"\nca_file = "{pki / "ca.pem"}"\nrequire_client_cert = true\n',
    ).start()
    try:
        client = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cafile=str(pki / "ca.pem"))
        client.load_cert_chain(str(pki / "client.pem"), str(pki / "client.key"))
        assert _echo(node.port, ssl_context=client)
        # A client that connects and says nothing holds no one up: the handshake is not on the accept thread.
        with socket.create_connection((LOOPBACK, node.port), timeout=10):
            assert _echo(node.port, ssl_context=client, timeout=5.0)
            assert wait_until(lambda: "TLS handshake with" in node.log(), timeout=30)  # and it is dropped
        anonymous = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cafile=str(pki / "ca.pem"))
        assert not _echo(node.port, ssl_context=anonymous)  # no client certificate
        assert not _echo(node.port)  # plain DICOM on the TLS port
        untrusting = ssl.create_default_context(ssl.Purpose.SERVER_AUTH)  # does not trust the test CA
        with contextlib.suppress(ssl.SSLError):
            assert not _echo(node.port, ssl_context=untrusting)
        # dcmtk as the TLS peer too.
        result = subprocess.run(
            [
                require("echoscu"),
                "+tls",
                str(pki / "client.key"),
                str(pki / "client.pem"),
                "+cf",
                str(pki / "ca.pem"),
                "-aec",
                "DENOISE",
                LOOPBACK,
                str(node.port),
            ],  # fmt: skip
            capture_output=True,
            text=True,
            timeout=60,
            env={**os.environ, "TCP_NODELAY": "1"},
        )
        if "unknown option" not in result.stderr:  # dcmtk built without OpenSSL has no +tls
            assert result.returncode == 0, result.stderr
        assert node.proc is not None and node.proc.poll() is None
    finally:
        node.stop()
    assert "with TLS (client certificates required)" in node.log()


def test_unreadable_tls_certificate_stops_the_node_with_the_reason(tmp_path, tiny_model):
    node = NodeProcess(
        tmp_path,
        tiny_model,
        [],
        node_extra=f'[node.tls]\nenabled = true\ncert_file = "{tmp_path / "nope.pem"}"\n'
        f'key_file = "{tmp_path / "nope.key"}"\n',
    )
    node.start(wait=False)
    assert node.proc is not None and node.proc.wait(timeout=60) == 2
    assert "[node.tls] cannot load" in node.log() and "Traceback" not in node.log()


# ---------------------------------------------------------------------------------------------- retention


def test_retention_purges_sent_series_and_keeps_failed_until_purged(tmp_path, tiny_model, pacs):
    node = NodeProcess(
        tmp_path,
        tiny_model,
        [{"ae_title": "PACS", "port": pacs.port}],
        extra="[retention]\nsent_days = 0\ncheck_interval_s = 0.5\n",
    ).start()
    try:
        files = _write(tmp_path / "in", 3, rows=32, columns=32)
        uid = str(dcmread(files[0]).SeriesInstanceUID)
        assert storescu(files, node.port, "DENOISE").returncode == 0
        assert node.wait_state(uid, SeriesState.SENT, timeout=60)
        series_dir = node.data_dir / "incoming" / str(dcmread(files[0]).StudyInstanceUID) / uid
        assert wait_until(lambda: not series_dir.exists(), timeout=30), "SENT series not purged"
        assert wait_until(lambda: "retention: series" in node.log(), timeout=10)
        assert not list((node.data_dir / "derived").rglob("*.dcm"))
        # A FAILED series (every instance multi-frame: nothing to denoise) stays until purged by command.
        (enh,) = _write(tmp_path / "enh", 1, rows=16, columns=16)
        ds = dcmread(enh)
        ds.SOPClassUID = ds.file_meta.MediaStorageSOPClassUID = "1.2.840.10008.5.1.4.1.1.2.1"
        ds.NumberOfFrames = 1
        ds.save_as(enh, enforce_file_format=True)
        failed_uid = str(ds.SeriesInstanceUID)
        assert storescu([enh], node.port, "DENOISE").returncode == 0
        assert node.wait_state(failed_uid, SeriesState.FAILED, timeout=60)
        # A later series sent and purged: retention has run with the FAILED series present (an event, not a timer).
        later = _write(tmp_path / "later", 2, rows=32, columns=32)
        later_uid = str(dcmread(later[0]).SeriesInstanceUID)
        assert storescu(later, node.port, "DENOISE").returncode == 0
        assert node.wait_state(later_uid, SeriesState.SENT, timeout=60)
        # The log line comes once the purge is over (files and emptied folders gone): nothing is moving after it.
        assert wait_until(lambda: f"retention: series {later_uid} purged" in node.log(), timeout=30), node.log()[-2000:]
        failed_dir = node.data_dir / "incoming" / str(ds.StudyInstanceUID) / failed_uid
        assert list(failed_dir.glob("*.dcm")), "FAILED data must be kept"
        purge = _cli(node, "purge", "--failed")
        assert purge.returncode == 0 and failed_uid in purge.stdout
        assert not list((node.data_dir / "incoming").rglob("*.dcm"))
    finally:
        node.stop()
        pacs.stop()
