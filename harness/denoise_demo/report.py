"""The demo's numbers and picture: LD and denoised against HD (and the noise-free image), and the montage slice."""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from pydicom import dcmread

from dicom_denoise_node.denoise.decode import dataset_hu


@dataclass
class DemoResult:
    """What `make demo` measured; also written to results.json."""

    series_uid: str
    derived_series_uid: str
    slices: int
    pacs: str
    scu: str
    derivation_key: str  # the model version, plus self-ensemble / strength when used (the UIDs' key)
    seconds_per_slice: float
    wall_seconds: dict[str, float] = field(default_factory=dict)
    metrics: dict[str, dict[str, float]] = field(default_factory=dict)
    montage: str = ""
    pacs_url: str = ""
    report: str = ""  # the quality report (SR) the PACS received: the guard's verdict in one line


def slice_z(ds: Any) -> float:
    return round(float(ds.ImagePositionPatient[2]), 3)


def read_hu(ds: Any) -> np.ndarray:
    return dataset_hu(ds).astype(np.float64)


def load_volume(directory: Path) -> dict[float, np.ndarray]:
    """HU slices of a series folder keyed by table position."""
    out = {}
    for path in sorted(directory.glob("*.dcm")):
        ds = dcmread(path)
        out[slice_z(ds)] = read_hu(ds)
    return out


def compare(
    ld: dict[float, np.ndarray],
    den: dict[float, np.ndarray],
    hd: dict[float, np.ndarray],
    ref: dict[float, np.ndarray],
    hu_window: tuple[float, float],
) -> dict[str, dict[str, float]]:
    """LD vs HD and denoised vs HD: PSNR/SSIM in the model's [−1, 1] normalisation (its HU window, as `evaluate` and
    the model card use), noise std (against the noise-free image, in flat windows) and mean HU bias in the body;
    averages over slices."""
    from denoise_trainer.evaluate.image_metrics import (
        body_mask,
        find_flat_regions,
        hu_bias,
        noise_std,
        psnr,
        ssim,
        to_unit_range,
    )

    positions = sorted(set(ld) & set(den) & set(hd) & set(ref))
    if not positions:
        raise RuntimeError("no slice position is common to LD, denoised, HD and noise-free series")
    rows: dict[str, dict[str, list[float]]] = {"LD": {}, "denoised": {}, "HD": {}}
    for z in positions:
        regions = find_flat_regions(hd[z], ref[z])
        mask = body_mask(hd[z])
        target = to_unit_range(hd[z], hu_window)
        for name, image in (("LD", ld[z]), ("denoised", den[z]), ("HD", hd[z])):
            unit = to_unit_range(image, hu_window)
            values = rows[name]
            if name != "HD":
                values.setdefault("psnr_vs_hd", []).append(psnr(unit, target, 2.0))
                values.setdefault("ssim_vs_hd", []).append(ssim(unit, target, 2.0))
                values.setdefault("hu_bias_vs_hd", []).append(hu_bias(image, hd[z], mask))
            values.setdefault("psnr_vs_ref", []).append(psnr(unit, to_unit_range(ref[z], hu_window), 2.0))
            values.setdefault("noise_std_hu", []).append(noise_std(image, regions, ref=ref[z]))
    summary = {}
    for name, values in rows.items():
        summary[name] = {k: _nanmean(v) for k, v in values.items()}
        summary[name]["slices"] = float(len(positions))
    return summary


def montage_inset(
    truth: dict[str, Any], positions: list[float], shape: tuple[int, int]
) -> tuple[float, tuple[int, int, int] | None]:
    """The slice to show and a 64 px inset around its largest lesion (the middle slice when there is none): the
    low-contrast lesions are what a denoiser must not erase, so that is where the reader should look."""
    best: tuple[float, float, tuple[int, int, int]] | None = None
    for entry in truth.get("slices", []):
        for lesion in entry.get("lesions", []):
            z = round(float(entry["z_mm"]), 3)
            if z not in positions:
                continue
            col, row = lesion["center_px"]
            size = 64
            inset = (int(row) - size // 2, int(col) - size // 2, size)
            if best is None or lesion["radius_px"] > best[1]:
                best = (z, float(lesion["radius_px"]), inset)
    if best is not None:
        return best[0], _clip_inset(best[2], shape)
    return positions[len(positions) // 2], None


def _clip_inset(inset: tuple[int, int, int], shape: tuple[int, ...]) -> tuple[int, int, int]:
    y, x, size = inset
    y = min(max(0, y), shape[0] - size)
    x = min(max(0, x), shape[1] - size)
    return y, x, size


def write_report(result: DemoResult, path: Path) -> None:
    path.write_text(json.dumps(asdict(result), indent=2, default=str), encoding="utf-8")


def _nanmean(values: list[float]) -> float:
    finite = [v for v in values if not math.isnan(v)]
    return float(np.mean(finite)) if finite else math.nan


def summarise_report(datasets: list[Any]) -> str:
    """One line from the quality report (SR) the PACS received: flagged slices and noise before/after."""
    if not datasets:
        return "no quality report received"
    values: dict[str, float] = {}
    summary = datasets[0].ContentSequence[0]  # the report's first container: its summary
    for item in summary.get("ContentSequence", []):
        if item.ValueType == "NUM":
            values[item.ConceptNameCodeSequence[0].CodeValue] = float(item.MeasuredValueSequence[0].NumericValue)
    flagged = int(values.get("FLAGGED", 0))
    noise = ""
    if "NOISEIN" in values and "NOISEOUT" in values:
        noise = f"; noise in flat regions {values['NOISEIN']:.1f} → {values['NOISEOUT']:.1f} HU"
    return f"quality report (SR) in the PACS: {flagged} slice(s) flagged by the consistency guard{noise}"
