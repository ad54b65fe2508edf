"""The figures a model is accepted on (docs/model-card.md): against the noise-free REF, per patient, with bootstrap
95 % intervals, a noise-texture figure, lesions and HU bias, and the consistency guard's flag rate.

Why per patient: slices of one patient are strongly correlated, so an interval over slices would be far too narrow;
patients are the independent units, and the bootstrap resamples them. Why a texture figure: a denoiser can reach a
low error by over-smoothing ("plastic" images) that radiologists reject; the share of the residual's noise power at
high spatial frequencies (from its noise power spectrum) shows it, relative to HD's own share.
"""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Sequence
from typing import Any

import numpy as np
from scipy import ndimage
from scipy.stats import binomtest

from denoise_trainer.evaluate.image_metrics import EvalSlice, psnr, ssim, to_soft_tissue
from denoise_trainer.evaluate.lesions import LesionScore, LesionTruth, lesion_masks, tissue_bias
from denoise_trainer.train.validation import error_figures, soft_tissue_mask
from dicom_denoise_node.config import GuardSettings
from dicom_denoise_node.denoise.guard import check_slice

NPS_BLOCK = 32  # px: square regions of soft tissue in which the residual's power spectrum is measured
HF_CUTOFF = 0.25  # cycles/px: above this radial frequency (half of Nyquist) counts as "high frequency"
MIN_LESION_RADIUS_MM = 1.5  # "lesions ≥ 3 mm" read as diameter, the stricter reading
BOOTSTRAP = 2000
# The guard's catch rates are measured on the tampering it is specified to find (dicom_denoise_node/denoise/guard.py):
TAMPER_MIN_CONTRAST_HU = 20.0  # painted-out lesions: |inserted contrast| at least this …
TAMPER_MIN_RADIUS_PX = 4.0  # … and at least this radius
NODULE_RADIUS_PX = 6.0  # an added nodule: a disk of this radius …
NODULE_HU = 60.0  # … this much brighter than its surroundings, in soft tissue away from every lesion
NO_LESION_TRUTH = "no lesion truth: not computed"


def radial_frequency(n: int) -> np.ndarray:
    """Radial frequency (cycles/px) of each bin of an n×n FFT, in numpy's FFT order."""
    f = np.fft.fftfreq(n)
    return np.hypot(f[:, None], f[None, :])


def nps_blocks(residual: np.ndarray, mask: np.ndarray, block: int = NPS_BLOCK) -> np.ndarray:
    """Summed 2-D noise power spectrum (|FFT|² of the mean-removed residual) over block×block regions that lie wholly
    in the mask; zeros when there is none."""
    h, w = residual.shape
    total = np.zeros((block, block))
    for y in range(0, h - block + 1, block):
        for x in range(0, w - block + 1, block):
            if mask[y : y + block, x : x + block].all():
                r = residual[y : y + block, x : x + block].astype(np.float64)
                total += np.abs(np.fft.fft2(r - r.mean())) ** 2
    return total


def hf_share(nps: np.ndarray, cutoff: float = HF_CUTOFF) -> float:
    """Share of the noise power above ``cutoff`` cycles/px (NaN when there is no power: no region, or no noise)."""
    power = nps.sum()
    if power <= 0:
        return math.nan
    return float(nps[radial_frequency(nps.shape[0]) > cutoff].sum() / power)


def bootstrap_interval(values: Sequence[float], seed: int = 0, n: int = BOOTSTRAP) -> tuple[float, float, float]:
    """(mean, 2.5 %, 97.5 %) of the mean over units (patients), resampling them with replacement."""
    x = np.asarray([v for v in values if math.isfinite(v)], dtype=np.float64)
    if x.size == 0:
        return math.nan, math.nan, math.nan
    rng = np.random.default_rng(seed)
    means = x[rng.integers(0, x.size, (n, x.size))].mean(axis=1)
    return float(x.mean()), float(np.percentile(means, 2.5)), float(np.percentile(means, 97.5))


class Scorecard:
    """Per-slice figures of every method against REF (and HD), summarised per patient."""

    def __init__(
        self,
        slices: Sequence[EvalSlice],
        guard: GuardSettings | None = None,
        lesions: Sequence[list[LesionTruth] | None] | None = None,
        tamper_method: str = "model",
    ) -> None:
        if any(s.ref is None for s in slices):
            raise ValueError("the scorecard needs the noise-free REF of every slice (synthetic archives)")
        self.slices = list(slices)
        self.masks = [soft_tissue_mask(s.ref) for s in self.slices]  # type: ignore[arg-type]
        self.nps_masks = [ndimage.binary_erosion(m, iterations=2) for m in self.masks]
        self.guard = guard or GuardSettings()
        self.rows: list[dict[str, Any]] = []
        self._nps: dict[tuple[str, str], np.ndarray] = {}
        self.lesions = list(lesions) if lesions is not None else [None] * len(self.slices)
        self.tamper_method = tamper_method
        self.tamper: dict[str, list[bool]] = {"painted_out_lesion": [], "added_nodule": []}

    def add(self, method: str, i: int, out: np.ndarray) -> None:
        s = self.slices[i]
        ref = s.ref
        assert ref is not None
        err, bias = error_figures(out, ref, self.masks[i])
        tissues = tissue_bias(out, ref)
        row: dict[str, Any] = {
            "method": method,
            "patient_id": s.patient_id,
            "slice": s.instance_number,
            "error_ref_hu": err,
            "bias_soft_hu": tissues["soft tissue"][0],
            "bias_fat_hu": tissues["fat"][0],
            "psnr_ref_soft": psnr(to_soft_tissue(out), to_soft_tissue(ref), 1.0),
            "ssim_ref_soft": ssim(to_soft_tissue(out), to_soft_tissue(ref), 1.0),
            "psnr_hd_soft": psnr(to_soft_tissue(out), to_soft_tissue(s.hd), 1.0),
        }
        if method not in ("LD", "HD", "REF"):
            row["guard_flagged"] = bool(check_slice(s.ld, out, self.guard).reasons)
        if method == self.tamper_method:
            self._tamper(i, out)
        self.rows.append(row)
        nps = nps_blocks(out - ref, self.nps_masks[i])
        key = (method, s.patient_id)
        self._nps[key] = self._nps.get(key, 0) + nps

    def _tamper(self, i: int, out: np.ndarray) -> None:
        """Is the guard still catching a lesion painted out of this output, and a nodule added to it?"""
        s, lesions = self.slices[i], self.lesions[i] or []
        yy, xx = np.mgrid[: out.shape[0], : out.shape[1]]
        for lesion in lesions:
            if abs(lesion.contrast_hu) < TAMPER_MIN_CONTRAST_HU or lesion.radius_px < TAMPER_MIN_RADIUS_PX:
                continue
            _, ring = lesion_masks(out.shape, lesion, lesions, s.ref)
            if ring.sum() < 8:
                continue
            painted = out.copy()
            inside = np.hypot(xx - lesion.center_px[0], yy - lesion.center_px[1]) <= lesion.radius_px + 1.0
            painted[inside] = np.median(out[ring])
            self.tamper["painted_out_lesion"].append(bool(check_slice(s.ld, painted, self.guard).reasons))
        # A nodule where the noise-free image is soft tissue all around, away from every lesion.
        room = ndimage.binary_erosion(self.masks[i], iterations=int(3 * NODULE_RADIUS_PX))
        for lesion in lesions:
            far = lesion.radius_px + 3 * NODULE_RADIUS_PX
            room &= np.hypot(xx - lesion.center_px[0], yy - lesion.center_px[1]) > far
        ys, xs = np.nonzero(room)
        if ys.size:
            k = ys.size // 2  # deterministic: the middle of the candidates in raster order
            disk = np.hypot(xx - xs[k], yy - ys[k]) <= NODULE_RADIUS_PX
            added = out + NODULE_HU * ndimage.gaussian_filter(disk.astype(np.float64), 1.0)
            self.tamper["added_nodule"].append(bool(check_slice(s.ld, added, self.guard).reasons))

    def methods(self) -> list[str]:
        return list(dict.fromkeys(r["method"] for r in self.rows))

    def per_patient(self, method: str, key: str) -> dict[str, float]:
        values: dict[str, list[float]] = defaultdict(list)
        for r in self.rows:
            if r["method"] == method and key in r and math.isfinite(r[key]):
                values[r["patient_id"]].append(float(r[key]))
        return {pid: float(np.mean(v)) for pid, v in values.items()}

    def texture(self, method: str) -> dict[str, float]:
        """Per patient: HF share of the method's residual power / HF share of HD's (1 = HD's texture)."""
        out = {}
        for (m, pid), nps in self._nps.items():
            if m == method and ("HD", pid) in self._nps:
                out[pid] = hf_share(nps) / hf_share(self._nps[("HD", pid)])
        return out

    def summary(self, lesions: Sequence[LesionScore] = ()) -> dict[str, Any]:
        """method → figure → [mean, low, high] over patients; lesion and guard figures; HD ratios."""
        hd_error = self.per_patient("HD", "error_ref_hu")
        result: dict[str, Any] = {"patients": len({s.patient_id for s in self.slices}), "slices": len(self.slices)}
        for method in self.methods():
            figures: dict[str, Any] = {}
            for key in (
                "error_ref_hu",
                "bias_soft_hu",
                "bias_fat_hu",
                "psnr_ref_soft",
                "ssim_ref_soft",
                "psnr_hd_soft",
            ):
                figures[key] = bootstrap_interval(list(self.per_patient(method, key).values()))
            err = self.per_patient(method, "error_ref_hu")
            figures["error_vs_hd"] = bootstrap_interval([err[p] / hd_error[p] for p in err if p in hd_error])
            figures["texture_vs_hd"] = bootstrap_interval(list(self.texture(method).values()))
            flags = [r["guard_flagged"] for r in self.rows if r["method"] == method and "guard_flagged" in r]
            if flags:
                figures["guard_flagged"] = [sum(flags), len(flags)]
            kept = [
                s.contrast_kept
                for s in lesions
                if s.method == method and s.truth.radius_mm >= MIN_LESION_RADIUS_MM and math.isfinite(s.contrast_kept)
            ]
            mine = [s for s in lesions if s.method == method]
            if mine:
                figures["lesions"] = len(mine)
                figures["lesions_lost"] = sum(s.lost for s in mine)
                figures["median_contrast_kept"] = float(np.median(kept)) if kept else math.nan
                if (paired := lesions_against_ld(lesions, method)) is not None:
                    figures["lesions_vs_ld"] = paired
            result[method] = figures
        # Tampered outputs of tamper_method that the guard flagged: [caught, tried].
        result["guard_catches"] = {k: [sum(v), len(v)] for k, v in self.tamper.items()}
        return result


def lesions_against_ld(lesions: Sequence[LesionScore], method: str) -> dict[str, float] | None:
    """Lesion by lesion against LD: how many the method loses that LD keeps, and the reverse, with McNemar's exact
    p-value (a two-sided binomial test on the discordant lesions).

    Why: "lost" on a faint lesion in heavy noise is close to a coin flip for LD and a denoiser alike, so two totals
    that differ by one or two say little on their own; the paired test says whether the method loses lesions LD keeps
    more often than chance would. Lesions measured in only one of the two images (too few ring pixels) are left out.
    """
    ld = {s.truth.key: s.lost for s in lesions if s.method == "LD"}
    pairs = [(s.lost, ld[s.truth.key]) for s in lesions if s.method == method and s.truth.key in ld]
    if method == "LD" or not pairs:
        return None
    only_here = sum(mine and not theirs for mine, theirs in pairs)
    only_ld = sum(theirs and not mine for mine, theirs in pairs)
    n = only_here + only_ld
    p = binomtest(only_here, n, 0.5).pvalue if n else 1.0
    return {"lost_only_here": only_here, "lost_only_by_ld": only_ld, "mcnemar_p": float(p)}


def markdown(summary: dict[str, Any]) -> str:
    """The scorecard table of the model card (means over patients, bootstrap 95 % intervals in brackets)."""

    def ci(v: Sequence[float], digits: int = 1, signed: bool = False) -> str:
        if not v or not math.isfinite(v[0]):
            return "—"
        f = f"{{:{'+' if signed else ''}.{digits}f}}"
        return f"{f.format(v[0])} [{f.format(v[1])}, {f.format(v[2])}]"

    head = (
        "| method | error vs REF, HU | × HD's | PSNR vs REF (soft), dB | SSIM vs REF (soft) | bias soft tissue, HU "
        "| bias fat, HU | texture × HD's | PSNR vs HD (soft), dB | median contrast kept (≥ 3 mm) | lesions lost "
        "| guard flags |"
    )
    lines = [head, "|---" * 12 + "|"]
    truth = lesion_truth_known(summary)
    for method, f in summary.items():
        if not isinstance(f, dict) or "error_ref_hu" not in f:
            continue
        flagged = f.get("guard_flagged")
        kept, lost = f.get("median_contrast_kept", math.nan), f"{f.get('lesions_lost', 0)}/{f.get('lesions', 0)}"
        lines.append(
            f"| {method} | {ci(f['error_ref_hu'])} | {ci(f['error_vs_hd'], 2)} | {ci(f['psnr_ref_soft'], 2)} "
            f"| {ci(f['ssim_ref_soft'], 3)} | {ci(f['bias_soft_hu'], 1, True)} | {ci(f['bias_fat_hu'], 1, True)} "
            f"| {ci(f['texture_vs_hd'], 2)} | {ci(f['psnr_hd_soft'], 2)} "
            f"| {f'{kept:.2f}' if truth and math.isfinite(kept) else '—'} "
            f"| {lost if truth else '—'} "
            f"| {f'{flagged[0]}/{flagged[1]}' if flagged else '—'} |"
        )
    against = [(m, f["lesions_vs_ld"]) for m, f in summary.items() if isinstance(f, dict) and "lesions_vs_ld" in f]
    if against:
        lines.append("")
        lines += [
            f"Lesions against LD, lesion by lesion ({m}): lost here but kept by LD {a['lost_only_here']}, "
            f"kept here but lost by LD {a['lost_only_by_ld']} (McNemar's exact p = {a['mcnemar_p']:.2f})"
            for m, a in against
        ]
    if not truth:
        lines += ["", f"Lesions: {NO_LESION_TRUTH} (give `evaluate --lesions FILE`, a lesion manifest)"]
    catches = summary.get("guard_catches", {})
    if any(n for _, n in catches.values()):
        lines.append("")
        for kind, (caught, tried) in catches.items():
            name = kind.replace("_", " ")
            if tried:
                lines.append(f"Guard catches ({name}): {caught}/{tried}")
            elif kind == "painted_out_lesion":
                why = "none large and strong enough" if truth else NO_LESION_TRUTH
                lines.append(f"Guard catches ({name}): {why}")
    return "\n".join(lines) + "\n"


def lesion_truth_known(summary: dict[str, Any]) -> bool:
    """Whether the scorecard had lesion truth: its ``lesion_truth`` source, or (older scorecards) lesion figures."""
    if "lesion_truth" in summary:
        return bool(summary["lesion_truth"])
    return any(isinstance(f, dict) and "lesions" in f for f in summary.values())
