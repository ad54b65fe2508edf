"""① Receiving Enhanced CT: the pixel limit is per frame (hundreds of 512² frames are one normal series), the whole
object is bounded by ``max_dataset_mb`` (a compressed one by what it decodes to), and a refusal leaves the SCP up."""

from __future__ import annotations

import highdicom as hd
import pytest
from pydicom import dcmread
from pydicom.uid import EnhancedCTImageStorage, ExplicitVRLittleEndian, RLELossless

from denoise_harness.enhanced_ct import write_enhanced_ct
from dicom_denoise_node.config import NodeSettings
from dicom_denoise_node.receive.scp import StoreStatus, start_scp
from dicom_denoise_node.store.catalog import Catalog
from dicom_denoise_node.store.spool import Spool
from tests.peers import LOOPBACK, echoscu, free_port, storescu, write_ct_series
from tests.receive.test_receive import _send_raw

FRAME = 64  # each frame 64², at the configured max_image_pixels
LIMIT_MB = 0.25


@pytest.fixture
def scp(tmp_path):
    """The node's SCP in this process with small limits: max_image_pixels = one 64² frame, max_dataset_mb = 0.25."""
    settings = NodeSettings(
        ae_title="DENOISE",
        host=LOOPBACK,
        port=free_port(),
        data_dir=tmp_path / "data",
        max_image_pixels=FRAME * FRAME,
        max_dataset_mb=LIMIT_MB,
    )
    catalog = Catalog(f"sqlite:///{settings.data_dir / 'catalog.sqlite'}")
    server = start_scp(settings, Spool(settings.data_dir), catalog)
    yield settings, catalog
    server.shutdown()
    catalog.close()


def _stored(catalog: Catalog) -> int:
    return sum(row["instances"] for row in catalog.views.series_overview())


def test_the_pixel_limit_is_per_frame_so_an_enhanced_ct_of_many_frames_is_stored(scp, tmp_path):
    """16 frames of 64² = 16 × max_image_pixels: one normal object (it once was refused as one 16-fold image)."""
    settings, catalog = scp
    path = write_enhanced_ct(tmp_path / "enhanced.dcm", 16, rows=FRAME, columns=FRAME)
    assert path.stat().st_size < LIMIT_MB * 1024 * 1024
    result = storescu([path], settings.port, "DENOISE")
    assert result.returncode == 0, result.stderr
    assert _stored(catalog) == 1
    big = write_enhanced_ct(tmp_path / "big-frames.dcm", 1, rows=FRAME + 4, columns=FRAME)
    assert _send_raw(settings.port, big, sop_class=EnhancedCTImageStorage) == StoreStatus.CANNOT_UNDERSTAND


def test_an_enhanced_ct_over_max_dataset_mb_is_refused_and_the_scp_still_answers(scp, tmp_path, caplog):
    settings, catalog = scp
    native = write_enhanced_ct(tmp_path / "native.dcm", 40, rows=FRAME, columns=FRAME)  # 320 KiB of pixels
    assert _send_raw(settings.port, native, sop_class=EnhancedCTImageStorage) == StoreStatus.OUT_OF_RESOURCES
    assert "exceeds max_dataset_mb=0.25" in caplog.text
    # A few KB of RLE that decode to 40 × 64² × 2 bytes = 320 KiB: refused from the header, never decoded.
    compressed = tmp_path / "rle.dcm"
    ds = dcmread(native)
    ds.compress(RLELossless)
    ds.save_as(compressed)
    assert compressed.stat().st_size < LIMIT_MB * 1024 * 1024
    status = _send_raw(settings.port, compressed, sop_class=EnhancedCTImageStorage, syntax=RLELossless)
    assert status == StoreStatus.OUT_OF_RESOURCES
    assert "decode to 0.3 MiB, over max_dataset_mb=0.25" in caplog.text
    assert _stored(catalog) == 0
    # The SCP still answers and still stores what fits.
    assert echoscu(settings.port, "DENOISE").returncode == 0
    small = write_enhanced_ct(tmp_path / "small.dcm", 4, rows=FRAME, columns=FRAME)
    assert _send_raw(settings.port, small, sop_class=EnhancedCTImageStorage) == StoreStatus.SUCCESS
    assert _stored(catalog) == 1


def test_a_legacy_converted_enhanced_ct_is_accepted(scp, tmp_path):
    settings, catalog = scp
    sources = [dcmread(p) for p in write_ct_series(tmp_path / "ct", 3, rows=FRAME, columns=FRAME)]
    legacy = hd.legacy.LegacyConvertedEnhancedCTImage(
        sources, series_instance_uid=hd.UID(), series_number=5, sop_instance_uid=hd.UID(), instance_number=1
    )
    legacy.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    path = tmp_path / "legacy.dcm"
    legacy.save_as(path, enforce_file_format=True)
    result = storescu([path], settings.port, "DENOISE")
    assert result.returncode == 0, result.stderr
    assert _stored(catalog) == 1
