"""End to end: series a radiologist can tell apart. One received series that two routing rules with different
strengths take (the first falls through) arrives in Orthanc as two derived series and two reports, every one with
its own SeriesNumber, and descriptions that say the strength."""

from __future__ import annotations

import io

import pytest
from pydicom import dcmread

from denoise_harness.node import NodeProcess
from dicom_denoise_node.denoise.derive import derivation_key, derived_series_uid
from dicom_denoise_node.model.registry import read_metadata
from dicom_denoise_node.store.catalog import SeriesState
from tests.peers import storescu, write_ct_series

pytestmark = pytest.mark.e2e

RULES = """
[[rules]]
name = "soft"
strength = 0.5
fall_through = true

[[rules]]
name = "full"
strength = 1.0
"""


def test_two_rules_with_different_strengths_give_two_series_with_distinct_numbers(tmp_path, tiny_model, orthanc_pacs):
    files = write_ct_series(tmp_path / "in", 3, rows=64, columns=64)
    source = dcmread(files[0])
    source_uid = str(source.SeriesInstanceUID)
    version = read_metadata(tiny_model).version
    node = NodeProcess(tmp_path, tiny_model, [{"ae_title": orthanc_pacs.aet, "port": orthanc_pacs.dicom_port}],
                       extra=RULES, report=True)  # fmt: skip
    node.start(timeout=180)  # a hang guard wide enough for a loaded 2-core machine; nothing is timed
    try:
        assert storescu(files, node.port, "DENOISE").returncode == 0
        assert node.wait_state(source_uid, SeriesState.SENT, timeout=180), node.log()[-4000:]
        soft = orthanc_pacs.wait_for_series(derived_series_uid(source_uid, derivation_key(version, 0.5)), 3)
        full = orthanc_pacs.wait_for_series(derived_series_uid(source_uid, derivation_key(version, 1.0)), 3)
    finally:
        assert node.stop() == 0
    tags = [s["MainDicomTags"] for s in orthanc_pacs.series()]
    assert len(tags) == 4  # two derived CT series and their two reports, nothing else
    derived = {t["SeriesDescription"]: int(t["SeriesNumber"]) for t in tags if t["Modality"] == "CT"}
    reports = {t["SeriesDescription"]: int(t["SeriesNumber"]) for t in tags if t["Modality"] == "SR"}
    name = f"tiny-random {version}"
    assert derived == {f"CT DN {name} s0.5": 1001, f"CT DN {name} s1": 3001}  # source 1: first and second derivation
    assert reports == {f"CT DN {name} s0.5 report": 2001, f"CT DN {name} s1 report": 4001}
    numbers = [int(source.SeriesNumber), *derived.values(), *reports.values()]
    assert len(set(numbers)) == len(numbers) == 5
    instance = orthanc_pacs.series_instances(soft["ID"])[0]
    ds = dcmread(io.BytesIO(orthanc_pacs.instance_file(instance["ID"])), stop_before_pixels=True)
    assert "at strength 0.5 for routing rule soft" in ds.DerivationDescription
    assert full["ID"] != soft["ID"]
