"""The acceptance figures: bootstrap intervals over patients, the NPS texture figure, and the per-method summary."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from scipy import ndimage

from denoise_trainer.evaluate.image_metrics import EvalSlice
from denoise_trainer.evaluate.scorecard import Scorecard, bootstrap_interval, hf_share, markdown, nps_blocks


def test_bootstrap_interval_brackets_the_mean_and_shrinks_with_agreement():
    mean, lo, hi = bootstrap_interval([1.0, 2.0, 3.0, 4.0])
    assert lo < mean == 2.5 < hi
    assert bootstrap_interval([2.0, 2.0, 2.0]) == (2.0, 2.0, 2.0)
    assert all(np.isnan(bootstrap_interval([])))


def test_texture_figure_sees_over_smoothing():
    rng = np.random.default_rng(0)
    mask = np.ones((128, 128), bool)
    white = rng.normal(0, 10, (128, 128))
    smooth = ndimage.gaussian_filter(white, 1.5) * 5  # same kind of noise, "plastic"
    share_white, share_smooth = hf_share(nps_blocks(white, mask)), hf_share(nps_blocks(smooth, mask))
    assert share_white == pytest.approx(1 - np.pi * 0.25**2, abs=0.05)  # white: power spread evenly
    assert share_smooth < 0.2 * share_white
    assert np.isnan(hf_share(nps_blocks(white, np.zeros_like(mask))))  # no soft tissue region: no figure


def _slices(n_patients: int = 3) -> list[EvalSlice]:
    rng = np.random.default_rng(1)
    out = []
    for p in range(n_patients):
        ref = np.full((96, 96), 40.0)
        ref[:, :10] = -1000.0
        ref[40:60, 40:60] = -100.0  # fat
        hd = ref + rng.normal(0, 10, ref.shape)
        ld = ref + rng.normal(0, 20, ref.shape)
        out.append(EvalSlice(f"P{p}", "abdomen", 1, ld, hd, ref))
    return out


def test_scorecard_ranks_methods_against_ref_per_patient():
    slices = _slices()
    card = Scorecard(slices)
    for i, s in enumerate(slices):
        card.add("LD", i, s.ld)
        card.add("HD", i, s.hd)
        card.add("model", i, s.ref + 0.9 * (s.hd - s.ref) + 5.0)  # HD-like noise, a +5 HU shift
        card.add("plastic", i, ndimage.gaussian_filter(s.ld, 2.0))
    summary = card.summary()
    assert summary["patients"] == 3
    assert summary["LD"]["error_ref_hu"][0] == pytest.approx(20, rel=0.1)
    assert summary["model"]["error_vs_hd"][0] == pytest.approx(0.9, rel=0.02)
    assert summary["model"]["bias_soft_hu"][0] == pytest.approx(5.0, abs=0.5)
    assert summary["model"]["bias_fat_hu"][0] == pytest.approx(5.0, abs=1.0)
    assert summary["model"]["texture_vs_hd"][0] == pytest.approx(1.0, abs=0.05)
    assert summary["plastic"]["texture_vs_hd"][0] < 0.5  # well outside the 0.8–1.2 acceptance band
    assert summary["model"]["guard_flagged"][1] == 3 and "guard_flagged" not in summary["HD"]
    table = markdown(summary)
    assert sum(line.startswith("| ") for line in table.splitlines()) == 1 + 4 and "| plastic |" in table
    assert "Guard catches (added nodule): 3/3" in table
    with pytest.raises(ValueError, match="REF"):
        Scorecard([EvalSlice("P", "x", 1, slices[0].ld, slices[0].hd, None)])


def test_guard_catch_rates_on_tampered_outputs():
    from denoise_trainer.evaluate.lesions import LesionTruth

    rng = np.random.default_rng(2)
    ref = np.full((160, 160), 50.0)
    yy, xx = np.mgrid[:160, :160]
    ref[np.hypot(xx - 50, yy - 50) <= 7] = 20.0  # a −30 HU lesion of 7 px radius
    ld = ref + rng.normal(0, 20, ref.shape)
    hd = ref + rng.normal(0, 10, ref.shape)
    lesion = LesionTruth("P0", 1, 0, "hypodense", "liver", (50.0, 50.0), 7.0, 5.0, -30.0)
    card = Scorecard([EvalSlice("P0", "abdomen", 1, ld, hd, ref)], lesions=[[lesion]])
    card.add("HD", 0, hd)
    card.add("model", 0, ref + rng.normal(0, 10, ref.shape))
    catches = card.summary()["guard_catches"]
    assert catches == {"painted_out_lesion": [1, 1], "added_nodule": [1, 1]}


def test_lesions_are_compared_with_ld_lesion_by_lesion():
    """Discordant lesions and McNemar's exact p: 8 lost only by the model, 0 only by LD is significant (p = 2/2⁸);
    one each way is not, and equal totals made of different lesions still show as discordant."""
    from denoise_trainer.evaluate.lesions import LesionScore, LesionTruth
    from denoise_trainer.evaluate.scorecard import lesions_against_ld

    def truth(i: int) -> LesionTruth:
        return LesionTruth("P1", 1, i, "hypodense", "liver", (10.0, 10.0), 3.0, 3.0, 10.0)

    def scores(method: str, lost: set[int], n: int = 12) -> list[LesionScore]:
        return [LesionScore(method, truth(i), 2.0 if i in lost else 9.0, 5.0) for i in range(n)]

    worse = lesions_against_ld(scores("LD", {0}) + scores("model", set(range(9))), "model")
    assert worse == {"lost_only_here": 8, "lost_only_by_ld": 0, "mcnemar_p": pytest.approx(2 / 2**8)}
    swapped = lesions_against_ld(scores("LD", {0}) + scores("model", {1}), "model")
    assert swapped == {"lost_only_here": 1, "lost_only_by_ld": 1, "mcnemar_p": pytest.approx(1.0)}
    same = lesions_against_ld(scores("LD", {0, 1}) + scores("model", {0, 1}), "model")
    assert same == {"lost_only_here": 0, "lost_only_by_ld": 0, "mcnemar_p": 1.0}
    assert lesions_against_ld(scores("LD", {0}), "LD") is None
    assert lesions_against_ld(scores("model", {0}), "model") is None  # no LD to compare with
    summary = {"model": {"lesions_vs_ld": worse}}
    assert "lost here but kept by LD 8, kept here but lost by LD 0 (McNemar's exact p = 0.01)" in markdown(summary)


def test_lesions_vs_ld_script_reads_a_recorded_safety_json(tmp_path):
    """scripts/lesions_vs_ld.py rebuilds the scores from safety.json (SafetyScores.to_json) and compares them."""
    import json
    import subprocess
    import sys

    from denoise_trainer.evaluate.lesions import LesionScore, LesionTruth, SafetyScores

    safety = SafetyScores()
    for i in range(4):
        truth = LesionTruth("P1", 1, i, "hypodense", "liver", (10.0, 10.0), 3.0, 3.0, 10.0)
        safety.lesions += [LesionScore("LD", truth, 9.0, 5.0), LesionScore("model", truth, 2.0 if i < 3 else 9.0, 5.0)]
    path = tmp_path / "safety.json"
    path.write_text(json.dumps(safety.to_json()))
    script = Path(__file__).resolve().parents[2] / "scripts" / "lesions_vs_ld.py"
    out = subprocess.run([sys.executable, str(script), str(path)], capture_output=True, text=True, check=True).stdout
    assert "LD: lost 0/4" in out
    assert "model: lost 3/4; against LD: {'lost_only_here': 3, 'lost_only_by_ld': 0, 'mcnemar_p': 0.25}" in out
