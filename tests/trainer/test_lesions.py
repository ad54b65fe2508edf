"""Lesion preservation and HU fidelity scoring (trainer/lesions.py) on a synthetic patient with known truth."""

from __future__ import annotations

import numpy as np
from scipy import ndimage

from denoise_trainer.evaluate.lesions import (
    SafetyScores,
    lesion_masks,
    load_truth,
    markdown_tables,
    score_lesions,
    tissue_bias,
)
from dicom_denoise_node.denoise.decode import file_hu


def _hu(path):
    return file_hu(path)


def _images(directory, index):
    return {k: _hu(directory / k / f"{index:04d}.dcm") for k in ("LD", "HD", "REF")}


def test_noise_free_images_keep_every_inserted_lesion_at_contrast_one(abdomen_patient):
    directory, _ = abdomen_patient
    truth = load_truth(directory)
    kept = []
    for index, lesions in truth.items():
        ref = _images(directory, index)["REF"]
        scores = score_lesions("REF", ref, lesions, ref)
        resolvable = [s for s in scores if s.truth.radius_px >= 2.0]  # smaller ones are below the FBP resolution
        assert len(scores) == len(lesions)  # every inserted lesion is found and measured
        kept += [s.contrast_kept for s in resolvable]
    assert len(kept) >= 4
    assert 0.9 <= float(np.median(kept)) <= 1.1, kept
    assert all(0.6 <= k <= 1.4 for k in kept), kept


def test_painting_out_a_lesion_is_counted_lost_and_blurring_costs_contrast(abdomen_patient):
    directory, _ = abdomen_patient
    truth = load_truth(directory)
    index, lesions = max(truth.items(), key=lambda kv: len(kv[1]))
    images = _images(directory, index)
    ref = images["REF"]
    target = max(lesions, key=lambda les: abs(les.contrast_hu) * les.radius_px)
    core, ring = lesion_masks(ref.shape, target, lesions, ref)
    inside = ndimage.binary_dilation(core, iterations=int(target.radius_px))
    painted = ref.copy()
    painted[inside] = np.median(ref[ring])
    scores = SafetyScores()
    for name, image in (
        ("LD", images["LD"]),
        ("REF", ref),
        ("painted", painted),
        ("blur", ndimage.gaussian_filter(ref, 3)),
    ):
        scores.add(name, image, ref, lesions)
    by = {(s.method, s.truth.lesion_index): s for s in scores.lesions}
    key = target.lesion_index
    assert by[("painted", key)].lost and not by[("REF", key)].lost
    assert abs(by[("blur", key)].contrast_kept) < abs(by[("REF", key)].contrast_kept)
    table = scores.lesion_table()
    assert all(r["cnr_gain"] == 1.0 for r in table if r["method"] == "LD")
    assert sum(r["lost"] for r in table if r["method"] == "painted") >= 1
    assert "| painted |" in markdown_tables(scores.to_json())


def test_tissue_bias_per_tissue(abdomen_patient):
    directory, _ = abdomen_patient
    ref = _images(directory, 1)["REF"]
    bias = tissue_bias(ref + 10.0, ref)
    present = {k: v for k, v in bias.items() if v[1] > 0}
    assert {"air", "fat", "soft tissue"} <= set(present)
    assert all(abs(b - 10.0) < 1e-3 for b, _ in present.values())
