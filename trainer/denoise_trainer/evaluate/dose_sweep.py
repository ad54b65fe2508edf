"""The dose sweep (`denoise-node evaluate --dose-sweep`): output noise ÷ HD noise at LD noise levels of 15–70 HU.

Why: a model trained at one dose may remove the right amount of noise there and too little (or too much) elsewhere;
a site's low-dose series span far more than one dose. The sweep scans the **same anatomy** (fixed phantom slices,
abdomen and chest) once at the regular dose (HD) and at LD doses set so that LD's soft-tissue noise reaches each
requested level, then runs each model through the node's own path (`workflow.node_denoiser`: tiler, HU handling,
self-ensemble) and measures its output noise against the noise-free REF.

Noise is the project's one error figure: the std of image − REF over the soft tissue of REF (`error_figures`,
`soft_tissue_mask`, as the scorecard). Scanning is the project's simulator (Poisson + electronic noise on the
projections, FBP; never image-domain noise). The LD dose of each level is calibrated per patient by measuring:
noise ∝ 1/sqrt(I0) gives the first guess, a secant in log–log space corrects for electronic noise, and the
measured level (not the requested one) is reported.
"""

from __future__ import annotations

import json
import logging
import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np

from denoise_trainer.archive.phantom import make_patient, render_slice
from denoise_trainer.archive.physics import DEFAULT_I0_HD, simulate_doses
from denoise_trainer.archive.protocol import FOV_MM
from denoise_trainer.evaluate.baselines import Denoiser, identity, nlm_denoiser
from denoise_trainer.evaluate.dose_plot import save_sweep_plot
from denoise_trainer.evaluate.lesions import tissue_bias
from denoise_trainer.evaluate.workflow import EvaluationError, node_denoiser
from denoise_trainer.train.validation import error_figures, soft_tissue_mask

log = logging.getLogger(__name__)

DEFAULT_LEVELS_HU: tuple[float, ...] = (15.0, 24.0, 33.0, 44.0, 56.0, 70.0)  # LD soft-tissue noise, HU
DEFAULT_SEED = 2828  # the sweep's anatomy and noise; fixed so that sweeps of different models see the same images
BODY_PARTS: tuple[str, ...] = ("abdomen", "chest")  # patients alternate, abdomen first
Z_SPREAD_MM = 30.0  # slices evenly spaced over ±15 mm of the patient's centre
CALIBRATION_TOLERANCE = 0.05  # a level is reached when measured LD noise is within 5 % of the requested
CALIBRATION_ROUNDS = 4  # scans per level at most (the first from 1/sqrt(I0), then secant corrections)
BAND = (0.8, 1.2)  # issue 28: the default's output noise within 0.8–1.2 × HD's


@dataclass(frozen=True)
class SweepOptions:
    """What is scanned: the anatomy, the geometry and the levels; the defaults are the command's."""

    levels_hu: tuple[float, ...] = DEFAULT_LEVELS_HU
    patients: int = 2
    slices: int = 2  # per patient
    size: int = 512
    seed: int = DEFAULT_SEED
    hd_i0: float = DEFAULT_I0_HD  # the regular dose, as in the synthetic archive
    fov_mm: float = FOV_MM
    views: int | None = None  # None: the simulator's default for the size
    kernel: str = "shepp-logan"  # the synthetic archive's FBP window
    detail: str = "plain"  # the phantom: "plain" (the bundled models' training anatomy) or "rich"


@dataclass
class PatientScan:
    """One patient's slices: noise-free REF, HD, and LD at each level with the dose that reached it."""

    patient_id: str
    body_part: str
    refs: list[np.ndarray]
    hds: list[np.ndarray]
    lds: list[list[np.ndarray]]  # [level][slice]
    i0: list[float]  # LD photons per ray, per level
    measured_hu: list[float]  # LD noise per level (mean over slices)
    hd_noise_hu: float
    masks: list[np.ndarray] = field(default_factory=list)


def mean_noise(images: Sequence[np.ndarray], refs: Sequence[np.ndarray], masks: Sequence[np.ndarray]) -> float:
    """Mean over slices of the std of image − REF in the soft tissue of REF (the scorecard's error figure)."""
    return float(np.mean([error_figures(im, r, m)[0] for im, r, m in zip(images, refs, masks, strict=True)]))


def phantom_slices(opts: SweepOptions) -> list[tuple[str, str, list[np.ndarray]]]:
    """(patient id, body part, HU slices) of the sweep's fixed anatomy: patients alternate abdomen and chest."""
    spacing = opts.fov_mm / opts.size
    out = []
    for index in range(opts.patients):
        body_part = BODY_PARTS[index % len(BODY_PARTS)]
        rng = np.random.default_rng(np.random.SeedSequence([opts.seed, index, 0]))
        zs = np.linspace(-Z_SPREAD_MM / 2, Z_SPREAD_MM / 2, opts.slices) if opts.slices > 1 else np.zeros(1)
        anatomy = make_patient(rng, body_part, (-60.0, 60.0), detail=opts.detail)  # type: ignore[arg-type]
        hus = [render_slice(anatomy, float(z), opts.size, spacing)[0] for z in zs]
        out.append((f"SWEEP{index + 1:02d}", body_part, hus))
    return out


def _next_i0(i0: float, noise: float, target: float, anchor: tuple[float, float]) -> float:
    """The dose expected to give ``target``: a secant through the last two (I0, noise) points in log–log space, its
    slope kept between −2 and −0.25 (−0.5 is pure photon noise; electronic noise steepens it at low dose)."""
    a_i0, a_noise = anchor
    span = math.log(i0 / a_i0)
    slope = math.log(noise / a_noise) / span if abs(span) > 1e-6 and noise > 0 and a_noise > 0 else -0.5
    slope = min(-0.25, max(-2.0, slope))
    return i0 * (target / noise) ** (1.0 / slope)


def scan_patient(
    patient_id: str, body_part: str, hus: Sequence[np.ndarray], opts: SweepOptions, rng: np.random.Generator
) -> PatientScan:
    """Scan one patient at HD and at each level's LD dose, calibrated on its own slices until within tolerance (the
    closest of the scans is kept: on small images the measured noise itself varies by a few per cent)."""
    spacing = opts.fov_mm / opts.size

    def scan(doses: dict[str, float]) -> list[dict[str, np.ndarray]]:
        return [
            simulate_doses(hu, doses, rng, pixel_spacing=spacing, views=opts.views, window=opts.kernel) for hu in hus
        ]

    first = scan({"HD": opts.hd_i0})
    refs, hds = [im["REF"] for im in first], [im["HD"] for im in first]
    masks = [soft_tissue_mask(r) for r in refs]
    hd_noise = mean_noise(hds, refs, masks)
    if not math.isfinite(hd_noise) or hd_noise <= 0:
        raise ValueError(f"{patient_id}: no soft tissue to measure noise in")
    levels = list(opts.levels_hu)
    i0 = [opts.hd_i0 * (hd_noise / t) ** 2 for t in levels]  # noise ∝ 1/sqrt(I0)
    anchors = [(opts.hd_i0, hd_noise)] * len(levels)
    lds: list[list[np.ndarray]] = [[] for _ in levels]
    measured, dose = [math.nan] * len(levels), list(i0)
    todo = list(range(len(levels)))
    for round_ in range(CALIBRATION_ROUNDS):
        images = scan({f"L{k}": i0[k] for k in todo})
        for k in todo:
            noise = mean_noise([im[f"L{k}"] for im in images], refs, masks)
            if not math.isfinite(measured[k]) or abs(noise / levels[k] - 1) < abs(measured[k] / levels[k] - 1):
                lds[k], measured[k], dose[k] = [im[f"L{k}"] for im in images], noise, i0[k]  # the closest scan so far
            anchors[k], i0[k] = (i0[k], noise), _next_i0(i0[k], noise, levels[k], anchors[k])
        todo = [k for k in todo if abs(measured[k] / levels[k] - 1.0) > CALIBRATION_TOLERANCE]
        log.info("%s round %d: LD noise %s HU", patient_id, round_ + 1, ", ".join(f"{m:.1f}" for m in measured))
        if not todo:
            break
    for k in todo:
        log.warning(
            "%s: LD level %.0f HU reached %.1f HU only (outside the tolerance)", patient_id, levels[k], measured[k]
        )
    return PatientScan(patient_id, body_part, refs, hds, lds, dose, measured, hd_noise, masks)


def scan_sweep(opts: SweepOptions) -> list[PatientScan]:
    """Every patient of the sweep scanned at HD and at every level (seeded: the same images for every model)."""
    if opts.patients < 1 or opts.slices < 1 or not opts.levels_hu:
        raise ValueError("a dose sweep needs at least one patient, one slice and one level")
    scans = []
    for index, (pid, body_part, hus) in enumerate(phantom_slices(opts)):
        rng = np.random.default_rng(np.random.SeedSequence([opts.seed, index, 1]))
        scans.append(scan_patient(pid, body_part, hus, opts, rng))
    return scans


def _figures(images: Sequence[np.ndarray], scan: PatientScan) -> dict[str, float]:
    """One patient's figures for one level: noise (std of image − REF in soft tissue), its bias, RMSE, and the HU
    bias in fat and soft tissue (eroded windows, as the scorecard)."""
    per_slice = [error_figures(im, r, m) for im, r, m in zip(images, scan.refs, scan.masks, strict=True)]
    tissues = [tissue_bias(im, r) for im, r in zip(images, scan.refs, strict=True)]
    noise = float(np.mean([s for s, _ in per_slice]))
    return {
        "noise_hu": noise,
        "bias_hu": float(np.mean([b for _, b in per_slice])),
        "rmse_hu": float(np.mean([math.hypot(s, b) for s, b in per_slice])),
        "bias_soft_hu": float(np.nanmean([t["soft tissue"][0] for t in tissues])),
        "bias_fat_hu": float(np.nanmean([t["fat"][0] for t in tissues])),
        "ratio": noise / scan.hd_noise_hu,
    }


def score_method(denoiser: Denoiser, scans: Sequence[PatientScan], levels: Sequence[float]) -> list[dict[str, Any]]:
    """Per level: the method's output noise and its ratio to HD's (mean over patients of each patient's ratio, as
    the scorecard's error × HD), RMSE and biases, with every patient's figures."""
    rows = []
    for k, requested in enumerate(levels):
        patients = {s.patient_id: {"ld_hu": s.measured_hu[k], **_figures(denoiser(list(s.lds[k])), s)} for s in scans}

        def mean(key: str, pts: dict[str, dict[str, float]] = patients) -> float:
            return float(np.nanmean([p[key] for p in pts.values()]))

        rows.append(
            {
                "requested_ld_hu": float(requested),
                "measured_ld_hu": float(np.mean([s.measured_hu[k] for s in scans])),
                "output_noise_hu": mean("noise_hu"),
                "hd_noise_hu": float(np.mean([s.hd_noise_hu for s in scans])),
                "ratio": mean("ratio"),
                "rmse_hu": mean("rmse_hu"),
                "bias_hu": mean("bias_hu"),
                "bias_soft_hu": mean("bias_soft_hu"),
                "bias_fat_hu": mean("bias_fat_hu"),
                "patients": patients,
            }
        )
    return rows


def _unique(name: str, taken: dict[str, Any]) -> str:
    out, n = name, 2
    while out in taken:
        out, n = f"{name} ({n})", n + 1
    return out


def sweep_methods(
    models: Sequence[str],
    *,
    device: str = "auto",
    strength: float = 1.0,
    self_ensemble: int = 0,
    nlm_h: float = 0.0,
    target_noise_hu: float | None = None,
) -> tuple[dict[str, Denoiser], dict[str, dict[str, Any]]]:
    """LD (no denoising), each model through the node's path, and NLM at a fixed h factor when ``nlm_h`` > 0;
    with each method's description for the report."""
    methods: dict[str, Denoiser] = {"LD": identity}
    about: dict[str, dict[str, Any]] = {"LD": {"description": "the LD input, no denoising"}}
    for model in models or [""]:
        run, info, denoiser = node_denoiser(model, device, strength, self_ensemble, target_noise_hu)
        name = _unique(f"{info.name} {info.version}", methods)
        methods[name] = run
        about[name] = {
            "name": info.name,
            "version": info.version,
            "sha256": info.sha256,
            "strength": strength,
            "self_ensemble": denoiser.self_ensemble,
            "target_noise_hu": denoiser.target_noise_hu,
        }
    if nlm_h > 0:
        nlm = f"nlm (h = {nlm_h:g} x sigma)"
        methods[nlm] = nlm_denoiser(nlm_h)
        about[nlm] = {"description": f"non-local means, h = {nlm_h:g} · sigma estimated per slice (not re-tuned)"}
    return methods, about


def dose_sweep(
    opts: SweepOptions, methods: dict[str, Denoiser], about: dict[str, dict[str, Any]] | None = None
) -> dict[str, Any]:
    """Scan the sweep and score every method at every level: the content of dose_sweep.json."""
    scans = scan_sweep(opts)
    results: dict[str, Any] = {}
    for name, denoiser in methods.items():
        log.info("dose sweep: %s", name)
        results[name] = {**(about or {}).get(name, {}), "levels": score_method(denoiser, scans, opts.levels_hu)}
    return {
        "settings": {**asdict(opts), "pixel_spacing_mm": opts.fov_mm / opts.size, "band": list(BAND)},
        "date": datetime.now(UTC).strftime("%Y-%m-%d"),
        "patients": [
            {
                "patient_id": s.patient_id,
                "body_part": s.body_part,
                "hd_noise_hu": s.hd_noise_hu,
                "ld_i0": s.i0,
                "ld_measured_hu": s.measured_hu,
            }
            for s in scans
        ],
        "methods": results,
    }


def write_sweep(result: dict[str, Any], out_dir: Path) -> list[Path]:
    """dose_sweep.json, dose_sweep.md and dose_sweep.png (ratio against LD noise, the band marked)."""
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = [out_dir / "dose_sweep.json", out_dir / "dose_sweep.md", out_dir / "dose_sweep.png"]
    paths[0].write_text(json.dumps(result, indent=1, default=float))
    paths[1].write_text(markdown(result))
    curves = {
        name: [(row["measured_ld_hu"], row["ratio"]) for row in method["levels"]]
        for name, method in result["methods"].items()
        if name != "LD"
    }
    save_sweep_plot(paths[2], curves, band=BAND)
    return paths


def markdown(result: dict[str, Any]) -> str:
    """The sweep as a markdown table: one row per level, per method output noise and its ratio to HD's."""
    methods = [m for m in result["methods"] if m != "LD"]
    first = result["methods"]["LD"]["levels"]
    head = "| LD noise (requested) | LD noise (measured) | HD noise | " + " | ".join(methods) + " |"
    lines = [
        "Output noise (std of output − REF in soft tissue, HU) and its ratio to HD's, mean over patients.",
        "",
        head,
        "|" + "---|" * (3 + len(methods)),
    ]
    for k, level in enumerate(first):
        cells = []
        for m in methods:
            row = result["methods"][m]["levels"][k]
            cells.append(f"{row['output_noise_hu']:.1f} HU (**{row['ratio']:.2f}**)")
        lines.append(
            f"| {level['requested_ld_hu']:.0f} HU | {level['measured_ld_hu']:.1f} HU | {level['hd_noise_hu']:.1f} HU | "
            + " | ".join(cells)
            + " |"
        )
    return "\n".join(lines) + "\n"


def run_dose_sweep(
    opts: SweepOptions,
    models: Sequence[str],
    out_dir: Path,
    *,
    device: str = "auto",
    strength: float = 1.0,
    self_ensemble: int = 0,
    nlm_h: float = 0.0,
    target_noise_hu: float | None = None,
) -> tuple[dict[str, Any], list[Path]]:
    """The command's work: load the models, sweep, write the JSON, the markdown table and the plot."""
    node = {"strength": strength, "self_ensemble": self_ensemble, "target_noise_hu": target_noise_hu}
    methods, about = sweep_methods(models, device=device, nlm_h=nlm_h, **node)
    try:
        result = dose_sweep(opts, methods, about)
    except ValueError as exc:
        raise EvaluationError(f"dose sweep: {exc}") from exc
    return result, write_sweep(result, out_dir)
