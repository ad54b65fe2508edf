"""The phantom's detail="rich" and size_scale: the plain path unchanged byte for byte, each rich feature present with
its HU, smooth along z, patient size scaling the body, and lesion truth still what the scorer measures."""

from __future__ import annotations

import functools
import hashlib

import numpy as np
import pytest
from scipy import ndimage

from denoise_trainer.archive.phantom import LABEL_IDS, PatientAnatomy, make_patient, render_slice_with_labels
from denoise_trainer.evaluate.lesions import LesionTruth, measure

# Recorded from the phantom before detail/size_scale existed (commit 2847428): any change to the plain path's
# draws or rendering shows here.
PLAIN_DIGESTS = {
    "chest/0": "f4c2df37ac022030",
    "chest/1": "3e84d5b2597a07a3",
    "chest/7": "c96ed80a8161330d",
    "chest/12": "3639faf7ee42215a",
    "abdomen/0": "8a752e3f9342839b",
    "abdomen/1": "c2ebff400caa080f",
    "abdomen/7": "63fa887ca6e2925c",
    "abdomen/12": "f8057e61ff6fdaaf",
}
PLAIN_512_DIGESTS = {("chest", 5): "beb3632635cc683e", ("abdomen", 6): "530df6099b9d7df9"}


@functools.cache
def patient(part: str, seed: int, detail: str = "rich", scale: float = 1.0) -> PatientAnatomy:
    return make_patient(np.random.default_rng(seed), part, detail=detail, size_scale=scale)  # type: ignore[arg-type]


def _digest(seed: int, part: str, **kw: object) -> str:
    h = hashlib.sha256()
    anatomy = make_patient(np.random.default_rng(seed), part, (-40.0, 50.0), **kw)  # type: ignore[arg-type]
    h.update(repr((anatomy.structures, anatomy.lesions, anatomy.body_axes_mm)).encode())
    for z in (-35.0, 0.0, 17.5, 44.0):
        r = render_slice_with_labels(anatomy, z, 128, 2.8)
        h.update(np.ascontiguousarray(r.hu, dtype=np.float32).tobytes())
        h.update(r.labels.tobytes())
        h.update(repr(r.lesions).encode())
    return h.hexdigest()[:16]


@pytest.mark.parametrize("key", sorted(PLAIN_DIGESTS))
def test_the_plain_path_draws_and_renders_what_it_did_before(key: str) -> None:
    part, seed = key.split("/")
    assert _digest(int(seed), part) == PLAIN_DIGESTS[key]
    assert _digest(int(seed), part, detail="plain", size_scale=1.0) == PLAIN_DIGESTS[key]


def test_plain_full_size_slices_are_unchanged() -> None:
    for (part, seed), want in PLAIN_512_DIGESTS.items():
        rendered = render_slice_with_labels(make_patient(np.random.default_rng(seed), part), 3.0)
        hu, lesions = rendered.hu, rendered.lesions
        assert hashlib.sha256(hu.tobytes() + repr(lesions).encode()).hexdigest()[:16] == want


def _body(labels: np.ndarray) -> np.ndarray:
    return (labels != LABEL_IDS["air"]) & (labels != LABEL_IDS["table"])


def test_rich_abdomen_has_irregular_bowel_gas() -> None:
    gas = {"plain": 0, "rich": 0}
    for seed in (0, 1, 2):
        for detail in gas:
            anatomy = patient("abdomen", seed, detail)
            for z in (-40.0, -15.0, 10.0, 35.0):
                r = render_slice_with_labels(anatomy, z, 256, 1.4)
                gas[detail] += int(((r.hu < -900) & ndimage.binary_erosion(_body(r.labels), iterations=3)).sum())
    assert gas["plain"] > 0
    assert gas["rich"] - gas["plain"] > 200  # the rich pockets add gas (at 1.4 mm pixels)
    pockets = [s for s in patient("abdomen", 0).structures if s.name == "bowel gas pocket"]
    assert pockets and all(-1000 <= s.hu <= -950 and s.inside == "bowel" for s in pockets)


def test_metal_in_some_patients_at_3000_hu_or_more() -> None:
    with_metal = []
    for seed in range(12):
        for part in ("chest", "abdomen"):
            metal = [s for s in patient(part, seed).structures if s.label == "metal"]
            if metal:
                with_metal.append((part, seed, metal))
    assert 1 <= len(with_metal) <= 10  # ~1 in 5 of 24
    part, seed, metal = with_metal[0]
    r = render_slice_with_labels(patient(part, seed), metal[0].z_center, 512, 0.7)
    assert (r.hu >= 3000).sum() > 0
    assert np.isfinite(r.hu).all()
    plain = render_slice_with_labels(patient(part, seed, "plain"), metal[0].z_center, 512, 0.7)
    assert (plain.hu >= 3000).sum() == 0


@pytest.mark.parametrize("scale", [0.8, 1.0, 1.25])
def test_lung_vessels_branch_and_thin_towards_the_periphery(scale: float) -> None:
    anatomy = patient("chest", 3, "rich", scale)
    tree = [s for s in anatomy.structures if s.name == "lung vessel"]
    assert len(tree) > 200
    r = render_slice_with_labels(anatomy, 0.0, 512, 0.8)
    lung = ndimage.binary_fill_holes(r.labels == LABEL_IDS["lung"])
    vessel = lung & (r.labels == LABEL_IDS["vessel"]) & (r.hu > -500)
    assert 0.005 < vessel.sum() / lung.sum() < 0.2
    hilum_x = anatomy.body_axes_mm[0] * 0.5
    dist = np.array([abs(abs(s.center[0]) - 0.3 * hilum_x) + abs(s.z_center) for s in tree])
    radius = np.array([min(s.axes) for s in tree])
    near, far = radius[dist < np.median(dist)], radius[dist >= np.median(dist)]
    assert near.mean() > 1.2 * far.mean()


def _fine(hu: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """hu minus its smooth (organ-scale) part inside mask."""
    w = ndimage.gaussian_filter(mask.astype(float), 6)
    smooth = ndimage.gaussian_filter(np.where(mask, hu, 0.0), 6) / np.maximum(w, 1e-6)
    return np.where(mask, hu - smooth, 0.0)


def test_liver_texture_is_a_few_hu_and_spatially_correlated() -> None:
    found = 0
    for seed in (0, 1, 2):
        stds = {}
        for detail in ("plain", "rich"):
            r = render_slice_with_labels(patient("abdomen", seed, detail), 0.0, 512, 0.7)
            liver = ndimage.binary_erosion(r.labels == LABEL_IDS["liver"], iterations=4)
            if liver.sum() < 2000:
                break
            total = float(r.hu[liver].std())
            fine = _fine(r.hu.astype(float), liver)
            both = liver[:, 2:] & liver[:, :-2]
            corr = np.corrcoef(fine[:, 2:][both], fine[:, :-2][both])[0, 1]
            stds[detail] = float(fine[liver].std())
            if detail == "rich":
                assert 3.0 <= total <= 20.0
                assert corr > 0.3  # anatomy, not white noise
                found += 1
        if len(stds) == 2:
            assert stds["rich"] > 2.0 * stds["plain"]
    assert found >= 2


def test_rich_slices_1_mm_apart_agree() -> None:
    for part, organ in (("chest", "muscle"), ("abdomen", "liver")):
        anatomy = patient(part, 4)
        a, b, c = (render_slice_with_labels(anatomy, z, 256, 1.4) for z in (5.0, 6.0, 25.0))
        body = ndimage.binary_erosion(_body(a.labels) & _body(b.labels), iterations=3)
        assert np.abs(a.hu - b.hu)[body].mean() < 0.5 * np.abs(a.hu - c.hu)[body].mean()
        tissue = ndimage.binary_erosion((a.labels == LABEL_IDS[organ]) & (b.labels == LABEL_IDS[organ]), iterations=2)
        fine_a, fine_b = _fine(a.hu.astype(float), tissue), _fine(b.hu.astype(float), tissue)
        assert np.corrcoef(fine_a[tissue], fine_b[tissue])[0, 1] > 0.7  # the texture is anatomy: it continues


@pytest.mark.parametrize("part", ["chest", "abdomen"])
def test_size_scale_scales_the_body_area(part: str) -> None:
    area = {}
    for scale in (0.8, 1.0, 1.25):
        r = render_slice_with_labels(patient(part, 2, "plain", scale), 0.0, 256, 2.0, with_lesions=False)
        area[scale] = int(_body(r.labels).sum())
    for scale in (0.8, 1.25):
        assert area[scale] / area[1.0] == pytest.approx(scale**2, rel=0.08)


def test_rich_lesion_truth_is_what_the_scorer_measures_on_the_noise_free_image() -> None:
    kept = []
    for part, seed in (("chest", 0), ("chest", 1), ("abdomen", 0), ("abdomen", 1), ("abdomen", 2)):
        anatomy = patient(part, seed)
        for les in anatomy.lesions:
            r = render_slice_with_labels(anatomy, les.center_mm[2], 512, 0.7)
            truths = [
                LesionTruth(
                    "p", 1, c.lesion_index, c.kind, c.organ, c.center_px, c.radius_px, c.radius_mm, c.contrast_hu
                )
                for c in r.lesions
            ]
            mine = next(t for t in truths if t.lesion_index == les.index)
            contrast, _ = measure(r.hu, mine, truths, r.hu)
            kept.append(contrast / les.contrast_hu)
    kept_arr = np.array(kept)
    assert len(kept_arr) >= 15
    assert np.mean((kept_arr > 0.8) & (kept_arr < 1.2)) >= 0.85, np.round(kept_arr, 2)
    # lesions are painted relative to their local background (texture, vessels), so the scorer's contrast is exact
    assert np.mean(np.abs(kept_arr - 1.0) < 0.03) >= 0.9, np.round(kept_arr, 2)
