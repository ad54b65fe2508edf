"""⑤a The quality report: a Comprehensive SR (highdicom) sent with every derived series.

It tells the reader of the PACS, next to the images, what was done and how far to trust it: the site's notice,
the model and its version, the source and derived series, the noise before and after in automatically found flat
regions, and the consistency guard's result for every slice (guard.py). Concepts without a standard code use the
private coding scheme ``99DDN`` (PS3.16 8.2 allows local schemes starting with 99).
"""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence
from dataclasses import dataclass

import highdicom as hd
from pydicom.dataset import Dataset
from pydicom.sr.coding import Code
from pydicom.uid import CTImageStorage as CT_IMAGE_STORAGE

from dicom_denoise_node import __version__
from dicom_denoise_node.denoise.derive import derivation_key, deterministic_uid
from dicom_denoise_node.denoise.guard import SliceVerdict

log = logging.getLogger(__name__)

SCHEME = "99DDN"
TITLE = Code("DNQR", SCHEME, "Denoising quality report")
NOTICE = Code("NOTICE", SCHEME, "Notice")
MODEL = Code("MODEL", SCHEME, "Denoising model")
STRENGTH = Code("STRENGTH", SCHEME, "Denoising strength (0 = source, 1 = model output)")
SELF_ENSEMBLE = Code("SELFENS", SCHEME, "Flips/turns averaged per tile (self-ensemble)")
NOISE_TARGET = Code("NOISETGT", SCHEME, "Noise level the blend aims to leave")
SOURCE_SERIES = Code("SRCSER", SCHEME, "Source series")
DERIVED_SERIES = Code("DERSER", SCHEME, "Derived series")
SERIES_UID = Code("112002", "DCM", "Series Instance UID")
NOISE_BEFORE = Code("NOISEIN", SCHEME, "Noise standard deviation before denoising")
NOISE_AFTER = Code("NOISEOUT", SCHEME, "Noise standard deviation after denoising")
POLICY = Code("POLICY", SCHEME, "Consistency guard policy")
FLAGGED = Code("FLAGGED", SCHEME, "Slices flagged by the consistency guard")
SLICE = Code("SLICE", SCHEME, "Slice result")
SLICE_IMAGE = Code("IMAGE", SCHEME, "Derived image")
RESULT = Code("RESULT", SCHEME, "Consistency guard result")
MEAN_SHIFT = Code("MEANSHIFT", SCHEME, "Largest block mean HU change")
HU = Code("[hnsf'U]", "UCUM", "Hounsfield unit")
COUNT = Code("{slices}", "UCUM", "slices")
UNIT_NONE = Code("1", "UCUM", "no units")

CONTAINS = hd.sr.RelationshipTypeValues.CONTAINS


@dataclass(frozen=True)
class ReportInput:
    """What one processed series contributes to its report."""

    source_series_uid: str
    derived_series_uid: str
    model_name: str
    model_version: str
    notice: str
    policy: str
    slices: Sequence[tuple[Dataset, Dataset, SliceVerdict]]  # (source header, derived header, verdict)
    strength: float = 1.0
    self_ensemble: int = 1
    target_noise_hu: float = 0.0

    @property
    def uid_key(self) -> str:
        return derivation_key(self.model_version, self.strength, self.self_ensemble, self.target_noise_hu)


def report_series_uid(source_series_uid: str, key: str) -> str:
    """Deterministic like the derived images (``key``: the derivation key): a resend replaces the report instead of
    adding one."""
    return deterministic_uid("report-series", source_series_uid, key)


_PIXEL_TAGS = {0x7FE00008, 0x7FE00009, 0x7FE00010}


def header_only(ds: Dataset) -> Dataset:
    """The dataset without pixels (a report keeps one per slice): evidence needs identifiers and the
    patient/study modules only. Elements are shared, not copied; nothing here modifies them."""
    out = Dataset()
    for elem in ds:
        if elem.tag not in _PIXEL_TAGS:
            out.add(elem)
    return out


def _num(name: Code, value: float, unit: Code) -> hd.sr.NumContentItem:
    return hd.sr.NumContentItem(name=name, value=round(float(value), 2), unit=unit, relationship_type=CONTAINS)


def _median(values: list[float]) -> float:
    finite = sorted(v for v in values if math.isfinite(v))
    return finite[len(finite) // 2] if finite else float("nan")


def build_report(data: ReportInput, manufacturer: str, institution: str = "") -> hd.sr.ComprehensiveSR:
    """The SR dataset; ``dciodvfy`` checks it in tests/denoise/test_guard_report.py."""
    items: list[hd.sr.ContentItem] = []
    if data.notice:
        items.append(hd.sr.TextContentItem(NOTICE, data.notice[:1024], relationship_type=CONTAINS))
    items.append(
        hd.sr.TextContentItem(MODEL, f"{data.model_name} {data.model_version}"[:1024], relationship_type=CONTAINS)
    )
    items.append(_num(STRENGTH, data.strength, UNIT_NONE))
    items.append(_num(SELF_ENSEMBLE, data.self_ensemble, UNIT_NONE))
    if data.target_noise_hu:
        items.append(_num(NOISE_TARGET, data.target_noise_hu, HU))
    for concept, uid in ((SOURCE_SERIES, data.source_series_uid), (DERIVED_SERIES, data.derived_series_uid)):
        group = hd.sr.ContainerContentItem(concept, relationship_type=CONTAINS)
        group.ContentSequence = hd.sr.ContentSequence(
            [hd.sr.UIDRefContentItem(SERIES_UID, uid, relationship_type=CONTAINS)]
        )
        items.append(group)
    verdicts = [v for _, _, v in data.slices]
    before, after = _median([v.noise_before for v in verdicts]), _median([v.noise_after for v in verdicts])
    if math.isfinite(before) and math.isfinite(after):
        items += [_num(NOISE_BEFORE, before, HU), _num(NOISE_AFTER, after, HU)]
    items.append(hd.sr.TextContentItem(POLICY, data.policy, relationship_type=CONTAINS))
    items.append(_num(FLAGGED, sum(v.flagged for v in verdicts), COUNT))
    for _, derived, verdict in data.slices:
        group = hd.sr.ContainerContentItem(SLICE, relationship_type=CONTAINS)
        children: list[hd.sr.ContentItem] = [
            hd.sr.ImageContentItem(
                SLICE_IMAGE,
                referenced_sop_class_uid=str(derived.SOPClassUID),
                referenced_sop_instance_uid=str(derived.SOPInstanceUID),
                relationship_type=CONTAINS,
            ),
            hd.sr.TextContentItem(RESULT, verdict.summary()[:1024], relationship_type=CONTAINS),
            _num(MEAN_SHIFT, verdict.mean_shift_hu, HU),
        ]
        if math.isfinite(verdict.noise_before) and math.isfinite(verdict.noise_after):
            children += [_num(NOISE_BEFORE, verdict.noise_before, HU), _num(NOISE_AFTER, verdict.noise_after, HU)]
        group.ContentSequence = hd.sr.ContentSequence(children)
        items.append(group)
    root = hd.sr.ContainerContentItem(TITLE)
    root.ContentSequence = hd.sr.ContentSequence(items)

    evidence = [derived for _, derived, _ in data.slices] + [src for src, _, _ in data.slices]
    first_source = data.slices[0][0]
    try:
        series_number = int(first_source.get("SeriesNumber") or 0) + 2000
    except (TypeError, ValueError):
        series_number = 2000
    report = hd.sr.ComprehensiveSR(
        evidence=evidence,
        content=root,
        series_instance_uid=report_series_uid(data.source_series_uid, data.uid_key),
        series_number=series_number,
        sop_instance_uid=deterministic_uid("report", data.source_series_uid, data.uid_key),
        instance_number=1,
        manufacturer=manufacturer,
        institution_name=institution or None,
        is_complete=True,
        series_description=f"Denoising report {data.model_version}"[:64],
    )
    report.SoftwareVersions = f"dicom-denoise-node {__version__}"[:64]
    return report


def warm_up() -> None:
    """Build and discard a one-slice report from made-up data sets. highdicom's first report in a process costs
    ≈ 0.6 s of one-time set-up (0.78 s for a 16-slice report, 0.20 s for the next ones); the node pays it when it
    starts instead of on its first series (docs/benchmarks.md)."""
    source = Dataset()
    source.PatientID = "WARMUP"
    source.PatientName = "WARMUP^NODE"  # two components: highdicom warns about a one-component name
    source.PatientBirthDate = source.PatientSex = source.StudyDate = source.StudyTime = ""
    source.AccessionNumber = source.ReferringPhysicianName = source.StudyID = ""
    source.StudyInstanceUID = deterministic_uid("warm-up", "study")
    source.SeriesInstanceUID = deterministic_uid("warm-up", "series")
    source.SOPClassUID = CT_IMAGE_STORAGE
    source.SOPInstanceUID = deterministic_uid("warm-up", "source")
    source.Modality = "CT"
    source.SeriesNumber = 1
    derived = Dataset()
    derived.update(source)
    derived.SeriesInstanceUID = deterministic_uid("warm-up", "derived-series")
    derived.SOPInstanceUID = deterministic_uid("warm-up", "derived")
    verdict = SliceVerdict(0.0, 0, 0.0, 0.0, 0, 10.0, 5.0)
    series = (str(source.SeriesInstanceUID), str(derived.SeriesInstanceUID))
    data = ReportInput(*series, "warm-up", "0", "", "mark", [(source, derived, verdict)])
    build_report(data, manufacturer="warm-up")
