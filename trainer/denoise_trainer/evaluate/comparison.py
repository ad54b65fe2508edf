"""Paired evaluation of denoisers on aligned LD / HD (/ REF) HU slices: the figures a physicist signs off on.

Why this shape: every method (the identity "LD", the model, classical baselines) goes through the same code path
and is scored against the same reference image, in the same windows, over the same flat regions, so the rows of
the table differ only by the method. PSNR / SSIM / MS-SSIM come from torchmetrics (not hand-written) so that they
match what others report. Metrics compare each output with HD by default (the paper's protocol on real data);
`reference="REF"` scores against the noise-free reconstruction of the synthetic archive instead.

Baselines: a Gaussian filter and non-local means, each tuned on validation slices so the model is compared with
a fair opponent, not a straw man. BM3D (`bm3d` package) would be the stronger classical baseline but is left out
for its licence; it could be added as one more `Denoiser` where a site may use it.
"""

from __future__ import annotations

import csv
import json
import logging
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from rich.console import JustifyMethod
from rich.table import Table

from denoise_trainer.evaluate.baselines import Denoiser, describe, reference_image
from denoise_trainer.evaluate.image_metrics import (
    BODY_THRESHOLD_HU,
    FLAT_MAX_REGIONS,
    FLAT_SIZE,
    FLAT_SMOOTH,
    FLAT_TOL_HU,
    MODEL_HU_WINDOW,
    MS_SSIM_BETAS,
    SOFT_TISSUE_WINDOW,
    SSIM_KERNEL,
    SSIM_SIGMA,
    EvalSlice,
    HUWindow,
    body_mask,
    find_flat_regions,
    hu_bias,
    image_metrics,
    ms_ssim_betas,
    noise_std,
)

log = logging.getLogger(__name__)

METRIC_KEYS: tuple[str, ...] = (
    "psnr",
    "ssim",
    "ms_ssim",
    "psnr_soft",
    "ssim_soft",
    "ms_ssim_soft",
    "hu_bias_hd",
    "hu_bias_ref",
    "noise_std",
    "noise_std_hd",
    "seconds",
)
ROW_KEYS: tuple[str, ...] = (
    "patient_id",
    "body_part",
    "instance_number",
    "method",
    *METRIC_KEYS,
    "flat_regions",
    "ms_ssim_scales",
)


# --------------------------------------------------------------------------------------------------- report


def _mean_std(values: Sequence[float]) -> tuple[float, float]:
    """Mean and sample std over slices; NaN entries (e.g. no REF) are skipped; +inf (identical images) is kept
    as mean inf with std 0 when every value is inf."""
    arr = np.asarray([v for v in values if v is not None and not math.isnan(v)], dtype=np.float64)
    if arr.size == 0:
        return math.nan, math.nan
    if np.isinf(arr).any():
        return (float(arr[0]), 0.0) if np.all(arr == arr[0]) else (float(np.sum(arr)), math.nan)
    return float(arr.mean()), float(arr.std(ddof=1)) if arr.size > 1 else 0.0


def _to_json_value(v: Any) -> Any:
    if isinstance(v, float) and not math.isfinite(v):
        return None if math.isnan(v) else ("inf" if v > 0 else "-inf")
    if isinstance(v, dict):
        return {k: _to_json_value(x) for k, x in v.items()}
    if isinstance(v, list | tuple):
        return [_to_json_value(x) for x in v]
    return v


def _from_json_row(row: dict[str, Any]) -> dict[str, Any]:
    out = dict(row)
    for key in METRIC_KEYS:
        v = out.get(key)
        out[key] = math.nan if v is None else float(v)  # float("inf") parses the "inf" marker
    return out


@dataclass
class EvalReport:
    """Per-slice, per-method metric rows plus the settings needed to reproduce them."""

    reference: str
    hu_window: HUWindow
    methods: list[str]
    rows: list[dict[str, Any]]
    ms_ssim_betas: dict[str, list[float]] = field(default_factory=dict)
    settings: dict[str, Any] = field(default_factory=dict)

    def method_rows(self, method: str) -> list[dict[str, Any]]:
        """The per-slice rows of one method, in slice order."""
        return [r for r in self.rows if r["method"] == method]

    def summary_rows(self) -> list[dict[str, Any]]:
        """One row per method: n_slices and `<metric>_mean` / `<metric>_std` across slices."""
        summary = []
        for method in self.methods:
            rows = self.method_rows(method)
            entry: dict[str, Any] = {"method": method, "n_slices": len(rows)}
            for key in METRIC_KEYS:
                entry[f"{key}_mean"], entry[f"{key}_std"] = _mean_std([r[key] for r in rows])
            summary.append(entry)
        return summary

    def to_json(self, path: Path | str) -> None:
        """Strict JSON (no NaN/Infinity tokens): NaN → null, ±inf → "inf"/"-inf"; `from_json` restores them."""
        doc = {
            "reference": self.reference,
            "hu_window": list(self.hu_window),
            "soft_tissue_window": list(SOFT_TISSUE_WINDOW),
            "methods": self.methods,
            "ms_ssim_betas": self.ms_ssim_betas,
            "settings": self.settings,
            "summary": self.summary_rows(),
            "slices": self.rows,
        }
        Path(path).write_text(json.dumps(_to_json_value(doc), indent=2, allow_nan=False) + "\n")

    @classmethod
    def from_json(cls, path: Path | str) -> EvalReport:
        """Read back a report written by `to_json` (inf and NaN restored), e.g. to compare two models."""
        doc = json.loads(Path(path).read_text())
        return cls(
            reference=doc["reference"],
            hu_window=(float(doc["hu_window"][0]), float(doc["hu_window"][1])),
            methods=list(doc["methods"]),
            rows=[_from_json_row(r) for r in doc["slices"]],
            ms_ssim_betas={k: [float(b) for b in v] for k, v in doc["ms_ssim_betas"].items()},
            settings=dict(doc.get("settings", {})),
        )

    def to_csv(self, path: Path | str) -> None:
        """One row per (slice, method); floats as repr so they round-trip, inf/nan as "inf"/"nan"."""
        with Path(path).open("w", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=list(ROW_KEYS))
            writer.writeheader()
            for row in self.rows:
                writer.writerow({k: row[k] for k in ROW_KEYS})


def _check_outputs(method: str, outs: list[np.ndarray], inputs: list[np.ndarray]) -> None:
    if len(outs) != len(inputs):
        raise ValueError(f"method {method!r} returned {len(outs)} slices for {len(inputs)} inputs")
    for o, i in zip(outs, inputs, strict=True):
        if np.shape(o) != np.shape(i):
            raise ValueError(f"method {method!r} changed a slice's shape from {np.shape(i)} to {np.shape(o)}")


def _run_method(
    name: str, method: Denoiser | None, slices: list[EvalSlice], batch_size: int
) -> tuple[list[np.ndarray], list[float]]:
    """One method's output per slice, in batches, and its seconds per slice (LD and HD are the slices' own)."""
    outputs: list[np.ndarray] = []
    seconds: list[float] = []
    for start in range(0, len(slices), batch_size):
        batch = slices[start : start + batch_size]
        inputs = [s.ld for s in batch]
        if name == "LD":
            outs, elapsed = inputs, 0.0
        elif name == "HD":
            outs, elapsed = [s.hd for s in batch], 0.0
        else:
            assert method is not None
            copies = [np.array(x, copy=True) for x in inputs]  # a method that works in place cannot spoil LD
            t0 = time.perf_counter()
            outs = [np.asarray(o) for o in method(copies)]
            elapsed = time.perf_counter() - t0
            _check_outputs(name, outs, inputs)
        outputs.extend(outs)
        seconds.extend([elapsed / len(batch)] * len(batch))
    return outputs, seconds


def evaluate(
    slices: list[EvalSlice],
    methods: dict[str, Denoiser],
    hu_window: HUWindow = MODEL_HU_WINDOW,
    reference: str = "HD",
    *,
    include_hd: bool = False,
    batch_size: int = 8,
    flat_size: int = FLAT_SIZE,
    flat_max_regions: int = FLAT_MAX_REGIONS,
    flat_tol_hu: float = FLAT_TOL_HU,
    per_output: Callable[[str, int, np.ndarray], None] | None = None,
) -> EvalReport:
    """Score "LD" (identity, always), each method, and optionally "HD" (sanity row) against the reference.

    Seconds per slice are the wall time of each batched call divided by the batch length (0 for LD and HD).
    ``per_output(method, slice index, output HU)`` sees every output, for scores beyond these (``evaluate/lesions.py``).
    """
    if not slices:
        raise ValueError("evaluate needs at least one slice")
    reserved = {"LD", "HD"} & set(methods)
    if reserved:
        raise ValueError(f"method names {sorted(reserved)} are reserved (LD is always scored, HD via include_hd)")
    targets = [reference_image(s, reference) for s in slices]
    names = ["LD", *methods] + (["HD"] if include_hd else [])
    regions = [
        find_flat_regions(s.hd, s.ref, size=flat_size, max_regions=flat_max_regions, tol_hu=flat_tol_hu) for s in slices
    ]
    bodies = [body_mask(s.hd) for s in slices]
    hd_noise = [noise_std(s.hd, r, flat_size, s.ref) for s, r in zip(slices, regions, strict=True)]
    betas = {f"{s.hd.shape[0]}x{s.hd.shape[1]}": list(ms_ssim_betas(s.hd.shape)) for s in slices}
    for shape, b in betas.items():
        if len(b) < len(MS_SSIM_BETAS):
            log.info("MS-SSIM on %s slices uses %d scales, betas %s", shape, len(b), [round(x, 4) for x in b])

    rows: list[dict[str, Any]] = []
    for name in names:
        outputs, seconds = _run_method(name, methods.get(name), slices, batch_size)
        for i, (s, out) in enumerate(zip(slices, outputs, strict=True)):
            if per_output is not None:
                per_output(name, i, out)
            row: dict[str, Any] = {
                "patient_id": s.patient_id,
                "body_part": s.body_part,
                "instance_number": s.instance_number,
                "method": name,
            }
            row.update(image_metrics(out, targets[i], hu_window))
            row["hu_bias_hd"] = hu_bias(out, s.hd, bodies[i])
            row["hu_bias_ref"] = hu_bias(out, s.ref, bodies[i]) if s.ref is not None else math.nan
            row["noise_std"] = noise_std(out, regions[i], flat_size, s.ref)
            row["noise_std_hd"] = hd_noise[i]
            row["seconds"] = seconds[i]
            row["flat_regions"] = len(regions[i])
            row["ms_ssim_scales"] = len(ms_ssim_betas(np.shape(out)))
            rows.append(row)
        log.info("evaluated %s on %d slices (%.3f s/slice)", name, len(slices), float(np.mean(seconds)))
    settings = {
        "body_threshold_hu": BODY_THRESHOLD_HU,
        "ssim_kernel": SSIM_KERNEL,
        "ssim_sigma": SSIM_SIGMA,
        "flat_size": flat_size,
        "flat_max_regions": flat_max_regions,
        "flat_tol_hu": flat_tol_hu,
        "flat_guide": "REF" if all(s.ref is not None for s in slices) else "box-smoothed HD where no REF",
        "flat_smooth_px": FLAT_SMOOTH,
        "batch_size": batch_size,
        "methods": {name: describe(fn) for name, fn in methods.items()},
    }
    return EvalReport(reference, (float(hu_window[0]), float(hu_window[1])), names, rows, betas, settings)


# --------------------------------------------------------------------------------------------------- table


def _fmt(mean: float, std: float, digits: int, signed: bool = False) -> str:
    if math.isnan(mean):
        return "–"
    if math.isinf(mean):
        return "inf" if mean > 0 else "-inf"
    sign = "+" if signed else ""
    text = f"{mean:{sign}.{digits}f}"
    return text if math.isnan(std) or std == 0.0 else f"{text} ± {std:.{digits}f}"


def _table_cells(report: EvalReport) -> tuple[list[tuple[str, JustifyMethod]], list[list[str]], str, str]:
    """Columns, rows (mean ± std over slices), title and caption shared by the console and Markdown tables."""
    summary = report.summary_rows()
    has_ref = any(not math.isnan(r["hu_bias_ref"]) for r in report.rows)
    hd_noise = summary[0]["noise_std_hd_mean"] if summary else math.nan
    betas = "; ".join(f"{k}: {len(v)} scales" for k, v in report.ms_ssim_betas.items())
    title = f"Denoising vs {report.reference} ({summary[0]['n_slices'] if summary else 0} slices)"
    caption = (
        f"window {report.hu_window[0]:g}…{report.hu_window[1]:g} HU; soft tissue W400/L40; "
        f"MS-SSIM {betas}; HD noise {_fmt(hd_noise, math.nan, 1)} HU"
    )
    columns: list[tuple[str, JustifyMethod]] = [
        ("Method", "left"),
        ("PSNR dB", "right"),
        ("SSIM", "right"),
        ("MS-SSIM", "right"),
        ("PSNR soft dB", "right"),
        ("SSIM soft", "right"),
        ("HU bias vs HD", "right"),
    ]
    if has_ref:
        columns.append(("HU bias vs REF", "right"))
    columns += [("noise std HU", "right"), ("s/slice", "right")]
    rows = []
    for e in summary:
        cells = [
            e["method"],
            _fmt(e["psnr_mean"], e["psnr_std"], 2),
            _fmt(e["ssim_mean"], e["ssim_std"], 4),
            _fmt(e["ms_ssim_mean"], e["ms_ssim_std"], 4),
            _fmt(e["psnr_soft_mean"], e["psnr_soft_std"], 2),
            _fmt(e["ssim_soft_mean"], e["ssim_soft_std"], 4),
            _fmt(e["hu_bias_hd_mean"], e["hu_bias_hd_std"], 1, signed=True),
        ]
        if has_ref:
            cells.append(_fmt(e["hu_bias_ref_mean"], e["hu_bias_ref_std"], 1, signed=True))
        cells += [_fmt(e["noise_std_mean"], e["noise_std_std"], 1), f"{e['seconds_mean']:.3g}"]
        rows.append(cells)
    return columns, rows, title, caption


def render_table(report: EvalReport) -> Table:
    """Methods as rows, mean ± std over slices as cells (rich Table, for the console or a notebook)."""
    columns, rows, title, caption = _table_cells(report)
    table = Table(title=title, caption=caption)
    for name, justify in columns:
        table.add_column(name, justify=justify)
    for cells in rows:
        table.add_row(*cells)
    return table


def markdown_table(report: EvalReport) -> str:
    """The same table as Markdown (model cards, issue notes)."""
    columns, rows, title, caption = _table_cells(report)
    lines = [f"{title}; {caption}.", "", "| " + " | ".join(c for c, _ in columns) + " |"]
    lines.append("|" + "|".join("---:" if j == "right" else "---" for _, j in columns) + "|")
    lines += ["| " + " | ".join(cells) + " |" for cells in rows]
    return "\n".join(lines) + "\n"
