"""Catalog scan: index archived CT series (patients, studies, series, instances) with their dose domain.

Why: training draws LD and HD images from disjoint patients and evaluation needs LD/HD pairs, so the trainer
must know, per series, its patient, body part and dose domain without opening pixels again. The scan reads
headers only and writes them into the same catalog the node uses, as series with origin "archive" and state
ARCHIVED, a state that no pipeline transition selects (the node never processes or sends an archive series).

Domain of a series, first rule that decides wins: the explicit ``domain`` argument, then the SeriesDescription
patterns of :class:`DomainRules`, then its exposure thresholds; otherwise the series is indexed with domain None
(logged) so ``denoise-node catalog list`` shows what to fix. The domain is re-derived on every scan.
"""

from __future__ import annotations

import logging
import re
import statistics
import warnings
from collections import Counter
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TypeVar

import pydicom
from pydicom.dataset import Dataset
from pydicom.errors import InvalidDicomError
from pydicom.uid import ExplicitVRBigEndian, ExplicitVRLittleEndian, ImplicitVRLittleEndian
from sqlalchemy import func, select
from sqlalchemy.orm import InstrumentedAttribute, Session

from dicom_denoise_node.store.catalog import Catalog, Instance, Patient, Series, SeriesState, Split, Study

log = logging.getLogger(__name__)

_Row = TypeVar("_Row", Patient, Study, Series, Instance)

ORIGIN = "archive"
DOMAINS = ("LD", "HD", "REF")
_BATCH_INSTANCES = 2000  # instances per write transaction: few commits, short hold of the catalog's writer lock
_IN_CHUNK = 500  # UIDs per IN (...) lookup, well under SQLite's bound-parameter limit
_TAGS = [
    "PatientID",
    "StudyInstanceUID",
    "SeriesInstanceUID",
    "SOPInstanceUID",
    "SOPClassUID",
    "Modality",
    "SeriesDescription",
    "InstanceNumber",
    "BodyPartExamined",
    "Exposure",
    "ExposureInuAs",
    "XRayTubeCurrent",
    "ExposureTime",
    "ImageType",
    "Rows",
]


@dataclass
class DomainRules:
    """How a series' SeriesDescription or exposure tells LD, HD and REF (noise-free reference) apart.

    Patterns are case-insensitive regular expressions searched in the description; the defaults match the
    synthetic archive and common vendor/challenge names. Exposure thresholds are off unless set (sites differ
    in protocols too much for a default): at most ``ld_max_mas`` mAs is LD, at least ``hd_min_mas`` is HD.
    """

    ld: str = r"\b(LD|low[- ]?dose|quarter[- ]?dose)\b"
    hd: str = r"\b(HD|full[- ]?dose|regular[- ]?dose|routine)\b"
    ref: str = r"noise[- ]?free|\bREF\b"
    ld_max_mas: float | None = None
    hd_min_mas: float | None = None
    modalities: tuple[str, ...] = ("CT",)

    def __post_init__(self) -> None:
        if self.ld_max_mas is not None and self.hd_min_mas is not None and self.ld_max_mas >= self.hd_min_mas:
            raise ValueError(f"ld_max_mas ({self.ld_max_mas}) must be below hd_min_mas ({self.hd_min_mas})")
        self._compiled = {
            d: re.compile(p, re.IGNORECASE) for d, p in (("REF", self.ref), ("LD", self.ld), ("HD", self.hd))
        }

    def from_description(self, description: str) -> str | None:
        """REF wins (a reference may name the dose it stands for); LD and HD together are ambiguous (None)."""
        hits = [d for d, rx in self._compiled.items() if rx.search(description or "")]
        if "REF" in hits:
            return "REF"
        return hits[0] if len(hits) == 1 else None

    def from_exposure(self, mas: float | None) -> str | None:
        if mas is None:
            return None
        if self.ld_max_mas is not None and mas <= self.ld_max_mas:
            return "LD"
        if self.hd_min_mas is not None and mas >= self.hd_min_mas:
            return "HD"
        return None

    def classify(self, description: str, mas: float | None, domain: str | None = None) -> tuple[str | None, str]:
        """(domain, which rule decided): explicit argument > description > exposure > unknown."""
        if domain is not None:
            return domain, "explicit"
        found = self.from_description(description)
        if found is not None:
            return found, "description"
        found = self.from_exposure(mas)
        if found is not None:
            return found, "exposure"
        return None, "unknown"


@dataclass
class ScanReport:
    """What one scan saw and changed (re-scanning an unchanged archive adds and updates nothing)."""

    root: Path
    files_seen: int = 0
    instances_added: int = 0
    instances_updated: int = 0
    instances_unchanged: int = 0
    instances_removed: int = 0  # rows under root whose file is gone
    series_by_domain: dict[str, int] = field(default_factory=dict)  # "LD", "HD", "REF", "unknown"
    unknown_series: list[str] = field(default_factory=list)
    skipped: dict[Path, str] = field(default_factory=dict)  # file → why it was not indexed

    @property
    def instances(self) -> int:
        return self.instances_added + self.instances_updated + self.instances_unchanged


@dataclass(frozen=True)
class _Header:
    """The header fields the catalog keeps for one instance."""

    path: str
    size: int
    patient_id: str
    study_uid: str
    series_uid: str
    sop_uid: str
    sop_class_uid: str
    transfer_syntax: str
    modality: str
    description: str
    instance_number: int | None
    body_part: str | None
    exposure_mas: float | None


@dataclass
class _SeriesGroup:
    uid: str
    patient_id: str
    study_uid: str
    modality: str
    description: str
    headers: list[_Header] = field(default_factory=list)

    def body_part(self) -> str | None:
        parts = Counter(h.body_part for h in self.headers if h.body_part)
        return parts.most_common(1)[0][0] if parts else None

    def exposure_mas(self) -> float | None:
        """Median over slices: tube current modulation varies the exposure along the series."""
        values = [h.exposure_mas for h in self.headers if h.exposure_mas is not None]
        return round(float(statistics.median(values)), 3) if values else None


class _Skip(Exception):
    """A file that is not indexed, with the reason shown in the report."""


def exposure_mas(ds: Dataset) -> float | None:
    """Exposure in mAs: Exposure (0018,1152), else ExposureInuAs / 1000, else XRayTubeCurrent × ExposureTime / 1000."""
    try:
        if ds.get("Exposure") not in (None, ""):
            return float(ds.Exposure)
        if ds.get("ExposureInuAs") not in (None, ""):
            return float(ds.ExposureInuAs) / 1000.0
        if ds.get("XRayTubeCurrent") not in (None, "") and ds.get("ExposureTime") not in (None, ""):
            return float(ds.XRayTubeCurrent) * float(ds.ExposureTime) / 1000.0
    except (TypeError, ValueError) as exc:
        log.debug("unreadable exposure tags: %s", exc)
    return None


def _transfer_syntax(ds: Dataset) -> str:
    uid = getattr(ds.file_meta, "TransferSyntaxUID", None) if hasattr(ds, "file_meta") else None
    if uid:
        return str(uid)
    implicit, little = ds.original_encoding  # a file without meta header: what pydicom deduced
    if implicit:
        return str(ImplicitVRLittleEndian)
    return str(ExplicitVRLittleEndian if little in (True, None) else ExplicitVRBigEndian)


def _read_header(path: Path, modalities: tuple[str, ...]) -> _Header:
    try:
        try:
            ds = pydicom.dcmread(path, stop_before_pixels=True, specific_tags=_TAGS)
        except InvalidDicomError:
            # Older archives hold files without preamble and meta header: force-read only what starts like a
            # little-endian data set (group 0002 or 0008), never arbitrary files, and require the UIDs below.
            with path.open("rb") as f:
                if f.read(2) not in (b"\x02\x00", b"\x08\x00"):
                    raise _Skip("not DICOM (no DICM prefix)") from None
            with warnings.catch_warnings():  # garbage that merely starts like a data set: the skip says enough
                warnings.simplefilter("ignore")
                ds = pydicom.dcmread(path, stop_before_pixels=True, specific_tags=_TAGS, force=True)
        sop_uid = str(ds.get("SOPInstanceUID") or "")
        series_uid = str(ds.get("SeriesInstanceUID") or "")
        study_uid = str(ds.get("StudyInstanceUID") or "")
        sop_class = str(ds.get("SOPClassUID") or getattr(getattr(ds, "file_meta", None), "MediaStorageSOPClassUID", ""))
    except _Skip:
        raise
    except Exception as exc:  # any unreadable file is a skip, never a failed scan
        raise _Skip(f"not DICOM ({type(exc).__name__}: {exc})") from exc
    if not (sop_uid and series_uid and study_uid):
        raise _Skip("not DICOM (no SOP/Series/Study Instance UID)")
    patient_id = str(ds.get("PatientID") or "").strip()
    if not patient_id:
        raise _Skip("no PatientID (a patient-level split needs one)")
    modality = str(ds.get("Modality") or "")
    if modalities and modality not in modalities:
        raise _Skip(f"modality {modality or 'missing'} not in {','.join(modalities)}")
    if not ds.get("Rows"):
        raise _Skip("no image (no Rows)")
    image_type = ds.get("ImageType") or []
    if "LOCALIZER" in [str(v).upper() for v in ([image_type] if isinstance(image_type, str) else image_type)]:
        raise _Skip("localizer (scout) image")
    try:
        number = int(ds.InstanceNumber) if ds.get("InstanceNumber") not in (None, "") else None
    except (TypeError, ValueError):
        number = None  # kept, but such a slice cannot be paired
    body_part = str(ds.get("BodyPartExamined") or "").strip().upper() or None
    return _Header(
        path=str(path.resolve()),
        size=path.stat().st_size,
        patient_id=patient_id,
        study_uid=study_uid,
        series_uid=series_uid,
        sop_uid=sop_uid,
        sop_class_uid=sop_class,
        transfer_syntax=_transfer_syntax(ds),
        modality=modality,
        description=str(ds.get("SeriesDescription") or ""),
        instance_number=number,
        body_part=body_part,
        exposure_mas=exposure_mas(ds),
    )


def _files(root: Path) -> list[Path]:
    if root.is_file():
        return [root]
    if not root.is_dir():
        raise FileNotFoundError(f"archive root {root} does not exist")
    return sorted(p for p in root.rglob("*") if p.is_file())


def _load(s: Session, model: type[_Row], key: InstrumentedAttribute[str], values: set[str]) -> dict[str, _Row]:
    """Existing rows by unique key, looked up in chunks (SQLite bounds the parameters of one statement)."""
    ordered = sorted(values)
    found: dict[str, _Row] = {}
    for i in range(0, len(ordered), _IN_CHUNK):
        for row in s.scalars(select(model).where(key.in_(ordered[i : i + _IN_CHUNK]))):
            found[getattr(row, key.key)] = row
    return found


def _batches(groups: Iterable[_SeriesGroup]) -> Iterator[list[_SeriesGroup]]:
    """Whole series per transaction, about _BATCH_INSTANCES instances each."""
    batch: list[_SeriesGroup] = []
    size = 0
    for g in groups:
        batch.append(g)
        size += len(g.headers)
        if size >= _BATCH_INSTANCES:
            yield batch
            batch, size = [], 0
    if batch:
        yield batch


def scan_archive(
    catalog: Catalog,
    root: Path,
    rules: DomainRules | None = None,
    domain: str | None = None,
    progress: Callable[[int, int], None] | None = None,
) -> ScanReport:
    """Index every DICOM file under root (headers only) as ARCHIVED series; idempotent, re-scans update paths.

    A series the node itself received (origin other than "archive") is left alone and its files are reported
    as skipped, so a scan can never pull a series out of, or into, the serving pipeline.
    """
    rules = rules or DomainRules()
    if domain is not None:
        domain = domain.upper()
        if domain not in DOMAINS:
            raise ValueError(f"domain must be one of {', '.join(DOMAINS)}, not {domain!r}")
    root = Path(root).resolve()
    report = ScanReport(root=root)
    files = _files(root)
    report.files_seen = len(files)
    groups: dict[str, _SeriesGroup] = {}
    first_path: dict[str, str] = {}
    for done, path in enumerate(files, 1):
        try:
            h = _read_header(path, rules.modalities)
            if h.sop_uid in first_path:
                raise _Skip(f"duplicate SOPInstanceUID of {first_path[h.sop_uid]}")
            first_path[h.sop_uid] = h.path
            g = groups.get(h.series_uid)
            if g is None:
                g = groups[h.series_uid] = _SeriesGroup(
                    h.series_uid, h.patient_id, h.study_uid, h.modality, h.description
                )
            elif (h.patient_id, h.study_uid) != (g.patient_id, g.study_uid):
                raise _Skip(f"series {h.series_uid} already seen under patient {g.patient_id} / study {g.study_uid}")
            g.headers.append(h)
        except _Skip as why:
            report.skipped[path] = str(why)
            log.debug("skipped %s: %s", path, why)
        if progress is not None:
            progress(done, len(files))

    for batch in _batches(groups[uid] for uid in sorted(groups)):
        with catalog.db.transaction() as s:
            _upsert(s, batch, rules, domain, report)
    report.instances_removed = _remove_vanished(catalog, root, set(first_path))

    for reason, n in Counter(_reason_kind(r) for r in report.skipped.values()).most_common():
        log.info("scan %s: skipped %d files: %s", root, n, reason)
    log.info(
        "scan %s: %d files, %d instances added, %d updated, %d unchanged, %d removed; series per domain %s",
        root,
        report.files_seen,
        report.instances_added,
        report.instances_updated,
        report.instances_unchanged,
        report.instances_removed,
        report.series_by_domain,
    )
    return report


def _reason_kind(reason: str) -> str:
    """Group reasons for the summary log line (drop per-file details)."""
    return reason.split(" (", 1)[0].split(" of ", 1)[0]


def _upsert(s: Session, batch: list[_SeriesGroup], rules: DomainRules, domain: str | None, report: ScanReport) -> None:
    patients = _load(s, Patient, Patient.patient_id, {g.patient_id for g in batch})
    studies = _load(s, Study, Study.study_uid, {g.study_uid for g in batch})
    series = _load(s, Series, Series.series_uid, {g.uid for g in batch})
    for g in batch:
        existing = series.get(g.uid)
        if existing is not None and existing.origin != ORIGIN:
            why = f"series {g.uid} belongs to the node's pipeline (origin {existing.origin}, state {existing.state})"
            log.warning("scan: %s; not indexed", why)
            for h in g.headers:
                report.skipped[Path(h.path)] = why
            continue
        patient = patients.get(g.patient_id)
        if patient is None:
            patient = patients[g.patient_id] = Patient(patient_id=g.patient_id)
            s.add(patient)
            s.flush()
        study = studies.get(g.study_uid)
        if study is None:
            study = studies[g.study_uid] = Study(study_uid=g.study_uid, patient_fk=patient.id)
            s.add(study)
            s.flush()
        elif study.patient_fk != patient.id:
            log.warning("scan: study %s is filed under another patient than %s; kept as is", g.study_uid, g.patient_id)
        mas = g.exposure_mas()
        dom, rule = rules.classify(g.description, mas, domain)
        if dom is None:
            log.warning(
                "scan: series %s (%r, %s mAs) has no dose domain; set DomainRules or pass domain=",
                g.uid,
                g.description,
                mas,
            )
            report.unknown_series.append(g.uid)
        else:
            log.debug("scan: series %s (%r) is %s by %s", g.uid, g.description, dom, rule)
        report.series_by_domain[dom or "unknown"] = report.series_by_domain.get(dom or "unknown", 0) + 1
        body_part = g.body_part()
        values = dict(
            study_fk=study.id,
            modality=g.modality[:16],
            description=g.description[:64],
            domain=dom,
            body_part=body_part[:32] if body_part else None,
            exposure_mas=mas,
        )
        if existing is None:
            existing = series[g.uid] = Series(series_uid=g.uid, origin=ORIGIN, state=SeriesState.ARCHIVED, **values)
            s.add(existing)
            s.flush()
        else:
            if existing.domain != dom:
                log.info("scan: series %s domain %s → %s", g.uid, existing.domain, dom)
            for key, value in values.items():
                if getattr(existing, key) != value:
                    setattr(existing, key, value)
            existing.state = SeriesState.ARCHIVED
        _upsert_instances(s, existing.id, g.headers, report)


def _upsert_instances(s: Session, series_id: int, headers: list[_Header], report: ScanReport) -> None:
    rows = _load(s, Instance, Instance.sop_uid, {h.sop_uid for h in headers})
    for h in headers:
        values = dict(
            series_fk=series_id,
            sop_class_uid=h.sop_class_uid,
            transfer_syntax=h.transfer_syntax,
            instance_number=h.instance_number,
            path=h.path,
            size=h.size,
        )
        row = rows.get(h.sop_uid)
        if row is None:
            s.add(Instance(sop_uid=h.sop_uid, **values))
            report.instances_added += 1
            continue
        changed = [k for k, v in values.items() if getattr(row, k) != v]
        if not changed:
            report.instances_unchanged += 1
            continue
        if "path" in changed:
            log.debug("scan: instance %s moved %s → %s", h.sop_uid, row.path, h.path)
        for key in changed:
            setattr(row, key, values[key])
        report.instances_updated += 1


def _remove_vanished(catalog: Catalog, root: Path, seen: set[str]) -> int:
    """Drop archive instance rows under root whose file no longer exists (training would fail to open them)."""
    prefix = str(root) if root.is_file() else str(root).rstrip("/") + "/"
    with catalog.db.transaction() as s:
        rows = s.execute(
            select(Instance.id, Instance.sop_uid, Instance.path)
            .join(Series, Instance.series_fk == Series.id)
            .where(Series.origin == ORIGIN, Instance.path.startswith(prefix, autoescape=True))
        ).all()
        gone = [rid for rid, sop, path in rows if sop not in seen and not Path(path).exists()]
        for rid in gone:
            s.delete(s.get(Instance, rid))
    if gone:
        log.info("scan %s: removed %d instances whose files are gone", root, len(gone))
    return len(gone)


def archive_overview(catalog: Catalog) -> list[dict[str, object]]:
    """One row per archive series, with its patient's split role, for `denoise-node catalog list`."""
    n_inst = select(func.count(Instance.id)).where(Instance.series_fk == Series.id).correlate(Series).scalar_subquery()
    with catalog.db.session() as s:
        rows = s.execute(
            select(
                Patient.patient_id,
                Study.study_uid,
                Series.series_uid,
                Series.description,
                Series.domain,
                Series.body_part,
                n_inst,
                Split.role,
            )
            .join(Study, Series.study_fk == Study.id)
            .join(Patient, Study.patient_fk == Patient.id)
            .outerjoin(Split, Split.patient_fk == Patient.id)
            .where(Series.origin == ORIGIN)
            .order_by(Patient.patient_id, Study.study_uid, Series.domain, Series.series_uid)
        ).all()
    keys = ("patient_id", "study_uid", "series_uid", "description", "domain", "body_part", "instances", "split")
    return [dict(zip(keys, r, strict=True)) for r in rows]
