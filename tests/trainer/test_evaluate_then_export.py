"""Evaluate, then export once (issue 29, item 6): `evaluate --model CHECKPOINT.pt` scores what `model export` would
write; lesion truth from a site's manifest gives the figures truth.json gives; without truth the reports say so and
claim no file they did not write; `model export` does not overwrite a version with other weights.

A small simulated site: 2 patients × 2 slices at 128², all test, with an untrained tiny generator in a checkpoint
of the trainer's own format. Three catalogs of it: as simulated (REF, truth.json), without truth.json, and bare
(no REF, no truth: what a site has)."""

from __future__ import annotations

import csv
import json
import shutil
from pathlib import Path

import pytest
import torch
from pydicom import dcmread
from typer.testing import CliRunner

from denoise_trainer.archive.scan import scan_archive
from denoise_trainer.archive.split import make_split
from denoise_trainer.archive.synth import synthesize_archive
from denoise_trainer.evaluate.workflow import EvaluationOptions, evaluate_model
from denoise_trainer.train.averaging import PREFIX
from denoise_trainer.train.checkpoint import checkpoint_header
from denoise_trainer.train.recipe import build_config
from dicom_denoise_node.cli import app
from dicom_denoise_node.model.generator import ResnetGenerator
from dicom_denoise_node.model.registry import read_metadata, sha256_file
from dicom_denoise_node.store.catalog import Catalog
from tests.conftest import TINY

NO_TRUTH = "no lesion truth: not computed"


def _catalog(root: Path, name: str) -> str:
    url = f"sqlite:///{root / name}.sqlite"
    cat = Catalog(url)
    try:
        scan_archive(cat, root / name)
        make_split(cat, seed=0, fractions=(0.0, 1.0, 0.0))  # a held-out archive: every patient is test
    finally:
        cat.close()
    return url


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory) -> dict[str, object]:
    root = tmp_path_factory.mktemp("site")
    synthesize_archive(root / "synthetic", patients=2, slices=2, size=128, seed=5, body_parts=("abdomen",), views=96)
    shutil.copytree(root / "synthetic", root / "no-truth")
    for truth in (root / "no-truth").glob("*/truth.json"):
        truth.unlink()
    shutil.copytree(root / "no-truth", root / "bare")
    for ref in (root / "bare").glob("*/REF"):
        shutil.rmtree(ref)
    checkpoints = []
    for seed in (0, 1):
        torch.manual_seed(seed)
        generator = ResnetGenerator(TINY)
        cfg = build_config("tiny", overrides={"catalog_url": "sqlite:///train.sqlite"})
        state = checkpoint_header(cfg, generator.config.to_dict(), {}, 1, 7, 7, 1)
        state["generators"] = {PREFIX + k: v for k, v in generator.state_dict().items()}
        torch.save(state, root / f"step-{seed}.pt")
        checkpoints.append(root / f"step-{seed}.pt")
    urls = {name: _catalog(root, name) for name in ("synthetic", "no-truth", "bare")}
    return {"root": root, "urls": urls, "checkpoints": checkpoints}


def _cli(*args: str | Path) -> tuple[int, str]:
    result = CliRunner().invoke(app, [str(a) for a in args])
    return result.exit_code, " ".join(result.output.replace("│", " ").split())  # rich wraps messages in boxes


def _evaluate(url: str, model: str | Path, out: Path, *extra: str | Path) -> tuple[int, str]:
    return _cli("evaluate", "--model", model, "--catalog", url, "--no-baselines", "--device", "cpu", "--out-dir", out,
                *extra)  # fmt: skip


def _model_rows(out: Path) -> list[dict]:
    rows = json.loads((out / "evaluation.json").read_text())["slices"]
    return [{k: v for k, v in r.items() if k != "seconds"} for r in rows if r["method"] == "model"]


def test_evaluate_takes_a_checkpoint_and_scores_what_its_export_runs(site: dict, tmp_path: Path) -> None:
    """Evaluate the checkpoint, export it once with that evaluation, and the exported model scores the same."""
    checkpoint = site["checkpoints"][0]
    code, output = _evaluate(site["urls"]["no-truth"], checkpoint, tmp_path / "eval")
    assert code == 0, output
    settings = json.loads((tmp_path / "eval" / "evaluation.json").read_text())["settings"]
    assert settings["model"] == {"name": "step-0.pt", "version": "step 7", "sha256": sha256_file(checkpoint)}
    export = ("model", "export", checkpoint, "--name", "site", "--version", "1.0.0", "--out-dir", tmp_path / "models")
    code, output = _cli(*export, "--evaluation", tmp_path / "eval" / "evaluation.json")
    assert code == 0, output
    info = read_metadata(tmp_path / "models" / "site.json")
    assert info.evaluation["settings"]["model"]["sha256"] == info.training["checkpoint_sha256"]  # of this checkpoint
    evaluate_model(
        EvaluationOptions(site["urls"]["no-truth"], str(tmp_path / "models"), baselines=False, device="cpu"),
        tmp_path / "exported",
    )
    assert _model_rows(tmp_path / "eval") == _model_rows(tmp_path / "exported")
    code, output = _evaluate(site["urls"]["no-truth"], site["root"] / "synthetic.sqlite", tmp_path / "x")
    assert code == 3 and "cannot load model" in output


def test_export_refuses_another_set_of_weights_under_the_same_version(site: dict, tmp_path: Path) -> None:
    first, other = site["checkpoints"]
    models = tmp_path / "registry"
    export = ("model", "export", "--name", "site", "--version", "1.0.0", "--out-dir", models)
    assert _cli(*export, first)[0] == 0
    sha = read_metadata(models / "site.json").sha256
    assert _cli(*export, first)[0] == 0 and read_metadata(models / "site.json").sha256 == sha  # same weights: fine
    code, output = _cli(*export, other)
    assert code == 1 and str(models / "site.json") in output and "--force" in output
    assert read_metadata(models / "site.json").sha256 == sha
    assert _cli(*export, other, "--force")[0] == 0 and read_metadata(models / "site.json").sha256 != sha
    for path in (models / "site.json", models / "site.safetensors"):
        assert path.stat().st_mode & 0o777 == 0o644


def test_without_lesion_truth_the_reports_say_not_computed_and_claim_only_written_files(
    site: dict, tmp_path: Path
) -> None:
    checkpoint = site["checkpoints"][0]
    for name in ("no-truth", "bare"):
        out = tmp_path / name
        out.mkdir()
        (out / "safety.json").write_text("{}")  # an earlier evaluation's: not this one's figures
        code, output = _evaluate(site["urls"][name], checkpoint, out)
        assert code == 0, output
        assert NO_TRUTH in output and "nan" not in output and "0/0" not in output
        assert not (out / "safety.json").exists() and not (out / "safety.md").exists()
        written = output.split("written: ")[-1]
        claimed = [part.strip().removeprefix(f"{out}/") for part in written.split(",")]
        assert sorted(claimed) == sorted(p.name for p in out.iterdir()), written
        settings = json.loads((out / "evaluation.json").read_text())["settings"]
        assert settings["lesion_truth"].startswith("none")
    card = (tmp_path / "no-truth" / "scorecard.md").read_text()
    assert f"Lesions: {NO_TRUTH}" in card and "nan" not in card and "0/0" not in card
    assert json.loads((tmp_path / "no-truth" / "scorecard.json").read_text())["lesion_truth"] is None
    assert not (tmp_path / "bare" / "scorecard.md").exists()


def _manifest_from_truth(archive: Path, path: Path) -> None:
    """The simulator's truth as a site would write it: half the rows by InstanceNumber and radius in px, half by
    the HD image's SOPInstanceUID and radius in mm."""
    with path.open("w", newline="", encoding="utf-8") as fh:
        fh.write("# lesions of the simulated site\n")
        out = csv.writer(fh)
        out.writerow(["patient_id", "instance_number", "SOPInstanceUID", "x_px", "y_px", "radius_px", "radius_mm",
                      "contrast_hu", "label"])  # fmt: skip
        for truth_file in sorted(archive.glob("*/truth.json")):
            truth = json.loads(truth_file.read_text())
            for s in truth["slices"]:
                hd = dcmread(truth_file.parent / "HD" / f"{s['slice_index']:04d}.dcm", stop_before_pixels=True)
                spacing = sum(float(v) for v in hd.PixelSpacing) / 2
                for n, les in enumerate(s["lesions"]):
                    x, y = les["center_px"]
                    slice_id = [s["slice_index"], ""] if n % 2 else ["", hd.SOPInstanceUID]
                    radius = [les["radius_px"], ""] if n % 2 else ["", repr(les["radius_px"] * spacing)]
                    out.writerow([truth["patient_id"], *slice_id, x, y, *radius, les["contrast_hu"], les["kind"]])


def _measured(out: Path) -> dict[tuple, float]:
    rows = json.loads((out / "safety.json").read_text())["lesions"]
    return {(r["method"], r["patient_id"], r["slice_index"], *r["center_px"]): r["measured_hu"] for r in rows}


def test_a_lesion_manifest_gives_the_figures_truth_json_gives(site: dict, tmp_path: Path) -> None:
    checkpoint, manifest = site["checkpoints"][0], tmp_path / "lesions.csv"
    _manifest_from_truth(site["root"] / "synthetic", manifest)
    assert _evaluate(site["urls"]["synthetic"], checkpoint, tmp_path / "truth")[0] == 0
    code, output = _evaluate(site["urls"]["no-truth"], checkpoint, tmp_path / "manifest", "--lesions", manifest)
    assert code == 0, output
    assert NO_TRUTH not in output and "safety.json" in output.split("written: ")[-1]
    from_truth, from_manifest = _measured(tmp_path / "truth"), _measured(tmp_path / "manifest")
    assert len(from_truth) >= 20 and from_manifest.keys() == from_truth.keys()
    assert from_manifest == pytest.approx(from_truth)
    cards = [json.loads((tmp_path / d / "scorecard.json").read_text()) for d in ("truth", "manifest")]
    assert cards[0]["model"]["lesions"] == cards[1]["model"]["lesions"] > 0
    assert cards[1]["lesion_truth"] == str(manifest)


def test_a_bad_manifest_stops_evaluate_naming_the_option_file_and_line(site: dict, tmp_path: Path) -> None:
    manifest = tmp_path / "lesions.csv"
    manifest.write_text("patient_id,instance_number,x_px,y_px,radius_mm,contrast_hu\nSYNTH0001,1,ten,10,3,20\n")
    code, output = _evaluate(site["urls"]["bare"], site["checkpoints"][0], tmp_path / "out", "--lesions", manifest)
    assert code == 2 and f"--lesions: lesion manifest with errors: {manifest}:2: x_px 'ten' is not a number" in output
