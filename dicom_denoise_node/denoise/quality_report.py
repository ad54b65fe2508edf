"""⑤a The quality report: a Comprehensive SR (highdicom) sent with every derived series.

It tells the reader of the PACS, next to the images, what was done and how far to trust it, and reads top to
bottom in an ordinary SR viewer: first a **summary** (the notices, the model, its version and kind, the strength,
the routing rule, the source and derived series, the median noise before and after in automatically found flat
regions, the consistency guard's policy and verdict), then **per-slice figures** in one container: a single text
table (one row per slice), and an image reference for each slice the guard flagged. A few dozen content items
whatever the series' length, where one container per slice gave a wall of hundreds.

Standard DICOM codes where one fits (Summary, Algorithm Name/Version/Parameters, the source series); the rest use
the private scheme ``99DDN`` (PS3.16 8.2 allows local schemes starting with 99).
"""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence
from dataclasses import dataclass

import highdicom as hd
from pydicom.dataset import Dataset
from pydicom.sr.codedict import codes
from pydicom.sr.coding import Code
from pydicom.uid import CTImageStorage as CT_IMAGE_STORAGE

from dicom_denoise_node import __version__
from dicom_denoise_node.config import DeriveSettings
from dicom_denoise_node.denoise.derive import DerivationInfo, deterministic_uid
from dicom_denoise_node.denoise.guard import SliceVerdict

log = logging.getLogger(__name__)

SCHEME = "99DDN"
TITLE = Code("DNQR", SCHEME, "Denoising quality report")
SUMMARY = codes.DCM.Summary
NOTICE = Code("NOTICE", SCHEME, "Notice")
ALGORITHM_NAME = codes.DCM.AlgorithmName
ALGORITHM_VERSION = codes.DCM.AlgorithmVersion
ALGORITHM_PARAMETERS = codes.DCM.AlgorithmParameters
RULE = Code("RULE", SCHEME, "Routing rule")
STRENGTH = Code("STRENGTH", SCHEME, "Denoising strength (0 = source, 1 = model output)")
SELF_ENSEMBLE = Code("SELFENS", SCHEME, "Flips/turns averaged per tile (self-ensemble)")
NOISE_TARGET = Code("NOISETGT", SCHEME, "Noise level the blend aims to leave")
SOURCE_SERIES = codes.DCM.SourceSeriesForImageProcessingOperation
DERIVED_SERIES = Code("DERSER", SCHEME, "Derived series")
NOISE_BEFORE = Code("NOISEIN", SCHEME, "Noise standard deviation before denoising")
NOISE_AFTER = Code("NOISEOUT", SCHEME, "Noise standard deviation after denoising")
POLICY = Code("POLICY", SCHEME, "Consistency guard policy")
SLICES = Code("SLICES", SCHEME, "Slices denoised")
FLAGGED = Code("FLAGGED", SCHEME, "Slices flagged by the consistency guard")
VERDICT = Code("VERDICT", SCHEME, "Consistency guard verdict")
PER_SLICE = Code("PERSLICE", SCHEME, "Per-slice results")
TABLE = Code("TABLE", SCHEME, "Per-slice figures (one row per slice)")
FLAGGED_IMAGE = Code("FLAGIMG", SCHEME, "Slice flagged by the consistency guard")
HU = Code("[hnsf'U]", "UCUM", "Hounsfield unit")
COUNT = Code("{slices}", "UCUM", "slices")
UNIT_NONE = Code("1", "UCUM", "no units")

CONTAINS = hd.sr.RelationshipTypeValues.CONTAINS
MAX_FLAGGED_REFERENCES = 20  # image references to flagged slices; the table names every one
TABLE_HEADER = "slice  image    z (mm)  noise in  noise out  mean shift  guard"


@dataclass(frozen=True)
class ReportInput:
    """What one processed series contributes to its report."""

    source_series_uid: str
    derived_series_uid: str
    derivation: DerivationInfo
    notices: Sequence[str]  # the image notice, the report's own ([report] notice); empty ones are left out
    policy: str
    slices: Sequence[tuple[Dataset, Dataset, SliceVerdict]]  # (source header, derived header, verdict)

    @property
    def uid_key(self) -> str:
        return self.derivation.uid_key


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


def _text(name: Code, value: str) -> hd.sr.TextContentItem:
    return hd.sr.TextContentItem(name, value, relationship_type=CONTAINS)


def _container(name: Code, items: list[hd.sr.ContentItem]) -> hd.sr.ContainerContentItem:
    group = hd.sr.ContainerContentItem(name, relationship_type=CONTAINS)
    group.ContentSequence = hd.sr.ContentSequence(items)
    return group


def _median(values: list[float]) -> float:
    finite = sorted(v for v in values if math.isfinite(v))
    return finite[len(finite) // 2] if finite else float("nan")


def _hu(value: float) -> str:
    return f"{value:.1f}" if math.isfinite(value) else "-"


def _z(ds: Dataset) -> str:
    position = ds.get("ImagePositionPatient")
    try:
        return f"{float(position[2]):.1f}"
    except (TypeError, ValueError, IndexError):
        return "-"


def per_slice_table(slices: Sequence[tuple[Dataset, Dataset, SliceVerdict]]) -> str:
    """One row per slice, in series order: derived InstanceNumber, z, noise before/after, block mean change, verdict."""
    rows = [TABLE_HEADER]
    for k, (_, derived, verdict) in enumerate(slices, start=1):
        number = str(derived.get("InstanceNumber", "") or "-")
        rows.append(
            f"{k:5d}  {number:>5}  {_z(derived):>8}  {_hu(verdict.noise_before):>8}  {_hu(verdict.noise_after):>9}  "
            f"{verdict.mean_shift_hu:>10.1f}  {verdict.summary()}"
        )
    return "\r\n".join(rows)


def guard_verdict(verdicts: Sequence[SliceVerdict], policy: str) -> str:
    """One sentence: did the guard pass every slice, and what it did about those it flagged."""
    if policy == "off":
        return "the consistency guard is off; noise figures only"
    flagged = [k for k, v in enumerate(verdicts, start=1) if v.flagged]
    if not flagged:
        return f"all {len(verdicts)} slices passed the consistency guard"
    shown = ", ".join(str(k) for k in flagged[:10]) + (", …" if len(flagged) > 10 else "")
    action = "the series was held for review" if policy == "hold" else "they are marked in ImageComments"
    return f"{len(flagged)} of {len(verdicts)} slices flagged (slices {shown}); {action}"


def _summary(data: ReportInput) -> list[hd.sr.ContentItem]:
    info = data.derivation
    items: list[hd.sr.ContentItem] = [_text(NOTICE, n[:1024]) for n in dict.fromkeys(data.notices) if n]
    items += [
        _text(ALGORITHM_NAME, f"{info.model_name} ({info.model_kind})"[:1024]),
        _text(ALGORITHM_VERSION, info.model_version[:1024]),
        _text(ALGORITHM_PARAMETERS, f"{info.level}; derivation key {info.uid_key}"[:1024]),
    ]
    if info.rule:
        items.append(_text(RULE, info.rule[:1024]))
    items += [_num(STRENGTH, info.strength, UNIT_NONE), _num(SELF_ENSEMBLE, info.self_ensemble, UNIT_NONE)]
    if info.target_noise_hu:
        items.append(_num(NOISE_TARGET, info.target_noise_hu, HU))
    items += [
        hd.sr.UIDRefContentItem(SOURCE_SERIES, data.source_series_uid, relationship_type=CONTAINS),
        hd.sr.UIDRefContentItem(DERIVED_SERIES, data.derived_series_uid, relationship_type=CONTAINS),
    ]
    verdicts = [v for _, _, v in data.slices]
    before, after = _median([v.noise_before for v in verdicts]), _median([v.noise_after for v in verdicts])
    if math.isfinite(before) and math.isfinite(after):
        items += [_num(NOISE_BEFORE, before, HU), _num(NOISE_AFTER, after, HU)]
    items += [
        _text(POLICY, data.policy),
        _num(SLICES, len(verdicts), COUNT),
        _num(FLAGGED, sum(v.flagged for v in verdicts), COUNT),
        _text(VERDICT, guard_verdict(verdicts, data.policy)),
    ]
    return items


def _per_slice(data: ReportInput) -> list[hd.sr.ContentItem]:
    items: list[hd.sr.ContentItem] = [_text(TABLE, per_slice_table(data.slices))]
    flagged = [derived for _, derived, verdict in data.slices if verdict.flagged]
    for derived in flagged[:MAX_FLAGGED_REFERENCES]:
        items.append(
            hd.sr.ImageContentItem(
                FLAGGED_IMAGE,
                referenced_sop_class_uid=str(derived.SOPClassUID),
                referenced_sop_instance_uid=str(derived.SOPInstanceUID),
                relationship_type=CONTAINS,
            )
        )
    return items


def build_report(data: ReportInput, manufacturer: str, institution: str = "") -> hd.sr.ComprehensiveSR:
    """The SR dataset; ``dciodvfy`` checks it in tests/denoise/test_guard_report.py."""
    root = hd.sr.ContainerContentItem(TITLE)
    root.ContentSequence = hd.sr.ContentSequence(
        [_container(SUMMARY, _summary(data)), _container(PER_SLICE, _per_slice(data))]
    )
    evidence = [derived for _, derived, _ in data.slices] + [src for src, _, _ in data.slices]
    first_source = data.slices[0][0]
    report = hd.sr.ComprehensiveSR(
        evidence=evidence,
        content=root,
        series_instance_uid=report_series_uid(data.source_series_uid, data.uid_key),
        series_number=data.derivation.series_number(first_source, report=True),
        sop_instance_uid=deterministic_uid("report", data.source_series_uid, data.uid_key),
        instance_number=1,
        manufacturer=manufacturer,
        institution_name=institution or None,
        is_complete=True,
        series_description=data.derivation.series_description(first_source, suffix=" report"),
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
    info = DerivationInfo("warm-up", "0", DeriveSettings())
    build_report(ReportInput(*series, info, [""], "mark", [(source, derived, verdict)]), manufacturer="warm-up")
