"""A scanner that compresses with JPEG Lossless and proposes nothing else is served by a plain install of the node:
the node runs without the GPL codec (tests/without_codecs), accepts the association, decodes with GDCM, denoises
and sends the derived series on."""

from __future__ import annotations

import subprocess

import pytest
from pydicom import dcmread
from pydicom.uid import CTImageStorage, JPEGLosslessSV1

from denoise_harness.node import NodeProcess
from dicom_denoise_node.store.catalog import Instance, SeriesState
from tests.denoise.test_codecs import without_codecs
from tests.peers import StoreSCP, require, storescu, write_ct_series

pytestmark = pytest.mark.e2e

# dcmtk's storescu proposes uncompressed syntaxes beside any compressed one (-xs); this profile proposes only one.
_ONLY_JPEG_LOSSLESS = f"""[[TransferSyntaxes]]
[JPEG]
TransferSyntax1 = {JPEGLosslessSV1}
[[PresentationContexts]]
[CONTEXTS]
PresentationContext1 = {CTImageStorage}\\JPEG
[[Profiles]]
[ONLY]
PresentationContexts = CONTEXTS
"""


def test_a_scanner_proposing_only_jpeg_lossless_is_served_without_the_gpl_codec(
    tmp_path, tiny_model, dcmtk_pacs: StoreSCP, monkeypatch
):
    plain = write_ct_series(tmp_path / "plain", 2, rows=32, columns=32)
    jpegs = []
    for path in plain:
        jpegs.append(tmp_path / "jpeg" / path.name)
        jpegs[-1].parent.mkdir(exist_ok=True)
        subprocess.run([require("dcmcjpeg"), "+e1", str(path), str(jpegs[-1])], check=True, timeout=30)
    assert dcmread(jpegs[0]).file_meta.TransferSyntaxUID == JPEGLosslessSV1
    profile = tmp_path / "only-jpeg.cfg"
    profile.write_text(_ONLY_JPEG_LOSSLESS)
    env = without_codecs("libjpeg")  # the node's process: pylibjpeg-libjpeg cannot be imported
    for name in ("PYTHONPATH", "DENOISE_TEST_WITHOUT_CODECS"):
        monkeypatch.setenv(name, env[name])
    node = NodeProcess(tmp_path, tiny_model, [{"ae_title": "PACS", "port": dcmtk_pacs.port}], log_level="INFO")
    node.start()
    try:
        result = storescu(jpegs, node.port, "DENOISE", propose_file_syntaxes=False,
                          extra_args=["-xf", str(profile), "ONLY"])  # fmt: skip
        assert result.returncode == 0, result.stdout + result.stderr
        series_uid = str(dcmread(plain[0]).SeriesInstanceUID)
        assert node.wait_state(series_uid, SeriesState.SENT, timeout=180), node.log()[-3000:]
        derived = dcmtk_pacs.wait_for_files(2, timeout=30)
        cat = node.catalog()
        try:
            with cat.db.session() as s:
                syntaxes = {str(i.transfer_syntax) for i in s.query(Instance)}
        finally:
            cat.close()
    finally:
        assert node.stop() == 0
    assert syntaxes == {str(JPEGLosslessSV1)}  # stored as it came, decoded by the worker
    assert {str(dcmread(p).SourceImageSequence[0].ReferencedSOPInstanceUID) for p in derived} == {
        str(dcmread(p).SOPInstanceUID) for p in plain
    }
    log = node.log()
    assert "decoded by the plugins gdcm" in log and "decoded by the plugins gdcm, pylibjpeg" not in log
    assert "not accepted by the SCP" not in log and "Traceback" not in log
