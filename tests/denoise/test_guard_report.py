"""Clinical safety: the consistency guard passes good denoising and flags removed or added structures, and the
quality report (Comprehensive SR) is valid DICOM that references the right series."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from pydicom import dcmread
from torch import nn

from dicom_denoise_node.config import DeriveSettings, GuardSettings, ModelSettings, ReportSettings
from dicom_denoise_node.denoise.decode import file_hu
from dicom_denoise_node.denoise.derive import derived_series_uid
from dicom_denoise_node.denoise.guard import check_slice
from dicom_denoise_node.denoise.series import SeriesDenoiser
from dicom_denoise_node.model.registry import load_model
from tests.peers import dciodvfy, require


def _hu(path: Path) -> np.ndarray:
    return file_hu(path)


@pytest.fixture(scope="module")
def abdomen(abdomen_patient):
    return abdomen_patient


def _disk(shape: tuple[int, int], center: tuple[float, float], radius: float) -> np.ndarray:
    yy, xx = np.mgrid[: shape[0], : shape[1]]
    return (xx - center[0]) ** 2 + (yy - center[1]) ** 2 <= radius**2


def test_guard_passes_good_denoising(abdomen):
    directory, _ = abdomen
    settings = GuardSettings()
    for i in (1, 2):
        ld = _hu(directory / "LD" / f"{i:04d}.dcm")
        for good in ("REF", "HD"):  # the noise-free reconstruction and a 4× dose acquisition of the same slice
            verdict = check_slice(ld, _hu(directory / good / f"{i:04d}.dcm"), settings)
            assert not verdict.flagged, (good, i, verdict)
        ref_verdict = check_slice(ld, _hu(directory / "REF" / f"{i:04d}.dcm"), settings)
        assert ref_verdict.noise_after < 0.5 * ref_verdict.noise_before  # flat regions found, noise measured


def test_guard_flags_a_painted_out_lesion_and_an_added_structure(abdomen):
    directory, truth = abdomen
    settings = GuardSettings()
    # The most conspicuous lesion of the two slices: the one a bad model must not be allowed to remove unnoticed.
    candidates = [
        (abs(les["contrast_hu"]) * les["radius_px"], s["slice_index"], les)
        for s in truth["slices"]
        for les in s["lesions"]
    ]
    _, index, lesion = max(candidates, key=lambda c: c[0])
    assert abs(lesion["contrast_hu"]) >= 15 and lesion["radius_px"] >= 4, lesion
    ld = _hu(directory / "LD" / f"{index:04d}.dcm")
    ref = _hu(directory / "REF" / f"{index:04d}.dcm")
    inside = _disk(ref.shape, lesion["center_px"], lesion["radius_px"] + 1)
    ring = _disk(ref.shape, lesion["center_px"], lesion["radius_px"] + 5) & ~inside
    painted = ref.copy()
    painted[inside] = np.median(ref[ring])  # "bad model": perfect denoising, lesion gone
    verdict = check_slice(ld, painted, settings)
    assert verdict.blobs >= 1 and verdict.flagged, verdict
    assert not check_slice(ld, ref, settings).flagged  # the same slice with the lesion kept passes

    added = ref.copy()
    body = np.argwhere(np.abs(ref - 50) < 30)  # soft tissue
    cy, cx = body[len(body) // 2]
    added[_disk(ref.shape, (float(cx), float(cy)), 5)] += 40.0  # "bad model": invents a 40 HU nodule
    assert check_slice(ld, added, settings).blobs >= 1

    out_of_range = ref.copy()
    out_of_range[10, 10] = -3000.0
    assert "outside" in check_slice(ld, out_of_range, settings).summary()


class _PaintOut(nn.Module):
    """A "bad model" for the worker: returns its input with a 24×24 square set to the window's floor."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = x.clone()
        h, w = y.shape[-2:]
        y[..., h // 2 - 12 : h // 2 + 12, w // 2 - 12 : w // 2 + 12] = -1.0
        return y


def images_written(result) -> list[Path]:  # noqa: ANN001
    return [Path(p) for _, src, p in result.written if src]


def _paint_out_denoiser(model: Path, guard: GuardSettings, report: ReportSettings) -> SeriesDenoiser:
    _, info = load_model(model)
    return SeriesDenoiser(
        _PaintOut(), info, ModelSettings(tile_size=128, tile_overlap=16), DeriveSettings(), guard=guard, report=report
    )


def test_worker_marks_flagged_slices_and_writes_a_valid_report(abdomen, tiny_model, tmp_path):
    directory, _ = abdomen
    _, info = load_model(tiny_model)
    denoiser = _paint_out_denoiser(
        tiny_model,
        GuardSettings(),
        ReportSettings(notice="Denoised by software; not for primary diagnosis (test site)."),
    )
    sources = sorted((directory / "LD").glob("*.dcm"))
    source_uid = str(dcmread(sources[0]).SeriesInstanceUID)
    result = denoiser.denoise_series(source_uid, sources, lambda s, o: tmp_path / s / f"{o}.dcm")
    assert len(result.verdicts) == 2 and result.flagged == [0, 1]
    images = images_written(result)
    for path in images:
        assert "Denoising guard flagged this slice" in str(dcmread(path).ImageComments)

    assert result.report_path is not None
    sr = dcmread(result.report_path)
    assert sr.Modality == "SR" and sr.SOPClassUID == "1.2.840.10008.5.1.4.1.1.88.33"  # Comprehensive SR
    assert sr.StudyInstanceUID == dcmread(sources[0]).StudyInstanceUID
    assert sr.SeriesInstanceUID not in (source_uid, result.derived_series_uid)
    evidence = {
        series.SeriesInstanceUID: {i.ReferencedSOPInstanceUID for i in series.ReferencedSOPSequence}
        for study in sr.CurrentRequestedProcedureEvidenceSequence
        for series in study.ReferencedSeriesSequence
    }
    assert evidence[source_uid] == {str(dcmread(p).SOPInstanceUID) for p in sources}
    assert evidence[result.derived_series_uid] == {str(dcmread(p).SOPInstanceUID) for p in images}

    def walk(items):  # noqa: ANN001, ANN202
        for item in items:
            yield item
            yield from walk(item.get("ContentSequence", []))

    content = list(walk(sr.ContentSequence))
    texts = [str(i.TextValue) for i in content if i.ValueType == "TEXT"]
    uids = {str(i.UID) for i in content if i.ValueType == "UIDREF"}
    assert "Denoised by software; not for primary diagnosis (test site)." in texts
    assert f"{info.name} ({info.kind})" in texts and info.version in texts and "mark" in texts
    assert uids == {source_uid, result.derived_series_uid}
    (table,) = [t for t in texts if t.startswith("slice")]
    assert table.count("structure(s) in the residual") == 2  # one row per slice
    flagged = [i for i in content if i.ValueType == "NUM" and i.ConceptNameCodeSequence[0].CodeValue == "FLAGGED"]
    assert float(flagged[0].MeasuredValueSequence[0].NumericValue) == 2
    images = {str(i.ReferencedSOPSequence[0].ReferencedSOPInstanceUID) for i in content if i.ValueType == "IMAGE"}
    assert images == {str(dcmread(p).SOPInstanceUID) for p in images_written(result)}  # the flagged slices
    require("dciodvfy")
    errors, _ = dciodvfy(result.report_path)
    assert errors == [], errors


@pytest.mark.e2e
def test_node_holds_a_flagged_series_then_retry_sends_it_with_its_report(tmp_path, tiny_model, dcmtk_pacs):
    """The tiny random test model scrambles HU, so the guard flags every slice; policy "hold" keeps the series
    FAILED for review, and `retry` (the reviewer's decision) sends images and report as they are."""
    import subprocess
    import sys

    from denoise_harness.node import NodeProcess
    from dicom_denoise_node.store.catalog import SeriesState
    from tests.peers import storescu, write_ct_series

    files = write_ct_series(tmp_path / "in", 3, rows=64, columns=64)
    uid = str(dcmread(files[0]).SeriesInstanceUID)
    node = NodeProcess(
        tmp_path,
        tiny_model,
        [{"ae_title": "PACS", "port": dcmtk_pacs.port}],
        extra='[guard]\npolicy = "hold"\n',
        report=True,
    ).start()
    try:
        assert storescu(files, node.port, "DENOISE").returncode == 0
        assert node.wait_state(uid, SeriesState.FAILED, timeout=120), node.log()[-3000:]
        cat = node.catalog()
        try:
            row = next(r for r in cat.views.series_overview() if r["series_uid"] == uid)
        finally:
            cat.close()
        assert "held for review" in row["last_error"] and row["derived"] == 3
        assert dcmtk_pacs.files() == []  # nothing left the node
        retry = subprocess.run(
            [sys.executable, "-m", "dicom_denoise_node", "retry", uid, "-c", str(node.config)],
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert retry.returncode == 0 and "state=DERIVED" in retry.stdout, retry.stderr
        assert node.wait_state(uid, SeriesState.SENT, timeout=120), node.log()[-3000:]
        received = dcmtk_pacs.wait_for_files(4, timeout=30)
    finally:
        node.stop()
    modalities = sorted(dcmread(p, stop_before_pixels=True).Modality for p in received)
    assert modalities == ["CT", "CT", "CT", "SR"]
    assert "flagged" in node.log()


def test_worker_skips_the_guard_when_neither_guard_nor_report_wants_it(abdomen, tiny_model, tmp_path):
    directory, _ = abdomen
    denoiser = _paint_out_denoiser(tiny_model, GuardSettings(enabled=False), ReportSettings(enabled=False))
    sources = sorted((directory / "LD").glob("*.dcm"))
    result = denoiser.denoise_series("1.2.3", sources, lambda s, o: tmp_path / s / f"{o}.dcm")
    assert result.verdicts == [] and result.flagged == [] and result.report_path is None
    assert result.images == len(result.written) == 2


def test_report_warm_up_runs_once_at_start_when_reports_are_on(tiny_model, monkeypatch):
    """highdicom's first report in a process costs ≈ 0.6 s of set-up: the worker pays it when it is built."""
    from dicom_denoise_node.denoise import quality_report
    from dicom_denoise_node.denoise import series as process

    quality_report.warm_up()  # the real one: builds a report from made-up data sets without error
    calls: list[int] = []
    monkeypatch.setattr(process, "warm_up", lambda: calls.append(1))
    _paint_out_denoiser(tiny_model, GuardSettings(), ReportSettings())
    assert calls == [1]
    _paint_out_denoiser(tiny_model, GuardSettings(), ReportSettings(enabled=False))
    assert calls == [1]


def test_strength_blends_source_and_model_output_and_is_recorded(abdomen, tiny_model, tmp_path):
    """[model] strength s: output = input + s·(model − input) in HU, named in DerivationDescription and the SR
    report, and a strength other than 1 is another derived series (its own UIDs)."""
    directory, _ = abdomen
    _, info = load_model(tiny_model)
    sources = sorted((directory / "LD").glob("*.dcm"))[:1]
    source_uid = str(dcmread(sources[0]).SeriesInstanceUID)
    outputs = {}
    for s in (1.0, 0.5, 0.0):
        denoiser = SeriesDenoiser(
            _PaintOut(),
            info,
            ModelSettings(tile_size=128, tile_overlap=16, strength=s),
            DeriveSettings(),
            guard=GuardSettings(enabled=False),
            report=ReportSettings(),
        )
        result = denoiser.denoise_series(source_uid, sources, lambda u, o, s=s: tmp_path / str(s) / u / f"{o}.dcm")
        (image,) = [Path(p) for _, src, p in result.written if src]
        ds = dcmread(image)
        outputs[s] = (ds, result)
        assert f"at strength {s:g}" in ds.DerivationDescription
        sr = dcmread(result.report_path)
        summary = sr.ContentSequence[0]  # the summary comes first
        strengths = [
            float(i.MeasuredValueSequence[0].NumericValue)
            for i in summary.ContentSequence
            if i.ValueType == "NUM" and i.ConceptNameCodeSequence[0].CodeValue == "STRENGTH"
        ]
        assert strengths == [s]
    source_hu = dcmread(sources[0]).pixel_array.astype(np.float64) - 1024
    full, half, none = (outputs[s][0].pixel_array.astype(np.float64) - 1024 for s in (1.0, 0.5, 0.0))
    np.testing.assert_array_equal(none, source_hu)  # strength 0 gives the source back
    assert np.abs(full - source_hu).max() > 500  # the painted square is there at full strength
    np.testing.assert_allclose(half, 0.5 * (source_hu + full), atol=1.0)  # HU rounding on both sides
    series = {s: r.derived_series_uid for s, (_, r) in outputs.items()}
    assert len(set(series.values())) == 3
    assert series[1.0] == derived_series_uid(source_uid, info.version)  # full strength keeps earlier UIDs
