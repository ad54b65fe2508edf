"""Lesion truth from a site's own manifest (a CSV), so that lesion figures can be scored on a real archive.

Why a CSV: a site knows its lesions from reports or a reading session, not from a simulator's truth.json, and a
spreadsheet is what it can write. One row per lesion on one slice (a lesion seen on three slices is three rows):

- ``patient_id``: the PatientID of the study;
- ``instance_number`` or ``sop_instance_uid`` (or both): the slice, by its InstanceNumber, or by the SOPInstanceUID
  of its LD or HD image;
- ``x_px``, ``y_px``: the lesion's centre, column and row in pixels, 0-based from the top-left pixel of the image;
- ``radius_px`` or ``radius_mm`` (one of them): its radius on that slice (mm through the slice's PixelSpacing);
- ``contrast_hu``: lesion − surroundings in HU, signed (e.g. on HD); "contrast kept" is measured ÷ this;
- ``label`` (optional): free text, kept in safety.json.

Column names are matched without case, spaces or underscores (``SOPInstanceUID`` is ``sop_instance_uid``); commas
or semicolons separate the cells; lines starting with ``#`` are comments. Every error names the file and line.
"""

from __future__ import annotations

import csv
import logging
import math
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from pydicom import dcmread

from denoise_trainer.archive.split import SlicePair
from denoise_trainer.evaluate.lesions import LesionTruth

log = logging.getLogger(__name__)

COLUMNS = (
    "patient_id",
    "instance_number",
    "sop_instance_uid",
    "x_px",
    "y_px",
    "radius_px",
    "radius_mm",
    "contrast_hu",
    "label",
)
REQUIRED = ("patient_id", "x_px", "y_px", "contrast_hu")
ONE_OF = (("instance_number", "sop_instance_uid"), ("radius_px", "radius_mm"))
MAX_ERRORS_SHOWN = 20


class LesionManifestError(ValueError):
    """A manifest that cannot be used; the message names the file and line of each problem."""


@dataclass(frozen=True)
class ManifestLesion:
    """One row of the manifest, checked but not yet placed on a slice."""

    line: int
    patient_id: str
    instance_number: int | None
    sop_instance_uid: str
    center_px: tuple[float, float]  # column, row
    radius_px: float | None
    radius_mm: float | None
    contrast_hu: float
    label: str


def _key(name: str) -> str:
    return re.sub(r"[^a-z0-9]", "", name.lower())


_CANONICAL = {_key(c): c for c in COLUMNS}


def _header(cells: list[str], where: str) -> list[str]:
    names = []
    for cell in cells:
        name = _CANONICAL.get(_key(cell))
        if name is None:
            raise LesionManifestError(f"{where}: unknown column {cell.strip()!r} (columns: {', '.join(COLUMNS)})")
        names.append(name)
    missing = [c for c in REQUIRED if c not in names]
    missing += [" or ".join(pair) for pair in ONE_OF if not set(pair) & set(names)]
    if missing:
        raise LesionManifestError(f"{where}: missing column(s) {', '.join(missing)} (columns: {', '.join(COLUMNS)})")
    return names


def _number(row: dict[str, str], column: str, positive: bool = False) -> float | None:
    text = row.get(column, "").strip()
    if not text:
        return None
    try:
        value = float(text)
    except ValueError:
        raise ValueError(f"{column} {text!r} is not a number") from None
    if not math.isfinite(value) or (positive and value <= 0):
        raise ValueError(f"{column} must be a {'positive' if positive else 'finite'} number, not {text!r}")
    return value


def _lesion(row: dict[str, str], line: int) -> ManifestLesion:
    """One row's lesion; a ValueError saying what is wrong with it."""
    patient = row.get("patient_id", "").strip()
    uid = row.get("sop_instance_uid", "").strip()
    number = row.get("instance_number", "").strip()
    if not patient:
        raise ValueError("patient_id is empty")
    if not number and not uid:
        raise ValueError("give instance_number or sop_instance_uid")
    if number and not (number.isdigit() and int(number) >= 1):
        raise ValueError(f"instance_number {number!r} is not a whole number ≥ 1")
    x, y = _number(row, "x_px"), _number(row, "y_px")
    if x is None or y is None or x < 0 or y < 0:
        raise ValueError("x_px and y_px must be given, ≥ 0 (pixels from the top-left pixel)")
    radius_px, radius_mm = _number(row, "radius_px", True), _number(row, "radius_mm", True)
    if (radius_px is None) == (radius_mm is None):
        raise ValueError("give one of radius_px or radius_mm")
    contrast = _number(row, "contrast_hu")
    if not contrast:
        raise ValueError("contrast_hu must be given and not 0 (lesion − surroundings, HU)")
    return ManifestLesion(
        line,
        patient,
        int(number) if number else None,
        uid,
        (x, y),
        radius_px,
        radius_mm,
        contrast,
        row.get("label", "").strip(),
    )


def read_manifest(path: Path) -> list[ManifestLesion]:
    """Every lesion of the manifest; a LesionManifestError listing each bad line (file:line: what is wrong)."""
    try:
        text = Path(path).read_text(encoding="utf-8-sig")
    except (OSError, UnicodeDecodeError) as exc:
        raise LesionManifestError(f"{path}: cannot read the lesion manifest: {exc}") from exc
    first = next((ln for ln in text.splitlines() if ln.strip() and not ln.lstrip().startswith("#")), "")
    reader = csv.reader(text.splitlines(), delimiter=";" if ";" in first and "," not in first else ",")
    names: list[str] = []
    lesions, errors = [], []
    for cells in reader:
        if not any(c.strip() for c in cells) or cells[0].lstrip().startswith("#"):
            continue
        where = f"{path}:{reader.line_num}"
        if not names:
            names = _header(cells, where)
            continue
        if len(cells) > len(names):
            errors.append(f"{where}: {len(cells)} cells, the header has {len(names)}")
            continue
        try:
            lesions.append(_lesion(dict(zip(names, cells, strict=False)), reader.line_num))
        except ValueError as exc:
            errors.append(f"{where}: {exc}")
    if errors:
        more = len(errors) - MAX_ERRORS_SHOWN
        shown = errors[:MAX_ERRORS_SHOWN] + ([f"… and {more} more"] if more > 0 else [])
        raise LesionManifestError("lesion manifest with errors:\n" + "\n".join(shown))
    if not lesions:
        raise LesionManifestError(f"{path}: no lesion rows (a header line, then one row per lesion and slice)")
    return lesions


@dataclass(frozen=True)
class _SliceHeader:
    uids: frozenset[str]  # the SOPInstanceUIDs of the slice's LD and HD images
    spacing_mm: float | None  # mean of PixelSpacing
    shape: tuple[int, int]  # rows, columns


def _slice_header(pair: SlicePair) -> _SliceHeader:
    tags = ["SOPInstanceUID", "PixelSpacing", "Rows", "Columns"]
    ld, hd = (dcmread(p, stop_before_pixels=True, specific_tags=tags) for p in (pair.ld, pair.hd))
    spacing = getattr(ld, "PixelSpacing", None)
    return _SliceHeader(
        frozenset(str(getattr(d, "SOPInstanceUID", "")) for d in (ld, hd)) - {""},
        float(sum(float(v) for v in spacing) / len(spacing)) if spacing else None,
        (int(ld.Rows), int(ld.Columns)),
    )


def _truth(lesion: ManifestLesion, pair: SlicePair, header: _SliceHeader, where: str) -> LesionTruth:
    """The lesion on its slice, in the scorer's terms; a LesionManifestError when it does not fit the slice."""
    x, y = lesion.center_px
    rows, cols = header.shape
    if x > cols - 1 or y > rows - 1:
        raise LesionManifestError(f"{where}: centre ({x:g}, {y:g}) lies outside the {cols}×{rows} image")
    spacing = header.spacing_mm
    if spacing is None:
        raise LesionManifestError(f"{where}: the slice has no PixelSpacing to size the lesion in mm")
    radius_px = lesion.radius_px if lesion.radius_px is not None else (lesion.radius_mm or 0.0) / spacing
    return LesionTruth(
        patient_id=pair.patient_id,
        slice_index=int(pair.instance_number),
        lesion_index=lesion.line,
        kind=lesion.label or "manifest",
        organ="",
        center_px=(x, y),
        radius_px=float(radius_px),
        radius_mm=float(radius_px * spacing),
        contrast_hu=lesion.contrast_hu,
    )


def manifest_truths(path: Path, pairs: Sequence[SlicePair]) -> list[list[LesionTruth]]:
    """Each evaluated slice's lesions from the manifest ([] for a slice it lists none on).

    Rows on slices that are not evaluated (other patients, or left out by --max-slices) are counted in the log; a
    manifest none of whose rows lies on an evaluated slice is an error, since its IDs most likely do not match."""
    lesions = read_manifest(path)
    patients = {p.patient_id for p in pairs}
    wanted = {le.patient_id for le in lesions} & patients
    headers = [_slice_header(p) if p.patient_id in wanted else None for p in pairs]
    out: list[list[LesionTruth]] = [[] for _ in pairs]
    placed = 0
    for lesion in lesions:
        for i, (pair, header) in enumerate(zip(pairs, headers, strict=True)):
            if header is None or pair.patient_id != lesion.patient_id:
                continue
            if lesion.instance_number is not None and lesion.instance_number != pair.instance_number:
                continue
            if lesion.sop_instance_uid and lesion.sop_instance_uid not in header.uids:
                continue
            out[i].append(_truth(lesion, pair, header, f"{path}:{lesion.line}"))
            placed += 1
            break
    if not placed:
        shown = ", ".join(sorted(patients)[:5]) + (" …" if len(patients) > 5 else "")
        raise LesionManifestError(
            f"{path}: none of its {len(lesions)} lesions lies on an evaluated slice (patients evaluated: {shown}); "
            "check patient_id and instance_number / sop_instance_uid, or --max-slices"
        )
    log.info(
        "lesion manifest %s: %d of %d lesions on the %d evaluated slices (%d rows of other patients or slices)",
        path,
        placed,
        len(lesions),
        len(pairs),
        len(lesions) - placed,
    )
    return out
