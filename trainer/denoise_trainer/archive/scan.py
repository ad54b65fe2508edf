"""Catalog scan: index archived CT series (patients, studies, series, instances) with their dose domain.

Why: training draws LD and HD images from disjoint patients and evaluation needs LD/HD pairs, so the trainer
must know, per series, its patient, body part and dose domain without opening pixels again. The scan reads
headers only and writes them into the same catalog the node uses, as series with origin "archive" and state
ARCHIVED, a state that no pipeline transition selects (the node never processes or sends an archive series).

Domain of a series: the explicit ``domain`` argument, else its names, thresholds and dose relative to the
patient's other series (``archive/domain.py``, ``archive/recognise.py``, decided over the whole scan before anything
is written); otherwise the series is indexed with domain None (logged, listed in the report) so the CLI can say
what to fix. The domain is re-derived on every scan, so scan whole patients at once. Which files are read and how
is ``archive/headers.py``; this module writes them into the catalog.
"""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TypeVar

from sqlalchemy import func, select
from sqlalchemy.orm import InstrumentedAttribute, Session

from denoise_trainer.archive.domain import DOMAINS, UNKNOWN, DomainRules
from denoise_trainer.archive.headers import InstanceHeader, SeriesGroup, archive_files, group_series
from denoise_trainer.archive.recognise import Decision, SeriesFacts, recognise
from dicom_denoise_node.store.catalog import Catalog, Instance, Patient, Series, SeriesState, Split, Study

log = logging.getLogger(__name__)

_Row = TypeVar("_Row", Patient, Study, Series, Instance)

ORIGIN = "archive"
_BATCH_INSTANCES = 2000  # instances per write transaction: few commits, short hold of the catalog's writer lock
_IN_CHUNK = 500  # UIDs per IN (...) lookup, well under SQLite's bound-parameter limit


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
    unknown_detail: dict[str, str] = field(default_factory=dict)  # series UID → patient, names and dose
    recognised: dict[str, dict[str, int]] = field(default_factory=dict)  # domain → rule that decided → series
    skipped: dict[Path, str] = field(default_factory=dict)  # file → why it was not indexed

    @property
    def instances(self) -> int:
        return self.instances_added + self.instances_updated + self.instances_unchanged


def _load(s: Session, model: type[_Row], key: InstrumentedAttribute[str], values: set[str]) -> dict[str, _Row]:
    """Existing rows by unique key, looked up in chunks (SQLite bounds the parameters of one statement)."""
    ordered = sorted(values)
    found: dict[str, _Row] = {}
    for i in range(0, len(ordered), _IN_CHUNK):
        for row in s.scalars(select(model).where(key.in_(ordered[i : i + _IN_CHUNK]))):
            found[getattr(row, key.key)] = row
    return found


def _batches(groups: Iterable[SeriesGroup]) -> Iterator[list[SeriesGroup]]:
    """Whole series per transaction, about _BATCH_INSTANCES instances each."""
    batch: list[SeriesGroup] = []
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
    files = archive_files(root)
    report.files_seen = len(files)
    groups, seen = group_series(files, rules.modalities, report.skipped, progress)
    decisions = recognise((_facts(g) for g in groups.values()), rules, domain)

    for batch in _batches(groups[uid] for uid in sorted(groups)):
        with catalog.db.transaction() as s:
            _upsert(s, batch, decisions, report)
    report.instances_removed = _remove_vanished(catalog, root, seen)

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


def _facts(g: SeriesGroup) -> SeriesFacts:
    return SeriesFacts(
        g.uid, g.patient_id, g.body_part(), g.description, g.protocol_name(), g.exposure_mas(), g.ctdivol()
    )


def _record(report: ScanReport, g: SeriesGroup, decision: Decision) -> None:
    """Count the decision in the report; an unknown series is logged with what the rules saw."""
    dom = decision.domain or UNKNOWN
    report.series_by_domain[dom] = report.series_by_domain.get(dom, 0) + 1
    by_rule = report.recognised.setdefault(dom, {})
    by_rule[decision.rule] = by_rule.get(decision.rule, 0) + 1
    if decision.domain is None:
        detail = _facts(g).describe()
        log.warning("scan: series %s (%s) has no dose domain", g.uid, detail)
        report.unknown_series.append(g.uid)
        report.unknown_detail[g.uid] = detail
    else:
        log.debug("scan: series %s (%r) is %s by %s", g.uid, g.description, decision.domain, decision.rule)


def _upsert(s: Session, batch: list[SeriesGroup], decisions: dict[str, Decision], report: ScanReport) -> None:
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
        dom = decisions[g.uid].domain
        _record(report, g, decisions[g.uid])
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


def _upsert_instances(s: Session, series_id: int, headers: list[InstanceHeader], report: ScanReport) -> None:
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
