"""Passing originals on, in parts: the rule key checked at load, what the SCP negotiates for it, where originals go,
and the SCU sending each file in its own transfer syntax (decompressed for a destination that refuses it) with no
optional class (a refused dose report is an error)."""

from __future__ import annotations

import subprocess

import pytest
from pydicom import dcmread
from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian, JPEGLosslessSV1, XRayRadiationDoseSRStorage

from dicom_denoise_node.complete.routing import originals_destinations_for
from dicom_denoise_node.config import ConfigError, Destination, NodeSettings, Settings, load_settings
from dicom_denoise_node.receive.scp import build_ae
from dicom_denoise_node.send.scu import SendError, send_files
from tests.node.test_forward_originals import dose_report
from tests.peers import LOOPBACK, require, write_ct_series

DESTINATIONS = [{"ae_title": "PACS", "host": LOOPBACK, "port": 104, "name": "pacs"},
                {"ae_title": "ARCH", "host": LOOPBACK, "port": 105, "name": "archive"}]  # fmt: skip


def test_forward_originals_names_destinations_and_opens_the_scp_to_dose_reports(tmp_path):
    plain = Settings(destinations=DESTINATIONS, rules=[{"name": "a"}])
    assert plain.forward_only_sop_classes == ()
    assert XRayRadiationDoseSRStorage not in _offered(plain)
    rules = [{"name": "a", "forward_originals": ["pacs"]}, {"name": "b", "forward_originals": ["archive"]},
             {"name": "c"}]  # fmt: skip
    forwarding = Settings(destinations=DESTINATIONS, rules=rules)
    assert XRayRadiationDoseSRStorage in _offered(forwarding)
    assert [d.key for d in originals_destinations_for(forwarding, "a")] == ["pacs"]
    assert originals_destinations_for(forwarding, "c") == []  # a rule that does not forward
    assert [d.key for d in originals_destinations_for(forwarding, "")] == ["pacs", "archive"]  # a dose report
    path = tmp_path / "node.toml"
    path.write_text('[[destinations]]\nname = "pacs"\nae_title = "P"\nhost = "h"\nport = 1\n'
                    '[[rules]]\nname = "a"\nforward_originals = ["pcas"]\n')  # fmt: skip
    with pytest.raises(ConfigError, match=r"rules\[0\]\.forward_originals: pcas not among the \[\[destinations\]\]"):
        load_settings(path)


def test_a_compressed_original_goes_as_it_is_or_decompressed_and_a_refused_class_is_an_error(
    tmp_path, storescp_factory
):
    (plain,) = write_ct_series(tmp_path / "ct", 1, rows=32, columns=32)
    jpeg = tmp_path / "jpeg.dcm"
    subprocess.run([require("dcmcjpeg"), "+e1", str(plain), str(jpeg)], check=True, timeout=30)
    anything = storescp_factory("ANY")
    assert send_files([jpeg], _dest(anything), "DENOISE", optional_classes=()) == 1
    (got,) = anything.wait_for_files(1)
    assert dcmread(got).file_meta.TransferSyntaxUID == JPEGLosslessSV1  # as it came
    uncompressed_only = storescp_factory("RAW", accept_only=[CTImageStorage])
    assert send_files([jpeg], _dest(uncompressed_only), "DENOISE", optional_classes=()) == 1
    (got,) = uncompressed_only.wait_for_files(1)
    assert dcmread(got).file_meta.TransferSyntaxUID == ExplicitVRLittleEndian  # decompressed: lossless, the same
    assert (dcmread(got).pixel_array == dcmread(plain).pixel_array).all()
    sr = dose_report(tmp_path / "dose.dcm", plain)
    with pytest.raises(SendError, match=f"RAW accepts no presentation context for {XRayRadiationDoseSRStorage}"):
        send_files([plain, sr], _dest(uncompressed_only), "DENOISE", optional_classes=())


def _offered(settings: Settings) -> set[str]:
    ae = build_ae(NodeSettings(), settings.forward_only_sop_classes)
    return {str(cx.abstract_syntax) for cx in ae.supported_contexts}


def _dest(scp) -> Destination:
    return Destination(ae_title=scp.ae_title, host=LOOPBACK, port=scp.port, name=scp.ae_title)
