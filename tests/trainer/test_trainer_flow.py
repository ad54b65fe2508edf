"""The physicist's flow as documented (scripts/train_bundled.sh), at a tiny size: varied training archive and
fresh test archive → catalog scan → split → train → best checkpoint on validation → export → evaluate (scorecard)
→ export with figures → the node's `denoise` loads the exported model."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from pydicom import dcmread

from dicom_denoise_node.model.registry import load_model

ROOT = Path(__file__).parents[2]


@pytest.fixture(scope="module")
def flow(tmp_path_factory) -> Path:
    work = tmp_path_factory.mktemp("flow")
    env = {
        **os.environ,
        "PATIENTS": "6",
        "TEST_PATIENTS": "2",
        "TEST_SLICES": "2",
        "SLICES": "2",
        "SIZE": "128",
        "PRESET": "tiny",
        "DEVICE": "cpu",
        "DENOISE_NODE": str(Path(sys.executable).with_name("denoise-node")),
    }
    result = subprocess.run(
        ["bash", str(ROOT / "scripts" / "train_bundled.sh"), str(work)],
        capture_output=True,
        text=True,
        timeout=600,
        env=env,
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    return work


def test_export_carries_provenance_and_evaluation(flow):
    meta = json.loads((flow / "model" / "cyclegan-ld2hd-synthetic.json").read_text())
    assert meta["training"]["preset"] == "tiny"
    best = min(_curve(flow), key=lambda r: r["val_error_hu"])
    assert meta["training"]["steps"] == best["step"]  # the checkpoint chosen on the validation patients
    assert meta["training"]["checkpoint"].endswith("best.pt")
    assert meta["training"]["checkpoint_sha256"] and meta["training"]["data"]["ld_slices"] > 0
    methods = {row["method"] for row in meta["evaluation"]["summary"]}
    assert {"LD", "model", "gaussian", "nlm"} <= methods
    assert (flow / "model" / "ACTIVE").read_text().strip() == "cyclegan-ld2hd-synthetic"
    net, info = load_model(flow / "model")
    assert info.architecture["filters"] == 8


def _curve(flow: Path) -> list[dict]:
    return json.loads((flow / "run" / "validation.json").read_text())["curve"]


def test_scorecard_on_the_fresh_test_archive(flow):
    card = json.loads((flow / "eval" / "scorecard.json").read_text())
    assert card["patients"] == 2 and {"LD", "model", "gaussian", "nlm", "HD"} <= set(card)
    assert card["HD"]["error_vs_hd"][0] == 1.0 and card["HD"]["texture_vs_hd"][0] == 1.0
    assert card["LD"]["error_ref_hu"][0] > card["HD"]["error_ref_hu"][0]  # quarter dose is noisier than HD
    assert card["model"]["guard_flagged"][1] == 4 and "| model |" in (flow / "eval" / "scorecard.md").read_text()
    test_patients = {p.name for p in (flow / "test-archive").glob("SYNTH*")}
    assert len(test_patients) == 2


def test_evaluate_wrote_json_csv_and_montage(flow):
    report = json.loads((flow / "eval" / "evaluation.json").read_text())
    ld = next(r for r in report["summary"] if r["method"] == "LD")
    assert ld["n_slices"] >= 2 and ld["psnr_mean"] > 0
    assert (flow / "eval" / "evaluation.csv").read_text().count("\n") > 2
    assert (flow / "eval" / "montage.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    table = (flow / "eval" / "evaluation.md").read_text()
    assert "| LD |" in table and "| model |" in table and "| nlm |" in table


def test_exported_model_round_trips_through_the_node(flow, tmp_path):
    ld_dir = next((flow / "test-archive").glob("SYNTH*/LD"))
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "dicom_denoise_node",
            "denoise",
            str(ld_dir),
            str(tmp_path / "out"),
            "--model",
            str(flow / "model"),
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr
    written = [dcmread(p) for p in sorted((tmp_path / "out").rglob("*.dcm"))]
    out = [ds for ds in written if ds.Modality == "CT"]
    assert len(out) == 2 and [ds.Modality for ds in written].count("SR") == 1  # images and their quality report
    ds = out[0]
    assert ds.ContributingEquipmentSequence[-1].ManufacturerModelName == "cyclegan-ld2hd-synthetic"


def test_catalog_list_and_model_list(flow):
    listing = subprocess.run(
        [
            sys.executable,
            "-m",
            "dicom_denoise_node",
            "catalog",
            "list",
            "--catalog",
            f"sqlite:///{flow / 'train.sqlite'}",
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert listing.returncode == 0 and "train_ld" in listing.stdout and "REF" in listing.stdout
    assert "LD/HD training pairs" in listing.stdout and "10 slices of 5 patients" in listing.stdout
    models = subprocess.run(
        [sys.executable, "-m", "dicom_denoise_node", "model", "list", str(flow / "model")],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert models.returncode == 0 and "cyclegan-ld2hd-synthetic" in models.stdout


def test_evaluate_scores_lesions_and_tissues_on_the_synthetic_archive(flow):
    safety = json.loads((flow / "eval" / "safety.json").read_text())
    methods = {r["method"] for r in safety["tissue_table"]}
    assert {"LD", "model", "REF"} <= methods
    assert all(r["bias_hu"] == 0 for r in safety["tissue_table"] if r["method"] == "REF")
    assert "| method | tissue |" in (flow / "eval" / "safety.md").read_text()


def test_export_records_a_self_ensemble_that_model_list_shows_and_the_node_takes(flow, tmp_path):
    """`model export --self-ensemble 8` writes it in the metadata (`[model] self_ensemble = 0` takes it); a value the
    node cannot run is refused with the option named, and nothing is written."""
    meta = json.loads((flow / "model" / "cyclegan-ld2hd-synthetic.json").read_text())
    checkpoint = meta["training"]["checkpoint"]
    cli = [sys.executable, "-m", "dicom_denoise_node", "model"]
    bad = subprocess.run(
        [*cli, "export", checkpoint, "--name", "ens", "--out-dir", str(tmp_path / "bad"), "--self-ensemble", "3"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert bad.returncode == 2 and "--self-ensemble" in bad.stderr and not (tmp_path / "bad").exists()
    good = subprocess.run(
        [*cli, "export", checkpoint, "--name", "ens", "--out-dir", str(tmp_path / "good"), "--self-ensemble", "8"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert good.returncode == 0, good.stderr
    _, info = load_model(tmp_path / "good" / "ens.json")
    assert info.self_ensemble == 8
    listing = subprocess.run([*cli, "list", str(tmp_path / "good")], capture_output=True, text=True, timeout=120)
    assert listing.returncode == 0 and "× 8" in listing.stdout
