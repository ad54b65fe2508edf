"""The quality report reads well in a normal viewer: a summary first, then the per-slice figures in one container
(a text table, and a reference to each flagged slice), a few dozen content items for a series of any length.
Rendered by dcmtk's SR renderer (dsr2html) and shown by Orthanc; dciodvfy-clean."""

from __future__ import annotations

import re
import subprocess
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from pydicom import dcmread
from pydicom.dataset import Dataset

from dicom_denoise_node.config import DeriveSettings
from dicom_denoise_node.denoise.derive import DerivationInfo, derive_instance, encode
from dicom_denoise_node.denoise.guard import SliceVerdict
from dicom_denoise_node.denoise.quality_report import ReportInput, build_report, header_only
from tests.peers import dciodvfy, require, write_ct_series

SLICES = 120
FLAGGED = (3, 50)  # 0-based: slices 4 and 51
NOTICE = "NOT FOR DIAGNOSIS: denoised by a model trained on simulated CT only"
SITE = "Denoised by software; not for primary diagnosis."


@pytest.fixture(scope="module")
def report(tmp_path_factory) -> Path:
    """The report of a 120-slice series (8×8 pixels: the report reads headers only) at strength 0.5, rule chest."""
    out = tmp_path_factory.mktemp("report")
    info = DerivationInfo("cyclegan-ld2hd-synthetic", "1.1.0", DeriveSettings(), strength=0.5, rule="chest",
                          model_notice=NOTICE)  # fmt: skip
    slices = []
    for k, path in enumerate(write_ct_series(out / "src", SLICES, rows=8, columns=8)):
        source = dcmread(path)
        derived = derive_instance(source, np.zeros((8, 8), np.float32), "2.25.99", info)
        why = ["1 structure(s) in the residual (largest 22 HU)"] if k in FLAGGED else []
        verdict = SliceVerdict(1.2, len(why), 22.0 if why else 0.0, 0.1, 0, 30.0 + k % 3, 9.5, why)
        slices.append((header_only(source), header_only(derived), verdict))
    data = ReportInput(str(source.SeriesInstanceUID), "2.25.99", info, [info.notice, SITE], "mark", slices)
    path = out / "report.dcm"
    path.write_bytes(encode(build_report(data, manufacturer="test")))
    return path


def walk(items: list[Dataset]) -> Iterator[Dataset]:
    for item in items:
        yield item
        yield from walk(item.get("ContentSequence", []))


def test_a_summary_first_then_one_container_of_per_slice_figures(report):
    sr = dcmread(report)
    assert sr.SeriesNumber == 2001 and sr.SeriesDescription == "CT DN cyclegan-ld2hd-synthetic 1.1.0 s0.5 report"
    summary, per_slice = sr.ContentSequence  # two containers under the title, the summary first
    assert summary.ConceptNameCodeSequence[0].CodeMeaning == "Summary"
    texts = {i.ConceptNameCodeSequence[0].CodeMeaning: str(i.get("TextValue", "")) for i in summary.ContentSequence}
    assert [str(i.TextValue) for i in summary.ContentSequence[:2]] == [NOTICE, SITE]  # the notices lead
    assert texts["Algorithm Name"] == "cyclegan-ld2hd-synthetic (CycleGAN generator)"
    assert texts["Algorithm Version"] == "1.1.0" and texts["Routing rule"] == "chest"
    assert texts["Consistency guard verdict"] == (
        f"2 of {SLICES} slices flagged (slices 4, 51); they are marked in ImageComments"
    )
    content = list(walk(sr.ContentSequence))
    assert len(content) <= 25  # one container per slice made 6 items per slice: 720 here
    (table,) = [str(i.TextValue) for i in per_slice.ContentSequence if i.ValueType == "TEXT"]
    rows = table.split("\r\n")
    assert len(rows) == 1 + SLICES and rows[0].startswith("slice")
    assert "structure(s) in the residual" in rows[4] and rows[5].endswith("passed")
    flagged = [i for i in per_slice.ContentSequence if i.ValueType == "IMAGE"]
    assert len(flagged) == len(FLAGGED)
    require("dciodvfy")
    errors, _ = dciodvfy(report)
    assert errors == [], errors


def test_dcmtk_renders_the_summary_before_the_table(report):
    """dsr2html, dcmtk's SR renderer: the notices, model and verdict come before the first row of the table."""
    exe = require("dsr2html")
    result = subprocess.run([exe, str(report)], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    text = re.sub(r"<[^>]+>", " ", result.stdout)
    positions = [text.find(s) for s in (NOTICE, SITE, "cyclegan-ld2hd-synthetic (CycleGAN", "2 of 120 slices flagged")]
    first_row = text.find("1 structure(s) in the residual")
    assert -1 not in positions and positions == sorted(positions) and positions[-1] < first_row


@pytest.mark.e2e
def test_orthanc_shows_the_summary_and_keeps_the_table(report, orthanc_factory):
    """Orthanc's content tree (what Orthanc Explorer shows): the summary's text in full, few items; the table, longer
    than the 256 characters Orthanc's JSON shows by default, is stored whole (asked for with ignore-length)."""
    orthanc = orthanc_factory()
    uploaded = orthanc.upload(report)
    tags = orthanc.get(f"/instances/{uploaded['ID']}/simplified-tags")
    summary, per_slice = tags["ContentSequence"]
    texts = [i.get("TextValue") for i in summary["ContentSequence"] if i["ValueType"] == "TEXT"]
    assert texts[:2] == [NOTICE, SITE] and all(texts)
    assert f"2 of {SLICES} slices flagged (slices 4, 51); they are marked in ImageComments" in texts

    def count(items: list[dict]) -> int:
        return sum(1 + count(i.get("ContentSequence", [])) for i in items)

    assert count(tags["ContentSequence"]) <= 25
    full = orthanc.get(f"/instances/{uploaded['ID']}/simplified-tags?ignore-length=TextValue")
    table = full["ContentSequence"][1]["ContentSequence"][0]["TextValue"]
    assert len(table.split("\r\n")) == 1 + SLICES
    series = orthanc.get(f"/series/{uploaded['ParentSeries']}")["MainDicomTags"]
    assert series["SeriesNumber"] == "2001" and series["SeriesDescription"].endswith("s0.5 report")


def test_the_demo_reads_the_summary(report):
    from denoise_demo.report import summarise_report

    line = summarise_report([dcmread(report)])
    assert (
        line == "quality report (SR) in the PACS: 2 slice(s) flagged by the consistency guard; noise in flat "
        "regions 31.0 → 9.5 HU"
    )
