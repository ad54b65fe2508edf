"""① Streaming receive: each data set goes to disk as its fragments arrive, and ``max_dataset_mb`` is enforced while
it arrives (receive/stream.py); dcmtk's storescu is the sender, the catalog and spool are real files."""

from __future__ import annotations

import contextlib
import struct
import subprocess
from pathlib import Path

import pytest
from pydicom import dcmread

from dicom_denoise_node.config import NodeSettings
from dicom_denoise_node.receive.scp import start_scp
from dicom_denoise_node.receive.stream import RECEIVING_DIR, ReceivedFile
from dicom_denoise_node.store.catalog import Catalog
from dicom_denoise_node.store.disk import MIB
from dicom_denoise_node.store.spool import Spool
from tests.peers import (
    LOOPBACK,
    PeakWatch,
    echoscu,
    free_port,
    peer_env,
    require,
    storescu,
    wait_until,
    write_ct_series,
)

LIMIT_MB = 8


@pytest.fixture
def node(tmp_path):
    """The node's SCP in this process (so its memory is this process's), with max_dataset_mb = 8."""
    settings = NodeSettings(
        ae_title="DENOISE", host=LOOPBACK, port=free_port(), data_dir=tmp_path / "data", max_dataset_mb=LIMIT_MB
    )
    spool = Spool(settings.data_dir)
    catalog = Catalog(f"sqlite:///{settings.data_dir / 'catalog.sqlite'}")
    server = start_scp(settings, spool, catalog)
    yield settings, spool, catalog
    server.shutdown()
    catalog.close()


def _big_ct(directory: Path, pixel_mib: int) -> Path:
    """A CT file whose PixelData is ``pixel_mib`` MiB, written in chunks (never held in this process's memory)."""
    (path,) = write_ct_series(directory, 1)
    ds = dcmread(path)
    del ds.PixelData
    ds.save_as(path)
    with path.open("ab") as fh:
        fh.write(struct.pack("<HH2sHI", 0x7FE0, 0x0010, b"OW", 0, pixel_mib * MIB))  # explicit VR LE, OW
        chunk = b"\x00" * MIB
        for _ in range(pixel_mib):
            fh.write(chunk)
    return path


def _memory_kib(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise AssertionError(f"no {field} in /proc/self/status")


def _largest_file(folder: Path) -> int:
    sizes = [0]
    for f in list(folder.iterdir()):
        with contextlib.suppress(FileNotFoundError):
            sizes.append(f.stat().st_size)
    return max(sizes)


def test_a_data_set_over_max_dataset_mb_is_refused_while_it_arrives_and_memory_stays_bounded(node, tmp_path, caplog):
    """192 MiB sent against an 8 MiB limit: answered Out of Resources with the reason, the node's peak memory grows
    by far less than the data set (pynetdicom's default collects all of it in memory first), the file on disk stops
    at the limit, nothing is kept, and the node goes on receiving."""
    settings, spool, catalog = node
    big = _big_ct(tmp_path / "big", 192)
    Path("/proc/self/clear_refs").write_text("5")  # resets VmHWM (peak RSS) to the current RSS
    before = _memory_kib("VmRSS")
    with PeakWatch(lambda: _largest_file(spool.incoming / RECEIVING_DIR), interval=0.002) as watch:
        result = storescu([big], settings.port, "DENOISE", timeout=120, extra_args=["-v"])
    grown_mib = (_memory_kib("VmHWM") - before) / 1024
    assert "Refused: OutOfResources" in result.stdout + result.stderr, result.stdout + result.stderr
    assert grown_mib < 64, f"peak memory grew by {grown_mib:.0f} MiB while receiving 192 MiB"
    assert 0 < watch.peak <= LIMIT_MB * MIB, watch.peak  # written up to the limit, not beyond
    assert "exceeds max_dataset_mb=8" in caplog.text and "192.0 MiB" in caplog.text
    assert not list((spool.incoming / RECEIVING_DIR).iterdir())
    assert catalog.views.series_overview() == [] and not list(spool.incoming.rglob("*.dcm"))
    assert echoscu(settings.port, "DENOISE").returncode == 0
    (small,) = write_ct_series(tmp_path / "small", 1)
    assert storescu([small], settings.port, "DENOISE").returncode == 0
    assert len(list(spool.incoming.rglob("*.dcm"))) == 1


def test_a_transfer_cut_off_midway_leaves_no_file_behind(tmp_path):
    """storescu killed while its data set is arriving: the partial file is deleted when the connection closes,
    nothing is cataloged, and the node still answers."""
    settings = NodeSettings(ae_title="DENOISE", host=LOOPBACK, port=free_port(), data_dir=tmp_path / "data")
    spool = Spool(settings.data_dir)
    catalog = Catalog(f"sqlite:///{settings.data_dir / 'catalog.sqlite'}")
    server = start_scp(settings, spool, catalog)
    receiving = spool.incoming / RECEIVING_DIR
    try:
        big = _big_ct(tmp_path / "big", 768)
        sender = subprocess.Popen(
            [require("storescu"), "-aec", "DENOISE", LOOPBACK, str(settings.port), str(big)],
            env=peer_env(),
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        try:
            partial = wait_until(
                lambda: any(f.stat().st_size > 4 * MIB for f in receiving.iterdir()), timeout=30, interval=0.001
            )
            assert partial, "the data set never started arriving"
        finally:
            sender.kill()
            sender.wait(10)
        assert wait_until(lambda: not list(receiving.iterdir()), timeout=10), list(receiving.iterdir())
        assert catalog.views.series_overview() == [] and not list(spool.incoming.rglob("*.dcm"))
        assert echoscu(settings.port, "DENOISE").returncode == 0
    finally:
        server.shutdown()
        catalog.close()


def test_a_received_file_stops_writing_at_the_limit_and_throws_away_what_came(tmp_path):
    received = ReceivedFile(tmp_path, limit=10, owner=1)
    received.write(b"x" * 8)
    assert received.path.stat().st_size == 8 and not received.over_limit
    received.write(b"y" * 8)  # 16 > 10: what came is thrown away, and what follows is not written
    received.write(b"z" * 8)
    assert received.over_limit and received.received == 24 and received.path.stat().st_size == 0
    received.discard()
    assert not received.path.exists()
