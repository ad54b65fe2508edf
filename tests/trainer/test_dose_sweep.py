"""The dose sweep (`denoise-node evaluate --dose-sweep`): calibrated LD levels on fixed anatomy, output noise ÷ HD noise
measured with known denoisers, and the command's JSON and plot. Small: 64² phantoms, 3 levels."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

from denoise_trainer.evaluate.baselines import identity
from denoise_trainer.evaluate.dose_plot import BAND_FILL, COLOURS
from denoise_trainer.evaluate.dose_sweep import CALIBRATION_TOLERANCE, SweepOptions, scan_sweep, score_method
from dicom_denoise_node.cli import app

LEVELS = (15.0, 30.0, 60.0)
BUNDLED = Path(__file__).parents[2] / "dicom_denoise_node" / "model" / "bundled"


@pytest.fixture(scope="module")
def scans():
    return scan_sweep(SweepOptions(levels_hu=LEVELS, patients=2, slices=2, size=64))


def test_calibration_reaches_each_requested_level_on_every_patient(scans):
    assert [s.body_part for s in scans] == ["abdomen", "chest"]
    for s in scans:
        for requested, measured in zip(LEVELS, s.measured_hu, strict=True):
            assert measured == pytest.approx(requested, rel=CALIBRATION_TOLERANCE)
        assert s.i0[0] > s.i0[1] > s.i0[2]  # more noise, less dose
        assert s.hd_noise_hu < LEVELS[0]


def test_identity_ratio_is_ld_noise_over_hd_noise_rising_with_the_level(scans):
    rows = score_method(identity, scans, LEVELS)
    ratios = [r["ratio"] for r in rows]
    for k, row in enumerate(rows):
        expected = np.mean([s.measured_hu[k] / s.hd_noise_hu for s in scans])
        assert row["ratio"] == pytest.approx(expected, rel=1e-9)
        assert row["output_noise_hu"] == pytest.approx(row["measured_ld_hu"], rel=1e-9)
        assert np.isfinite(row["bias_soft_hu"]) and np.isfinite(row["bias_fat_hu"])  # (few counts: a log bias)
    assert 1.0 < ratios[0] < ratios[1] < ratios[2]


def test_a_perfect_denoiser_has_no_output_noise(scans):
    truth = {id(ld): s.refs[i] for s in scans for level in s.lds for i, ld in enumerate(level)}
    rows = score_method(lambda lds: [truth[id(x)] for x in lds], scans, LEVELS)
    for row in rows:
        assert row["ratio"] < 1e-6 and row["rmse_hu"] < 1e-4
        assert row["hd_noise_hu"] > 0


def test_the_command_writes_json_table_and_plot_one_line_per_model(tmp_path):
    out = tmp_path / "sweep"
    args = ["evaluate", "--dose-sweep", "--sweep-size", "64", "--sweep-levels", "15,40", "--sweep-patients", "1"]
    args += ["--sweep-slices", "1", "--device", "cpu", "--out-dir", str(out), "--sweep-nlm-h", "5"]
    args += ["--model", str(BUNDLED / "cyclegan-ld2hd-synthetic.json")]
    args += ["--model", str(BUNDLED / "paired-ld2hd-synthetic.json")]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    data = json.loads((out / "dose_sweep.json").read_text())
    names = list(data["methods"])
    assert names[0] == "LD" and names[-1] == "nlm (h = 5 x sigma)" and len(names) == 4
    assert names[1].startswith("cyclegan-ld2hd-synthetic") and names[2].startswith("paired-ld2hd-synthetic")
    assert data["methods"][names[2]]["self_ensemble"] == 8  # the paired model's own setting, as the node runs it
    for method in data["methods"].values():
        assert [round(r["requested_ld_hu"]) for r in method["levels"]] == [15, 40]
        for row in method["levels"]:
            assert {"measured_ld_hu", "output_noise_hu", "hd_noise_hu", "ratio", "rmse_hu", "bias_hu"} <= set(row)
            assert set(row["patients"]) == {"SWEEP01"}
    assert "| 15 HU |" in (out / "dose_sweep.md").read_text() and "dose_sweep.png" in result.output
    plot = np.asarray(Image.open(out / "dose_sweep.png").convert("RGB")).reshape(-1, 3)
    colours = {tuple(c) for c in np.unique(plot, axis=0)}
    assert BAND_FILL in colours and {COLOURS[0], COLOURS[1], COLOURS[2]} <= colours  # band, and three lines


def test_several_models_only_with_the_sweep(tmp_path):
    args = ["evaluate", "--model", "a.json", "--model", "b.json", "--out-dir", str(tmp_path)]
    result = CliRunner().invoke(app, args)
    text = " ".join(result.output.replace("│", " ").split())  # rich wraps the message in a box
    assert result.exit_code == 2 and "several only with --dose-sweep" in text
