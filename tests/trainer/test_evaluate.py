"""Evaluation: metric identities, baselines, flat-region noise, HU bias, reports and montages on small phantoms."""

from __future__ import annotations

import csv
import json
import math
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from rich.table import Table
from scipy import ndimage

from denoise_trainer.archive.physics import simulate_doses
from denoise_trainer.evaluate import baselines
from denoise_trainer.evaluate import comparison as ev
from denoise_trainer.evaluate import image_metrics as metrics
from denoise_trainer.evaluate.montage import INSET_COLOUR, montage_size, patch_montage, save_montage

SIZE = 96
PIXEL_SPACING = 1.5  # mm: a 144 mm field of view, enough attenuation for a clear LD / HD noise gap
BODY_TRUTH_HU = -500.0


def _phantom(size: int, seed: int) -> np.ndarray:
    """Smooth elliptic "body" of soft tissue with a gentle gradient, a fat ellipse, a bone disc and a small lesion."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[:size, :size].astype(np.float64)
    c = (size - 1) / 2.0
    hu = np.full((size, size), -1000.0)
    body = np.hypot((y - c) / 0.8, x - c) < 0.42 * size
    hu[body] = 40.0 + 20.0 * (x[body] - c) / size
    dy, dx = rng.uniform(-0.04, 0.04, 2) * size
    hu[np.hypot(y - c + 0.12 * size + dy, x - c - 0.15 * size) < 0.10 * size] = -100.0
    hu[np.hypot(y - c - 0.15 * size, x - c + dx) < 0.06 * size] = 400.0
    hu[np.hypot(y - c, x - c + 0.2 * size) < 0.03 * size] = 90.0
    return ndimage.gaussian_filter(hu, 1.0).astype(np.float32)


def _slice(seed: int, with_ref: bool = True) -> tuple[metrics.EvalSlice, np.ndarray]:
    """LD / HD / REF from the projection-domain dose simulation (Poisson counts, FBP), seeded; and the truth."""
    truth = _phantom(SIZE, seed)
    scans = simulate_doses(truth, rng=np.random.default_rng(1000 + seed), pixel_spacing=PIXEL_SPACING)
    ref = scans["REF"] if with_ref else None
    return metrics.EvalSlice(f"P{seed}", "abdomen", seed + 1, scans["LD"], scans["HD"], ref), truth


@pytest.fixture(scope="module")
def data() -> tuple[list[metrics.EvalSlice], list[np.ndarray]]:
    pairs = [_slice(seed) for seed in range(3)]
    return [p[0] for p in pairs], [p[1] for p in pairs]


@pytest.fixture(scope="module")
def slices(data: tuple[list[metrics.EvalSlice], list[np.ndarray]]) -> list[metrics.EvalSlice]:
    return data[0]


@pytest.fixture(scope="module")
def val_slices() -> list[metrics.EvalSlice]:
    return [_slice(10)[0]]


def _same(a: float, b: float) -> bool:
    return (math.isnan(a) and math.isnan(b)) or a == b


def test_identity_model_gives_exactly_the_ld_figures(slices: list[metrics.EvalSlice]) -> None:
    report = ev.evaluate(slices, {"model": baselines.identity})
    assert report.methods == ["LD", "model"]
    ld, model = report.method_rows("LD"), report.method_rows("model")
    assert len(ld) == len(model) == len(slices)
    for a, b in zip(ld, model, strict=True):
        for key in ev.METRIC_KEYS:
            if key != "seconds":
                assert _same(a[key], b[key]), key
    assert all(math.isfinite(r["psnr"]) and r["ssim"] < 1.0 for r in ld)


def test_hd_against_hd_is_perfect(slices: list[metrics.EvalSlice]) -> None:
    report = ev.evaluate(slices, {}, include_hd=True)
    for row in report.method_rows("HD"):
        assert row["psnr"] == math.inf and row["psnr_soft"] == math.inf
        assert row["ssim"] == 1.0 and row["ms_ssim"] == 1.0
        assert row["ssim_soft"] == 1.0 and row["ms_ssim_soft"] == 1.0
        assert row["hu_bias_hd"] == 0.0
    hd = next(r for r in report.summary_rows() if r["method"] == "HD")
    assert hd["psnr_mean"] == math.inf and hd["psnr_std"] == 0.0 and hd["ssim_mean"] == 1.0


def test_metric_functions_at_and_near_identity() -> None:
    a = metrics.to_unit_range(_phantom(SIZE, 0))
    assert metrics.psnr(a, a, 2.0) == math.inf and metrics.ssim(a, a, 2.0) == 1.0 and metrics.ms_ssim(a, a, 2.0) == 1.0
    b = a.copy()
    b[40, 40] += 0.01
    assert math.isfinite(metrics.psnr(b, a, 2.0)) and metrics.ssim(b, a, 2.0) < 1.0 and metrics.ms_ssim(b, a, 2.0) < 1.0


def test_ms_ssim_scales_follow_image_size(slices: list[metrics.EvalSlice]) -> None:
    assert metrics.ms_ssim_betas((512, 512)) == metrics.MS_SSIM_BETAS
    small = metrics.ms_ssim_betas((SIZE, SIZE))
    assert len(small) == 3 and sum(small) == pytest.approx(1.0)
    assert len(metrics.ms_ssim_betas((128, 128))) == 4
    report = ev.evaluate(slices[:1], {})
    assert report.ms_ssim_betas == {f"{SIZE}x{SIZE}": list(small)}
    assert report.rows[0]["ms_ssim_scales"] == 3


def test_tuned_classical_baselines_beat_ld(
    slices: list[metrics.EvalSlice], val_slices: list[metrics.EvalSlice]
) -> None:
    assert baselines.tune_gaussian(val_slices, (0.5, 1.0)) in (0.5, 1.0)
    tuned = baselines.classical_baselines(val_slices)
    assert sorted(tuned) == ["gaussian", "nlm"]
    report = ev.evaluate(slices, tuned)
    assert "sigma=" in report.settings["methods"]["gaussian"] and "h=" in report.settings["methods"]["nlm"]
    summary = {r["method"]: r for r in report.summary_rows()}
    for method in ("gaussian", "nlm"):
        assert summary[method]["psnr_mean"] > summary["LD"]["psnr_mean"]
        assert summary[method]["psnr_soft_mean"] > summary["LD"]["psnr_soft_mean"]
        assert summary[method]["noise_std_mean"] < summary["LD"]["noise_std_mean"]
        assert summary[method]["seconds_mean"] > 0.0
    assert summary["LD"]["seconds_mean"] == 0.0


@pytest.mark.parametrize("with_ref", [True, False])
def test_flat_regions_lie_in_the_body_and_ld_is_noisier(
    data: tuple[list[metrics.EvalSlice], list[np.ndarray]], with_ref: bool
) -> None:
    size = metrics.FLAT_SIZE
    for s, truth in zip(*data, strict=True):
        ref = s.ref if with_ref else None
        regions = metrics.find_flat_regions(s.hd, ref)
        assert 1 <= len(regions) <= metrics.FLAT_MAX_REGIONS
        covered = np.zeros(truth.shape, dtype=int)
        for y, x in regions:
            assert 0 <= y and 0 <= x and y + size <= SIZE and x + size <= SIZE
            window = truth[y : y + size, x : x + size]
            assert (window > BODY_TRUTH_HU).all()
            assert window.std() < metrics.FLAT_TOL_HU + 2.0  # flat in truth too: no organ, bone or body edge inside
            covered[y : y + size, x : x + size] += 1
        assert covered.max() == 1  # non-overlapping
        assert metrics.noise_std(s.ld, regions, size, ref) > 1.3 * metrics.noise_std(s.hd, regions, size, ref)


def test_hu_bias_of_a_plus_ten_denoiser(slices: list[metrics.EvalSlice]) -> None:
    def plus_ten(images: list[np.ndarray]) -> list[np.ndarray]:
        return [img + np.float32(10.0) for img in images]

    report = ev.evaluate(slices, {"plus10": plus_ten})
    for ld, shifted in zip(report.method_rows("LD"), report.method_rows("plus10"), strict=True):
        assert shifted["hu_bias_hd"] == pytest.approx(ld["hu_bias_hd"] + 10.0, abs=1e-3)
        assert shifted["hu_bias_hd"] == pytest.approx(10.0, abs=1.0)
        assert shifted["hu_bias_ref"] == pytest.approx(10.0, abs=1.0)
        assert shifted["noise_std"] == pytest.approx(ld["noise_std"], rel=1e-4)  # an offset is not noise


def test_a_method_working_in_place_cannot_spoil_the_ld_images(slices: list[metrics.EvalSlice]) -> None:
    def zero_in_place(images: list[np.ndarray]) -> list[np.ndarray]:
        for img in images:
            img[...] = 0.0
        return images

    before = [s.ld.copy() for s in slices]
    report = ev.evaluate(slices, {"zero": zero_in_place, "model": baselines.identity})
    assert all(np.array_equal(s.ld, b) for s, b in zip(slices, before, strict=True))
    assert [r["psnr"] for r in report.method_rows("model")] == [r["psnr"] for r in report.method_rows("LD")]


def test_bad_calls_are_refused(slices: list[metrics.EvalSlice]) -> None:
    no_ref = metrics.EvalSlice("P9", "chest", 1, slices[0].ld, slices[0].hd)
    with pytest.raises(ValueError, match="REF"):
        ev.evaluate([no_ref], {}, reference="REF")
    with pytest.raises(ValueError, match="reserved"):
        ev.evaluate(slices, {"LD": baselines.identity})
    with pytest.raises(ValueError, match="shape"):
        ev.evaluate(slices[:1], {"crop": lambda imgs: [i[:-4] for i in imgs]})


def test_reports_round_trip_as_json_and_csv(slices: list[metrics.EvalSlice], tmp_path: Path) -> None:
    report = ev.evaluate(slices[:2], {"model": baselines.gaussian_denoiser(0.5)}, include_hd=True)
    report.to_json(tmp_path / "eval.json")
    report.to_csv(tmp_path / "eval.csv")

    def no_constants(name: str) -> float:
        raise AssertionError(f"non-standard JSON constant {name}")

    doc = json.loads((tmp_path / "eval.json").read_text(), parse_constant=no_constants)
    assert [r["method"] for r in doc["summary"]] == ["LD", "model", "HD"]
    back = ev.EvalReport.from_json(tmp_path / "eval.json")
    assert back.methods == report.methods and back.reference == "HD" and back.hu_window == report.hu_window
    assert back.ms_ssim_betas == report.ms_ssim_betas
    for a, b in zip(report.rows, back.rows, strict=True):
        assert all(_same(a[k], b[k]) for k in ev.METRIC_KEYS)
    assert back.method_rows("HD")[0]["psnr"] == math.inf

    with (tmp_path / "eval.csv").open(newline="") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == 3 * 2 and list(rows[0]) == list(ev.ROW_KEYS)
    for a, b in zip(report.rows, rows, strict=True):
        assert b["method"] == a["method"] and int(b["instance_number"]) == a["instance_number"]
        assert all(_same(float(b[k]), a[k]) for k in ev.METRIC_KEYS)


def test_render_table_has_a_row_per_method(slices: list[metrics.EvalSlice]) -> None:
    report = ev.evaluate(slices[:1], {"model": baselines.identity}, include_hd=True)
    table = ev.render_table(report)
    assert isinstance(table, Table)
    assert table.row_count == 3
    headers = [str(c.header) for c in table.columns]
    for name in ("PSNR dB", "SSIM", "MS-SSIM", "PSNR soft dB", "SSIM soft", "noise std HU", "s/slice"):
        assert name in headers
    assert list(table.columns[0].cells) == ["LD", "model", "HD"]
    assert "inf" in list(table.columns[1].cells)[2]


def test_save_montage_has_the_expected_size(slices: list[metrics.EvalSlice], tmp_path: Path) -> None:
    s = slices[0]
    columns = {"LD": s.ld, "model": s.ld, "HD": s.hd, "noise-free": s.ref}
    path = tmp_path / "montage.png"
    save_montage(path, columns, inset=(40, 40, 16), zoom=2)
    with Image.open(path) as img:
        assert img.format == "PNG" and img.mode == "RGB"
        assert img.size == montage_size((SIZE, SIZE), n_columns=4, n_rows=2)
        pixels = np.asarray(img)
    assert (pixels == np.array(INSET_COLOUR, dtype=np.uint8)).all(axis=2).any()


def test_patch_montage_has_the_expected_size(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    rows = [[np.tanh(rng.standard_normal((32, 32))) for _ in range(3)] for _ in range(2)]
    path = tmp_path / "patches.png"
    patch_montage(path, rows)
    with Image.open(path) as img:
        assert img.size == montage_size((32, 32), n_columns=3, n_rows=2)
