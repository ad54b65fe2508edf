"""Start-up check that the spool and the catalog agree, repairing what can be repaired and reporting the rest.

The receive path writes the file durably before the catalog row and the purge path deletes rows before files, so
after any crash the only expected mismatches are files without rows. Those are handled as follows:

- a received file without a row: the SCU never got Success for it (the crash came between the rename and the
  commit), but the bytes are complete (atomic rename), so it is indexed like a fresh arrival — nothing is lost
  even if the SCU does not send it again;
- a derived file without a row: left by an interrupted processing run; deleted (processing rewrites it with the
  same deterministic UIDs) — unless another node sharing the spool holds a live processing claim, whose worker may
  be writing such files right now: then they are left for the next start.

Rows without files should not happen (someone deleted spool files by hand, or a disk lost data). They are
reported at ERROR: a received instance's series becomes FAILED with the path in last_error; a derived one is
derived again.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path

from pydicom import dcmread
from pydicom.errors import InvalidDicomError

from dicom_denoise_node.store.catalog import Catalog, InstanceMeta
from dicom_denoise_node.store.retention import delete_files
from dicom_denoise_node.store.spool import InvalidUID, Spool, check_uid

log = logging.getLogger(__name__)


@dataclass
class ConsistencyReport:
    indexed_orphans: list[str] = field(default_factory=list)
    removed_orphans: list[str] = field(default_factory=list)
    kept_orphans: list[str] = field(default_factory=list)  # other nodes are processing: maybe theirs, in progress
    unreadable_orphans: list[str] = field(default_factory=list)
    missing_received: list[str] = field(default_factory=list)
    missing_derived: list[str] = field(default_factory=list)
    affected_series: list[str] = field(default_factory=list)
    finished_purges: list[str] = field(default_factory=list)

    @property
    def clean(self) -> bool:
        return not any(
            (
                self.indexed_orphans,
                self.finished_purges,
                self.removed_orphans,
                self.unreadable_orphans,
                self.missing_received,
                self.missing_derived,
            )
        )


def _files(root: Path) -> set[str]:
    return {str(p) for p in root.rglob("*.dcm") if p.is_file()} if root.exists() else set()


def _index(catalog: Catalog, path: Path) -> None:
    ds = dcmread(path, stop_before_pixels=True)
    number = ds.get("InstanceNumber")
    catalog.intake.record_instance(
        InstanceMeta(
            patient_id=str(ds.get("PatientID", "") or "")[:64],
            study_uid=check_uid(str(ds.StudyInstanceUID), "StudyInstanceUID"),
            series_uid=check_uid(str(ds.SeriesInstanceUID), "SeriesInstanceUID"),
            sop_uid=check_uid(str(ds.SOPInstanceUID), "SOPInstanceUID"),
            sop_class_uid=str(ds.SOPClassUID),
            transfer_syntax=str(ds.file_meta.TransferSyntaxUID),
            modality=str(ds.get("Modality", "") or ""),
            series_description=str(ds.get("SeriesDescription", "") or ""),
            instance_number=int(number) if number not in (None, "") else None,
            path=str(path),
            size=path.stat().st_size,
            calling_aet="(recovered)",
        )
    )


def check_spool(spool: Spool, catalog: Catalog, repair: bool = True) -> ConsistencyReport:
    """Compare the spool with the catalog; with ``repair``, index/remove orphans and settle missing files."""
    report = ConsistencyReport()
    if repair:  # purges a crash interrupted: finish them before anything could index their files again
        for series_id, uid, paths in catalog.housekeeping.unfinished_purges():
            delete_files(spool, paths)
            catalog.housekeeping.finish_purge(series_id)
            report.finished_purges.append(uid)
    received_rows, derived_rows = catalog.housekeeping.spool_rows()
    for path in sorted(_files(spool.incoming) - set(received_rows)):
        if not repair:
            report.indexed_orphans.append(path)
            continue
        try:
            _index(catalog, Path(path))
            report.indexed_orphans.append(path)
        except (InvalidDicomError, InvalidUID, OSError, ValueError, AttributeError, KeyError) as exc:
            # Not something the receive path would have written: keep it for a person, out of the queue.
            log.error("spool file %s is not in the catalog and cannot be indexed (%s); left in place", path, exc)
            report.unreadable_orphans.append(path)
    others = catalog.recovery.claims_of_other_nodes()
    for path in sorted(_files(spool.derived) - set(derived_rows)):
        if others:
            report.kept_orphans.append(path)
            continue
        report.removed_orphans.append(path)
        if repair:
            Path(path).unlink(missing_ok=True)
    report.missing_received = sorted(p for p in received_rows if not Path(p).is_file())
    report.missing_derived = sorted(p for p in derived_rows if not Path(p).is_file())
    if repair and (report.missing_received or report.missing_derived):
        report.affected_series = catalog.housekeeping.forget_missing_files(
            report.missing_received, report.missing_derived
        )
    _log(report)
    return report


def _log(report: ConsistencyReport) -> None:
    if report.clean:
        log.info("spool and catalog agree")
        return
    if report.finished_purges:
        log.warning("finished %d purges a crash interrupted: %s", len(report.finished_purges), report.finished_purges)
    if report.indexed_orphans:
        log.warning(
            "indexed %d received files that had no catalog row (crash before commit)", len(report.indexed_orphans)
        )
    if report.removed_orphans:
        log.warning("removed %d derived files of interrupted processing", len(report.removed_orphans))
    if report.kept_orphans:
        log.info("kept %d derived files without rows: other nodes are processing (they may be theirs)",
                 len(report.kept_orphans))  # fmt: skip
    if report.missing_received:
        log.error(
            "%d received instances are in the catalog but missing from the spool; series FAILED: %s",
            len(report.missing_received),
            ", ".join(report.affected_series),
        )
    if report.missing_derived:
        log.error(
            "%d derived instances were missing from the spool; their series will be derived again",
            len(report.missing_derived),
        )
