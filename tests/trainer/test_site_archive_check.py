"""scripts/site_archive.py, the helper of scripts/site_archive_check.sh (issue 29's "Done when" measurement): the
site's archives it writes from a synth archive, and the PASS/FAIL verdicts it prints beside a scorecard.

Why a test: the measurement is only worth its hours if the trainer really sees a site's archive (no REF, no
truth.json, no LD/HD/REF word, one-dose patients in the unpaired variant) and the bars are read the issue's way.
"""

from __future__ import annotations

import importlib.util
import json
import re
from pathlib import Path
from types import ModuleType

import pydicom
import pytest

from denoise_trainer.archive.scan import scan_archive
from denoise_trainer.archive.split import make_split, paired_slices, split_summary
from denoise_trainer.archive.synth import synthesize_archive
from denoise_trainer.evaluate.lesion_manifest import manifest_truths
from dicom_denoise_node.store.catalog import Catalog

SCRIPT = Path(__file__).resolve().parents[2] / "scripts" / "site_archive.py"


@pytest.fixture(scope="module")
def helper() -> ModuleType:
    spec = importlib.util.spec_from_file_location("site_archive", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def site(helper: ModuleType, tmp_path_factory: pytest.TempPathFactory) -> Path:
    synth = tmp_path_factory.mktemp("synth")
    synthesize_archive(synth, patients=6, slices=2, size=64, seed=5, views=48)
    out = tmp_path_factory.mktemp("w") / "site"
    assert helper.main(["make", str(synth), str(out), "--test", "2"]) == 0
    assert helper.main(["make", str(synth), str(out), "--test", "2"]) == 0  # made once: the second call skips
    return out


def test_the_trainer_sees_only_qd_fd_series_without_ref_or_truth(site: Path) -> None:
    for variant in ("paired", "unpaired", "test"):
        files = list((site / variant).rglob("*"))
        assert not any(f.name == "truth.json" for f in files)
        for f in (f for f in files if f.suffix == ".dcm"):
            ds = pydicom.dcmread(f, stop_before_pixels=True)
            assert re.fullmatch(r"(ABDOMEN|CHEST) 3\.0 (QD|FD)", ds.SeriesDescription)
            words = f"{ds.StudyDescription} {ds.ProtocolName} {ds.Manufacturer} {ds.PatientID}"
            assert not re.search(r"\b(LD|HD|REF)\b|synth", words, re.IGNORECASE)
    assert len(list((site / "ref" / "pool").iterdir())) == 4 and len(list((site / "ref" / "test").iterdir())) == 2


def test_the_unpaired_variant_splits_into_one_dose_patients_and_test_keeps_pairs(site: Path, tmp_path: Path) -> None:
    cat = Catalog(f"sqlite:///{tmp_path / 'b.sqlite'}")
    report = scan_archive(cat, site / "unpaired")
    assert report.unknown_series == [] and set(report.series_by_domain) == {"LD", "HD"}  # by name, no flags
    make_split(cat, fractions=(0.75, 0.0, 0.25))
    summary = split_summary(cat)
    assert summary["train_ld"]["ld_only"] >= 1 and summary["train_hd"]["hd_only"] >= 1
    assert summary["val"]["patients"] == summary["val"]["unpaired"] >= 1 and summary["test"]["patients"] == 0
    cat.close()
    placed = json.loads((site / "site-archive.json").read_text())["patients"]
    assert sorted(v["role"] for v in placed.values()) == ["pool"] * 4 + ["test"] * 2

    test = Catalog(f"sqlite:///{tmp_path / 't.sqlite'}")
    scan_archive(test, site / "test")
    scan_archive(test, site / "ref" / "test", domain="REF")
    make_split(test, fractions=(0.0, 1.0, 0.0))
    pairs = paired_slices(test, "test")
    assert len(pairs) == 4 and all(p.ref is not None for p in pairs)  # REF joins its study from its own folder
    test.close()
    truths = list(manifest_truths(site / "lesions-test.csv", pairs))
    assert len(truths) == len(pairs)


def _card(psnr: float, kept: float, texture: float, ratio: float, bias: float) -> dict[str, object]:
    def figures(**values: float) -> dict[str, object]:
        base = {k: [0.0, 0.0, 0.0] for k in ("error_ref_hu", "psnr_ref_soft", "texture_vs_hd", "error_vs_hd")}
        base.update({k: [v, v, v] for k, v in values.items()})
        base["bias_soft_hu"] = base.get("bias_soft_hu", [0.0, 0.0, 0.0])
        return base

    model = figures(psnr_ref_soft=psnr, texture_vs_hd=texture, error_vs_hd=ratio, bias_soft_hu=bias)
    model["median_contrast_kept"] = kept
    return {
        "patients": 4,
        "slices": 8,
        "LD": figures(),
        "HD": figures(),
        "nlm": figures(psnr_ref_soft=40.0),
        "model": model,
    }


@pytest.mark.parametrize(
    ("variant", "card", "verdicts"),
    [
        ("paired", _card(41.0, 0.9, 0.7, 2.0, 9.0), [True, True, True]),
        ("paired", _card(40.99, 0.89, 0.69, 1.0, 0.0), [False, False, False]),
        ("unpaired", _card(0.0, 0.95, 1.2, 1.15, -3.0), [True, True, True, True]),
        ("unpaired", _card(0.0, float("nan"), 0.79, 1.16, 3.1), [False, False, False, False]),
    ],
)
def test_bars_read_the_issue_s_thresholds(helper, tmp_path: Path, variant: str, card: dict, verdicts: list) -> None:
    path = tmp_path / "scorecard.json"
    path.write_text(json.dumps(card))
    assert helper.main(["bars", str(path), "--variant", variant, "--out", str(tmp_path / "bars.json")]) == 0
    doc = json.loads((tmp_path / "bars.json").read_text())
    assert doc["model"] == "model" and [b["pass"] for b in doc["bars"]] == verdicts


def test_chosen_compares_the_trainers_best_pt_with_refs_best(helper, tmp_path: Path, capsys) -> None:
    rows = [
        {"step": 1, "checkpoint": "run/checkpoints/chosen.pt", "ref": {"val_error_hu": 10.29}},
        {"step": 2, "checkpoint": "run/checkpoints/epoch-001.pt", "ref": {"val_error_hu": 10.0}},
    ]
    (tmp_path / "a.json").write_text(json.dumps({"checkpoints": rows}))
    assert helper.main(["chosen", str(tmp_path / "a.json"), "--criterion", "hd"]) == 0
    assert "+2.9% vs REF's best 10.00 HU of 2 checkpoints (bar ≤ 3%): PASS" in capsys.readouterr().out
    rows[0]["ref"]["val_error_hu"] = 10.31
    (tmp_path / "a.json").write_text(json.dumps({"checkpoints": rows}))
    assert helper.main(["chosen", str(tmp_path / "a.json")]) == 0
    assert capsys.readouterr().out.endswith("(bar ≤ 3%): FAIL\n")
