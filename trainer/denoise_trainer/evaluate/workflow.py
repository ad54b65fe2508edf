"""Evaluate a model on a split of the archive: the `evaluate` command's work, callable from scripts too.

Why a workflow of its own: the command, probes and benchmarks need the same slices, the same model path (the
node's own tiler and HU handling, so what is scored is what the PACS gets) and the same outputs. It loads the model
(an exported one, or a training checkpoint's generator built in memory, so that a model is evaluated before its one
export) and the paired slices of a split role, runs the model and the classical baselines (tuned on validation
patients), scores them (comparison, and with a noise-free REF the scorecard; with lesion truth, from a site's
manifest or the synthetic truth.json, the lesion safety scores), and writes evaluation.json/csv/md, and where
computed scorecard.json/md and safety.json/md, and montage.png.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from denoise_trainer.archive.split import SlicePair, paired_slices
from denoise_trainer.data.slices import load_slices
from denoise_trainer.evaluate.baselines import Denoiser, classical_baselines
from denoise_trainer.evaluate.comparison import EvalReport, evaluate, markdown_table
from denoise_trainer.evaluate.image_metrics import EvalSlice
from denoise_trainer.evaluate.lesion_manifest import LesionManifestError, manifest_truths
from denoise_trainer.evaluate.lesions import LesionTruth, SafetyScores, load_truth
from denoise_trainer.evaluate.lesions import markdown_tables as lesion_markdown
from denoise_trainer.evaluate.montage import save_montage
from denoise_trainer.evaluate.scorecard import Scorecard
from denoise_trainer.evaluate.scorecard import markdown as scorecard_markdown
from denoise_trainer.export import checkpoint_model
from dicom_denoise_node.config import DeriveSettings, ModelSettings
from dicom_denoise_node.denoise.inference import select_device
from dicom_denoise_node.denoise.series import SeriesDenoiser
from dicom_denoise_node.model.registry import ModelError, ModelInfo, load_model, resolve_model_path
from dicom_denoise_node.store.catalog import Catalog

log = logging.getLogger(__name__)

BASELINE_TUNING_SLICES = 8  # validation slices the classical baselines are tuned on
OPTIONAL_REPORTS = ("scorecard.json", "scorecard.md", "safety.json", "safety.md")  # written only where computed


class EvaluationError(Exception):
    """An evaluation that cannot start, with the exit status the command ends with (and the option to blame)."""

    def __init__(self, message: str, exit_code: int = 2, param_hint: str | None = None) -> None:
        super().__init__(message)
        self.exit_code = exit_code
        self.param_hint = param_hint


@dataclass(frozen=True)
class EvaluationOptions:
    """What to evaluate and how; the defaults are the `evaluate` command's."""

    catalog_url: str
    model: str = ""  # model .json/.safetensors or registry directory; "" = the bundled active model
    role: str = "test"
    reference: str = "HD"
    max_slices: int = 0
    baselines: bool = True
    device: str = "auto"
    val_catalog_url: str | None = None  # whose val patients tune the baselines (default: catalog_url)
    strength: float = 1.0
    self_ensemble: int = 0
    target_noise_hu: float | None = None  # the node's [model] target_noise_hu: None = the model's own, 0 = none
    lesions: Path | None = None  # a site's lesion manifest (evaluate/lesion_manifest.py); None = truth.json if any


@dataclass
class EvaluationOutcome:
    """The reports an evaluation wrote, for the caller to show."""

    report: EvalReport
    scorecard: dict[str, Any] | None = None  # with a noise-free REF only
    safety: dict[str, Any] | None = None  # with lesion truth (a manifest, or truth.json of synthetic archives) only
    written: list[Path] = field(default_factory=list)
    lesion_truth: str | None = None  # where the lesion truth came from; None: lesion figures not computed


def eval_slices(pairs: Sequence[SlicePair]) -> list[EvalSlice]:
    """Decode LD, HD (and REF where every pair has one) of the pairs to HU."""
    lds, hds = load_slices([p.ld for p in pairs]), load_slices([p.hd for p in pairs])
    refs: list[np.ndarray | None] = (
        list(load_slices([p.ref for p in pairs if p.ref is not None]))
        if all(p.ref for p in pairs)
        else [None] * len(pairs)
    )
    return [
        EvalSlice(p.patient_id, p.body_part or "", p.instance_number, a, b, r)
        for p, a, b, r in zip(pairs, lds, hds, refs, strict=True)
    ]


def split_pairs(catalog_url: str, role: str) -> list[SlicePair]:
    """The paired LD/HD slices of a split role; an EvaluationError when the catalog has no split."""
    cat = Catalog(catalog_url)
    try:
        return paired_slices(cat, role)
    except ValueError as exc:
        raise EvaluationError(str(exc)) from exc
    finally:
        cat.close()


def evenly_spaced(pairs: list[SlicePair], count: int) -> list[SlicePair]:
    """At most ``count`` pairs evenly spaced over the list, so every patient and body part is represented."""
    if not count or len(pairs) <= count:
        return pairs
    return [pairs[i] for i in np.linspace(0, len(pairs) - 1, count).round().astype(int)]


def lesion_truths(pairs: Sequence[SlicePair]) -> list[list[LesionTruth] | None]:
    """Each slice's lesions from its synthetic patient's truth.json (None for real data without one)."""
    cache: dict[Path, dict[int, list[LesionTruth]] | None] = {}
    out: list[list[LesionTruth] | None] = []
    for p in pairs:
        patient_dir = Path(p.ld).parent.parent
        if patient_dir not in cache:
            cache[patient_dir] = load_truth(patient_dir) if (patient_dir / "truth.json").exists() else None
        truth = cache[patient_dir]
        out.append(None if truth is None else truth.get(int(p.instance_number), []))
    return out


def truth_for(pairs: Sequence[SlicePair], manifest: Path | None) -> tuple[list[list[LesionTruth] | None], str | None]:
    """Each slice's lesions, and where they came from: the site's manifest when given, else the synthetic
    archive's truth.json; (all None, None) without either, and the lesion figures are then not computed."""
    if manifest is not None:
        try:
            return list(manifest_truths(manifest, pairs)), str(manifest)
        except LesionManifestError as exc:
            raise EvaluationError(f"--lesions: {exc}") from exc  # one line per error: not in a wrapped box
    truths = lesion_truths(pairs)
    return truths, "truth.json (synthetic archive)" if any(t is not None for t in truths) else None


def _load(model: str, device: str) -> tuple[torch.nn.Module, ModelInfo, torch.device]:
    """An exported model (.json/.safetensors/registry directory), or the generator a training checkpoint (.pt)
    would export, built in memory and placed as the node places a loaded model."""
    try:
        dev = select_device(device)
        if Path(model).suffix == ".pt":
            network, info = checkpoint_model(Path(model))
            network.to(dev).eval().requires_grad_(False)
        else:
            network, info = load_model(resolve_model_path(model), dev)
    except (ModelError, RuntimeError) as exc:
        raise EvaluationError(f"cannot load model: {exc}", exit_code=3) from exc
    return network, info, dev


def node_denoiser(
    model: str,
    device: str = "auto",
    strength: float = 1.0,
    self_ensemble: int = 0,
    target_noise_hu: float | None = None,
) -> tuple[Denoiser, ModelInfo, SeriesDenoiser]:
    """The model as the node runs it (its tiler, HU handling, strength, self-ensemble and noise target), so that what
    is scored is what the PACS gets; `evaluate` and its dose sweep share it."""
    network, info, dev = _load(model, device)
    try:
        settings = ModelSettings(strength=strength, self_ensemble=self_ensemble, target_noise_hu=target_noise_hu)
    except ValueError as exc:
        raise EvaluationError(str(exc), param_hint="--self-ensemble/--strength/--target-noise-hu") from exc
    denoiser = SeriesDenoiser(network, info, settings, DeriveSettings(), device=str(dev))
    return (lambda xs: list(denoiser.denoise_hu(iter(xs)))), info, denoiser


def _baselines(val_pairs: list[SlicePair], with_ref: bool) -> dict[str, Denoiser]:
    """Gaussian and non-local means, tuned where they are scored: vs REF in soft tissue when there is one."""
    if not val_pairs:
        return classical_baselines(None)
    picked = [
        val_pairs[i]
        for i in np.linspace(0, len(val_pairs) - 1, min(BASELINE_TUNING_SLICES, len(val_pairs))).astype(int)
    ]
    val_slices = eval_slices(picked)
    tune_ref = with_ref and all(v.ref is not None for v in val_slices)
    return classical_baselines(
        val_slices, reference="REF" if tune_ref else "HD", metric="psnr_soft" if tune_ref else "psnr"
    )


def evaluate_model(opts: EvaluationOptions, out_dir: Path) -> EvaluationOutcome:
    """Score the model and the baselines on the split role and write the reports into ``out_dir``."""
    model, info, denoiser = node_denoiser(
        opts.model, opts.device, opts.strength, opts.self_ensemble, opts.target_noise_hu
    )
    pairs = split_pairs(opts.catalog_url, opts.role)
    val_pairs = split_pairs(opts.val_catalog_url or opts.catalog_url, "val") if opts.baselines else []
    pairs = evenly_spaced(pairs, opts.max_slices)
    if not pairs:
        raise EvaluationError(f"no paired {opts.role} slices in the catalog")
    truths, truth_source = truth_for(pairs, opts.lesions)
    slices = eval_slices(pairs)
    methods: dict[str, Denoiser] = {"model": model}
    with_ref = all(s.ref is not None for s in slices)
    if opts.baselines:
        methods.update(_baselines(val_pairs, with_ref))
    safety = SafetyScores()
    card = Scorecard(slices, lesions=truths) if with_ref else None

    def score_safety(method: str, i: int, image: np.ndarray) -> None:
        truth, ref = truths[i], slices[i].ref
        if truth is not None:
            safety.add(method, image, ref, truth)
        if card is not None:
            card.add(method, i, image)

    report = evaluate(
        slices,
        methods,
        hu_window=(info.hu_min, info.hu_max),
        reference=opts.reference,
        per_output=score_safety,
        include_hd=card is not None,
    )
    model_info = {"name": info.name, "version": info.version}
    report.settings["model"] = {**model_info, "sha256": info.sha256}
    report.settings["strength"] = opts.strength
    report.settings["self_ensemble"] = denoiser.self_ensemble
    report.settings["target_noise_hu"] = denoiser.target_noise_hu
    report.settings["lesion_truth"] = truth_source or "none: lesion figures not computed"
    summary = None
    if card is not None:
        summary = card.summary(safety.lesions)
        summary["lesion_truth"] = truth_source
        summary["model_info"] = {
            **model_info,
            "strength": opts.strength,
            "self_ensemble": denoiser.self_ensemble,
            "target_noise_hu": denoiser.target_noise_hu,
        }
    safety_data = None
    if any(t is not None for t in truths):
        for i, s in enumerate(slices):  # the noise-free image against the truth: the scoring's own check
            if s.ref is not None:
                score_safety("REF", i, s.ref)
        safety_data = safety.to_json()
    outcome = EvaluationOutcome(report, summary, safety_data, lesion_truth=truth_source)
    _write(outcome, out_dir, slices[len(slices) // 2], methods["model"])
    return outcome


def _write(outcome: EvaluationOutcome, out_dir: Path, middle: EvalSlice, model: Denoiser) -> None:
    """The reports, and a montage of the middle slice: LD, the model, HD (and the noise-free REF)."""
    out_dir.mkdir(parents=True, exist_ok=True)
    files: dict[str, str] = {}
    outcome.report.to_json(out_dir / "evaluation.json")
    if outcome.scorecard is not None:
        files["scorecard.json"] = json.dumps(outcome.scorecard, indent=1, default=float)
        files["scorecard.md"] = scorecard_markdown(outcome.scorecard)
    outcome.report.to_csv(out_dir / "evaluation.csv")
    files["evaluation.md"] = markdown_table(outcome.report)
    if outcome.safety is not None:
        files["safety.json"] = json.dumps(outcome.safety, indent=1, default=float)
        files["safety.md"] = lesion_markdown(outcome.safety)
    for name, text in files.items():
        (out_dir / name).write_text(text)
    for name in sorted(set(OPTIONAL_REPORTS) - set(files)):  # a past run's: not this evaluation's figures
        if (out_dir / name).exists():
            (out_dir / name).unlink()
            log.info("removed %s of an earlier evaluation: not computed this time", out_dir / name)
    columns = {"LD": middle.ld, "model": model([middle.ld])[0], "HD": middle.hd}
    if middle.ref is not None:
        columns["noise-free"] = middle.ref
    h, w = middle.ld.shape
    save_montage(out_dir / "montage.png", columns, inset=(h // 2 - h // 16, w // 2 - w // 16, h // 8))
    names = ["evaluation.json", "evaluation.csv", *files, "montage.png"]
    outcome.written = [out_dir / name for name in names]
    log.info("evaluation written to %s: %s", out_dir, ", ".join(names))
