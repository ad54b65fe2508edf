"""JPEG Lossless is decoded by a plain install (GDCM, BSD); the GPL codec is optional. Without any JPEG Lossless
decoder it is refused clearly, at the SCP and in the worker.

CI has the GPL extra installed, so these tests run their code in a child Python whose start-up
(tests/without_codecs/sitecustomize.py) makes the codecs named in $DENOISE_TEST_WITHOUT_CODECS unimportable."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
from pydicom.uid import JPEGLossless, JPEGLosslessSV1

from dicom_denoise_node.codecs import GPL_EXTRA, decodable_transfer_syntaxes, missing_codec
from dicom_denoise_node.denoise.decode import file_hu
from tests.peers import require, write_ct_series

BLOCKER = Path(__file__).parents[1] / "without_codecs"

_CHILD = """
import importlib.util, json, logging, sys
logging.basicConfig(level=logging.INFO, stream=sys.stderr, format="%(levelname)s %(message)s")
from pathlib import Path
from dicom_denoise_node.codecs import decodable_transfer_syntaxes
from dicom_denoise_node.config import NodeSettings
from dicom_denoise_node.denoise.decode import file_hu, scan_series
from dicom_denoise_node.receive.scp import build_ae

def importable(name):
    try:
        __import__(name)
        return True
    except ImportError:
        return False

ae = build_ae(NodeSettings())
offered = {str(ts) for ctx in ae.supported_contexts for ts in ctx.transfer_syntax}
files = [Path(p) for p in sys.argv[1:]]
refs, skipped = scan_series(files)
hu = [file_hu(f).tolist() for f in files] if refs else []
print(json.dumps({"decodable": decodable_transfer_syntaxes(), "offered": sorted(offered), "refs": len(refs),
                  "skipped": [s.reason for s in skipped], "hu": hu,
                  "importable": {m: importable(m) for m in ("libjpeg", "gdcm")}}))
"""


def without_codecs(codecs: str) -> dict[str, str]:
    """The environment of a child Python in which ``codecs`` ("libjpeg", "libjpeg,gdcm") cannot be imported."""
    path = os.pathsep.join(p for p in (str(BLOCKER), os.environ.get("PYTHONPATH", "")) if p)
    return {**os.environ, "PYTHONPATH": path, "DENOISE_TEST_WITHOUT_CODECS": codecs}


def jpeg_lossless_pair(directory: Path) -> tuple[Path, list[Path]]:
    """One uncompressed CT slice with negative HU and its JPEG Lossless copies (dcmtk: SV1, and Process 14)."""
    (plain,) = write_ct_series(directory / "plain", 1, rows=32, columns=32)
    out = []
    for option, name in (("+e1", "sv1.dcm"), ("+el", "p14.dcm")):
        subprocess.run([require("dcmcjpeg"), option, str(plain), str(directory / name)], check=True, timeout=30)
        out.append(directory / name)
    return plain, out


def _child(files: list[Path], codecs: str) -> tuple[dict, str]:
    result = subprocess.run(
        [sys.executable, "-c", _CHILD, *map(str, files)],
        capture_output=True,
        text=True,
        timeout=120,
        env=without_codecs(codecs),
    )
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout), result.stderr


def test_with_the_codecs_installed_jpeg_lossless_is_accepted():
    assert {str(JPEGLossless), str(JPEGLosslessSV1)} <= set(decodable_transfer_syntaxes())
    assert missing_codec(str(JPEGLosslessSV1)) is None


def test_without_the_gpl_codec_jpeg_lossless_is_accepted_and_decoded_by_gdcm(tmp_path):
    plain, jpegs = jpeg_lossless_pair(tmp_path)
    out, stderr = _child(jpegs, "libjpeg")
    assert out["importable"] == {"libjpeg": False, "gdcm": True}  # the GPL codec really is absent
    assert {str(JPEGLossless), str(JPEGLosslessSV1)} <= set(out["decodable"]) & set(out["offered"])
    assert out["refs"] == 2 and out["skipped"] == []
    expected = file_hu(plain)
    assert expected.min() < 0  # signed HU through the rescale: a lossless decode gives them back exactly
    for hu in out["hu"]:
        np.testing.assert_array_equal(np.asarray(hu, dtype=np.float32), expected)
    assert "decoded by the plugins gdcm" in stderr and "pylibjpeg" not in stderr
    assert "not accepted by the SCP" not in stderr


def test_without_any_jpeg_lossless_codec_it_is_refused_with_the_reason(tmp_path):
    _, jpegs = jpeg_lossless_pair(tmp_path)
    out, stderr = _child(jpegs[:1], "libjpeg,gdcm")
    assert out["importable"] == {"libjpeg": False, "gdcm": False}
    assert str(JPEGLosslessSV1) not in out["decodable"] and str(JPEGLosslessSV1) not in out["offered"]
    assert str(JPEGLossless) not in out["offered"]
    assert "1.2.840.10008.1.2.1" in out["offered"]  # scanners fall back to an uncompressed syntax
    hints = ("pip install python-gdcm", f"pip install 'dicom-denoise-node[{GPL_EXTRA}]'")
    assert out["refs"] == 0 and len(out["skipped"]) == 1
    assert all(hint in out["skipped"][0] for hint in hints), out["skipped"][0]
    assert "not accepted by the SCP: JPEG Lossless" in stderr and all(hint in stderr for hint in hints)
