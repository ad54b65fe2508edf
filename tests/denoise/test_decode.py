"""The worker's header checks: what it refuses to decode, and why."""

from __future__ import annotations

from pydicom import dcmread

from dicom_denoise_node.denoise.decode import MAX_DECODE_PIXELS, scan_series
from tests.peers import write_ct_series


def test_the_worker_never_decodes_an_image_over_its_pixel_limit(tmp_path):
    """A file that reached the spool another way (an older node, a copy) still cannot make the worker decode
    gigabytes: the header is checked first and the slice skipped with the reason."""
    good, huge = write_ct_series(tmp_path / "in", 2, rows=32, columns=32)
    ds = dcmread(huge)
    ds.Rows = ds.Columns = 65535
    ds.save_as(huge)
    refs, skipped = scan_series([good, huge])
    assert [r.path for r in refs] == [good]
    assert len(skipped) == 1 and f"over the worker's limit of {MAX_DECODE_PIXELS}" in skipped[0].reason
