"""The GPL JPEG codec is optional: without it JPEG Lossless is refused clearly, at the SCP and in the worker."""

from __future__ import annotations

import json
import subprocess
import sys

from pydicom.uid import JPEGLossless, JPEGLosslessSV1

from dicom_denoise_node.codecs import GPL_EXTRA, decodable_transfer_syntaxes, missing_codec
from tests.peers import require, write_ct_series

_WITHOUT_GPL_CODEC = """
import json, logging, sys
from importlib import metadata
# As if pylibjpeg-libjpeg (GPL-3.0) were not installed: no module, and no pylibjpeg plugin entry points of it.
sys.modules["libjpeg"] = None
_entry_points = metadata.entry_points
def _without_libjpeg(**kw):
    return metadata.EntryPoints(ep for ep in _entry_points(**kw) if not ep.value.startswith("libjpeg"))
metadata.entry_points = _without_libjpeg
logging.basicConfig(level=logging.WARNING, stream=sys.stderr, format="%(levelname)s %(message)s")
from pathlib import Path
from dicom_denoise_node.codecs import decodable_transfer_syntaxes
from dicom_denoise_node.config import NodeSettings
from dicom_denoise_node.denoise.decode import scan_series
from dicom_denoise_node.receive.scp import build_ae

ae = build_ae(NodeSettings())
offered = {str(ts) for ctx in ae.supported_contexts for ts in ctx.transfer_syntax}
refs, skipped = scan_series([Path(sys.argv[1])])
print(json.dumps({"decodable": decodable_transfer_syntaxes(), "offered": sorted(offered),
                  "refs": len(refs), "skipped": [s.reason for s in skipped]}))
"""


def test_with_the_codec_jpeg_lossless_is_accepted():
    assert {str(JPEGLossless), str(JPEGLosslessSV1)} <= set(decodable_transfer_syntaxes())
    assert missing_codec(str(JPEGLosslessSV1)) is None


def test_without_the_gpl_codec_jpeg_lossless_is_refused_with_the_reason(tmp_path):
    (plain,) = write_ct_series(tmp_path / "plain", 1)
    jpeg = tmp_path / "jpeg.dcm"
    subprocess.run([require("dcmcjpeg"), str(plain), str(jpeg)], check=True, timeout=30)  # dcmtk: SV1 by default
    result = subprocess.run(
        [sys.executable, "-c", _WITHOUT_GPL_CODEC, str(jpeg)], capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 0, result.stderr
    out = json.loads(result.stdout)
    assert str(JPEGLosslessSV1) not in out["decodable"] and str(JPEGLosslessSV1) not in out["offered"]
    assert str(JPEGLossless) not in out["offered"]
    assert "1.2.840.10008.1.2.1" in out["offered"]  # scanners fall back to an uncompressed syntax
    hint = f"pip install 'dicom-denoise-node[{GPL_EXTRA}]'"
    assert out["refs"] == 0 and len(out["skipped"]) == 1
    assert "pylibjpeg-libjpeg (GPL-3.0)" in out["skipped"][0] and hint in out["skipped"][0]
    assert "not accepted by the SCP: JPEG Lossless" in result.stderr and hint in result.stderr
