"""Choosing a checkpoint without a noise-free image (issue 29, item 3): the error against HD less HD's noise where the
validation patients have LD/HD pairs, no-reference figures where they have not, and the criterion said in the log,
the checkpoint and the exported model. Slices from the project's CT simulator (noise on projections, then FBP) at
about its pixel size, where the project's noise definition reads the true level."""

from __future__ import annotations

import json
import logging
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from denoise_trainer.archive.phantom import make_patient, render_slice
from denoise_trainer.archive.physics import simulate_doses
from denoise_trainer.data.slices import TrainingData
from denoise_trainer.export import export_checkpoint
from denoise_trainer.train.checkpoint import load_checkpoint
from denoise_trainer.train.cyclegan import gaussian_lowpass
from denoise_trainer.train.hd_validation import PairedHDSet
from denoise_trainer.train.loop import train
from denoise_trainer.train.no_reference import NoReferenceSet, penalty
from denoise_trainer.train.noise_probe import correlated_noise, noise_autocovariance
from denoise_trainer.train.recipe import build_config
from denoise_trainer.train.validation import ValidationSet, Validator

SIZE, SPACING = 160, 0.9  # mm: a 14 cm crop of the body, near the project's 0.7 mm pixels
WINDOW = (-1024.0, 3071.0)
HU = 2.0 / (WINDOW[1] - WINDOW[0])  # one HU in model units
CPU = torch.device("cpu")


def crops() -> tuple[list[np.ndarray], list[np.ndarray], list[np.ndarray]]:
    """LD, HD and REF of four slices of two patients (quarter dose; 36 and 18 HU of noise in soft tissue)."""
    ld, hd, ref = [], [], []
    for seed, part in ((0, "abdomen"), (1, "chest")):
        rng = np.random.default_rng(seed)
        anatomy = make_patient(rng, part)
        for z in (0.0, 10.0):
            hu, _ = render_slice(anatomy, z, size=SIZE, pixel_spacing=SPACING)
            doses = simulate_doses(hu, {"HD": 2e5, "LD": 5e4}, rng, pixel_spacing=SPACING)
            ld.append(doses["LD"])
            hd.append(doses["HD"])
            ref.append(doses["REF"])
    return ld, hd, ref


@pytest.fixture(scope="module")
def slices() -> tuple[list[np.ndarray], list[np.ndarray], list[np.ndarray]]:
    return crops()


class Blur(nn.Module):
    """A denoiser that trades noise for blur: a checkpoint stand-in whose error against the truth has a minimum."""

    def __init__(self, sigma: float) -> None:
        super().__init__()
        self.sigma = sigma

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return gaussian_lowpass(x[:, :1], self.sigma)


class Shift(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x[:, :1] + 20.0 * HU


def family() -> dict[str, nn.Module]:
    return {"LD": nn.Identity(), **{f"blur {s}": Blur(s) for s in (0.5, 0.8, 1.2, 2.0)}}


def test_error_against_hd_less_its_noise_ranks_as_ref_does_and_estimates_refs_figure(slices) -> None:
    ld, hd, ref = slices
    by_ref = ValidationSet.build(ld, hd, ref, WINDOW, 8)
    by_hd = PairedHDSet.build(ld, hd, WINDOW, 8)
    truth = {name: by_ref.score(g, WINDOW, CPU)["val_error_hu"] for name, g in family().items()}
    scores = {name: by_hd.score(g, WINDOW, CPU) for name, g in family().items()}
    assert sorted(truth, key=truth.get) == sorted(scores, key=lambda n: scores[n]["val_error_est_hu"])
    for name, s in scores.items():
        assert s["val_error_est_hu"] == pytest.approx(truth[name], rel=0.08), name
    # HD's own noise (≈ 15 HU) is what the correction takes off: the raw error against HD reads well above REF's.
    assert scores["blur 0.8"]["val_error_hd_hu"] > 1.15 * truth["blur 0.8"]
    assert by_hd.hd_level == pytest.approx(by_ref.hd_error, rel=0.15)


def test_no_reference_error_estimate_tracks_refs_and_its_choice_is_refs(slices) -> None:
    ld, hd, ref = slices
    by_ref = ValidationSet.build(ld, hd, ref, WINDOW, 8)
    blind = NoReferenceSet.build(ld, hd[2:], WINDOW, 8)  # LD alone; the site's HD level from other slices
    truth = {name: by_ref.score(g, WINDOW, CPU)["val_error_hu"] for name, g in family().items()}
    scores = {name: blind.score(g, WINDOW, CPU) for name, g in family().items()}
    for name, s in scores.items():
        assert s["val_error_est_hu"] == pytest.approx(truth[name], rel=0.08), name
    chosen = min(scores, key=lambda n: scores[n]["val_score_hu"])
    assert chosen == min(truth, key=truth.get) == "blur 0.8"


def test_no_reference_guards_penalise_a_hu_shift_blur_and_lost_lesions(slices) -> None:
    ld, hd, _ = slices
    blind = NoReferenceSet.build(ld, hd, WINDOW, 8)
    plain = blind.score(nn.Identity(), WINDOW, CPU)
    assert plain["val_penalty"] == 0.0 and plain["val_score_hu"] == plain["val_error_est_hu"]
    assert plain["val_noise_vs_hd"] == pytest.approx(2.0, rel=0.15)  # quarter dose: twice HD's noise
    assert 0.8 < plain["val_texture"] < 1.25 and plain["val_edges_kept"] == pytest.approx(1.0, abs=1e-3)
    shifted = blind.score(Shift(), WINDOW, CPU)
    assert shifted["val_bias_hu"] == pytest.approx(20.0, abs=0.5)
    assert shifted["val_penalty"] == pytest.approx((20.0 - 3.0) / 10.0, abs=0.05)
    assert shifted["val_score_hu"] > 2.5 * plain["val_score_hu"]
    blurred = blind.score(Blur(2.0), WINDOW, CPU)
    assert blurred["val_edges_kept"] < 0.8 and blurred["val_texture"] < 0.5 and blurred["val_lesion_kept"] < 0.8
    assert blurred["val_penalty"] > 0.5
    figures = {"val_bias_hu": -4.0, "val_edges_kept": 0.85, "val_texture": 1.7, "val_lesion_kept": 0.7}
    assert penalty(figures) == pytest.approx(0.1 + 0.05 + 0.2 + 0.2)
    assert penalty({**figures, "val_texture": float("nan")}) == pytest.approx(0.35)  # no flat window: no figure


def test_the_noise_probe_has_the_autocovariance_it_was_drawn_with(slices) -> None:
    from dicom_denoise_node.denoise.noise import soft_tissue_regions

    ld = slices[0][0]
    acov = noise_autocovariance(ld, soft_tissue_regions(ld, 11, 64), 11)
    assert acov is not None and acov.shape == (11, 11)
    field = correlated_noise(acov, (256, 256), np.random.default_rng(3))
    grid = [(y, x) for y in range(0, 245, 12) for x in range(0, 245, 12)]
    again = noise_autocovariance(field, grid, 11)
    assert again[5, 5] == pytest.approx(acov[5, 5], rel=0.1)
    assert again[5, 4:7] / again[5, 5] == pytest.approx(acov[5, 4:7] / acov[5, 5], abs=0.05)
    assert acov[5, 6] / acov[5, 5] > 0.2  # the kernel correlates neighbours: a white probe would be wrong


def _variants(*slices: list[np.ndarray]) -> dict[str, TrainingData]:
    """The slices' centres (64 px: no inserted lesion fits, so the score alone chooses) with or without REF, paired
    or not."""
    ld, hd, ref = ([s[48:112, 48:112] for s in images] for images in slices)
    common = {"ld": ld[:2], "hd": hd[:2], "description": {"slices": 2}}
    return {
        "ref": TrainingData(val_ld=ld[2:], val_hd=hd[2:], val_ref=ref[2:], **common),
        "hd": TrainingData(val_ld=ld[2:], val_hd=hd[2:], **common),
        "no-reference": TrainingData(val_ld_unpaired=ld[2:], val_hd_unpaired=hd[:1], **common),
    }


@pytest.mark.parametrize("criterion", ["ref", "hd", "no-reference"])
def test_training_says_and_records_the_criterion_best_pt_was_chosen_by(tmp_path, slices, criterion, caplog) -> None:
    data = _variants(*slices)[criterion]
    cfg = build_config("tiny", overrides={"run_dir": tmp_path / "run", "device": "cpu", "sample_every": 1000})
    with caplog.at_level(logging.INFO, logger="denoise_trainer.train.validation"):
        result = train(cfg, data)
    assert f"criterion {criterion}" in caplog.text
    state = load_checkpoint(result.best_checkpoint)
    key = {"ref": "val_error_hu", "hd": "val_error_est_hu", "no-reference": "val_score_hu"}[criterion]
    best = min(result.validation, key=lambda r: r[key])
    assert state["selection"] == {"criterion": criterion, "score": key, "best_step": best["step"], "best": best[key]}
    assert state["step"] == best["step"]
    written = json.loads((tmp_path / "run" / "validation.json").read_text())
    assert written["selection"]["criterion"] == criterion and len(written["curve"]) == len(result.validation)
    info = export_checkpoint(result.best_checkpoint, tmp_path / "models", "m", "0.1.0")
    meta = json.loads((tmp_path / "models" / f"{info.name}.json").read_text())
    assert meta["training"]["selection"]["criterion"] == criterion


def test_without_validation_slices_no_checkpoint_is_chosen_and_the_log_says_so(tmp_path, slices, caplog) -> None:
    ld, hd, _ = slices
    cfg = build_config("tiny", overrides={"run_dir": tmp_path / "run", "device": "cpu", "sample_every": 1000})
    with caplog.at_level(logging.WARNING):
        result = train(cfg, TrainingData(ld=ld[:2], hd=hd[:2]))
    assert result.best_checkpoint is None and "best.pt is not written" in caplog.text
    assert load_checkpoint(result.checkpoint)["selection"]["criterion"] == "none"


def test_a_resumed_run_keeps_its_best_only_when_chosen_by_the_same_criterion(slices) -> None:
    ld, hd, ref = slices
    old = {"validation": [{"step": 3, "val_error_hu": 5.0}], "best_val_error": 5.0}  # before criteria had names
    by_ref = Validator(ValidationSet.build(ld, hd, ref, WINDOW, 2), WINDOW, CPU, 1)
    by_ref.load_state_dict(old)
    assert by_ref.best_error == 5.0 and by_ref.curve == old["validation"]
    by_hd = Validator(PairedHDSet.build(ld, hd, WINDOW, 2), WINDOW, CPU, 1)
    by_hd.load_state_dict(old)  # a REF best is no yardstick for the HD figure: chosen afresh
    assert by_hd.best_error == float("inf") and by_hd.curve == old["validation"]
    by_hd.load_state_dict({**old, "selection": {"criterion": "hd", "best_step": 3}})
    assert by_hd.best_error == 5.0 and by_hd.selection()["best_step"] == 3


@pytest.fixture(scope="module")
def archive(tmp_path_factory) -> Path:
    from denoise_trainer.archive.synth import synthesize_archive

    root = tmp_path_factory.mktemp("archive")
    synthesize_archive(root, patients=4, slices=2, size=128, seed=3, views=96)
    return root


def _catalog(root: Path, db: Path) -> str:
    from denoise_trainer.archive.scan import scan_archive
    from denoise_trainer.archive.split import make_split
    from dicom_denoise_node.store.catalog import Catalog

    url = f"sqlite:///{db}"
    cat = Catalog(url)
    scan_archive(cat, root)
    make_split(cat, seed=0, fractions=(0.5, 0.25, 0.25))
    cat.close()
    return url


def _val_patient(url: str) -> str:
    from denoise_trainer.archive.split import make_split
    from dicom_denoise_node.store.catalog import Catalog

    cat = Catalog(url)
    (patient,) = make_split(cat, seed=0, fractions=(0.5, 0.25, 0.25))["val"]
    cat.close()
    return patient


def test_the_catalog_gives_validation_pairs_without_ref_and_else_one_dose_patients(archive, tmp_path) -> None:
    from denoise_trainer.archive.scan import scan_archive
    from denoise_trainer.data.assembly import load_training_data, training_selection
    from dicom_denoise_node.store.catalog import Catalog

    site = tmp_path / "site"
    shutil.copytree(archive, site)
    for ref_dir in site.glob("*/REF"):
        shutil.rmtree(ref_dir)  # a site's archive: no noise-free image
    url = _catalog(site, tmp_path / "c.sqlite")
    files = training_selection(url)
    data = load_training_data(files, url)
    assert data.val_ld and len(data.val_hd) == len(data.val_ld) and data.val_ref == []
    assert files.val_ld_unpaired == [] and data.val_ld_unpaired == []
    patient = _val_patient(url)
    shutil.rmtree(site / patient / "HD")  # the validation patient now has one dose
    cat = Catalog(url)
    scan_archive(cat, site)
    cat.close()
    files = training_selection(url)
    assert files.val == [] and len(files.val_ld_unpaired) == 2 and files.val_hd_unpaired == []
    assert all(patient in str(p) for p in files.val_ld_unpaired)
    data = load_training_data(files, url)
    assert len(data.val_ld_unpaired) == 2 and data.description["val_ld_unpaired_slices"] == 2


def test_selection_agreement_script_scores_checkpoints_every_way_on_a_tiny_archive(archive, tmp_path, capsys) -> None:
    import importlib.util

    from denoise_trainer.data.assembly import assemble_training_data

    url = _catalog(archive, tmp_path / "c.sqlite")
    overrides = {"run_dir": tmp_path / "run", "device": "cpu", "sample_every": 1000, "epochs": 3, "iters_per_epoch": 1}
    train(build_config("tiny", overrides=overrides), assemble_training_data(url))
    path = Path(__file__).resolve().parents[2] / "scripts" / "selection_agreement.py"
    spec = importlib.util.spec_from_file_location("selection_agreement", path)
    script = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(script)
    out = tmp_path / "agreement.json"
    assert script.main(["--run-dir", str(tmp_path / "run"), "--catalog", url, "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    doc = json.loads(out.read_text())
    assert [r["step"] for r in doc["checkpoints"]] == [1, 2, 3]
    errors = {r["step"]: r["ref"]["val_error_hu"] for r in doc["checkpoints"]}
    assert doc["picks"]["ref"] == {
        "step": min(errors, key=errors.get),
        "ref_error_hu": min(errors.values()),
        "vs_ref_best": 0.0,
    }
    for name in ("hd", "no-reference"):
        pick = doc["picks"][name]
        assert pick["ref_error_hu"] == errors[pick["step"]] and pick["vs_ref_best"] >= 0.0
        assert f"{name:>12} picks step {pick['step']}" in printed
